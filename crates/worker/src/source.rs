//! The Kafka source: a consumer-group member polled on its own OS thread.
//!
//! Why a thread and a `BaseConsumer` (as quickwit does): polling must never stop while the
//! pipeline is busy, or the member is evicted for exceeding `max.poll.interval.ms`. When the
//! pipeline is full the source pauses its partitions and keeps polling (which also serves
//! rebalance callbacks and statistics), and resumes once the pipeline takes the chunk.
//!
//! Offsets are never auto-committed: the thread commits what the [`OffsetTracker`] says is
//! finished. On revoke, finished offsets of the revoked partitions are committed synchronously
//! and their in-flight work is disowned (a new generation), so the new owner redoes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::config::WorkerConfig;
use crate::envelope::Envelope;
use crate::metrics::{Health, Metrics};
use crate::offsets::OffsetTracker;

/// Shared state of the source, used by the consumer callbacks.
pub struct SourceContext {
    pub topic: String,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.health.broker_up.store(up, Ordering::Relaxed);
        if let Some(t) = stats.topics.get(&self.topic) {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.metrics
                        .lag
                        .with_label_values(&[self.topic.as_str(), &p.to_string()])
                        .set(s.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut commit = TopicPartitionList::new();
            {
                let mut t = self.tracker.lock().expect("tracker lock");
                for e in tpl.elements() {
                    // The lag of a partition we no longer own is someone else's to report.
                    let _ = self
                        .metrics
                        .lag
                        .remove_label_values(&[e.topic(), &e.partition().to_string()]);
                    if let Some(pos) = t.revoke(e.partition()) {
                        let _ = commit.add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(pos),
                        );
                    }
                }
            }
            self.metrics.rebalances.inc();
            tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions revoked; in-flight work for them is dropped");
            if commit.count() > 0 {
                if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit on revoke failed; the new owner will redo those messages");
                }
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "commit failed; the positions will be offered again");
            let mut t = self.tracker.lock().expect("tracker lock");
            for el in offsets.elements() {
                t.commit_failed(el.partition());
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // An assignment is an answer from the group coordinator: the broker is up.
            self.health.broker_up.store(true, Ordering::Relaxed);
            let mut t = self.tracker.lock().expect("tracker lock");
            for e in tpl.elements() {
                t.assign(e.partition());
            }
            drop(t);
            self.metrics.rebalances.inc();
            tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions assigned");
        }
    }
}

/// Creates the consumer and subscribes it.
pub fn consumer(
    cfg: &WorkerConfig,
    ctx: SourceContext,
) -> anyhow::Result<BaseConsumer<SourceContext>> {
    let mut c = cfg.kafka.client_config();
    c.set("group.id", &cfg.kafka.group)
        .set("client.id", format!("ocrfleet-{}", cfg.worker_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("max.poll.interval.ms", "300000")
        .set("statistics.interval.ms", "5000");
    let consumer: BaseConsumer<SourceContext> = c.create_with_context(ctx)?;
    consumer.subscribe(&[cfg.kafka.topic.as_str()])?;
    Ok(consumer)
}

/// Control shared between the source thread and the rest of the worker.
#[derive(Default)]
pub struct SourceControl {
    /// Set to stop taking new messages (SIGTERM, or idle exit).
    pub stop: AtomicBool,
    /// Set by the pipeline once all in-flight work is finished or dropped.
    pub drained: AtomicBool,
}

/// Runs the poll loop until stopped and drained (or the grace period ends), then commits and
/// leaves the group.
pub fn run(
    consumer: BaseConsumer<SourceContext>,
    cfg: &WorkerConfig,
    chunk_tx: mpsc::Sender<Vec<Envelope>>,
    control: Arc<SourceControl>,
) -> anyhow::Result<()> {
    let ctx_tracker = consumer.context().tracker.clone();
    let metrics = consumer.context().metrics.clone();
    let topic = cfg.kafka.topic.clone();
    let mut chunk_tx = Some(chunk_tx);
    let mut building: Vec<Envelope> = Vec::new();
    let mut chunk_started = Instant::now();
    let mut pending: Option<Vec<Envelope>> = None;
    let mut paused = false;
    let mut last_message = Instant::now();
    let mut ever_assigned = false;
    let mut stop_deadline: Option<Instant> = None;

    loop {
        // Stop requests: idle exit or signal.
        if let (Some(idle), None) = (cfg.exit_when_idle, stop_deadline) {
            let in_flight = ctx_tracker.lock().expect("tracker").in_flight();
            if ever_assigned
                && in_flight == 0
                && building.is_empty()
                && pending.is_none()
                && last_message.elapsed() >= idle
            {
                tracing::info!(idle = ?idle, "no messages and nothing in flight; stopping");
                control.stop.store(true, Ordering::Relaxed);
            }
        }
        if control.stop.load(Ordering::Relaxed) && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + cfg.shutdown_grace);
            // Stop taking chunks: undispatched messages are dropped uncommitted (redelivered).
            chunk_tx = None;
            building.clear();
            pending = None;
            tracing::info!(grace = ?cfg.shutdown_grace, "stopping: finishing in-flight work");
        }
        if let Some(deadline) = stop_deadline {
            if control.drained.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
        }

        commit_finished(&consumer, &ctx_tracker, &topic, CommitMode::Async);
        metrics
            .in_flight
            .set(ctx_tracker.lock().expect("tracker").in_flight() as i64);

        // Hand the finished chunk to the pipeline, pausing while it is full.
        if let (Some(chunk), Some(tx)) = (pending.take(), chunk_tx.as_ref()) {
            match tx.try_send(chunk) {
                Ok(()) => {
                    if paused {
                        set_paused(&consumer, false);
                        paused = false;
                    }
                }
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    pending = Some(chunk);
                    if !paused {
                        set_paused(&consumer, true);
                        paused = true;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    anyhow::bail!("pipeline stopped unexpectedly");
                }
            }
        }

        let timeout = if pending.is_some() || stop_deadline.is_some() {
            Duration::from_millis(50)
        } else if building.is_empty() {
            Duration::from_millis(100)
        } else {
            cfg.linger
                .saturating_sub(chunk_started.elapsed())
                .max(Duration::from_millis(1))
        };
        match consumer.poll(timeout) {
            Some(Ok(m)) if stop_deadline.is_none() => {
                ever_assigned = true;
                last_message = Instant::now();
                let generation = ctx_tracker
                    .lock()
                    .expect("tracker")
                    .received(m.partition(), m.offset());
                if building.is_empty() {
                    chunk_started = Instant::now();
                }
                building.push(Envelope {
                    partition: m.partition(),
                    offset: m.offset(),
                    generation,
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default(),
                    timestamp_ms: m.timestamp().to_millis(),
                    received_at: Instant::now(),
                });
                metrics.consumed.inc();
            }
            Some(Ok(_)) => {} // stopping: not taken, so not committed
            Some(Err(e)) => tracing::warn!(error = %e, "kafka poll error"),
            None => {}
        }
        if !ever_assigned {
            ever_assigned = consumer
                .assignment()
                .map(|a| a.count() > 0)
                .unwrap_or(false);
        }
        if pending.is_none()
            && !building.is_empty()
            && (building.len() >= cfg.max_messages || chunk_started.elapsed() >= cfg.linger)
        {
            metrics.chunk_size.observe(building.len() as f64);
            pending = Some(std::mem::take(&mut building));
        }
    }

    commit_finished(&consumer, &ctx_tracker, &topic, CommitMode::Sync);
    consumer.unsubscribe();
    // Dropping the consumer closes it, which leaves the group.
    drop(consumer);
    tracing::info!("left the consumer group");
    Ok(())
}

fn set_paused(consumer: &BaseConsumer<SourceContext>, pause: bool) {
    if let Ok(assignment) = consumer.assignment() {
        let r = if pause {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }
}

fn commit_finished(
    consumer: &BaseConsumer<SourceContext>,
    tracker: &Mutex<OffsetTracker>,
    topic: &str,
    mode: CommitMode,
) {
    let commits = tracker.lock().expect("tracker").take_commits();
    if commits.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, pos) in &commits {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*pos));
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => tracing::debug!(?commits, "committed"),
        Err(e) => {
            tracing::warn!(error = %e, ?commits, "commit failed; the positions will be offered again");
            let mut t = tracker.lock().expect("tracker");
            for (p, _) in &commits {
                t.commit_failed(*p);
            }
        }
    }
}

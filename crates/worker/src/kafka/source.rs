//! The Kafka source: a consumer-group member polled on its own OS thread.
//!
//! Why a thread and a `BaseConsumer` (as quickwit does): polling must never stop while the
//! pipeline is busy, or the member is evicted for exceeding `max.poll.interval.ms`. The thread
//! owns the [`SourceState`] (chunks, read-ahead bound, offsets); this file is the thin loop that
//! polls, carries out what the state says (pause, resume, hand over a chunk, commit) and feeds
//! it what happened (messages, finished events from the sink, rebalances).
//!
//! Offsets are never auto-committed. On revoke, finished offsets of the revoked partitions are
//! committed synchronously and their in-flight work is disowned (a new generation, published in
//! [`Assignment`] so the sink drops it), so the new owner redoes it. Partitions assigned while
//! the source is paused are paused at once (cooperative assignment adds partitions without
//! revoking the others, so they would otherwise be consumed while everything else waits).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::{Limits, SourceState};
use super::Assignment;
use crate::config::{KafkaConfig, WorkerConfig};
use crate::envelope::{Done, EngineJournal, Envelope};
use crate::failure::Component;
use crate::health::Health;
use crate::metrics::Metrics;

/// Shared state of the source, used by the consumer callbacks (which run inside `poll`, on the
/// source thread).
pub struct SourceContext {
    pub topic: String,
    /// `--crash-loop-attempts` (0: no crash-loop journal).
    pub crash_loop_attempts: u32,
    pub state: Mutex<SourceState>,
    pub assignment: Assignment,
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

impl SourceContext {
    fn state(&self) -> std::sync::MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        if stats.brokers.values().any(|b| b.state == "UP") {
            for source in ["connection", "poll", "client"] {
                self.health.clear(Component::Broker, source);
            }
        } else {
            self.health.fault(
                Component::Broker,
                "connection",
                "no Kafka broker connection is up",
            );
        }
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
        // librdkafka reports every failed connection attempt here; Health rate-limits the log.
        self.health
            .fault(Component::Broker, "client", format!("{error}: {reason}"));
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut commit = TopicPartitionList::new();
            {
                let mut st = self.state();
                for e in tpl.elements() {
                    // The lag of a partition we no longer own is someone else's to report.
                    let _ = self
                        .metrics
                        .lag
                        .remove_label_values(&[e.topic(), &e.partition().to_string()]);
                    self.assignment.revoke(e.partition());
                    st.revoked(e.partition());
                    if let Some((pos, meta)) = st.tracker.revoke(e.partition()) {
                        add_commit(&mut commit, e.topic(), e.partition(), pos, &meta);
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
            let mut st = self.state();
            for el in offsets.elements() {
                st.tracker.commit_failed(el.partition());
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // An assignment is an answer from the group coordinator: the broker is up.
            self.health.clear(Component::Broker, "connection");
            // The group's committed positions (they bound what the tracker may hold back) and
            // the crash-loop journal in their metadata.
            let committed: std::collections::HashMap<i32, (Option<i64>, String)> = {
                match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
                    Ok(c) => c
                        .elements()
                        .iter()
                        .map(|e| {
                            let pos = match e.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            };
                            (
                                e.partition(),
                                (
                                    pos,
                                    // With the journal off, an earlier run's journal means nothing.
                                    if self.crash_loop_attempts > 0 {
                                        e.metadata().to_owned()
                                    } else {
                                        String::new()
                                    },
                                ),
                            )
                        })
                        .collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the committed offsets and their metadata; crash-loop counts of these partitions start again");
                        Default::default()
                    }
                }
            };
            let paused = {
                let mut st = self.state();
                for e in tpl.elements() {
                    let (pos, meta) = committed
                        .get(&e.partition())
                        .map_or((None, ""), |(p, m)| (*p, m.as_str()));
                    st.tracker.assign_with(e.partition(), pos, meta);
                    let (deaths, suspects) = st.tracker.history(e.partition());
                    if !deaths.is_empty() || !suspects.is_empty() {
                        tracing::warn!(partition = e.partition(), ?deaths, %suspects, limit = self.crash_loop_attempts, "records of this partition were in the OCR engine when a worker process died: each runs alone (suspects), one that dies alone counts a death, and one with --crash-loop-attempts deaths is dead-lettered (ocr/crash_loop)");
                    }
                    let g = st.tracker.generation(e.partition()).expect("just assigned");
                    self.assignment.assign(e.partition(), g);
                }
                st.is_paused()
            };
            if tpl.count() > 0 {
                // librdkafka keeps a partition's pause flag across revocation and re-assignment
                // (librdkafka#1849), so a partition paused earlier by the read-ahead bound and
                // assigned back while the source runs would never be fetched again: a silent
                // stall, seen as the noida join test never finishing in CI. Every assignment
                // therefore sets the flag explicitly, one way or the other.
                let r = if paused {
                    consumer.pause(tpl)
                } else {
                    consumer.resume(tpl)
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, paused, "cannot set the pause state of newly assigned partitions");
                }
            }
            self.metrics.rebalances.inc();
            tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), paused, "partitions assigned");
        }
    }
}

/// The source's settings: the Kafka connection and its own bounds and timings, nothing else of
/// the worker's.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub kafka: KafkaConfig,
    /// Names the consumer's client id.
    pub worker_id: String,
    /// `--crash-loop-attempts` (0: the crash-loop journal is off).
    pub crash_loop_attempts: u32,
    pub limits: Limits,
    /// `--max-headers`: more are not copied (the record is a dead letter).
    pub max_headers: usize,
    /// `--exit-when-idle`.
    pub exit_when_idle: Option<Duration>,
    /// How long a stop waits for in-flight work before committing what is finished.
    pub shutdown_grace: Duration,
}

impl SourceConfig {
    pub fn from_worker(cfg: &WorkerConfig) -> SourceConfig {
        SourceConfig {
            kafka: cfg.kafka.clone(),
            worker_id: cfg.worker_id.clone(),
            crash_loop_attempts: cfg.crash_loop_attempts,
            limits: Limits {
                max_messages: cfg.max_messages,
                linger: cfg.linger,
                max_in_flight: cfg.max_in_flight,
                max_in_flight_bytes: cfg.max_in_flight_bytes,
            },
            max_headers: cfg.max_headers,
            exit_when_idle: cfg.exit_when_idle,
            shutdown_grace: cfg.shutdown_grace,
        }
    }
}

/// Creates the consumer and subscribes it.
pub fn consumer(
    cfg: &SourceConfig,
    ctx: SourceContext,
) -> anyhow::Result<BaseConsumer<SourceContext>> {
    // `--kafka-option` may change the timeouts and the assignment strategy, but not what
    // at-least-once delivery depends on (use --group for the group).
    let c = cfg.kafka.client_config_with(
        &[
            ("client.id", format!("ocrfleet-{}", cfg.worker_id)),
            ("auto.offset.reset", "earliest".into()),
            ("partition.assignment.strategy", "cooperative-sticky".into()),
            ("session.timeout.ms", "10000".into()),
            ("heartbeat.interval.ms", "2000".into()),
            ("max.poll.interval.ms", "300000".into()),
            ("statistics.interval.ms", "5000".into()),
        ],
        &[
            ("group.id", cfg.kafka.group.clone()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
        ],
    );
    let consumer: BaseConsumer<SourceContext> = c.create_with_context(ctx)?;
    consumer.subscribe(&[cfg.kafka.topic.as_str()])?;
    Ok(consumer)
}

/// The source context for `cfg`.
pub fn context(
    cfg: &SourceConfig,
    assignment: Assignment,
    metrics: Metrics,
    health: Arc<Health>,
) -> SourceContext {
    SourceContext {
        topic: cfg.kafka.topic.clone(),
        crash_loop_attempts: cfg.crash_loop_attempts,
        state: Mutex::new(SourceState::new(cfg.limits)),
        assignment,
        metrics,
        health,
    }
}

/// Why the source loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceEnd {
    /// `--exit-when-idle`: nothing arrived for that long and nothing is in flight.
    Idle,
    /// Stopped from outside (signal), in-flight work drained or dropped.
    Stopped,
}

/// Runs the poll loop until `stop` is cancelled (then it drains for `shutdown_grace` or until
/// `drained` is cancelled) or the worker is idle; then commits and leaves the group.
pub fn run(
    consumer: BaseConsumer<SourceContext>,
    cfg: &SourceConfig,
    chunk_tx: mpsc::Sender<Vec<Envelope>>,
    mut done_rx: mpsc::UnboundedReceiver<Done>,
    mut journal_rx: mpsc::UnboundedReceiver<EngineJournal>,
    stop: CancellationToken,
    drained: CancellationToken,
) -> anyhow::Result<SourceEnd> {
    let ctx = consumer.context();
    let topic = cfg.kafka.topic.clone();
    let mut chunk_tx = Some(chunk_tx);
    let mut stop_deadline: Option<Instant> = None;
    let mut end = SourceEnd::Stopped;

    loop {
        let now = Instant::now();
        // Stop requests: idle exit or signal.
        if let (Some(idle), None) = (cfg.exit_when_idle, stop_deadline) {
            if ctx.state().idle_for(idle, now) {
                tracing::info!(idle = ?idle, "no messages and nothing in flight; stopping");
                end = SourceEnd::Idle;
                stop.cancel();
            }
        }
        if stop.is_cancelled() && stop_deadline.is_none() {
            stop_deadline = Some(now + cfg.shutdown_grace);
            // Stop taking chunks: undispatched messages are dropped uncommitted (redelivered).
            chunk_tx = None;
            ctx.state().drop_undispatched();
            tracing::info!(grace = ?cfg.shutdown_grace, "stopping: finishing in-flight work");
        }
        if let Some(deadline) = stop_deadline {
            if drained.is_cancelled() || now >= deadline {
                while let Ok(d) = done_rx.try_recv() {
                    ctx.state().on_done(d);
                }
                // The calls that returned leave the journal with the last commit, so that an
                // orderly stop leaves no `run=` behind for the next owner to count.
                while let Ok(j) = journal_rx.try_recv() {
                    ctx.state().tracker.journal_running(&j.running);
                }
                break;
            }
        }

        // What the sink finished, then what may be committed.
        while let Ok(d) = done_rx.try_recv() {
            ctx.state().on_done(d);
        }
        commit_finished(&consumer, &topic, CommitMode::Async);
        // What the engine is about to run, recorded before it runs (crash-loop journal).
        while let Ok(j) = journal_rx.try_recv() {
            record_journal(&consumer, &topic, j);
        }
        let in_flight = ctx.state().in_flight();
        ctx.metrics.in_flight.set(in_flight as i64);
        ctx.health.set_pending(in_flight);

        // Pause or resume: read-ahead bound, infrastructure faults.
        let want = ctx.state().wants_pause(ctx.health.intake_blocked()) && stop_deadline.is_none();
        if want != ctx.state().is_paused() {
            set_paused(&consumer, want);
            ctx.state().set_paused(want);
            if !want {
                // Resuming everything resumed the partitions paused alone too.
                ctx.state().set_paused_alone(Default::default());
            }
        }
        if !want {
            pause_over_share(&consumer, &topic);
        }

        // Hand the closed chunk to the pipeline.
        if let Some(tx) = chunk_tx.as_ref() {
            let chunk = ctx.state().take_pending();
            if let Some(chunk) = chunk {
                match tx.try_send(chunk) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(chunk)) => ctx.state().unsent(chunk),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        anyhow::bail!("the pipeline stopped taking messages")
                    }
                }
            }
        }

        let timeout = if stop_deadline.is_some() {
            Duration::from_millis(50)
        } else {
            ctx.state().poll_timeout(now)
        };
        // The engine waits for its journal to be recorded: answer within a few ms.
        let timeout = if ctx.crash_loop_attempts > 0 {
            timeout.min(JOURNAL_POLL)
        } else {
            timeout
        };
        match consumer.poll(timeout) {
            Some(Ok(m)) if stop_deadline.is_none() => {
                let generation = ctx.state().tracker.received(m.partition(), m.offset());
                match generation {
                    Some(generation) => {
                        let care = ctx.state().tracker.care(
                            m.partition(),
                            m.offset(),
                            ctx.crash_loop_attempts,
                        );
                        let (headers, headers_total) =
                            super::headers::raw_headers_at_most(&m, cfg.max_headers);
                        let envelope = Envelope {
                            partition: m.partition(),
                            offset: m.offset(),
                            generation,
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().map(<[u8]>::to_vec),
                            headers,
                            headers_total,
                            timestamp_ms: m.timestamp().to_millis(),
                            care,
                        };
                        ctx.state().on_message(envelope, Instant::now());
                        ctx.metrics.consumed.inc();
                    }
                    // librdkafka delivers a partition's messages only after its assignment, so
                    // this should not happen; if it does, the message is not taken (and commits
                    // of that partition stay below it once it is assigned).
                    None => tracing::warn!(
                        partition = m.partition(),
                        offset = m.offset(),
                        "a message arrived for a partition that is not assigned; not taken"
                    ),
                }
            }
            Some(Ok(_)) => {} // stopping: not taken, so not committed
            Some(Err(e)) => ctx.health.fault(Component::Broker, "poll", e),
            None => {}
        }
        let closed = ctx.state().close_chunk_if_due(Instant::now());
        if let Some(n) = closed {
            ctx.metrics.chunk_size.observe(n as f64);
        }
    }

    commit_finished(&consumer, &topic, CommitMode::Sync);
    consumer.unsubscribe();
    // Dropping the consumer closes it, which leaves the group.
    drop(consumer);
    tracing::info!("left the consumer group");
    Ok(end)
}

fn set_paused(consumer: &BaseConsumer<SourceContext>, pause: bool) {
    if let Ok(assignment) = consumer.assignment() {
        let r = if pause {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        };
        match r {
            Ok(()) => tracing::debug!(
                pause,
                partitions = assignment.count(),
                "intake paused/resumed"
            ),
            Err(e) => tracing::warn!(error = %e, pause, "pause/resume failed"),
        }
    }
}

/// Pauses the partitions over their share of the read-ahead and resumes those back under it
/// (see [`super::state`]), while the source as a whole runs.
fn pause_over_share(consumer: &BaseConsumer<SourceContext>, topic: &str) {
    let ctx = consumer.context();
    let mut st = ctx.state();
    let assigned = st.tracker.partitions();
    let want = st.partitions_over_share(&assigned);
    if &want == st.paused_alone() {
        return;
    }
    let list = |ps: &mut dyn Iterator<Item = &i32>| {
        let mut tpl = TopicPartitionList::new();
        for p in ps {
            tpl.add_partition(topic, *p);
        }
        tpl
    };
    let pause = list(&mut want.difference(st.paused_alone()));
    let resume = list(&mut st.paused_alone().difference(&want));
    for (tpl, pausing) in [(pause, true), (resume, false)] {
        if tpl.count() == 0 {
            continue;
        }
        let r = if pausing {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match r {
            Ok(()) => {
                tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), pausing, "a partition over its share of the read-ahead is paused alone (its records wait, e.g. for a dead image host); the others go on")
            }
            Err(e) => tracing::warn!(error = %e, pausing, "pause/resume of one partition failed"),
        }
    }
    st.set_paused_alone(want);
}

/// How long the poll loop blocks at most while the crash-loop journal is on.
const JOURNAL_POLL: Duration = Duration::from_millis(5);

fn add_commit(tpl: &mut TopicPartitionList, topic: &str, partition: i32, pos: i64, meta: &str) {
    let mut e = tpl.add_partition(topic, partition);
    let _ = e.set_offset(Offset::Offset(pos));
    if !meta.is_empty() {
        e.set_metadata(meta);
    }
}

fn commit_finished(consumer: &BaseConsumer<SourceContext>, topic: &str, mode: CommitMode) {
    let commits = consumer.context().state().tracker.take_commits();
    if commits.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, pos, meta) in &commits {
        add_commit(&mut tpl, topic, *p, *pos, meta);
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => tracing::debug!(?commits, "committed"),
        Err(e) => {
            tracing::warn!(error = %e, ?commits, "commit failed; the positions will be offered again");
            let mut st = consumer.context().state();
            for (p, _, _) in &commits {
                st.tracker.commit_failed(*p);
            }
        }
    }
}

/// Records what the engine runs in the committed offsets' metadata (see [`super::journal`]):
/// when a call adds records, synchronously, so that it is on the broker before the call
/// starts, then answers; when calls returned, with the next commit. Best effort: while the
/// broker is unreachable the run goes ahead unrecorded.
fn record_journal(consumer: &BaseConsumer<SourceContext>, topic: &str, j: EngineJournal) {
    let ctx = consumer.context();
    let added = ctx.state().tracker.journal_running(&j.running);
    if added && ctx.health.is_up(Component::Broker) {
        let commits = ctx.state().tracker.take_commits();
        if !commits.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, pos, meta) in &commits {
                add_commit(&mut tpl, topic, *p, *pos, meta);
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "cannot record the engine's journal in the committed offsets; this run is not protected against a crash loop");
                let mut st = ctx.state();
                for (p, _, _) in &commits {
                    st.tracker.commit_failed(*p);
                }
            }
        }
    }
    if let Some(r) = j.recorded {
        let _ = r.send(());
    }
}

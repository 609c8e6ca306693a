//! The Kafka source: a consumer-group member polled on its own OS thread.
//!
//! Why a thread and a `BaseConsumer` (as quickwit does): polling must never stop while the
//! pipeline is busy, or the member is evicted for exceeding `max.poll.interval.ms`. The thread
//! owns the [`SourceState`] (chunks, read-ahead bound, offsets); this file is the thin loop that
//! polls, carries out what the state says (pause, resume, hand over a chunk, commit) and feeds
//! it what happened (messages, finished events from the sink, rebalances).
//!
//! Offsets are never auto-committed, and never committed by this thread: every commit is made
//! by the [`super::committer`]'s thread, so that polling never waits on the group coordinator.
//! On revoke, finished offsets of the revoked partitions are committed (waited for, within
//! [`super::committer::REVOKE_WAIT`]) and their in-flight work is disowned (a new generation, published in
//! [`Assignment`] so the sink drops it), so the new owner redoes it. Partitions assigned while
//! the source is paused are paused at once (cooperative assignment adds partitions without
//! revoking the others, so they would otherwise be consumed while everything else waits).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::committer::{self, Commits};
use super::state::{Limits, SourceState};
use super::Assignment;
use crate::config::{KafkaConfig, WorkerConfig};
use crate::envelope::{Done, Envelope};
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
    /// Where commits are asked for (see [`super::committer`]).
    pub commits: Commits,
}

impl SourceContext {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, SourceState> {
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
            let mut commit = Vec::new();
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
                        commit.push((e.partition(), pos, meta));
                    }
                }
            }
            self.metrics.rebalances.inc();
            tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions revoked; in-flight work for them is dropped");
            if !commit.is_empty() {
                match self.commits.revoked(consumer, &self.topic, commit) {
                    committer::Revoked::Committed => {}
                    committer::Revoked::Failed(e) => {
                        tracing::warn!(error = %e, "commit on revoke failed; the new owner will redo those messages");
                    }
                    committer::Revoked::GivenUp => {
                        tracing::warn!(waited = ?committer::REVOKE_WAIT, "the commit on revoke did not return in time and is given up; the new owner will redo those messages");
                    }
                }
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
    commits: Commits,
) -> SourceContext {
    SourceContext {
        topic: cfg.kafka.topic.clone(),
        crash_loop_attempts: cfg.crash_loop_attempts,
        state: Mutex::new(SourceState::new(cfg.limits)),
        assignment,
        metrics,
        health,
        commits,
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
/// `drained` is cancelled) or the worker is idle; then commits and leaves the group. The
/// committer (see [`super::committer`]) runs beside it on a thread of its own, fed by
/// `commits_rx` (the OCR stage's journal too), and ends with the last commit.
pub fn run(
    consumer: BaseConsumer<SourceContext>,
    cfg: &SourceConfig,
    chunk_tx: mpsc::Sender<Vec<Envelope>>,
    mut done_rx: mpsc::UnboundedReceiver<Done>,
    commits_rx: mpsc::UnboundedReceiver<committer::Job>,
    stop: CancellationToken,
    drained: CancellationToken,
) -> anyhow::Result<SourceEnd> {
    let end = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("kafka-commits".into())
            .spawn_scoped(scope, || {
                committer::run(&consumer, &cfg.kafka.topic, commits_rx)
            })?;
        let mut l = Loop {
            consumer: &consumer,
            cfg,
            chunk_tx: Some(chunk_tx),
            stop_deadline: None,
            end: SourceEnd::Stopped,
            last_commit: Instant::now(),
        };
        let r = (|| {
            loop {
                if l.stopped(&stop, &drained, &mut done_rx) {
                    break;
                }
                l.take_events(&mut done_rx);
                l.steer();
                l.hand_over()?;
                l.poll();
            }
            anyhow::Ok(())
        })();
        // The last commit (also after a failure: what is finished is finished); the scope
        // waits for it.
        consumer.context().commits.last();
        r.map(|()| l.end)
    })?;
    consumer.unsubscribe();
    // Dropping the consumer closes it, which leaves the group.
    drop(consumer);
    tracing::info!("left the consumer group");
    Ok(end)
}

/// The poll loop's own state, and its steps, in the order of one turn.
struct Loop<'a> {
    consumer: &'a BaseConsumer<SourceContext>,
    cfg: &'a SourceConfig,
    /// `None` once stopping: undispatched messages are no longer handed over.
    chunk_tx: Option<mpsc::Sender<Vec<Envelope>>>,
    /// When a stop gives up on in-flight work.
    stop_deadline: Option<Instant>,
    end: SourceEnd,
    /// When commits were last asked for.
    last_commit: Instant,
}

impl Loop<'_> {
    fn ctx(&self) -> &SourceContext {
        self.consumer.context()
    }

    /// Stop requests (idle exit or signal): begins a stop, and says when the loop is over
    /// (the pipeline drained, or the grace is spent), having taken the last finished events.
    fn stopped(
        &mut self,
        stop: &CancellationToken,
        drained: &CancellationToken,
        done_rx: &mut mpsc::UnboundedReceiver<Done>,
    ) -> bool {
        let now = Instant::now();
        if let (Some(idle), None) = (self.cfg.exit_when_idle, self.stop_deadline) {
            if self.ctx().state().idle_for(idle, now) {
                tracing::info!(idle = ?idle, "no messages and nothing in flight; stopping");
                self.end = SourceEnd::Idle;
                stop.cancel();
            }
        }
        if stop.is_cancelled() && self.stop_deadline.is_none() {
            self.stop_deadline = Some(now + self.cfg.shutdown_grace);
            // Stop taking chunks: undispatched messages are dropped uncommitted (redelivered).
            self.chunk_tx = None;
            self.ctx().state().drop_undispatched();
            tracing::info!(grace = ?self.cfg.shutdown_grace, "stopping: finishing in-flight work");
        }
        let Some(deadline) = self.stop_deadline else {
            return false;
        };
        if !(drained.is_cancelled() || now >= deadline) {
            return false;
        }
        let ctx = self.ctx();
        while let Ok(d) = done_rx.try_recv() {
            ctx.state().on_done(d);
        }
        // The calls that returned left the journal before the committer's last commit, so an
        // orderly stop leaves no `run=` behind for the next owner to count.
        true
    }

    /// What the sink finished, then a commit of what may be committed (at least every
    /// [`COMMIT_EVERY`], so that a failed commit is tried again).
    fn take_events(&mut self, done_rx: &mut mpsc::UnboundedReceiver<Done>) {
        let ctx = self.consumer.context();
        let mut finished = false;
        while let Ok(d) = done_rx.try_recv() {
            ctx.state().on_done(d);
            finished = true;
        }
        let now = Instant::now();
        if finished || now.duration_since(self.last_commit) >= COMMIT_EVERY {
            ctx.commits.finished();
            self.last_commit = now;
        }
        let in_flight = ctx.state().in_flight();
        ctx.metrics.in_flight.set(in_flight as i64);
        ctx.health.set_pending(in_flight);
    }

    /// Pause or resume: the read-ahead bound, infrastructure faults, a partition over its share.
    fn steer(&self) {
        let ctx = self.ctx();
        let want =
            ctx.state().wants_pause(ctx.health.intake_blocked()) && self.stop_deadline.is_none();
        if want != ctx.state().is_paused() {
            set_paused(self.consumer, want);
            ctx.state().set_paused(want);
            if !want {
                // Resuming everything resumed the partitions paused alone too.
                ctx.state().set_paused_alone(Default::default());
            }
        }
        if !want {
            pause_over_share(self.consumer, &self.cfg.kafka.topic);
        }
    }

    /// Hands the closed chunk to the pipeline (see [`hand_over`]).
    fn hand_over(&self) -> anyhow::Result<()> {
        match &self.chunk_tx {
            Some(tx) => hand_over(&mut self.ctx().state(), tx),
            None => Ok(()),
        }
    }

    /// Waits for the next message (or a rebalance, which runs its callbacks here) and takes it.
    fn poll(&self) {
        let ctx = self.ctx();
        let timeout = if self.stop_deadline.is_some() {
            Duration::from_millis(50)
        } else {
            ctx.state().poll_timeout(Instant::now())
        };
        match self.consumer.poll(timeout) {
            Some(Ok(m)) if self.stop_deadline.is_none() => self.take(&m),
            Some(Ok(_)) => {} // stopping: not taken, so not committed
            Some(Err(e)) => ctx.health.fault(Component::Broker, "poll", e),
            None => {}
        }
        if let Some(n) = ctx.state().close_chunk_if_due(Instant::now()) {
            ctx.metrics.chunk_size.observe(n as f64);
        }
    }

    /// A message becomes an envelope of the current generation of its partition.
    fn take(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let ctx = self.ctx();
        let Some(generation) = ctx.state().tracker.received(m.partition(), m.offset()) else {
            // librdkafka delivers a partition's messages only after its assignment, so this
            // should not happen; if it does, the message is not taken (and commits of that
            // partition stay below it once it is assigned).
            tracing::warn!(
                partition = m.partition(),
                offset = m.offset(),
                "a message arrived for a partition that is not assigned; not taken"
            );
            return;
        };
        let care = ctx
            .state()
            .tracker
            .care(m.partition(), m.offset(), ctx.crash_loop_attempts);
        let (headers, headers_total) = super::headers::raw_headers_at_most(m, self.cfg.max_headers);
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
}

/// Hands the state's closed chunk, if any, to the pipeline without waiting: a full channel
/// keeps the chunk for the next turn (the loop must go on polling); a closed one is an error.
fn hand_over(state: &mut SourceState, tx: &mpsc::Sender<Vec<Envelope>>) -> anyhow::Result<()> {
    let Some(chunk) = state.take_pending() else {
        return Ok(());
    };
    match tx.try_send(chunk) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(chunk)) => {
            state.unsent(chunk);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            anyhow::bail!("the pipeline stopped taking messages")
        }
    }
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

/// How often the poll loop asks for a commit when nothing finished (a failed one is retried).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(brokers: &str) -> SourceConfig {
        let mut kafka = WorkerConfig::load(Default::default(), None).unwrap().kafka;
        kafka.brokers = brokers.to_owned();
        SourceConfig {
            kafka,
            worker_id: "test".into(),
            crash_loop_attempts: 3,
            limits: Limits {
                max_messages: 2,
                linger: Duration::from_millis(100),
                max_in_flight: 4,
                max_in_flight_bytes: 1 << 20,
            },
            max_headers: 100,
            exit_when_idle: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }

    fn message(state: &mut SourceState, offset: i64) {
        let envelope = crate::kafka::state::tests::env(state, 0, offset);
        state.on_message(envelope, Instant::now());
    }

    /// A full pipeline never blocks the poll loop: the chunk waits in the state and goes on a
    /// later turn; a pipeline that is gone ends the source with an error.
    #[test]
    fn a_chunk_the_pipeline_cannot_take_yet_is_kept_for_the_next_turn() {
        let mut state = SourceState::new(config("127.0.0.1:1").limits);
        let (tx, mut rx) = mpsc::channel(1);
        hand_over(&mut state, &tx).unwrap(); // nothing closed yet: nothing sent
        assert!(rx.try_recv().is_err());
        for offset in 0..4 {
            message(&mut state, offset);
            state.close_chunk_if_due(Instant::now());
            hand_over(&mut state, &tx).unwrap();
        }
        // Two chunks of two: the first in the channel, the second kept.
        let first = rx.try_recv().unwrap();
        assert_eq!(first.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 1]);
        assert!(rx.try_recv().is_err());
        hand_over(&mut state, &tx).unwrap();
        let second = rx.try_recv().unwrap();
        assert_eq!(second.iter().map(|e| e.offset).collect::<Vec<_>>(), [2, 3]);
        message(&mut state, 4);
        message(&mut state, 5);
        state.close_chunk_if_due(Instant::now());
        drop(rx);
        let e = hand_over(&mut state, &tx).unwrap_err();
        assert!(e.to_string().contains("stopped taking messages"), "{e}");
    }

    /// A source running on its own thread against `cfg`'s broker, with its ends.
    struct Running {
        health: Arc<Health>,
        journal: committer::JournalTx,
        chunks: mpsc::Receiver<Vec<Envelope>>,
        _done: mpsc::UnboundedSender<Done>,
        stop: CancellationToken,
        drained: CancellationToken,
        thread: std::thread::JoinHandle<anyhow::Result<SourceEnd>>,
    }

    impl Running {
        fn start(cfg: &SourceConfig) -> Running {
            let health = Arc::new(Health::new(&prometheus::Registry::new()));
            let (commits, journal, commits_rx) = committer::channel();
            let ctx = context(
                cfg,
                Assignment::default(),
                Metrics::new(),
                health.clone(),
                commits,
            );
            let consumer = consumer(cfg, ctx).unwrap();
            let (chunk_tx, chunks) = mpsc::channel(4);
            let (done, done_rx) = mpsc::unbounded_channel();
            let (stop, drained) = (CancellationToken::new(), CancellationToken::new());
            let thread = {
                let (cfg, stop, drained) = (cfg.clone(), stop.clone(), drained.clone());
                std::thread::spawn(move || {
                    run(consumer, &cfg, chunk_tx, done_rx, commits_rx, stop, drained)
                })
            };
            Running {
                health,
                journal,
                chunks,
                _done: done,
                stop,
                drained,
                thread,
            }
        }

        /// Stops it in order; how it ended.
        fn stop(self) -> SourceEnd {
            self.stop.cancel();
            self.drained.cancel();
            self.thread.join().unwrap().unwrap()
        }
    }

    /// noida-db's Kafka on a free loopback port, from the checkout's `.venv` (`tests/run.sh`
    /// installs it); stopped when dropped. (Not tansu: with it the committed metadata read
    /// back here was empty.)
    struct Broker(std::path::PathBuf, u16);

    impl Broker {
        fn bin() -> std::path::PathBuf {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/noida-db")
        }

        fn start(name: &str) -> Broker {
            let dir =
                std::env::temp_dir().join(format!("ocrfleet-unit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let out = std::process::Command::new(Self::bin())
                .args([
                    "up",
                    "--only",
                    "kafka",
                    "--kafka-port",
                    &port.to_string(),
                    "--data-dir",
                ])
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .output()
                .expect("noida-db runs (tests/run.sh installs it in .venv)");
            assert!(
                out.status.success(),
                "noida-db up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let b = Broker(dir, port);
            let waited = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    waited.elapsed() < Duration::from_secs(30),
                    "noida-db's Kafka does not listen"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            b
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = std::process::Command::new(Self::bin())
                .arg("down")
                .arg("--data-dir")
                .arg(&self.0)
                .output();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The group's committed metadata of partition 0, read by another client.
    fn committed_metadata(brokers: &str, group: &str, topic: &str) -> String {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        got.find_partition(topic, 0)
            .map(|e| e.metadata().to_owned())
            .unwrap_or_default()
    }

    /// The crash-loop journal's rule, through the committer, on a real broker: when the OCR
    /// stage is told that a call's records are recorded, their `run=` is on the broker
    /// already; when the call returned and the source stopped in order, none is left behind.
    #[test]
    fn a_call_is_on_the_broker_before_it_is_told_to_start_and_gone_after_an_orderly_stop() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let broker = Broker::start("journal");
        let brokers = format!("127.0.0.1:{}", broker.1);
        let mut cfg = config(&brokers);
        cfg.kafka.topic = "journal-test".into();
        cfg.kafka.group = "journal-test-group".into();
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for i in 0..2 {
            producer
                .send(
                    BaseRecord::<(), _>::to(&cfg.kafka.topic)
                        .partition(0)
                        .payload(&format!("m{i}")),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(20)).unwrap();

        let mut source = Running::start(&cfg);
        // A generous wait for the group to form and the records to arrive, not a timing check.
        let chunk = (|| {
            let waited = Instant::now();
            while waited.elapsed() < Duration::from_secs(60) {
                if let Ok(c) = source.chunks.try_recv() {
                    return c;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("no chunk within 60 s");
        })();
        let e = &chunk[0];
        let (recorded, rx) = tokio::sync::oneshot::channel();
        assert!(source.journal.send(crate::envelope::EngineJournal {
            running: vec![(e.partition, e.offset, e.generation, false)],
            recorded: Some(recorded),
        }));
        rx.blocking_recv().expect("the committer answers");
        let meta = committed_metadata(&brokers, &cfg.kafka.group, &cfg.kafka.topic);
        assert!(
            meta.contains(&format!("run={}", e.offset)),
            "not on the broker when told: {meta:?}"
        );
        // The call returned; an orderly stop leaves no run= behind.
        assert!(source.journal.send(crate::envelope::EngineJournal {
            running: Vec::new(),
            recorded: None
        }));
        assert_eq!(source.stop(), SourceEnd::Stopped);
        let meta = committed_metadata(&brokers, &cfg.kafka.group, &cfg.kafka.topic);
        assert!(!meta.contains("run="), "left behind: {meta:?}");
    }

    /// A stopped broker (nothing listens on its port): the source reports a broker fault (the
    /// worker is not ready, nothing is dead-lettered) and goes on polling; a stop still ends it
    /// in order, without a broker to leave.
    #[test]
    fn a_broker_that_is_down_is_reported_and_a_stop_still_ends_the_loop() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // bound, then closed: nothing listens there
        let cfg = config(&format!("127.0.0.1:{port}"));
        let source = Running::start(&cfg);
        let health = source.health.clone();
        // A generous wait for librdkafka's first failed connection, not a timing assertion.
        let waited = Instant::now();
        while health.is_up(Component::Broker) && waited.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!health.is_up(Component::Broker), "{}", health.describe());
        assert!(!health.ready());
        assert!(
            !source.thread.is_finished(),
            "the source ended on a broker fault"
        );
        assert_eq!(source.stop(), SourceEnd::Stopped);
    }
}

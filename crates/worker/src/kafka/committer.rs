//! The consumer's offset commits, made on a thread of their own, one at a time, in the order
//! they were asked for.
//!
//! Why not on the poll thread: a synchronous commit waits for the group coordinator's answer
//! without a time limit (librdkafka's `rd_kafka_commit` waits with `RD_POLL_INFINITE`), for
//! example while the coordinator moves or the group rebalances. While the poll thread waits it
//! does not poll, so the member can miss a rebalance and lose its partitions without an
//! orderly revoke. And an asynchronous commit cannot tell when it is on the broker
//! (rust-rdkafka sets no callback for manual commits), which the crash-loop journal needs: a
//! record's `run=` must be on the broker before the engine starts it (see [`super::journal`]).
//!
//! So every commit of the member goes through this thread ([`run`]), synchronously, and the
//! poll thread only asks:
//! - [`Commits::finished`]: the sink finished work, commit what may be committed;
//! - [`JournalTx::send`] (from the OCR stage): what the engine runs changed; when the call
//!   adds records, its `recorded` is answered once the commit carrying them returned (or
//!   failed: the journal is best effort, and a broker that is down is not waited for);
//! - [`Commits::revoked`]: a revoked partition's last position, committed before the revoke
//!   ends (waited for at most [`REVOKE_WAIT`]; a commit given up is not made later; once the
//!   committer has ended, made by the caller);
//! - [`Commits::last`]: the commit before leaving the group; then the thread ends.
//!
//! Requests that queue while a commit is on its way are served together by the next one, so
//! at most one commit is in flight and a burst of requests costs one round trip. One thread
//! keeps their order: a position or journal is never overwritten by an older one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::source::SourceContext;
use crate::envelope::EngineJournal;
use crate::failure::Component;

/// How long a revoke waits for its commit: past it the revoke goes on without it (the new
/// owner redoes what was finished since the last commit: at-least-once).
pub const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// What the committer is asked to do.
#[derive(Debug)]
pub enum Job {
    /// Commit what is finished.
    Finished,
    /// What the engine runs now (see [`JournalTx`]).
    Journal(EngineJournal),
    /// A revoked partition's last position and journal.
    Revoked {
        commits: Vec<(i32, i64, String)>,
        done: std::sync::mpsc::Sender<Revoked>,
        given_up: Arc<AtomicBool>,
    },
    /// The last commit, before leaving the group; the thread ends after it.
    Last,
}

/// How a revoke's commit ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    Committed,
    Failed(String),
    /// Not done within [`REVOKE_WAIT`]: given up, never made later.
    GivenUp,
}

/// The poll thread's side.
#[derive(Debug, Clone)]
pub struct Commits(mpsc::UnboundedSender<Job>);

/// The OCR stage's side: records what the engine runs (the crash-loop journal).
#[derive(Debug, Clone)]
pub struct JournalTx(mpsc::UnboundedSender<Job>);

/// The committer's queue: [`Commits`] and [`JournalTx`] send, [`run`] receives.
pub fn channel() -> (Commits, JournalTx, mpsc::UnboundedReceiver<Job>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Commits(tx.clone()), JournalTx(tx), rx)
}

impl JournalTx {
    /// `false` when the committer has ended (the source is leaving the group).
    pub fn send(&self, j: EngineJournal) -> bool {
        self.0.send(Job::Journal(j)).is_ok()
    }
}

impl Commits {
    pub fn finished(&self) {
        let _ = self.0.send(Job::Finished);
    }

    /// Commits a revoked partition's last position, waiting for it at most [`REVOKE_WAIT`]
    /// (past that it is given up, not made later behind the new owner's back). Once the
    /// committer has ended (a revoke served while the consumer closes, after the last commit),
    /// the commit is made here: nothing else commits any more.
    pub fn revoked(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        topic: &str,
        commits: Vec<(i32, i64, String)>,
    ) -> Revoked {
        if self.0.is_closed() {
            return match commit(consumer, topic, &commits) {
                Ok(()) => Revoked::Committed,
                Err(e) => Revoked::Failed(e.to_string()),
            };
        }
        let (done, rx) = std::sync::mpsc::channel();
        let given_up = Arc::new(AtomicBool::new(false));
        let job = Job::Revoked {
            commits,
            done,
            given_up: given_up.clone(),
        };
        if self.0.send(job).is_err() {
            return Revoked::Failed("the committer ended".into());
        }
        rx.recv_timeout(REVOKE_WAIT).unwrap_or_else(|_| {
            given_up.store(true, Ordering::SeqCst);
            Revoked::GivenUp
        })
    }

    /// Asks for the last commit; [`run`] returns after it.
    pub fn last(&self) {
        let _ = self.0.send(Job::Last);
    }
}

/// Serves the queue until [`Commits::last`] (or until every sender is gone).
pub fn run(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let ctx = consumer.context();
    let mut last = false;
    while !last {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        // Journal answers wait for the commit below; a broker that is down is not waited
        // for (the run goes ahead unrecorded, as it would have to anyway).
        let mut recorded = Vec::new();
        for job in jobs {
            match job {
                Job::Finished => {}
                Job::Journal(j) => {
                    ctx.state().tracker.journal_running(&j.running);
                    recorded.extend(j.recorded);
                }
                Job::Revoked {
                    commits,
                    done,
                    given_up,
                } => {
                    let r = if given_up.load(Ordering::SeqCst) {
                        Revoked::GivenUp
                    } else {
                        match commit(consumer, topic, &commits) {
                            Ok(()) => Revoked::Committed,
                            Err(e) => Revoked::Failed(e.to_string()),
                        }
                    };
                    let _ = done.send(r);
                }
                Job::Last => last = true,
            }
        }
        if !ctx.health.is_up(Component::Broker) {
            if !recorded.is_empty() {
                tracing::debug!(
                    "the broker is down: the engine's journal is not recorded before this run"
                );
            }
            for r in recorded.drain(..) {
                let _ = r.send(());
            }
        }
        commit_finished(consumer, topic);
        for r in recorded {
            let _ = r.send(());
        }
    }
}

/// Commits what the tracker hands out (positions and journals), synchronously; a failure
/// makes the tracker offer those partitions again.
fn commit_finished(consumer: &BaseConsumer<SourceContext>, topic: &str) {
    let ctx = consumer.context();
    let commits = ctx.state().tracker.take_commits();
    if commits.is_empty() {
        return;
    }
    match commit(consumer, topic, &commits) {
        Ok(()) => tracing::debug!(?commits, "committed"),
        Err(e) => {
            tracing::warn!(error = %e, ?commits, "commit failed; the positions will be offered again (a run recorded by it is not protected against a crash loop)");
            let mut st = ctx.state();
            for (p, _, _) in &commits {
                st.tracker.commit_failed(*p);
            }
        }
    }
}

fn commit(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    commits: &[(i32, i64, String)],
) -> rdkafka::error::KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, pos, meta) in commits {
        let mut e = tpl.add_partition(topic, *p);
        let _ = e.set_offset(Offset::Offset(*pos));
        if !meta.is_empty() {
            e.set_metadata(meta);
        }
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

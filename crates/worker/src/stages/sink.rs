//! Stage 3: index documents, dead-letter rejections, and report every message as done to the
//! source (which owns the offsets).
//!
//! Infrastructure faults never end here as dead letters: a bulk request that fails as a whole
//! (or items that Elasticsearch asks to retry) is retried with backoff, without limit, while the
//! `elasticsearch` component is marked down; a dead letter that Kafka refuses is retried while
//! `dead_letter` is marked down. Work whose partition was revoked meanwhile is dropped (the new
//! owner redoes it). See [`crate::failure`] for the whole fault model and [`crate::es::bulk`] for
//! how a bulk answer is read.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Outcome;
use crate::envelope::{Done, Envelope, Failure};
use crate::es::bulk::{self, ItemOutcome, RequestOutcome};
use crate::es::client::EsClient;
use crate::es::document::Document;
use crate::failure::{Component, Rejection, Stage};
use crate::health::Health;
use crate::kafka::dlq::{DeadLetter, SendError};
use crate::kafka::Assignment;
use crate::metrics::Metrics;

/// Sends one bulk request: the seam that lets the retry logic be tested on canned answers.
pub trait BulkApi: Send + Sync {
    fn bulk(&self, ndjson: Vec<u8>, docs: usize) -> impl Future<Output = bulk::Reply> + Send;
}

impl BulkApi for EsClient {
    fn bulk(&self, ndjson: Vec<u8>, docs: usize) -> impl Future<Output = bulk::Reply> + Send {
        EsClient::bulk(self, ndjson, docs)
    }
}

/// How one document's write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Indexed,
    /// A newer record's document is already there (external versioning).
    Superseded,
    /// Elasticsearch refused the document itself: dead-letter it.
    Rejected(Rejection),
    /// Its partition was revoked while it waited: dropped, the new owner redoes it.
    Dropped,
}

/// Writes documents with bounded requests and unbounded retries (see the module doc).
pub struct Indexer<B> {
    pub api: B,
    pub health: Arc<Health>,
    pub metrics: Metrics,
    pub max_docs: usize,
    pub max_bytes: usize,
    pub first_backoff: Duration,
}

impl<B: BulkApi> Indexer<B> {
    /// Writes `docs`; one [`Written`] per document. Returns only when each is settled.
    pub async fn write(
        &self,
        docs: &[Document],
        still_ours: impl Fn(&Envelope) -> bool,
    ) -> Vec<Written> {
        let lines: Vec<Vec<u8>> = docs.iter().map(bulk_lines).collect();
        let sizes: Vec<usize> = lines.iter().map(Vec::len).collect();
        let mut out: Vec<Option<Written>> = vec![None; docs.len()];
        let mut queue: VecDeque<Vec<usize>> = bulk::plan(&sizes, self.max_docs, self.max_bytes)
            .into_iter()
            .map(|r| r.collect())
            .collect();
        let mut delays = crate::retry::unbounded(self.first_backoff);
        while let Some(mut group) = queue.pop_front() {
            group.retain(|&i| {
                let ours = still_ours(&docs[i].envelope);
                if !ours {
                    out[i] = Some(Written::Dropped);
                }
                ours
            });
            if group.is_empty() {
                continue;
            }
            let ndjson = group
                .iter()
                .map(|&i| lines[i].as_slice())
                .collect::<Vec<_>>()
                .concat();
            let reply = self.api.bulk(ndjson, group.len()).await;
            let fault = settle(
                bulk::classify(&reply, group.len()),
                group,
                &sizes,
                &mut out,
                &mut queue,
            );
            match fault {
                None => {
                    self.health.clear(Component::Elasticsearch, "bulk");
                    delays = crate::retry::unbounded(self.first_backoff);
                }
                Some(reason) => {
                    self.health.fault(Component::Elasticsearch, "bulk", reason);
                    self.metrics.es_retries.inc();
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
                }
            }
        }
        // Every document is settled. If the last ones were dropped because their partitions were
        // revoked while a fault was open, no request of ours says whether Elasticsearch works
        // now: the fault is this source's to withdraw, or it would stay open for good (intake
        // paused, nothing left to clear it). The probe keeps reporting an outage that goes on,
        // and the next bulk request opens the fault again if it fails.
        self.health.clear(Component::Elasticsearch, "bulk");
        out.into_iter()
            .map(|o| o.expect("every document settled"))
            .collect()
    }
}

/// A document's two lines of a bulk request: the action, then the source.
fn bulk_lines(d: &Document) -> Vec<u8> {
    let mut l = bulk::action_line(&d.id, d.version);
    l.push(b'\n');
    serde_json::to_writer(&mut l, &d.body).expect("documents serialise");
    l.push(b'\n');
    l
}

/// Settles what a bulk request's answer settles of `group` into `out`, and queues what is to
/// be sent again (items to retry in front, a request too large in halves); the fault to report
/// when the request or some of its items must be retried.
fn settle(
    outcome: RequestOutcome,
    group: Vec<usize>,
    sizes: &[usize],
    out: &mut [Option<Written>],
    queue: &mut VecDeque<Vec<usize>>,
) -> Option<String> {
    match outcome {
        RequestOutcome::Items(items) => {
            let mut retry = Vec::new();
            let mut reason = String::new();
            for (&i, o) in group.iter().zip(items) {
                match o {
                    ItemOutcome::Indexed => out[i] = Some(Written::Indexed),
                    ItemOutcome::Superseded => out[i] = Some(Written::Superseded),
                    ItemOutcome::Rejected {
                        status,
                        kind,
                        reason,
                    } => {
                        let class = if kind.is_empty() {
                            format!("http_{status}")
                        } else {
                            kind
                        };
                        out[i] = Some(Written::Rejected(Rejection::new(
                            Stage::Index,
                            class,
                            format!("Elasticsearch refused the document (HTTP {status}): {reason}"),
                        )));
                    }
                    ItemOutcome::Retry(r) => {
                        retry.push(i);
                        reason = r;
                    }
                }
            }
            if retry.is_empty() {
                None
            } else {
                queue.push_front(retry);
                Some(format!("bulk items to retry: {reason}"))
            }
        }
        RequestOutcome::TooLarge if group.len() == 1 => {
            let i = group[0];
            out[i] = Some(Written::Rejected(Rejection::new(
                Stage::Index,
                "too_large",
                format!(
                    "Elasticsearch refused the document as too large (HTTP 413): {} bytes as a bulk request",
                    sizes[i]
                ),
            )));
            None
        }
        RequestOutcome::TooLarge => {
            let half = group.len() / 2;
            queue.push_front(group[half..].to_vec());
            queue.push_front(group[..half].to_vec());
            tracing::info!(
                docs = group.len(),
                "bulk request too large (HTTP 413); splitting it"
            );
            None
        }
        RequestOutcome::Infra(reason) => {
            queue.push_front(group);
            Some(reason)
        }
    }
}

/// How sending one dead letter ended.
#[derive(Debug, PartialEq, Eq)]
enum Lettered {
    Sent,
    /// Its partition was revoked meanwhile: dropped, the new owner redoes it.
    Dropped,
}

/// The dead-letter producer can never send again: fatal for the process (nothing of the
/// batch is committed; a fresh process gets a fresh producer).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ProducerGone(String);

/// Sends a dead letter, retrying while Kafka refuses it.
async fn dead_letter(
    dlq: &DeadLetter,
    f: &Failure,
    health: &Health,
    still_ours: impl Fn(&Envelope) -> bool,
) -> Result<Lettered, ProducerGone> {
    let mut delays = crate::retry::unbounded(Duration::from_millis(200));
    loop {
        if !still_ours(&f.envelope) {
            return Ok(Lettered::Dropped);
        }
        match dlq.send(f).await {
            Ok(_) => {
                health.clear(Component::DeadLetter, "produce");
                return Ok(Lettered::Sent);
            }
            Err(SendError::Fatal(reason)) => {
                health.fault(Component::DeadLetter, "produce", &reason);
                return Err(ProducerGone(reason));
            }
            Err(SendError::Retry(reason)) => {
                health.fault(Component::DeadLetter, "produce", reason);
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
            }
        }
    }
}

/// How long the sink waits for more outcomes to fill a bulk request once it has one: short
/// next to a bulk request's own time, long enough that a busy pipeline sends full requests.
pub const LINGER: Duration = Duration::from_millis(50);

/// The sink stage and everything it uses; nothing else of the worker's settings.
pub struct Sink {
    /// Writes the documents; its `max_docs` is also the most outcomes one round takes.
    pub indexer: Indexer<EsClient>,
    pub dlq: DeadLetter,
    /// Which partitions (and generations) are still ours: revoked work is dropped, not written.
    pub assignment: Assignment,
    /// Every finished message goes back to the source, which commits its offset.
    pub done: mpsc::UnboundedSender<Done>,
    /// See [`LINGER`].
    pub linger: Duration,
}

/// Runs until `out_rx` closes. `Err` is fatal for the process (the dead-letter producer can
/// never send again).
pub async fn sink_stage(mut out_rx: mpsc::Receiver<Outcome>, sink: Sink) -> anyhow::Result<()> {
    let Sink {
        indexer,
        dlq,
        assignment,
        done: done_tx,
        linger: linger_for,
    } = sink;
    let (metrics, health) = (indexer.metrics.clone(), indexer.health.clone());
    let still_ours = |e: &Envelope| assignment.is_current(e.partition, e.generation);
    while let Some(first) = out_rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(linger_for);
        tokio::pin!(linger);
        while batch.len() < indexer.max_docs {
            tokio::select! {
                o = out_rx.recv() => match o { Some(o) => batch.push(o), None => break },
                _ = &mut linger => break,
            }
        }
        let mut docs = Vec::new();
        let mut failures = Vec::new();
        let mut done = Vec::new();
        for o in batch {
            if !still_ours(o.envelope()) {
                done.push(o.envelope().done());
                continue;
            }
            match o {
                Outcome::Doc(d) => docs.push(*d),
                Outcome::Failed(f) => failures.push(f),
                Outcome::Dropped(e) => done.push(e.done()),
            }
        }
        if !docs.is_empty() {
            let written = indexer.write(&docs, still_ours).await;
            for (d, w) in docs.into_iter().zip(written) {
                match w {
                    Written::Indexed => {
                        metrics.indexed.inc();
                        if let Some(ts) = d.envelope.timestamp_ms {
                            let age = chrono::Utc::now().timestamp_millis() - ts;
                            metrics.end_to_end.observe(age.max(0) as f64 / 1000.0);
                        }
                        done.push(d.envelope.done());
                    }
                    Written::Superseded => {
                        metrics.superseded.inc();
                        tracing::debug!(id = %d.id, "a newer record's document is already indexed; this one is superseded");
                        done.push(d.envelope.done());
                    }
                    Written::Rejected(rejection) => failures.push(Failure {
                        envelope: d.envelope,
                        rejection,
                    }),
                    Written::Dropped => done.push(d.envelope.done()),
                }
            }
        }
        if !failures.is_empty() {
            let sent = futures::future::join_all(
                failures
                    .iter()
                    .map(|f| dead_letter(&dlq, f, &health, still_ours)),
            )
            .await;
            // A fatal producer: nothing of this batch is reported done (not committed).
            if let Some(Err(gone)) = sent.into_iter().find(Result::is_err) {
                return Err(gone.into());
            }
            done.extend(failures.iter().map(|f| f.envelope.done()));
            // Each dead letter is sent or dropped (revoked): none is left to report a fault on
            // the dead-letter topic, so none may stay open (see `Indexer::write`).
            health.clear(Component::DeadLetter, "produce");
        }
        if !done.is_empty() {
            health.progress();
        }
        for d in done {
            let _ = done_tx.send(d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::document::{DocBody, DocTimings, SourceRef};
    use std::sync::Mutex;

    /// Canned answers, in order; records the documents of each request.
    struct Canned {
        answers: Mutex<VecDeque<(Result<u16, String>, String)>>,
        seen: Mutex<Vec<usize>>,
    }

    impl Canned {
        fn new(answers: Vec<(Result<u16, String>, serde_json::Value)>) -> Canned {
            Canned {
                answers: Mutex::new(
                    answers
                        .into_iter()
                        .map(|(s, b)| (s, b.to_string()))
                        .collect(),
                ),
                seen: Mutex::new(Vec::new()),
            }
        }
    }

    impl BulkApi for &Canned {
        fn bulk(&self, _ndjson: Vec<u8>, docs: usize) -> impl Future<Output = bulk::Reply> + Send {
            self.seen.lock().unwrap().push(docs);
            let (s, b) = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("no more canned answers");
            let reply = match s {
                Ok(status) => Ok(bulk::Answer {
                    status,
                    body: b.into_bytes(),
                }),
                Err(e) => Err(bulk::NoAnswer::Send(e)),
            };
            async move { reply }
        }
    }

    fn doc(i: i64) -> Document {
        Document {
            envelope: Envelope {
                partition: 0,
                offset: i,
                generation: 1,
                key: None,
                value: None,
                headers: Vec::new(),
                headers_total: 0,
                timestamp_ms: Some(100),
                care: Default::default(),
            },
            id: format!("d{i}"),
            version: Some(100),
            body: DocBody {
                url: "http://x/a.png".into(),
                message_id: None,
                text: "t".into(),
                lines: Vec::new(),
                width: 1,
                height: 1,
                pages: 1,
                page_sources: vec!["ocr"],
                metadata: Default::default(),
                headers: Default::default(),
                source: SourceRef {
                    topic: "t".into(),
                    partition: 0,
                    offset: i,
                    timestamp: Some(100),
                },
                model: "m".into(),
                contract: 1,
                worker: "w".into(),
                attempts: 1,
                timings_ms: DocTimings::default(),
                processed_at: "now".into(),
            },
        }
    }

    fn indexer(api: &Canned, health: Arc<Health>) -> Indexer<&Canned> {
        Indexer {
            api,
            health,
            metrics: Metrics::new(),
            max_docs: 10,
            max_bytes: 1 << 20,
            first_backoff: Duration::from_millis(100),
        }
    }

    fn ok_items(n: usize) -> serde_json::Value {
        serde_json::json!({"errors": false, "items": (0..n).map(|_| serde_json::json!({"index": {"status": 201}})).collect::<Vec<_>>()})
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_key_is_retried_never_rejected_and_clears_when_fixed() {
        let api = Canned::new(vec![
            (
                Ok(401),
                serde_json::json!({"error": {"type": "security_exception", "reason": "api key expired"}}),
            ),
            (
                Ok(401),
                serde_json::json!({"error": {"type": "security_exception", "reason": "api key expired"}}),
            ),
            (Err("connection refused".into()), serde_json::Value::Null),
            (Ok(200), ok_items(3)),
        ]);
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        health.set_started();
        let ix = indexer(&api, health.clone());
        let docs: Vec<Document> = (0..3).map(doc).collect();
        let t0 = tokio::time::Instant::now();
        let w = ix.write(&docs, |_| true).await;
        assert_eq!(w, vec![Written::Indexed; 3]);
        assert_eq!(
            *api.seen.lock().unwrap(),
            vec![3, 3, 3, 3],
            "the same request, resent"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "backed off between tries"
        );
        assert!(health.ready(), "cleared after the successful request");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fault_is_reported_while_it_lasts() {
        let api = Canned::new(vec![
            (Ok(503), serde_json::json!({"error": "unavailable"})),
            (Ok(200), ok_items(1)),
        ]);
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        health.set_started();
        let ix = indexer(&api, health.clone());
        let docs = vec![doc(0)];
        let h = health.clone();
        let watcher = tokio::spawn(async move {
            // While the first backoff runs, the component is down.
            tokio::time::sleep(Duration::from_millis(1)).await;
            (h.is_up(Component::Elasticsearch), h.intake_blocked())
        });
        let w = ix.write(&docs, |_| true).await;
        assert_eq!(w, vec![Written::Indexed]);
        assert_eq!(watcher.await.unwrap(), (false, true));
        assert!(health.is_up(Component::Elasticsearch));
    }

    #[tokio::test(start_paused = true)]
    async fn http_413_splits_until_the_one_oversized_document_is_rejected() {
        let api = Canned::new(vec![
            (Ok(413), serde_json::Value::Null), // [0,1,2,3]
            (Ok(413), serde_json::Value::Null), // [0,1]
            (Ok(200), ok_items(1)),             // [0]
            (Ok(413), serde_json::Value::Null), // [1] alone: too large
            (Ok(200), ok_items(2)),             // [2,3]
        ]);
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        let ix = indexer(&api, health);
        let docs: Vec<Document> = (0..4).map(doc).collect();
        let w = ix.write(&docs, |_| true).await;
        assert_eq!(*api.seen.lock().unwrap(), vec![4, 2, 1, 1, 2]);
        assert_eq!(w[0], Written::Indexed);
        assert!(
            matches!(&w[1], Written::Rejected(r) if r.class == "too_large" && r.stage == Stage::Index)
        );
        assert_eq!(&w[2..], &[Written::Indexed, Written::Indexed]);
    }

    #[tokio::test(start_paused = true)]
    async fn item_results_mix_indexed_superseded_rejected_and_retried() {
        let api = Canned::new(vec![
            (
                Ok(200),
                serde_json::json!({"errors": true, "items": [
                    {"index": {"status": 201}},
                    {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "newer"}}},
                    {"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad field"}}},
                    {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}}
                ]}),
            ),
            (Ok(200), ok_items(1)),
        ]);
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        let ix = indexer(&api, health);
        let docs: Vec<Document> = (0..4).map(doc).collect();
        let w = ix.write(&docs, |_| true).await;
        assert_eq!(
            *api.seen.lock().unwrap(),
            vec![4, 1],
            "only the 429 item is resent"
        );
        assert_eq!(w[0], Written::Indexed);
        assert_eq!(w[1], Written::Superseded);
        assert!(matches!(&w[2], Written::Rejected(r) if r.class == "mapper_parsing_exception"));
        assert_eq!(w[3], Written::Indexed);
    }

    #[tokio::test(start_paused = true)]
    async fn revoked_work_is_dropped_instead_of_written() {
        let api = Canned::new(vec![(Ok(200), ok_items(1))]);
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        let ix = indexer(&api, health);
        let docs: Vec<Document> = (0..2).map(doc).collect();
        let w = ix.write(&docs, |e| e.offset == 1).await;
        assert_eq!(w, vec![Written::Dropped, Written::Indexed]);
        assert_eq!(*api.seen.lock().unwrap(), vec![1]);
    }

    /// The fault opened while retrying is withdrawn when the work it was about is revoked and
    /// dropped: otherwise intake would stay paused for good, with nothing left to clear it.
    #[tokio::test(start_paused = true)]
    async fn a_fault_for_work_that_is_revoked_meanwhile_does_not_outlive_it() {
        let api = Canned::new(vec![
            (Err("connection refused".into()), serde_json::Value::Null),
            (Err("connection refused".into()), serde_json::Value::Null),
        ]);
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        health.set_started();
        let ix = indexer(&api, health.clone());
        let docs: Vec<Document> = (0..3).map(doc).collect();
        // The partition is revoked after the second failed request, while its fault is open.
        let w = ix
            .write(&docs, |_| api.seen.lock().unwrap().len() < 2)
            .await;
        assert_eq!(w, vec![Written::Dropped; 3]);
        assert_eq!(*api.seen.lock().unwrap(), vec![3, 3]);
        assert!(
            health.is_up(Component::Elasticsearch) && !health.intake_blocked() && health.ready(),
            "the fault went with the work: {}",
            health.describe()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_capped_by_bytes() {
        let api = Canned::new(vec![(Ok(200), ok_items(1)), (Ok(200), ok_items(1))]);
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        let mut ix = indexer(&api, health);
        ix.max_bytes = 600; // one of these documents is ~500 bytes of NDJSON
        let docs: Vec<Document> = (0..2).map(doc).collect();
        ix.write(&docs, |_| true).await;
        assert_eq!(*api.seen.lock().unwrap(), vec![1, 1]);
    }
}

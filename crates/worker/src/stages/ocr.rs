//! Stage 2: batches of decoded images through the engine.
//!
//! Telling a bad image from a broken engine: when a batch comes back with inference errors, the
//! engine's probe (a tiny known-good run) decides. If the probe passes, the errors belong to
//! those images and they are dead-lettered (stage `ocr`). If it fails, the engine (or its GPU) is
//! broken: nothing is dead-lettered, the `engine` component is marked down (intake pauses,
//! `/readyz` 503), the probe is retried with backoff and the same batch runs again once it
//! passes. If the engine does not come back within `--engine-fault-timeout`, or its thread is
//! gone, the stage reports a fatal error and the worker exits non-zero so that Kubernetes starts
//! a fresh process; nothing in flight is committed.
//!
//! A call that does not return within `--engine-timeout` is a hung engine (a stuck device
//! call): the same, fatal. An image on which the engine panics is dead-lettered alone
//! (`ocr/panic`; the engine runs the batch again image by image). Every page of a multi-page
//! image is a batch item of its own; the pages' results are put back together per message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use ocrfleet_ocr::{EngineHandle, ImageText, OcrError, Timings};
use tokio::sync::mpsc;

use super::prepare::Ready;
use super::Outcome;
use crate::envelope::{EngineJournal, Failure};
use crate::es::document::{DocBody, DocTimings, Document, SourceRef};
use crate::failure::{Component, Rejection, Stage};
use crate::health::Health;
use crate::kafka::journal::Care;
use crate::message::{self, CONTRACT_VERSION};
use crate::metrics::Metrics;

/// What the OCR stage needs of the settings.
#[derive(Debug, Clone)]
pub struct OcrSettings {
    /// Pages per engine call at most (a message's pages are never split across calls, so a
    /// message with more pages makes a larger call).
    pub batch: usize,
    /// `--engine-fault-timeout`.
    pub fault_timeout: Duration,
    /// `--engine-timeout`, resolved.
    pub call_timeout: Duration,
    /// For the documents: the source topic and this worker's id.
    pub topic: String,
    pub worker_id: String,
    /// Where to record what the engine runs, for crash-loop protection (none: off).
    pub journal: Option<mpsc::UnboundedSender<EngineJournal>>,
    /// Checks the signature of replayed records' headers (none: they are ignored).
    pub replay_key: Option<message::ReplayKey>,
    /// The partitions this worker owns: work of a revoked one is dropped before it is run.
    pub assignment: Option<crate::kafka::Assignment>,
}

impl OcrSettings {
    fn still_ours(&self, e: &crate::envelope::Envelope) -> bool {
        self.assignment
            .as_ref()
            .is_none_or(|a| a.is_current(e.partition, e.generation))
    }
}

impl OcrSettings {
    /// `--engine-timeout` when given, else 20 times the slowest warm-up run, at least 5 minutes.
    pub fn call_timeout(given: Option<Duration>, slowest_warm_up_run: f64) -> Duration {
        given.unwrap_or_else(|| {
            Duration::from_secs(300).max(Duration::from_secs_f64(20.0 * slowest_warm_up_run))
        })
    }
}

/// Runs batches until `ready_rx` closes, keeping up to the engine's lanes of calls in flight
/// (so that the engine's stages overlap across calls). `Err` is fatal for the process.
pub async fn ocr_stage(
    mut ready_rx: mpsc::Receiver<Ready>,
    cfg: OcrSettings,
    engine: EngineHandle,
    out_tx: mpsc::Sender<Outcome>,
    metrics: Metrics,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    use futures::{FutureExt, StreamExt};
    let mut lanes = Lanes::new(engine.lanes());
    // Calls run unordered (one slow call does not hold up the others' lanes) and are emitted
    // in the order they started; beside them, each running call's crash-loop journal entries.
    let mut running = futures::stream::FuturesUnordered::new();
    let mut finished: std::collections::BTreeMap<u64, Returned> = Default::default();
    let mut next_emit = 0u64;
    let mut journal: std::collections::BTreeMap<u64, Vec<(i32, i64, u64, bool)>> =
        Default::default();
    // A record that crashed a process before runs alone, with nothing else in the engine; one
    // met while filling a batch, or while other calls run, waits here.
    let mut held: Option<Ready> = None;
    let mut closed = false;
    loop {
        let can_take = !closed && lanes.may_take(held.as_ref().map(is_alone));
        tokio::select! {
            biased;
            done = running.next(), if !running.is_empty() => {
                let Some((id, call)) = done else { continue };
                let (batch, counts, results, took): Call = call;
                // A hung or lost engine: the call is still in the engine (or died in it), so
                // it stays in the journal; the process ends.
                let results = results?;
                lanes.finish(id);
                journal.remove(&id);
                // The call returned: its records leave the journal with the next commit.
                record(&cfg, journal.values().flatten().copied().collect(), false).await;
                finished.insert(id, (batch, counts, results, took));
                while let Some((batch, counts, results, took)) = finished.remove(&next_emit) {
                    next_emit += 1;
                    lanes.emitted();
                    metrics.stage_seconds.with_label_values(&["ocr"]).observe(took.as_secs_f64());
                    if !emit(&cfg, &engine, &metrics, &out_tx, batch, counts, results).await {
                        return Ok(());
                    }
                }
                if closed && running.is_empty() && held.is_none() {
                    break;
                }
            }
            first = next_ready(&mut held, &mut ready_rx), if can_take => {
                let Some(first) = first else {
                    closed = true;
                    if running.is_empty() {
                        break;
                    }
                    continue;
                };
                let alone = is_alone(&first);
                if !lanes.may_start(alone) {
                    // A suspect taken while other calls run waits until the engine is empty.
                    held = Some(first);
                    continue;
                }
                let mut batch = vec![first];
                let mut pages = batch[0].pages.len();
                while !alone && pages < cfg.batch {
                    match ready_rx.try_recv() {
                        Ok(r) if is_alone(&r) => {
                            held = Some(r);
                            break;
                        }
                        Ok(r) => {
                            pages += r.pages.len();
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
                // Work of partitions revoked while it waited is dropped, not run.
                let (batch, dropped): (Vec<Ready>, Vec<Ready>) = batch
                    .into_iter()
                    .partition(|r| cfg.still_ours(&r.envelope));
                for r in dropped {
                    if out_tx.send(Outcome::Dropped(r.envelope)).await.is_err() {
                        return Ok(());
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                if alone {
                    let e = &batch[0].envelope;
                    tracing::warn!(partition = e.partition, offset = e.offset, care = ?e.care, "running a record alone: it was in the engine when a worker process died");
                }
                let id = lanes.start(alone);
                journal.insert(id, entries(&batch, alone));
                // Written ahead: on the broker before the call starts.
                record(&cfg, journal.values().flatten().copied().collect(), true).await;
                metrics.batch_size.with_label_values(&["ocr"]).observe(pages as f64);
                running.push(submit(&engine, &cfg, &health, batch).map(move |c| (id, c)));
            }
            else => break,
        }
    }
    Ok(())
}

/// The stage's scheduling rules, without the engine: at most `lanes` calls run at once, and
/// at most four lanes' worth wait to be emitted behind a slow one; a call of a record that
/// runs alone starts only into an empty engine, and nothing starts beside it.
#[derive(Debug)]
struct Lanes {
    lanes: usize,
    /// Running calls: id → alone.
    running: std::collections::BTreeMap<u64, bool>,
    /// Calls returned and not yet emitted.
    unemitted: usize,
    next_id: u64,
}

impl Lanes {
    fn new(lanes: usize) -> Lanes {
        Lanes {
            lanes: lanes.max(1),
            running: Default::default(),
            unemitted: 0,
            next_id: 0,
        }
    }

    fn alone_running(&self) -> bool {
        self.running.values().any(|&a| a)
    }

    /// Whether to take the next record (`held`: whether the record held back runs alone).
    fn may_take(&self, held: Option<bool>) -> bool {
        !self.alone_running()
            && self.running.len() < self.lanes
            && self.running.len() + self.unemitted < 4 * self.lanes
            && held.is_none_or(|alone| !alone || self.running.is_empty())
    }

    /// Whether a call (of a record that runs `alone`) may start now.
    fn may_start(&self, alone: bool) -> bool {
        !self.alone_running() && (!alone || self.running.is_empty())
    }

    fn start(&mut self, alone: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.running.insert(id, alone);
        id
    }

    fn finish(&mut self, id: u64) {
        if self.running.remove(&id).is_some() {
            self.unemitted += 1;
        }
    }

    fn emitted(&mut self) {
        self.unemitted = self.unemitted.saturating_sub(1);
    }
}

/// The next record: the one held back, else the next from the queue (`None` once it closed).
async fn next_ready(held: &mut Option<Ready>, rx: &mut mpsc::Receiver<Ready>) -> Option<Ready> {
    match held.take() {
        Some(r) => Some(r),
        None => rx.recv().await,
    }
}

fn is_alone(r: &Ready) -> bool {
    matches!(r.envelope.care, Care::Alone(_))
}

/// A call that returned, waiting to be emitted in its turn.
type Returned = (
    Vec<Ready>,
    Vec<usize>,
    Vec<Result<ImageText, OcrError>>,
    Duration,
);

/// What a call in flight gives back: its records, their page counts, the results and how long
/// it took.
type Call = (
    Vec<Ready>,
    Vec<usize>,
    anyhow::Result<Vec<Result<ImageText, OcrError>>>,
    Duration,
);

/// Has the Kafka source record what the engine runs now (none: it is idle); with `ahead` (a
/// call is about to add records), waits until it is on the broker (see
/// [`crate::kafka::journal`]).
async fn record(cfg: &OcrSettings, running: Vec<(i32, i64, u64, bool)>, ahead: bool) {
    let Some(tx) = &cfg.journal else { return };
    if !ahead {
        let _ = tx.send(EngineJournal {
            running,
            recorded: None,
        });
        return;
    }
    let (recorded, rx) = tokio::sync::oneshot::channel();
    if tx
        .send(EngineJournal {
            running,
            recorded: Some(recorded),
        })
        .is_ok()
    {
        // The source answers within a poll; it may be stopping, so do not wait for ever.
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    }
}

/// The crash-loop journal's entries of a call's records.
fn entries(batch: &[Ready], alone: bool) -> Vec<(i32, i64, u64, bool)> {
    batch
        .iter()
        .map(|r| {
            (
                r.envelope.partition,
                r.envelope.offset,
                r.envelope.generation,
                alone,
            )
        })
        .collect()
}

/// Starts one call: every page is an item; the future gives the records back with the results.
fn submit<'a>(
    engine: &'a EngineHandle,
    cfg: &'a OcrSettings,
    health: &'a Health,
    mut batch: Vec<Ready>,
) -> impl std::future::Future<Output = Call> + 'a {
    let mut images: Vec<RgbImage> = Vec::new();
    let mut counts = Vec::with_capacity(batch.len());
    for r in &mut batch {
        counts.push(r.pages.len());
        images.append(&mut r.pages);
    }
    async move {
        let t = Instant::now();
        if images.is_empty() {
            // PDFs read wholly from their text layers: nothing for the engine.
            return (batch, counts, Ok(Vec::new()), t.elapsed());
        }
        let results = run_until_healthy(engine, images, cfg, health).await;
        (batch, counts, results, t.elapsed())
    }
}

/// Turns one call's results into outcomes for the sink; `false` when the sink is gone.
async fn emit(
    cfg: &OcrSettings,
    engine: &EngineHandle,
    metrics: &Metrics,
    out_tx: &mpsc::Sender<Outcome>,
    batch: Vec<Ready>,
    counts: Vec<usize>,
    results: Vec<Result<ImageText, OcrError>>,
) -> bool {
    for t in results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|t| t.timings)
    {
        for (stage, ms) in [
            ("det", t.det),
            ("crop", t.crop),
            ("cls", t.cls),
            ("rec", t.rec),
        ] {
            metrics
                .engine_stage_seconds
                .with_label_values(&[stage])
                .inc_by(ms.max(0.0) / 1000.0);
        }
    }
    let mut results = results.into_iter();
    for (mut ready, n) in batch.into_iter().zip(counts) {
        let pages = per_page(results.by_ref().take(n).collect());
        let text = pages.and_then(|pages| {
            match ready.plan.take() {
                // A PDF: its text-layer pages and its OCRed ones, in page order.
                Some(plan) => ocrfleet_pdf::assemble(plan, pages),
                None => ImageText::from_pages(pages),
            }
            .ok_or_else(|| OcrError::Inference {
                stage: ocrfleet_ocr::Stage::Detect,
                message: "a message with no page".into(),
            })
        });
        let outcome = match text {
            Ok(text) => Outcome::Doc(Box::new(document(cfg, engine.model_version(), ready, text))),
            Err(e) => {
                let stage = if e.is_input_error() {
                    Stage::Decode
                } else {
                    Stage::Ocr
                };
                Outcome::Failed(Failure {
                    envelope: ready.envelope,
                    rejection: Rejection::new(stage, e.class(), e.to_string())
                        .attempts(ready.attempts),
                })
            }
        };
        if out_tx.send(outcome).await.is_err() {
            return false;
        }
    }
    true
}

/// A message's pages from their results: the first failing page fails it (its page number
/// among the OCRed pages when there are several).
fn per_page(pages: Vec<Result<ImageText, OcrError>>) -> Result<Vec<ImageText>, OcrError> {
    let several = pages.len() > 1;
    let mut ok = Vec::with_capacity(pages.len());
    for (i, p) in pages.into_iter().enumerate() {
        match p {
            Ok(t) => ok.push(t),
            Err(OcrError::Inference { stage, message }) if several => {
                return Err(OcrError::Inference {
                    stage,
                    message: format!("page {}: {message}", i + 1),
                })
            }
            Err(OcrError::Panic(m)) if several => {
                return Err(OcrError::Panic(format!("page {}: {m}", i + 1)))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ok)
}

/// Runs `images` until the results can be trusted (see the module doc).
async fn run_until_healthy(
    engine: &EngineHandle,
    mut images: Vec<RgbImage>,
    cfg: &OcrSettings,
    health: &Health,
) -> anyhow::Result<Vec<Result<ImageText, OcrError>>> {
    loop {
        let n = images.len();
        let Ok((back, results)) =
            tokio::time::timeout(cfg.call_timeout, engine.recognize_keep(images)).await
        else {
            let why = format!(
                "an engine call of {n} image(s) did not return within {} (--engine-timeout): the engine or its device hangs",
                humantime::format_duration(cfg.call_timeout)
            );
            health.fault(Component::Engine, "hang", &why);
            anyhow::bail!("{why}; exiting so that a fresh process gets the device");
        };
        if let Some(Err(e)) = results
            .iter()
            .find(|r| matches!(r, Err(OcrError::EngineGone(_))))
        {
            health.fault(Component::Engine, "thread", e);
            anyhow::bail!("the OCR engine stopped: {e}");
        }
        if !results
            .iter()
            .any(|r| matches!(r, Err(OcrError::Inference { .. })))
        {
            return Ok(results);
        }
        match engine.probe().await {
            Ok(()) => {
                // The engine works: the errors are these images' own.
                health.clear(Component::Engine, "probe");
                return Ok(results);
            }
            Err(reason) => {
                health.fault(Component::Engine, "probe", &reason);
                wait_for_engine(engine, cfg.fault_timeout, health).await?;
                images = back;
            }
        }
    }
}

/// Probes with backoff until the engine works again, or fails after `timeout`.
async fn wait_for_engine(
    engine: &EngineHandle,
    timeout: Duration,
    health: &Health,
) -> anyhow::Result<()> {
    let since = Instant::now();
    let mut delays = crate::retry::unbounded(Duration::from_millis(500));
    loop {
        if since.elapsed() >= timeout {
            anyhow::bail!(
                "the OCR engine failed its probe for {timeout:?} (--engine-fault-timeout); exiting so that a fresh process gets the device"
            );
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
        match engine.probe().await {
            Ok(()) => {
                health.clear(Component::Engine, "probe");
                return Ok(());
            }
            Err(reason) if reason.contains("engine thread") => {
                health.fault(Component::Engine, "thread", &reason);
                anyhow::bail!("the OCR engine stopped: {reason}");
            }
            Err(reason) => health.fault(Component::Engine, "probe", reason),
        }
    }
}

fn document(cfg: &OcrSettings, model: &str, r: Ready, text: ImageText) -> Document {
    let e = &r.envelope;
    let replay =
        message::ReplayOrigin::read(&e.headers, e.value.as_deref(), cfg.replay_key.as_ref());
    let id = message::document_id(
        r.request.id.as_deref(),
        replay.of.as_deref(),
        &cfg.topic,
        e.partition,
        e.offset,
    );
    let headers = e
        .headers
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                v.as_deref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    let t = text.timings;
    let body = DocBody {
        url: r.request.url,
        message_id: r.request.id,
        text: text.text,
        lines: text.lines,
        width: text.width,
        height: text.height,
        pages: text.pages,
        page_sources: text.sources.iter().map(|s| s.as_str()).collect(),
        metadata: r.request.metadata,
        headers,
        source: SourceRef {
            topic: cfg.topic.clone(),
            partition: e.partition,
            offset: e.offset,
            timestamp: e.timestamp_ms,
        },
        model: model.to_owned(),
        contract: CONTRACT_VERSION,
        worker: cfg.worker_id.clone(),
        attempts: r.attempts,
        timings_ms: DocTimings {
            fetch: r.fetch_ms,
            stages: Timings {
                decode: r.decode_ms,
                total: r.fetch_ms + r.decode_ms + t.total,
                ..t
            },
        },
        processed_at: chrono::Utc::now().to_rfc3339(),
    };
    Document {
        // A replayed record is versioned by its original's timestamp, so that it cannot
        // overwrite a document written since by a newer record for the same id.
        version: replay.timestamp_ms.or(r.envelope.timestamp_ms),
        envelope: r.envelope,
        id,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With two lanes, a record that runs alone waits for the engine to be empty, runs with
    /// nothing beside it, and only its own call's end lets the others in again.
    #[test]
    fn a_suspect_runs_alone_even_with_several_lanes() {
        let mut l = Lanes::new(2);
        assert!(l.may_take(None) && l.may_start(false));
        let a = l.start(false);
        assert!(l.may_take(None), "a second lane is free");
        assert!(!l.may_start(true), "a suspect does not start beside a call");
        assert!(!l.may_take(Some(true)), "and is not taken again while held");
        assert!(l.may_take(Some(false)));
        let b = l.start(false);
        assert!(!l.may_take(None), "both lanes busy");
        l.finish(a);
        l.emitted();
        assert!(!l.may_start(true), "b still runs");
        l.finish(b);
        l.emitted();
        assert!(l.may_take(Some(true)) && l.may_start(true));
        let s = l.start(true);
        assert!(
            !l.may_take(None) && !l.may_start(false),
            "nothing beside a suspect"
        );
        let c = l.next_id;
        l.finish(c); // an unknown id (an older call) does not end the suspect's run
        assert!(!l.may_take(None));
        l.finish(s);
        assert!(l.may_take(None));
    }

    /// Calls that returned wait to be emitted behind a slow one, but a lane is free as soon as
    /// its call returns; at most four lanes' worth wait.
    #[test]
    fn a_slow_call_holds_its_lane_only() {
        let mut l = Lanes::new(2);
        let slow = l.start(false);
        for _ in 0..7 {
            assert!(l.may_take(None));
            let id = l.start(false);
            l.finish(id); // returned, not emitted (the slow one is first)
        }
        assert!(
            !l.may_take(None),
            "1 running + 7 unemitted = 8 = 4 lanes' worth"
        );
        l.finish(slow);
        for _ in 0..8 {
            l.emitted();
        }
        assert!(l.may_take(None));
    }
}

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
//! An image that runs out of device memory even alone (the engine has split its batch down to
//! one) is never dead-lettered for it: every shape ran at warm-up, so the device is short now.
//! The `engine` component is marked down (source `memory`), and those images alone run again
//! with backoff until they fit; past `--engine-fault-timeout` the worker exits as above. The
//! records stay in the crash-loop journal, so one that cannot fit in any process is
//! dead-lettered by it (`ocr/crash_loop`) after `--crash-loop-attempts` exits, never held
//! for ever.
//!
//! A call that does not return within `--engine-timeout` is a hung engine (a stuck device
//! call): the same, fatal. An image on which the engine panics is dead-lettered alone
//! (`ocr/panic`; the engine runs the batch again image by image). Every page of a multi-page
//! image is a batch item of its own; the pages' results are put back together per message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use ocrfleet_ocr::{EngineHandle, ImageText, OcrError, ProbeError};
use tokio::sync::mpsc;

use super::prepare::Ready;
use super::Outcome;
use crate::envelope::Care;
use crate::envelope::{EngineJournal, Failure};
use crate::es::document::{Document, Reading, Writer};
use crate::failure::{Component, Rejection, Stage};
use crate::health::Health;
use crate::message;
use crate::metrics::Metrics;

/// What the OCR stage needs of an engine: the seam between the stage's decisions (lanes, the
/// run-alone rule, bad image or broken engine, the hang deadline) and ONNX Runtime, so that
/// the decisions can be tested on their own. [`EngineHandle`] is the one implementation that
/// runs; the unit tests below drive the stage with a scripted one.
pub trait Recognizer: Send + Sync {
    /// Calls that may run at once.
    fn lanes(&self) -> usize;
    /// The model set's version, written into each document.
    fn model_version(&self) -> &str;
    /// Recognises `images` and gives them back with one result each (so that they can be run
    /// again); every result is [`OcrError::EngineGone`] when the engine has stopped.
    fn recognize_keep(
        &self,
        images: Vec<RgbImage>,
    ) -> impl std::future::Future<Output = (Vec<RgbImage>, Vec<Result<ImageText, OcrError>>)> + Send;
    /// A tiny known-good run: does the engine still work?
    fn probe(&self) -> impl std::future::Future<Output = Result<(), ProbeError>> + Send;
}

impl Recognizer for EngineHandle {
    fn lanes(&self) -> usize {
        EngineHandle::lanes(self)
    }
    fn model_version(&self) -> &str {
        EngineHandle::model_version(self)
    }
    fn recognize_keep(
        &self,
        images: Vec<RgbImage>,
    ) -> impl std::future::Future<Output = (Vec<RgbImage>, Vec<Result<ImageText, OcrError>>)> + Send
    {
        EngineHandle::recognize_keep(self, images)
    }
    fn probe(&self) -> impl std::future::Future<Output = Result<(), ProbeError>> + Send {
        EngineHandle::probe(self)
    }
}

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
    pub journal: Option<crate::kafka::committer::JournalTx>,
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
pub async fn ocr_stage<E: Recognizer>(
    mut ready_rx: mpsc::Receiver<Ready>,
    cfg: OcrSettings,
    engine: E,
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
                record(&cfg, &metrics, journal.values().flatten().copied().collect(), false).await;
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
                record(&cfg, &metrics, journal.values().flatten().copied().collect(), true).await;
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

/// Has the Kafka committer record what the engine runs now (none: it is idle); with `ahead`
/// (a call is about to add records), waits until it is on the broker (see
/// [`crate::kafka::journal`]) and observes the wait as the `journal` stage.
async fn record(
    cfg: &OcrSettings,
    metrics: &Metrics,
    running: Vec<(i32, i64, u64, bool)>,
    ahead: bool,
) {
    let Some(tx) = &cfg.journal else { return };
    if !ahead {
        tx.send(EngineJournal {
            running,
            recorded: None,
        });
        return;
    }
    let t = Instant::now();
    let (recorded, rx) = tokio::sync::oneshot::channel();
    if tx.send(EngineJournal {
        running,
        recorded: Some(recorded),
    }) {
        // The committer answers after one commit; the source may be stopping, so do not
        // wait for ever.
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    }
    metrics
        .stage_seconds
        .with_label_values(&["journal"])
        .observe(t.elapsed().as_secs_f64());
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
fn submit<'a, E: Recognizer>(
    engine: &'a E,
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
    engine: &impl Recognizer,
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
    engine: &impl Recognizer,
    images: Vec<RgbImage>,
    cfg: &OcrSettings,
    health: &Health,
) -> anyhow::Result<Vec<Result<ImageText, OcrError>>> {
    let (mut images, mut results) = run_trusted(engine, images, cfg, health).await?;
    // Since when images have run out of device memory alone, and the backoff between tries.
    let mut short_since: Option<tokio::time::Instant> = None;
    let mut delays = crate::retry::unbounded(Duration::from_millis(500));
    loop {
        let short: Vec<usize> = (0..results.len())
            .filter(|&i| matches!(results[i], Err(OcrError::DeviceOutOfMemory { .. })))
            .collect();
        let Some(Err(why)) = short.first().map(|&i| &results[i]) else {
            if short_since.is_some() {
                health.clear(Component::Engine, "memory");
            }
            return Ok(results);
        };
        // Out of memory with one image alone, and the probe passed: the device is short of
        // memory now (other lanes' batches, fragmentation), which is not the image's fault
        // (every shape fitted at warm-up). Hold those images and run them again; past
        // --engine-fault-timeout, exit so that a fresh process gets the device. The records
        // stay in the crash-loop journal, so an image that needs more than the device has
        // is dead-lettered by it (`ocr/crash_loop`) after --crash-loop-attempts such exits.
        let since = *short_since.get_or_insert_with(tokio::time::Instant::now);
        let reason = format!(
            "{} image(s) ran out of device memory even alone: {why}",
            short.len()
        );
        health.fault(Component::Engine, "memory", &reason);
        if since.elapsed() >= cfg.fault_timeout {
            anyhow::bail!(
                "{reason}; still short after {} (--engine-fault-timeout); exiting so that a fresh process gets the device",
                humantime::format_duration(cfg.fault_timeout)
            );
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
        let again = short
            .iter()
            .map(|&i| std::mem::take(&mut images[i]))
            .collect();
        let (back, rerun) = run_trusted(engine, again, cfg, health).await?;
        for ((&i, image), r) in short.iter().zip(back).zip(rerun) {
            images[i] = image;
            results[i] = r;
        }
    }
}

/// Runs `images` once the engine can be trusted with them: a call, and when it returns
/// inference or out-of-memory errors, the probe; a failing probe holds the images until the
/// engine is back and runs them again. Gives the images back with their results.
async fn run_trusted(
    engine: &impl Recognizer,
    mut images: Vec<RgbImage>,
    cfg: &OcrSettings,
    health: &Health,
) -> anyhow::Result<(Vec<RgbImage>, Vec<Result<ImageText, OcrError>>)> {
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
        if !results.iter().any(|r| {
            matches!(
                r,
                Err(OcrError::Inference { .. } | OcrError::DeviceOutOfMemory { .. })
            )
        }) {
            return Ok((back, results));
        }
        match engine.probe().await {
            Ok(()) => {
                // The engine works: inference errors are these images' own.
                health.clear(Component::Engine, "probe");
                return Ok((back, results));
            }
            Err(ProbeError::Gone(reason)) => {
                health.fault(Component::Engine, "thread", &reason);
                anyhow::bail!("the OCR engine stopped: {reason}");
            }
            Err(ProbeError::Failing(reason)) => {
                health.fault(Component::Engine, "probe", &reason);
                wait_for_engine(engine, cfg.fault_timeout, health).await?;
                images = back;
            }
        }
    }
}

/// Probes with backoff until the engine works again, or fails after `timeout`.
async fn wait_for_engine(
    engine: &impl Recognizer,
    timeout: Duration,
    health: &Health,
) -> anyhow::Result<()> {
    // Tokio's clock, so that the deadline can be tested with paused time.
    let since = tokio::time::Instant::now();
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
            Err(ProbeError::Gone(reason)) => {
                health.fault(Component::Engine, "thread", &reason);
                anyhow::bail!("the OCR engine stopped: {reason}");
            }
            Err(ProbeError::Failing(reason)) => health.fault(Component::Engine, "probe", reason),
        }
    }
}

fn document(cfg: &OcrSettings, model: &str, r: Ready, text: ImageText) -> Document {
    let writer = Writer {
        topic: &cfg.topic,
        worker: &cfg.worker_id,
        model,
        replay_key: cfg.replay_key.as_ref(),
    };
    let reading = Reading {
        attempts: r.attempts,
        fetch_ms: r.fetch_ms,
        decode_ms: r.decode_ms,
    };
    Document::new(r.envelope, r.request, text, reading, &writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use ocrfleet_ocr::{TextSource, Timings};

    use crate::envelope::Envelope;

    /// One call's script: each image's answer, or `None` for a call that never returns.
    type Script = Option<Vec<Result<(), OcrError>>>;

    /// A scripted engine: the stage's decisions are tested against it, with Tokio's clock
    /// paused. This is a stand-in on purpose: the real engine's side of each decision (an image
    /// that fails, an engine that stops or hangs) runs end to end against ONNX Runtime in
    /// `crates/cli/tests/worker_engine.rs`; what is proven here is the stage's logic alone.
    struct Scripted {
        lanes: usize,
        /// One entry per call: each image's result (by index), or a call that never returns.
        calls: Mutex<VecDeque<Script>>,
        probes: Mutex<VecDeque<Result<(), ProbeError>>>,
        /// How long each call takes.
        took: Duration,
        /// Calls as they start and end: the images' widths (each record's id), + start, - end.
        log: Mutex<Vec<(bool, Vec<u32>)>>,
    }

    impl Scripted {
        fn new(lanes: usize) -> Scripted {
            Scripted {
                lanes,
                calls: Mutex::default(),
                probes: Mutex::default(),
                took: Duration::from_secs(1),
                log: Mutex::default(),
            }
        }
        fn calls(self, calls: Vec<Script>) -> Self {
            *self.calls.lock().unwrap() = calls.into();
            self
        }
        fn probes(self, probes: Vec<Result<(), ProbeError>>) -> Self {
            *self.probes.lock().unwrap() = probes.into();
            self
        }
        fn started(&self) -> usize {
            self.log.lock().unwrap().iter().filter(|(s, _)| *s).count()
        }
    }

    fn text(width: u32) -> ImageText {
        ImageText {
            width,
            height: 1,
            lines: Vec::new(),
            text: format!("image {width}"),
            pages: 1,
            sources: vec![TextSource::Ocr],
            timings: Timings::default(),
        }
    }

    fn failed() -> OcrError {
        OcrError::Inference {
            stage: ocrfleet_ocr::Stage::Recognize,
            message: "bad tensor".into(),
        }
    }

    impl Recognizer for Scripted {
        fn lanes(&self) -> usize {
            self.lanes
        }
        fn model_version(&self) -> &str {
            "scripted"
        }
        async fn recognize_keep(
            &self,
            images: Vec<RgbImage>,
        ) -> (Vec<RgbImage>, Vec<Result<ImageText, OcrError>>) {
            let widths: Vec<u32> = images.iter().map(|i| i.width()).collect();
            self.log.lock().unwrap().push((true, widths.clone()));
            let script = self.calls.lock().unwrap().pop_front();
            let answers = match script {
                Some(None) => std::future::pending().await,
                Some(Some(answers)) => answers,
                None => vec![Ok(()); images.len()],
            };
            tokio::time::sleep(self.took).await;
            self.log.lock().unwrap().push((false, widths.clone()));
            let results = widths
                .iter()
                .zip(answers)
                .map(|(w, a)| a.map(|()| text(*w)))
                .collect();
            (images, results)
        }
        async fn probe(&self) -> Result<(), ProbeError> {
            self.probes.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
    }

    fn settings() -> OcrSettings {
        OcrSettings {
            batch: 4,
            fault_timeout: Duration::from_secs(60),
            call_timeout: Duration::from_secs(300),
            topic: "t".into(),
            worker_id: "w".into(),
            journal: None,
            replay_key: None,
            assignment: None,
        }
    }

    fn health() -> Health {
        let h = Health::new(&prometheus::Registry::new());
        h.set_started();
        h
    }

    fn images(widths: &[u32]) -> Vec<RgbImage> {
        widths.iter().map(|w| RgbImage::new(*w, 1)).collect()
    }

    /// Inference errors and a probe that passes: the errors are the images' own, returned
    /// for the dead-letter topic, and the engine stays up.
    #[tokio::test(start_paused = true)]
    async fn a_bad_image_with_a_working_engine_is_the_images_fault() {
        let engine = Scripted::new(1).calls(vec![Some(vec![Ok(()), Err(failed()), Ok(())])]);
        let h = health();
        let r = run_until_healthy(&engine, images(&[1, 2, 3]), &settings(), &h)
            .await
            .expect("not fatal");
        assert!(r[0].is_ok() && r[2].is_ok());
        assert!(matches!(r[1], Err(OcrError::Inference { .. })));
        assert_eq!(engine.started(), 1, "run once");
        assert!(h.ready(), "the engine is not marked down");
    }

    /// Inference errors and a failing probe: a broken engine. Nothing is returned as failed:
    /// the engine is marked down, probed with backoff, and the same images run again once it
    /// passes.
    #[tokio::test(start_paused = true)]
    async fn a_broken_engine_holds_the_batch_and_runs_it_again_once_it_passes() {
        let engine = Scripted::new(1)
            .calls(vec![Some(vec![Err(failed()), Err(failed())])])
            .probes(vec![
                Err(ProbeError::Failing("CUDA error".into())),
                Err(ProbeError::Failing("CUDA error".into())),
                Ok(()),
            ]);
        let h = Arc::new(health());
        let (h2, t0) = (h.clone(), tokio::time::Instant::now());
        let run = tokio::spawn(async move {
            let r = run_until_healthy(&engine, images(&[1, 2]), &settings(), &h2).await;
            (r, engine.started())
        });
        // After the first call (1 s) and the first probe, the engine is down.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!h.ready(), "the engine is marked down while it fails");
        let (r, calls) = run.await.unwrap();
        let r = r.expect("not fatal: the engine came back");
        assert!(r.iter().all(Result::is_ok), "the second run's results");
        assert_eq!(calls, 2, "the same images ran again");
        assert!(h.ready(), "cleared once the probe passed");
        assert!(
            t0.elapsed() >= Duration::from_secs(2),
            "backed off between probes"
        );
    }

    /// A probe that keeps failing past `--engine-fault-timeout` is fatal (the process exits
    /// and a fresh one gets the device), and nothing is dead-lettered on the way.
    #[tokio::test(start_paused = true)]
    async fn an_engine_that_stays_broken_past_the_fault_timeout_ends_the_process() {
        let engine = Scripted::new(1)
            .calls(vec![Some(vec![Err(failed())])])
            .probes(vec![Err(ProbeError::Failing("CUDA error".into())); 1000]);
        let h = health();
        let t0 = tokio::time::Instant::now();
        let e = run_until_healthy(&engine, images(&[1]), &settings(), &h)
            .await
            .expect_err("fatal");
        assert!(e.to_string().contains("--engine-fault-timeout"), "{e}");
        assert!(
            t0.elapsed() >= Duration::from_secs(60),
            "{:?}",
            t0.elapsed()
        );
        assert!(t0.elapsed() < Duration::from_secs(80), "{:?}", t0.elapsed());
        assert_eq!(engine.started(), 1);
    }

    fn short() -> OcrError {
        OcrError::DeviceOutOfMemory {
            stage: ocrfleet_ocr::Stage::Detect,
            message: "CUDA failure 2: out of memory".into(),
        }
    }

    /// An image out of device memory even alone, with a probe that passes: not the image's
    /// fault. Nothing is returned as failed; the engine is marked down while that image alone
    /// (not its batch-mates) runs again with backoff, and its text is returned once it fits.
    #[tokio::test(start_paused = true)]
    async fn an_image_out_of_device_memory_is_held_and_run_again_alone() {
        let engine = Scripted::new(1).calls(vec![
            Some(vec![Ok(()), Err(short()), Err(failed())]),
            Some(vec![Err(short())]),
            Some(vec![Ok(())]),
        ]);
        let engine = Arc::new(engine);
        let h = Arc::new(health());
        let (e2, h2) = (engine.clone(), h.clone());
        let run = tokio::spawn(async move {
            run_until_healthy(&*e2, images(&[1, 2, 3]), &settings(), &h2).await
        });
        // After the first call (1 s) the engine is down for memory.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!h.ready(), "marked down while the device is short");
        assert!(h.describe().contains("memory"), "{}", h.describe());
        let r = run.await.unwrap().expect("not fatal");
        assert!(r[0].is_ok(), "the batch-mate's text");
        assert_eq!(
            r[1].as_ref().map(|t| t.width).ok(),
            Some(2),
            "run again until it fit"
        );
        assert!(
            matches!(r[2], Err(OcrError::Inference { .. })),
            "an inference error with a passing probe is still the image's own"
        );
        let starts: Vec<Vec<u32>> = engine
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s)
            .map(|(_, w)| w.clone())
            .collect();
        assert_eq!(
            starts,
            vec![vec![1, 2, 3], vec![2], vec![2]],
            "only it ran again"
        );
        assert!(h.ready(), "cleared once it fitted");
    }

    /// A device that stays short past `--engine-fault-timeout`: fatal (a fresh process gets the
    /// device; the crash-loop journal bounds an image that can never fit), and the image is
    /// never returned as failed.
    #[tokio::test(start_paused = true)]
    async fn a_device_short_of_memory_past_the_fault_timeout_ends_the_process() {
        let engine = Scripted::new(1).calls(vec![Some(vec![Err(short())]); 1000]);
        let h = health();
        let t0 = tokio::time::Instant::now();
        let e = run_until_healthy(&engine, images(&[1]), &settings(), &h)
            .await
            .expect_err("fatal");
        let e = e.to_string();
        assert!(
            e.contains("out of device memory") && e.contains("--engine-fault-timeout"),
            "{e}"
        );
        assert!(
            t0.elapsed() >= Duration::from_secs(60),
            "{:?}",
            t0.elapsed()
        );
        assert!(t0.elapsed() < Duration::from_secs(90), "{:?}", t0.elapsed());
        assert!(!h.ready());
    }

    /// A probe that finds the engine gone is fatal at once: no waiting for a timeout.
    #[tokio::test(start_paused = true)]
    async fn a_gone_engine_is_fatal_at_once() {
        let engine = Scripted::new(1)
            .calls(vec![Some(vec![Err(failed())])])
            .probes(vec![Err(ProbeError::Gone("threads stopped".into()))]);
        let h = health();
        let t0 = tokio::time::Instant::now();
        let e = run_until_healthy(&engine, images(&[1]), &settings(), &h)
            .await
            .expect_err("fatal");
        assert!(e.to_string().contains("stopped"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(!h.ready());
    }

    /// A call that does not return within `--engine-timeout` is a hung engine: fatal, with the
    /// `engine` component down, after exactly the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_engine_timeout_is_a_hang() {
        let engine = Scripted::new(1).calls(vec![None]);
        let h = health();
        let t0 = tokio::time::Instant::now();
        let e = run_until_healthy(&engine, images(&[1, 2]), &settings(), &h)
            .await
            .expect_err("fatal");
        assert!(e.to_string().contains("--engine-timeout"), "{e}");
        assert!(
            t0.elapsed() >= Duration::from_secs(300),
            "{:?}",
            t0.elapsed()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(301),
            "{:?}",
            t0.elapsed()
        );
        assert!(h.describe().contains("hang"), "{}", h.describe());
    }

    fn ready(width: u32, care: Care) -> Ready {
        Ready {
            envelope: Envelope {
                partition: 0,
                offset: i64::from(width),
                generation: 1,
                key: None,
                value: None,
                headers: Vec::new(),
                headers_total: 0,
                timestamp_ms: Some(100),
                care,
            },
            request: message::Request {
                url: format!("http://x/{width}.png"),
                id: None,
                metadata: Default::default(),
            },
            pages: images(&[width]),
            plan: None,
            _charge: Default::default(),
            fetch_ms: 0.0,
            decode_ms: 0.0,
            attempts: 1,
        }
    }

    /// The whole stage with two lanes: records 1–3 and 5–7 run in batches beside each other; a
    /// record that crashed a process before (4) waits for the engine to empty, runs in a call
    /// of its own with nothing beside it, and every record comes out once, in order.
    #[tokio::test(start_paused = true)]
    async fn the_stage_runs_a_suspect_alone_between_full_lanes() {
        let engine = Scripted::new(2);
        let mut cfg = settings();
        cfg.batch = 2;
        let (ready_tx, ready_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        for w in 1..=7 {
            let care = if w == 4 { Care::Alone(0) } else { Care::Normal };
            ready_tx.send(ready(w, care)).await.unwrap();
        }
        drop(ready_tx);
        let engine = Arc::new(engine);
        ocr_stage(
            ready_rx,
            cfg,
            ArcRecognizer(engine.clone()),
            out_tx,
            Metrics::new(),
            Arc::new(health()),
        )
        .await
        .expect("the stage ends when its input closes");
        let log = engine.log.lock().unwrap().clone();
        let mut out = Vec::new();
        while let Ok(o) = out_rx.try_recv() {
            match o {
                Outcome::Doc(d) => out.push(d.envelope.offset),
                _ => panic!("only documents expected"),
            }
        }
        assert_eq!(out, vec![1, 2, 3, 4, 5, 6, 7], "each once, in order");
        // Replay the log: at the suspect's start nothing runs, and nothing starts until it ends.
        let mut open: Vec<Vec<u32>> = Vec::new();
        let mut overlapped = false;
        for (start, call) in &log {
            if *start {
                assert!(
                    call != &vec![4] || open.is_empty(),
                    "the suspect started beside {open:?}"
                );
                assert!(
                    !open.contains(&vec![4]),
                    "{call:?} started beside the suspect"
                );
                assert!(
                    !call.contains(&4) || call == &vec![4],
                    "the suspect shared a call: {call:?}"
                );
                open.push(call.clone());
                overlapped |= open.len() > 1;
            } else {
                open.retain(|c| c != call);
            }
        }
        assert!(overlapped, "two lanes ran at once: {log:?}");
        assert!(log.iter().any(|(s, c)| *s && c == &vec![4]), "{log:?}");
    }

    /// Lets the test keep a handle on the scripted engine that the stage owns.
    struct ArcRecognizer(Arc<Scripted>);

    impl Recognizer for ArcRecognizer {
        fn lanes(&self) -> usize {
            self.0.lanes()
        }
        fn model_version(&self) -> &str {
            self.0.model_version()
        }
        fn recognize_keep(
            &self,
            images: Vec<RgbImage>,
        ) -> impl std::future::Future<Output = (Vec<RgbImage>, Vec<Result<ImageText, OcrError>>)> + Send
        {
            self.0.recognize_keep(images)
        }
        fn probe(&self) -> impl std::future::Future<Output = Result<(), ProbeError>> + Send {
            self.0.probe()
        }
    }

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

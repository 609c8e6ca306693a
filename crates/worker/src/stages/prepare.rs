//! Stage 1: for every message of a chunk, a task that checks and parses it, downloads its image
//! and decodes its pages, within the memory budget.
//!
//! - **Downloads** are bounded by `--fetch-concurrency` download slots: a task holds a slot
//!   from its request until its pages are decoded, so bodies in memory are at most concurrency
//!   × `--fetch-max-bytes`. A download whose host does not answer is judged by
//!   [`crate::fetch::hosts`]: the record's own failure (a dead letter), or a dead host, whose
//!   records are **held without a slot** (other hosts' records keep flowing) until the host
//!   answers or `--host-hold` is over (then a `fetch/host_unreachable` dead letter).
//! - **Revoked work is dropped:** a held record whose partition was revoked leaves at once
//!   (the new owner redoes it), and so does one that waited for a slot.
//! - **PDFs** (known by their magic bytes) are read by the renderer children
//!   ([`ocrfleet_pdf`]): pages with a usable text layer are read from it, the others rendered,
//!   each rendered page charged to the budget before it is rendered; a document over
//!   `--max-pages`, encrypted, malformed, or that crashes or hangs its renderer is one dead
//!   letter of stage `decode`.
//! - **Decoding** is charged to the budget once, with its body and the decoder's measured peak
//!   (see [`crate::budget`]); a decode that needs more than the whole budget is dead-lettered at
//!   once (`decode/over_memory_budget`). The charge shrinks to the RGB pages, held until the
//!   engine is done with them.
//! - **Every task ends in an outcome.** A panic anywhere in a task (the header parsers run on
//!   untrusted bytes) is caught and becomes a dead letter of the stage it happened in, class
//!   `panic`: a message never disappears without a "done" event, which would freeze its
//!   partition's commits for good.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use image::RgbImage;
use ocrfleet_ocr::{decode, OcrError};
use ocrfleet_pdf::PlannedPage;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::Outcome;
use crate::budget::{Budget, Charge};
use crate::envelope::Care;
use crate::envelope::{Envelope, Failure};
use crate::failure::{Component, Rejection, Stage};
use crate::fetch::hosts::{self, Hosts, Step, Verdict};
use crate::fetch::{redact_url, FetchError, Fetched, Fetcher};
use crate::kafka::Assignment;
use crate::message::{self, Request};
use crate::metrics::Metrics;

/// A decoded image (one page, or the pages of a multi-page TIFF) waiting for the engine.
pub struct Ready {
    pub envelope: Envelope,
    pub request: Request,
    pub pages: Vec<RgbImage>,
    /// A PDF's plan: which pages come from the text layer (already read) and which are among
    /// `pages`, rendered, in order (see [`ocrfleet_pdf::assemble`]). `None` for an image.
    pub plan: Option<Vec<PlannedPage>>,
    /// The pages' share of the budget, held (never read) until the engine is done with them.
    pub _charge: Charge,
    pub fetch_ms: f64,
    pub decode_ms: f64,
    pub attempts: usize,
}

/// How prepare reads PDFs: the renderer children and the settings.
#[derive(Clone)]
pub struct Pdfs {
    pub renderers: ocrfleet_pdf::Renderers,
    pub cfg: crate::config::PdfConfig,
}

/// What the prepare tasks share.
#[derive(Clone)]
pub struct Prepare {
    pub fetcher: Fetcher,
    pub hosts: Hosts,
    /// The download slots (`--fetch-concurrency`).
    pub slots: Arc<Semaphore>,
    pub budget: Budget,
    pub max_pixels: u64,
    pub max_pages: u32,
    /// `--max-headers`.
    pub max_headers: usize,
    /// `--fetch-attempts`.
    pub attempts: usize,
    /// Which partitions are still ours: revoked work is dropped (none: all are, in tests).
    pub assignment: Option<Assignment>,
    /// PDF input.
    pub pdfs: Pdfs,
    /// Where a renderer that does not work is reported (an infrastructure fault).
    pub health: Arc<crate::health::Health>,
    pub metrics: Metrics,
    /// Test-only: panic (in the decode stage) on a URL containing this text.
    pub test_panic: Option<String>,
}

/// Why a task did not make its message ready.
enum Stop {
    /// The record is bad: a dead letter.
    Rejected(Rejection),
    /// Its partition was revoked while it waited: dropped, the new owner redoes it.
    Dropped,
}

impl From<Rejection> for Stop {
    fn from(r: Rejection) -> Stop {
        Stop::Rejected(r)
    }
}

/// What one task made of its message, before the envelope is attached.
struct Prepared {
    request: Request,
    pages: Vec<RgbImage>,
    plan: Option<Vec<PlannedPage>>,
    charge: Charge,
    fetch_ms: f64,
    decode_ms: f64,
    attempts: usize,
}

impl Prepare {
    /// Checks, parses, downloads and decodes one message; `reached` follows the stage it is in,
    /// for the dead letter of a panic.
    async fn prepare(&self, envelope: &Envelope, reached: &mut Stage) -> Result<Prepared, Stop> {
        if let Care::CrashLoop(deaths) = envelope.care {
            return Err(Rejection::new(
                Stage::Ocr,
                "crash_loop",
                format!(
                    "a worker process died {deaths} times while this record ran alone in the OCR engine (a crash that is not a panic: a segfault in ONNX Runtime, an out-of-memory kill, a hung device call); it is dead-lettered so that it cannot crash-loop the fleet (--crash-loop-attempts). Replay it once the cause is fixed"
                ),
            )
            .into());
        }
        *reached = Stage::Parse;
        self.check_headers(envelope)?;
        let request = message::parse(envelope.value.as_deref())
            .map_err(|e| Rejection::new(Stage::Parse, e.class(), e.to_string()))?;
        *reached = Stage::Fetch;
        let t = Instant::now();
        let (fetched, slot) = self.download(envelope, &request.url).await?;
        let fetch_ms = t.elapsed().as_secs_f64() * 1000.0;
        self.metrics
            .stage_seconds
            .with_label_values(&["fetch"])
            .observe(fetch_ms / 1000.0);
        self.metrics
            .bytes_downloaded
            .inc_by(fetched.bytes.len() as u64);
        let attempts = fetched.attempts;
        *reached = Stage::Decode;
        if let Some(s) = &self.test_panic {
            if request.url.contains(s.as_str()) {
                panic!("injected prepare panic on a URL containing {s:?}");
            }
        }
        // The slot is held until the body is decoded (bodies in memory stay bounded).
        let _slot = slot;
        let (pages, plan, charge, decode_ms) = if ocrfleet_pdf::is_pdf(&fetched.bytes) {
            let t = Instant::now();
            let (pages, plan, charge) = self.read_pdf(fetched.bytes, attempts).await?;
            let decode_ms = t.elapsed().as_secs_f64() * 1000.0;
            self.observe_decode(decode_ms);
            (pages, Some(plan), charge, decode_ms)
        } else {
            let (pages, charge, decode_ms) = self.decode_image(fetched.bytes, attempts).await?;
            (pages, None, charge, decode_ms)
        };
        Ok(Prepared {
            request,
            pages,
            plan,
            charge,
            fetch_ms,
            decode_ms,
            attempts,
        })
    }

    /// A record over `--max-headers`, or with a header key that is not UTF-8, is refused before
    /// it is parsed.
    fn check_headers(&self, envelope: &Envelope) -> Result<(), Rejection> {
        if envelope.headers_total > self.max_headers {
            return Err(Rejection::new(
                Stage::Parse,
                "too_many_headers",
                format!(
                    "the record has {} headers, more than --max-headers ({}); its dead letter keeps the first {}",
                    envelope.headers_total,
                    self.max_headers,
                    envelope.headers.len()
                ),
            ));
        }
        if let Some((k, _)) = envelope
            .headers
            .iter()
            .find(|(k, _)| std::str::from_utf8(k).is_err())
        {
            let shown = String::from_utf8_lossy(k).into_owned();
            return Err(Rejection::new(
                Stage::Parse,
                "header_key_not_utf8",
                format!("a header key is not UTF-8: {shown:?}"),
            ));
        }
        Ok(())
    }

    /// Decodes an image's pages, charged to the budget once with its body and the decoder's
    /// measured peak; the charge then shrinks to the RGB pages. Also the decoding's own time
    /// (milliseconds, without the wait for the budget).
    async fn decode_image(
        &self,
        bytes: Vec<u8>,
        attempts: usize,
    ) -> Result<(Vec<RgbImage>, Charge, f64), Rejection> {
        let decode_err = |e: ocrfleet_ocr::DecodeError| {
            let e = OcrError::from(e);
            Rejection::new(Stage::Decode, e.class(), e.to_string()).attempts(attempts)
        };
        let cost =
            decode::cost_pages(&bytes, self.max_pixels, self.max_pages).map_err(decode_err)?;
        let need = bytes.len() as u64 + cost.peak_bytes;
        let Some(mut charge) = self.budget.charge(need).await else {
            return Err(Rejection::new(
                Stage::Decode,
                "over_memory_budget",
                format!(
                    "decoding this image needs {} (its {} body and the decoder's peak of {} for {} page(s) of {}x{}), more than the whole --memory-budget of {}: raise the budget, then replay this record",
                    mib(need),
                    mib(bytes.len() as u64),
                    mib(cost.peak_bytes),
                    cost.pages,
                    cost.width,
                    cost.height,
                    mib(self.budget.total())
                ),
            )
            .attempts(attempts));
        };
        let t = Instant::now();
        let (max_pixels, max_pages) = (self.max_pixels, self.max_pages);
        let decoded = tokio::task::spawn_blocking(move || {
            decode::decode_pages(&bytes, max_pixels, max_pages)
        })
        .await;
        charge.shrink_to(cost.rgb_bytes);
        let decode_ms = t.elapsed().as_secs_f64() * 1000.0;
        // Observed whether the decoder succeeded or not.
        self.observe_decode(decode_ms);
        match decoded {
            Ok(r) => Ok((r.map_err(decode_err)?, charge, decode_ms)),
            Err(join) => Err(Rejection::new(
                Stage::Decode,
                "panic",
                format!("the decoder crashed on this image: {join}"),
            )
            .attempts(attempts)),
        }
    }

    fn observe_decode(&self, ms: f64) {
        self.metrics
            .stage_seconds
            .with_label_values(&["decode"])
            .observe(ms / 1000.0);
    }

    /// Reads a PDF (see [`ocrfleet_pdf`]): its plan within `--pdf-timeout`, the rendered
    /// pages charged to the budget before they are rendered. A renderer that does not work is
    /// an infrastructure fault (reported, retried, nothing dead-lettered); a crash on this
    /// document is its own only when a probe shows the renderer works.
    async fn read_pdf(
        &self,
        bytes: Vec<u8>,
        attempts: usize,
    ) -> Result<(Vec<RgbImage>, Vec<PlannedPage>, Charge), Stop> {
        let cfg = &self.pdfs.cfg;
        let body = bytes.len() as u64;
        let mut delays = crate::retry::unbounded(Duration::from_millis(500));
        loop {
            let read = async {
                let mut s = self.pdfs.renderers.session().await?;
                let plan = ocrfleet_pdf::plan(&mut s, bytes.clone(), &cfg.read).await?;
                let rgb: u64 = plan.iter().map(PlannedPage::raster_bytes).sum();
                // The renderer's own raster (4 bytes a pixel) of the largest page, beside ours.
                let child = plan
                    .iter()
                    .map(|p| p.raster_bytes() / 3 * 4)
                    .max()
                    .unwrap_or(0);
                let need = body + rgb + child;
                let Some(mut charge) = self.budget.charge(need).await else {
                    return Ok(Err(Rejection::new(
                        Stage::Decode,
                        "over_memory_budget",
                        format!(
                            "reading this PDF needs {} (its {} body and {} of rendered pages, {} page(s) of {} to render), more than the whole --memory-budget of {}: raise the budget (or lower --pdf-dpi), then replay this record",
                            mib(need),
                            mib(body),
                            mib(rgb + child),
                            plan.iter().filter(|p| p.raster_bytes() > 0).count(),
                            plan.len(),
                            mib(self.budget.total())
                        ),
                    )));
                };
                let pages = ocrfleet_pdf::render(&mut s, &plan, &cfg.read).await?;
                charge.shrink_to(rgb);
                Ok::<_, ocrfleet_pdf::PdfError>(Ok((pages, plan, charge)))
            };
            let e = match tokio::time::timeout(cfg.deadline, read).await {
                Ok(Ok(Ok(done))) => {
                    self.health.clear(Component::Engine, "pdf_renderer");
                    return Ok(done);
                }
                Ok(Ok(Err(over_budget))) => return Err(over_budget.attempts(attempts).into()),
                Ok(Err(e)) => e,
                Err(_) => ocrfleet_pdf::PdfError::Timeout(format!(
                    "the PDF was not read within {} (--pdf-timeout)",
                    humantime::format_duration(cfg.deadline)
                )),
            };
            let renderer_fault = match &e {
                ocrfleet_pdf::PdfError::Renderer(why) => Some(why.clone()),
                ocrfleet_pdf::PdfError::Crashed(_) => match self.pdfs.renderers.probe().await {
                    Ok(()) => None,
                    Err(p) => Some(format!("{e}; and the renderer fails its probe: {p}")),
                },
                _ => None,
            };
            match renderer_fault {
                None => {
                    return Err(Rejection::new(Stage::Decode, e.class(), e.to_string())
                        .attempts(attempts)
                        .into())
                }
                Some(why) => {
                    self.health.fault(Component::Engine, "pdf_renderer", &why);
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
                }
            }
        }
    }

    fn still_ours(&self, e: &Envelope) -> bool {
        self.assignment
            .as_ref()
            .is_none_or(|a| a.is_current(e.partition, e.generation))
    }

    /// Downloads `url` and returns the body with the download slot it holds. A download whose
    /// host does not answer is judged by [`crate::fetch::hosts`]: a dead letter, or held
    /// (without a slot) on the host's breaker, probing it in turn, until the host answers, the
    /// hold is over (`fetch/host_unreachable`) or the partition is revoked (dropped).
    async fn download(
        &self,
        envelope: &Envelope,
        url: &str,
    ) -> Result<(Fetched, OwnedSemaphorePermit), Stop> {
        let Some(origin) = hosts::origin(url) else {
            // Not a URL with a host: the fetcher says why (`bad_url`, `scheme`).
            let slot = self.slot(envelope).await?;
            return match self.fetcher.fetch(url).await {
                Ok(f) => Ok((f, slot)),
                Err((e, n)) => Err(self.rejection(url, &e, n).into()),
            };
        };
        let mut record = Held {
            hosts: &self.hosts,
            record: self.hosts.record(&origin),
        };
        let mut tries = 0usize;
        let mut last: Option<FetchError> = None;
        loop {
            if !self.still_ours(envelope) {
                return Err(Stop::Dropped);
            }
            let probe = match self.hosts.step(&mut record.record) {
                Step::Download { probe } => probe,
                Step::Wait(until) => {
                    // At most a second, so that a revoke is seen soon.
                    self.hosts.wait(until, Duration::from_secs(1)).await;
                    continue;
                }
                Step::Expired => {
                    return Err(self.unreachable(url, &record.record, tries, last).into())
                }
            };
            let slot = match self.slot(envelope).await {
                Ok(s) => s,
                Err(stop) => {
                    if probe {
                        self.hosts.probe_abandoned(&origin);
                    }
                    return Err(stop);
                }
            };
            let started = tokio::time::Instant::now();
            let attempts = if probe { 1 } else { self.attempts };
            let r = self
                .fetcher
                .fetch_watched(url, attempts, &self.hosts, &origin)
                .await;
            let n = match &r {
                Ok(f) => f.attempts,
                Err((_, n)) => *n,
            };
            // Attempts beyond the first download's first: its retries, and every later try.
            let retries = if tries == 0 { n.saturating_sub(1) } else { n };
            self.metrics.fetch_retries.inc_by(retries as u64);
            tries += n;
            match r {
                Ok(mut f) => {
                    f.attempts = tries;
                    return Ok((f, slot));
                }
                Err((e, _)) if !e.no_answer() => {
                    if probe && !e.answered() {
                        self.hosts.probe_abandoned(&origin);
                    }
                    return Err(self.rejection(url, &e, tries).into());
                }
                Err((e, _)) => {
                    drop(slot);
                    match self
                        .hosts
                        .failed(&mut record.record, started, &e.to_string())
                    {
                        Verdict::DeadLetter => return Err(self.rejection(url, &e, tries).into()),
                        Verdict::Hold => {
                            last = Some(e);
                            tracing::debug!(url = %redact_url(url), "held: its host does not answer");
                        }
                    }
                }
            }
        }
    }

    /// A download slot, unless the partition was revoked while waiting for it.
    async fn slot(&self, envelope: &Envelope) -> Result<OwnedSemaphorePermit, Stop> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        if self.still_ours(envelope) {
            Ok(slot)
        } else {
            Err(Stop::Dropped)
        }
    }

    /// The dead letter of a record held for its host for the whole `--host-hold`.
    fn unreachable(
        &self,
        url: &str,
        record: &hosts::Record,
        tries: usize,
        last: Option<FetchError>,
    ) -> Rejection {
        let origin = &record.origin;
        let held_for = self.hosts.held_for(record);
        let open = self.hosts.open_since(origin);
        let since = open.as_ref().map(|(t, _)| {
            humantime::format_duration(Duration::from_secs(t.elapsed().as_secs())).to_string()
        });
        let last = last
            .map(|e| e.to_string())
            .or(open.map(|(_, e)| e))
            .unwrap_or_else(|| "none".into());
        Rejection::new(
            Stage::Fetch,
            "host_unreachable",
            format!(
                "{}: the host {origin} did not answer for {} (--host-hold; {tries} attempt(s) by this record{}); last error: {last}. Replay it once the host answers",
                redact_url(url),
                humantime::format_duration(Duration::from_secs(held_for.as_secs())),
                since.map(|s| format!(", its breaker open for {s}")).unwrap_or_default(),
            ),
        )
        .attempts(tries)
    }

    fn rejection(&self, url: &str, e: &FetchError, tries: usize) -> Rejection {
        Rejection::new(Stage::Fetch, e.class(), format!("{}: {e}", redact_url(url))).attempts(tries)
    }
}

/// A record's download as its host's board knows it, released (no longer held) when dropped,
/// whichever way the download ends.
struct Held<'a> {
    hosts: &'a Hosts,
    record: hosts::Record,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.hosts.release(&mut self.record);
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Runs until `chunks` closes, then waits for its tasks.
pub async fn prepare_stage(
    mut chunks: mpsc::Receiver<Vec<Envelope>>,
    prep: Prepare,
    ready_tx: mpsc::Sender<Ready>,
    out_tx: mpsc::Sender<Outcome>,
) {
    let mut tasks = JoinSet::new();
    while let Some(chunk) = chunks.recv().await {
        for envelope in chunk {
            let (prep, ready_tx, out_tx) = (prep.clone(), ready_tx.clone(), out_tx.clone());
            tasks.spawn(async move {
                let mut reached = Stage::Parse;
                let r = AssertUnwindSafe(prep.prepare(&envelope, &mut reached))
                    .catch_unwind()
                    .await;
                let outcome = match r {
                    Ok(Ok(p)) => {
                        let ready = Ready {
                            envelope,
                            request: p.request,
                            pages: p.pages,
                            plan: p.plan,
                            _charge: p.charge,
                            fetch_ms: p.fetch_ms,
                            decode_ms: p.decode_ms,
                            attempts: p.attempts,
                        };
                        let _ = ready_tx.send(ready).await;
                        return;
                    }
                    Ok(Err(Stop::Dropped)) => {
                        let _ = out_tx.send(Outcome::Dropped(envelope)).await;
                        return;
                    }
                    Ok(Err(Stop::Rejected(rejection))) => Failure {
                        envelope,
                        rejection,
                    },
                    Err(panic) => {
                        let what = panic_message(&*panic);
                        tracing::error!(partition = envelope.partition, offset = envelope.offset, stage = %reached, panic = %what, "a prepare task panicked; dead-lettering its record");
                        Failure {
                            envelope,
                            rejection: Rejection::new(
                                reached,
                                "panic",
                                format!("the worker panicked on this record ({reached} stage): {what}; this is a bug in ocrfleet, please report it with this dead letter"),
                            ),
                        }
                    }
                };
                let _ = out_tx.send(Outcome::Failed(outcome)).await;
            });
            // Reap finished tasks so the set does not grow without bound. A task cannot end in
            // a panic (it catches its own), but a join error is logged rather than dropped.
            while let Some(r) = tasks.try_join_next() {
                if let Err(e) = r {
                    tracing::error!(error = %e, "a prepare task ended abnormally");
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    //! Prepare on its own: real downloads from the tests' loopback HTTP server, the real
    //! decoder and budget; no Kafka, no engine.

    use super::*;
    use crate::config::{FetchConfig, PdfConfig};
    use crate::fetch::loopback::{response, Loopback};
    use crate::health::Health;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// A prepare stage over `server`, with a budget of `budget` bytes; PDFs go to a renderer
    /// that cannot start (no such program).
    fn prepare(budget: u64) -> Prepare {
        let fetch = FetchConfig {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            attempts: 1,
            ..FetchConfig::default()
        };
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        Prepare {
            fetcher: Fetcher::new(fetch.clone()).unwrap(),
            hosts: Hosts::new(fetch.hosts, health.clone()),
            slots: Arc::new(Semaphore::new(4)),
            budget: Budget::new(budget),
            max_pixels: 50_000_000,
            max_pages: 50,
            max_headers: 3,
            attempts: 1,
            assignment: None,
            pdfs: Pdfs {
                renderers: ocrfleet_pdf::Renderers::new(ocrfleet_pdf::RendererConfig {
                    program: "/nonexistent/ocrfleet".into(),
                    args: Vec::new(),
                    library: "/nonexistent/libpdfium.so".into(),
                    children: 1,
                    memory_limit: 0,
                    test_faults: false,
                }),
                cfg: PdfConfig {
                    read: ocrfleet_pdf::ReadOptions::default(),
                    deadline: Duration::from_secs(30),
                    renderers: 1,
                    memory: 0,
                    library: "/nonexistent/libpdfium.so".into(),
                    test_faults: false,
                },
            },
            health,
            metrics: Metrics::new(),
            test_panic: None,
        }
    }

    fn record(offset: i64, url: &str) -> Envelope {
        Envelope {
            partition: 0,
            offset,
            generation: 1,
            key: None,
            value: Some(url.as_bytes().to_vec()),
            headers: Vec::new(),
            headers_total: 0,
            timestamp_ms: None,
            care: Care::default(),
        }
    }

    /// Runs the stage over one chunk until every task has ended: what was made ready and what
    /// left otherwise, each by offset.
    async fn run(prep: Prepare, chunk: Vec<Envelope>) -> (Vec<Ready>, Vec<Outcome>) {
        let (chunk_tx, chunk_rx) = mpsc::channel(1);
        let (ready_tx, mut ready_rx) = mpsc::channel(64);
        let (out_tx, mut out_rx) = mpsc::channel(64);
        chunk_tx.send(chunk).await.unwrap();
        drop(chunk_tx);
        prepare_stage(chunk_rx, prep, ready_tx, out_tx).await;
        let (mut ready, mut out) = (Vec::new(), Vec::new());
        while let Some(r) = ready_rx.recv().await {
            ready.push(r);
        }
        while let Some(o) = out_rx.recv().await {
            out.push(o);
        }
        ready.sort_by_key(|r| r.envelope.offset);
        out.sort_by_key(|o| o.envelope().offset);
        (ready, out)
    }

    fn rejection(o: &Outcome) -> &Rejection {
        match o {
            Outcome::Failed(f) => &f.rejection,
            other => panic!("not a dead letter: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_image_is_downloaded_decoded_and_holds_only_its_pages_in_the_budget() {
        let body = png(400, 300);
        let server = Loopback::start("127.0.0.1", move |_, _| {
            response("200 OK", "Content-Type: image/png\r\n", &body)
        })
        .await;
        let prep = prepare(64 << 20);
        let budget = prep.budget.clone();
        let url = format!("http://127.0.0.1:{}/a.png", server.port());
        let (ready, out) = run(prep, vec![record(7, &url)]).await;
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(ready.len(), 1);
        let r = &ready[0];
        assert_eq!(
            (r.envelope.offset, r.request.url.as_str()),
            (7, url.as_str())
        );
        assert_eq!(r.pages.len(), 1);
        assert_eq!(r.pages[0].dimensions(), (400, 300));
        assert!(r.plan.is_none());
        assert_eq!(r.attempts, 1);
        // The body and the decoder's peak were charged, then given back but for the pages
        // (400 × 300 RGB, 360,000 bytes; the budget counts whole KiB).
        assert_eq!(budget.used(), 360_000u64.div_ceil(1024) * 1024);
        drop(ready);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn each_record_fails_alone_at_the_stage_where_it_went_wrong() {
        let good = png(8, 8);
        let server = Loopback::start("127.0.0.1", move |_, line| {
            if line.contains("/missing") {
                response("404 Not Found", "", b"no")
            } else if line.contains("/text") {
                response(
                    "200 OK",
                    "Content-Type: text/plain\r\n",
                    b"not an image at all",
                )
            } else {
                response("200 OK", "Content-Type: image/png\r\n", &good)
            }
        })
        .await;
        let base = format!("http://127.0.0.1:{}", server.port());
        let mut headers = record(3, &format!("{base}/ok.png"));
        headers.headers_total = 4;
        let mut dying = record(4, &format!("{base}/ok.png"));
        dying.care = Care::CrashLoop(3);
        let chunk = vec![
            record(0, "not a url"),
            record(1, &format!("{base}/missing")),
            record(2, &format!("{base}/text")),
            headers,
            dying,
            record(5, &format!("{base}/ok.png")),
        ];
        let (ready, out) = run(prepare(64 << 20), chunk).await;
        assert_eq!(
            ready.iter().map(|r| r.envelope.offset).collect::<Vec<_>>(),
            [5]
        );
        let got: Vec<(i64, Stage, &str)> = out
            .iter()
            .map(|o| {
                let r = rejection(o);
                (o.envelope().offset, r.stage, r.class.as_str())
            })
            .collect();
        assert_eq!(got[0].0, 0);
        assert_eq!(got[0].1, Stage::Parse);
        assert_eq!(
            &got[1..],
            [
                (1, Stage::Fetch, "http_404"),
                (2, Stage::Decode, got[2].2),
                (3, Stage::Parse, "too_many_headers"),
                (4, Stage::Ocr, "crash_loop"),
            ]
        );
        assert!(got[2].2 != "panic" && !got[2].2.is_empty(), "{got:?}");
        // The record past its crash-loop count and the one over --max-headers were never
        // downloaded: 3 requests (missing, text, ok).
        assert_eq!(server.requests(), 3);
    }

    #[tokio::test]
    async fn an_image_over_the_whole_budget_is_refused_without_decoding_or_waiting() {
        let body = png(1000, 1000);
        let server = Loopback::start("127.0.0.1", move |_, _| {
            response("200 OK", "Content-Type: image/png\r\n", &body)
        })
        .await;
        let prep = prepare(1 << 20);
        let budget = prep.budget.clone();
        let url = format!("http://127.0.0.1:{}/big.png", server.port());
        let (ready, out) = run(prep, vec![record(0, &url)]).await;
        assert!(ready.is_empty());
        let r = rejection(&out[0]);
        assert_eq!(
            (r.stage, r.class.as_str()),
            (Stage::Decode, "over_memory_budget")
        );
        assert!(r.message.contains("--memory-budget"), "{}", r.message);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_panic_in_a_task_is_its_records_dead_letter_at_the_stage_it_reached() {
        let body = png(8, 8);
        let server = Loopback::start("127.0.0.1", move |_, _| {
            response("200 OK", "Content-Type: image/png\r\n", &body)
        })
        .await;
        let mut prep = prepare(64 << 20);
        prep.test_panic = Some("boom".into());
        let base = format!("http://127.0.0.1:{}", server.port());
        let chunk = vec![
            record(0, &format!("{base}/boom.png")),
            record(1, &format!("{base}/fine.png")),
        ];
        let (ready, out) = run(prep, chunk).await;
        assert_eq!(
            ready.iter().map(|r| r.envelope.offset).collect::<Vec<_>>(),
            [1]
        );
        let r = rejection(&out[0]);
        assert_eq!(
            (out[0].envelope().offset, r.stage, r.class.as_str()),
            (0, Stage::Decode, "panic")
        );
        assert!(
            r.message.contains("injected prepare panic"),
            "{}",
            r.message
        );
    }

    #[tokio::test]
    async fn work_of_a_revoked_partition_is_dropped_not_dead_lettered() {
        let server = Loopback::start("127.0.0.1", |_, _| response("200 OK", "", b"")).await;
        let mut prep = prepare(64 << 20);
        let assignment = crate::kafka::Assignment::default();
        assignment.assign(0, 2);
        prep.assignment = Some(assignment);
        // Generation 1 of partition 0 is not ours any more (a rebalance gave it generation 2).
        let url = format!("http://127.0.0.1:{}/a.png", server.port());
        let (ready, out) = run(prep, vec![record(0, &url)]).await;
        assert!(ready.is_empty());
        assert!(matches!(out[..], [Outcome::Dropped(_)]), "{out:?}");
        assert_eq!(server.requests(), 0);
    }

    #[tokio::test]
    async fn a_pdf_whose_renderer_cannot_start_is_a_fault_of_the_pod_not_of_the_record() {
        let server = Loopback::start("127.0.0.1", |_, _| {
            response(
                "200 OK",
                "Content-Type: application/pdf\r\n",
                b"%PDF-1.7\n%fake\n",
            )
        })
        .await;
        let prep = prepare(64 << 20);
        let health = prep.health.clone();
        let url = format!("http://127.0.0.1:{}/a.pdf", server.port());
        let stage = tokio::spawn(run(prep, vec![record(0, &url)]));
        // The renderer fault is reported (not ready) and the record is held, not dead-lettered;
        // a generous wait, not a timing assertion.
        let mut waited = Duration::ZERO;
        while health.is_up(Component::Engine) && waited < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert!(!health.is_up(Component::Engine), "{}", health.describe());
        assert!(
            health.describe().contains("pdf_renderer"),
            "{}",
            health.describe()
        );
        assert!(!health.ready());
        assert!(!stage.is_finished(), "the record left the stage");
        stage.abort();
    }
}

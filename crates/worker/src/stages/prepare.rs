//! Stage 1: for every message of a chunk, a task that checks and parses it, downloads its image
//! and decodes its pages, within the memory budget.
//!
//! - **Downloads** are bounded by `--fetch-concurrency`: a task holds a download slot from its
//!   request until its pages are decoded, so bodies in memory are at most concurrency ×
//!   `--fetch-max-bytes`. A download that cannot reach its host is judged by
//!   [`crate::fetch::outage`]: a dead host gives a dead letter, an egress outage pauses intake.
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
use std::time::Instant;

use futures::FutureExt;
use image::RgbImage;
use ocrfleet_ocr::{decode, OcrError};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::Outcome;
use crate::budget::{Budget, Charge};
use crate::envelope::{Envelope, Failure};
use crate::failure::{Rejection, Stage};
use crate::fetch::outage::{Next, Outages};
use crate::fetch::{redact_url, Fetched, Fetcher};
use crate::kafka::journal::Care;
use crate::message::{self, Request};
use crate::metrics::Metrics;

/// A decoded image (one page, or the pages of a multi-page TIFF) waiting for the engine.
pub struct Ready {
    pub envelope: Envelope,
    pub request: Request,
    pub pages: Vec<RgbImage>,
    /// The pages' share of the budget, held (never read) until the engine is done with them.
    pub _charge: Charge,
    pub fetch_ms: f64,
    pub decode_ms: f64,
    pub attempts: usize,
}

/// What the prepare tasks share.
#[derive(Clone)]
pub struct Prepare {
    pub fetcher: Fetcher,
    pub outages: Outages,
    pub budget: Budget,
    pub max_pixels: u64,
    pub max_pages: u32,
    pub concurrency: usize,
    pub metrics: Metrics,
    /// Test-only: panic (in the decode stage) on a URL containing this text.
    pub test_panic: Option<String>,
}

/// What one task made of its message, before the envelope is attached.
struct Prepared {
    request: Request,
    pages: Vec<RgbImage>,
    charge: Charge,
    fetch_ms: f64,
    decode_ms: f64,
    attempts: usize,
}

impl Prepare {
    /// Checks, parses, downloads and decodes one message; `reached` follows the stage it is in,
    /// for the dead letter of a panic.
    async fn prepare(
        &self,
        envelope: &Envelope,
        reached: &mut Stage,
    ) -> Result<Prepared, Rejection> {
        if let Care::CrashLoop(deaths) = envelope.care {
            return Err(Rejection::new(
                Stage::Ocr,
                "crash_loop",
                format!(
                    "a worker process died {deaths} times while this record was in the OCR engine, the last times with the record running alone (a crash that is not a panic: a segfault in ONNX Runtime, an out-of-memory kill, a hung device call); it is dead-lettered so that it cannot crash-loop the fleet (--crash-loop-attempts). Replay it once the cause is fixed"
                ),
            ));
        }
        *reached = Stage::Parse;
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
        let request = message::parse(envelope.value.as_deref())
            .map_err(|e| Rejection::new(Stage::Parse, e.class(), e.to_string()))?;
        *reached = Stage::Fetch;
        let t = Instant::now();
        let fetched = self.download(&request.url).await?;
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
        let decode_err = |e: ocrfleet_ocr::DecodeError| {
            let e = OcrError::from(e);
            Rejection::new(Stage::Decode, e.class(), e.to_string()).attempts(attempts)
        };
        let cost = decode::cost_pages(&fetched.bytes, self.max_pixels, self.max_pages)
            .map_err(decode_err)?;
        let need = fetched.bytes.len() as u64 + cost.peak_bytes;
        let Some(mut charge) = self.budget.charge(need).await else {
            return Err(Rejection::new(
                Stage::Decode,
                "over_memory_budget",
                format!(
                    "decoding this image needs {} (its {} body and the decoder's peak of {} for {} page(s) of {}x{}), more than the whole --memory-budget of {}: raise the budget, then replay this record",
                    mib(need),
                    mib(fetched.bytes.len() as u64),
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
        let bytes = fetched.bytes;
        let decoded = tokio::task::spawn_blocking(move || {
            decode::decode_pages(&bytes, max_pixels, max_pages)
        })
        .await;
        charge.shrink_to(cost.rgb_bytes);
        let decode_ms = t.elapsed().as_secs_f64() * 1000.0;
        self.metrics
            .stage_seconds
            .with_label_values(&["decode"])
            .observe(decode_ms / 1000.0);
        let pages = match decoded {
            Ok(r) => r.map_err(decode_err)?,
            Err(join) => {
                return Err(Rejection::new(
                    Stage::Decode,
                    "panic",
                    format!("the decoder crashed on this image: {join}"),
                )
                .attempts(attempts))
            }
        };
        Ok(Prepared {
            request,
            pages,
            charge,
            fetch_ms,
            decode_ms,
            attempts,
        })
    }

    /// Downloads `url`. A download that could not reach its host is held until it is judged
    /// (see [`crate::fetch::outage`]): a dead letter, or, during an outage, downloaded again
    /// until it gets through.
    async fn download(&self, url: &str) -> Result<Fetched, Rejection> {
        let first = tokio::time::Instant::now();
        let mut tries = 0usize;
        loop {
            let r = self.fetcher.fetch(url).await;
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
                    self.outages.reached();
                    f.attempts = tries;
                    return Ok(f);
                }
                Err((e, _)) if !e.unreachable() => {
                    // Refused before any request, or the host answered: not about the way out.
                    if tries > 0 {
                        self.outages.reached();
                    }
                    return Err(self.rejection(url, &e, tries));
                }
                Err((e, _)) => {
                    self.outages.unreachable(tries == n);
                    match self.outages.settle(first, &e.to_string()).await {
                        Next::DeadLetter => return Err(self.rejection(url, &e, tries)),
                        Next::Refetch => {
                            tracing::debug!(url = %redact_url(url), "downloading again after an unreachable host")
                        }
                    }
                }
            }
        }
    }

    fn rejection(&self, url: &str, e: &crate::fetch::FetchError, tries: usize) -> Rejection {
        Rejection::new(Stage::Fetch, e.class(), format!("{}: {e}", redact_url(url))).attempts(tries)
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
    let downloads = Arc::new(Semaphore::new(prep.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    while let Some(chunk) = chunks.recv().await {
        for envelope in chunk {
            let slot = downloads
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let (prep, ready_tx, out_tx) = (prep.clone(), ready_tx.clone(), out_tx.clone());
            tasks.spawn(async move {
                let mut reached = Stage::Parse;
                let r = AssertUnwindSafe(prep.prepare(&envelope, &mut reached))
                    .catch_unwind()
                    .await;
                drop(slot);
                let outcome = match r {
                    Ok(Ok(p)) => {
                        let ready = Ready {
                            envelope,
                            request: p.request,
                            pages: p.pages,
                            _charge: p.charge,
                            fetch_ms: p.fetch_ms,
                            decode_ms: p.decode_ms,
                            attempts: p.attempts,
                        };
                        let _ = ready_tx.send(ready).await;
                        return;
                    }
                    Ok(Err(rejection)) => Failure {
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

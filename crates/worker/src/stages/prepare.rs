//! Stage 1: for every message of a chunk, a task that checks and parses it, downloads its image
//! and decodes it, all within the memory budget.
//!
//! Charges (see [`crate::budget`]): the message's own bytes from here until it is finished; the
//! body once downloaded; the decoder's real peak ([`decode::cost`], read from the header before
//! any pixel exists) while decoding, shrunk to the RGB image afterwards. Downloads are bounded by
//! `--fetch-concurrency`; read-ahead as a whole by the source's `--max-in-flight`.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ocrfleet_ocr::{decode, OcrError};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::budget::{Budget, Charge};
use crate::config::WorkerConfig;
use crate::envelope::{Envelope, Failure, Outcome};
use crate::failure::{Rejection, Stage};
use crate::fetch::{redact_url, Fetcher};
use crate::message::{self, Request};
use crate::metrics::Metrics;

/// A decoded image waiting for the engine.
pub struct Ready {
    pub envelope: Envelope,
    pub request: Request,
    pub image: RgbImage,
    /// The image's share of the budget, held (never read) until the engine is done with it.
    pub _image_charge: Charge,
    pub fetch_ms: f64,
    pub decode_ms: f64,
    pub attempts: usize,
}

fn fail(envelope: Envelope, rejection: Rejection) -> Failure {
    Failure {
        envelope,
        rejection,
    }
}

/// Checks, parses, downloads and decodes one message.
async fn prepare(
    envelope: Envelope,
    fetcher: Fetcher,
    budget: Budget,
    max_pixels: u64,
    metrics: Metrics,
) -> Result<Ready, Failure> {
    if let Some((k, _)) = envelope
        .headers
        .iter()
        .find(|(k, _)| std::str::from_utf8(k).is_err())
    {
        let shown = String::from_utf8_lossy(k).into_owned();
        return Err(fail(
            envelope,
            Rejection::new(
                Stage::Parse,
                "header_key_not_utf8",
                format!("a header key is not UTF-8: {shown:?}"),
            ),
        ));
    }
    let request = match message::parse(envelope.value.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            return Err(fail(
                envelope,
                Rejection::new(Stage::Parse, e.class(), e.to_string()),
            ))
        }
    };
    let t = Instant::now();
    let fetched = match fetcher.fetch(&request.url).await {
        Ok(f) => f,
        Err((e, n)) => {
            metrics.fetch_retries.inc_by(n.saturating_sub(1) as u64);
            let r = Rejection::new(
                Stage::Fetch,
                e.class(),
                format!("{}: {e}", redact_url(&request.url)),
            )
            .attempts(n);
            return Err(fail(envelope, r));
        }
    };
    let fetch_ms = t.elapsed().as_secs_f64() * 1000.0;
    metrics
        .fetch_retries
        .inc_by(fetched.attempts.saturating_sub(1) as u64);
    metrics
        .stage_seconds
        .with_label_values(&["fetch"])
        .observe(fetch_ms / 1000.0);
    metrics.bytes_downloaded.inc_by(fetched.bytes.len() as u64);
    let attempts = fetched.attempts;
    let body_charge = budget.charge(fetched.bytes.len() as u64).await;
    let decode_err = |envelope: Envelope, e: ocrfleet_ocr::DecodeError| {
        let e = OcrError::from(e);
        fail(
            envelope,
            Rejection::new(Stage::Decode, e.class(), e.to_string()).attempts(attempts),
        )
    };
    let cost = match decode::cost(&fetched.bytes, max_pixels) {
        Ok(c) => c,
        Err(e) => return Err(decode_err(envelope, e)),
    };
    let mut image_charge = budget.charge(cost.peak_bytes).await;
    let t = Instant::now();
    let bytes = fetched.bytes;
    let decoded = tokio::task::spawn_blocking(move || decode::decode(&bytes, max_pixels)).await;
    drop(body_charge);
    image_charge.shrink_to(cost.rgb_bytes);
    let decode_ms = t.elapsed().as_secs_f64() * 1000.0;
    metrics
        .stage_seconds
        .with_label_values(&["decode"])
        .observe(decode_ms / 1000.0);
    match decoded {
        Ok(Ok(image)) => Ok(Ready {
            envelope,
            request,
            image,
            _image_charge: image_charge,
            fetch_ms,
            decode_ms,
            attempts,
        }),
        Ok(Err(e)) => Err(decode_err(envelope, e)),
        Err(join) => Err(fail(
            envelope,
            Rejection::new(Stage::Decode, "panic", format!("decoder crashed: {join}"))
                .attempts(attempts),
        )),
    }
}

/// Runs until `chunks` closes, then waits for its tasks.
pub async fn prepare_stage(
    mut chunks: mpsc::Receiver<Vec<Envelope>>,
    cfg: Arc<WorkerConfig>,
    fetcher: Fetcher,
    budget: Budget,
    ready_tx: mpsc::Sender<Ready>,
    out_tx: mpsc::Sender<Outcome>,
    metrics: Metrics,
) {
    let downloads = Arc::new(Semaphore::new(cfg.fetch.concurrency));
    let mut tasks = JoinSet::new();
    while let Some(chunk) = chunks.recv().await {
        for mut envelope in chunk {
            envelope.charge = budget.charge(envelope.size()).await;
            let slot = downloads
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let (fetcher, budget, metrics, ready_tx, out_tx) = (
                fetcher.clone(),
                budget.clone(),
                metrics.clone(),
                ready_tx.clone(),
                out_tx.clone(),
            );
            let max_pixels = cfg.engine.max_pixels;
            tasks.spawn(async move {
                let r = prepare(envelope, fetcher, budget, max_pixels, metrics).await;
                drop(slot);
                match r {
                    Ok(ready) => {
                        let _ = ready_tx.send(ready).await;
                    }
                    Err(f) => {
                        let _ = out_tx.send(Outcome::Failed(f)).await;
                    }
                }
            });
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

//! Wiring: source → fetch+decode → OCR → index / dead-letter → commit.
//!
//! ```text
//!  Kafka ──(source thread)──chunks──▶ fetch tasks ──ready images──▶ OCR (engine thread)
//!                ▲                      │ parse/fetch/decode failures      │ documents, OCR failures
//!                │ commits              ▼                                  ▼
//!          OffsetTracker ◀──finished── sink: Elasticsearch bulk ──rejections──▶ dead-letter topic
//! ```
//!
//! Downloads run as independent tasks, so fetching and decoding chunk N+1 goes on while the
//! engine works on chunk N. Decoded pixels are charged to a memory budget (a semaphore in KiB)
//! from decode until the engine has finished with them. Every channel is bounded, so a slow
//! stage backs up to the source, which then pauses its partitions while it keeps polling.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use ocrfleet_ocr::{decode, EngineHandle, ImageText, OcrError};
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::WorkerConfig;
use crate::dlq::DeadLetter;
use crate::envelope::{Document, Envelope, FailStage, Failure, Outcome};
use crate::fetch::Fetcher;
use crate::message::{self, Request, CONTRACT_VERSION};
use crate::metrics::Metrics;
use crate::offsets::OffsetTracker;
use crate::sink::EsSink;

/// A decoded image waiting for the engine.
pub struct Ready {
    envelope: Envelope,
    request: Request,
    image: RgbImage,
    fetch_ms: f64,
    decode_ms: f64,
    attempts: usize,
    _budget: OwnedSemaphorePermit,
}

fn failure(
    envelope: Envelope,
    stage: FailStage,
    class: impl Into<String>,
    message: impl Into<String>,
    attempts: usize,
) -> Failure {
    Failure {
        envelope,
        stage,
        class: class.into(),
        message: message.into(),
        attempts,
    }
}

/// Parses, downloads and decodes one message.
async fn prepare(
    envelope: Envelope,
    fetcher: Fetcher,
    budget: Arc<Semaphore>,
    budget_kib: u32,
    max_pixels: u64,
    metrics: Metrics,
) -> Result<Ready, Failure> {
    let request = match message::parse(envelope.value.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            return Err(failure(
                envelope,
                FailStage::Parse,
                e.class(),
                e.to_string(),
                0,
            ))
        }
    };
    let t = Instant::now();
    let fetched = match fetcher.fetch(&request.url).await {
        Ok(f) => f,
        Err((e, n)) => {
            metrics.fetch_retries.inc_by(n.saturating_sub(1) as u64);
            return Err(failure(
                envelope,
                FailStage::Fetch,
                e.class(),
                format!("{}: {e}", request.url),
                n,
            ));
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
    let decode_err = |envelope: Envelope, e: ocrfleet_ocr::DecodeError| {
        let e = OcrError::from(e);
        failure(
            envelope,
            FailStage::Decode,
            e.class(),
            e.to_string(),
            attempts,
        )
    };
    let (w, h) = match decode::dimensions(&fetched.bytes, max_pixels) {
        Ok(d) => d,
        Err(e) => return Err(decode_err(envelope, e)),
    };
    let kib =
        ((u64::from(w) * u64::from(h) * 3).div_ceil(1024)).clamp(1, u64::from(budget_kib)) as u32;
    let permit = budget
        .acquire_many_owned(kib)
        .await
        .expect("budget semaphore is never closed");
    let t = Instant::now();
    let bytes = fetched.bytes;
    let decoded = tokio::task::spawn_blocking(move || decode::decode(&bytes, max_pixels)).await;
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
            fetch_ms,
            decode_ms,
            attempts,
            _budget: permit,
        }),
        Ok(Err(e)) => Err(decode_err(envelope, e)),
        Err(join) => Err(failure(
            envelope,
            FailStage::Decode,
            "panic",
            format!("decoder crashed: {join}"),
            attempts,
        )),
    }
}

/// Stage 1: for each message of each chunk, a task that parses, fetches and decodes.
pub async fn fetch_stage(
    mut chunks: mpsc::Receiver<Vec<Envelope>>,
    cfg: Arc<WorkerConfig>,
    fetcher: Fetcher,
    ready_tx: mpsc::Sender<Ready>,
    out_tx: mpsc::Sender<Outcome>,
    metrics: Metrics,
) {
    let downloads = Arc::new(Semaphore::new(cfg.fetch.concurrency));
    let budget_kib = (cfg.memory_budget / 1024).clamp(1, u64::from(u32::MAX >> 4)) as u32;
    let budget = Arc::new(Semaphore::new(budget_kib as usize));
    let mut tasks = JoinSet::new();
    while let Some(chunk) = chunks.recv().await {
        for envelope in chunk {
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
                let r = prepare(envelope, fetcher, budget, budget_kib, max_pixels, metrics).await;
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

/// Stage 2: batches of ready images through the engine.
pub async fn ocr_stage(
    mut ready_rx: mpsc::Receiver<Ready>,
    cfg: Arc<WorkerConfig>,
    engine: EngineHandle,
    out_tx: mpsc::Sender<Outcome>,
    metrics: Metrics,
) {
    while let Some(first) = ready_rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < cfg.ocr_batch {
            match ready_rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        metrics
            .batch_size
            .with_label_values(&["ocr"])
            .observe(batch.len() as f64);
        let images: Vec<RgbImage> = batch
            .iter_mut()
            .map(|r| std::mem::take(&mut r.image))
            .collect();
        let t = Instant::now();
        let results = engine.recognize(images).await;
        metrics
            .stage_seconds
            .with_label_values(&["ocr"])
            .observe(t.elapsed().as_secs_f64());
        for (ready, result) in batch.into_iter().zip(results) {
            let outcome = match result {
                Ok(text) => Outcome::Doc(document(&cfg, engine.model_version(), ready, text)),
                Err(e) => {
                    let stage = if e.is_input_error() {
                        FailStage::Decode
                    } else {
                        FailStage::Ocr
                    };
                    Outcome::Failed(failure(
                        ready.envelope,
                        stage,
                        e.class(),
                        e.to_string(),
                        ready.attempts,
                    ))
                }
            };
            if out_tx.send(outcome).await.is_err() {
                return;
            }
        }
    }
}

fn document(cfg: &WorkerConfig, model: &str, r: Ready, text: ImageText) -> Document {
    let e = &r.envelope;
    let id = message::document_id(
        r.request.id.as_deref(),
        &cfg.kafka.topic,
        e.partition,
        e.offset,
    );
    let headers: serde_json::Map<String, serde_json::Value> = e
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.as_deref().map(String::from_utf8_lossy))))
        .collect();
    let t = text.timings;
    let body = json!({
        "url": r.request.url,
        "message_id": r.request.id,
        "text": text.text,
        "lines": text.lines,
        "width": text.width,
        "height": text.height,
        "metadata": r.request.metadata,
        "headers": headers,
        "source": {"topic": cfg.kafka.topic, "partition": e.partition, "offset": e.offset, "timestamp": e.timestamp_ms},
        "model": model,
        "contract": CONTRACT_VERSION,
        "worker": cfg.worker_id,
        "attempts": r.attempts,
        "timings_ms": {
            "fetch": r.fetch_ms, "decode": r.decode_ms, "det": t.det, "crop": t.crop, "cls": t.cls, "rec": t.rec,
            "total": r.fetch_ms + r.decode_ms + t.total
        },
        "processed_at": chrono::Utc::now().to_rfc3339(),
    });
    Document {
        envelope: r.envelope,
        id,
        body,
    }
}

/// Stage 3: index documents, dead-letter failures and rejections, then mark messages finished.
pub async fn sink_stage(
    mut out_rx: mpsc::Receiver<Outcome>,
    cfg: Arc<WorkerConfig>,
    es: EsSink,
    dlq: DeadLetter,
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Metrics,
) {
    while let Some(first) = out_rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(linger);
        while batch.len() < cfg.es.bulk_docs {
            tokio::select! {
                o = out_rx.recv() => match o { Some(o) => batch.push(o), None => break },
                _ = &mut linger => break,
            }
        }
        // Work for revoked partitions is dropped: the new owner redoes it.
        let batch: Vec<Outcome> = {
            let t = tracker.lock().expect("tracker");
            batch
                .into_iter()
                .filter(|o| t.is_current(o.envelope().partition, o.envelope().generation))
                .collect()
        };
        let mut docs = Vec::new();
        let mut failures = Vec::new();
        for o in batch {
            match o {
                Outcome::Doc(d) => docs.push(d),
                Outcome::Failed(f) => failures.push(f),
            }
        }
        let mut finished: Vec<(i32, i64, u64)> = Vec::new();
        if !docs.is_empty() {
            let pairs: Vec<(String, serde_json::Value)> = docs
                .iter()
                .map(|d| (d.id.clone(), d.body.clone()))
                .collect();
            let results = es.index(&pairs).await;
            for (d, r) in docs.into_iter().zip(results) {
                match r {
                    None => {
                        metrics.indexed.inc();
                        finished.push((
                            d.envelope.partition,
                            d.envelope.offset,
                            d.envelope.generation,
                        ));
                    }
                    Some((status, reason)) => failures.push(failure(
                        d.envelope,
                        FailStage::Index,
                        format!("http_{status}"),
                        reason,
                        0,
                    )),
                }
            }
        }
        if !failures.is_empty() {
            futures::future::join_all(failures.iter().map(|f| dlq.send(f))).await;
            finished.extend(failures.iter().map(|f| {
                (
                    f.envelope.partition,
                    f.envelope.offset,
                    f.envelope.generation,
                )
            }));
        }
        let mut t = tracker.lock().expect("tracker");
        for (p, o, g) in finished {
            t.finished(p, o, g);
        }
        metrics.in_flight.set(t.in_flight() as i64);
    }
}

/// Exports the engine thread's and the device's busy fractions (over 10 s windows) and the
/// device-seconds counter (every second).
pub async fn busy_meter(engine: EngineHandle, metrics: Metrics) {
    let (mut last_busy, mut last_device) = (engine.busy_seconds(), engine.device_seconds());
    let mut counted = last_device;
    let mut at = Instant::now();
    loop {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let device = engine.device_seconds();
            metrics.device_seconds.inc_by((device - counted).max(0.0));
            counted = device;
        }
        let (busy, device) = (engine.busy_seconds(), engine.device_seconds());
        let wall = at.elapsed().as_secs_f64();
        metrics
            .busy_ratio
            .set(((busy - last_busy) / wall).clamp(0.0, 1.0));
        metrics
            .device_busy_ratio
            .set(((device - last_device) / wall).clamp(0.0, 1.0));
        (last_busy, last_device) = (busy, device);
        at = Instant::now();
    }
}

/// Keeps `health.es_up` current.
pub async fn es_health(es: EsSink, health: Arc<crate::metrics::Health>) {
    loop {
        health.es_up.store(es.ping().await, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

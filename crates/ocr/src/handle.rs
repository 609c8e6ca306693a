//! Using the engine from async code.
//!
//! ONNX Runtime's `run` blocks, so the engine lives on a dedicated OS thread. Callers send
//! batches through a bounded queue (back-pressure: a full queue makes `recognize` wait) and
//! await the per-image results. The thread also counts the time it spends busy, which the
//! worker exports as the inference busy fraction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use tokio::sync::{mpsc, oneshot};

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::error::{EngineError, OcrError};
use crate::output::ImageText;

enum Input {
    Bytes(Vec<Vec<u8>>),
    Images(Vec<RgbImage>),
}

struct Job {
    input: Input,
    reply: oneshot::Sender<Vec<Result<ImageText, OcrError>>>,
}

/// A cloneable, `Send + Sync` handle to an engine running on its own thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    busy_nanos: Arc<AtomicU64>,
    device_nanos: Arc<AtomicU64>,
    provider: Arc<str>,
    model_version: &'static str,
}

impl EngineHandle {
    /// Starts the engine thread and waits until the models are loaded. `queue` bounds the
    /// number of batches waiting for the engine.
    pub fn spawn(cfg: EngineConfig, queue: usize) -> Result<EngineHandle, EngineError> {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let busy_nanos = Arc::new(AtomicU64::new(0));
        let busy = busy_nanos.clone();
        let device_nanos = Arc::new(AtomicU64::new(0));
        let device = device_nanos.clone();
        std::thread::Builder::new()
            .name("ocr-engine".into())
            .spawn(move || {
                let mut engine = match Engine::new(cfg) {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok((e.provider(), e.model_version())));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = rx.blocking_recv() {
                    let t = Instant::now();
                    let in_run = engine.model_time().total();
                    let out = match job.input {
                        Input::Bytes(b) => {
                            let refs: Vec<&[u8]> = b.iter().map(Vec::as_slice).collect();
                            engine.recognize_bytes(&refs)
                        }
                        Input::Images(imgs) => engine.recognize(&imgs),
                    };
                    busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let in_run = engine.model_time().total() - in_run;
                    device.fetch_add((in_run * 1e9) as u64, Ordering::Relaxed);
                    let _ = job.reply.send(out);
                }
            })
            .map_err(|e| EngineError::Config(format!("cannot start engine thread: {e}")))?;
        let (provider, model_version) = ready_rx
            .recv()
            .map_err(|_| EngineError::Config("engine thread exited during start-up".into()))??;
        Ok(EngineHandle {
            tx,
            busy_nanos,
            device_nanos,
            provider: provider.into(),
            model_version,
        })
    }

    /// Recognises decoded images; one result per image.
    pub async fn recognize(&self, images: Vec<RgbImage>) -> Vec<Result<ImageText, OcrError>> {
        let n = images.len();
        self.submit(Input::Images(images), n).await
    }

    /// Decodes and recognises encoded images; one result per input.
    pub async fn recognize_bytes(&self, inputs: Vec<Vec<u8>>) -> Vec<Result<ImageText, OcrError>> {
        let n = inputs.len();
        self.submit(Input::Bytes(inputs), n).await
    }

    async fn submit(&self, input: Input, n: usize) -> Vec<Result<ImageText, OcrError>> {
        let gone = |why: &str| {
            (0..n)
                .map(|_| Err(OcrError::EngineGone(why.to_owned())))
                .collect()
        };
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job { input, reply }).await.is_err() {
            return gone("engine thread has stopped");
        }
        rx.await
            .unwrap_or_else(|_| gone("engine thread stopped while processing"))
    }

    /// Total seconds the engine thread has spent running batches since it started.
    pub fn busy_seconds(&self) -> f64 {
        self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Total seconds spent inside ONNX Runtime's `run` (all models) since the engine started:
    /// the device's busy time. The rest of [`EngineHandle::busy_seconds`] is host work.
    pub fn device_seconds(&self) -> f64 {
        self.device_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The execution provider in use.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The model set's version string.
    pub fn model_version(&self) -> &'static str {
        self.model_version
    }

    /// True while the engine thread is alive.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }
}

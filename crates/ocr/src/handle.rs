//! Using the engine from async code.
//!
//! ONNX Runtime's `run` blocks, so the engine lives on a dedicated OS thread. Callers send
//! batches through a bounded queue (back-pressure: a full queue makes `recognize` wait) and
//! await the per-image results. The thread also counts the time it spends busy (the engine
//! thread's busy fraction) and the time spent inside ONNX Runtime's `run` (the device's).
//! A [`EngineHandle::probe`] runs the engine's health check on the same thread, so the worker
//! can tell a bad image from a broken engine; if the thread stops, every call answers
//! [`OcrError::EngineGone`] and [`EngineHandle::is_alive`] turns false.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use tokio::sync::{mpsc, oneshot};

use crate::config::EngineConfig;
use crate::engine::{Engine, WarmUp};
use crate::error::{EngineError, OcrError};
use crate::output::ImageText;

type Results = Vec<Result<ImageText, OcrError>>;

enum Job {
    Bytes(Vec<Vec<u8>>, oneshot::Sender<Results>),
    /// Images come back with the results, so a caller can run them again after an engine fault.
    Images(Vec<RgbImage>, oneshot::Sender<(Vec<RgbImage>, Results)>),
    Probe(oneshot::Sender<Result<(), String>>),
}

fn gone(n: usize, why: &str) -> Results {
    (0..n)
        .map(|_| Err(OcrError::EngineGone(why.to_owned())))
        .collect()
}

/// [`Engine::recognize`] with panics caught: a batch that panics is run again image by image,
/// and an image that panics on its own gets [`OcrError::Panic`], so that one poison image
/// fails alone instead of killing the engine thread (and, restarted, the next process: a crash
/// loop). The engine stays usable: its sessions are untouched by a panic in the host code.
pub(crate) fn recognize_guarded(engine: &mut Engine, images: &[RgbImage]) -> Results {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    match catch_unwind(AssertUnwindSafe(|| engine.recognize(images))) {
        Ok(out) => out,
        Err(p) => {
            tracing::error!(images = images.len(), panic = %panic_text(&*p), "the engine panicked on a batch; running its images one by one");
            images
                .iter()
                .map(|img| {
                    catch_unwind(AssertUnwindSafe(|| engine.recognize(std::slice::from_ref(img))))
                        .map(|mut r| r.pop().expect("one result per image"))
                        .unwrap_or_else(|p| {
                            let text = panic_text(&*p);
                            tracing::error!(width = img.width(), height = img.height(), panic = %text, "the engine panicked on one image");
                            Err(OcrError::Panic(text))
                        })
                })
                .collect()
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A cloneable, `Send + Sync` handle to an engine running on its own thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    busy_nanos: Arc<AtomicU64>,
    device_nanos: Arc<AtomicU64>,
    provider: Arc<str>,
    model_version: &'static str,
    warm_up: WarmUp,
}

impl EngineHandle {
    /// Starts the engine thread and waits until the models are loaded and warmed up
    /// ([`Engine::warm_up`]). `queue` bounds the
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
                // Ready only once warmed up, so the caller's readiness means every input
                // shape already has its session.
                let mut engine = match Engine::new(cfg).and_then(|mut e| {
                    let w = e.warm_up()?;
                    Ok((e, w))
                }) {
                    Ok((e, w)) => {
                        let _ = ready_tx.send(Ok((e.provider(), e.model_version(), w)));
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
                    match job {
                        Job::Bytes(b, reply) => {
                            let refs: Vec<&[u8]> = b.iter().map(Vec::as_slice).collect();
                            let _ = reply.send(engine.recognize_bytes(&refs));
                        }
                        Job::Images(imgs, reply) => {
                            let out = recognize_guarded(&mut engine, &imgs);
                            let _ = reply.send((imgs, out));
                        }
                        Job::Probe(reply) => {
                            let _ = reply.send(engine.probe());
                        }
                    }
                    busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let in_run = engine.model_time().total() - in_run;
                    device.fetch_add((in_run * 1e9) as u64, Ordering::Relaxed);
                    if engine.wants_exit() {
                        tracing::error!("injected engine fault: the engine thread exits");
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::Config(format!("cannot start engine thread: {e}")))?;
        let (provider, model_version, warm_up) = ready_rx
            .recv()
            .map_err(|_| EngineError::Config("engine thread exited during start-up".into()))??;
        Ok(EngineHandle {
            tx,
            busy_nanos,
            device_nanos,
            provider: provider.into(),
            model_version,
            warm_up,
        })
    }

    /// Recognises decoded images; one result per image.
    pub async fn recognize(&self, images: Vec<RgbImage>) -> Vec<Result<ImageText, OcrError>> {
        self.recognize_keep(images).await.1
    }

    /// Recognises decoded images and gives them back with the results (one per image), so that
    /// the caller can submit them again. When the engine thread has stopped, the images are
    /// lost and every result is [`OcrError::EngineGone`].
    pub async fn recognize_keep(&self, images: Vec<RgbImage>) -> (Vec<RgbImage>, Results) {
        let n = images.len();
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Images(images, reply)).await.is_err() {
            return (Vec::new(), gone(n, "engine thread has stopped"));
        }
        rx.await.unwrap_or_else(|_| {
            (
                Vec::new(),
                gone(n, "engine thread stopped while processing"),
            )
        })
    }

    /// Decodes and recognises encoded images; one result per input.
    pub async fn recognize_bytes(&self, inputs: Vec<Vec<u8>>) -> Results {
        let n = inputs.len();
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Bytes(inputs, reply)).await.is_err() {
            return gone(n, "engine thread has stopped");
        }
        rx.await
            .unwrap_or_else(|_| gone(n, "engine thread stopped while processing"))
    }

    /// Runs the engine's health check (see [`crate::Engine::probe`]) on the engine thread.
    pub async fn probe(&self) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Probe(reply)).await.is_err() {
            return Err("engine thread has stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("engine thread stopped during the probe".into()))
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

    /// What the start-up warm-up did.
    pub fn warm_up(&self) -> WarmUp {
        self.warm_up
    }

    /// True while the engine thread is alive.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }
}

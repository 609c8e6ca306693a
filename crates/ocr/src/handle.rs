//! Using the engine from async code.
//!
//! ONNX Runtime's `run` blocks, so the engine works on dedicated OS threads: `lanes` of them
//! (see [`EngineHandle::spawn`]), each taking the next call from one bounded queue
//! (back-pressure: a full queue makes `recognize` wait) and running it through the shared
//! [`Engine`], so that several calls are in flight at once and the stages of one overlap the
//! stages of another. Callers await the per-image results. The handle counts the time the
//! lanes spend busy and the time spent inside model runs (the device's). A
//! [`EngineHandle::probe`] runs the engine's health check on a lane, so the worker can tell a
//! bad image from a broken engine; once every lane has stopped, every call answers
//! [`OcrError::EngineGone`] and [`EngineHandle::is_alive`] turns false. A panic inside a call
//! is caught: the call runs again image by image, and the image that panics gets
//! [`OcrError::Panic`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use image::RgbImage;
use tokio::sync::{mpsc, oneshot};

use crate::config::EngineConfig;
use crate::engine::{Engine, WarmUp};
use crate::error::{EngineError, OcrError, ProbeError};
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
pub(crate) fn recognize_guarded(
    engine: &Engine,
    images: &[RgbImage],
    fault: Option<crate::config::FaultPlan>,
) -> Results {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // The test fault plan runs inside the guard, where a real panic of the engine would happen.
    let run = |images: &[RgbImage]| {
        crate::instruments::fault::check_images(fault, images);
        engine.recognize(images)
    };
    match catch_unwind(AssertUnwindSafe(|| run(images))) {
        Ok(out) => out,
        Err(p) => {
            tracing::error!(images = images.len(), panic = %panic_text(&*p), "the engine panicked on a batch; running its images one by one");
            images
                .iter()
                .map(|img| {
                    catch_unwind(AssertUnwindSafe(|| run(std::slice::from_ref(img))))
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

/// A cloneable, `Send + Sync` handle to an engine running on its own threads.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    busy_nanos: Arc<AtomicU64>,
    engine: Arc<Engine>,
    lanes: usize,
    provider: Arc<str>,
    model_version: &'static str,
    warm_up: WarmUp,
}

impl EngineHandle {
    /// Loads the models, warms them up ([`Engine::warm_up`]) and starts `lanes` engine threads
    /// (at least one); `queue` bounds the number of calls waiting for a lane.
    pub fn spawn(
        cfg: EngineConfig,
        lanes: usize,
        queue: usize,
    ) -> Result<EngineHandle, EngineError> {
        Self::spawn_on(cfg, lanes, queue, None)
    }

    /// [`EngineHandle::spawn`], with `simulated`: on a simulated device of these costs
    /// ([`Engine::simulate_through`]; test and benchmark only).
    pub fn spawn_on(
        cfg: EngineConfig,
        lanes: usize,
        queue: usize,
        simulated: Option<crate::device::Costs>,
    ) -> Result<EngineHandle, EngineError> {
        let fault = cfg.fault;
        let mut engine = Engine::new(cfg)?;
        // Ready only once warmed up, so the caller's readiness means every input shape
        // already has its session.
        let warm_up = engine.warm_up()?;
        if let Some(costs) = simulated {
            engine.simulate_through(costs);
        }
        let engine = Arc::new(engine);
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let busy_nanos = Arc::new(AtomicU64::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let lanes = lanes.max(1);
        for lane in 0..lanes {
            let (engine, rx, busy, stopping) = (
                engine.clone(),
                rx.clone(),
                busy_nanos.clone(),
                stopping.clone(),
            );
            std::thread::Builder::new()
                .name(format!("ocr-engine-{lane}"))
                .spawn(move || loop {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    // Stopped meanwhile: the job is dropped, and its caller told the engine is
                    // gone.
                    let Some(job) = job.filter(|_| !stopping.load(Ordering::SeqCst)) else {
                        return;
                    };
                    let t = Instant::now();
                    match job {
                        Job::Bytes(b, reply) => {
                            let refs: Vec<&[u8]> = b.iter().map(Vec::as_slice).collect();
                            let _ = reply.send(engine.recognize_bytes(&refs));
                        }
                        Job::Images(imgs, reply) => {
                            let out = recognize_guarded(&engine, &imgs, fault);
                            let _ = reply.send((imgs, out));
                        }
                        Job::Probe(reply) => {
                            let _ = reply.send(engine.probe());
                        }
                    }
                    busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    if engine.wants_exit() {
                        tracing::error!("injected engine fault: the engine threads exit");
                        stopping.store(true, Ordering::SeqCst);
                        return;
                    }
                })
                .map_err(|e| EngineError::Config(format!("cannot start engine thread: {e}")))?;
        }
        Ok(EngineHandle {
            tx,
            busy_nanos,
            provider: engine.provider().into(),
            model_version: engine.model_version(),
            engine,
            lanes,
            warm_up,
        })
    }

    /// Engine threads: the calls that can be in flight at once.
    pub fn lanes(&self) -> usize {
        self.lanes
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
    pub async fn probe(&self) -> Result<(), ProbeError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Probe(reply)).await.is_err() {
            return Err(ProbeError::Gone("the engine threads have stopped".into()));
        }
        match rx.await {
            Ok(answer) => answer.map_err(ProbeError::Failing),
            Err(_) => Err(ProbeError::Gone(
                "an engine thread stopped during the probe".into(),
            )),
        }
    }

    /// Seconds the engine threads have spent running calls since they started, divided by the
    /// number of threads (so that it grows at most as fast as wall time).
    pub fn busy_seconds(&self) -> f64 {
        self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9 / self.lanes as f64
    }

    /// Seconds spent inside model runs (all models, all runners) since the engine started,
    /// divided by the runners per model: the device's busy time per stream. The rest of
    /// [`EngineHandle::busy_seconds`] is host work.
    pub fn device_seconds(&self) -> f64 {
        match self.engine.simulated_device() {
            // Time inside runs would count the waits for the shared device's streams.
            Some(d) => d.busy_seconds() / self.engine.streams() as f64,
            None => self.engine.model_time().total() / self.engine.streams() as f64,
        }
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

//! The engine: the three models' runners and the scheduler that takes a call's images through
//! the stages, detect → crop → classify (180°) → recognise → assembly.
//!
//! [`Engine::recognize`] takes a batch of images and returns one `Result` per image. Each stage
//! batches across the call's images (same-shape images for detection, every crop for the
//! classifier, width buckets filled from every page for recognition; see [`crate::det::stage`],
//! [`crate::cls::stage`], [`crate::rec::stage`]) and runs its model through one of that model's
//! runners ([`crate::model::Streams`]). The engine is `Sync`: several calls run at once from
//! several threads (the lanes of [`crate::EngineHandle`]), each stage taking a runner of its
//! model for its batches, so that with one runner per model the detector already works on one
//! call's pages while the recogniser works on another's lines, and with `K` runners
//! (`--device-streams`) up to `K` runs of each model are in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;

use crate::config::{Device, EngineConfig, FaultPlan};
use crate::crop::Crop;
use crate::error::{EngineError, OcrError, Stage};
use crate::instruments::device::{Costs, Recorder, Recording, Simulated};
use crate::instruments::fault::{FailState, FaultRunner};
use crate::model::batch_sizes;
use crate::model::{base, Batch, ModelRunner, Streams};
use crate::onnx::runner::OrtRunner;
use crate::onnx::runtime;
use crate::onnx::sessions::ModelSessions;
use crate::output::{ImageText, Line, Timings};
use crate::overlap::{Host, Tensors};
use crate::rec::{Decoded, Dictionary};
use crate::{cls, decode, det, rec};

/// A loaded PP-OCR pipeline (see the module documentation).
pub struct Engine {
    cfg: EngineConfig,
    det: Streams,
    cls: Option<Streams>,
    rec: Streams,
    dict: Dictionary,
    /// The host pool: CPU stages run data-parallel on it (see [`EngineConfig::host_threads`]).
    pool: rayon::ThreadPool,
    /// Batch tensors kept between calls ([`Tensors`]).
    tensors: Tensors,
    /// The recorded device's outputs, while recording or simulating (see [`crate::instruments::device`]).
    recording: Option<Arc<Recording>>,
    /// The simulated device, while simulating.
    device: Option<Arc<crate::instruments::device::Device>>,
    /// Images recognised so far (for the test-only exit fault).
    images: AtomicUsize,
}

/// The counters of the device's shared arena ([`EngineConfig::shared_arena`]), as ONNX
/// Runtime keeps them (`AllocatorGetStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArenaStats {
    /// Bytes the arena holds from the device (what it keeps at its peak).
    pub reserved_bytes: u64,
    /// Bytes handed out now.
    pub in_use_bytes: u64,
    /// The most bytes handed out at once.
    pub max_in_use_bytes: u64,
    /// Allocations served since it was made.
    pub allocations: u64,
    /// Its limit (`max_mem`; 0 without one).
    pub limit_bytes: u64,
}

impl ArenaStats {
    /// From ONNX Runtime's key-value counters (`TotalAllocated`, `InUse`, `MaxInUse`,
    /// `NumAllocs`, `Limit`; a missing or unreadable one reads 0).
    pub fn from_pairs(pairs: &[(String, String)]) -> ArenaStats {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        ArenaStats {
            reserved_bytes: get("TotalAllocated"),
            in_use_bytes: get("InUse"),
            max_in_use_bytes: get("MaxInUse"),
            allocations: get("NumAllocs"),
            limit_bytes: get("Limit"),
        }
    }
}

/// Seconds spent inside model runs per model since the engine started, summed over the
/// model's runners. On CUDA this is the time the device (and its copies) kept the calling
/// threads waiting; everything else the engine does is host work that the device waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelTime {
    pub det: f64,
    pub cls: f64,
    pub rec: f64,
}

impl ModelTime {
    /// Sum over the three models.
    pub fn total(&self) -> f64 {
        self.det + self.cls + self.rec
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Runs one runner once at every shape of `list` (zeros), so that each shape's session and
/// plans are made before traffic: the shapes run and the slowest run's seconds.
fn warm_up_runner(
    runner: &mut dyn ModelRunner,
    name: &str,
    stage: Stage,
    list: &[[usize; 4]],
    device: Device,
) -> Result<(usize, f64), EngineError> {
    let mut done = (0usize, 0.0f64);
    for &[n, c, h, w] in list {
        let zeros = vec![0f32; n * c * h * w];
        let run = Instant::now();
        runner
            .run(&Batch {
                stage,
                tensor: &zeros,
                n,
                run_n: n,
                chw: [c, h, w],
            })
            .map_err(|e| {
                device_error(
                    device,
                    format!("warm-up of {name} at {:?}: {}", [n, c, h, w], e.message),
                )
            })?;
        done.1 = done.1.max(run.elapsed().as_secs_f64());
        done.0 += 1;
    }
    Ok(done)
}

/// `K` runners of one model file, each its own set of sessions.
fn streams(
    cfg: &EngineConfig,
    options: &runtime::SessionOptions,
    env: &ort::environment::Environment,
    name: &str,
    fault: &Option<Arc<std::sync::Mutex<FailState>>>,
) -> Result<Streams, EngineError> {
    let path = cfg.model_path(name);
    let runners = (0..cfg.streams.max(1))
        .map(|_| {
            let r: Box<dyn ModelRunner> =
                Box::new(OrtRunner::new(ModelSessions::new(options, env, &path)?));
            Ok(match fault {
                Some(state) => Box::new(FaultRunner {
                    inner: r,
                    state: state.clone(),
                }) as Box<dyn ModelRunner>,
                None => r,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(Streams::new(runners))
}

impl Engine {
    /// Loads ONNX Runtime and the three models (`K` runners of each). Fails with a message
    /// that says what to fix.
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        let mut cfg = cfg;
        // Resolve the device-dependent detector canvases once, so every plan uses the same.
        cfg.det.canvases = Some(cfg.det_canvases());
        cfg.rec.widths = cfg.rec_widths();
        let env = runtime::environment(&cfg.ort_library_path())?;
        if cfg.shared_arena {
            if let Err(why) = runtime::shared_arena(&env, cfg.device, cfg.shared_arena_limit()) {
                tracing::warn!(device = %cfg.device, %why, "ONNX Runtime refused one arena shared by the sessions; each session makes its own (the memory limit is shared out between them)");
                cfg.shared_arena = false;
            }
        }
        if cfg.per_shape_sessions() {
            tracing::info!(plan = %cfg.session_plan(), "session plan (a session per input shape on CUDA)");
        }
        let options = runtime::SessionOptions::from_config(&cfg);
        let fault = cfg.fault.and_then(FailState::new);
        let mut det = streams(&cfg, &options, &env, "det", &fault)?;
        let cls = if cfg.cls.enabled {
            Some(streams(&cfg, &options, &env, "cls", &fault)?)
        } else {
            None
        };
        let mut rec = streams(&cfg, &options, &env, "rec", &fault)?;
        if cfg.shared_arena {
            // Sessions of two models read one arena's counters, with the limit it was given,
            // or they did not take it (an ONNX Runtime whose sessions ignore the environment's
            // allocator for this device): then each keeps an arena of its own, without the
            // limit, which is said loudly. (Two fresh arenas that nothing allocated from yet
            // would read alike; without a limit that case passes, and the warm-up's counters
            // are the evidence.)
            let (a, b) = (
                det.each(|r| r.arena_stats()).into_iter().flatten().next(),
                rec.each(|r| r.arena_stats()).into_iter().flatten().next(),
            );
            let limit_held = match (cfg.shared_arena_limit(), &a) {
                (Some(limit), Some(pairs)) => ArenaStats::from_pairs(pairs).limit_bytes == limit,
                _ => true,
            };
            if a.is_none() || a != b || !limit_held {
                tracing::warn!(device = %cfg.device, det = ?a, rec = ?b, "the sessions did not take the shared arena (or not with its limit): each may have its own, and --device-memory-limit does not bound them");
                cfg.shared_arena = false;
            }
        }
        let rec_path = cfg.model_path("rec");
        let character = rec
            .each(|r| r.metadata("character"))
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| EngineError::Dictionary {
                path: rec_path.display().to_string(),
            })?;
        let dict = Dictionary::from_metadata(&character);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.host_threads)
            .thread_name(|i| format!("ocr-host-{i}"))
            .build()
            .map_err(|e| EngineError::Config(format!("cannot start the host pool: {e}")))?;
        let engine = Engine {
            cfg,
            det,
            cls,
            rec,
            dict,
            pool,
            tensors: Tensors::default(),
            recording: None,
            device: None,
            images: AtomicUsize::new(0),
        };
        engine.self_check()?;
        tracing::info!(
            provider = engine.provider(),
            models = engine.model_version(),
            classes = engine.dict.len(),
            streams = engine.cfg.streams.max(1),
            "OCR engine ready"
        );
        Ok(engine)
    }

    /// One tiny run of the recogniser: checks that the dictionary matches the model's classes
    /// and that the execution provider actually runs (CUDA errors can surface on first run).
    fn self_check(&self) -> Result<(), EngineError> {
        let w = self.cfg.rec.widths[0] as usize;
        let input = vec![0f32; 3 * rec::HEIGHT as usize * w];
        let mut stream = self.rec.take();
        let runner = stream.runner();
        let out = runner
            .run(&Batch {
                stage: Stage::Recognize,
                tensor: &input,
                n: 1,
                run_n: 1,
                chw: [3, rec::HEIGHT as usize, w],
            })
            .map_err(|e| device_error(self.cfg.device, e.message))?;
        let classes = match &out.indices {
            // The argmax model's class count is in its metadata (models/make_argmax.py).
            Some(_) => runner
                .metadata("classes")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            None => *out.main.shape().last().unwrap_or(&0),
        };
        if classes != self.dict.len() {
            return Err(EngineError::Config(format!(
                "recogniser has {classes} classes but its dictionary has {} entries",
                self.dict.len()
            )));
        }
        Ok(())
    }

    /// A health probe: one tiny recogniser run, as at start. Fails when the engine or its
    /// device cannot run a model any more. The worker calls it after a batch with inference
    /// errors to tell a bad image from a broken engine.
    pub fn probe(&self) -> Result<(), String> {
        self.self_check().map_err(|e| e.to_string())
    }

    /// True once an injected [`FaultPlan::Exit`] says the engine should stop.
    pub fn wants_exit(&self) -> bool {
        matches!(self.cfg.fault, Some(FaultPlan::Exit { after_images }) if self.images.load(Ordering::Relaxed) >= after_images)
    }

    /// The configuration in use.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Mutable access for settings that may change between calls: batch sizes, thresholds,
    /// rec width buckets. Model paths, device, streams and threads take effect only in
    /// [`Engine::new`].
    pub fn config_mut(&mut self) -> &mut EngineConfig {
        &mut self.cfg
    }

    /// The execution provider that runs inference, e.g. `CUDAExecutionProvider(cuda:0)`.
    pub fn provider(&self) -> String {
        match self.cfg.device {
            Device::Cpu => "CPUExecutionProvider".to_owned(),
            d => format!("CUDAExecutionProvider({d})"),
        }
    }

    /// The model set's version string.
    pub fn model_version(&self) -> &'static str {
        self.cfg.model_set.version()
    }

    /// Runners per model (`--device-streams`).
    pub fn streams(&self) -> usize {
        self.det.len()
    }

    /// The counters of the device's shared arena, when the sessions share one
    /// ([`EngineConfig::shared_arena`]; `None` with an arena per session). The arena is the
    /// process's, so a second engine on the same device reads the same counters.
    /// Read through one of the recogniser's runners: waits while every one is in a call.
    pub fn arena(&self) -> Option<ArenaStats> {
        if !self.cfg.shared_arena {
            return None;
        }
        let mut stream = self.rec.take();
        let pairs = stream.runner().arena_stats()?;
        Some(ArenaStats::from_pairs(&pairs))
    }

    /// ONNX Runtime sessions alive (all models, all runners).
    pub fn session_count(&self) -> usize {
        self.det.sessions() + self.rec.sessions() + self.cls.as_ref().map_or(0, Streams::sessions)
    }

    /// Makes and runs once, on zeros, every input shape that the current settings can produce,
    /// on every runner: detector canvases × batch sizes, classifier batch sizes, recogniser
    /// widths × batch sizes (see [`crate::sessions`]). Afterwards no image pays for a session
    /// or a cuDNN plan, which cost 75–900 ms per shape on an H200. Does nothing unless each
    /// shape has its own session (CUDA). An error, such as running out of device memory, means
    /// the engine cannot serve; so does a model with more shapes than
    /// [`EngineConfig::max_sessions_per_model`].
    pub fn warm_up(&mut self) -> Result<WarmUp, EngineError> {
        let per_shape = self.det.each(|r| r.per_shape()).into_iter().any(|p| p);
        // On the simulated device the runs never reach a session (and zeros were never
        // recorded): there is nothing to warm.
        if !per_shape || self.device.is_some() {
            return Ok(WarmUp {
                sessions: self.session_count(),
                streams: self.streams(),
                arena: self.arena(),
                ..WarmUp::default()
            });
        }
        let t = Instant::now();
        let cfg = self.cfg.clone();
        let det_shapes = |det: &crate::DetConfig| -> Vec<[usize; 4]> {
            det.canvases
                .clone()
                .unwrap_or_default()
                .iter()
                .flat_map(|&[w, h]| {
                    batch_sizes(det.batch_size)
                        .into_iter()
                        .map(move |b| [b, 3, h as usize, w as usize])
                })
                .collect()
        };
        let mut det = det_shapes(&cfg.det);
        if cfg.det.small_text_px > 0.0 {
            // The small-text pass's one shape ([`DetConfig::second_pass`]).
            det.extend(det_shapes(&cfg.det.second_pass()));
        }
        let cls: Vec<[usize; 4]> = batch_sizes(cfg.cls.batch_size)
            .into_iter()
            .map(|b| [b, 3, cls::HEIGHT as usize, cls::WIDTH as usize])
            .collect();
        let rec: Vec<[usize; 4]> = cfg
            .rec
            .widths
            .iter()
            .flat_map(|&w| {
                batch_sizes(cfg.rec_batch_size())
                    .into_iter()
                    .map(move |b| [b, 3, rec::HEIGHT as usize, w as usize])
            })
            .collect();
        let cap = cfg.max_sessions_per_model;
        let models: Vec<(&str, Stage, &mut Streams, Vec<[usize; 4]>)> = [
            ("det", Stage::Detect, Some(&mut self.det), det),
            ("cls", Stage::Classify, self.cls.as_mut(), cls),
            ("rec", Stage::Recognize, Some(&mut self.rec), rec),
        ]
        .into_iter()
        .filter_map(|(name, stage, streams, list)| Some((name, stage, streams?, list)))
        .collect();
        for (name, _, _, list) in &models {
            if list.len() > cap {
                return Err(EngineError::Config(format!(
                    "{name} has {} input shapes but max_sessions_per_model is {cap}: raise it, or use fewer canvases, widths or batch sizes",
                    list.len()
                )));
            }
        }
        // Every runner of every model warms up on a thread of its own: their sessions are
        // independent (ONNX Runtime creates and runs different sessions concurrently), and
        // on CUDA most of a session's making is host work (graph optimisation, cuDNN plans).
        let device = cfg.device;
        let results: Vec<Result<(usize, f64), EngineError>> = std::thread::scope(|scope| {
            let threads: Vec<_> = models
                .into_iter()
                .flat_map(|(name, stage, streams, list)| {
                    let list = std::sync::Arc::new(list);
                    streams
                        .runners_mut()
                        .map(|runner| {
                            let list = list.clone();
                            std::thread::Builder::new()
                                .name(format!("warm-up-{name}"))
                                .spawn_scoped(scope, move || {
                                    warm_up_runner(runner.as_mut(), name, stage, &list, device)
                                })
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            threads
                .into_iter()
                .map(|t| match t {
                    Ok(t) => t.join().unwrap_or_else(|_| {
                        Err(EngineError::Config("a warm-up thread panicked".into()))
                    }),
                    Err(e) => Err(EngineError::Config(format!(
                        "cannot start a warm-up thread: {e}"
                    ))),
                })
                .collect()
        });
        let (mut shapes, mut slowest) = (0, 0.0f64);
        for r in results {
            let (n, s) = r?;
            shapes += n;
            slowest = slowest.max(s);
        }
        let done = WarmUp {
            shapes,
            sessions: self.session_count(),
            seconds: t.elapsed().as_secs_f64(),
            slowest_run: slowest,
            streams: self.streams(),
            arena: self.arena(),
        };
        tracing::info!(
            shapes = done.shapes,
            sessions = done.sessions,
            streams = done.streams,
            seconds = format!("{:.1}", done.seconds),
            arena_reserved_mib = done.arena.map(|a| a.reserved_bytes >> 20),
            arena_max_in_use_mib = done.arena.map(|a| a.max_in_use_bytes >> 20),
            "OCR engine warmed up: every input shape has its session and plans"
        );
        Ok(done)
    }

    fn each_streams(&mut self, mut f: impl FnMut(&mut Streams)) {
        f(&mut self.det);
        if let Some(c) = self.cls.as_mut() {
            f(c);
        }
        f(&mut self.rec);
    }

    /// Starts recording every model output from now on (see [`crate::instruments::device`]); forgets any
    /// earlier recording.
    pub fn record(&mut self) {
        self.stop_replay();
        let recording = Arc::new(Recording::default());
        self.recording = Some(recording.clone());
        self.each_streams(|s| {
            s.map(|r| {
                Box::new(Recorder {
                    inner: r,
                    recording: recording.clone(),
                })
            })
        });
    }

    /// Stops recording and answers every later model run from the recording instead of the
    /// models, at once (an infinitely fast device); returns the number of items recorded. An
    /// input that was never recorded fails its image with an inference error.
    pub fn replay(&mut self) -> usize {
        self.simulate(Costs::default(), false)
    }

    /// [`Engine::replay`] on a simulated device ([`crate::instruments::device::Device`]) of `costs`, with as
    /// many streams as the engine has runners per model. Host work overlapped with the device's
    /// time is hidden, as it would be on a GPU. With `pad_like_cuda`, batches are padded as
    /// the CUDA path pads them (with [`EngineConfig::like_cuda`], the tensors are CUDA's).
    pub fn simulate(&mut self, costs: Costs, pad_like_cuda: bool) -> usize {
        self.simulated(costs, pad_like_cuda, false)
    }

    /// [`Engine::simulate`] for inputs not known in advance (the worker's hidden
    /// `--test-device-costs`): an input never recorded runs on the real models once, uncharged
    /// to the simulated device, and is recorded; every later run of it is the device's.
    pub fn simulate_through(&mut self, costs: Costs) -> usize {
        self.simulated(costs, false, true)
    }

    fn simulated(&mut self, costs: Costs, pad_like_cuda: bool, record_through: bool) -> usize {
        let recording = self.recording.get_or_insert_with(Default::default).clone();
        let device = Arc::new(crate::instruments::device::Device::new(Costs {
            streams: self.streams(),
            ..costs
        }));
        self.device = Some(device.clone());
        let pinned = self.config().io_binding;
        self.each_streams(|s| {
            s.map(|r| {
                Box::new(Simulated {
                    recording: recording.clone(),
                    device: device.clone(),
                    ladder: r,
                    pad_like_cuda,
                    pinned,
                    record_through,
                })
            })
        });
        recording.len()
    }

    /// The simulated device, while simulating.
    pub fn simulated_device(&self) -> Option<Arc<crate::instruments::device::Device>> {
        self.device.clone()
    }

    /// Back to the real models; the recording is dropped.
    pub fn stop_replay(&mut self) {
        self.each_streams(|s| s.map(base));
        self.recording = None;
        self.device = None;
    }

    /// Seconds spent inside model runs, per model, since the engine started.
    pub fn model_time(&self) -> ModelTime {
        ModelTime {
            det: self.det.run_seconds(),
            cls: self.cls.as_ref().map_or(0.0, Streams::run_seconds),
            rec: self.rec.run_seconds(),
        }
    }

    /// Bytes of model input run so far, all models together (what a device is sent; see
    /// [`Streams::input_bytes`]).
    pub fn input_bytes(&self) -> u64 {
        self.det.input_bytes()
            + self.cls.as_ref().map_or(0, Streams::input_bytes)
            + self.rec.input_bytes()
    }

    fn host(&self) -> Host<'_> {
        Host {
            pool: &self.pool,
            overlap: self.cfg.overlap,
            tensors: &self.tensors,
        }
    }

    /// Decodes and recognises encoded images (JPEG, PNG, ...). One result per input; every page
    /// of a multi-page TIFF is read (up to [`EngineConfig::max_pages`]), into one result whose
    /// lines carry their page numbers ([`ImageText::from_pages`]).
    pub fn recognize_bytes(&self, inputs: &[&[u8]]) -> Vec<Result<ImageText, OcrError>> {
        let mut decoded = Vec::with_capacity(inputs.len());
        // For each input: where its pages start in `decoded`, how many, and the decode time.
        let mut slots = Vec::with_capacity(inputs.len());
        let mut results: Vec<Option<Result<ImageText, OcrError>>> = vec![None; inputs.len()];
        for (i, bytes) in inputs.iter().enumerate() {
            let t = Instant::now();
            match decode::decode_pages(bytes, self.cfg.max_pixels, self.cfg.max_pages) {
                Ok(pages) => {
                    slots.push((i, decoded.len(), pages.len(), ms(t)));
                    decoded.extend(pages);
                }
                Err(e) => results[i] = Some(Err(e.into())),
            }
        }
        let mut texts: Vec<Option<Result<ImageText, OcrError>>> =
            self.recognize(&decoded).into_iter().map(Some).collect();
        for (i, first, n, decode_ms) in slots {
            let pages: Result<Vec<ImageText>, OcrError> = texts[first..first + n]
                .iter_mut()
                .map(|t| t.take().expect("each page read once"))
                .collect();
            let r = pages.map(|p| {
                let mut t = ImageText::from_pages(p).expect("a decoded file has a page");
                t.timings.decode = decode_ms;
                t.timings.total += decode_ms;
                t
            });
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.expect("every slot filled"))
            .collect()
    }

    /// Recognises decoded images. One result per input, in order.
    pub fn recognize(&self, images: &[RgbImage]) -> Vec<Result<ImageText, OcrError>> {
        self.images.fetch_add(images.len(), Ordering::Relaxed);
        let host = self.host();
        let mut timings = vec![Timings::default(); images.len()];
        let mut failed: Vec<Option<OcrError>> = vec![None; images.len()];

        // 1. Detection, and 2. the crops in each image's reading order.
        let detected =
            det::stage::detect(&self.det, &host, images, &self.cfg.det, &mut timings, true);
        let mut crops = Vec::new();
        for (i, d) in detected.into_iter().enumerate() {
            match d {
                Ok(found) => crops.extend(found.into_iter().filter_map(|(quad, cut)| {
                    cut.map(|(pixels, frame)| Crop {
                        image: i,
                        quad,
                        frame,
                        pixels,
                    })
                })),
                Err(e) => failed[i] = Some(e),
            }
        }

        // 3. 180° classification.
        if let Some(c) = &self.cls {
            cls::stage::classify(
                c,
                &host,
                &mut crops,
                &self.cfg.cls,
                &mut timings,
                &mut failed,
            );
        }

        // 4. Recognition.
        let texts = rec::stage::recognise(
            &self.rec,
            &host,
            &self.dict,
            &crops,
            &self.cfg.rec.widths,
            self.cfg.rec_batch_size(),
            &mut timings,
            &mut failed,
        );

        // 5. Assembly.
        let mut lines: Vec<Vec<Line>> = vec![Vec::new(); images.len()];
        let rec_cfg = &self.cfg.rec;
        for (crop, decoded) in crops.iter().zip(texts) {
            let Some(decoded) = decoded else { continue };
            if decoded.text.is_empty() || decoded.score < rec_cfg.drop_score {
                continue;
            }
            let decoded = crate::words::recover_spaces(decoded, &rec_cfg.spaces);
            let words = crate::words::words(&decoded, &placement(crop, &rec_cfg.widths, &decoded));
            lines[crop.image].push(Line {
                text: decoded.text,
                score: decoded.score,
                bbox: crop.quad.map(|p| [p[0] as i32, p[1] as i32]),
                words,
                page: 1,
            });
        }
        images
            .iter()
            .zip(lines)
            .zip(timings)
            .zip(failed)
            .map(|(((img, lines), mut timings), failed)| match failed {
                Some(e) => Err(e),
                None => {
                    timings.total = timings.det + timings.crop + timings.cls + timings.rec;
                    let text = lines
                        .iter()
                        .map(|l| l.text.as_str())
                        .collect::<Vec<_>>()
                        .join("\n");
                    Ok(ImageText {
                        width: img.width(),
                        height: img.height(),
                        lines,
                        text,
                        pages: 1,
                        sources: vec![crate::output::TextSource::Ocr],
                        timings,
                    })
                }
            })
            .collect()
    }

    /// Detection only: boxes per image in reading order. Exposed for benchmarks and tests.
    pub fn detect(
        &self,
        images: &[RgbImage],
    ) -> Vec<Result<Vec<det::postprocess::Quad>, OcrError>> {
        let mut timings = vec![Timings::default(); images.len()];
        det::stage::detect(
            &self.det,
            &self.host(),
            images,
            &self.cfg.det,
            &mut timings,
            false,
        )
        .into_iter()
        .map(|r| r.map(|found| found.into_iter().map(|(q, _)| q).collect()))
        .collect()
    }

    /// Recognition only, on already cropped lines. Exposed for benchmarks.
    pub fn recognize_lines(&self, lines: &[RgbImage]) -> Vec<Result<(String, f32), OcrError>> {
        let crops = as_crops(lines);
        let mut timings = vec![Timings::default(); lines.len()];
        let mut failed = vec![None; lines.len()];
        let texts = rec::stage::recognise(
            &self.rec,
            &self.host(),
            &self.dict,
            &crops,
            &self.cfg.rec.widths,
            self.cfg.rec_batch_size(),
            &mut timings,
            &mut failed,
        );
        texts
            .into_iter()
            .zip(failed)
            .map(|(t, f)| match f {
                Some(e) => Err(e),
                None => Ok(t.map(|d| (d.text, d.score)).unwrap_or_default()),
            })
            .collect()
    }

    /// Classification only: whether each crop would be turned 180°. Exposed for benchmarks.
    pub fn classify_lines(&self, lines: &[RgbImage]) -> Vec<Result<bool, OcrError>> {
        let mut crops = as_crops(lines);
        let mut timings = vec![Timings::default(); lines.len()];
        let mut failed = vec![None; lines.len()];
        if let Some(c) = &self.cls {
            cls::stage::classify(
                c,
                &self.host(),
                &mut crops,
                &self.cfg.cls,
                &mut timings,
                &mut failed,
            );
        }
        crops
            .iter()
            .zip(lines)
            .zip(failed)
            .map(|((c, orig), f)| match f {
                Some(e) => Err(e),
                None => Ok(c.pixels != *orig),
            })
            .collect()
    }

    /// Runs one model on a raw `[n, c, h, w]` tensor and returns the seconds the run took
    /// (model-only timing for benchmarks: no pre- or post-processing).
    pub fn run_model_only(
        &self,
        model: Model,
        tensor: &[f32],
        n: usize,
        chw: [usize; 3],
    ) -> Result<f64, String> {
        let (streams, stage) = match model {
            Model::Det => (&self.det, Stage::Detect),
            Model::Rec => (&self.rec, Stage::Recognize),
            Model::Cls => (
                self.cls.as_ref().ok_or("the classifier is disabled")?,
                Stage::Classify,
            ),
        };
        let mut stream = streams.take();
        let t = Instant::now();
        stream
            .runner()
            .run(&Batch {
                stage,
                tensor,
                n,
                run_n: n,
                chw,
            })
            .map_err(|e| e.message)?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// A model run that failed outside any one image: on CUDA a device error, else ONNX Runtime's.
fn device_error(device: Device, message: String) -> EngineError {
    match device {
        Device::Cuda(device) => EngineError::Cuda { device, message },
        Device::Cpu => EngineError::Ort(message),
    }
}

/// What [`Engine::warm_up`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WarmUp {
    /// Input shapes made and run once, over all runners (0 when shapes share one session, as
    /// on CPU).
    pub shapes: usize,
    /// Sessions alive afterwards, all models and runners (3 per runner when shapes share one
    /// session).
    pub sessions: usize,
    /// Wall time of the warm-up.
    pub seconds: f64,
    /// The slowest single run of the warm-up, session creation included (0 without one).
    pub slowest_run: f64,
    /// Runners per model.
    pub streams: usize,
    /// The shared arena's counters after the warm-up (`None` with an arena per session).
    pub arena: Option<ArenaStats>,
}

/// Where a crop's recogniser input sat in the image (for word boxes).
fn placement(crop: &Crop, widths: &[u32], decoded: &Decoded) -> crate::words::Placement {
    let (w, h) = crop.pixels.dimensions();
    let bucket = rec::bucket_width(w, h, widths);
    crate::words::Placement {
        frame: crop.frame,
        content_px: crate::preprocess::width_at_height(w, h, rec::HEIGHT, bucket) as f32,
        step_px: bucket as f32 / decoded.steps.max(1) as f32,
    }
}

/// Stand-alone lines as crops, each its own "image" (for the stage-only entry points).
fn as_crops(lines: &[RgbImage]) -> Vec<Crop> {
    lines
        .iter()
        .enumerate()
        .map(|(i, p)| Crop {
            image: i,
            quad: [[0.0; 2]; 4],
            frame: [[0.0; 2]; 4],
            pixels: p.clone(),
        })
        .collect()
}

/// One of the three models, for [`Engine::run_model_only`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Det,
    Cls,
    Rec,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunError, RunOutput};
    use ndarray::{ArrayD, IxDyn};

    /// A fake detector: a zero probability map (no text) for every item, and a failed run for any
    /// batch holding a bright image (mean input above 0.5): the engine must fail that image
    /// alone, keep the order of the results, and work from several threads at once.
    struct FakeDet {
        runs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ModelRunner for FakeDet {
        fn run(&mut self, b: &Batch<'_>) -> Result<RunOutput, RunError> {
            self.runs.fetch_add(1, Ordering::Relaxed);
            let bright = b.tensor[..b.n * b.slot()]
                .chunks(b.slot())
                .any(|s| s.iter().sum::<f32>() / s.len() as f32 > 0.5);
            if bright {
                return Err(RunError::from_message("fake detector: bright input"));
            }
            let [_, h, w] = b.chw;
            Ok(RunOutput {
                main: ArrayD::zeros(IxDyn(&[b.run_n, 1, h, w])),
                indices: None,
                space: None,
            })
        }
    }

    /// A recogniser that is never reached (no boxes): fails loudly if it is.
    struct Unreachable;

    impl ModelRunner for Unreachable {
        fn run(&mut self, _: &Batch<'_>) -> Result<RunOutput, RunError> {
            panic!("no crop should reach this model");
        }
    }

    fn fake_engine(streams: usize) -> (Engine, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut cfg = EngineConfig::default();
        cfg.det.canvases = Some(Vec::new());
        cfg.rec.widths = cfg.rec_widths();
        cfg.det.batch_size = 4;
        let det = (0..streams)
            .map(|_| Box::new(FakeDet { runs: runs.clone() }) as Box<dyn ModelRunner>)
            .collect();
        let engine = Engine {
            cfg,
            det: Streams::new(det),
            cls: Some(Streams::new(vec![Box::new(Unreachable)])),
            rec: Streams::new(vec![Box::new(Unreachable)]),
            dict: Dictionary::from_metadata("a\nb"),
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
            tensors: Tensors::default(),
            recording: None,
            device: None,
            images: AtomicUsize::new(0),
        };
        (engine, runs)
    }

    fn image(v: u8, w: u32) -> RgbImage {
        RgbImage::from_pixel(w, 40, image::Rgb([v, v, v]))
    }

    #[test]
    fn a_failing_image_fails_alone_and_results_keep_their_order() {
        let (engine, runs) = fake_engine(1);
        // Two shapes (widths 100 and 300); the bright one is in the second batch of the first.
        let images: Vec<RgbImage> = [
            (0, 100),
            (0, 300),
            (0, 100),
            (0, 100),
            (0, 100),
            (255, 100),
            (0, 300),
        ]
        .iter()
        .map(|&(v, w)| image(v, w))
        .collect();
        let out = engine.recognize(&images);
        assert_eq!(out.len(), images.len());
        for (i, r) in out.iter().enumerate() {
            match (i, r) {
                (5, Err(OcrError::Inference { stage, message })) => {
                    assert_eq!(*stage, Stage::Detect);
                    assert!(message.contains("bright"), "{message}");
                }
                (5, other) => panic!("image 5 must fail alone, got {other:?}"),
                (_, Ok(t)) => {
                    assert_eq!(t.width, images[i].width(), "result {i} is image {i}'s");
                    assert!(t.lines.is_empty());
                }
                (_, Err(e)) => panic!("image {i} failed with its batch-mate: {e}"),
            }
        }
        // Batches: 4 narrow, then 1 narrow + the bright one... by shape: [0,2,3,4] [5] and
        // [1,6]; the failed batch of one is not retried, so three runs.
        assert_eq!(runs.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn calls_from_several_threads_share_the_runners() {
        let (engine, runs) = fake_engine(2);
        let engine = std::sync::Arc::new(engine);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let e = engine.clone();
                std::thread::spawn(move || {
                    let images: Vec<RgbImage> =
                        (0..5).map(|i| image(0, 60 + 20 * (t + i))).collect();
                    let out = e.recognize(&images);
                    out.iter()
                        .zip(&images)
                        .all(|(r, im)| r.as_ref().is_ok_and(|t| t.width == im.width()))
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap(), "every call got its own images' results");
        }
        assert!(runs.load(Ordering::Relaxed) >= 4);
        assert_eq!(engine.det.len(), 2);
    }
}

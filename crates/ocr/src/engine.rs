//! The batched pipeline: detect → crop → classify (180°) → recognise.
//!
//! [`Engine::recognize`] takes a batch of images and returns one `Result` per image. Work is
//! batched across images at every stage (same-shape images for detection, all crops for the
//! classifier, width buckets for recognition). If ONNX Runtime fails on a batch, each item is
//! retried alone, so one bad input fails only its own image.

use std::collections::BTreeMap;
use std::time::Instant;

use fast_image_resize::Resizer;
use image::RgbImage;
use ndarray::{ArrayD, ArrayView4, ArrayViewD, Axis, Ix1, Ix2};
use ort::session::Session;
use ort::value::TensorRef;
use rayon::prelude::*;

use crate::overlap::overlapped;
use crate::replay::Recording;
use crate::sessions::{batch_sizes, ModelSessions};

use crate::config::{DetConfig, Device, EngineConfig, FaultPlan};
use crate::det::postprocess::{boxes_from_map, Quad};
use crate::det::{wants_second_pass, DetShape};
use crate::error::{EngineError, OcrError, Stage};
use crate::output::{ImageText, Line, Timings};
use crate::rec::{Decoded, Dictionary};
use crate::{cls, decode, rec, runtime};

/// A loaded PP-OCR pipeline. Not `Sync`: ONNX Runtime's `run` takes `&mut`, so one engine
/// belongs to one thread (see [`crate::EngineHandle`] for use from async code).
pub struct Engine {
    cfg: EngineConfig,
    det: ModelSessions,
    cls: Option<ModelSessions>,
    rec: ModelSessions,
    dict: Dictionary,
    /// The host pool: CPU stages run data-parallel on it (see [`EngineConfig::host_threads`]).
    pool: rayon::ThreadPool,
    /// Wall time spent inside ONNX Runtime's `run`, per model: the device's busy time.
    model_time: ModelTime,
    /// Test-only injected fault (see [`EngineConfig::fault`]).
    fault: Option<FaultState>,
    /// The replay device, when recording or replaying (see [`crate::replay`]).
    recording: Option<Recording>,
}

/// Progress of an injected fault.
struct FaultState {
    plan: FaultPlan,
    images: usize,
    failing_since: Option<Instant>,
}

impl FaultState {
    /// Whether calls fail now; counts `images` towards the trigger while they do not.
    fn failing(&mut self, images: usize) -> bool {
        let FaultPlan::Fail {
            after_images,
            seconds,
        } = self.plan
        else {
            self.images += images;
            return false;
        };
        if self.failing_since.is_none() && self.images >= after_images {
            tracing::warn!(after_images, seconds, "injected engine fault starts");
            self.failing_since = Some(Instant::now());
        }
        match self.failing_since {
            Some(t) => t.elapsed().as_secs_f64() < seconds,
            None => {
                self.images += images;
                false
            }
        }
    }
}

/// Seconds spent inside ONNX Runtime's `run` per model since the engine started. On CUDA this
/// is the time the device (and its copies) kept the calling thread waiting; everything else
/// the engine does is host work that the device waits for.
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

/// A crop waiting for classification and recognition.
struct Crop {
    image: usize,
    quad: Quad,
    /// The crop's corners in the image, in the order of its pixels ([`crate::crop::frame`]),
    /// turned with it by the classifier.
    frame: Quad,
    pixels: RgbImage,
}

/// What one model run returns, copied out of ONNX Runtime: its first output, or, for a
/// recogniser with the argmax appended (`models/make_argmax.py`), its `scores` plus the
/// `indices` of the best classes and the space class's probability per step (`space`).
#[derive(Clone)]
pub(crate) struct RunOutput {
    pub(crate) main: ArrayD<f32>,
    pub(crate) indices: Option<ArrayD<i64>>,
    pub(crate) space: Option<ArrayD<f32>>,
}

/// One item's share of a [`RunOutput`].
struct ItemOutput<'a> {
    main: ArrayViewD<'a, f32>,
    indices: Option<ArrayViewD<'a, i64>>,
    space: Option<ArrayViewD<'a, f32>>,
}

impl RunOutput {
    fn item(&self, i: usize) -> ItemOutput<'_> {
        ItemOutput {
            main: self.main.index_axis(Axis(0), i),
            indices: self.indices.as_ref().map(|a| a.index_axis(Axis(0), i)),
            space: self.space.as_ref().map(|a| a.index_axis(Axis(0), i)),
        }
    }
}

/// The output of one model run: the whole batch, or per item after a failed batch.
// One value per model run, moved once: the size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum BatchOutput {
    Whole(RunOutput),
    PerItem(Vec<Result<RunOutput, OcrError>>),
}

impl BatchOutput {
    fn item(&self, i: usize) -> Result<ItemOutput<'_>, OcrError> {
        match self {
            BatchOutput::Whole(a) => Ok(a.item(i)),
            BatchOutput::PerItem(v) => match &v[i] {
                Ok(a) => Ok(a.item(0)),
                Err(e) => Err(e.clone()),
            },
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Engine {
    /// Loads ONNX Runtime and the three models. Fails with a message that says what to fix.
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        let mut cfg = cfg;
        // Resolve the device-dependent detector canvases once, so every plan uses the same.
        cfg.det.canvases = Some(cfg.det_canvases());
        cfg.rec.widths = cfg.rec_widths();
        let env = runtime::environment(&cfg.ort_library_path())?;
        let det = ModelSessions::new(&cfg, &env, &cfg.model_path("det"))?;
        let cls = if cfg.cls.enabled {
            Some(ModelSessions::new(&cfg, &env, &cfg.model_path("cls"))?)
        } else {
            None
        };
        let rec_path = cfg.model_path("rec");
        let rec = ModelSessions::new(&cfg, &env, &rec_path)?;
        let character = rec
            .any()
            .and_then(|s| s.metadata().ok())
            .and_then(|m| m.custom("character"))
            .ok_or_else(|| EngineError::Dictionary {
                path: rec_path.display().to_string(),
            })?;
        let dict = Dictionary::from_metadata(&character);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.host_threads)
            .thread_name(|i| format!("ocr-host-{i}"))
            .build()
            .map_err(|e| EngineError::Config(format!("cannot start the host pool: {e}")))?;
        let mut engine = Engine {
            cfg,
            det,
            cls,
            rec,
            dict,
            pool,
            model_time: ModelTime::default(),
            fault: None,
            recording: None,
        };
        engine.self_check()?;
        engine.fault = engine.cfg.fault.map(|plan| FaultState {
            plan,
            images: 0,
            failing_since: None,
        });
        tracing::info!(
            provider = engine.provider(),
            models = engine.model_version(),
            classes = engine.dict.len(),
            "OCR engine ready"
        );
        Ok(engine)
    }

    /// One tiny run of the recogniser: checks that the dictionary matches the model's classes
    /// and that the execution provider actually runs (CUDA errors can surface on first run).
    fn self_check(&mut self) -> Result<(), EngineError> {
        let w = self.cfg.rec.widths[0] as usize;
        let input = vec![0f32; 3 * rec::HEIGHT as usize * w];
        let chw = [3, rec::HEIGHT as usize, w];
        let out = self
            .rec
            .get(&[1, chw[0], chw[1], chw[2]])
            .and_then(|s| run_model(s, &input, 1, chw, &mut 0.0))
            .map_err(|m| device_error(self.cfg.device, m))?;
        let classes = match &out.indices {
            // The argmax model's class count is in its metadata (models/make_argmax.py).
            Some(_) => self
                .rec
                .any()
                .and_then(|s| s.metadata().ok())
                .and_then(|m| m.custom("classes"))
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

    /// A health probe: one tiny recogniser run, as at start. Fails when the engine or its device
    /// cannot run a model any more (or an injected fault says so). The worker calls it after a
    /// batch with inference errors to tell a bad image from a broken engine.
    pub fn probe(&mut self) -> Result<(), String> {
        if let Some(f) = &mut self.fault {
            if f.failing(0) {
                return Err("injected engine fault (probe)".into());
            }
        }
        self.self_check().map_err(|e| e.to_string())
    }

    /// True once an injected [`FaultPlan::Exit`] says the engine thread should stop.
    pub fn wants_exit(&self) -> bool {
        matches!(&self.fault, Some(FaultState { plan: FaultPlan::Exit { after_images }, images, .. }) if images >= after_images)
    }

    /// The configuration in use.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Mutable access for settings that may change between calls: batch sizes, thresholds,
    /// rec width buckets. Model paths, device and threads take effect only in [`Engine::new`].
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

    /// ONNX Runtime sessions alive (det + cls + rec); more than 3 only with
    /// [`EngineConfig::session_per_shape`].
    pub fn session_count(&self) -> usize {
        self.det.count() + self.rec.count() + self.cls.as_ref().map_or(0, ModelSessions::count)
    }

    /// Makes and runs once, on zeros, every input shape that the current settings can produce:
    /// detector canvases × batch sizes, classifier batch sizes, recogniser widths × batch sizes
    /// (see [`crate::sessions`]). Afterwards no image pays for a session or a cuDNN plan, which
    /// cost 75–900 ms per shape on an H200. Does nothing unless each shape has its own session
    /// (CUDA). An error, such as running out of device memory, means the engine cannot serve;
    /// so does a model with more shapes than [`EngineConfig::max_sessions_per_model`].
    pub fn warm_up(&mut self) -> Result<WarmUp, EngineError> {
        if !self.det.per_shape() {
            return Ok(WarmUp {
                sessions: self.session_count(),
                ..WarmUp::default()
            });
        }
        let t = Instant::now();
        let cfg = &self.cfg;
        let det_shapes = |det: &DetConfig| -> Vec<[usize; 4]> {
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
        let device = cfg.device;
        let (mut shapes, mut slowest) = (0, 0.0f64);
        for (name, sessions, list) in [
            ("det", Some(&mut self.det), det),
            ("cls", self.cls.as_mut(), cls),
            ("rec", Some(&mut self.rec), rec),
        ] {
            let Some(sessions) = sessions else { continue };
            if list.len() > cap {
                return Err(EngineError::Config(format!(
                    "{name} has {} input shapes but max_sessions_per_model is {cap}: raise it, or use fewer canvases, widths or batch sizes",
                    list.len()
                )));
            }
            for shape in list {
                let [n, c, h, w] = shape;
                let zeros = vec![0f32; n * c * h * w];
                let run = Instant::now();
                sessions
                    .get(&shape)
                    .and_then(|s| run_model(s, &zeros, n, [c, h, w], &mut 0.0))
                    .map_err(|m| {
                        device_error(device, format!("warm-up of {name} at {shape:?}: {m}"))
                    })?;
                slowest = slowest.max(run.elapsed().as_secs_f64());
                shapes += 1;
            }
        }
        let done = WarmUp {
            shapes,
            sessions: self.session_count(),
            seconds: t.elapsed().as_secs_f64(),
            slowest_run: slowest,
        };
        tracing::info!(
            shapes = done.shapes,
            sessions = done.sessions,
            seconds = format!("{:.1}", done.seconds),
            "OCR engine warmed up: every input shape has its session and plans"
        );
        Ok(done)
    }

    /// Starts recording every model output from now on (see [`crate::replay`]); forgets any
    /// earlier recording.
    pub fn record(&mut self) {
        self.recording = Some(Recording::default());
    }

    /// Stops recording and answers every later model run from the recording instead of the
    /// models (the replay device); returns the number of items recorded. An input that was
    /// never recorded fails its image with an inference error.
    pub fn replay(&mut self) -> usize {
        self.replay_on_device(ModelTime::default())
    }

    /// [`Engine::replay`] on a simulated device: each answered run first waits
    /// `per_item_ms` (det, cls, rec) times its padded batch size, as the calling thread waits
    /// for a real device. Host work overlapped with that wait is hidden, as it would be on a
    /// GPU; the share of wall time spent waiting is the simulated device's busy fraction.
    pub fn replay_on_device(&mut self, per_item_ms: ModelTime) -> usize {
        let r = self.recording.get_or_insert_with(Recording::default);
        r.replaying = true;
        r.latency_ms = per_item_ms;
        r.len()
    }

    /// Back to the real models; the recording is dropped.
    pub fn stop_replay(&mut self) {
        self.recording = None;
    }

    /// Seconds spent inside ONNX Runtime's `run`, per model, since the engine started.
    pub fn model_time(&self) -> ModelTime {
        self.model_time
    }

    /// Decodes and recognises encoded images (JPEG, PNG, ...). One result per input; every page
    /// of a multi-page TIFF is read (up to [`EngineConfig::max_pages`]), into one result whose
    /// lines carry their page numbers ([`ImageText::from_pages`]).
    pub fn recognize_bytes(&mut self, inputs: &[&[u8]]) -> Vec<Result<ImageText, OcrError>> {
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
    pub fn recognize(&mut self, images: &[RgbImage]) -> Vec<Result<ImageText, OcrError>> {
        if let Some(FaultState {
            plan: FaultPlan::Image { width, height, on },
            ..
        }) = &self.fault
        {
            if images.iter().any(|i| i.dimensions() == (*width, *height)) {
                match on {
                    crate::config::ImageFault::Panic => {
                        panic!("injected engine fault: panic on a {width}x{height} image")
                    }
                    crate::config::ImageFault::Abort => {
                        tracing::error!("injected engine fault: aborting the process on a {width}x{height} image");
                        std::process::abort();
                    }
                    crate::config::ImageFault::Hang => {
                        tracing::error!(
                            "injected engine fault: hanging on a {width}x{height} image"
                        );
                        loop {
                            std::thread::park();
                        }
                    }
                }
            }
        }
        if let Some(f) = &mut self.fault {
            if f.failing(images.len()) {
                return images
                    .iter()
                    .map(|_| {
                        Err(OcrError::Inference {
                            stage: Stage::Detect,
                            message: "injected engine fault".into(),
                        })
                    })
                    .collect();
            }
        }
        let mut timings = vec![Timings::default(); images.len()];
        let mut failed: Vec<Option<OcrError>> = vec![None; images.len()];

        // 1. Detection, and 2. the crops in each image's reading order: cut on the host pool
        // while the detector runs the next batch.
        let detected = self.detect_timed(images, &mut timings, true);
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
        if self.cls.is_some() {
            self.classify_timed(&mut crops, &mut timings, &mut failed);
        }

        // 4. Recognition.
        let texts = self.rec_timed(&crops, &mut timings, &mut failed);

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
                        timings,
                    })
                }
            })
            .collect()
    }

    /// Detection only: boxes per image in reading order. Exposed for benchmarks and tests.
    pub fn detect(&mut self, images: &[RgbImage]) -> Vec<Result<Vec<Quad>, OcrError>> {
        let mut timings = vec![Timings::default(); images.len()];
        self.detect_timed(images, &mut timings, false)
            .into_iter()
            .map(|r| r.map(|found| found.into_iter().map(|(q, _)| q).collect()))
            .collect()
    }

    /// Boxes per image in reading order, each with its crop when `cut` (a degenerate box has
    /// none). An image scaled down so far that its text came out small
    /// ([`crate::det::wants_second_pass`]) is detected again at up to
    /// [`DetConfig::small_text_limit`], and the second pass's boxes are the ones kept.
    fn detect_timed(
        &mut self,
        images: &[RgbImage],
        timings: &mut [Timings],
        cut: bool,
    ) -> Vec<Result<Found, OcrError>> {
        let cfg = self.cfg.det.clone();
        let all: Vec<usize> = (0..images.len()).collect();
        let mut out = self.detect_pass(images, &all, &cfg, timings, cut, true);
        let again: Vec<usize> = all
            .into_iter()
            .filter(|&i| matches!(out[i], Some(Ok(Pass::Again(_)))))
            .collect();
        if !again.is_empty() {
            let second = cfg.second_pass();
            tracing::debug!(
                images = again.len(),
                limit = second.limit_side_len,
                "small text: detecting again at a higher resolution"
            );
            let mut redone = self.detect_pass(images, &again, &second, timings, cut, false);
            for &i in &again {
                match redone[i].take() {
                    Some(Ok(pass)) => out[i] = Some(Ok(pass)),
                    // The first pass's boxes stand if the second pass fails (a GPU out of
                    // memory at the larger size, say): the image was read, if less well.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "second detector pass failed; keeping the first");
                        if let Some(Ok(Pass::Again(quads))) = out[i].take() {
                            let t = Instant::now();
                            let found = self.pool.install(|| cut_all(&images[i], quads, cut, &cfg));
                            timings[i].crop += ms(t);
                            out[i] = Some(Ok(Pass::Done(found)));
                        }
                    }
                    None => unreachable!("the second pass covers every image it was given"),
                }
            }
        }
        out.into_iter()
            .map(|r| match r.expect("every image in a group")? {
                Pass::Done(found) => Ok(found),
                Pass::Again(_) => unreachable!("a second pass never asks for a third"),
            })
            .collect()
    }

    /// One detector pass over `images[which]` with `cfg`; the result is indexed like `images`
    /// (`None` outside `which`). With `may_repeat`, an image that wants a second pass gets
    /// [`Pass::Again`] with its boxes and no crops.
    fn detect_pass(
        &mut self,
        images: &[RgbImage],
        which: &[usize],
        cfg: &DetConfig,
        timings: &mut [Timings],
        cut: bool,
        may_repeat: bool,
    ) -> Vec<Option<Result<Pass, OcrError>>> {
        let canvases = cfg.canvases.clone().unwrap_or_default();
        let shapes: Vec<DetShape> = images
            .iter()
            .map(|im| DetShape::plan(im.width(), im.height(), cfg, &canvases))
            .collect();
        // Group by tensor shape; BTreeMap keeps the order deterministic.
        let mut groups: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for &i in which {
            groups.entry(shapes[i].tensor_key()).or_default().push(i);
        }
        // Batches: (tensor height, width, member images, padded batch size).
        let batches: Vec<(usize, usize, &[usize], usize)> = groups
            .iter()
            .flat_map(|(&(th, tw), members)| {
                members
                    .chunks(cfg.batch_size)
                    .map(move |c| (th as usize, tw as usize, c))
            })
            .map(|(th, tw, c)| (th, tw, c, self.det.padded_batch(c.len(), cfg.batch_size)))
            .collect();
        let overlap = self.cfg.overlap;
        let Engine {
            det,
            pool,
            model_time,
            recording,
            ..
        } = self;
        let done = overlapped(
            overlap,
            pool,
            &batches,
            |&(th, tw, chunk, run_n), tensor| {
                let slot = 3 * th * tw;
                tensor.resize(slot * run_n, 0f32);
                tensor
                    .par_chunks_mut(slot)
                    .zip(chunk.par_iter())
                    .for_each_init(Resizer::new, |resizer, (dst, &i)| {
                        let s = &shapes[i];
                        let resized = crate::preprocess::resize(
                            resizer,
                            &images[i],
                            s.resized_w,
                            s.resized_h,
                        );
                        crate::preprocess::write_planes(&resized, dst, tw, th);
                        crate::preprocess::pad_with_background(&resized, dst, tw, th);
                    });
            },
            |&(th, tw, chunk, run_n), tensor| {
                infer(
                    det,
                    Stage::Detect,
                    tensor,
                    (chunk.len(), run_n),
                    [3, th, tw],
                    &mut model_time.det,
                    recording,
                )
            },
            |&(_, _, chunk, _), output| -> Vec<(Result<Pass, OcrError>, f64, f64)> {
                chunk
                    .par_iter()
                    .enumerate()
                    .map(|(k, &i)| {
                        let t = Instant::now();
                        let r = output.item(k).and_then(|out| {
                            // [1, H, W] per image.
                            let map = out
                                .main
                                .index_axis(Axis(0), 0)
                                .into_dimensionality::<Ix2>()
                                .map_err(|e| OcrError::Inference {
                                    stage: Stage::Detect,
                                    message: format!("unexpected detector output: {e}"),
                                })?;
                            Ok(boxes_from_map(map, &shapes[i], cfg))
                        });
                        let post = ms(t);
                        let t = Instant::now();
                        let r = r.map(|quads| {
                            if may_repeat && wants_second_pass(&quads, &shapes[i], cfg) {
                                Pass::Again(quads)
                            } else {
                                Pass::Done(cut_all(&images[i], quads, cut, cfg))
                            }
                        });
                        (r, post, ms(t))
                    })
                    .collect()
            },
        );
        let mut out: Vec<Option<Result<Pass, OcrError>>> = vec![None; images.len()];
        for (&(_, _, chunk, _), d) in batches.iter().zip(done) {
            let share = (d.fill_ms + d.run_ms) / chunk.len() as f64;
            for (&i, (r, post, crop)) in chunk.iter().zip(d.result) {
                timings[i].det += share + post;
                timings[i].crop += crop;
                out[i] = Some(r);
            }
        }
        out
    }

    fn classify_timed(
        &mut self,
        crops: &mut [Crop],
        timings: &mut [Timings],
        failed: &mut [Option<OcrError>],
    ) {
        let Engine {
            cls: Some(sessions),
            pool,
            model_time,
            recording,
            cfg,
            ..
        } = self
        else {
            return;
        };
        let (h, w) = (cls::HEIGHT as usize, cls::WIDTH as usize);
        let slot = 3 * h * w;
        let thresh = cfg.cls.thresh;
        let overlap = cfg.overlap;
        // Batches: (first crop, crop count, padded batch size).
        let batches: Vec<(usize, usize, usize)> = (0..crops.len())
            .step_by(cfg.cls.batch_size)
            .map(|a| {
                let n = cfg.cls.batch_size.min(crops.len() - a);
                (a, n, sessions.padded_batch(n, cfg.cls.batch_size))
            })
            .collect();
        let view: &[Crop] = crops;
        // Each batch's answer per crop: turn it 180° or not (applied after the loop, which
        // reads the crops while it runs).
        let done = overlapped(
            overlap,
            pool,
            &batches,
            |&(a, n, run_n), tensor| {
                tensor.resize(slot * run_n, 0f32);
                tensor
                    .par_chunks_mut(slot)
                    .zip(view[a..a + n].par_iter())
                    .for_each_init(Resizer::new, |resizer, (dst, c)| {
                        cls::fill(resizer, &c.pixels, dst)
                    });
            },
            |&(_, n, run_n), tensor| {
                infer(
                    sessions,
                    Stage::Classify,
                    tensor,
                    (n, run_n),
                    [3, h, w],
                    &mut model_time.cls,
                    recording,
                )
            },
            |&(_, n, _), output| -> Vec<Result<bool, OcrError>> {
                (0..n)
                    .map(|k| {
                        output.item(k).map(|out| {
                            let probs: Vec<f32> = out.main.iter().copied().collect();
                            cls::should_rotate(&probs, thresh)
                        })
                    })
                    .collect()
            },
        );
        for (&(a, n, _), d) in batches.iter().zip(done) {
            let share = (d.fill_ms + d.run_ms) / n as f64;
            for (c, turn) in crops[a..a + n].iter_mut().zip(d.result) {
                timings[c.image].cls += share;
                match turn {
                    Ok(true) => {
                        image::imageops::rotate180_in_place(&mut c.pixels);
                        let [tl, tr, br, bl] = c.frame;
                        c.frame = [br, bl, tl, tr];
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failed[c.image].get_or_insert(e);
                    }
                }
            }
        }
    }

    fn rec_timed(
        &mut self,
        crops: &[Crop],
        timings: &mut [Timings],
        failed: &mut [Option<OcrError>],
    ) -> Vec<Option<Decoded>> {
        let widths = self.cfg.rec.widths.clone();
        // Sort crop indices by (bucket, width) so each batch has one shape and similar widths.
        let mut order: Vec<(u32, u32, usize)> = crops
            .iter()
            .enumerate()
            .filter(|(_, c)| failed[c.image].is_none())
            .map(|(i, c)| {
                let (w, h) = c.pixels.dimensions();
                (
                    rec::bucket_width(w, h, &widths),
                    crate::preprocess::width_at_height(w, h, rec::HEIGHT, u32::MAX),
                    i,
                )
            })
            .collect();
        order.sort_unstable();
        // Batches: runs of one bucket, at most the batch size; with their padded batch size.
        let max = self.cfg.rec_batch_size();
        let mut batches: Vec<RecBatch<'_>> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let bucket = order[start].0;
            let end = order[start..]
                .iter()
                .position(|o| o.0 != bucket)
                .map_or(order.len(), |p| start + p)
                .min(start + max);
            let batch = &order[start..end];
            batches.push((bucket, batch, self.rec.padded_batch(batch.len(), max)));
            start = end;
        }
        let h = rec::HEIGHT as usize;
        let overlap = self.cfg.overlap;
        let Engine {
            rec,
            pool,
            model_time,
            recording,
            dict,
            ..
        } = self;
        let dict = &*dict;
        let done = overlapped(
            overlap,
            pool,
            &batches,
            |&(bucket, batch, run_n), tensor| {
                let slot = 3 * h * bucket as usize;
                tensor.resize(slot * run_n, 0f32);
                tensor
                    .par_chunks_mut(slot)
                    .zip(batch.par_iter())
                    .for_each_init(Resizer::new, |resizer, (dst, &(_, _, i))| {
                        rec::fill(resizer, &crops[i].pixels, bucket, dst)
                    });
            },
            |&(bucket, batch, run_n), tensor| {
                infer(
                    rec,
                    Stage::Recognize,
                    tensor,
                    (batch.len(), run_n),
                    [3, h, bucket as usize],
                    &mut model_time.rec,
                    recording,
                )
            },
            |&(_, batch, _), output| -> Vec<(LineResult, f64)> {
                (0..batch.len())
                    .into_par_iter()
                    .map(|k| {
                        let t = Instant::now();
                        let r = output.item(k).and_then(|out| decode_line(dict, out));
                        (r, ms(t))
                    })
                    .collect()
            },
        );
        let mut texts: Vec<Option<Decoded>> = vec![None; crops.len()];
        for (&(_, batch, _), d) in batches.iter().zip(done) {
            let share = (d.fill_ms + d.run_ms) / batch.len() as f64;
            for (&(_, _, i), (r, decode_ms)) in batch.iter().zip(d.result) {
                timings[crops[i].image].rec += share + decode_ms;
                match r {
                    Ok(text) => texts[i] = Some(text),
                    Err(e) => {
                        failed[crops[i].image].get_or_insert(e);
                    }
                }
            }
        }
        texts
    }

    /// Recognition only, on already cropped lines. Exposed for benchmarks.
    pub fn recognize_lines(&mut self, lines: &[RgbImage]) -> Vec<Result<(String, f32), OcrError>> {
        let crops = as_crops(lines);
        let mut timings = vec![Timings::default(); lines.len()];
        let mut failed = vec![None; lines.len()];
        let texts = self.rec_timed(&crops, &mut timings, &mut failed);
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
    pub fn classify_lines(&mut self, lines: &[RgbImage]) -> Vec<Result<bool, OcrError>> {
        let mut crops = as_crops(lines);
        let mut timings = vec![Timings::default(); lines.len()];
        let mut failed = vec![None; lines.len()];
        self.classify_timed(&mut crops, &mut timings, &mut failed);
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
}

/// A model run that failed outside any one image: on CUDA a device error, else ONNX Runtime's.
fn device_error(device: Device, message: String) -> EngineError {
    match device {
        Device::Cuda(device) => EngineError::Cuda { device, message },
        Device::Cpu => EngineError::Ort(message),
    }
}

/// Boxes found in one image, in reading order, each with its crop and the crop's frame when
/// one was cut ([`crate::crop::cut`]).
type Found = Vec<(Quad, Option<(RgbImage, Quad)>)>;

/// One image's outcome of a detector pass: its boxes (and crops), or, from a first pass that
/// found its text too small, the boxes it found, to be detected again.
#[derive(Clone)]
enum Pass {
    Done(Found),
    Again(Vec<Quad>),
}

/// Each box with its crop (on the calling rayon pool) when `cut`.
fn cut_all(image: &RgbImage, quads: Vec<Quad>, cut: bool, cfg: &DetConfig) -> Found {
    if cut {
        quads
            .into_par_iter()
            .map(|q| (q, crate::crop::cut(image, &q, cfg.crop_padding)))
            .collect()
    } else {
        quads.into_iter().map(|q| (q, None)).collect()
    }
}
/// What [`Engine::warm_up`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WarmUp {
    /// Input shapes made and run once (0 when shapes share one session, as on CPU).
    pub shapes: usize,
    /// Sessions alive afterwards, all models (3 when shapes share one session).
    pub sessions: usize,
    /// Wall time of the warm-up.
    pub seconds: f64,
    /// The slowest single run of the warm-up, session creation included (0 without one).
    pub slowest_run: f64,
}

/// A recogniser batch: its bucket width, its (bucket, width, crop) entries, its padded size.
type RecBatch<'a> = (u32, &'a [(u32, u32, usize)], usize);
/// One line's text and score, or why it failed.
type LineResult = Result<Decoded, OcrError>;

/// CTC-decodes one line's recogniser output: `[T]` indices and scores from the argmax model,
/// or the `[T, C]` softmax.
fn decode_line(dict: &Dictionary, out: ItemOutput<'_>) -> LineResult {
    let bad = |e: ndarray::ShapeError| OcrError::Inference {
        stage: Stage::Recognize,
        message: format!("unexpected recogniser output: {e}"),
    };
    match out.indices {
        Some(indices) => {
            let space = match out.space {
                Some(s) => Some(s.into_dimensionality::<Ix1>().map_err(bad)?),
                None => None,
            };
            Ok(dict.decode_best(
                indices.into_dimensionality::<Ix1>().map_err(bad)?,
                out.main.into_dimensionality::<Ix1>().map_err(bad)?,
                space,
            ))
        }
        None => Ok(dict.decode(out.main.into_dimensionality::<Ix2>().map_err(bad)?)),
    }
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

impl Engine {
    /// Runs one model on a raw `[n, c, h, w]` tensor and returns the seconds `run` took
    /// (model-only timing for benchmarks: no pre- or post-processing).
    pub fn run_model_only(
        &mut self,
        model: Model,
        tensor: &[f32],
        n: usize,
        chw: [usize; 3],
    ) -> Result<f64, String> {
        let sessions = match model {
            Model::Det => &mut self.det,
            Model::Rec => &mut self.rec,
            Model::Cls => self.cls.as_mut().ok_or("the classifier is disabled")?,
        };
        let session = sessions.get(&[n, chw[0], chw[1], chw[2]])?;
        let mut secs = 0.0;
        run_model(session, tensor, n, chw, &mut secs)?;
        Ok(secs)
    }
}

/// Runs a batch of `n.0` items, padded to `n.1` (the tensor holds `n.1` slots, the padding
/// ones zero), falling back to one item at a time if the batch fails.
fn infer(
    sessions: &mut ModelSessions,
    stage: Stage,
    tensor: &[f32],
    (n, run_n): (usize, usize),
    chw: [usize; 3],
    busy: &mut f64,
    recording: &mut Option<Recording>,
) -> BatchOutput {
    if let Some(r) = recording.as_ref().filter(|r| r.replaying) {
        let t = Instant::now();
        let out = r.answer(stage, chw, tensor, (n, run_n));
        *busy += t.elapsed().as_secs_f64();
        return out;
    }
    if let Some(r) = recording.as_mut() {
        let out = infer(sessions, stage, tensor, (n, run_n), chw, busy, &mut None);
        if let BatchOutput::Whole(o) = &out {
            r.store(stage, chw, tensor, n, o);
        }
        return out;
    }
    let mut run = |t: &[f32], n: usize| {
        sessions
            .get(&[n, chw[0], chw[1], chw[2]])
            .and_then(|s| run_model(s, t, n, chw, busy))
    };
    match run(tensor, run_n) {
        Ok(out) => BatchOutput::Whole(out),
        Err(message) if n == 1 => {
            BatchOutput::PerItem(vec![Err(OcrError::Inference { stage, message })])
        }
        Err(message) => {
            tracing::warn!(%stage, batch = n, %message, "batch failed; retrying its items one by one");
            let slot = chw.iter().product::<usize>();
            BatchOutput::PerItem(
                (0..n)
                    .map(|i| {
                        run(&tensor[i * slot..(i + 1) * slot], 1)
                            .map_err(|message| OcrError::Inference { stage, message })
                    })
                    .collect(),
            )
        }
    }
}

/// One ONNX Runtime run on an `[n, c, h, w]` f32 tensor, its outputs copied out (see
/// [`RunOutput`]). The seconds spent inside `run` are added to `busy`.
fn run_model(
    session: &mut Session,
    tensor: &[f32],
    n: usize,
    chw: [usize; 3],
    busy: &mut f64,
) -> Result<RunOutput, String> {
    let view =
        ArrayView4::from_shape((n, chw[0], chw[1], chw[2]), tensor).map_err(|e| e.to_string())?;
    let input = TensorRef::from_array_view(view).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let outputs = session.run(ort::inputs![input]);
    *busy += t.elapsed().as_secs_f64();
    let outputs = outputs.map_err(|e| e.to_string())?;
    let (main, indices) = match (outputs.get("scores"), outputs.get("indices")) {
        (Some(scores), Some(indices)) => (
            scores
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?,
            Some(
                indices
                    .try_extract_array::<i64>()
                    .map_err(|e| e.to_string())?
                    .to_owned(),
            ),
        ),
        _ => (
            outputs[0]
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?,
            None,
        ),
    };
    // Recognisers made before `space` was added have no such output (models/make_argmax.py).
    let space = match (&indices, outputs.get("space")) {
        (Some(_), Some(space)) => Some(
            space
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?
                .to_owned(),
        ),
        _ => None,
    };
    for shape in [main.shape()]
        .into_iter()
        .chain(indices.as_ref().map(|a| a.shape()))
    {
        if shape.first() != Some(&n) {
            return Err(format!(
                "model returned batch {:?} for {n} inputs",
                shape.first()
            ));
        }
    }
    Ok(RunOutput {
        main: main.to_owned(),
        indices,
        space,
    })
}

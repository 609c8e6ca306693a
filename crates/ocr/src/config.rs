//! Engine configuration with PaddleOCR/RapidOCR defaults. Every field has a documented default,
//! so `EngineConfig::default()` is the tested, measured configuration.

pub use crate::cls::ClsConfig;
pub use crate::det::DetConfig;
pub use crate::rec::RecConfig;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider on the given device ordinal. Never silently falls back.
    Cuda(u32),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Device::Cuda)
                    .map_err(|_| format!("bad CUDA device ordinal in {other:?}: expected cuda:N")),
                None => Err(format!(
                    "unknown device {other:?}: expected cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which PP-OCR weights to load (see `models/MANIFEST.tsv`).
///
/// The default, `v4det-v6rec`, won on the real-document evaluation set (crates/ocr/docs/accuracy.md "Why v4det-v6rec is the default"):
/// PP-OCRv6's recogniser reads better than v4's (and keeps more word spaces), while v6's
/// detector lost on low-resolution receipt photos and costs 5× v4's on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ModelSet {
    /// PP-OCRv4 mobile det/rec + v2.0 cls, from rapidocr_onnxruntime 1.4.4.
    #[serde(rename = "v4")]
    V4,
    /// PP-OCRv6 small det/rec + v2.0 cls, from rapidocr 3.10.0.
    #[serde(rename = "v6")]
    V6,
    /// PP-OCRv4 mobile det + v2.0 cls with the PP-OCRv6 small recogniser (the default).
    #[default]
    #[serde(rename = "v4det-v6rec")]
    V4DetV6Rec,
}

impl FromStr for ModelSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v4" => Ok(ModelSet::V4),
            "v6" => Ok(ModelSet::V6),
            "v4det-v6rec" => Ok(ModelSet::V4DetV6Rec),
            o => Err(format!(
                "unknown model set {o:?}: expected v4det-v6rec (the default), v4 or v6"
            )),
        }
    }
}

impl std::fmt::Display for ModelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelSet::V4 => "v4",
            ModelSet::V6 => "v6",
            ModelSet::V4DetV6Rec => "v4det-v6rec",
        })
    }
}

impl ModelSet {
    /// The folder under the models directory that holds `model` (`det`, `cls` or `rec`).
    pub fn dir_name(self, model: &str) -> &'static str {
        match (self, model) {
            (ModelSet::V4, _) => "v4",
            (ModelSet::V6, _) => "v6",
            (ModelSet::V4DetV6Rec, "rec") => "v6",
            (ModelSet::V4DetV6Rec, _) => "v4",
        }
    }

    /// A version string recorded with every indexed document.
    pub fn version(self) -> &'static str {
        match self {
            ModelSet::V4 => "PP-OCRv4-mobile",
            ModelSet::V6 => "PP-OCRv6-small",
            ModelSet::V4DetV6Rec => "PP-OCRv4-mobile-det+PP-OCRv6-small-rec",
        }
    }
}

/// Everything the engine needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Folder holding `v4/` and `v6/` (as installed by `models/fetch.sh`). Default `models`.
    pub models_dir: PathBuf,
    /// Model set. Default v4det-v6rec (chosen by measurement, crates/ocr/docs/accuracy.md).
    pub model_set: ModelSet,
    /// `cpu`, `cuda` or `cuda:N`. Default cpu.
    pub device: Device,
    /// ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime pick (all cores).
    pub intra_threads: usize,
    /// Threads of the engine's host pool, which runs the CPU stages (resize and normalise,
    /// box extraction, crops, CTC decoding) data-parallel across images and lines; 0 means
    /// one per core. On a GPU host these stages are what the device waits for.
    pub host_threads: usize,
    /// Overlap each model run with the host work of the neighbouring batches (fill the next
    /// batch's tensor, post-process the previous batch's output) instead of running the three
    /// one after another. Default true; false exists for measurements.
    pub overlap: bool,
    /// Load `<name>.fp16.onnx` variants (made by `models/make_fp16.py`) instead of fp32.
    /// Takes precedence over `fused`.
    pub fp16: bool,
    /// Load the fused fp32 graphs, `<name>.fused.onnx` (made by `models/make_fused.py`): the
    /// same networks with the exporter's chains of element-wise nodes (learnable affine
    /// blocks, hardswish) folded into the convolutions or fused into single nodes. Outputs
    /// equal the originals' up to float rounding (2e-6 measured; the fixtures read identically,
    /// tests/parity.rs). On CPU, PP-OCRv4 reads pages about twice as fast at one thread
    /// (crates/ocr/docs/models.md "Fused graphs"). Default true; false loads the downloaded graphs as they are.
    pub fused: bool,
    /// Runners per model (`--device-streams`): each its own set of sessions (on CUDA its own
    /// stream), so that up to this many runs of each model are in flight at once, from as many
    /// concurrent calls. Default 1.
    pub streams: usize,
    /// On CUDA, the device memory all sessions together may take (`--device-memory-limit`):
    /// the shared arena's limit ([`EngineConfig::shared_arena`]), or with an arena per session
    /// shared out evenly as each one's limit (ONNX Runtime's `gpu_mem_limit`). `None`: no limit
    /// (the arena grows by what it is asked for). Default none: the figures to set it from come
    /// from `tests/bench/gpu.sh`'s memory samples.
    pub device_memory_limit: Option<u64>,
    /// One memory arena per device for every session of the process (`--separate-arenas`
    /// turns it off), instead of ONNX Runtime's default of an arena per session. An arena keeps
    /// the most it ever held; with a session per input shape (CUDA: dozens a runner) each
    /// arena would keep its own peak and cuDNN workspace, and a limit split evenly between
    /// them is less than one detector batch needs. The shared arena is registered with ONNX
    /// Runtime's environment (`CreateAndRegisterAllocatorV2`; on CPU
    /// `CreateAndRegisterAllocator`) and the sessions take it
    /// (`session.use_env_allocators`); the whole `device_memory_limit` is its limit. When
    /// ONNX Runtime refuses it (a build without the API), the engine warns and falls back to
    /// an arena per session (`crate::onnx::runtime::shared_arena`). Default true.
    pub shared_arena: bool,
    /// Load the uint8-input variants of the fused or fp16 graphs, `<graph>.u8.onnx` (made by
    /// `models/make_u8.py`): the normalisation runs inside the graph, and each run takes 4 bytes
    /// a pixel (B, G, R and a padding mask, NHWC) instead of 12, a third of the host-to-device
    /// copy. The models see the same values (tests/parity.rs checks identical readings).
    /// Default false: on CPU there is nothing to copy, and the packing costs host time.
    pub u8_input: bool,
    /// Run each fixed-shape session through an IoBinding (`crate::onnx::binding`): the batch is
    /// copied into a buffer of CUDA-pinned host memory made once per session, and the outputs
    /// come back into pinned memory. Only with a session per shape (CUDA, or
    /// `session_per_shape`). Default false: not yet run on a GPU.
    pub io_binding: bool,
    /// Images with more decoded pixels than this are refused. Default 50 000 000.
    pub max_pixels: u64,
    /// Pages read of a multi-page TIFF at most; a file with more is refused whole
    /// ([`crate::DecodeError::TooManyPages`]). Default 50.
    pub max_pages: u32,
    /// Path of libonnxruntime.so; when unset, `ORT_DYLIB_PATH`, then
    /// `<models_dir>/lib/libonnxruntime.so`.
    pub ort_library: Option<PathBuf>,
    /// One ONNX Runtime session per input shape (batch size included), batch sizes padded to
    /// 1, ⌈B/4⌉ or B (see [`crate::Engine::warm_up`]). `None` picks by device: on CUDA yes, on CPU no. Why: ONNX Runtime's CUDA
    /// Conv (cuDNN 9 frontend) rebuilds its execution plans whenever the input shape differs
    /// from the previous run's; measured on an H200, det at batch 1 over 40 page shapes took
    /// 81 ms a call against 4.8 ms at a fixed shape. A session per shape keeps each plan.
    pub session_per_shape: Option<bool>,
    /// Sessions kept per model when `session_per_shape` is on (least recently used ones are
    /// dropped beyond this). Default 48.
    pub max_sessions_per_model: usize,
    pub det: DetConfig,
    pub cls: ClsConfig,
    pub rec: RecConfig,
    /// Test-only fault injection (the worker's hidden `--test-engine-fault`): makes the engine
    /// fail on purpose, so that the worker's handling of a lost engine or device can be tested
    /// without a broken GPU. Never set in production. Default none.
    #[serde(skip)]
    pub fault: Option<FaultPlan>,
}

/// A fault injected into the engine on purpose (see [`EngineConfig::fault`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultPlan {
    /// After `after_images` images, every call fails (every image with an inference error, and
    /// the health probe too) for `seconds`, then the engine works again. `seconds` = infinity
    /// never recovers.
    Fail { after_images: usize, seconds: f64 },
    /// After `after_images` images, every detector run fails as out of device memory (down to
    /// one image alone) for `seconds`, while the health probe's tiny recogniser run still
    /// fits: a device short of memory for pages, not broken.
    OutOfMemory { after_images: usize, seconds: f64 },
    /// After `after_images` images, the engine's threads exit, as if the process lost its device
    /// for good.
    Exit { after_images: usize },
    /// A call with an image of this size does what `on` says: a poison image, as a bug in the
    /// engine or ONNX Runtime would make one.
    Image {
        width: u32,
        height: u32,
        on: ImageFault,
    },
}

/// What a poison image of [`FaultPlan::Image`] does to the call it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFault {
    /// The engine panics.
    Panic,
    /// The process aborts (as a segfault inside ONNX Runtime would end it).
    Abort,
    /// The call never returns (a stuck device call).
    Hang,
}

impl FromStr for FaultPlan {
    type Err = String;
    /// `fail:AFTER:SECONDS` or `oom:AFTER:SECONDS` (SECONDS may be `inf`), `exit:AFTER`, or
    /// `panic:WxH`, `abort:WxH`, `hang:WxH` (a call with an image of that size).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("bad fault plan {s:?}: expected fail|oom:AFTER_IMAGES:SECONDS, exit:AFTER_IMAGES, or panic|abort|hang:WIDTHxHEIGHT")
        };
        let parts: Vec<&str> = s.split(':').collect();
        let size = |wh: &str| -> Result<(u32, u32), String> {
            let (w, h) = wh.split_once('x').ok_or_else(bad)?;
            Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
        };
        let image = |on: ImageFault, wh: &str| {
            size(wh).map(|(width, height)| FaultPlan::Image { width, height, on })
        };
        match parts.as_slice() {
            ["panic", wh] => image(ImageFault::Panic, wh),
            ["abort", wh] => image(ImageFault::Abort, wh),
            ["hang", wh] => image(ImageFault::Hang, wh),
            ["fail", after, secs] => Ok(FaultPlan::Fail {
                after_images: after.parse().map_err(|_| bad())?,
                seconds: secs.parse().map_err(|_| bad())?,
            }),
            ["oom", after, secs] => Ok(FaultPlan::OutOfMemory {
                after_images: after.parse().map_err(|_| bad())?,
                seconds: secs.parse().map_err(|_| bad())?,
            }),
            ["exit", after] => Ok(FaultPlan::Exit {
                after_images: after.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            model_set: ModelSet::default(),
            device: Device::Cpu,
            intra_threads: 0,
            host_threads: 0,
            overlap: true,
            fp16: false,
            fused: true,
            streams: 1,
            device_memory_limit: None,
            shared_arena: true,
            u8_input: false,
            io_binding: false,
            max_pixels: crate::decode::DEFAULT_MAX_PIXELS,
            max_pages: crate::decode::DEFAULT_MAX_PAGES,
            ort_library: None,
            session_per_shape: None,
            max_sessions_per_model: 48,
            det: DetConfig::default(),
            cls: ClsConfig::default(),
            rec: RecConfig::default(),
            fault: None,
        }
    }
}

impl EngineConfig {
    /// Which graphs are loaded: `fp16` (takes precedence), `fused`, or `""` for the
    /// downloaded ones; the infix of the model files' names.
    pub fn graph_variant(&self) -> &'static str {
        match (self.fp16, self.fused) {
            (true, _) => "fp16",
            (false, true) => "fused",
            (false, false) => "",
        }
    }

    /// Path of one model file of the configured set (`det`, `cls` or `rec`).
    pub fn model_path(&self, name: &str) -> PathBuf {
        let variant = match self.graph_variant() {
            "" => String::new(),
            v => format!(".{v}"),
        };
        let argmax = if name == "rec" && self.rec.argmax_in_model {
            ".argmax"
        } else {
            ""
        };
        let u8 = if self.u8_input { ".u8" } else { "" };
        let file = format!("{name}{variant}{argmax}{u8}.onnx");
        self.models_dir
            .join(self.model_set.dir_name(name))
            .join(file)
    }

    /// The ONNX Runtime library to load.
    pub fn ort_library_path(&self) -> PathBuf {
        if let Some(p) = &self.ort_library {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
            return PathBuf::from(p);
        }
        self.models_dir.join("lib").join("libonnxruntime.so")
    }

    /// Checks invariants the pipeline relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.det.limit_side_len < 32 {
            return Err("det.limit_side_len must be at least 32".into());
        }
        if self.det.pad_multiple < 32 || !self.det.pad_multiple.is_multiple_of(32) {
            return Err("det.pad_multiple must be a positive multiple of 32".into());
        }
        if let Some(c) = &self.det.canvases {
            if c.iter()
                .any(|&[w, h]| w == 0 || h == 0 || w % 32 != 0 || h % 32 != 0)
            {
                return Err("det.canvases must be [width, height] pairs of multiples of 32".into());
            }
        }
        if !(0.0..=1.0).contains(&self.det.crop_padding) {
            return Err(
                "det.crop_padding must be between 0 and 1 (a fraction of the box height)".into(),
            );
        }
        if !(self.det.small_text_px >= 0.0 && self.det.small_text_px.is_finite()) {
            return Err("det.small_text_px must be 0 (off) or a positive number of pixels".into());
        }
        if self.det.small_text_px > 0.0 && self.det.small_text_limit < 32 {
            return Err("det.small_text_limit must be at least 32".into());
        }
        if self.u8_input && (self.graph_variant().is_empty() || !self.rec.argmax_in_model) {
            return Err(
                "u8_input needs the fused or fp16 graphs and the recogniser's argmax \
                        (models/make_u8.py makes only those)"
                    .into(),
            );
        }
        if self.io_binding && !self.per_shape_sessions() {
            return Err(
                "io_binding needs a session per input shape (CUDA, or session_per_shape)".into(),
            );
        }
        if self.max_sessions_per_model == 0 {
            return Err("max_sessions_per_model must be at least 1".into());
        }
        if self.rec.widths.windows(2).any(|w| w[0] >= w[1]) {
            return Err("rec.widths must be an ascending list".into());
        }
        if self.rec.widths.first().is_some_and(|&w| w < 8) {
            return Err("rec.widths must be at least 8 pixels".into());
        }
        for (name, n) in [
            ("det.batch_size", self.det.batch_size),
            ("cls.batch_size", self.cls.batch_size),
        ] {
            if n == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The recogniser batch size in effect (resolving 0 by device).
    pub fn rec_batch_size(&self) -> usize {
        match (self.rec.batch_size, self.device) {
            (0, Device::Cpu) => 8,
            (0, Device::Cuda(_)) => 32,
            (n, _) => n,
        }
    }

    /// Whether each input shape gets its own session (see [`EngineConfig::session_per_shape`]).
    pub fn per_shape_sessions(&self) -> bool {
        self.session_per_shape
            .unwrap_or(matches!(self.device, Device::Cuda(_)))
    }

    /// Recogniser width buckets in effect (see [`RecConfig::widths`]).
    pub fn rec_widths(&self) -> Vec<u32> {
        match (self.rec.widths.is_empty(), self.device) {
            (false, _) => self.rec.widths.clone(),
            (true, Device::Cpu) => {
                let (from, to, step) = RecConfig::CPU_WIDTHS;
                (from..=to).step_by(step as usize).collect()
            }
            (true, Device::Cuda(_)) => RecConfig::CUDA_WIDTHS.to_vec(),
        }
    }

    /// Detector canvases in effect (see [`DetConfig::canvases`]).
    pub fn det_canvases(&self) -> Vec<[u32; 2]> {
        match (&self.det.canvases, self.device) {
            (Some(c), _) => c.clone(),
            (None, Device::Cpu) => Vec::new(),
            (None, Device::Cuda(_)) => DetConfig::cuda_canvases(self.det.limit_side_len),
        }
    }

    /// Sessions the engine makes at most on CUDA: every input shape of every model (see
    /// [`crate::Engine::warm_up`]), times the runners per model.
    pub fn max_sessions(&self) -> usize {
        let (det, cls, rec) = self.sessions_per_runner();
        (det + cls + rec) * self.streams.max(1)
    }

    /// Sessions of one runner of each model (det, cls, rec) with a session per input shape.
    fn sessions_per_runner(&self) -> (usize, usize, usize) {
        let ladder = |b: usize| crate::model::batch_sizes(b).len();
        let canvases = self.det_canvases().len().max(1);
        let second = usize::from(self.det.small_text_px > 0.0);
        let det = (canvases + second) * ladder(self.det.batch_size);
        let cls = if self.cls.enabled {
            ladder(self.cls.batch_size)
        } else {
            0
        };
        let rec = self.rec_widths().len() * ladder(self.rec_batch_size());
        (det, cls, rec)
    }

    /// About what the weights take when every session holds its own copy, as ONNX Runtime
    /// gives each session (with a session per input shape, [`EngineConfig::max_sessions`]):
    /// each model file's size times its sessions, over the runners. Sharing them would take
    /// initializers made once in device memory and handed to every session
    /// (`AddInitializer`; a host copy is copied again into each session): not built. A model
    /// file that cannot be read counts 0.
    pub fn weight_copies_bytes(&self) -> u64 {
        let (det, cls, rec) = self.sessions_per_runner();
        let size = |name: &str| {
            std::fs::metadata(self.model_path(name))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let cls = if self.cls.enabled {
            cls as u64 * size("cls")
        } else {
            0
        };
        (det as u64 * size("det") + cls + rec as u64 * size("rec")) * self.streams.max(1) as u64
    }

    /// The sessions the engine makes when every input shape has its own (CUDA), one line for
    /// the start-up log: per model, its shapes and batch sizes; the runners; the total; each
    /// arena's limit.
    pub fn session_plan(&self) -> String {
        let ladder = crate::model::batch_sizes;
        let det_sizes = ladder(self.det.batch_size);
        let cls_sizes = if self.cls.enabled {
            ladder(self.cls.batch_size)
        } else {
            Vec::new()
        };
        let rec_sizes = ladder(self.rec_batch_size());
        let canvases = self.det_canvases();
        let second = self.det.small_text_px > 0.0;
        let widths = self.rec_widths();
        let (det, cls, rec) = self.sessions_per_runner();
        let streams = self.streams.max(1);
        let total = (det + cls + rec) * streams;
        debug_assert_eq!(total, self.max_sessions());
        let arena = match (self.shared_arena, self.shared_arena_limit()) {
            (true, Some(l)) => format!("one shared arena of at most {} MiB", l >> 20),
            (true, None) => "one shared arena without a limit".to_string(),
            (false, _) => match self.session_memory_limit() {
                Some(l) => format!("an arena per session of at most {} MiB each", l >> 20),
                None => "an arena per session without a limit".to_string(),
            },
        };
        format!(
            "det {} canvas(es){} x batch {:?} = {det}; cls batch {:?} = {cls}; rec {} width(s) x batch {:?} = {rec}; {} per runner x {streams} runner(s) = {total} sessions; weights copied into each session: {} MiB in all; {arena}",
            canvases.len(),
            if second { " + the small-text canvas" } else { "" },
            det_sizes,
            cls_sizes,
            widths.len(),
            rec_sizes,
            det + cls + rec,
            self.weight_copies_bytes() >> 20,
        )
    }

    /// The shared arena's limit: [`EngineConfig::device_memory_limit`] on CUDA; none on CPU
    /// (ONNX Runtime's CPU arenas had none before the arena was shared, and the pod's memory
    /// limit is the bound there).
    pub fn shared_arena_limit(&self) -> Option<u64> {
        match self.device {
            Device::Cuda(_) => self.device_memory_limit,
            Device::Cpu => None,
        }
    }

    /// Each session's own arena limit from [`EngineConfig::device_memory_limit`], shared out
    /// evenly; `None` with the shared arena (the limit is the shared arena's, see
    /// [`EngineConfig::shared_arena`]) or without a limit.
    pub fn session_memory_limit(&self) -> Option<usize> {
        if self.shared_arena {
            return None;
        }
        self.device_memory_limit
            .map(|l| (l / self.max_sessions().max(1) as u64) as usize)
    }

    /// The shapes the CUDA path gives its tensors, on any device: the detector's canvases, the
    /// recogniser's CUDA width buckets and batch size (for simulating the CUDA path's work on
    /// a CPU, see [`crate::Engine::simulate`]).
    pub fn like_cuda(mut self) -> Self {
        self.det.canvases = Some(DetConfig::cuda_canvases(self.det.limit_side_len));
        self.rec.widths = RecConfig::CUDA_WIDTHS.to_vec();
        if self.rec.batch_size == 0 {
            self.rec.batch_size = 32;
        }
        self
    }

    /// Builds a config for a models folder, with defaults elsewhere.
    pub fn with_models_dir(dir: impl AsRef<Path>) -> Self {
        Self {
            models_dir: dir.as_ref().to_path_buf(),
            ..Self::default()
        }
    }
}

/// Runners per model for `--device-streams n`: 0 picks by device, 1 on CPU (where runs share
/// the cores) and 2 on CUDA.
pub fn streams_for(device: Device, n: usize) -> usize {
    match n {
        0 if device == Device::Cpu => 1,
        0 => 2,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_padding_and_the_small_text_pass_are_validated() {
        let ok = EngineConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [-0.1, 1.5, f32::NAN] {
            let mut c = ok.clone();
            c.det.crop_padding = bad;
            assert!(c.validate().is_err(), "crop_padding {bad}");
        }
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            let mut c = ok.clone();
            c.det.small_text_px = bad;
            assert!(c.validate().is_err(), "small_text_px {bad}");
        }
        let mut c = ok.clone();
        c.det.small_text_limit = 0;
        assert!(c.validate().is_err());
        c.det.small_text_px = 0.0; // off: the limit is not used
        assert!(c.validate().is_ok());
    }

    #[test]
    fn device_parses() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    /// The plan printed at start names every model's sessions and adds up to
    /// [`EngineConfig::max_sessions`].
    #[test]
    fn the_session_plan_adds_up() {
        let mut cfg = EngineConfig::default().like_cuda();
        cfg.streams = 2;
        cfg.device_memory_limit = Some(20 << 30);
        assert!(
            cfg.session_plan()
                .ends_with("one shared arena without a limit"),
            "on CPU the limit is not applied: {}",
            cfg.session_plan()
        );
        cfg.device = Device::Cuda(0);
        let plan = cfg.session_plan();
        let total = cfg.max_sessions();
        assert!(
            plan.contains(&format!("x 2 runner(s) = {total} sessions")),
            "{plan}"
        );
        assert!(
            plan.ends_with("one shared arena of at most 20480 MiB"),
            "{plan}"
        );
        assert!(plan.starts_with("det "), "{plan}");
        assert_eq!(cfg.session_memory_limit(), None);
        // Each session's copy of its model's weights, over both runners.
        cfg.models_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let size = |name: &str| std::fs::metadata(cfg.model_path(name)).map_or(0, |m| m.len());
        let (det, cls, rec) = cfg.sessions_per_runner();
        assert!(
            size("det") > 0 && size("rec") > 0,
            "models/fetch.sh installed the models"
        );
        assert_eq!(
            cfg.weight_copies_bytes(),
            2 * (det as u64 * size("det") + cls as u64 * size("cls") + rec as u64 * size("rec"))
        );
        println!("{}", cfg.session_plan());
        assert!(
            cfg.session_plan().contains(&format!(
                "weights copied into each session: {} MiB in all",
                cfg.weight_copies_bytes() >> 20
            )),
            "{}",
            cfg.session_plan()
        );
        cfg.shared_arena = false;
        let each = cfg.session_memory_limit().expect("a limit per session");
        assert_eq!(each, (20usize << 30) / total);
        assert!(
            cfg.session_plan().ends_with(&format!(
                "an arena per session of at most {} MiB each",
                each >> 20
            )),
            "{}",
            cfg.session_plan()
        );
    }

    #[test]
    fn defaults_validate_and_bad_widths_do_not() {
        let mut c = EngineConfig::default();
        assert!(c.validate().is_ok());
        c.rec.widths = vec![320, 320];
        assert!(c.validate().is_err());
    }

    #[test]
    fn fault_plans_parse() {
        assert_eq!(
            "fail:20:8".parse(),
            Ok(FaultPlan::Fail {
                after_images: 20,
                seconds: 8.0
            })
        );
        assert!(matches!(
            "fail:0:inf".parse(),
            Ok(FaultPlan::Fail { after_images: 0, seconds }) if seconds.is_infinite()
        ));
        assert_eq!(
            "oom:6:8".parse(),
            Ok(FaultPlan::OutOfMemory {
                after_images: 6,
                seconds: 8.0
            })
        );
        assert_eq!("exit:5".parse(), Ok(FaultPlan::Exit { after_images: 5 }));
        assert!("boom".parse::<FaultPlan>().is_err());
    }

    #[test]
    fn model_paths() {
        let mut c = EngineConfig::with_models_dir("/m");
        // The default set: v4's detector and classifier, v6's recogniser, fused graphs.
        assert_eq!(c.model_path("det"), PathBuf::from("/m/v4/det.fused.onnx"));
        assert_eq!(c.model_path("cls"), PathBuf::from("/m/v4/cls.fused.onnx"));
        assert_eq!(
            c.model_path("rec"),
            PathBuf::from("/m/v6/rec.fused.argmax.onnx")
        );
        c.fused = false;
        assert_eq!(c.model_path("det"), PathBuf::from("/m/v4/det.onnx"));
        assert_eq!(c.model_path("rec"), PathBuf::from("/m/v6/rec.argmax.onnx"));
        c.model_set = ModelSet::V4;
        assert_eq!(c.model_path("rec"), PathBuf::from("/m/v4/rec.argmax.onnx"));
        c.fused = true;
        for s in ["v4", "v6", "v4det-v6rec"] {
            let set: ModelSet = s.parse().unwrap();
            assert_eq!(set.to_string(), s);
            assert_eq!(serde_json::to_value(set).unwrap(), s);
        }
        c.fp16 = true;
        c.model_set = ModelSet::V6;
        assert_eq!(
            c.model_path("rec"),
            PathBuf::from("/m/v6/rec.fp16.argmax.onnx")
        );
        assert_eq!(c.model_path("cls"), PathBuf::from("/m/v6/cls.fp16.onnx"));
        c.u8_input = true;
        assert_eq!(
            c.model_path("rec"),
            PathBuf::from("/m/v6/rec.fp16.argmax.u8.onnx")
        );
        assert_eq!(c.model_path("det"), PathBuf::from("/m/v6/det.fp16.u8.onnx"));
        assert!(c.validate().is_ok());
        c.rec.argmax_in_model = false;
        assert!(c.validate().is_err(), "no u8 graph without the argmax");
        c.u8_input = false;
        assert_eq!(c.model_path("rec"), PathBuf::from("/m/v6/rec.fp16.onnx"));
        c.io_binding = true;
        assert!(
            c.validate().is_err(),
            "no io binding on the CPU's shared sessions"
        );
        c.session_per_shape = Some(true);
        assert!(c.validate().is_ok());
    }
}

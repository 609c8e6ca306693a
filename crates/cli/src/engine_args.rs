//! Engine flags shared by every subcommand that runs OCR. The flags that are also worker
//! settings take their defaults from the worker's settings table (`default_of`), the one place
//! they are written; the tuning flags take the engine's own.

use std::path::PathBuf;

use ocrfleet_ocr::streams_for;
use ocrfleet_ocr::{Device, EngineConfig, ModelSet};
use ocrfleet_worker::config::default_of;

#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Inference device: cpu, cuda or cuda:N. CUDA never falls back to CPU silently.
    #[arg(long, env = "OCRFLEET_DEVICE", default_value = default_of("device"))]
    pub device: Device,
    /// Model set: v4det-v6rec (PP-OCRv4 mobile detector, PP-OCRv6 small recogniser; the default,
    /// best on real documents), v4 (PP-OCRv4 mobile) or v6 (PP-OCRv6 small).
    #[arg(long = "models", env = "OCRFLEET_MODELS", default_value = default_of("models"))]
    pub model_set: ModelSet,
    /// Folder with v4/, v6/ and lib/ as installed by models/fetch.sh.
    #[arg(long, env = "OCRFLEET_MODELS_DIR", default_value = default_of("models-dir"))]
    pub models_dir: PathBuf,
    /// Runners per model, each with its own sessions (on CUDA its own stream): up to this many
    /// runs of each model in flight, from as many concurrent calls. 0 picks by device: 1 on
    /// CPU, 2 on CUDA.
    #[arg(long, env = "OCRFLEET_DEVICE_STREAMS", default_value = default_of("device-streams"))]
    pub device_streams: usize,
    /// On CUDA, the device memory all sessions together may take (bytes), shared out as each
    /// session's arena limit.
    #[arg(long, env = "OCRFLEET_DEVICE_MEMORY_LIMIT")]
    pub device_memory_limit: Option<u64>,
    /// Load the uint8-input variants of the fused or fp16 graphs made by models/make_u8.py (4
    /// bytes a pixel to the device instead of 12; same readings).
    #[arg(long, env = "OCRFLEET_U8_INPUT")]
    pub u8_input: bool,
    /// On CUDA, run each fixed-shape session through an IoBinding with pinned host buffers.
    #[arg(long, env = "OCRFLEET_IO_BINDING")]
    pub io_binding: bool,
    /// ONNX Runtime intra-op threads per model (0 = all cores).
    #[arg(long, env = "OCRFLEET_THREADS", default_value = default_of("threads"))]
    pub threads: usize,
    /// Threads of the engine's host pool for its CPU stages (0 = all cores).
    #[arg(long, env = "OCRFLEET_HOST_THREADS", default_value = default_of("host-threads"))]
    pub host_threads: usize,
    /// Use the fp16 model variants made by models/make_fp16.py.
    #[arg(long, env = "OCRFLEET_FP16")]
    pub fp16: bool,
    /// Load the fused fp32 graphs made by models/make_fused.py (same networks, element-wise
    /// chains folded into the convolutions); false loads the downloaded graphs as they are.
    #[arg(long, env = "OCRFLEET_FUSED_GRAPHS", default_value = default_of("fused-graphs"), action = clap::ArgAction::Set)]
    pub fused_graphs: bool,
    /// Detector input limit: the longer side is scaled down to at most this many pixels.
    #[arg(long, env = "OCRFLEET_DET_LIMIT", default_value = default_of("det-limit"))]
    pub det_limit: u32,
    /// Scale images whose long side is shorter than this up to it for detection (0 = never).
    #[arg(long, env = "OCRFLEET_DET_UPSCALE_TO", default_value = default_of("det-upscale-to"))]
    pub det_upscale_to: u32,
    /// Put back the spaces between Latin words that the recogniser dropped, from its CTC
    /// alignment (true or false).
    #[arg(long, env = "OCRFLEET_WORD_SPACES", default_value = default_of("word-spaces"), action = clap::ArgAction::Set)]
    pub word_spaces: bool,
    /// Pages read of a multi-page TIFF at most; a file with more is refused whole.
    #[arg(long, env = "OCRFLEET_MAX_PAGES", default_value = default_of("max-pages"))]
    pub max_pages: u32,
    /// Recogniser width buckets (pixels at height 48, ascending); empty picks by device.
    #[arg(long, value_delimiter = ',')]
    pub rec_widths: Vec<u32>,
    /// Tuning (tests/eval/run.py): a detected box is kept when the mean text probability
    /// inside it reaches this.
    #[arg(long, default_value_t = EngineConfig::default().det.box_thresh)]
    pub det_box_thresh: f32,
    /// Tuning: how far a detected box is grown (distance = area × ratio / perimeter).
    #[arg(long, default_value_t = EngineConfig::default().det.unclip_ratio)]
    pub det_unclip_ratio: f32,
    /// Tuning: the recogniser's crop is the box grown by this fraction of its shorter side at
    /// every edge (0 = the box itself).
    #[arg(long, default_value_t = EngineConfig::default().det.crop_padding)]
    pub crop_padding: f32,
    /// Tuning: a scaled-down image whose boxes' median height is below this many detector
    /// pixels is detected again at up to 2880 px (0 = never).
    #[arg(long, default_value_t = EngineConfig::default().det.small_text_px)]
    pub det_small_text_px: f32,
    /// Tuning: lines whose recognition score is below this are dropped.
    #[arg(long, default_value_t = EngineConfig::default().rec.drop_score)]
    pub rec_drop_score: f32,
    /// Tuning: the classifier turns a crop 180° when it says so with at least this confidence.
    #[arg(long, default_value_t = EngineConfig::default().cls.thresh)]
    pub cls_thresh: f32,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        let mut cfg = EngineConfig {
            models_dir: self.models_dir.clone(),
            model_set: self.model_set,
            device: self.device,
            intra_threads: self.threads,
            host_threads: self.host_threads,
            fp16: self.fp16,
            fused: self.fused_graphs,
            ..EngineConfig::default()
        };
        cfg.det.limit_side_len = self.det_limit;
        cfg.rec.spaces.enabled = self.word_spaces;
        cfg.det.upscale_to = self.det_upscale_to;
        cfg.det.box_thresh = self.det_box_thresh;
        cfg.det.unclip_ratio = self.det_unclip_ratio;
        cfg.det.crop_padding = self.crop_padding;
        cfg.det.small_text_px = self.det_small_text_px;
        cfg.rec.drop_score = self.rec_drop_score;
        cfg.cls.thresh = self.cls_thresh;
        cfg.max_pages = self.max_pages.max(1);
        cfg.streams = streams_for(self.device, self.device_streams);
        cfg.device_memory_limit = self.device_memory_limit;
        cfg.u8_input = self.u8_input;
        cfg.io_binding = self.io_binding;
        if !self.rec_widths.is_empty() {
            cfg.rec.widths = self.rec_widths.clone();
        }
        cfg
    }
}

//! Engine flags shared by every subcommand that runs OCR.

use std::path::PathBuf;

use ocrfleet_ocr::{Device, EngineConfig, ModelSet};

#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Inference device: cpu, cuda or cuda:N. CUDA never falls back to CPU silently.
    #[arg(long, env = "OCRFLEET_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Model set: v4det-v6rec (PP-OCRv4 mobile detector, PP-OCRv6 small recogniser; the default,
    /// best on real documents), v4 (PP-OCRv4 mobile) or v6 (PP-OCRv6 small).
    #[arg(
        long = "models",
        env = "OCRFLEET_MODELS",
        default_value = "v4det-v6rec"
    )]
    pub model_set: ModelSet,
    /// Folder with v4/, v6/ and lib/ as installed by models/fetch.sh.
    #[arg(long, env = "OCRFLEET_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// ONNX Runtime intra-op threads per model (0 = all cores).
    #[arg(long, env = "OCRFLEET_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Threads of the engine's host pool for its CPU stages (0 = all cores).
    #[arg(long, env = "OCRFLEET_HOST_THREADS", default_value_t = 0)]
    pub host_threads: usize,
    /// Use the fp16 model variants made by models/make_fp16.py.
    #[arg(long, env = "OCRFLEET_FP16")]
    pub fp16: bool,
    /// Detector input limit: the longer side is scaled down to at most this many pixels.
    #[arg(long, env = "OCRFLEET_DET_LIMIT", default_value_t = EngineConfig::default().det.limit_side_len)]
    pub det_limit: u32,
    /// Scale images whose long side is shorter than this up to it for detection (0 = never).
    #[arg(long, env = "OCRFLEET_DET_UPSCALE_TO", default_value_t = EngineConfig::default().det.upscale_to)]
    pub det_upscale_to: u32,
    /// Put back the spaces between Latin words that the recogniser dropped, from its CTC
    /// alignment (true or false).
    #[arg(long, env = "OCRFLEET_WORD_SPACES", default_value_t = true, action = clap::ArgAction::Set)]
    pub word_spaces: bool,
    /// Recogniser width buckets (pixels at height 48, ascending); empty picks by device.
    #[arg(long, value_delimiter = ',')]
    pub rec_widths: Vec<u32>,
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
            ..EngineConfig::default()
        };
        cfg.det.limit_side_len = self.det_limit;
        cfg.rec.spaces.enabled = self.word_spaces;
        cfg.det.upscale_to = self.det_upscale_to;
        if !self.rec_widths.is_empty() {
            cfg.rec.widths = self.rec_widths.clone();
        }
        cfg
    }
}

//! Engine flags shared by every subcommand that runs OCR: the worker settings table's engine
//! section (declared there once, with its environment variables and defaults, and mapped to the
//! engine's configuration there once), and the tuning knobs that are not worker settings.

use ocrfleet_ocr::EngineConfig;
use ocrfleet_worker::config;

#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub settings: config::EngineArgs,
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
        let mut cfg = self
            .settings
            .clone()
            .settle()
            .expect("the table's defaults parse (config tests: every_default_parses)")
            .engine_config();
        cfg.det.box_thresh = self.det_box_thresh;
        cfg.det.unclip_ratio = self.det_unclip_ratio;
        cfg.det.crop_padding = self.crop_padding;
        cfg.det.small_text_px = self.det_small_text_px;
        cfg.rec.drop_score = self.rec_drop_score;
        cfg.cls.thresh = self.cls_thresh;
        if !self.rec_widths.is_empty() {
            cfg.rec.widths = self.rec_widths.clone();
        }
        cfg
    }
}

//! The 180° text-line classifier (PaddleOCR's `ch_ppocr_mobile_v2.0_cls`): input 3×48×192,
//! output `[N, 2]` probabilities for 0° and 180°.

pub(crate) mod stage;

use fast_image_resize::Resizer;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::preprocess::{resize_to_height, write_planes_zero_padded};

/// 180° classifier settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClsConfig {
    /// Run the classifier at all. Default true.
    pub enabled: bool,
    /// A crop is turned 180° only when the classifier says so with at least this confidence.
    /// Default 0.99 (PaddleOCR's is 0.9): at 0.9 the classifier turned upright lines of real
    /// forms and receipts, and the evaluation set's CER fell from 0.204 to 0.194 at 0.98 and
    /// 0.191 at 0.99; the upside-down fixture is still turned.
    pub thresh: f32,
    /// Crops per classifier run (all 3×48×192). Default 64.
    pub batch_size: usize,
}

impl Default for ClsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            thresh: 0.99,
            batch_size: 64,
        }
    }
}

/// Classifier input height.
pub const HEIGHT: u32 = 48;
/// Classifier input width.
pub const WIDTH: u32 = 192;

/// Writes one `[3, 48, 192]` slot of a batch tensor whole (the crop, then zeros).
pub fn fill(resizer: &mut Resizer, crop: &RgbImage, slot: &mut [f32]) {
    let img = resize_to_height(resizer, crop, HEIGHT, WIDTH);
    write_planes_zero_padded(&img, slot, WIDTH as usize, HEIGHT as usize);
}

/// Whether a crop with classifier output `probs` (`[p0, p180]`) should be turned 180°.
pub fn should_rotate(probs: &[f32], thresh: f32) -> bool {
    probs.len() >= 2 && probs[1] > probs[0] && probs[1] > thresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_needs_confident_180() {
        assert!(should_rotate(&[0.05, 0.95], 0.9));
        assert!(!should_rotate(&[0.15, 0.85], 0.9));
        assert!(!should_rotate(&[0.95, 0.05], 0.9));
    }

    #[test]
    fn fill_keeps_aspect_and_pads() {
        let crop = RgbImage::from_pixel(96, 48, image::Rgb([255, 255, 255]));
        let mut slot = vec![0f32; 3 * 48 * 192];
        fill(&mut Resizer::new(), &crop, &mut slot);
        assert_eq!(slot[95], 1.0); // inside the 96-wide image: white → 1
        assert_eq!(slot[96], 0.0); // padding
    }
}

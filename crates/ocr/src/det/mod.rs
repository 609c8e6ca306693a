//! Text detection: PaddleOCR's DB detector.
//!
//! Pre-processing follows PaddleOCR's `DetResizeForTest` with `limit_type=max`: the long side
//! is scaled down to at most `limit_side_len`, and an image whose long side is below
//! `upscale_to` (default 736; 0 = PaddleOCR's never) is scaled up to it; then each side is
//! rounded to a multiple of 32. Images whose detector input has the same (padded) shape share a batch;
//! the padded shape is a function of the image alone, so batching never changes a result.

pub mod postprocess;
pub(crate) mod stage;

use postprocess::Quad;
use serde::{Deserialize, Serialize};

/// The detector geometry of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetShape {
    /// Original image size.
    pub src_w: u32,
    pub src_h: u32,
    /// Size the image is resized to (multiples of 32).
    pub resized_w: u32,
    pub resized_h: u32,
    /// Tensor size after padding to `pad_multiple` (the batching key).
    pub tensor_w: u32,
    pub tensor_h: u32,
}

impl DetShape {
    /// Plans the detector input for an image of `w`×`h`; `canvases` are the fixed `[width,
    /// height]` shapes the tensor is padded up to (empty: none, see [`DetConfig::canvases`]).
    pub fn plan(w: u32, h: u32, cfg: &DetConfig, canvases: &[[u32; 2]]) -> DetShape {
        let limit = f64::from(cfg.limit_side_len);
        let long = f64::from(w.max(h));
        let up = f64::from(cfg.upscale_to.min(cfg.limit_side_len));
        let ratio = if long > limit {
            limit / long
        } else if long < up {
            up / long
        } else {
            1.0
        };
        // Python's int() truncates, then round() is round-half-to-even.
        let round32 = |v: f64| -> u32 {
            let v = (v * ratio).trunc();
            (((v / 32.0).round_ties_even() as u32) * 32).max(32)
        };
        let resized_w = round32(f64::from(w));
        let resized_h = round32(f64::from(h));
        let m = cfg.pad_multiple.max(32);
        let (own_w, own_h) = (resized_w.div_ceil(m) * m, resized_h.div_ceil(m) * m);
        // The smallest canvas that holds the tensor (ties: the narrower), else its own shape.
        let [tensor_w, tensor_h] = canvases
            .iter()
            .copied()
            .filter(|&[cw, ch]| cw >= own_w && ch >= own_h)
            .min_by_key(|&[cw, ch]| (u64::from(cw) * u64::from(ch), cw))
            .unwrap_or([own_w, own_h]);
        DetShape {
            src_w: w,
            src_h: h,
            resized_w,
            resized_h,
            tensor_w,
            tensor_h,
        }
    }

    /// Batching key.
    pub fn tensor_key(&self) -> (u32, u32) {
        (self.tensor_h, self.tensor_w)
    }
}

/// Whether an image detected at `shape` should be detected again at
/// [`DetConfig::small_text_limit`]: the median height of its boxes (the shorter side of each,
/// in detector pixels) is below [`DetConfig::small_text_px`], and the second pass would see
/// the image at least 1.5× larger. `quads` are in image pixels.
pub fn wants_second_pass(quads: &[Quad], shape: &DetShape, cfg: &DetConfig) -> bool {
    if cfg.small_text_px <= 0.0 || quads.is_empty() {
        return false;
    }
    let src_long = shape.src_w.max(shape.src_h) as f32;
    let first_long = src_long.min(cfg.limit_side_len as f32);
    let second_long = src_long.min(cfg.small_text_limit as f32);
    if second_long < 1.5 * first_long {
        return false;
    }
    let d = postprocess::dist;
    let mut heights: Vec<f32> = quads
        .iter()
        .map(|q| {
            let across = (d(q[0], q[1]) + d(q[2], q[3])) / 2.0;
            let down = (d(q[1], q[2]) + d(q[3], q[0])) / 2.0;
            across.min(down)
        })
        .collect();
    let mid = heights.len() / 2;
    let (_, median, _) = heights.select_nth_unstable_by(mid, f32::total_cmp);
    *median * first_long / src_long < cfg.small_text_px
}

/// Text detection (DB) settings. Defaults are PaddleOCR's with `limit_type=max`, except where
/// a field says otherwise (upscaling, unclip ratio, crop padding, the small-text pass).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetConfig {
    /// The long side is resized down to at most this many pixels. Default 960.
    pub limit_side_len: u32,
    /// Images whose long side is shorter than this are scaled up to it (at most to
    /// `limit_side_len`) for detection; the crops are still cut from the original. 0 = never
    /// (PaddleOCR's `limit_type=max`). Default 736: small phone photos of receipts lost lines
    /// at their own size (held-out receipts' CER ci 0.282 → 0.269 at unclip 1.3,
    /// crates/ocr/docs/accuracy.md "Held-out receipts and Chinese forms"); larger images are unaffected.
    pub upscale_to: u32,
    /// Each side of the detector input is padded up to a multiple of this (≥ 32). Padding depends
    /// only on the image itself, so results never depend on batch-mates. 32 = no padding beyond
    /// PaddleOCR's own rounding; larger values give fewer distinct shapes (fewer cuDNN searches on
    /// GPU) at some extra compute. Default 32.
    pub pad_multiple: u32,
    /// Probability above which a pixel is text. Default 0.3.
    pub thresh: f32,
    /// Minimum mean probability inside a box. Default 0.6.
    pub box_thresh: f32,
    /// Box expansion ratio (distance = area × ratio / perimeter). Default 1.0 (PaddleOCR's is
    /// 1.5): tighter crops read better on all three real sets (case-insensitive CER at 1.3
    /// without upscaling, then 1.1 and 1.0 with upscaling to 736: evaluation set 0.172 / 0.160 /
    /// 0.154, held-out receipts and Chinese forms 0.233 / 0.210 / 0.208, held-out forms 0.165 /
    /// 0.163 / 0.159; 0.9 split the first two). The price: on FUNSD's loosely drawn entity boxes detection F1
    /// falls (held-out forms 0.702 → 0.676), while on line-level labels it rises (0.775 →
    /// 0.788). crates/ocr/docs/accuracy.md "Thresholds".
    pub unclip_ratio: f32,
    /// The recogniser reads each line from its box grown by this fraction of the box's shorter
    /// side at every edge ([`crate::crop::padded`]); the box reported stays the detector's.
    /// Default 0.1: with tight boxes (unclip 1.0) it keeps clean rendered text whole (31
    /// fixtures: 14 characters wrong without it, 1 with it; unclip 1.3 without it: 2) and
    /// reads real documents better still (evaluation set CER ci 0.154 → 0.151, held-out
    /// receipts and Chinese forms 0.208 → 0.207, held-out forms 0.1594 → 0.1591). 0 = the
    /// box itself, as PaddleOCR.
    pub crop_padding: f32,
    /// An image scaled down for the detector whose boxes' median height came out below this
    /// many detector pixels is detected again at up to [`DetConfig::small_text_limit`] (a
    /// large scan of small print, whose text the 960 px pass barely sees), when that pass
    /// would be at least 1.5× larger. 0 = never. Default 10 (PaddleOCR: never): none of the
    /// 160 real evaluation and held-out images triggers it (their medians start at 9.6 px,
    /// all on images that a second pass would not enlarge 1.5×); on 3×3 mosaics of held-out
    /// forms (2,300×3,000 px) CER ci went from 0.876 to 0.164
    /// (crates/ocr/docs/accuracy.md "A second detector pass for small print").
    pub small_text_px: f32,
    /// The detector limit of that second pass (never above the image's own size). Default 2880.
    pub small_text_limit: u32,
    /// Boxes whose short side (in detector pixels) is below this are dropped. Default 3.
    pub min_size: f32,
    /// At most this many contours per image are considered. Default 1000.
    pub max_candidates: usize,
    /// Images per detector run (same-shape images only). Default 8.
    pub batch_size: usize,
    /// Fixed detector input shapes, `[width, height]`: an image's tensor (after resizing and
    /// `pad_multiple`) is padded with its background up to the smallest-area canvas that holds
    /// it, so images of nearby sizes share a shape and a batch. An image no canvas holds keeps
    /// its own shape. `None` picks by device: none on CPU (padding costs CPU time and a new
    /// shape costs nothing there), [`DetConfig::cuda_canvases`] on CUDA, where every input shape
    /// needs its own session and warm-up (see [`EngineConfig::session_per_shape`]).
    pub canvases: Option<Vec<[u32; 2]>>,
}

impl DetConfig {
    /// The settings of the second, higher-resolution pass for small text: limit
    /// `small_text_limit`, no upscaling, one image per run, and where the first pass uses
    /// canvases (CUDA) the single square canvas of that limit, so the second pass adds one
    /// input shape (one session, warmed up with the rest) rather than one per size.
    pub fn second_pass(&self) -> DetConfig {
        let side = self.small_text_limit.div_ceil(32) * 32;
        DetConfig {
            limit_side_len: self.small_text_limit,
            upscale_to: 0,
            batch_size: 1,
            canvases: match &self.canvases {
                Some(c) if !c.is_empty() => Some(vec![[side, side]]),
                other => other.clone(),
            },
            ..self.clone()
        }
    }

    /// The CUDA canvases for a detector limit `L`: two tiers, `L` and `L/2`, each square, 3:4
    /// and 9:16 in both orientations (sides rounded up to 32), so 10 shapes. Since the long
    /// side never exceeds `L`, every image fits the `L`×`L` canvas. For `L` = 960:
    /// 960², 960×736, 960×544, 480², 480×384, 480×288 and the transposes. Measured share of
    /// tensor pixels that are padding (`tests/bench/canvas_waste.py`): 60 real scans and photos
    /// 5.3 % over 6 shapes, 40 rendered pages 10.4 % over 3, 31 single-line fixtures 60 % over 7
    /// (small images, cheap at any padding); the earlier per-side buckets (up to 100 shapes)
    /// padded 4.5 %, 5.0 % and 13.4 % over 8, 6 and 18 shapes.
    pub fn cuda_canvases(limit: u32) -> Vec<[u32; 2]> {
        let up32 = |v: f64| ((v / 32.0).ceil() as u32 * 32).max(32);
        let mut out = Vec::new();
        for tier in [f64::from(limit), f64::from(limit) / 2.0] {
            let long = up32(tier);
            out.push([long, long]);
            for ratio in [0.75, 0.5625] {
                let short = up32(tier * ratio);
                out.push([long, short]);
                out.push([short, long]);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Default for DetConfig {
    fn default() -> Self {
        Self {
            limit_side_len: 960,
            upscale_to: 736,
            pad_multiple: 32,
            thresh: 0.3,
            box_thresh: 0.6,
            unclip_ratio: 1.0,
            crop_padding: 0.1,
            small_text_px: 10.0,
            small_text_limit: 2880,
            min_size: 3.0,
            max_candidates: 1000,
            batch_size: 8,
            canvases: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_side_is_limited_and_rounded_to_32() {
        let cfg = DetConfig {
            upscale_to: 0,
            ..DetConfig::default()
        };
        let s = DetShape::plan(1920, 1080, &cfg, &[]);
        assert_eq!((s.resized_w, s.resized_h), (960, 544)); // 540 → 544
        let s = DetShape::plan(400, 300, &cfg, &[]); // never upscaled
        assert_eq!((s.resized_w, s.resized_h), (384, 288)); // 12.5→12 (half to even), 9.375→9
        let s = DetShape::plan(10, 5, &cfg, &[]);
        assert_eq!((s.resized_w, s.resized_h), (32, 32));
        assert_eq!(s.tensor_key(), (32, 32));
    }

    /// `n` upright boxes `h` image pixels high.
    fn lines(n: usize, h: f32) -> Vec<Quad> {
        (0..n)
            .map(|i| {
                let y = 50.0 * i as f32;
                [[10.0, y], [400.0, y], [400.0, y + h], [10.0, y + h]]
            })
            .collect()
    }

    #[test]
    fn a_second_pass_is_wanted_for_small_text_on_a_large_image() {
        let cfg = DetConfig::default();
        assert_eq!((cfg.small_text_px, cfg.small_text_limit), (10.0, 2880));
        // A 2,880 px scan seen at 960: boxes 27 px high are 9 px at the detector's scale.
        let big = DetShape::plan(2880, 2000, &cfg, &[]);
        assert!(wants_second_pass(&lines(5, 27.0), &big, &cfg));
        // 33 px high are 11 px: read well enough already.
        assert!(!wants_second_pass(&lines(5, 33.0), &big, &cfg));
        // The median decides, not the smallest box.
        let mut mixed = lines(3, 24.0);
        mixed.extend(lines(4, 36.0));
        assert!(!wants_second_pass(&mixed, &big, &cfg));
        mixed.extend(lines(2, 24.0));
        assert!(wants_second_pass(&mixed, &big, &cfg));
        // Nothing found: nothing to measure.
        assert!(!wants_second_pass(&[], &big, &cfg));
        // A 1,000 px page is seen at 960 already: a second pass would gain 4 %, not 1.5×.
        let page = DetShape::plan(1000, 760, &cfg, &[]);
        assert!(!wants_second_pass(&lines(5, 5.0), &page, &cfg));
        // 1,440 px is exactly 1.5× the limit; 1,400 px is not.
        let s = DetShape::plan(1440, 1000, &cfg, &[]);
        assert!(wants_second_pass(&lines(5, 9.0), &s, &cfg)); // 6 px at 960
        let s = DetShape::plan(1400, 1000, &cfg, &[]);
        assert!(!wants_second_pass(&lines(5, 9.0), &s, &cfg));
        // Vertical text: the boxes' shorter side is their width.
        let tall: Vec<Quad> = (0..5)
            .map(|i| {
                let x = 50.0 * i as f32;
                [[x, 10.0], [x + 27.0, 10.0], [x + 27.0, 600.0], [x, 600.0]]
            })
            .collect();
        assert!(wants_second_pass(&tall, &big, &cfg));
        // Switched off.
        let off = DetConfig {
            small_text_px: 0.0,
            ..DetConfig::default()
        };
        assert!(!wants_second_pass(&lines(5, 3.0), &big, &off));
    }

    #[test]
    fn the_second_pass_sees_the_image_at_up_to_its_limit() {
        let cfg = DetConfig::default().second_pass();
        assert_eq!(
            (cfg.limit_side_len, cfg.upscale_to, cfg.batch_size),
            (2880, 0, 1)
        );
        let s = DetShape::plan(2313, 3000, &cfg, &[]);
        assert_eq!((s.resized_w, s.resized_h), (2208, 2880)); // 2220.5 → 2208
        let s = DetShape::plan(1600, 1200, &cfg, &[]); // its own size
        assert_eq!((s.resized_w, s.resized_h), (1600, 1216)); // 37.5 → 38 (half to even)
                                                              // On CUDA the second pass pads every image to one square canvas: one more shape.
        let cuda = DetConfig {
            canvases: Some(DetConfig::cuda_canvases(960)),
            ..DetConfig::default()
        };
        let second = cuda.second_pass();
        assert_eq!(second.canvases, Some(vec![[2880, 2880]]));
        let c = second.canvases.clone().unwrap();
        let s = DetShape::plan(2313, 3000, &second, &c);
        assert_eq!(s.tensor_key(), (2880, 2880));
        assert_eq!(DetConfig::default().second_pass().canvases, None);
    }

    #[test]
    fn small_images_are_scaled_up_to_upscale_to_and_no_further() {
        let cfg = DetConfig::default();
        assert_eq!(cfg.upscale_to, 736);
        let s = DetShape::plan(400, 300, &cfg, &[]); // 736 × 552 → 544
        assert_eq!((s.resized_w, s.resized_h), (736, 544));
        let s = DetShape::plan(338, 450, &cfg, &[]); // a small receipt photo: 552.7 × 736
        assert_eq!((s.resized_w, s.resized_h), (544, 736));
        // Between upscale_to and the limit: as is.
        let s = DetShape::plan(800, 600, &cfg, &[]);
        assert_eq!((s.resized_w, s.resized_h), (800, 608));
        let s = DetShape::plan(1920, 1080, &cfg, &[]); // large: limited as before
        assert_eq!((s.resized_w, s.resized_h), (960, 544));
        // upscale_to above the limit is held to the limit.
        let cfg = DetConfig {
            upscale_to: 2000,
            ..DetConfig::default()
        };
        let s = DetShape::plan(400, 300, &cfg, &[]);
        assert_eq!((s.resized_w, s.resized_h), (960, 704)); // 720 / 32 = 22.5 → 22 (half to even)
    }

    #[test]
    fn padding_depends_only_on_the_image() {
        let cfg = DetConfig {
            pad_multiple: 128,
            ..DetConfig::default()
        };
        let s = DetShape::plan(1920, 1080, &cfg, &[]);
        assert_eq!((s.tensor_w, s.tensor_h), (1024, 640));
        assert_eq!((s.resized_w, s.resized_h), (960, 544));
    }

    #[test]
    fn canvases_hold_the_image_in_the_smallest_shape() {
        let cfg = DetConfig {
            upscale_to: 0,
            ..DetConfig::default()
        };
        let c = DetConfig::cuda_canvases(960);
        assert_eq!(
            c,
            vec![
                [288, 480],
                [384, 480],
                [480, 288],
                [480, 384],
                [480, 480],
                [544, 960],
                [736, 960],
                [960, 544],
                [960, 736],
                [960, 960]
            ]
        );
        let s = DetShape::plan(1000, 754, &cfg, &c); // a FUNSD-like page, landscape
        assert_eq!((s.resized_w, s.resized_h), (960, 736));
        assert_eq!(s.tensor_key(), (736, 960));
        let s = DetShape::plan(1240, 1000, &cfg, &c); // 774 → 768 → 960×960
        assert_eq!((s.resized_w, s.resized_h), (960, 768));
        assert_eq!(s.tensor_key(), (960, 960));
        let s = DetShape::plan(1700, 2200, &cfg, &c); // a portrait letter scan
        assert_eq!((s.resized_w, s.resized_h), (736, 960));
        assert_eq!(s.tensor_key(), (960, 736));
        let s = DetShape::plan(300, 40, &cfg, &c); // a single line
        assert_eq!(s.tensor_key(), (480, 288));
        let s = DetShape::plan(600, 500, &cfg, &c); // 608×512 fits no 480 canvas
        assert_eq!(s.tensor_key(), (544, 960));
        // Every image fits the limit×limit canvas, so there is never a shape outside the set.
        for (w, h) in [(1, 1), (959, 961), (5000, 37), (37, 5000), (961, 959)] {
            let s = DetShape::plan(w, h, &cfg, &c);
            assert!(c.contains(&[s.tensor_w, s.tensor_h]), "{w}×{h}: {s:?}");
            assert!(s.tensor_w >= s.resized_w && s.tensor_h >= s.resized_h);
        }
        let s = DetShape::plan(1200, 1200, &cfg, &[[64, 64]]); // no canvas holds it
        assert_eq!(s.tensor_key(), (960, 960));
    }
}

//! Text detection: PaddleOCR's DB detector.
//!
//! Pre-processing follows PaddleOCR's `DetResizeForTest` with `limit_type=max`: the long side
//! is scaled down to at most `limit_side_len`, and an image whose long side is below
//! `upscale_to` (default 736; 0 = PaddleOCR's never) is scaled up to it; then each side is
//! rounded to a multiple of 32. Images whose detector input has the same (padded) shape share a batch;
//! the padded shape is a function of the image alone, so batching never changes a result.

pub mod postprocess;
pub(crate) mod stage;

use crate::config::DetConfig;
use postprocess::Quad;

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

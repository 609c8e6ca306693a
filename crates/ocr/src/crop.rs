//! Cutting each detected quadrilateral out of the image as an upright rectangle
//! (PaddleOCR's `get_rotate_crop_image`): a perspective warp (bicubic, edge-replicating) to
//! the box's own width and height, then a 90° turn for crops at least 1.5× taller than wide,
//! which are vertical text lines.
//!
//! The warp samples what imageproc's bicubic `warp_into` with `Border::Replicate` samples (the
//! same projection, taps and Catmull-Rom kernel), as one weighted sum per pixel (see
//! [`warp_bicubic_replicate`] for how and why that differs from imageproc, and what it
//! measured). An upright box with corners on whole pixels (most boxes on real pages) is copied
//! instead: the warp's own result there, but for its float rounding (see [`copy_shifted`]).
//!
//! Measured with `ocrfleet bench ocr --replay --images REAL --models v4 --host-threads 1
//! --no-overlap` (the recorded device's flag then; `--simulate` now) on the 45 real pages of
//! the GPU runs (45 boxes a page), A/B in one session: crops took 25 to 30 ms a page with
//! imageproc's scheme for every box, 15.8 to 16.7 ms with the copy, and 9.5 to 10.2 ms with the
//! copy and this warp (deploy/docs/performance.md, "The host ceiling").

use image::RgbImage;
use imageproc::geometric_transformations::Projection;

use crate::det::postprocess::Quad;

/// The crop's width and height: the longer of each pair of opposite sides.
/// Boxes found in one image, in reading order, each with its crop and the crop's frame when
/// one was cut ([`cut`]).
pub(crate) type Found = Vec<(Quad, Option<(RgbImage, Quad)>)>;

/// A line's crop on its way through the classifier and the recogniser.
pub(crate) struct Crop {
    /// Which image of the call it belongs to.
    pub(crate) image: usize,
    pub(crate) quad: Quad,
    /// The crop's corners in the image, in the order of its pixels ([`frame`]), turned with
    /// it by the classifier.
    pub(crate) frame: Quad,
    pub(crate) pixels: RgbImage,
}

fn size(quad: &Quad) -> (u32, u32) {
    let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let w = d(quad[0], quad[1]).max(d(quad[2], quad[3])) as u32;
    let h = d(quad[0], quad[3]).max(d(quad[1], quad[2])) as u32;
    (w, h)
}

/// Whether [`crop_quad`] turns the crop of a `w`×`h` box (a vertical text line).
fn turns(w: u32, h: u32) -> bool {
    h as f32 / w as f32 >= 1.5
}

/// The corners of `quad`'s crop in image pixels, in the order of the crop's own pixels
/// (top-left, top-right, bottom-right, bottom-left): the quad itself, or for a crop that
/// [`crop_quad`] turns a quarter counter-clockwise, its corners one place on.
pub fn frame(quad: &Quad) -> Quad {
    let (w, h) = size(quad);
    if w > 0 && turns(w, h) {
        [quad[1], quad[2], quad[3], quad[0]]
    } else {
        *quad
    }
}

/// `quad` grown along its own sides by `fraction` of its shorter side at each of its four
/// edges, corners rounded to whole pixels (an upright box stays upright and on whole pixels,
/// so it is still copied). The grown part may reach past the image, where the crop repeats
/// the border. 0 returns `quad` as it is.
///
/// The recogniser reads crops cut this way ([`crate::det::DetConfig::crop_padding`]): the
/// detector's box, tight enough to keep neighbouring lines out, plus a margin that keeps the
/// first and last letters and the tops of CJK strokes whole.
pub fn padded(quad: &Quad, fraction: f32) -> Quad {
    if fraction == 0.0 {
        return *quad;
    }
    let (w, h) = size(quad);
    let margin = fraction * w.min(h) as f32;
    let unit = |a: [f32; 2], b: [f32; 2]| {
        let (x, y) = (b[0] - a[0], b[1] - a[1]);
        let n = (x * x + y * y).sqrt().max(1e-6);
        [x / n, y / n]
    };
    // Along the top edge and down the left edge; every corner moves outwards along both.
    let (u, v) = (unit(quad[0], quad[1]), unit(quad[0], quad[3]));
    let out = |p: [f32; 2], su: f32, sv: f32| {
        [
            (p[0] + margin * (su * u[0] + sv * v[0])).round(),
            (p[1] + margin * (su * u[1] + sv * v[1])).round(),
        ]
    };
    [
        out(quad[0], -1.0, -1.0),
        out(quad[1], 1.0, -1.0),
        out(quad[2], 1.0, 1.0),
        out(quad[3], -1.0, 1.0),
    ]
}

/// What the recogniser reads of one detected box: the crop of `padded(quad, padding)` with its
/// corners held inside the image (as the detector holds its own boxes, so an edge line gets no
/// smear of repeated border pixels), and that crop's [`frame`], where word boxes are placed.
/// `None` for a degenerate box. Padding 0 cuts `quad` itself.
pub fn cut(img: &RgbImage, quad: &Quad, padding: f32) -> Option<(RgbImage, Quad)> {
    let grown = if padding == 0.0 {
        *quad
    } else {
        let (xmax, ymax) = (img.width() as f32 - 1.0, img.height() as f32 - 1.0);
        padded(quad, padding)
            .map(|[x, y]| [x.clamp(0.0, xmax.max(0.0)), y.clamp(0.0, ymax.max(0.0))])
    };
    Some((crop_quad(img, &grown)?, frame(&grown)))
}

/// Crops `quad` (TL, TR, BR, BL) out of `img`. Returns `None` for a degenerate box.
pub fn crop_quad(img: &RgbImage, quad: &Quad) -> Option<RgbImage> {
    let (w, h) = size(quad);
    if w == 0 || h == 0 {
        return None;
    }
    let mut out = RgbImage::new(w, h);
    match whole_pixel_shift(quad, w, h) {
        Some((x0, y0)) => copy_shifted(img, x0, y0, &mut out),
        None => warp_bicubic_replicate(img, projection(quad, w, h)?, &mut out),
    }
    if turns(w, h) {
        // np.rot90: a quarter turn counter-clockwise.
        out = image::imageops::rotate270(&out);
    }
    Some(out)
}

/// The projection that maps `quad`'s corners onto a `w`×`h` rectangle's.
fn projection(quad: &Quad, w: u32, h: u32) -> Option<Projection> {
    let to = [
        (0.0, 0.0),
        (w as f32, 0.0),
        (w as f32, h as f32),
        (0.0, h as f32),
    ];
    Projection::from_control_points(quad.map(|p| (p[0], p[1])), to)
}

/// Where the box's top-left corner lies when it is an upright `w`×`h` rectangle with corners
/// on whole pixels: the warp is then a shift by whole pixels, a plain copy. On real pages most
/// boxes are (the detector rounds its corners to pixels, and horizontal text gives upright
/// boxes; 1,253 of 2,034 on the 45 real pages of the GPU runs).
fn whole_pixel_shift(quad: &Quad, w: u32, h: u32) -> Option<(i64, i64)> {
    let [tl, tr, br, bl] = *quad;
    let (x0, y0) = (tl[0], tl[1]);
    let (x1, y1) = (x0 + w as f32, y0 + h as f32);
    let whole = x0.fract() == 0.0 && y0.fract() == 0.0;
    (whole && tr == [x1, y0] && br == [x1, y1] && bl == [x0, y1]).then_some((x0 as i64, y0 as i64))
}

/// Copies the `out`-sized rectangle at (`x0`, `y0`) of `img`, replicating the border where it
/// reaches outside: what the bicubic warp computes for a whole-pixel shift, where every tap
/// but the centre one has weight 0 (OpenCV's `warpPerspective`, which PaddleOCR uses, copies
/// there exactly; imageproc's warp can land a rounding error off the pixel and truncate one
/// value down by 1).
fn copy_shifted(img: &RgbImage, x0: i64, y0: i64, out: &mut RgbImage) {
    let (sw, sh) = (i64::from(img.width()), i64::from(img.height()));
    let stride = sw as usize * 3;
    let src = img.as_raw();
    let ow = out.width() as usize;
    let inside = x0 >= 0 && x0 + ow as i64 <= sw;
    for (y, row) in out.as_mut().chunks_exact_mut(ow * 3).enumerate() {
        let base = (y0 + y as i64).clamp(0, sh - 1) as usize * stride;
        if inside {
            let start = base + x0 as usize * 3;
            row.copy_from_slice(&src[start..start + ow * 3]);
        } else {
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let sx = (x0 + x as i64).clamp(0, sw - 1) as usize * 3;
                px.copy_from_slice(&src[base + sx..base + sx + 3]);
            }
        }
    }
}

/// The four Catmull-Rom weights (cubic convolution with a = −0.5, imageproc's bicubic kernel)
/// of the taps at −1, 0, 1 and 2 for a sample at fraction `t` ∈ [0, 1).
#[inline(always)]
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.5;
    let (u, v) = (t + 1.0, 1.0 - t);
    let w0 = ((A * u - 5.0 * A) * u + 8.0 * A) * u - 4.0 * A;
    let w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    let w2 = ((A + 2.0) * v - (A + 3.0)) * v * v + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// Sub-pixel positions per pixel that the warp tells apart: each sample's position is rounded
/// to 1/32 of a pixel, as OpenCV's `warpPerspective` (which PaddleOCR uses) rounds it
/// (`INTER_BITS` = 5, [`FRACTION_BITS`]), so that the 4×4 weights come from a table instead of being computed
/// for every pixel.
const FRACTION_BITS: u32 = 5;
const FRACTIONS: usize = 1 << FRACTION_BITS;
/// The weights' fixed-point scale: 14 bits, so that a weight (at most 1.0 × 1.0, a little
/// more with the kernel's overshoot: never 2.0) fits an `i16` and 16 taps of 255 times the
/// largest weights sum far inside an `i32`.
const WEIGHT_BITS: u32 = 14;

/// The 4×4 tap weights, row-major, for each pair of rounded fractions (`fy · 32 + fx`):
/// products of [`cubic_weights`], in fixed point, each summing to exactly 1 << 14 (the
/// rounding error goes to the largest weight, as OpenCV does), so that a flat colour stays
/// exactly that colour.
fn weight_table() -> &'static [[i16; 16]] {
    static TABLE: std::sync::OnceLock<Vec<[i16; 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let one = 1i32 << WEIGHT_BITS;
        let mut table = Vec::with_capacity(FRACTIONS * FRACTIONS);
        for fy in 0..FRACTIONS {
            let wy = cubic_weights(fy as f32 / FRACTIONS as f32);
            for fx in 0..FRACTIONS {
                let wx = cubic_weights(fx as f32 / FRACTIONS as f32);
                let mut w = [0i16; 16];
                let mut sum = 0i32;
                for (r, wr) in wy.iter().enumerate() {
                    for (k, wk) in wx.iter().enumerate() {
                        let v = (wr * wk * one as f32).round() as i32;
                        w[r * 4 + k] = v as i16;
                        sum += v;
                    }
                }
                let largest = (0..16).max_by_key(|&i| w[i]).unwrap_or(5);
                w[largest] += (one - sum) as i16;
                table.push(w);
            }
        }
        table
    })
}

/// Fills `out` with `img` seen through `projection` (source → output), bicubic, with the
/// border replicated: imageproc's `warp_into(.., Interpolation::Bicubic, Border::Replicate, ..)`
/// for RGB8, with the same projection, taps and kernel, but each output pixel computed as one
/// weighted sum of its 4×4 taps, rounded once, with its position rounded to 1/32 of a pixel
/// and the weights taken from a fixed-point table ([`weight_table`]), as OpenCV's
/// `warpPerspective` does. imageproc blends each tap row, truncates it to u8, then blends the
/// rows and truncates again, which costs more (15 cubic blends of four samples, each followed
/// by a clamp and a float-integer round trip) and clips the kernel's overshoot at sharp edges.
///
/// Measured on the 781 boxes that are not upright among the 2,034 that the v4 detector finds
/// on the 45 real pages of the GPU runs, one thread, best of 7: 12.3 ms a page with
/// imageproc's scheme (specialised to RGB8, its 12 row blends run lane-wise), 7.9 to 9.1 ms
/// with one weighted sum in f32 and exact positions; 67 % of the values differ from
/// imageproc's, by 1 (rounding instead of truncating) almost everywhere and by up to 19 at
/// edges where imageproc clips. Text: 9 of 3,180 lines changed on the 60 evaluation images,
/// CER (case-insensitive) 0.1716 → 0.1715 there and 0.1654 → 0.1648 on the held-out set.
/// The table and integer sums: see deploy/docs/performance.md ("Host CPU per page").
fn warp_bicubic_replicate(img: &RgbImage, projection: Projection, out: &mut RgbImage) {
    let inverse = projection.invert();
    let table = weight_table();
    let (sw, sh) = (i64::from(img.width()), i64::from(img.height()));
    let src = img.as_raw();
    let stride = sw as usize * 3;
    let ow = out.width() as usize;
    let half = 1i32 << (WEIGHT_BITS - 1);
    let scale = FRACTIONS as f32;
    for (y, row) in out.as_mut().chunks_exact_mut(ow * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let (sx, sy) = inverse * (x as f32, y as f32);
            // In 1/32 pixels, rounded; the whole pixel is its floor (an arithmetic shift).
            let (qx, qy) = (round_i64(sx * scale), round_i64(sy * scale));
            let (fx, fy) = (qx >> FRACTION_BITS, qy >> FRACTION_BITS);
            let part = FRACTIONS as i64 - 1;
            let w = &table[((qy & part) << FRACTION_BITS | (qx & part)) as usize];
            let (left, top) = (fx - 1, fy - 1);
            let mut acc = [half; 3];
            if left >= 0 && left < sw - 3 && top >= 0 && top < sh - 3 {
                // Every tap inside: four rows of four adjacent pixels, one slice each.
                let at = top as usize * stride + left as usize * 3;
                for r in 0..4 {
                    let taps = &src[at + r * stride..at + r * stride + 12];
                    let wr = &w[r * 4..r * 4 + 4];
                    for k in 0..4 {
                        let wk = i32::from(wr[k]);
                        for c in 0..3 {
                            acc[c] += wk * i32::from(taps[3 * k + c]);
                        }
                    }
                }
            } else {
                let cols = [0, 1, 2, 3].map(|k| (left + k).clamp(0, sw - 1) as usize * 3);
                for r in 0..4 {
                    let base = (top + r as i64).clamp(0, sh - 1) as usize * stride;
                    for (k, &col) in cols.iter().enumerate() {
                        let wk = i32::from(w[r * 4 + k]);
                        for c in 0..3 {
                            acc[c] += wk * i32::from(src[base + col + c]);
                        }
                    }
                }
            }
            for (o, a) in px.iter_mut().zip(acc) {
                *o = (a >> WEIGHT_BITS).clamp(0, 255) as u8;
            }
        }
    }
}

/// `x.round()` as an integer (halves away from zero), without a libm call; `x` is first held
/// to ±3.2e10 (NaN becomes 0), so that a near-singular projection's huge or infinite
/// coordinates cannot overflow the tap arithmetic: every tap that far out replicates the same
/// border pixel anyway.
#[inline(always)]
fn round_i64(x: f32) -> i64 {
    let x = x.clamp(-3.2e10, 3.2e10);
    let t = x as i64;
    let r = x - t as f32;
    t + i64::from(r >= 0.5) - i64::from(r <= -0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_grows_a_box_along_its_own_sides() {
        // An upright 100×20 box: 2 px (0.1 of 20) at every edge, still on whole pixels.
        let q: Quad = [[10.0, 30.0], [110.0, 30.0], [110.0, 50.0], [10.0, 50.0]];
        let p = padded(&q, 0.1);
        assert_eq!(p, [[8.0, 28.0], [112.0, 28.0], [112.0, 52.0], [8.0, 52.0]]);
        assert_eq!(size(&p), (104, 24));
        assert_eq!(padded(&q, 0.0), q);
        // A tall box (vertical text): the margin is a tenth of its width, the shorter side.
        let t: Quad = [[0.0, 0.0], [30.0, 0.0], [30.0, 90.0], [0.0, 90.0]];
        assert_eq!(
            padded(&t, 0.1),
            [[-3.0, -3.0], [33.0, -3.0], [33.0, 93.0], [-3.0, 93.0]]
        );
        // A box tilted by 3-4-5: every corner moves 10 px along each of the box's own sides.
        let r: Quad = [
            [100.0, 100.0],
            [180.0, 160.0],
            [150.0, 200.0],
            [70.0, 140.0],
        ];
        let g = padded(&r, 0.2); // size 100 × 50 → margin 10
        let (u, v) = ([0.8, 0.6], [-0.6, 0.8]);
        for (k, (su, sv)) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
            .into_iter()
            .enumerate()
        {
            for a in 0..2 {
                let want = (r[k][a] + 10.0 * (su * u[a] + sv * v[a])).round();
                assert_eq!(g[k][a], want, "corner {k} axis {a}");
            }
        }
        assert_eq!(size(&g), (120, 70));
    }

    #[test]
    fn a_cut_is_held_inside_the_image_and_its_frame_matches_its_pixels() {
        let img = RgbImage::from_fn(200, 100, |x, y| image::Rgb([x as u8, y as u8, 7]));
        // A line along the top-left corner: its grown box would start at -2.
        let q: Quad = [[0.0, 0.0], [100.0, 0.0], [100.0, 20.0], [0.0, 20.0]];
        assert_eq!(padded(&q, 0.1)[0], [-2.0, -2.0]);
        let (pixels, frame) = cut(&img, &q, 0.1).unwrap();
        assert_eq!(
            frame,
            [[0.0, 0.0], [102.0, 0.0], [102.0, 22.0], [0.0, 22.0]]
        );
        assert_eq!(pixels.dimensions(), (102, 22));
        assert_eq!(
            pixels,
            image::imageops::crop_imm(&img, 0, 0, 102, 22).to_image()
        );
        // Inside the image: the grown box itself; a tall box is turned and its frame starts
        // one corner on.
        let t: Quad = [[150.0, 10.0], [180.0, 10.0], [180.0, 80.0], [150.0, 80.0]];
        let (pixels, frame) = cut(&img, &t, 0.1).unwrap();
        assert_eq!(
            frame,
            [[183.0, 7.0], [183.0, 83.0], [147.0, 83.0], [147.0, 7.0]]
        );
        assert_eq!(pixels.dimensions(), (76, 36));
        // At the far corner the grown box is held to the last pixel.
        let e: Quad = [[150.0, 80.0], [199.0, 80.0], [199.0, 99.0], [150.0, 99.0]];
        let (_, frame) = cut(&img, &e, 0.1).unwrap();
        assert_eq!(frame[2], [199.0, 99.0]);
        // No padding: the box as it is.
        assert_eq!(cut(&img, &q, 0.0).unwrap().1, q);
        let degenerate: Quad = [[5.0, 5.0]; 4];
        assert!(cut(&img, &degenerate, 0.1).is_none());
    }
    use imageproc::geometric_transformations::{warp_into, Border, Interpolation};

    /// Quads that are axis-aligned, rotated, perspective and partly outside a 97×61 image
    /// (where the border is replicated), each warped to 60×24.
    const QUADS: [[[f32; 2]; 4]; 4] = [
        [[10.0, 5.0], [60.0, 5.0], [60.0, 25.0], [10.0, 25.0]],
        [[12.3, 8.7], [70.1, 14.2], [67.9, 33.5], [10.2, 28.0]],
        [[3.5, 2.25], [88.0, 9.0], [80.0, 50.5], [1.0, 41.0]],
        [[-5.0, -3.0], [100.0, 2.0], [99.0, 70.0], [-8.0, 64.0]],
    ];

    /// The general warp of quad `q` to `w`×`h`, with the projection that [`crop_quad`] uses.
    fn warp(img: &RgbImage, q: [[f32; 2]; 4], w: u32, h: u32) -> (RgbImage, Projection) {
        let p = projection(&q, w, h).unwrap();
        let mut out = RgbImage::new(w, h);
        warp_bicubic_replicate(img, p, &mut out);
        (out, p)
    }

    /// Ours and imageproc's warp of `q` to 60×24.
    fn warp_both(img: &RgbImage, q: [[f32; 2]; 4]) -> (RgbImage, RgbImage) {
        let (ours, p) = warp(img, q, 60, 24);
        let mut theirs = RgbImage::new(60, 24);
        warp_into(
            img,
            p,
            Interpolation::Bicubic,
            Border::Replicate,
            &mut theirs,
        );
        (ours, theirs)
    }

    #[test]
    fn the_warp_samples_where_imageproc_does() {
        // A smooth source (no edge where imageproc clips the kernel's overshoot): the two
        // differ only by imageproc's two truncations against one rounding here, so by at most
        // 2, and by less than 1 on average. A tap or fraction off by one pixel would differ by
        // far more (neighbouring pixels differ by up to 6 in every channel).
        let img = RgbImage::from_fn(97, 61, |x, y| {
            let (x, y) = (x as f32, y as f32);
            image::Rgb([
                (128.0 + 90.0 * (x / 9.0).sin() * (y / 13.0).cos()) as u8,
                (40.0 + 1.5 * x + y) as u8,
                (200.0 - 2.0 * y) as u8,
            ])
        });
        for q in QUADS {
            let (ours, theirs) = warp_both(&img, q);
            let diffs: Vec<u8> = ours
                .as_raw()
                .iter()
                .zip(theirs.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
            assert!(diffs.iter().all(|&d| d <= 2), "quad {q:?}");
            assert!(mean < 1.0, "quad {q:?}: mean difference {mean}");
            // Rounding instead of truncating: never below imageproc by more than rounding.
            for (a, b) in ours.as_raw().iter().zip(theirs.as_raw()) {
                assert!(
                    u16::from(*a) + 1 >= u16::from(*b),
                    "quad {q:?}: {a} against {b}"
                );
            }
        }
    }

    #[test]
    fn the_warp_keeps_flat_colour_and_the_cubic_weights_sum_to_one() {
        let img = RgbImage::from_pixel(97, 61, image::Rgb([255, 0, 77]));
        for q in QUADS {
            let (ours, _) = warp_both(&img, q);
            assert!(ours.pixels().all(|p| p.0 == [255, 0, 77]), "quad {q:?}");
        }
        for t in [0.0, 0.25, 0.5, 0.9, 0.999] {
            let w = cubic_weights(t);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
        // Catmull-Rom at the half: (-1, 9, 9, -1) / 16.
        assert_eq!(cubic_weights(0.5), [-0.0625, 0.5625, 0.5625, -0.0625]);
        for x in [
            -2.5f32,
            -1.0,
            -0.6,
            -0.4,
            -0.0,
            0.0,
            0.3,
            0.5,
            7.0,
            7.9,
            1e6 + 0.5,
        ] {
            assert_eq!(round_i64(x), x.round() as i64, "{x}");
        }
        for (x, held) in [(f32::INFINITY, 3.2e10), (-1e30, -3.2e10), (f32::NAN, 0.0)] {
            assert_eq!(round_i64(x), held as i64, "{x}");
        }
        // Every entry of the weight table sums to exactly one in fixed point.
        let table = weight_table();
        assert_eq!(table.len(), FRACTIONS * FRACTIONS);
        for w in table {
            assert_eq!(
                w.iter().map(|&v| i32::from(v)).sum::<i32>(),
                1 << WEIGHT_BITS
            );
        }
        assert_eq!(table[0][5], 1 << WEIGHT_BITS, "a whole pixel is that pixel");
    }

    #[test]
    fn whole_pixel_boxes_are_copied_and_agree_with_the_warp() {
        // Page-sized, so that the warp's projection works with large coordinates.
        let img = RgbImage::from_fn(1100, 1500, |x, y| {
            image::Rgb([
                (x * 7 + y * 3) as u8,
                (x * y) as u8,
                255u32.wrapping_sub(x * 2) as u8,
            ])
        });
        let boxes = [
            (0, 0, 97, 61),
            (10, 5, 50, 20),
            (873, 1205, 211, 33),
            (517, 1432, 583, 67),
            (1099, 1499, 1, 1),
        ];
        let (mut values, mut off) = (0, 0);
        for (x0, y0, w, h) in boxes {
            let q = [
                [x0 as f32, y0 as f32],
                [(x0 + w) as f32, y0 as f32],
                [(x0 + w) as f32, (y0 + h) as f32],
                [x0 as f32, (y0 + h) as f32],
            ];
            assert_eq!(whole_pixel_shift(&q, w, h), Some((x0.into(), y0.into())));
            let copied = crop_quad(&img, &q).unwrap();
            let expected = image::imageops::crop_imm(&img, x0, y0, w, h).to_image();
            assert_eq!(copied, expected, "box at {x0},{y0}");
            // The general warp computes the same pixels, up to its float rounding.
            let (warped, _) = warp(&img, q, w, h);
            for (a, b) in copied.as_raw().iter().zip(warped.as_raw()) {
                assert!(a.abs_diff(*b) <= 1, "box at {x0},{y0}: {a} against {b}");
                values += 1;
                off += usize::from(a != b);
            }
        }
        // Measured: 1 value in 158,826.
        assert!(off * 1000 < values, "{off} of {values} values differ");
        // A box that is not upright, or not on whole pixels, is warped.
        let tilted = [[10.0, 5.0], [60.0, 6.0], [60.0, 26.0], [10.0, 25.0]];
        assert_eq!(whole_pixel_shift(&tilted, 50, 20), None);
        let half = [[10.5, 5.0], [60.5, 5.0], [60.5, 25.0], [10.5, 25.0]];
        assert_eq!(whole_pixel_shift(&half, 50, 20), None);
    }

    #[test]
    fn axis_aligned_crop_copies_pixels() {
        let mut img = RgbImage::from_pixel(50, 40, image::Rgb([255, 255, 255]));
        for x in 10..30 {
            for y in 5..15 {
                img.put_pixel(x, y, image::Rgb([0, 0, 0]));
            }
        }
        let q = [[10.0, 5.0], [30.0, 5.0], [30.0, 15.0], [10.0, 15.0]];
        let c = crop_quad(&img, &q).unwrap();
        assert_eq!(c.dimensions(), (20, 10));
        assert_eq!(c.get_pixel(10, 5).0, [0, 0, 0]);
    }

    #[test]
    fn tall_crops_are_turned() {
        let mut img = RgbImage::from_pixel(50, 80, image::Rgb([9, 9, 9]));
        // A mark at the quad's top-right corner ends up at the turned crop's top-left, where
        // the frame puts the quad's top-right corner.
        img.put_pixel(9, 0, image::Rgb([200, 0, 0]));
        let q = [[0.0, 0.0], [10.0, 0.0], [10.0, 60.0], [0.0, 60.0]];
        let c = crop_quad(&img, &q).unwrap();
        assert_eq!(c.dimensions(), (60, 10));
        assert_eq!(c.get_pixel(0, 0).0, [200, 0, 0]);
        assert_eq!(frame(&q), [q[1], q[2], q[3], q[0]]);
        let wide = [[0.0, 0.0], [60.0, 0.0], [60.0, 10.0], [0.0, 10.0]];
        assert_eq!(frame(&wide), wide);
    }

    #[test]
    fn whole_pixel_boxes_past_the_edge_replicate_the_border() {
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 50])
        });
        // 3 columns left of the image and 2 rows above it; and one past the right and bottom.
        for (x0, y0, w, h) in [(-3i64, -2i64, 20u32, 10u32), (30, 25, 15, 9)] {
            let q = [
                [x0 as f32, y0 as f32],
                [(x0 + i64::from(w)) as f32, y0 as f32],
                [(x0 + i64::from(w)) as f32, (y0 + i64::from(h)) as f32],
                [x0 as f32, (y0 + i64::from(h)) as f32],
            ];
            assert_eq!(whole_pixel_shift(&q, w, h), Some((x0, y0)));
            let copied = crop_quad(&img, &q).unwrap();
            for (x, y, p) in copied.enumerate_pixels() {
                let sx = (x0 + i64::from(x)).clamp(0, 39) as u32;
                let sy = (y0 + i64::from(y)).clamp(0, 29) as u32;
                assert_eq!(
                    p,
                    img.get_pixel(sx, sy),
                    "({x}, {y}) of the box at {x0},{y0}"
                );
            }
            let (warped, _) = warp(&img, q, w, h);
            for (a, b) in copied.as_raw().iter().zip(warped.as_raw()) {
                assert!(a.abs_diff(*b) <= 1, "box at {x0},{y0}: {a} against {b}");
            }
        }
    }

    #[test]
    fn tall_boxes_off_the_pixel_grid_are_warped_then_turned() {
        // Brightness 4·y: after the quarter turn it runs along the crop's x axis. The cubic
        // kernel reproduces a linear ramp, so inside the image every value is 4·x, to rounding.
        let img = RgbImage::from_fn(30, 64, |_, y| image::Rgb([(4 * y) as u8; 3]));
        let q = [[3.5, 0.0], [13.5, 0.0], [13.5, 60.0], [3.5, 60.0]];
        assert_eq!(whole_pixel_shift(&q, 10, 60), None);
        let c = crop_quad(&img, &q).unwrap();
        assert_eq!(c.dimensions(), (60, 10));
        for (x, y, p) in c.enumerate_pixels() {
            if (2..58).contains(&x) {
                let want = 4 * x as i32;
                assert!((i32::from(p.0[0]) - want).abs() <= 1, "({x}, {y}): {p:?}");
            }
        }
    }

    #[test]
    fn degenerate_quad_is_none() {
        let img = RgbImage::new(10, 10);
        let q = [[1.0, 1.0]; 4];
        assert!(crop_quad(&img, &q).is_none());
    }
}

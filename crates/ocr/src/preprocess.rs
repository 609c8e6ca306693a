//! Pixel-to-tensor helpers shared by the three models.
//!
//! All three PP-OCR models take BGR planes normalised as `(x / 255 − 0.5) / 0.5` (RapidOCR's
//! configuration for these exported weights). Resizing uses fixed-kernel bilinear interpolation,
//! which is what OpenCV's `INTER_LINEAR` (used by PaddleOCR and RapidOCR) computes.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// Resizes `img` to exactly `w`×`h` (bilinear, OpenCV-like).
pub fn resize(resizer: &mut Resizer, img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    let mut dst = RgbImage::new(w.max(1), h.max(1));
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear));
    resizer
        .resize(img, &mut dst, &opts)
        .expect("RGB8 to RGB8 resize with non-zero sizes cannot fail");
    dst
}

/// The width a crop takes when scaled to `height` keeping its aspect ratio, capped at `max_w`
/// (PaddleOCR's `resize_norm_img`: `ceil(height · w / h)`).
pub fn width_at_height(w: u32, h: u32, height: u32, max_w: u32) -> u32 {
    let want = (f64::from(height) * f64::from(w) / f64::from(h.max(1))).ceil() as u32;
    want.clamp(1, max_w)
}

/// Scales a crop to `height` (48 for PP-OCR's classifier and recogniser) with its aspect ratio,
/// at most `max_w` wide.
pub fn resize_to_height(
    resizer: &mut Resizer,
    img: &RgbImage,
    height: u32,
    max_w: u32,
) -> RgbImage {
    let w = width_at_height(img.width(), img.height(), height, max_w);
    resize(resizer, img, w, height)
}

/// Writes `img` as normalised BGR planes into `dst`, a `[3, plane_h, plane_w]` region, at its
/// top-left corner. Pixels of `dst` outside the image are left untouched (callers zero them,
/// which is the normalised mid-grey that PaddleOCR pads with).
pub fn write_planes(img: &RgbImage, dst: &mut [f32], plane_w: usize, plane_h: usize) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    debug_assert!(w <= plane_w && h <= plane_h);
    debug_assert_eq!(dst.len(), 3 * plane_w * plane_h);
    let plane = plane_w * plane_h;
    let raw = img.as_raw();
    const SCALE: f32 = 2.0 / 255.0;
    for y in 0..h {
        let row = &raw[y * w * 3..(y + 1) * w * 3];
        let base = y * plane_w;
        // BGR order: plane 0 gets the blue channel.
        for (c_out, c_in) in [(0usize, 2usize), (1, 1), (2, 0)] {
            let out = &mut dst[c_out * plane + base..c_out * plane + base + w];
            for (x, o) in out.iter_mut().enumerate() {
                *o = f32::from(row[x * 3 + c_in]) * SCALE - 1.0;
            }
        }
    }
}

/// Sets the part of a `[3, plane_h, plane_w]` region outside a `w`×`h` image written at its
/// top-left corner ([`write_planes`]) to `values`, one per plane.
pub fn fill_outside(
    dst: &mut [f32],
    (w, h): (usize, usize),
    plane_w: usize,
    plane_h: usize,
    values: [f32; 3],
) {
    let plane = plane_w * plane_h;
    let (w, h) = (w.min(plane_w), h.min(plane_h));
    for (p, v) in dst.chunks_exact_mut(plane).zip(values) {
        if w < plane_w {
            for row in p[..h * plane_w].chunks_exact_mut(plane_w) {
                row[w..].fill(v);
            }
        }
        p[h * plane_w..].fill(v);
    }
}

/// [`write_planes`] of a crop into a model's slot, the rest of the slot zero: the normalised
/// mid-grey that PaddleOCR pads with. Every element of `dst` is written.
pub fn write_planes_zero_padded(img: &RgbImage, dst: &mut [f32], plane_w: usize, plane_h: usize) {
    write_planes(img, dst, plane_w, plane_h);
    let size = (img.width() as usize, img.height() as usize);
    fill_outside(dst, size, plane_w, plane_h, [0.0; 3]);
}

/// Fills the part of a `[3, plane_h, plane_w]` region that lies outside `img` (written at the
/// top-left by [`write_planes`]) with the image's background: the per-channel median of its
/// outermost rows and columns (zero, mid-grey, for an empty image). Used for detector shape
/// buckets (see `DetConfig::buckets`): a mid-grey band next to a white page is an edge the
/// detector reacts to (measured: a 27 px text box grew to 35 px), while a band of the page's
/// own background is not. With [`write_planes`] before it, every element of `dst` is written.
pub fn pad_with_background(img: &RgbImage, dst: &mut [f32], plane_w: usize, plane_h: usize) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w >= plane_w && h >= plane_h {
        return;
    }
    if w == 0 || h == 0 {
        dst.fill(0.0);
        return;
    }
    let mut hist = [[0u32; 256]; 3];
    let mut count = |x: usize, y: usize| {
        let p = img.get_pixel(x as u32, y as u32).0;
        for c in 0..3 {
            hist[c][usize::from(p[c])] += 1;
        }
    };
    for x in 0..w {
        count(x, 0);
        count(x, h - 1);
    }
    for y in 0..h {
        count(0, y);
        count(w - 1, y);
    }
    let median = |h: &[u32; 256]| {
        let half = h.iter().sum::<u32>() / 2;
        let mut acc = 0;
        h.iter()
            .position(|&n| {
                acc += n;
                acc > half
            })
            .unwrap_or(255) as f32
    };
    const SCALE: f32 = 2.0 / 255.0;
    // BGR order, as in write_planes.
    let values = [2, 1, 0].map(|c_in| median(&hist[c_in]) * SCALE - 1.0);
    fill_outside(dst, (w, h), plane_w, plane_h, values);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_are_bgr_normalised_and_padding_untouched() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([0, 0, 255]));
        let mut dst = vec![9.0f32; 3 * 3 * 2];
        write_planes(&img, &mut dst, 3, 2);
        // Blue plane first: pixel 0 is red (blue = 0 → −1), pixel 1 is blue (→ +1).
        assert_eq!(&dst[0..3], &[-1.0, 1.0, 9.0]);
        // Red plane last.
        assert_eq!(&dst[12..15], &[1.0, -1.0, 9.0]);
        // Second row is padding.
        assert_eq!(&dst[3..6], &[9.0, 9.0, 9.0]);
    }

    #[test]
    fn padding_takes_the_border_median() {
        // White page with one dark pixel on its border: the padding is white (+1), the image
        // itself is untouched.
        let mut img = RgbImage::from_pixel(3, 2, image::Rgb([255, 255, 255]));
        img.put_pixel(0, 0, image::Rgb([0, 0, 0]));
        let mut dst = vec![0f32; 3 * 4 * 3];
        write_planes(&img, &mut dst, 4, 3);
        pad_with_background(&img, &mut dst, 4, 3);
        for c in 0..3 {
            let p = &dst[c * 12..(c + 1) * 12];
            assert_eq!(p[0], -1.0, "the dark pixel stays");
            assert_eq!(p[3], 1.0, "right padding is white");
            assert!(
                p[8..12].iter().all(|&v| v == 1.0),
                "bottom padding is white"
            );
        }
    }

    #[test]
    fn a_slot_is_written_whole_whatever_it_held() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([255, 255, 255]));
        for pad in [false, true] {
            let (mut clean, mut dirty) = (vec![0f32; 3 * 5 * 4], vec![f32::NAN; 3 * 5 * 4]);
            for dst in [&mut clean, &mut dirty] {
                if pad {
                    write_planes(&img, dst, 5, 4);
                    pad_with_background(&img, dst, 5, 4);
                } else {
                    write_planes_zero_padded(&img, dst, 5, 4);
                }
            }
            assert_eq!(clean, dirty, "padded with the background: {pad}");
        }
        let mut dirty = vec![f32::NAN; 3 * 5 * 4];
        pad_with_background(&RgbImage::new(0, 0), &mut dirty, 5, 4);
        assert!(
            dirty.iter().all(|&v| v == 0.0),
            "an empty image pads with zeros"
        );
    }

    #[test]
    fn resize_gives_requested_size() {
        let img = RgbImage::from_pixel(100, 40, image::Rgb([10, 20, 30]));
        let mut r = Resizer::new();
        let out = resize(&mut r, &img, 37, 13);
        assert_eq!(out.dimensions(), (37, 13));
        assert_eq!(out.get_pixel(5, 5).0, [10, 20, 30]);
    }
}

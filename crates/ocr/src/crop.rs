//! Cutting each detected quadrilateral out of the image as an upright rectangle
//! (PaddleOCR's `get_rotate_crop_image`): a perspective warp (bicubic, edge-replicating) to
//! the box's own width and height, then a 90° turn for crops at least 1.5× taller than wide,
//! which are vertical text lines.

use image::RgbImage;
use imageproc::geometric_transformations::{warp_into, Border, Interpolation, Projection};

use crate::det::postprocess::Quad;

/// Crops `quad` (TL, TR, BR, BL) out of `img`. Returns `None` for a degenerate box.
pub fn crop_quad(img: &RgbImage, quad: &Quad) -> Option<RgbImage> {
    let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let w = d(quad[0], quad[1]).max(d(quad[2], quad[3])) as u32;
    let h = d(quad[0], quad[3]).max(d(quad[1], quad[2])) as u32;
    if w == 0 || h == 0 {
        return None;
    }
    let from = quad.map(|p| (p[0], p[1]));
    let to = [
        (0.0, 0.0),
        (w as f32, 0.0),
        (w as f32, h as f32),
        (0.0, h as f32),
    ];
    let projection = Projection::from_control_points(from, to)?;
    let mut out = RgbImage::new(w, h);
    warp_into(
        img,
        projection,
        Interpolation::Bicubic,
        Border::Replicate,
        &mut out,
    );
    if h as f32 / w as f32 >= 1.5 {
        // np.rot90: a quarter turn counter-clockwise.
        out = image::imageops::rotate270(&out);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let img = RgbImage::from_pixel(50, 80, image::Rgb([9, 9, 9]));
        let q = [[0.0, 0.0], [10.0, 0.0], [10.0, 60.0], [0.0, 60.0]];
        assert_eq!(crop_quad(&img, &q).unwrap().dimensions(), (60, 10));
    }

    #[test]
    fn degenerate_quad_is_none() {
        let img = RgbImage::new(10, 10);
        let q = [[1.0, 1.0]; 4];
        assert!(crop_quad(&img, &q).is_none());
    }
}

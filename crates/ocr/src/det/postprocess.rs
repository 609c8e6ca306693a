//! DB post-processing: probability map → text boxes in original image coordinates.
//!
//! The algorithm is PaddleOCR's `DBPostProcess` (`score_mode=fast`), built on maintained
//! crates instead of OpenCV and pyclipper:
//! - contours: `imageproc::contours::find_contours` (Suzuki–Abe, as `cv2.findContours`);
//! - minimum-area rectangles: `geo::MinimumRotatedRect` (as `cv2.minAreaRect`);
//! - polygon offsetting ("unclip"): `geo::Buffer` with round joins (as pyclipper `JT_ROUND`);
//! - polygon fill for the box score: `imageproc::drawing::draw_polygon_mut` (as `cv2.fillPoly`).

use geo::algorithm::buffer::{BufferStyle, LineJoin};
use geo::{Area, Buffer, Coord, Euclidean, Length, LineString, MinimumRotatedRect, Polygon};
use image::{GrayImage, Luma};
use imageproc::contours::find_contours;
use imageproc::point::Point;
use ndarray::ArrayView2;

use crate::det::DetConfig;
use crate::det::DetShape;

/// A quadrilateral: top-left, top-right, bottom-right, bottom-left.
pub type Quad = [[f32; 2]; 4];

/// Turns one image's probability map (`[tensor_h, tensor_w]`, padded) into boxes in the
/// original image's coordinates, sorted in reading order.
pub fn boxes_from_map(pred: ArrayView2<'_, f32>, shape: &DetShape, cfg: &DetConfig) -> Vec<Quad> {
    let (h, w) = (shape.resized_h as usize, shape.resized_w as usize);
    // Only the resized image's region; the padding beyond it is not part of the image.
    let pred = pred.slice(ndarray::s![..h, ..w]);
    let mut bitmap = GrayImage::new(w as u32, h as u32);
    for (row, out) in pred.rows().into_iter().zip(bitmap.chunks_exact_mut(w)) {
        for (&p, o) in row.iter().zip(out) {
            *o = if p > cfg.thresh { 255 } else { 0 };
        }
    }
    let contours = find_contours::<i32>(&bitmap);
    let sx = shape.src_w as f64 / w as f64;
    let sy = shape.src_h as f64 / h as f64;
    let mut boxes = Vec::new();
    for contour in contours.iter().take(cfg.max_candidates) {
        let coords: Vec<Coord<f64>> = contour
            .points
            .iter()
            .map(|p| Coord {
                x: p.x as f64,
                y: p.y as f64,
            })
            .collect();
        let Some((quad, short_side)) = mini_box(&coords) else {
            continue;
        };
        if short_side < cfg.min_size as f64 {
            continue;
        }
        if box_score_fast(&pred, &quad) < cfg.box_thresh {
            continue;
        }
        let Some(expanded) = unclip(&quad, cfg.unclip_ratio as f64) else {
            continue;
        };
        let Some((quad, short_side)) = mini_box(&expanded) else {
            continue;
        };
        if short_side < cfg.min_size as f64 + 2.0 {
            continue;
        }
        let mut out = [[0f32; 2]; 4];
        for (o, c) in out.iter_mut().zip(quad.iter()) {
            // np.round is round-half-to-even; the box is then clipped to the image (RapidOCR's
            // `clip_det_res` clips to size − 1).
            let x = (c.x * sx)
                .round_ties_even()
                .clamp(0.0, shape.src_w as f64 - 1.0);
            let y = (c.y * sy)
                .round_ties_even()
                .clamp(0.0, shape.src_h as f64 - 1.0);
            *o = [x as f32, y as f32];
        }
        let width = dist(out[0], out[1]) as i64;
        let height = dist(out[0], out[3]) as i64;
        if width <= 3 || height <= 3 {
            continue;
        }
        boxes.push(out);
    }
    sort_reading_order(&mut boxes);
    boxes
}

pub(crate) fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Minimum-area rectangle of `points`, its corners ordered TL, TR, BR, BL (PaddleOCR's
/// `get_mini_boxes`), and its short side.
fn mini_box(points: &[Coord<f64>]) -> Option<([Coord<f64>; 4], f64)> {
    if points.is_empty() {
        return None;
    }
    let ls = LineString::from(points.to_vec());
    let rect = ls.minimum_rotated_rect()?;
    let ring = &rect.exterior().0;
    if ring.len() < 4 {
        return None;
    }
    let mut c = [ring[0], ring[1], ring[2], ring[3]];
    let side = |a: Coord<f64>, b: Coord<f64>| ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt();
    let short = side(c[0], c[1]).min(side(c[1], c[2]));
    c.sort_by(|a, b| a.x.total_cmp(&b.x));
    let (tl, bl) = if c[1].y > c[0].y {
        (c[0], c[1])
    } else {
        (c[1], c[0])
    };
    let (tr, br) = if c[3].y > c[2].y {
        (c[2], c[3])
    } else {
        (c[3], c[2])
    };
    Some(([tl, tr, br, bl], short))
}

/// Mean probability inside the quad (PaddleOCR's `box_score_fast`).
fn box_score_fast(pred: &ArrayView2<'_, f32>, quad: &[Coord<f64>; 4]) -> f32 {
    let (h, w) = pred.dim();
    let clampi = |v: f64, hi: usize| (v as i64).clamp(0, hi as i64 - 1) as usize;
    let xmin = clampi(quad.iter().map(|c| c.x).fold(f64::MAX, f64::min).floor(), w);
    let xmax = clampi(quad.iter().map(|c| c.x).fold(f64::MIN, f64::max).ceil(), w);
    let ymin = clampi(quad.iter().map(|c| c.y).fold(f64::MAX, f64::min).floor(), h);
    let ymax = clampi(quad.iter().map(|c| c.y).fold(f64::MIN, f64::max).ceil(), h);
    let (mw, mh) = (xmax - xmin + 1, ymax - ymin + 1);
    let mut mask = GrayImage::new(mw as u32, mh as u32);
    let mut poly: Vec<Point<i32>> = quad
        .iter()
        .map(|c| Point::new((c.x - xmin as f64) as i32, (c.y - ymin as f64) as i32))
        .collect();
    poly.dedup();
    if poly.len() > 1 && poly.first() == poly.last() {
        poly.pop();
    }
    if poly.len() >= 3 {
        imageproc::drawing::draw_polygon_mut(&mut mask, &poly, Luma([1]));
    } else {
        for p in &poly {
            mask.put_pixel(p.x as u32, p.y as u32, Luma([1]));
        }
    }
    let (mut sum, mut n) = (0f64, 0u32);
    for y in 0..mh {
        for x in 0..mw {
            if mask.get_pixel(x as u32, y as u32)[0] != 0 {
                sum += f64::from(pred[[ymin + y, xmin + x]]);
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        (sum / f64::from(n)) as f32
    }
}

/// Expands the quad by `area × ratio / perimeter` with round joins (pyclipper `JT_ROUND`).
/// Returns the outline, or `None` when the offset does not give exactly one polygon.
fn unclip(quad: &[Coord<f64>; 4], ratio: f64) -> Option<Vec<Coord<f64>>> {
    let poly = Polygon::new(LineString::from(quad.to_vec()), vec![]);
    let area = poly.unsigned_area();
    let perimeter = Euclidean.length(poly.exterior());
    if perimeter <= 0.0 || area <= 0.0 {
        return None;
    }
    let distance = area * ratio / perimeter;
    let style = BufferStyle::new(distance).line_join(LineJoin::Round(0.25));
    let grown = poly.buffer_with_style(style);
    if grown.0.len() != 1 {
        return None;
    }
    Some(grown.0[0].exterior().0.clone())
}

/// PaddleOCR's `sorted_boxes`: by top-left y then x, then neighbours on the same line
/// (|Δy| < 10 px) are ordered left to right.
pub fn sort_reading_order(boxes: &mut [Quad]) {
    boxes.sort_by(|a, b| {
        a[0][1]
            .total_cmp(&b[0][1])
            .then(a[0][0].total_cmp(&b[0][0]))
    });
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            if (boxes[j + 1][0][1] - boxes[j][0][1]).abs() < 10.0
                && boxes[j + 1][0][0] < boxes[j][0][0]
            {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn shape(w: u32, h: u32) -> DetShape {
        DetShape {
            src_w: w,
            src_h: h,
            resized_w: w,
            resized_h: h,
            tensor_w: w,
            tensor_h: h,
        }
    }

    #[test]
    fn one_rectangle_gives_one_expanded_box() {
        let mut pred = Array2::<f32>::zeros((64, 128));
        for y in 20..40 {
            for x in 10..110 {
                pred[[y, x]] = 0.9;
            }
        }
        let boxes = boxes_from_map(pred.view(), &shape(128, 64), &DetConfig::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let b = boxes[0];
        // 100×20 region, distance = 2000·1.0/240 ≈ 8.3 on each side (contour is 99×19).
        assert!(b[0][0] < 10.0 && b[0][1] < 20.0, "{b:?}");
        assert!(b[2][0] > 108.0 && b[2][1] > 38.0, "{b:?}");
        assert!(b[0][0] >= 0.0 && b[2][1] <= 63.0);
    }

    #[test]
    fn low_score_and_tiny_regions_are_dropped() {
        let mut pred = Array2::<f32>::zeros((64, 128));
        for y in 20..40 {
            for x in 10..110 {
                pred[[y, x]] = 0.5; // above thresh 0.3, below box_thresh 0.6
            }
        }
        pred[[5, 5]] = 0.99; // a single pixel
        let boxes = boxes_from_map(pred.view(), &shape(128, 64), &DetConfig::default());
        assert!(boxes.is_empty(), "{boxes:?}");
    }

    #[test]
    fn boxes_map_back_to_original_coordinates() {
        let mut pred = Array2::<f32>::zeros((64, 128));
        for y in 20..40 {
            for x in 10..110 {
                pred[[y, x]] = 0.9;
            }
        }
        let mut s = shape(256, 128);
        s.resized_w = 128;
        s.resized_h = 64;
        let boxes = boxes_from_map(pred.view(), &s, &DetConfig::default());
        assert_eq!(boxes.len(), 1);
        assert!(boxes[0][2][0] > 216.0, "{:?}", boxes[0]);
    }

    #[test]
    fn reading_order_fixes_same_line_neighbours() {
        let q = |x: f32, y: f32| [[x, y], [x + 10.0, y], [x + 10.0, y + 5.0], [x, y + 5.0]];
        let mut boxes = vec![q(50.0, 10.0), q(0.0, 14.0), q(0.0, 40.0)];
        sort_reading_order(&mut boxes);
        assert_eq!(boxes[0][0], [0.0, 14.0]);
        assert_eq!(boxes[1][0], [50.0, 10.0]);
        assert_eq!(boxes[2][0], [0.0, 40.0]);
    }
}

//! The detection stage: images grouped by detector input shape into batches, each filled on the
//! host pool, run on one of the detector's runners, post-processed into boxes in reading order
//! and cut into crops, with the fill of the next batch and the post-processing of the previous
//! one overlapping each run ([`crate::overlap`]). An image whose text came out too small
//! ([`super::wants_second_pass`]) is detected again at up to
//! [`crate::DetConfig::small_text_limit`], and the second pass's boxes are the ones kept.

use std::collections::BTreeMap;
use std::time::Instant;

use fast_image_resize::Resizer;
use image::RgbImage;
use ndarray::{Axis, Ix2};
use rayon::prelude::*;

use super::postprocess::{boxes_from_map, Quad};
use super::{wants_second_pass, DetShape};
use crate::config::DetConfig;
use crate::crop::Found;
use crate::error::{OcrError, Stage};
use crate::model::{Batch, Streams};
use crate::output::Timings;
use crate::overlap::{batch_tensor, overlapped, Host};

/// One image's outcome of a detector pass: its boxes (and crops), or, from a first pass that
/// found its text too small, the boxes it found, to be detected again.
#[derive(Clone)]
enum Pass {
    Done(Found),
    Again(Vec<Quad>),
}

/// Boxes per image in reading order, each with its crop when `cut` (a degenerate box has
/// none); a small-text image is detected twice (see the module documentation).
pub(crate) fn detect(
    det: &Streams,
    host: &Host<'_>,
    images: &[RgbImage],
    cfg: &DetConfig,
    timings: &mut [Timings],
    cut: bool,
) -> Vec<Result<Found, OcrError>> {
    let all: Vec<usize> = (0..images.len()).collect();
    let mut out = pass(det, host, images, &all, cfg, timings, cut, true);
    let again: Vec<usize> = all
        .into_iter()
        .filter(|&i| matches!(out[i], Some(Ok(Pass::Again(_)))))
        .collect();
    if !again.is_empty() {
        let second = cfg.second_pass();
        tracing::debug!(
            images = again.len(),
            limit = second.limit_side_len,
            "small text: detecting again at a higher resolution"
        );
        let mut redone = pass(det, host, images, &again, &second, timings, cut, false);
        for &i in &again {
            match redone[i].take() {
                Some(Ok(pass)) => out[i] = Some(Ok(pass)),
                // The first pass's boxes stand if the second pass fails (a GPU out of
                // memory at the larger size, say): the image was read, if less well.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "second detector pass failed; keeping the first");
                    if let Some(Ok(Pass::Again(quads))) = out[i].take() {
                        let t = Instant::now();
                        let found = host.pool.install(|| cut_all(&images[i], quads, cut, cfg));
                        timings[i].crop += ms(t);
                        out[i] = Some(Ok(Pass::Done(found)));
                    }
                }
                None => unreachable!("the second pass covers every image it was given"),
            }
        }
    }
    out.into_iter()
        .map(|r| match r.expect("every image in a group")? {
            Pass::Done(found) => Ok(found),
            Pass::Again(_) => unreachable!("a second pass never asks for a third"),
        })
        .collect()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Each box with its crop (on the calling rayon pool) when `cut`.
fn cut_all(image: &RgbImage, quads: Vec<Quad>, cut: bool, cfg: &DetConfig) -> Found {
    if cut {
        quads
            .into_par_iter()
            .map(|q| (q, crate::crop::cut(image, &q, cfg.crop_padding)))
            .collect()
    } else {
        quads.into_iter().map(|q| (q, None)).collect()
    }
}

/// Batches of a pass: images grouped by tensor shape (a `BTreeMap`, so the order is
/// deterministic), in chunks of the batch size: (tensor height, width, member images).
pub(crate) fn batches<'a>(
    shapes: &[DetShape],
    which: &[usize],
    batch_size: usize,
    groups: &'a mut BTreeMap<(u32, u32), Vec<usize>>,
) -> Vec<(usize, usize, &'a [usize])> {
    for &i in which {
        groups.entry(shapes[i].tensor_key()).or_default().push(i);
    }
    groups
        .iter()
        .flat_map(|(&(th, tw), members)| {
            members
                .chunks(batch_size.max(1))
                .map(move |c| (th as usize, tw as usize, c))
        })
        .collect()
}

/// One detector pass over `images[which]` with `cfg`; the result is indexed like `images`
/// (`None` outside `which`). With `may_repeat`, an image that wants a second pass gets
/// [`Pass::Again`] with its boxes and no crops.
#[allow(clippy::too_many_arguments)]
fn pass(
    det: &Streams,
    host: &Host<'_>,
    images: &[RgbImage],
    which: &[usize],
    cfg: &DetConfig,
    timings: &mut [Timings],
    cut: bool,
    may_repeat: bool,
) -> Vec<Option<Result<Pass, OcrError>>> {
    let canvases = cfg.canvases.clone().unwrap_or_default();
    let shapes: Vec<DetShape> = images
        .iter()
        .map(|im| DetShape::plan(im.width(), im.height(), cfg, &canvases))
        .collect();
    let mut groups = BTreeMap::new();
    // Batches: (tensor height, width, member images, padded batch size).
    let batches: Vec<(usize, usize, &[usize], usize)> =
        batches(&shapes, which, cfg.batch_size, &mut groups)
            .into_iter()
            .map(|(th, tw, c)| (th, tw, c, det.padded_batch(c.len(), cfg.batch_size)))
            .collect();
    let done = overlapped(
        host,
        Stage::Detect,
        &batches,
        |&(th, tw, chunk, run_n), tensor| {
            let slot = 3 * th * tw;
            batch_tensor(tensor, slot, chunk.len(), run_n)
                .par_chunks_mut(slot)
                .zip(chunk.par_iter())
                .for_each_init(Resizer::new, |resizer, (dst, &i)| {
                    let s = &shapes[i];
                    let resized =
                        crate::preprocess::resize(resizer, &images[i], s.resized_w, s.resized_h);
                    crate::preprocess::write_planes(&resized, dst, tw, th);
                    crate::preprocess::pad_with_background(&resized, dst, tw, th);
                });
        },
        |&(th, tw, chunk, run_n), tensor| {
            det.infer(
                &Batch {
                    stage: Stage::Detect,
                    tensor,
                    n: chunk.len(),
                    run_n,
                    chw: [3, th, tw],
                },
                cfg.batch_size,
            )
        },
        |&(_, _, chunk, _), output| -> Vec<(Result<Pass, OcrError>, f64, f64)> {
            chunk
                .par_iter()
                .enumerate()
                .map(|(k, &i)| {
                    let t = Instant::now();
                    let r = output.item(k).and_then(|out| {
                        // [1, H, W] per image.
                        let map = out
                            .main
                            .index_axis(Axis(0), 0)
                            .into_dimensionality::<Ix2>()
                            .map_err(|e| OcrError::Inference {
                                stage: Stage::Detect,
                                message: format!("unexpected detector output: {e}"),
                            })?;
                        Ok(boxes_from_map(map, &shapes[i], cfg))
                    });
                    let post = ms(t);
                    let t = Instant::now();
                    let r = r.map(|quads| {
                        if may_repeat && wants_second_pass(&quads, &shapes[i], cfg) {
                            Pass::Again(quads)
                        } else {
                            Pass::Done(cut_all(&images[i], quads, cut, cfg))
                        }
                    });
                    (r, post, ms(t))
                })
                .collect()
        },
    );
    let mut out: Vec<Option<Result<Pass, OcrError>>> = vec![None; images.len()];
    for (&(_, _, chunk, _), d) in batches.iter().zip(done) {
        let share = (d.fill_ms + d.run_ms) / chunk.len() as f64;
        for (&i, (r, post, crop)) in chunk.iter().zip(d.result) {
            timings[i].det += share + post;
            timings[i].crop += crop;
            out[i] = Some(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_batched_by_tensor_shape_in_a_fixed_order() {
        let cfg = DetConfig::default();
        let sizes = [(100, 100), (960, 720), (100, 100), (960, 720), (100, 100)];
        let shapes: Vec<DetShape> = sizes
            .iter()
            .map(|&(w, h)| DetShape::plan(w, h, &cfg, &[]))
            .collect();
        let mut groups = BTreeMap::new();
        let b = batches(&shapes, &[0, 1, 2, 3, 4], 2, &mut groups);
        let members: Vec<Vec<usize>> = b.iter().map(|(_, _, c)| c.to_vec()).collect();
        // Same-shape images share batches of at most 2, in input order within a shape.
        let small = shapes[0].tensor_key();
        let large = shapes[1].tensor_key();
        assert_ne!(small, large);
        let (first, second) = if small < large {
            (vec![0, 2], vec![1, 3])
        } else {
            (vec![1, 3], vec![0, 2])
        };
        assert!(
            members.contains(&first) && members.contains(&second),
            "{members:?}"
        );
        assert!(members.contains(&vec![4]));
        assert_eq!(members.iter().map(Vec::len).sum::<usize>(), 5);
    }
}

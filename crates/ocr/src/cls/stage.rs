//! The classifier stage: the crops of every image of a call in batches of the classifier's
//! batch size, each filled on the host pool and run on one of the classifier's runners; a crop
//! the classifier says is upside down (confidently, see [`super::should_rotate`]) is turned
//! 180°, and its frame with it.

use fast_image_resize::Resizer;
use rayon::prelude::*;

use super::ClsConfig;
use crate::crop::Crop;
use crate::error::{OcrError, Stage};
use crate::model::{Batch, Streams};
use crate::output::Timings;
use crate::overlap::{batch_tensor, overlapped, Host};

/// Batches of `n` crops: (first crop, crop count), at most `max` each, in crop order.
pub(crate) fn batches(n: usize, max: usize) -> Vec<(usize, usize)> {
    let max = max.max(1);
    (0..n).step_by(max).map(|a| (a, max.min(n - a))).collect()
}

/// Classifies and turns `crops` in place; a crop whose run failed fails its image.
pub(crate) fn classify(
    cls: &Streams,
    host: &Host<'_>,
    crops: &mut [Crop],
    cfg: &ClsConfig,
    timings: &mut [Timings],
    failed: &mut [Option<OcrError>],
) {
    let (h, w) = (super::HEIGHT as usize, super::WIDTH as usize);
    let slot = 3 * h * w;
    let thresh = cfg.thresh;
    // Batches: (first crop, crop count, padded batch size).
    let batches: Vec<(usize, usize, usize)> = batches(crops.len(), cfg.batch_size)
        .into_iter()
        .map(|(a, n)| (a, n, cls.padded_batch(n, cfg.batch_size)))
        .collect();
    let view: &[Crop] = crops;
    // Each batch's answer per crop: turn it 180° or not (applied after the loop, which reads
    // the crops while it runs).
    let done = overlapped(
        host,
        Stage::Classify,
        &batches,
        |&(a, n, run_n), tensor| {
            batch_tensor(tensor, slot, n, run_n)
                .par_chunks_mut(slot)
                .zip(view[a..a + n].par_iter())
                .for_each_init(Resizer::new, |resizer, (dst, c)| {
                    super::fill(resizer, &c.pixels, dst)
                });
        },
        |&(_, n, run_n), tensor| {
            cls.infer(
                &Batch {
                    stage: Stage::Classify,
                    tensor,
                    n,
                    run_n,
                    chw: [3, h, w],
                },
                cfg.batch_size,
            )
        },
        |&(_, n, _), output| -> Vec<Result<bool, OcrError>> {
            (0..n)
                .map(|k| {
                    output.item(k).map(|out| {
                        let probs: Vec<f32> = out.main.iter().copied().collect();
                        super::should_rotate(&probs, thresh)
                    })
                })
                .collect()
        },
    );
    for (&(a, n, _), d) in batches.iter().zip(done) {
        let share = (d.fill_ms + d.run_ms) / n as f64;
        for (c, turn) in crops[a..a + n].iter_mut().zip(d.result) {
            timings[c.image].cls += share;
            match turn {
                Ok(true) => {
                    image::imageops::rotate180_in_place(&mut c.pixels);
                    let [tl, tr, br, bl] = c.frame;
                    c.frame = [br, bl, tl, tr];
                }
                Ok(false) => {}
                Err(e) => {
                    failed[c.image].get_or_insert(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_are_batched_in_order_up_to_the_batch_size() {
        assert_eq!(batches(7, 3), vec![(0, 3), (3, 3), (6, 1)]);
        assert_eq!(batches(0, 3), vec![]);
        assert_eq!(batches(2, 0), vec![(0, 1), (1, 1)]);
    }
}

//! The recogniser stage: the crops of every image of a call (from every page, so batches fill
//! across pages), sorted by width bucket and width and cut into runs of one bucket of at most
//! the batch size, each filled on the host pool, run on one of the recogniser's runners and
//! CTC-decoded. A crop's tensor depends only on the crop and its bucket, so its text does not
//! depend on its batch-mates.

use std::time::Instant;

use fast_image_resize::Resizer;
use ndarray::{Ix1, Ix2};
use rayon::prelude::*;

use super::{Decoded, Dictionary};
use crate::crop::Crop;
use crate::error::{OcrError, Stage};
use crate::model::{Batch, ItemOutput, Streams};
use crate::output::Timings;
use crate::overlap::{batch_tensor, overlapped, Host};

/// A recogniser batch: its bucket width, its (bucket, width, crop) entries.
pub(crate) type RecBatch<'a> = (u32, &'a [(u32, u32, usize)]);
/// A [`RecBatch`] with its padded batch size.
type PaddedBatch<'a> = (u32, &'a [(u32, u32, usize)], usize);
/// One line's text and score, or why it failed.
type LineResult = Result<Decoded, OcrError>;

/// The crops to recognise, as (bucket, width at height 48, crop index), sorted so that each
/// batch has one shape and similar widths; crops of images that already failed are left out.
pub(crate) fn order(
    crops: &[Crop],
    widths: &[u32],
    failed: &[Option<OcrError>],
) -> Vec<(u32, u32, usize)> {
    let mut order: Vec<(u32, u32, usize)> = crops
        .iter()
        .enumerate()
        .filter(|(_, c)| failed[c.image].is_none())
        .map(|(i, c)| {
            let (w, h) = c.pixels.dimensions();
            (
                super::bucket_width(w, h, widths),
                crate::preprocess::width_at_height(w, h, super::HEIGHT, u32::MAX),
                i,
            )
        })
        .collect();
    order.sort_unstable();
    order
}

/// Runs of one bucket, at most `max` each, in `order`'s order.
pub(crate) fn batches(order: &[(u32, u32, usize)], max: usize) -> Vec<RecBatch<'_>> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let bucket = order[start].0;
        let end = order[start..]
            .iter()
            .position(|o| o.0 != bucket)
            .map_or(order.len(), |p| start + p)
            .min(start + max);
        out.push((bucket, &order[start..end]));
        start = end;
    }
    out
}

/// Recognises `crops`: the decoded line per crop (`None` for a crop that was not run), and a
/// failure recorded against the image of a crop whose run failed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recognise(
    rec: &Streams,
    host: &Host<'_>,
    dict: &Dictionary,
    crops: &[Crop],
    widths: &[u32],
    max: usize,
    timings: &mut [Timings],
    failed: &mut [Option<OcrError>],
) -> Vec<Option<Decoded>> {
    let order = order(crops, widths, failed);
    let batches: Vec<PaddedBatch<'_>> = batches(&order, max)
        .into_iter()
        .map(|(b, items)| (b, items, rec.padded_batch(items.len(), max)))
        .collect();
    let h = super::HEIGHT as usize;
    let done = overlapped(
        host,
        Stage::Recognize,
        &batches,
        |&(bucket, batch, run_n), tensor| {
            let slot = 3 * h * bucket as usize;
            batch_tensor(tensor, slot, batch.len(), run_n)
                .par_chunks_mut(slot)
                .zip(batch.par_iter())
                .for_each_init(Resizer::new, |resizer, (dst, &(_, _, i))| {
                    super::fill(resizer, &crops[i].pixels, bucket, dst)
                });
        },
        |&(bucket, batch, run_n), tensor| {
            rec.infer(
                &Batch {
                    stage: Stage::Recognize,
                    tensor,
                    n: batch.len(),
                    run_n,
                    chw: [3, h, bucket as usize],
                },
                max,
            )
        },
        |&(_, batch, _), output| -> Vec<(LineResult, f64)> {
            (0..batch.len())
                .into_par_iter()
                .map(|k| {
                    let t = Instant::now();
                    let r = output.item(k).and_then(|out| decode_line(dict, out));
                    (r, t.elapsed().as_secs_f64() * 1000.0)
                })
                .collect()
        },
    );
    let mut texts: Vec<Option<Decoded>> = vec![None; crops.len()];
    for (&(_, batch, _), d) in batches.iter().zip(done) {
        let share = (d.fill_ms + d.run_ms) / batch.len() as f64;
        for (&(_, _, i), (r, decode_ms)) in batch.iter().zip(d.result) {
            timings[crops[i].image].rec += share + decode_ms;
            match r {
                Ok(text) => texts[i] = Some(text),
                Err(e) => {
                    failed[crops[i].image].get_or_insert(e);
                }
            }
        }
    }
    texts
}

/// CTC-decodes one line's recogniser output: `[T]` indices and scores from the argmax model,
/// or the `[T, C]` softmax.
fn decode_line(dict: &Dictionary, out: ItemOutput<'_>) -> LineResult {
    let bad = |e: ndarray::ShapeError| OcrError::Inference {
        stage: Stage::Recognize,
        message: format!("unexpected recogniser output: {e}"),
    };
    match out.indices {
        Some(indices) => {
            let space = match out.space {
                Some(s) => Some(s.into_dimensionality::<Ix1>().map_err(bad)?),
                None => None,
            };
            Ok(dict.decode_best(
                indices.into_dimensionality::<Ix1>().map_err(bad)?,
                out.main.into_dimensionality::<Ix1>().map_err(bad)?,
                space,
            ))
        }
        None => Ok(dict.decode(out.main.into_dimensionality::<Ix2>().map_err(bad)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_one_bucket_and_at_most_the_batch_size() {
        // (bucket, width, crop): already sorted, as `order` gives them.
        let order = [
            (320, 100, 4),
            (320, 200, 0),
            (320, 300, 2),
            (480, 400, 1),
            (480, 470, 3),
        ];
        let b = batches(&order, 2);
        let shape: Vec<(u32, Vec<usize>)> = b
            .iter()
            .map(|(w, items)| (*w, items.iter().map(|i| i.2).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![(320, vec![4, 0]), (320, vec![2]), (480, vec![1, 3])]
        );
        assert!(batches(&[], 4).is_empty());
    }
}

//! Overlapping the host's work with the model's: while batch j runs on the calling thread (the
//! one that owns the ONNX Runtime session, i.e. feeds the device), the host pool fills batch
//! j+1's input tensor and post-processes batch j−1's output. On a GPU the device then waits
//! for the host only when the host work of one batch takes longer than the model run of
//! another; on CPU the two share the cores.

use std::sync::Mutex;
use std::time::Instant;

use rayon::ThreadPool;

use crate::error::Stage;

/// The host side of a stage: the host pool, whether runs overlap the host work of their
/// neighbours, and the batch tensors kept between calls.
pub(crate) struct Host<'a> {
    pub(crate) pool: &'a ThreadPool,
    pub(crate) overlap: bool,
    pub(crate) tensors: &'a Tensors,
}

/// Batch tensors kept from one engine call to the next, per model, so that a batch is written
/// into memory the process already has. A fresh tensor of a detector batch (8 canvases of
/// 960 × 960 are 88 MB) is new memory from the kernel each call, which it maps and zeroes
/// page by page: on the 45 real pages of the simulated device that page zeroing, the `memset`
/// of every buffer and the allocator took about a quarter of the host's CPU (`perf`,
/// 2026-12-07). A tensor is kept while it is at most [`Tensors::KEEP_BYTES`] and its model has
/// fewer than [`Tensors::KEEP`] kept: what the calls in flight hold at their peak anyway, never
/// a 2,880 px second pass's batch of more than one page (one page of it is 99.5 MB).
#[derive(Default)]
pub(crate) struct Tensors {
    free: Mutex<[Vec<Vec<f32>>; 3]>,
}

impl Tensors {
    /// Tensors kept per model at most (two per call in flight: the batch running and the next
    /// one being filled; 4 calls in flight at K = 2 on CUDA).
    pub(crate) const KEEP: usize = 8;
    /// The largest tensor kept, bytes.
    pub(crate) const KEEP_BYTES: usize = 128 << 20;

    fn slot(stage: Stage) -> usize {
        match stage {
            Stage::Detect => 0,
            Stage::Classify => 1,
            _ => 2,
        }
    }

    /// The largest kept tensor of `stage`'s model (its contents are an earlier batch's), or a
    /// new one. The largest, so that the kept tensors grow to the model's largest batch once
    /// and then fit every batch: a tensor that must grow is new memory again.
    pub(crate) fn take(&self, stage: Stage) -> Vec<f32> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let kept = &mut free[Self::slot(stage)];
        match (0..kept.len()).max_by_key(|&i| kept[i].capacity()) {
            Some(i) => kept.swap_remove(i),
            None => Vec::new(),
        }
    }

    /// Gives a tensor back to be kept (or dropped, see [`Tensors`]).
    pub(crate) fn give(&self, stage: Stage, tensor: Vec<f32>) {
        if tensor.capacity() == 0
            || tensor.capacity() * std::mem::size_of::<f32>() > Self::KEEP_BYTES
        {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let kept = &mut free[Self::slot(stage)];
        if kept.len() < Self::KEEP {
            kept.push(tensor);
        }
    }

    /// Tensors kept now, all models. (tests only)
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(Vec::len)
            .sum()
    }
}

/// Makes `buf` a batch tensor of `run_n` items of `slot` elements and returns the first `n`
/// items' part, which the caller must write whole: `buf` holds an earlier batch's values
/// ([`Tensors`]). The padding items past the first `n` keep whatever they hold (an earlier
/// batch's pixels, or zeros where the tensor is new): no model mixes the items of a batch
/// (convolutions, inference-mode normalisation and the recogniser's sequence layers all work
/// per item), so their values cannot reach the real items' outputs, which are the only ones
/// read, and clearing them cost a `memset` of up to 7 canvases a detector run (2.6 % of the
/// host's CPU in a `perf` profile of the simulated CUDA path, 2026-12-08).
pub(crate) fn batch_tensor(buf: &mut Vec<f32>, slot: usize, n: usize, run_n: usize) -> &mut [f32] {
    if buf.capacity() < slot * run_n {
        // Grown, the old values would be copied for nothing.
        *buf = Vec::new();
    }
    buf.resize(slot * run_n, 0.0);
    &mut buf[..slot * n.min(run_n)]
}

/// One batch's result: what `post` returned, and the milliseconds its `fill` and its model
/// run took (wall time, for the batch as a whole).
pub(crate) struct Done<R> {
    pub(crate) result: R,
    pub(crate) fill_ms: f64,
    pub(crate) run_ms: f64,
}

/// Runs every batch through `fill` (pool) → `run` (this thread) → `post` (pool), with `fill` of
/// the next batch and `post` of the previous one running during `run`. Results come back in
/// batch order. `fill` gets a buffer of `stage`'s model to write the batch's input tensor into,
/// holding what an earlier batch left there: it must set the length and write every element
/// ([`batch_tensor`]). With `overlap` false the three steps run one after another (for
/// measurements).
pub(crate) fn overlapped<B, O, R>(
    host: &Host<'_>,
    stage: Stage,
    batches: &[B],
    fill: impl Fn(&B, &mut Vec<f32>) + Sync,
    mut run: impl FnMut(&B, &[f32]) -> O,
    post: impl Fn(&B, &O) -> R + Sync,
) -> Vec<Done<R>>
where
    B: Sync,
    O: Sync + Send,
    R: Send,
{
    let (overlap, pool) = (host.overlap, host.pool);
    let timed_fill = |b: &B, buf: &mut Vec<f32>| {
        let t = Instant::now();
        fill(b, buf);
        t.elapsed().as_secs_f64() * 1000.0
    };
    let mut done = Vec::with_capacity(batches.len());
    if batches.is_empty() {
        return done;
    }
    let (mut cur, mut next) = (host.tensors.take(stage), Vec::new());
    if !overlap {
        for b in batches {
            let fill_ms = pool.install(|| timed_fill(b, &mut cur));
            let t = Instant::now();
            let out = run(b, &cur);
            let run_ms = t.elapsed().as_secs_f64() * 1000.0;
            let result = pool.install(|| post(b, &out));
            done.push(Done {
                result,
                fill_ms,
                run_ms,
            });
        }
        host.tensors.give(stage, cur);
        return done;
    }
    if batches.len() > 1 {
        next = host.tensors.take(stage);
    }
    let mut cur_fill = pool.install(|| timed_fill(&batches[0], &mut cur));
    // The previous batch's output, waiting for `post`, with its timings.
    let mut prev: Option<(usize, O, f64, f64)> = None;
    for j in 0..batches.len() {
        let mut next_fill = 0.0;
        let mut prev_post = None;
        let mut output = None;
        let mut run_ms = 0.0;
        pool.in_place_scope(|s| {
            if let Some(b) = batches.get(j + 1) {
                let (buf, ms, timed_fill) = (&mut next, &mut next_fill, &timed_fill);
                s.spawn(move |_| *ms = timed_fill(b, buf));
            }
            if let Some((k, out, _, _)) = &prev {
                let (slot, post, b) = (&mut prev_post, &post, &batches[*k]);
                s.spawn(move |_| *slot = Some(post(b, out)));
            }
            let t = Instant::now();
            output = Some(run(&batches[j], &cur));
            run_ms = t.elapsed().as_secs_f64() * 1000.0;
        });
        if let (Some(result), Some((_, _, fill_ms, run_ms))) = (prev_post, prev.take()) {
            done.push(Done {
                result,
                fill_ms,
                run_ms,
            });
        }
        prev = output.map(|o| (j, o, cur_fill, run_ms));
        std::mem::swap(&mut cur, &mut next);
        cur_fill = next_fill;
    }
    if let Some((k, out, fill_ms, run_ms)) = prev {
        let result = pool.install(|| post(&batches[k], &out));
        done.push(Done {
            result,
            fill_ms,
            run_ms,
        });
    }
    host.tensors.give(stage, cur);
    host.tensors.give(stage, next);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_is_filled_run_and_posted_in_order() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let tensors = Tensors::default();
        let batches: Vec<u32> = (1..=7).collect();
        for overlap in [true, false] {
            let mut runs = Vec::new();
            let host = Host {
                pool: &pool,
                overlap,
                tensors: &tensors,
            };
            let done = overlapped(
                &host,
                Stage::Recognize,
                &batches,
                |b, buf| {
                    buf.clear();
                    buf.extend((0..*b).map(|x| x as f32))
                },
                |b, t| {
                    runs.push(*b);
                    assert_eq!(t.len(), *b as usize, "run sees its own batch's tensor");
                    t.iter().sum::<f32>()
                },
                |b, sum| (*b, *sum),
            );
            assert_eq!(runs, batches);
            let got: Vec<(u32, f32)> = done.into_iter().map(|d| d.result).collect();
            let want: Vec<(u32, f32)> = batches
                .iter()
                .map(|&b| (b, (0..b).sum::<u32>() as f32))
                .collect();
            assert_eq!(got, want);
        }
        // The two tensors of the overlapped call were kept, and taken again by the second.
        assert_eq!(tensors.kept(), 2);
        let host = Host {
            pool: &pool,
            overlap: true,
            tensors: &tensors,
        };
        let none: &[u32] = &[];
        assert!(overlapped(
            &host,
            Stage::Detect,
            none,
            |_, _| {},
            |_, _| 0,
            |_, _: &i32| 0
        )
        .is_empty());
    }

    #[test]
    fn a_kept_tensor_comes_back_whole_and_big_ones_are_not_kept() {
        let tensors = Tensors::default();
        let mut kept = Vec::with_capacity(12);
        kept.extend([7.0; 10]);
        tensors.give(Stage::Classify, kept);
        // Another model's tensors are its own.
        assert!(tensors.take(Stage::Recognize).is_empty());
        let mut buf = tensors.take(Stage::Classify);
        assert_eq!(buf, vec![7.0; 10]);
        // Two items of 3, padded to 4: every value is kept (the fill writes the items'), the
        // part past the earlier length is zero; only the items' part is handed out.
        let items = batch_tensor(&mut buf, 3, 2, 4);
        assert_eq!(items.len(), 6);
        assert_eq!(buf, [[7.0; 10].as_slice(), &[0.0; 2]].concat());
        // A tensor too small for the batch is replaced, not grown (nothing of it is copied).
        let mut small = vec![7.0; 2];
        batch_tensor(&mut small, 3, 1, 2).fill(5.0);
        assert_eq!(small, [5.0, 5.0, 5.0, 0.0, 0.0, 0.0]);
        // The largest kept tensor is taken first.
        tensors.give(Stage::Classify, vec![1.0; 4]);
        tensors.give(Stage::Classify, vec![2.0; 40]);
        tensors.give(Stage::Classify, vec![3.0; 8]);
        assert_eq!(tensors.take(Stage::Classify), vec![2.0; 40]);
        assert_eq!(tensors.take(Stage::Classify), vec![3.0; 8]);
        assert_eq!(tensors.take(Stage::Classify), vec![1.0; 4]);
        let big = Vec::<f32>::with_capacity(Tensors::KEEP_BYTES / 4 + 1);
        tensors.give(Stage::Detect, big);
        for _ in 0..Tensors::KEEP + 3 {
            tensors.give(Stage::Recognize, vec![0.0; 4]);
        }
        assert_eq!(
            tensors.kept(),
            Tensors::KEEP,
            "none too big, at most KEEP a model"
        );
    }
}

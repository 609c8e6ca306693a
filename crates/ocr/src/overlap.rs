//! Overlapping the host's work with the model's: while batch j runs on the calling thread (the
//! one that owns the ONNX Runtime session, i.e. feeds the device), the host pool fills batch
//! j+1's input tensor and post-processes batch j−1's output. On a GPU the device then waits
//! for the host only when the host work of one batch takes longer than the model run of
//! another; on CPU the two share the cores.

use std::time::Instant;

use rayon::ThreadPool;

/// The host side of a stage: the host pool, and whether runs overlap the host work of their
/// neighbours.
pub(crate) struct Host<'a> {
    pub(crate) pool: &'a ThreadPool,
    pub(crate) overlap: bool,
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
/// batch order. `fill` gets a cleared buffer to write the batch's input tensor into. With
/// `overlap` false the three steps run one after another (for measurements).
pub(crate) fn overlapped<B, O, R>(
    host: &Host<'_>,
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
        buf.clear();
        fill(b, buf);
        t.elapsed().as_secs_f64() * 1000.0
    };
    let mut done = Vec::with_capacity(batches.len());
    let (mut cur, mut next) = (Vec::new(), Vec::new());
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
        return done;
    }
    let mut cur_fill = match batches.first() {
        Some(b) => pool.install(|| timed_fill(b, &mut cur)),
        None => return done,
    };
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
        let batches: Vec<u32> = (1..=7).collect();
        for overlap in [true, false] {
            let mut runs = Vec::new();
            let host = Host {
                pool: &pool,
                overlap,
            };
            let done = overlapped(
                &host,
                &batches,
                |b, buf| buf.extend((0..*b).map(|x| x as f32)),
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
        let host = Host {
            pool: &pool,
            overlap: true,
        };
        assert!(overlapped(&host, &[] as &[u32], |_, _| {}, |_, _| 0, |_, _: &i32| 0).is_empty());
    }
}

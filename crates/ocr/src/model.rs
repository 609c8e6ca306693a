//! The seam between the pipeline and the device: "run this model on this batch".
//!
//! Every stage runs its model through a [`ModelRunner`], and nothing else: the ONNX Runtime
//! sessions ([`crate::onnx`]), the recorded and simulated device ([`crate::instruments::device`])
//! and the test fault plan ([`crate::instruments::fault`]) are interchangeable implementations, so the pipeline's batching,
//! ordering and per-item fallback are tested with fake models, and a benchmark can measure the
//! host's work against a device that costs what a real one would (the ocrs crate's `Model`
//! trait is the model for this).
//!
//! A model has `K` runners ([`Streams`], `--device-streams`): each its own set of sessions, so on
//! CUDA its own stream, and up to K runs of the model are in flight at once.
//!
//! [`infer`] runs one batch and falls back when it fails: a device that ran out of memory gets
//! the batch again in smaller pieces (a healthy image is never failed for it), any other error
//! gets each item alone, so that one bad input fails only its own image.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD, Axis};

use crate::error::{OcrError, Stage};

/// The batch sizes that runs are padded to when each shape has its own session: `1`, `⌈B/4⌉`
/// and `B`. A partial batch then costs at most 4× its own items' compute, and each model shape
/// has at most three batch sizes to make and warm up (a power-of-two ladder would have 6 at
/// `B` = 32). The detector too: a power-of-two ladder for it (1, 2, 4, 8 instead of 1, 2, 8,
/// so that 3 pages of one canvas run as 4, not 8) was measured on the 45 real pages at 8 pages
/// a call on the simulated device (2026-12-07): 1.8 % less model input, the same throughput
/// (3.25 and 3.26 img/s of ceiling at K = 1), for 11 more sessions a runner; not taken.
pub fn batch_sizes(max: usize) -> Vec<usize> {
    let max = max.max(1);
    let mut v = vec![1, max.div_ceil(4), max];
    v.dedup();
    v
}

/// How a runner pads a run's batch: not at all, or up the ladder of [`batch_sizes`] (a session
/// per shape has sessions for those sizes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Exact,
    Ladder,
}

impl Padding {
    /// The batch size a run of `n` items is padded to, for a model whose batch size is `max`.
    pub fn pad(self, n: usize, max: usize) -> usize {
        match self {
            Padding::Exact => n,
            Padding::Ladder => batch_sizes(max).into_iter().find(|&s| s >= n).unwrap_or(n),
        }
    }
}

/// One model run: `run_n` items of `chw` in `tensor` (the last `run_n - n` are padding, zeros).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub stage: Stage,
    pub tensor: &'a [f32],
    pub n: usize,
    pub run_n: usize,
    pub chw: [usize; 3],
}

impl Batch<'_> {
    /// Elements per item.
    pub fn slot(&self) -> usize {
        self.chw.iter().product()
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError {
    pub message: String,
    /// The device ran out of memory: not the input's fault.
    pub out_of_memory: bool,
}

impl RunError {
    /// An error from ONNX Runtime's text, recognising out-of-memory failures: the CUDA
    /// allocator's and the arena's wordings, and the libraries' own (cuDNN and cuBLAS fail to
    /// allocate their workspaces with `*_STATUS_ALLOC_FAILED`; the driver API says
    /// `CUDA_ERROR_OUT_OF_MEMORY`).
    pub fn from_message(message: impl Into<String>) -> RunError {
        let message = message.into();
        let m = message.to_ascii_lowercase();
        let out_of_memory = m.contains("out of memory")
            || m.contains("failed to allocate memory")
            || m.contains("cudaerrormemoryallocation")
            || m.contains("cuda_error_out_of_memory")
            || m.contains("cudnn_status_alloc_failed")
            || m.contains("cublas_status_alloc_failed")
            || m.contains("bfcarena");
        RunError {
            message,
            out_of_memory,
        }
    }
}

/// Runs one model on batches (see the module documentation).
pub trait ModelRunner: Send {
    /// Runs `batch`; the output's first axis has `batch.run_n` items.
    fn run(&mut self, batch: &Batch<'_>) -> Result<RunOutput, RunError>;

    /// How a run's batch is padded (a session per shape pads to a few sizes, see
    /// [`crate::onnx::sessions`]). The same for every runner of a model.
    fn padding(&self) -> Padding {
        Padding::Exact
    }

    /// Bytes of model input per pixel of an item: 12 for the f32 planes (3 channels), 4 for a
    /// graph with uint8 input (`models/make_u8.py`).
    fn input_bytes_per_pixel(&self) -> usize {
        3 * std::mem::size_of::<f32>()
    }

    /// ONNX Runtime sessions alive (0 for a runner without any).
    fn sessions(&self) -> usize {
        0
    }

    /// True when each input shape has its own session (and so is worth warming up).
    fn per_shape(&self) -> bool {
        false
    }

    /// The model's custom metadata value for `key` (the recogniser's dictionary, say).
    fn metadata(&self, _key: &str) -> Option<String> {
        None
    }

    /// The counters of the memory arena that serves this runner's sessions when they take
    /// the device's shared arena (ONNX Runtime's `AllocatorGetStats`, as key-value pairs);
    /// `None` otherwise, or for a runner without sessions.
    fn arena_stats(&self) -> Option<Vec<(String, String)>> {
        None
    }

    /// The runner a wrapper (a recorder, the simulated device) wraps, taken out of it; `None`
    /// for a runner that wraps none.
    fn take_inner(&mut self) -> Option<Box<dyn ModelRunner>> {
        None
    }
}

/// `runner` without its recording or simulating wrappers.
pub(crate) fn base(mut runner: Box<dyn ModelRunner>) -> Box<dyn ModelRunner> {
    while let Some(inner) = runner.take_inner() {
        runner = inner;
    }
    runner
}

/// What one model run returns, copied out of ONNX Runtime: its first output, or, for a
/// recogniser with the argmax appended (`models/make_argmax.py`), its `scores` plus the
/// `indices` of the best classes and the space class's probability per step (`space`).
#[derive(Clone, Debug)]
pub struct RunOutput {
    pub main: ArrayD<f32>,
    pub indices: Option<ArrayD<i64>>,
    pub space: Option<ArrayD<f32>>,
}

/// One item's share of a [`RunOutput`].
pub(crate) struct ItemOutput<'a> {
    pub(crate) main: ArrayViewD<'a, f32>,
    pub(crate) indices: Option<ArrayViewD<'a, i64>>,
    pub(crate) space: Option<ArrayViewD<'a, f32>>,
}

impl RunOutput {
    pub(crate) fn item(&self, i: usize) -> ItemOutput<'_> {
        ItemOutput {
            main: self.main.index_axis(Axis(0), i),
            indices: self.indices.as_ref().map(|a| a.index_axis(Axis(0), i)),
            space: self.space.as_ref().map(|a| a.index_axis(Axis(0), i)),
        }
    }

    /// Item `i` alone, as a run of one.
    pub(crate) fn single(&self, i: usize) -> RunOutput {
        RunOutput {
            main: self
                .main
                .index_axis(Axis(0), i)
                .insert_axis(Axis(0))
                .to_owned(),
            indices: self
                .indices
                .as_ref()
                .map(|a| a.index_axis(Axis(0), i).insert_axis(Axis(0)).to_owned()),
            space: self
                .space
                .as_ref()
                .map(|a| a.index_axis(Axis(0), i).insert_axis(Axis(0)).to_owned()),
        }
    }
}

/// The output of one batch: the whole run, or per item after a failed run.
// One value per model run, moved once: the size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum BatchOutput {
    Whole(RunOutput),
    PerItem(Vec<Result<RunOutput, OcrError>>),
}

impl BatchOutput {
    pub(crate) fn item(&self, i: usize) -> Result<ItemOutput<'_>, OcrError> {
        match self {
            BatchOutput::Whole(a) => Ok(a.item(i)),
            BatchOutput::PerItem(v) => match &v[i] {
                Ok(a) => Ok(a.item(0)),
                Err(e) => Err(e.clone()),
            },
        }
    }
}

fn item_error(stage: Stage, e: RunError) -> OcrError {
    if e.out_of_memory {
        OcrError::DeviceOutOfMemory {
            stage,
            message: e.message,
        }
    } else {
        OcrError::Inference {
            stage,
            message: e.message,
        }
    }
}

/// Runs `batch` on `runner`, falling back when it fails (see the module documentation): out of
/// memory, the items again in smaller padded runs (the batch-size ladder's next size down, then
/// one at a time); any other error, each item alone. The result has one entry per real item.
/// `max` is the model's batch size (for the ladder).
pub(crate) fn infer(runner: &mut dyn ModelRunner, batch: &Batch<'_>, max: usize) -> BatchOutput {
    let err = match runner.run(batch) {
        Ok(out) => return BatchOutput::Whole(out),
        Err(e) if batch.n == 1 => {
            return BatchOutput::PerItem(vec![Err(item_error(batch.stage, e))]);
        }
        Err(e) => e,
    };
    let slot = batch.slot();
    let chunk = if err.out_of_memory {
        // The largest ladder size below this run's, else half.
        let smaller = batch_sizes(max)
            .into_iter()
            .rev()
            .find(|&s| s < batch.run_n)
            .unwrap_or(1);
        tracing::warn!(stage = %batch.stage, batch = batch.n, retry_in = smaller, message = %err.message, "the device ran out of memory; running the batch again in smaller pieces");
        smaller
    } else {
        tracing::warn!(stage = %batch.stage, batch = batch.n, message = %err.message, "batch failed; retrying its items one by one");
        1
    };
    let mut out = Vec::with_capacity(batch.n);
    let mut padded = Vec::new();
    for start in (0..batch.n).step_by(chunk) {
        let k = chunk.min(batch.n - start);
        let run_n = runner.padding().pad(k, max).max(k);
        let items = &batch.tensor[start * slot..(start + k) * slot];
        let tensor = if run_n == k {
            items
        } else {
            padded.clear();
            padded.extend_from_slice(items);
            padded.resize(run_n * slot, 0.0);
            &padded[..]
        };
        let part = Batch {
            tensor,
            n: k,
            run_n,
            ..*batch
        };
        match infer(runner, &part, max) {
            BatchOutput::Whole(o) => out.extend((0..k).map(|i| Ok(o.single(i)))),
            BatchOutput::PerItem(v) => out.extend(v),
        }
    }
    BatchOutput::PerItem(out)
}

/// A model's `K` runners (`--device-streams`): a run takes one for its duration, so up to `K`
/// runs of the model are in flight at once; a run that finds none free waits. Also counts the
/// wall time spent inside runs (all runners together: the model's device time).
pub struct Streams {
    free: Mutex<Vec<Box<dyn ModelRunner>>>,
    returned: Condvar,
    count: usize,
    /// The runners' padding (the same for all of them).
    padding: Padding,
    run_nanos: AtomicU64,
    input_bytes: AtomicU64,
}

/// A runner taken from [`Streams`], given back when dropped.
pub struct Stream<'a> {
    runner: Option<Box<dyn ModelRunner>>,
    streams: &'a Streams,
}

impl Streams {
    pub fn new(runners: Vec<Box<dyn ModelRunner>>) -> Streams {
        Streams {
            count: runners.len(),
            padding: runners.first().map_or(Padding::Exact, |r| r.padding()),
            free: Mutex::new(runners),
            returned: Condvar::new(),
            run_nanos: AtomicU64::new(0),
            input_bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn ModelRunner>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a free runner, waiting for one.
    pub fn take(&self) -> Stream<'_> {
        let mut free = self.lock();
        loop {
            if let Some(r) = free.pop() {
                return Stream {
                    runner: Some(r),
                    streams: self,
                };
            }
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runners of this model.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Seconds spent inside runs so far, all runners together.
    pub fn run_seconds(&self) -> f64 {
        self.run_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Bytes of model input run so far (first runs of each batch, padding included; a retry
    /// after a failure is not counted), all runners together.
    pub fn input_bytes(&self) -> u64 {
        self.input_bytes.load(Ordering::Relaxed)
    }

    /// Replaces every runner by `wrap(runner)` (recording, replaying). Needs every runner back.
    pub fn map(&mut self, mut wrap: impl FnMut(Box<dyn ModelRunner>) -> Box<dyn ModelRunner>) {
        let free = self.free.get_mut().unwrap_or_else(|p| p.into_inner());
        assert_eq!(free.len(), self.count, "a runner is still taken");
        let all = std::mem::take(free);
        *free = all.into_iter().map(&mut wrap).collect();
        self.padding = free.first().map_or(Padding::Exact, |r| r.padding());
    }

    /// The padded size of a run of `n` items, for a model whose batch size is `max`.
    pub(crate) fn padded_batch(&self, n: usize, max: usize) -> usize {
        self.padding.pad(n, max)
    }

    /// [`infer`] on a free runner (waiting for one), taken for this run only: a call's fills
    /// and post-processing hold no runner, so other calls' runs go on meanwhile.
    pub(crate) fn infer(&self, batch: &Batch<'_>, max: usize) -> BatchOutput {
        self.take().infer(batch, max)
    }

    /// Sessions alive over all runners.
    pub fn sessions(&self) -> usize {
        self.lock().iter().map(|r| r.sessions()).sum()
    }

    /// Calls `f` on every runner (all must be free): warm-up, metadata.
    pub fn each<T>(&mut self, mut f: impl FnMut(&mut dyn ModelRunner) -> T) -> Vec<T> {
        let free = self.free.get_mut().unwrap_or_else(|p| p.into_inner());
        free.iter_mut().map(|r| f(r.as_mut())).collect()
    }

    /// Every runner, to use at once from several threads (warm-up). Needs every runner back.
    pub(crate) fn runners_mut(&mut self) -> std::slice::IterMut<'_, Box<dyn ModelRunner>> {
        let free = self.free.get_mut().unwrap_or_else(|p| p.into_inner());
        assert_eq!(free.len(), self.count, "a runner is still taken");
        free.iter_mut()
    }
}

impl Stream<'_> {
    /// [`infer`] on this runner, timed into the model's device time.
    pub(crate) fn infer(&mut self, batch: &Batch<'_>, max: usize) -> BatchOutput {
        let t = Instant::now();
        let runner = self.runner.as_deref_mut().expect("held until dropped");
        let pixels = batch.run_n * batch.chw[1] * batch.chw[2];
        let bytes = (pixels * runner.input_bytes_per_pixel()) as u64;
        let out = infer(runner, batch, max);
        self.streams
            .run_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.streams.input_bytes.fetch_add(bytes, Ordering::Relaxed);
        out
    }

    /// The runner itself (probes, model-only benchmarks).
    pub(crate) fn runner(&mut self) -> &mut dyn ModelRunner {
        self.runner.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.runner.take() {
            self.streams.lock().push(r);
            self.streams.returned.notify_one();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn three_batch_sizes_at_most() {
        assert_eq!(batch_sizes(0), vec![1]);
        assert_eq!(batch_sizes(1), vec![1]);
        assert_eq!(batch_sizes(3), vec![1, 3]);
        assert_eq!(batch_sizes(8), vec![1, 2, 8]);
        assert_eq!(batch_sizes(32), vec![1, 8, 32]);
        assert_eq!(batch_sizes(64), vec![1, 16, 64]);
    }

    /// A fake model: each item's output is the sum of its input slot; fails runs that contain
    /// a slot summing to `poison`, and runs of more than `oom_over` items as out of memory.
    /// Records the batch sizes it was run at.
    pub(crate) struct Fake {
        pub(crate) poison: Option<f32>,
        pub(crate) oom_over: usize,
        pub(crate) runs: Vec<usize>,
        pub(crate) ladder: bool,
    }

    impl Fake {
        pub(crate) fn new() -> Fake {
            Fake {
                poison: None,
                oom_over: usize::MAX,
                runs: Vec::new(),
                ladder: false,
            }
        }
    }

    impl ModelRunner for Fake {
        fn run(&mut self, b: &Batch<'_>) -> Result<RunOutput, RunError> {
            self.runs.push(b.run_n);
            if b.run_n > self.oom_over {
                return Err(RunError::from_message(
                    "CUDA failure 2: out of memory ; GPU=0",
                ));
            }
            let sums: Vec<f32> = b.tensor.chunks(b.slot()).map(|s| s.iter().sum()).collect();
            if sums.iter().any(|s| Some(*s) == self.poison) {
                return Err(RunError::from_message("bad input"));
            }
            Ok(RunOutput {
                main: ArrayD::from_shape_vec(IxDyn(&[b.run_n, 1]), sums).unwrap(),
                indices: None,
                space: None,
            })
        }

        fn padding(&self) -> Padding {
            if self.ladder {
                Padding::Ladder
            } else {
                Padding::Exact
            }
        }
    }

    fn values(out: &BatchOutput, n: usize) -> Vec<Result<f32, String>> {
        (0..n)
            .map(|i| {
                out.item(i)
                    .map(|o| o.main[[0]])
                    .map_err(|e| e.class().to_string())
            })
            .collect()
    }

    fn batch(tensor: &[f32], n: usize, run_n: usize) -> Batch<'_> {
        Batch {
            stage: Stage::Recognize,
            tensor,
            n,
            run_n,
            chw: [1, 1, 2],
        }
    }

    #[test]
    fn a_bad_item_fails_alone_and_the_others_keep_their_outputs() {
        let mut m = Fake::new();
        m.poison = Some(5.0);
        // Items sum to 1, 5 (poison), 9, 13.
        let t = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let out = infer(&mut m, &batch(&t, 4, 4), 8);
        assert_eq!(
            values(&out, 4),
            vec![Ok(1.0), Err("inference".into()), Ok(9.0), Ok(13.0)]
        );
        assert_eq!(
            m.runs,
            vec![4, 1, 1, 1, 1],
            "the batch, then each item alone"
        );
    }

    /// Every wording of "the device is out of memory" seen from ONNX Runtime's CUDA provider
    /// and the libraries under it is recognised; an input's own error is not.
    #[test]
    fn out_of_memory_is_recognised_in_every_library_s_words() {
        for m in [
            "CUDA failure 2: out of memory ; GPU=0",
            "Failed to allocate memory for requested buffer of size 1073741824",
            "BFCArena::AllocateRawInternal Available memory of 0 is smaller than requested bytes",
            "CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED ; GPU=0 ; hostname=x",
            "CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0",
            "CUDA driver error CUDA_ERROR_OUT_OF_MEMORY",
            "cudaErrorMemoryAllocation",
        ] {
            assert!(RunError::from_message(m).out_of_memory, "{m}");
        }
        for m in [
            "Got invalid dimensions for input: x",
            "CUDNN failure 3: CUDNN_STATUS_BAD_PARAM",
        ] {
            assert!(!RunError::from_message(m).out_of_memory, "{m}");
        }
    }

    #[test]
    fn out_of_memory_splits_down_the_ladder_and_fails_no_image() {
        let mut m = Fake::new();
        m.oom_over = 2;
        m.ladder = true;
        let t: Vec<f32> = (0..16).map(|x| x as f32).collect();
        // 8 items at B = 8: the ladder is 1, 2, 8; runs of 8 fail, runs of 2 fit.
        let out = infer(&mut m, &batch(&t, 8, 8), 8);
        let want: Vec<Result<f32, String>> = (0..8)
            .map(|i| Ok((2 * i) as f32 + (2 * i + 1) as f32))
            .collect();
        assert_eq!(values(&out, 8), want);
        assert_eq!(m.runs, vec![8, 2, 2, 2, 2]);
    }

    #[test]
    fn a_lone_item_out_of_memory_says_so() {
        let mut m = Fake::new();
        m.oom_over = 0;
        let out = infer(&mut m, &batch(&[1.0, 2.0], 1, 1), 8);
        assert_eq!(values(&out, 1), vec![Err("device_out_of_memory".into())]);
    }

    #[test]
    fn padding_items_are_dropped_from_split_runs() {
        let mut m = Fake::new();
        m.poison = Some(5.0);
        m.ladder = true;
        // 3 real items padded to 8 (B = 8), one poisoned: each item alone at batch 1.
        let mut t = vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        t.resize(16, 0.0);
        let out = infer(&mut m, &batch(&t, 3, 8), 8);
        assert_eq!(
            values(&out, 3),
            vec![Ok(1.0), Err("inference".into()), Ok(9.0)]
        );
        assert_eq!(m.runs, vec![8, 1, 1, 1]);
    }

    #[test]
    fn streams_hand_out_each_runner_once_at_a_time() {
        let s = Streams::new(vec![Box::new(Fake::new()), Box::new(Fake::new())]);
        let a = s.take();
        let b = s.take();
        assert!(s.lock().is_empty());
        drop(a);
        let c = s.take();
        drop((b, c));
        assert_eq!(s.lock().len(), 2);
        // A third taker waits until one is given back.
        let s = std::sync::Arc::new(Streams::new(vec![Box::new(Fake::new())]));
        let held = s.take();
        let s2 = s.clone();
        let waiter = std::thread::spawn(move || {
            let _r = s2.take();
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        drop(held);
        waiter.join().unwrap();
    }
}

//! The recorded and the simulated device: model outputs recorded from a real run, answered
//! again without the models, optionally after the time a real device would take.
//!
//! With it every CPU stage of the engine (resize and normalise, box extraction, crops, the
//! classifier's rotation, CTC decoding) runs for real while the networks' arithmetic is
//! skipped, so a benchmark measures what the host can feed a device (`ocrfleet bench ocr
//! --simulate`). Outputs are kept per item, keyed by a hash of the item's whole input tensor,
//! so a replay may batch the items differently from the recording.
//!
//! **The simulated device** ([`Device`]) has `streams` lanes, each running one model run at a
//! time; a run waits for a free lane, then occupies it for what the [`Costs`] say its *padded*
//! tensor costs: the detector by canvas pixels, the recogniser by padded width, the classifier
//! by items, each times the padded batch size, plus a fixed cost per run. Alone that is an
//! idealised device: K streams give K times the throughput of one, where a real GPU gains only
//! what one run leaves of its compute idle; copies are free and ONNX Runtime costs the host
//! nothing. [`Realism`] adds what a real device charges: the input's host-to-device copy at a
//! stated PCIe rate (pageable or pinned), the host CPU that ONNX Runtime spends per run (spent
//! for real, so it shows in the host's CPU figures), and a stream-overlap factor (what each
//! stream after the first adds). `bench ocr` prints the idealised and the pessimistic device
//! side by side. Its busy time per stream is what `device_busy` reports.

use std::hash::Hasher;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};

use crate::error::Stage;
use crate::model::{Batch, ModelRunner, Padding, RunError, RunOutput};

/// Recorded outputs, per item, shared by every runner of every model.
#[derive(Default)]
pub struct Recording {
    items: Mutex<FxHashMap<u64, RunOutput>>,
}

impl Recording {
    /// Items recorded so far.
    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hash of one item's input: model stage, shape and every value. FxHash over the values'
    /// bits, two at a time (the std SipHash took ~5 ms per 960×736 page and inflated the
    /// replayed model time).
    fn key(stage: Stage, chw: [usize; 3], slot: &[f32]) -> u64 {
        let mut h = FxHasher::default();
        h.write_u64(stage as u64);
        for d in chw {
            h.write_usize(d);
        }
        let mut pairs = slot.chunks_exact(2);
        for p in &mut pairs {
            h.write_u64(u64::from(p[0].to_bits()) | (u64::from(p[1].to_bits()) << 32));
        }
        for r in pairs.remainder() {
            h.write_u32(r.to_bits());
        }
        h.finish()
    }

    fn store(&self, b: &Batch<'_>, out: &RunOutput) {
        self.store_keyed(&Self::keys(b), out);
    }

    /// Records `out`'s first items under `keys` ([`Recording::keys`] of their batch).
    fn store_keyed(&self, keys: &[u64], out: &RunOutput) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        for (i, &k) in keys.iter().enumerate() {
            items.insert(k, out.single(i));
        }
    }

    /// The keys of a batch's `n` items.
    fn keys(b: &Batch<'_>) -> Vec<u64> {
        let slot = b.slot();
        (0..b.n)
            .map(|i| Self::key(b.stage, b.chw, &b.tensor[i * slot..(i + 1) * slot]))
            .collect()
    }

    /// The recorded outputs of a batch's `run_n` items, whose [`Recording::keys`] are `keys`
    /// (padding items answered with a copy of the first real one); `None` when an item was
    /// never recorded.
    fn answer(&self, b: &Batch<'_>, keys: &[u64]) -> Option<RunOutput> {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let mut parts = Vec::with_capacity(b.run_n);
        for k in keys {
            parts.push(items.get(k)?);
        }
        let first = *parts.first()?;
        parts.resize(b.run_n, first);
        let cat = |f: &dyn Fn(&RunOutput) -> ndarray::ArrayViewD<'_, f32>| {
            ndarray::concatenate(
                ndarray::Axis(0),
                &parts.iter().map(|p| f(p)).collect::<Vec<_>>(),
            )
            .ok()
        };
        Some(RunOutput {
            main: cat(&|p| p.main.view())?,
            indices: match first.indices {
                Some(_) => Some(
                    ndarray::concatenate(
                        ndarray::Axis(0),
                        &parts
                            .iter()
                            .map(|p| p.indices.as_ref().map(|a| a.view()))
                            .collect::<Option<Vec<_>>>()?,
                    )
                    .ok()?,
                ),
                None => None,
            },
            space: match first.space {
                Some(_) => Some(
                    ndarray::concatenate(
                        ndarray::Axis(0),
                        &parts
                            .iter()
                            .map(|p| p.space.as_ref().map(|a| a.view()))
                            .collect::<Option<Vec<_>>>()?,
                    )
                    .ok()?,
                ),
                None => None,
            },
        })
    }
}

/// Runs the real model and records every output.
pub(crate) struct Recorder {
    pub(crate) inner: Box<dyn ModelRunner>,
    pub(crate) recording: Arc<Recording>,
}

impl ModelRunner for Recorder {
    fn run(&mut self, b: &Batch<'_>) -> Result<RunOutput, RunError> {
        let out = self.inner.run(b)?;
        self.recording.store(b, &out);
        Ok(out)
    }

    fn take_inner(&mut self) -> Option<Box<dyn ModelRunner>> {
        Some(std::mem::replace(&mut self.inner, Box::new(Taken)))
    }

    fn input_bytes_per_pixel(&self) -> usize {
        self.inner.input_bytes_per_pixel()
    }

    fn padding(&self) -> Padding {
        self.inner.padding()
    }

    fn sessions(&self) -> usize {
        self.inner.sessions()
    }

    fn per_shape(&self) -> bool {
        self.inner.per_shape()
    }

    fn metadata(&self, key: &str) -> Option<String> {
        self.inner.metadata(key)
    }

    fn arena_stats(&self) -> Option<Vec<(String, String)>> {
        self.inner.arena_stats()
    }
}

/// What a run costs on the simulated device, per model: `fixed_ms` per run plus `per_unit_ms`
/// per unit of its padded tensor, units being canvas megapixels per item for the detector,
/// hundreds of pixels of padded width per item for the recogniser, and items for the
/// classifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    #[serde(default)]
    pub fixed_ms: f64,
    #[serde(default)]
    pub per_unit_ms: f64,
}

/// The simulated device's costs (see [`Cost`]), loadable from a JSON file of measured
/// model-only figures (`tests/bench/costs/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    pub det: Cost,
    pub cls: Cost,
    pub rec: Cost,
    /// Concurrent runs the device takes (each a stream).
    #[serde(default = "one")]
    pub streams: usize,
}

fn one() -> usize {
    1
}

impl Costs {
    /// Milliseconds a run of `b` (at its padded size) occupies a stream.
    pub fn ms(&self, b: &Batch<'_>) -> f64 {
        let [_, h, w] = b.chw;
        let (c, units) = match b.stage {
            Stage::Detect => (self.det, (h * w) as f64 / 1e6),
            Stage::Classify => (self.cls, 1.0),
            _ => (self.rec, w as f64 / 100.0),
        };
        c.fixed_ms + c.per_unit_ms * units * b.run_n as f64
    }

    /// Scales every cost by `f` (to make the device the bottleneck on a small host, say).
    pub fn scaled(mut self, f: f64) -> Costs {
        for c in [&mut self.det, &mut self.cls, &mut self.rec] {
            c.fixed_ms *= f;
            c.per_unit_ms *= f;
        }
        self
    }
}

/// What a real device charges beyond the [`Costs`] of its compute (see the module
/// documentation). [`Realism::IDEAL`] charges nothing; [`Realism::PESSIMISTIC`] is the default
/// of the side-by-side figures. Its numbers are stated guesses, not measurements: no run of
/// this engine on a GPU has measured them yet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Realism {
    /// Host-to-device copy rate of a run's input from pageable memory, GB/s (0: free).
    /// Pageable copies go through the driver's staging buffer and the calling thread waits.
    pub h2d_pageable_gb_s: f64,
    /// The same from pinned memory (`--io-binding`), GB/s (0: free).
    pub h2d_pinned_gb_s: f64,
    /// Host CPU that ONNX Runtime spends per run (kernel launches, the allocator, shape
    /// checks), ms, spent busy on the calling thread before the run takes its stream.
    pub host_ms_per_run: f64,
    /// What each concurrent stream after the first adds to one stream's throughput: 1 is the
    /// idealised device (K streams, K times one), 0.3 makes two streams 1.3 times one.
    pub stream_overlap: f64,
}

impl Realism {
    /// Copies free, no host cost per run, streams that add up.
    pub const IDEAL: Realism = Realism {
        h2d_pageable_gb_s: 0.0,
        h2d_pinned_gb_s: 0.0,
        host_ms_per_run: 0.0,
        stream_overlap: 1.0,
    };

    /// Guesses on the slow side of what is published for a PCIe Gen4/Gen5 x16 host and ONNX
    /// Runtime's CUDA provider: pageable copies at 6 GB/s, pinned at 20 GB/s, 1 ms of host CPU
    /// per run (a few hundred kernel launches at a few µs each), a second stream adding 30 %.
    pub const PESSIMISTIC: Realism = Realism {
        h2d_pageable_gb_s: 6.0,
        h2d_pinned_gb_s: 20.0,
        host_ms_per_run: 1.0,
        stream_overlap: 0.3,
    };

    /// Milliseconds to copy `bytes` to the device.
    pub fn copy_ms(&self, bytes: usize, pinned: bool) -> f64 {
        let rate = if pinned {
            self.h2d_pinned_gb_s
        } else {
            self.h2d_pageable_gb_s
        };
        if rate > 0.0 {
            bytes as f64 / (rate * 1e6)
        } else {
            0.0
        }
    }

    /// A run's compute time `ms` when `busy` streams (itself included) share the device.
    pub fn shared_ms(&self, ms: f64, busy: usize) -> f64 {
        let k = busy.max(1) as f64;
        ms * k / (1.0 + self.stream_overlap.clamp(0.0, 1.0) * (k - 1.0))
    }
}

impl Default for Realism {
    fn default() -> Realism {
        Realism::IDEAL
    }
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`; zero where it cannot be read).
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live, aligned value.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Spends `ms` of this thread's CPU (a busy loop: the host cost is CPU, not a wait).
fn spin(ms: f64) {
    if ms <= 0.0 {
        return;
    }
    let until = Instant::now() + Duration::from_secs_f64(ms / 1000.0);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// The simulated device: `streams` lanes (see the module documentation), and the time they
/// were busy.
pub struct Device {
    pub costs: Costs,
    realism: Mutex<Realism>,
    lanes: Mutex<usize>,
    freed: Condvar,
    busy: Mutex<Duration>,
    /// The device's busy time per model (det, cls, rec), summed over streams.
    per_model: Mutex<[Duration; 3]>,
    /// CPU the simulator spent finding its answers (hashing each input), not the engine's.
    bookkeeping: Mutex<Duration>,
}

impl Device {
    pub fn new(costs: Costs) -> Device {
        Device {
            lanes: Mutex::new(costs.streams.max(1)),
            realism: Mutex::new(Realism::IDEAL),
            costs,
            freed: Condvar::new(),
            busy: Mutex::new(Duration::ZERO),
            per_model: Mutex::new([Duration::ZERO; 3]),
            bookkeeping: Mutex::new(Duration::ZERO),
        }
    }

    fn bookkeeping(&self, cpu: Duration) {
        *self.bookkeeping.lock().unwrap_or_else(|p| p.into_inner()) += cpu;
    }

    /// CPU seconds the simulator spent so far on its own bookkeeping (hashing each run's input
    /// to find its recorded output), on the engine's threads: work no real device makes the
    /// host do, which a measurement of the engine's host CPU subtracts.
    pub fn bookkeeping_seconds(&self) -> f64 {
        self.bookkeeping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_secs_f64()
    }

    /// What the device charges besides compute from now on (see [`Realism`]).
    pub fn set_realism(&self, r: Realism) {
        *self.realism.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    pub fn realism(&self) -> Realism {
        *self.realism.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Occupies a lane for what `b` costs: its host CPU first, then its input's copy of
    /// `input_bytes` and its compute, shared with the streams busy beside it.
    fn occupy(&self, b: &Batch<'_>, input_bytes: usize, pinned: bool) {
        let r = self.realism();
        spin(r.host_ms_per_run);
        let busy = {
            let mut free = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            while *free == 0 {
                free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
            }
            *free -= 1;
            self.costs.streams.max(1) - *free
        };
        let ms = r.copy_ms(input_bytes, pinned) + r.shared_ms(self.costs.ms(b), busy);
        let t = Instant::now();
        if ms > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(ms / 1000.0));
        }
        let took = t.elapsed();
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) += took;
        let m = match b.stage {
            Stage::Detect => 0,
            Stage::Classify => 1,
            _ => 2,
        };
        self.per_model.lock().unwrap_or_else(|p| p.into_inner())[m] += took;
        *self.lanes.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.freed.notify_one();
    }

    /// Stream-seconds busy so far (divide by streams × wall time for the busy share).
    pub fn busy_seconds(&self) -> f64 {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_secs_f64()
    }

    /// Busy seconds per model: det, cls, rec. (tests only)
    #[cfg(test)]
    pub fn busy_per_model(&self) -> [f64; 3] {
        self.per_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|d| d.as_secs_f64())
    }
}

/// Answers runs from a [`Recording`] on a simulated [`Device`].
pub(crate) struct Simulated {
    pub(crate) recording: Arc<Recording>,
    pub(crate) device: Arc<Device>,
    /// Padding sizes as the real runner's (so that the simulated tensors are the real ones).
    pub(crate) ladder: Box<dyn ModelRunner>,
    /// Pad batches to the CUDA ladder (1, ⌈B/4⌉, B) whatever the real runner does, to simulate
    /// the CUDA path's tensors from a recording made on CPU.
    pub(crate) pad_like_cuda: bool,
    /// Inputs are copied from pinned memory (`--io-binding`), at the pinned rate.
    pub(crate) pinned: bool,
    /// An input never recorded runs on `ladder` (the real runner), uncharged, and is recorded.
    pub(crate) record_through: bool,
}

/// What is left in a wrapper whose runner was taken out: fails every run.
struct Taken;

impl ModelRunner for Taken {
    fn run(&mut self, _: &Batch<'_>) -> Result<RunOutput, RunError> {
        Err(RunError::from_message(
            "this runner was taken out of its wrapper",
        ))
    }
}

impl ModelRunner for Simulated {
    fn take_inner(&mut self) -> Option<Box<dyn ModelRunner>> {
        Some(std::mem::replace(&mut self.ladder, Box::new(Taken)))
    }

    fn run(&mut self, b: &Batch<'_>) -> Result<RunOutput, RunError> {
        // Hashing the input to find its recording is the simulator's own work, which no real
        // device does: its CPU is counted apart ([`Device::bookkeeping_seconds`]).
        let cpu = thread_cpu();
        let keys = Recording::keys(b);
        self.device.bookkeeping(thread_cpu().saturating_sub(cpu));
        let answer = self.recording.answer(b, &keys);
        if answer.is_none() && self.record_through {
            let out = self.ladder.run(b)?;
            self.recording.store_keyed(&keys, &out);
            return Ok(out);
        }
        let [_, h, w] = b.chw;
        let bytes = b.run_n * h * w * self.ladder.input_bytes_per_pixel();
        self.device.occupy(b, bytes, self.pinned);
        answer.ok_or_else(|| RunError {
            message: "recorded device: this input was not recorded".into(),
            out_of_memory: false,
        })
    }

    fn padding(&self) -> Padding {
        if self.pad_like_cuda {
            Padding::Ladder
        } else {
            self.ladder.padding()
        }
    }

    fn sessions(&self) -> usize {
        self.ladder.sessions()
    }

    fn input_bytes_per_pixel(&self) -> usize {
        self.ladder.input_bytes_per_pixel()
    }

    fn per_shape(&self) -> bool {
        self.ladder.per_shape()
    }

    fn metadata(&self, key: &str) -> Option<String> {
        self.ladder.metadata(key)
    }

    fn arena_stats(&self) -> Option<Vec<(String, String)>> {
        self.ladder.arena_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::Fake;

    fn batch(stage: Stage, tensor: &[f32], n: usize, run_n: usize, chw: [usize; 3]) -> Batch<'_> {
        Batch {
            stage,
            tensor,
            n,
            run_n,
            chw,
        }
    }

    #[test]
    fn costs_follow_the_padded_tensor() {
        let c = Costs {
            det: Cost {
                fixed_ms: 1.0,
                per_unit_ms: 4.0,
            },
            cls: Cost {
                fixed_ms: 0.0,
                per_unit_ms: 0.05,
            },
            rec: Cost {
                fixed_ms: 0.5,
                per_unit_ms: 0.1,
            },
            streams: 1,
        };
        let t = [0.0f32; 1];
        // 2 real items padded to 8 on a 1000×1000 canvas: 1 + 4 × 1 Mpx × 8.
        assert_eq!(c.ms(&batch(Stage::Detect, &t, 2, 8, [3, 1000, 1000])), 33.0);
        // Recogniser by padded width: 0.5 + 0.1 × 3.2 × 4.
        assert!((c.ms(&batch(Stage::Recognize, &t, 4, 4, [3, 48, 320])) - 1.78).abs() < 1e-9);
        assert!((c.ms(&batch(Stage::Classify, &t, 3, 3, [3, 48, 192])) - 0.15).abs() < 1e-9);
        assert_eq!(c.scaled(2.0).det.per_unit_ms, 8.0);
    }

    #[test]
    fn a_recorded_run_is_answered_again_whatever_the_batching() {
        let recording = Arc::new(Recording::default());
        let mut rec = Recorder {
            inner: Box::new(Fake::new()),
            recording: recording.clone(),
        };
        let t: Vec<f32> = (0..8).map(|x| x as f32).collect();
        rec.run(&batch(Stage::Recognize, &t, 4, 4, [1, 1, 2]))
            .unwrap();
        assert_eq!(recording.len(), 4);
        let device = Arc::new(Device::new(Costs::default()));
        let mut sim = Simulated {
            recording,
            device,
            ladder: Box::new(Fake::new()),
            pad_like_cuda: false,
            pinned: false,
            record_through: false,
        };
        // Items 2 and 3 as a run of 2, padded to 3.
        let mut part = t[4..8].to_vec();
        part.extend([0.0, 0.0]);
        let out = sim
            .run(&batch(Stage::Recognize, &part, 2, 3, [1, 1, 2]))
            .unwrap();
        assert_eq!(out.main.shape(), &[3, 1]);
        assert_eq!((out.main[[0, 0]], out.main[[1, 0]]), (9.0, 13.0));
        let unknown = [100.0, 1.0];
        assert!(sim
            .run(&batch(Stage::Recognize, &unknown, 1, 1, [1, 1, 2]))
            .is_err());
        // Recording through: the unknown input runs on the real runner once, uncharged, and
        // is the device's from then on.
        sim.record_through = true;
        let busy = sim.device.busy_seconds();
        let out = sim
            .run(&batch(Stage::Recognize, &unknown, 1, 1, [1, 1, 2]))
            .unwrap();
        assert_eq!(out.main[[0, 0]], 101.0);
        assert_eq!(sim.recording.len(), 5);
        assert_eq!(sim.device.busy_seconds(), busy);
        sim.ladder = Box::new(Taken);
        let again = sim
            .run(&batch(Stage::Recognize, &unknown, 1, 1, [1, 1, 2]))
            .unwrap();
        assert_eq!(again.main[[0, 0]], 101.0);
    }

    #[test]
    fn the_pessimistic_device_charges_copies_and_shares_its_streams() {
        let p = Realism::PESSIMISTIC;
        // A float32 960×736 canvas (12 bytes a pixel), batch 8: 67.8 MB.
        let bytes = 8 * 960 * 736 * 12;
        assert!((p.copy_ms(bytes, false) - 11.30496).abs() < 1e-6);
        assert!((p.copy_ms(bytes, true) - 3.391488).abs() < 1e-6);
        assert_eq!(Realism::IDEAL.copy_ms(bytes, false), 0.0);
        // Alone a run takes its cost; beside another, 2 / 1.3 of it (two streams: 1.3 times one).
        assert_eq!(p.shared_ms(10.0, 1), 10.0);
        assert!((p.shared_ms(10.0, 2) - 20.0 / 1.3).abs() < 1e-9);
        assert_eq!(Realism::IDEAL.shared_ms(10.0, 2), 10.0);
        assert_eq!(Realism::default(), Realism::IDEAL);
    }

    #[test]
    fn a_run_on_the_pessimistic_device_occupies_its_stream_for_copy_and_compute() {
        let costs = Costs {
            rec: Cost {
                fixed_ms: 20.0,
                per_unit_ms: 0.0,
            },
            streams: 1,
            ..Costs::default()
        };
        let d = Device::new(costs);
        d.set_realism(Realism {
            h2d_pageable_gb_s: 1.0,
            ..Realism::PESSIMISTIC
        });
        let t = [0.0f32; 2];
        // 30 MB at 1 GB/s: 30 ms of copy, then 20 ms of compute.
        d.occupy(
            &batch(Stage::Recognize, &t, 1, 1, [1, 1, 2]),
            30_000_000,
            false,
        );
        assert!(d.busy_seconds() >= 0.049, "{}", d.busy_seconds());
    }

    #[test]
    fn streams_bound_the_runs_in_flight_and_busy_time_adds_up() {
        let costs = Costs {
            rec: Cost {
                fixed_ms: 40.0,
                per_unit_ms: 0.0,
            },
            streams: 2,
            ..Costs::default()
        };
        let d = Arc::new(Device::new(costs));
        let t0 = Instant::now();
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let t = [0.0f32; 2];
                    d.occupy(&batch(Stage::Recognize, &t, 1, 1, [1, 1, 2]), 0, false);
                })
            })
            .collect();
        for r in runs {
            r.join().unwrap();
        }
        let wall = t0.elapsed().as_secs_f64();
        // 4 runs of 40 ms on 2 streams: two rounds, 160 ms of stream time.
        assert!(wall >= 0.079, "{wall}");
        assert!(d.busy_seconds() >= 0.159, "{}", d.busy_seconds());
        assert!(d.busy_per_model()[2] >= 0.159);
    }
}

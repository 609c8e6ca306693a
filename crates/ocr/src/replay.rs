//! The replay device: model outputs recorded from a real run, answered again without the models.
//!
//! With it, every CPU stage of the engine (resize and normalise, box extraction, crops, the
//! classifier's rotation, CTC decoding) runs for real while the networks' arithmetic is
//! skipped, so a benchmark measures the host's ceiling: the images per second that the CPU
//! stages could feed to an infinitely fast device (`ocrfleet bench ocr --replay`). Outputs are
//! kept per item, keyed by a hash of the item's whole input tensor, so a replay may batch the
//! items differently from the recording. Answering costs a hash of the input and a copy of
//! the output, about what a device's host-to-device and device-to-host copies cost; it is
//! counted as model time ("in run %").

use std::hash::Hasher;

use rustc_hash::{FxHashMap, FxHasher};

use ndarray::Axis;

use crate::engine::{BatchOutput, RunOutput};
use crate::error::{OcrError, Stage};

/// Recorded outputs, per item.
#[derive(Default)]
pub(crate) struct Recording {
    items: FxHashMap<u64, RunOutput>,
    /// True once recording has stopped and runs are answered from `items`.
    pub(crate) replaying: bool,
    /// A simulated device: milliseconds per batch item that answering a det, cls or rec run
    /// waits, as the calling thread waits for a device (zero: answer at once).
    pub(crate) latency_ms: crate::ModelTime,
}

impl Recording {
    /// Items recorded so far.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
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

    /// Stores the first `n` items of a real batch run.
    pub(crate) fn store(
        &mut self,
        stage: Stage,
        chw: [usize; 3],
        tensor: &[f32],
        n: usize,
        out: &RunOutput,
    ) {
        let slot = chw.iter().product::<usize>();
        for i in 0..n {
            let item = RunOutput {
                main: out
                    .main
                    .index_axis(Axis(0), i)
                    .insert_axis(Axis(0))
                    .to_owned(),
                indices: out
                    .indices
                    .as_ref()
                    .map(|a| a.index_axis(Axis(0), i).insert_axis(Axis(0)).to_owned()),
                space: out
                    .space
                    .as_ref()
                    .map(|a| a.index_axis(Axis(0), i).insert_axis(Axis(0)).to_owned()),
            };
            self.items.insert(
                Self::key(stage, chw, &tensor[i * slot..(i + 1) * slot]),
                item,
            );
        }
    }

    /// Answers the first `n` items of a batch padded to `run_n` from the recording, after the
    /// simulated device's time for `run_n` items; an input never recorded fails its item.
    pub(crate) fn answer(
        &self,
        stage: Stage,
        chw: [usize; 3],
        tensor: &[f32],
        (n, run_n): (usize, usize),
    ) -> BatchOutput {
        let per_item = match stage {
            Stage::Detect => self.latency_ms.det,
            Stage::Classify => self.latency_ms.cls,
            _ => self.latency_ms.rec,
        };
        if per_item > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(
                per_item * run_n as f64 / 1000.0,
            ));
        }
        let slot = chw.iter().product::<usize>();
        BatchOutput::PerItem(
            (0..n)
                .map(|i| {
                    self.items
                        .get(&Self::key(stage, chw, &tensor[i * slot..(i + 1) * slot]))
                        .cloned()
                        .ok_or_else(|| OcrError::Inference {
                            stage,
                            message: "replay: this input was not recorded".into(),
                        })
                })
                .collect(),
        )
    }
}

//! Text recognition: CTC models at height 48, widths bucketed.
//!
//! Crops from every image of a batch are pooled, sorted by width and grouped into a small,
//! fixed set of width buckets, so the model sees few distinct shapes (each new shape costs a
//! one-off cuDNN search on GPU) and little padding (cost grows with width). A crop's tensor
//! depends only on the crop and its bucket, never on its batch-mates.

pub(crate) mod stage;

use fast_image_resize::Resizer;
use image::RgbImage;
use ndarray::{ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::preprocess::{resize_to_height, width_at_height, write_planes_zero_padded};

/// Recognition settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecConfig {
    /// Width buckets (pixels at height 48), ascending. A crop is padded to the smallest bucket
    /// that holds it; crops wider than the last are squeezed into it. Empty (the default)
    /// picks by device, see [`RecConfig::CPU_WIDTHS`] and [`RecConfig::CUDA_WIDTHS`].
    pub widths: Vec<u32>,
    /// Crops per recogniser run; 0 picks by device: 8 on CPU (larger CPU batches measured
    /// slower: 70 lines/s at 4, 54 at 32 on 2 threads), 32 on CUDA. Default 0.
    pub batch_size: usize,
    /// Lines whose score is below this are dropped. Default 0.5.
    pub drop_score: f32,
    /// Load the recogniser with the CTC argmax appended (`rec.argmax.onnx`, made by
    /// `models/make_argmax.py` from `models/fetch.sh`): the model returns the best class and
    /// its probability per time step instead of the whole softmax (v4: 2 values instead of
    /// 6,625 per step), so the device copies and the host scans 3,000× less. The decoded text
    /// is identical (tests/parity.rs). Default true.
    pub argmax_in_model: bool,
    /// Put back the spaces between Latin words that the recogniser dropped, from its CTC
    /// alignment (see [`crate::words`]).
    pub spaces: SpaceRule,
}

impl RecConfig {
    /// CPU width buckets: every 32 px from 64 to 2560. On CPU a new shape costs nothing and
    /// the model's cost grows with width, so a crop is padded by less than 32 px. Measured
    /// with `ocrfleet bench ocr --threads 1 --stages rec` on 12 rendered receipt pages (920
    /// crops): 41.0 lines/s, against 25.6 with [`RecConfig::CUDA_WIDTHS`], whose 320 px floor
    /// pads a 100 px price to 320. The text is batch-invariant either way (a crop's tensor
    /// depends on the crop and its bucket only); crates/ocr/docs/accuracy.md has the accuracy on
    /// real scans.
    pub const CPU_WIDTHS: (u32, u32, u32) = (64, 2560, 32);
    /// CUDA width buckets: few, because each new input shape costs a cuDNN plan (75-900 ms
    /// measured on an H200) and, with a session per shape, GPU memory; fine enough that little
    /// of the tensor is padding. On the 45 real pages (2,197 crops; `ocrfleet bench ocr
    /// --padding-report --images .eval/real45`, deploy/docs/performance.md), these 11 widths pad
    /// 24.1 % of the recogniser's tensors with batches padded to 1, B/4 or B, against 35.4 %
    /// with the earlier 7 (320, 480, 640, 960, 1280, 1920, 2560), for 33 sessions per runner
    /// instead of 21 (the cap is 48).
    pub const CUDA_WIDTHS: [u32; 11] = [160, 240, 320, 400, 480, 640, 800, 960, 1280, 1920, 2560];
}

impl Default for RecConfig {
    fn default() -> Self {
        Self {
            widths: Vec::new(),
            batch_size: 0,
            drop_score: 0.5,
            argmax_in_model: true,
            spaces: SpaceRule::default(),
        }
    }
}

/// When a gap between two characters (of scripts written with spaces) is a space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpaceRule {
    /// Off: keep the recogniser's own spaces only.
    pub enabled: bool,
    /// A space when the space class's probability reaches this on a step between the two
    /// characters (needs the `space` output of `rec.argmax.onnx`, or the full softmax).
    /// Default 0.05 (FUNSD training forms, v4: 0.02 put back 194 with 9 wrong, 0.05 183 with
    /// 4, 0.1 160 with 1).
    pub space_prob: f32,
    /// Or when the distance from one character's first step to the next one's exceeds the
    /// line's median distance by at least this many steps. Default 3 (a wide gap, such as two
    /// table columns in one box: +6 right and +4 wrong on the same forms).
    pub min_extra: f32,
    /// The pitch rule needs at least this many character pairs on the line. Default 3.
    pub min_pairs: usize,
}

impl Default for SpaceRule {
    fn default() -> Self {
        SpaceRule {
            enabled: true,
            space_prob: 0.05,
            min_extra: 3.0,
            min_pairs: 3,
        }
    }
}

/// Recogniser input height.
pub const HEIGHT: u32 = 48;

/// The bucket width for a crop of `w`×`h`: the smallest bucket that holds it at height 48,
/// else the largest (the crop is then squeezed into it).
pub fn bucket_width(w: u32, h: u32, widths: &[u32]) -> u32 {
    let want = width_at_height(w, h, HEIGHT, u32::MAX);
    widths
        .iter()
        .copied()
        .find(|&b| b >= want)
        .unwrap_or(*widths.last().expect("validated non-empty"))
}

/// Writes one `[3, 48, bucket]` slot whole (the crop, then zeros).
pub fn fill(resizer: &mut Resizer, crop: &RgbImage, bucket: u32, slot: &mut [f32]) {
    let img = resize_to_height(resizer, crop, HEIGHT, bucket);
    write_planes_zero_padded(&img, slot, bucket as usize, HEIGHT as usize);
}

/// One character of a decoded line and where the recogniser read it: the first and last time
/// step of its run of equal best classes. A time step covers `input width / steps` pixels of
/// the recogniser's input (8 for PP-OCR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Glyph {
    /// Byte range of the character in [`Decoded::text`].
    pub start: usize,
    pub end: usize,
    pub first: u32,
    pub last: u32,
}

/// A decoded line: its text, its score, and the time steps of each character.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    pub text: String,
    /// Mean probability of the kept steps (0 when nothing is kept).
    pub score: f32,
    /// One per dictionary symbol kept, in order.
    pub glyphs: Vec<Glyph>,
    /// Time steps of the recogniser's output for this line.
    pub steps: u32,
    /// The space class's probability at each step (empty when the model does not say).
    pub space: Vec<f32>,
}

/// The character table: index 0 is the CTC blank, then the model's `character` metadata
/// lines, then a space.
#[derive(Debug, Clone)]
pub struct Dictionary {
    chars: Vec<String>,
}

impl Dictionary {
    /// Builds the table from the `character` metadata value (one symbol per line).
    pub fn from_metadata(character: &str) -> Dictionary {
        let mut chars = vec![String::new()];
        chars.extend(character.lines().map(str::to_owned));
        chars.push(" ".to_owned());
        Dictionary { chars }
    }

    /// Number of classes including the blank.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always false: the blank is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Greedy CTC decoding of one line's `[T, C]` probabilities: best class per step,
    /// repeats merged, blanks removed. The score is the mean probability of the kept steps
    /// (0 when nothing is kept).
    pub fn decode(&self, probs: ArrayView2<'_, f32>) -> Decoded {
        let space_class = self.chars.len() - 1;
        let space = probs
            .rows()
            .into_iter()
            .map(|row| row.get(space_class).copied().unwrap_or(0.0))
            .collect();
        let mut d = self.collapse(probs.rows().into_iter().map(|row| {
            // The first of equal maxima, as ONNX's ArgMax (select_last_index = 0).
            let (mut best, mut best_p) = (0usize, f32::MIN);
            for (i, &p) in row.iter().enumerate() {
                if p > best_p {
                    best = i;
                    best_p = p;
                }
            }
            (best, best_p)
        }));
        d.space = space;
        d
    }

    /// The same decoding from the best class and its probability per step, as the
    /// recogniser with the argmax appended returns them (`models/make_argmax.py`), with the
    /// space class's probability per step when the model returns it.
    pub fn decode_best(
        &self,
        indices: ArrayView1<'_, i64>,
        scores: ArrayView1<'_, f32>,
        space: Option<ArrayView1<'_, f32>>,
    ) -> Decoded {
        let mut d = self.collapse(
            indices
                .iter()
                .zip(scores)
                .map(|(&i, &p)| (usize::try_from(i).unwrap_or(usize::MAX), p)),
        );
        d.space = space.map(|s| s.to_vec()).unwrap_or_default();
        d
    }

    /// CTC collapse of (best class, its probability) per time step.
    fn collapse(&self, steps: impl Iterator<Item = (usize, f32)>) -> Decoded {
        let mut d = Decoded::default();
        let (mut sum, mut n) = (0f32, 0u32);
        let mut prev = usize::MAX;
        for (t, (best, best_p)) in steps.enumerate() {
            let t = t as u32;
            d.steps = t + 1;
            if best != 0 && best == prev {
                if let Some(g) = d.glyphs.last_mut() {
                    g.last = t;
                }
            } else if best != 0 {
                if let Some(c) = self.chars.get(best) {
                    let start = d.text.len();
                    d.text.push_str(c);
                    d.glyphs.push(Glyph {
                        start,
                        end: d.text.len(),
                        first: t,
                        last: t,
                    });
                    sum += best_p;
                    n += 1;
                }
            }
            prev = best;
        }
        d.score = if n == 0 { 0.0 } else { sum / n as f32 };
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn buckets() {
        let widths = [320, 480, 640];
        assert_eq!(bucket_width(100, 48, &widths), 320);
        assert_eq!(bucket_width(321, 48, &widths), 480);
        assert_eq!(bucket_width(3000, 48, &widths), 640);
        assert_eq!(bucket_width(200, 24, &widths), 480); // 400 wide at height 48
    }

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        let d = Dictionary::from_metadata("a\nb");
        assert_eq!(d.len(), 4); // blank, a, b, space
        let p = array![
            [0.1, 0.8, 0.1, 0.0], // a
            [0.1, 0.6, 0.3, 0.0], // a (repeat)
            [0.9, 0.0, 0.1, 0.0], // blank
            [0.1, 0.7, 0.2, 0.0], // a
            [0.0, 0.0, 0.0, 1.0], // space
            [0.1, 0.0, 0.9, 0.0], // b
        ];
        let decoded = d.decode(p.view());
        let (text, score) = (decoded.text.clone(), decoded.score);
        assert_eq!(text, "aa b");
        // Each character with the time steps of its run: "a" at 0..=1, "a" at 3, " " at 4, "b" at 5.
        let runs: Vec<(u32, u32)> = decoded.glyphs.iter().map(|g| (g.first, g.last)).collect();
        assert_eq!(runs, [(0, 1), (3, 3), (4, 4), (5, 5)]);
        assert_eq!(decoded.steps, 6);
        // The argmax model's form decodes to the same text and score.
        let idx = ndarray::Array1::from(vec![1i64, 1, 0, 1, 3, 2]);
        let best = ndarray::Array1::from(vec![0.8f32, 0.6, 0.9, 0.7, 1.0, 0.9]);
        let space = ndarray::Array1::from(vec![0.0f32, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(
            d.decode_best(idx.view(), best.view(), Some(space.view())),
            decoded
        );
        assert_eq!(decoded.space, space.to_vec());
        assert!((score - (0.8 + 0.7 + 1.0 + 0.9) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn all_blank_is_empty_with_zero_score() {
        let d = Dictionary::from_metadata("a");
        let p = array![[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]];
        let decoded = d.decode(p.view());
        assert_eq!((decoded.text.as_str(), decoded.score), ("", 0.0));
        assert!(decoded.glyphs.is_empty());
    }
}

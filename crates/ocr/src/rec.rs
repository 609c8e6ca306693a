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

use crate::preprocess::{resize_to_height, width_at_height, write_planes};

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

/// Fills one `[3, 48, bucket]` slot (zeroed beforehand).
pub fn fill(resizer: &mut Resizer, crop: &RgbImage, bucket: u32, slot: &mut [f32]) {
    let img = resize_to_height(resizer, crop, HEIGHT, bucket);
    write_planes(&img, slot, bucket as usize, HEIGHT as usize);
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

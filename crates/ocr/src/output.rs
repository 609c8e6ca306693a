//! What the engine returns for each image. Serialises to the `ocrfleet ocr --ndjson` shape.

use serde::{Deserialize, Serialize};

use crate::words::Word;

/// One recognised text line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub text: String,
    /// Mean CTC probability of the kept characters, 0..1.
    pub score: f32,
    /// Corners in original image pixels: top-left, top-right, bottom-right, bottom-left.
    #[serde(rename = "box")]
    pub bbox: [[i32; 2]; 4],
    /// The line's words with their boxes, from the recogniser's alignment (see
    /// [`crate::words`]): split at spaces and where the script changes between CJK and others.
    #[serde(default)]
    pub words: Vec<Word>,
}

/// Milliseconds spent per stage on this image. Batched stages are shared out: an image's
/// share of a batch is the batch's time divided by its items (images for detection, crops
/// for classification and recognition).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub decode: f64,
    pub det: f64,
    pub crop: f64,
    pub cls: f64,
    pub rec: f64,
    pub total: f64,
}

/// The OCR result for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageText {
    pub width: u32,
    pub height: u32,
    /// Lines in reading order.
    pub lines: Vec<Line>,
    /// The lines' text joined with newlines.
    pub text: String,
    #[serde(rename = "timings_ms")]
    pub timings: Timings,
}

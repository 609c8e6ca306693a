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
    /// The page the line is on, from 1 (a multi-page TIFF has several; see
    /// [`ImageText::from_pages`]).
    #[serde(default = "first_page")]
    pub page: u32,
}

fn first_page() -> u32 {
    1
}

fn ocr_once() -> Vec<TextSource> {
    vec![TextSource::Ocr]
}

/// Where a page's text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextSource {
    /// Recognised by the engine from the page's pixels.
    Ocr,
    /// Read from a PDF page's text layer (exact, no engine run).
    Text,
}

impl TextSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TextSource::Ocr => "ocr",
            TextSource::Text => "text",
        }
    }
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
    /// Lines in reading order, page after page.
    pub lines: Vec<Line>,
    /// The lines' text joined with newlines; pages are separated by an empty line.
    pub text: String,
    /// Pages read: 1, or a multi-page TIFF's or a PDF's count. `width` and `height` are the
    /// first page's.
    #[serde(default = "first_page")]
    pub pages: u32,
    /// Where each page's text came from, page after page: OCR, or a PDF's text layer.
    #[serde(default = "ocr_once")]
    pub sources: Vec<TextSource>,
    #[serde(rename = "timings_ms")]
    pub timings: Timings,
}

impl ImageText {
    /// One result for a file from its pages' results, in page order: every line keeps its page
    /// number, the texts are joined with an empty line between pages, and the timings add up.
    /// `None` for no pages.
    pub fn from_pages(pages: Vec<ImageText>) -> Option<ImageText> {
        let mut it = pages.into_iter();
        let mut out = it.next()?;
        let mut n = 1;
        for mut page in it {
            n += 1;
            for l in &mut page.lines {
                l.page = n;
            }
            out.lines.append(&mut page.lines);
            out.sources.append(&mut page.sources);
            if !page.text.is_empty() {
                if !out.text.is_empty() {
                    out.text.push_str("\n\n");
                }
                out.text.push_str(&page.text);
            }
            let (a, b) = (&mut out.timings, page.timings);
            a.decode += b.decode;
            a.det += b.det;
            a.crop += b.crop;
            a.cls += b.cls;
            a.rec += b.rec;
            a.total += b.total;
        }
        out.pages = n;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(texts: &[&str]) -> ImageText {
        ImageText {
            width: 10,
            height: 20,
            lines: texts
                .iter()
                .map(|t| Line {
                    text: t.to_string(),
                    score: 1.0,
                    bbox: [[0, 0]; 4],
                    words: Vec::new(),
                    page: 1,
                })
                .collect(),
            text: texts.join("\n"),
            pages: 1,
            sources: vec![TextSource::Ocr],
            timings: Timings {
                det: 1.0,
                total: 2.0,
                ..Timings::default()
            },
        }
    }

    #[test]
    fn pages_are_joined_in_order_with_their_numbers() {
        let t = ImageText::from_pages(vec![page(&["a", "b"]), page(&[]), page(&["c"])]).unwrap();
        assert_eq!(t.pages, 3);
        assert_eq!(t.sources, vec![TextSource::Ocr; 3]);
        assert_eq!(t.text, "a\nb\n\nc");
        let where_: Vec<(&str, u32)> = t.lines.iter().map(|l| (l.text.as_str(), l.page)).collect();
        assert_eq!(where_, vec![("a", 1), ("b", 1), ("c", 3)]);
        assert_eq!((t.timings.det, t.timings.total), (3.0, 6.0));
        assert!(ImageText::from_pages(Vec::new()).is_none());
    }
}

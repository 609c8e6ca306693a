//! A page's text layer: whether it can be trusted, and its lines and words in reading order.
//! Pure functions over the characters a renderer child lists ([`RawChar`]); unit-tested without
//! PDFium.
//!
//! **Usable** (the page is read from its layer, not rendered and OCRed) when all of these hold:
//! - at least [`MIN_CHARS`] characters are drawn visibly with their centre inside the page;
//! - at most [`MAX_SUSPICIOUS`] of the layer's characters are replacement characters (U+FFFD),
//!   private-use code points or control characters: what a font without a Unicode map (or a
//!   broken one) gives when extracted;
//! - at most [`MAX_INVISIBLE`] of them are invisible (text render mode 3): that is the layer an
//!   OCR tool writes under a scan, of unknown quality, so the scan is read again;
//! - images cover less than [`MAX_IMAGE_COVER`] of the page: text inside a scan or a photo is
//!   not in the layer;
//! - no annotation shows anything on the page (a filled form field, free text, a stamp): their
//!   text is not in the layer either, and a viewer shows it.
//!
//! **Lines** follow PDFium's own line breaks; words are split at spaces. **Reading order**:
//! lines running in the page's main direction are ordered by a recursive XY cut (blocks split
//! at wide horizontal gaps, then at vertical gaps, so that two columns are read one after the
//! other), then the lines in other directions (a rotated margin note) follow in their own
//! order. Ligatures (U+FB00 to U+FB06) are written out (`ﬁ` → `fi`), as OCR reads them.

use ocrfleet_ocr::{Line, Word};

use crate::protocol::{PageData, RawChar};

/// Visible characters inside the page needed for a usable layer.
pub const MIN_CHARS: usize = 16;
/// Largest share of suspicious characters (replacement, private use, control) in a usable layer.
pub const MAX_SUSPICIOUS: f32 = 0.05;
/// Largest share of invisible characters in a usable layer.
pub const MAX_INVISIBLE: f32 = 0.10;
/// Largest share of the page covered by images in a usable layer.
pub const MAX_IMAGE_COVER: f32 = 0.5;

/// What a page's layer is worth.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Usable,
    /// Not usable, and why (for logs and the document's page source).
    Unusable(String),
}

/// Counts of a layer's characters (drawn ones; PDFium's inserted spaces and breaks excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub drawn: usize,
    pub visible_inside: usize,
    pub suspicious: usize,
    pub invisible: usize,
}

fn suspicious(c: u32) -> bool {
    matches!(c, 0..=8 | 0x0B | 0x0C | 0x0E..=0x1F | 0x7F..=0x9F | 0xFFFD | 0xE000..=0xF8FF)
        || c >= 0xF0000
        || char::from_u32(c).is_none()
}

fn is_break(c: u32) -> bool {
    c == u32::from('\r') || c == u32::from('\n')
}

fn is_space(c: u32) -> bool {
    char::from_u32(c).is_some_and(char::is_whitespace)
}

fn centre(q: &[f32; 8]) -> (f32, f32) {
    (
        (q[0] + q[2] + q[4] + q[6]) / 4.0,
        (q[1] + q[3] + q[5] + q[7]) / 4.0,
    )
}

/// Counts the layer's characters (see [`Counts`]).
pub fn counts(page: &PageData) -> Counts {
    let mut n = Counts::default();
    for c in page
        .chars
        .iter()
        .filter(|c| !c.generated && !is_space(c.unicode))
    {
        n.drawn += 1;
        if suspicious(c.unicode) {
            n.suspicious += 1;
        }
        if !c.visible {
            n.invisible += 1;
            continue;
        }
        let (x, y) = centre(&c.quad);
        if x >= 0.0 && y >= 0.0 && x <= page.width_px as f32 && y <= page.height_px as f32 {
            n.visible_inside += 1;
        }
    }
    n
}

/// Whether the page's layer is usable (see the module documentation).
pub fn judge(page: &PageData) -> Verdict {
    let n = counts(page);
    let share = |k: usize| k as f32 / n.drawn.max(1) as f32;
    if n.drawn == 0 {
        return Verdict::Unusable("no text layer".into());
    }
    if share(n.invisible) > MAX_INVISIBLE {
        return Verdict::Unusable(format!(
            "an invisible text layer ({} of {} characters), as OCR tools write under a scan: read again",
            n.invisible, n.drawn
        ));
    }
    if share(n.suspicious) > MAX_SUSPICIOUS {
        return Verdict::Unusable(format!(
            "{} of {} characters are replacement, private-use or control characters (a font without a Unicode map)",
            n.suspicious, n.drawn
        ));
    }
    if page.image_cover >= MAX_IMAGE_COVER {
        return Verdict::Unusable(format!(
            "images cover {:.0} % of the page",
            page.image_cover * 100.0
        ));
    }
    if page.annotations > 0 {
        return Verdict::Unusable(format!(
            "{} annotation(s) or form field(s) shown on the page, whose text is not in the layer",
            page.annotations
        ));
    }
    if n.visible_inside < MIN_CHARS {
        return Verdict::Unusable(format!(
            "{} visible characters inside the page, fewer than {MIN_CHARS}",
            n.visible_inside
        ));
    }
    Verdict::Usable
}

/// The text of a character, with ligatures written out.
fn push_char(s: &mut String, c: u32) {
    let expanded = match c {
        0xFB00 => "ff",
        0xFB01 => "fi",
        0xFB02 => "fl",
        0xFB03 => "ffi",
        0xFB04 => "ffl",
        0xFB05 | 0xFB06 => "st",
        _ => {
            if let Some(ch) = char::from_u32(c) {
                s.push(ch);
            }
            return;
        }
    };
    s.push_str(expanded);
}

/// A line of the layer while it is built: its characters (drawn ones and PDFium's spaces).
#[derive(Debug, Clone, Default)]
struct Run {
    chars: Vec<RawChar>,
}

impl Run {
    fn drawn(&self) -> impl Iterator<Item = &RawChar> {
        self.chars.iter().filter(|c| !is_space(c.unicode))
    }

    /// The unit vector of the line's writing direction, from its first to its last origin
    /// (one character: its box's top edge).
    fn direction(&self) -> (f32, f32) {
        let d: Vec<&RawChar> = self.drawn().collect();
        let (dx, dy) = match (d.first(), d.last()) {
            (Some(a), Some(b)) if d.len() > 1 => {
                (b.origin[0] - a.origin[0], b.origin[1] - a.origin[1])
            }
            (Some(a), _) => (a.quad[2] - a.quad[0], a.quad[3] - a.quad[1]),
            _ => (1.0, 0.0),
        };
        let n = (dx * dx + dy * dy).sqrt();
        if n < 1e-3 {
            (1.0, 0.0)
        } else {
            (dx / n, dy / n)
        }
    }

    /// The oriented box of `chars` in direction `d`: corners TL, TR, BR, BL.
    fn quad_of<'a>(
        chars: impl Iterator<Item = &'a RawChar>,
        d: (f32, f32),
    ) -> Option<[[i32; 2]; 4]> {
        let (ux, uy) = d;
        let (vx, vy) = (-uy, ux); // "down" in image coordinates
        let (mut u0, mut u1, mut v0, mut v1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        let mut any = false;
        for c in chars {
            for k in 0..4 {
                let (x, y) = (c.quad[2 * k], c.quad[2 * k + 1]);
                let (u, v) = (x * ux + y * uy, x * vx + y * vy);
                u0 = u0.min(u);
                u1 = u1.max(u);
                v0 = v0.min(v);
                v1 = v1.max(v);
                any = true;
            }
        }
        if !any {
            return None;
        }
        let pt = |u: f32, v: f32| {
            [
                (u * ux + v * vx).round() as i32,
                (u * uy + v * vy).round() as i32,
            ]
        };
        Some([pt(u0, v0), pt(u1, v0), pt(u1, v1), pt(u0, v1)])
    }

    fn to_line(&self) -> Option<Line> {
        let d = self.direction();
        let bbox = Run::quad_of(self.drawn(), d)?;
        let mut text = String::new();
        let mut words = Vec::new();
        let mut word: Vec<RawChar> = Vec::new();
        let flush = |word: &mut Vec<RawChar>, words: &mut Vec<Word>| {
            if word.is_empty() {
                return;
            }
            let mut t = String::new();
            for c in word.iter() {
                push_char(&mut t, c.unicode);
            }
            if let Some(b) = Run::quad_of(word.iter(), d) {
                words.push(Word { text: t, bbox: b });
            }
            word.clear();
        };
        for c in &self.chars {
            if is_space(c.unicode) {
                flush(&mut word, &mut words);
                if !text.is_empty() && !text.ends_with(' ') {
                    text.push(' ');
                }
            } else {
                push_char(&mut text, c.unicode);
                word.push(*c);
            }
        }
        flush(&mut word, &mut words);
        let text = text.trim().to_string();
        if text.is_empty() {
            return None;
        }
        Some(Line {
            text,
            score: 1.0,
            bbox,
            words,
            page: 1,
        })
    }
}

/// The layer's lines and words in reading order, in raster pixels.
pub fn lines(page: &PageData) -> Vec<Line> {
    let mut runs = vec![Run::default()];
    for c in &page.chars {
        if is_break(c.unicode) {
            if !runs.last().is_some_and(|r| r.chars.is_empty()) {
                runs.push(Run::default());
            }
            continue;
        }
        if !c.visible && !c.generated {
            continue;
        }
        runs.last_mut().expect("one run at least").chars.push(*c);
    }
    let mut lines: Vec<(Line, (f32, f32))> = runs
        .iter()
        .filter_map(|r| r.to_line().map(|l| (l, r.direction())))
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    // The page's main direction: the direction (to the nearest right angle) of most text.
    let bucket = |(x, y): (f32, f32)| -> u8 {
        if x.abs() >= y.abs() {
            if x >= 0.0 {
                0
            } else {
                2
            }
        } else if y >= 0.0 {
            1
        } else {
            3
        }
    };
    let mut weight = [0usize; 4];
    for (l, d) in &lines {
        weight[bucket(*d) as usize] += l.text.chars().count();
    }
    let main = (0..4)
        .max_by_key(|&b| (weight[b], std::cmp::Reverse(b)))
        .unwrap_or(0) as u8;
    let (main_lines, others): (Vec<_>, Vec<_>) =
        lines.drain(..).partition(|(_, d)| bucket(*d) == main);
    // Into the main direction's frame: text runs along +x, lines go down +y.
    let frame = |p: [i32; 2]| -> (f32, f32) {
        let (x, y) = (p[0] as f32, p[1] as f32);
        match main {
            0 => (x, y),
            1 => (y, -x),
            2 => (-x, -y),
            _ => (-y, x),
        }
    };
    let boxes: Vec<Rect> = main_lines
        .iter()
        .map(|(l, _)| {
            let pts: Vec<(f32, f32)> = l.bbox.iter().map(|&p| frame(p)).collect();
            Rect {
                x0: pts.iter().map(|p| p.0).fold(f32::MAX, f32::min),
                x1: pts.iter().map(|p| p.0).fold(f32::MIN, f32::max),
                y0: pts.iter().map(|p| p.1).fold(f32::MAX, f32::min),
                y1: pts.iter().map(|p| p.1).fold(f32::MIN, f32::max),
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    let mut out_order = Vec::with_capacity(order.len());
    xy_cut(&boxes, &mut order, &mut out_order);
    let mut main_lines: Vec<Option<Line>> = main_lines.into_iter().map(|(l, _)| Some(l)).collect();
    let mut out: Vec<Line> = out_order
        .into_iter()
        .filter_map(|i| main_lines[i].take())
        .collect();
    out.extend(others.into_iter().map(|(l, _)| l));
    out
}

/// A line's box in the main direction's frame.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: f32,
    x1: f32,
    y0: f32,
    y1: f32,
}

impl Rect {
    fn height(&self) -> f32 {
        self.y1 - self.y0
    }
}

/// Gaps in the projection of `spans` (sorted intervals merged) wider than `min`: the cut
/// positions (the middle of each gap).
fn gaps(mut spans: Vec<(f32, f32)>, min: f32) -> Vec<f32> {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut cuts = Vec::new();
    let mut end = f32::MIN;
    for (a, b) in spans {
        if end > f32::MIN && a - end > min {
            cuts.push((a + end) / 2.0);
        }
        end = end.max(b);
    }
    cuts
}

/// Recursive XY cut over the lines `idx`: split at horizontal gaps wider than a line's height
/// (blocks, top to bottom), else at vertical gaps wider than one (columns, left to right),
/// else read top to bottom, then left to right.
fn xy_cut(boxes: &[Rect], idx: &mut Vec<usize>, out: &mut Vec<usize>) {
    if idx.len() <= 1 {
        out.append(idx);
        return;
    }
    let mut heights: Vec<f32> = idx.iter().map(|&i| boxes[i].height()).collect();
    heights.sort_by(f32::total_cmp);
    let h = heights[heights.len() / 2].max(1.0);
    let ys = gaps(idx.iter().map(|&i| (boxes[i].y0, boxes[i].y1)).collect(), h);
    if !ys.is_empty() {
        for mut part in split(boxes, idx, &ys, |r| (r.y0 + r.y1) / 2.0) {
            xy_cut(boxes, &mut part, out);
        }
        return;
    }
    let xs = gaps(idx.iter().map(|&i| (boxes[i].x0, boxes[i].x1)).collect(), h);
    if !xs.is_empty() {
        for mut part in split(boxes, idx, &xs, |r| (r.x0 + r.x1) / 2.0) {
            xy_cut(boxes, &mut part, out);
        }
        return;
    }
    idx.sort_by(|&a, &b| {
        let (ra, rb) = (boxes[a], boxes[b]);
        // The same row when they overlap by half a line; else top to bottom.
        let overlap = ra.y1.min(rb.y1) - ra.y0.max(rb.y0);
        if overlap > 0.5 * ra.height().min(rb.height()) {
            ra.x0.total_cmp(&rb.x0)
        } else {
            ra.y0.total_cmp(&rb.y0)
        }
    });
    out.append(idx);
}

/// `idx` split at the cut positions, by the key of each box, in order.
fn split(
    boxes: &[Rect],
    idx: &[usize],
    cuts: &[f32],
    key: impl Fn(&Rect) -> f32,
) -> Vec<Vec<usize>> {
    let mut parts = vec![Vec::new(); cuts.len() + 1];
    for &i in idx {
        let k = key(&boxes[i]);
        let slot = cuts.iter().take_while(|&&c| k > c).count();
        parts[slot].push(i);
    }
    parts.retain(|p| !p.is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of text at (x, y) (top-left), 10 px a character, 20 px tall, left to right.
    fn line(text: &str, x: f32, y: f32) -> Vec<RawChar> {
        let mut out: Vec<RawChar> = text
            .chars()
            .enumerate()
            .map(|(i, ch)| {
                let x0 = x + 10.0 * i as f32;
                RawChar {
                    unicode: ch as u32,
                    generated: ch == ' ',
                    visible: true,
                    quad: [x0, y, x0 + 10.0, y, x0 + 10.0, y + 20.0, x0, y + 20.0],
                    origin: [x0, y + 16.0],
                }
            })
            .collect();
        out.push(RawChar {
            unicode: '\n' as u32,
            generated: true,
            visible: true,
            ..Default::default()
        });
        out
    }

    fn page(chars: Vec<RawChar>) -> PageData {
        PageData {
            width_pt: 612.0,
            height_pt: 792.0,
            width_px: 1275,
            height_px: 1650,
            chars,
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_page_is_usable_and_reads_in_order() {
        let p = page(
            [
                line("Hello world of documents", 100.0, 100.0),
                line("second line here", 100.0, 130.0),
            ]
            .concat(),
        );
        assert_eq!(judge(&p), Verdict::Usable);
        let l = lines(&p);
        assert_eq!(
            l.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["Hello world of documents", "second line here"]
        );
        assert_eq!(l[0].words.len(), 4);
        assert_eq!(l[0].words[1].text, "world");
        assert_eq!(
            l[0].words[1].bbox,
            [[160, 100], [210, 100], [210, 120], [160, 120]]
        );
        assert_eq!(l[0].bbox[0], [100, 100]);
    }

    #[test]
    fn two_columns_are_read_one_after_the_other() {
        let mut chars = line("A title across the whole page", 100.0, 50.0);
        for i in 0..4 {
            let y = 120.0 + 30.0 * i as f32;
            chars.extend(line(&format!("right column row {i}"), 700.0, y));
            chars.extend(line(&format!("left column row {i}"), 100.0, y));
        }
        let order: Vec<String> = lines(&page(chars)).into_iter().map(|l| l.text).collect();
        assert_eq!(order[0], "A title across the whole page");
        assert_eq!(
            &order[1..5],
            [
                "left column row 0",
                "left column row 1",
                "left column row 2",
                "left column row 3"
            ]
        );
        assert_eq!(order[5], "right column row 0");
    }

    #[test]
    fn ligatures_are_written_out_and_garbage_is_unusable() {
        let mut chars = line("the xnance ofxce reports", 100.0, 100.0);
        chars[4].unicode = 0xFB01;
        chars[13].unicode = 0xFB01;
        let l = lines(&page(chars.clone()));
        assert_eq!(l[0].text, "the finance office reports");
        assert_eq!(judge(&page(chars.clone())), Verdict::Usable);
        for c in chars.iter_mut().filter(|c| !c.generated).take(4) {
            c.unicode = 0xE041;
        }
        assert!(
            matches!(judge(&page(chars)), Verdict::Unusable(why) if why.contains("private-use"))
        );
    }

    #[test]
    fn invisible_layers_few_characters_and_scans_are_unusable() {
        let mut chars = line("WRONGLY READ GARBLED LAYER TEXT", 100.0, 100.0);
        for c in &mut chars {
            c.visible = false;
        }
        assert!(
            matches!(judge(&page(chars.clone())), Verdict::Unusable(why) if why.contains("invisible"))
        );
        assert!(
            lines(&page(chars)).is_empty(),
            "invisible text is not a line"
        );
        assert!(
            matches!(judge(&page(line("Page 1", 10.0, 10.0))), Verdict::Unusable(why) if why.contains("fewer"))
        );
        let mut scan = page(line("a visible header over a scanned page", 10.0, 10.0));
        scan.image_cover = 0.9;
        assert!(matches!(judge(&scan), Verdict::Unusable(why) if why.contains("images")));
        assert!(matches!(judge(&page(Vec::new())), Verdict::Unusable(_)));
    }

    #[test]
    fn a_line_in_another_direction_follows_the_main_text() {
        let mut chars = line("the main text of the page reads across", 100.0, 100.0);
        // A vertical line, bottom to top (a margin note rotated 90 degrees).
        for (i, ch) in "margin".chars().enumerate() {
            let y = 900.0 - 10.0 * i as f32;
            chars.push(RawChar {
                unicode: ch as u32,
                visible: true,
                quad: [1200.0, y - 10.0, 1220.0, y - 10.0, 1220.0, y, 1200.0, y],
                origin: [1216.0, y],
                ..Default::default()
            });
        }
        chars.push(RawChar {
            unicode: '\n' as u32,
            generated: true,
            ..Default::default()
        });
        chars.extend(line("and goes on here", 100.0, 130.0));
        let l = lines(&page(chars));
        let texts: Vec<&str> = l.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "the main text of the page reads across",
                "and goes on here",
                "margin"
            ]
        );
    }
}

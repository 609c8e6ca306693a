//! A large scan of small print: the detector's 960 px pass sees its letters a third of their
//! size, too small to find most lines, and the second pass at up to 2,880 px reads them
//! ([`ocrfleet_ocr::DetConfig::small_text_px`]).

mod common;

use common::*;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use ocrfleet_ocr::{Engine, EngineConfig, ImageText};

/// A pasted line: its text, and where it went (x, y, width, height).
type Placed = (&'static str, u32, u32, u32, u32);

/// Four fixture lines at 40 % of their size on a white 2,880 px page, and where each went.
fn page() -> (RgbImage, Vec<Placed>) {
    let mut page = RgbImage::from_pixel(2880, 2880, Rgb([255, 255, 255]));
    let mut placed = Vec::new();
    let mut y = 600;
    for (name, text) in [
        (
            "long_line_en.png",
            "Optical character recognition converts printed text into machine readable data",
        ),
        (
            "en_line_fox.png",
            "The quick brown fox jumps over the lazy dog",
        ),
        ("en_line_hello.png", "Hello World 2026"),
        ("zh_line_park.png", "今天天气很好我们去公园散步"),
    ] {
        let line = image::open(fixtures().join("images").join(name))
            .unwrap()
            .to_rgb8();
        let (w, h) = (line.width() * 2 / 5, line.height() * 2 / 5);
        let small = imageops::resize(&line, w, h, FilterType::Lanczos3);
        imageops::replace(&mut page, &small, 300, i64::from(y));
        placed.push((text, 300, y, w, h));
        y += h + 100;
    }
    (page, placed)
}

fn read(cfg: EngineConfig, page: &RgbImage) -> ImageText {
    let e = Engine::new(cfg).expect("engine starts (run models/fetch.sh first)");
    e.recognize(std::slice::from_ref(page))
        .pop()
        .unwrap()
        .expect("the page is read")
}

#[test]
fn small_print_on_a_large_scan_is_read_in_a_second_pass() {
    let (page, placed) = page();
    let mut cfg = EngineConfig::with_models_dir(repo_root().join("models"));
    cfg.intra_threads = 2;
    let mut without = cfg.clone();
    without.det.small_text_px = 0.0;

    let want: String = placed.iter().map(|p| p.0).collect();
    let text = |t: &ImageText| t.lines.iter().map(|l| l.text.as_str()).collect::<String>();

    let got = read(cfg, &page);
    let (err, len) = cer_parts(&text(&got), &want);
    println!("second pass: {} lines, {err}/{len} wrong", got.lines.len());
    assert_eq!(got.lines.len(), placed.len(), "{:?}", text(&got));
    assert!(err * 50 <= len, "{err}/{len} wrong: {:?}", text(&got));
    // Boxes are in the page's pixels, inside the (white-margined) lines where they were
    // pasted and most of their width.
    for (line, &(t, x, y, w, h)) in got.lines.iter().zip(&placed) {
        let [tl, _, br, _] = line.bbox;
        let (x, y, w, h) = (x as i32, y as i32, w as i32, h as i32);
        assert!(
            tl[0] >= x - 2
                && tl[1] >= y - 2
                && br[0] <= x + w + 2
                && br[1] <= y + h + 2
                && br[0] - tl[0] >= w / 2,
            "{t}: box {:?}, pasted at {x},{y} size {w}×{h}",
            line.bbox
        );
    }

    let got = read(without, &page);
    let (err, len) = cer_parts(&text(&got), &want);
    println!("960 px only: {} lines, {err}/{len} wrong", got.lines.len());
    assert!(
        err * 2 > len,
        "the 960 px pass alone read it: {:?}",
        text(&got)
    );
}

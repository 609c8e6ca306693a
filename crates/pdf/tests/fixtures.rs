//! Every fixture PDF (tests/fixtures/make_pdfs.py) through the real PDFium in real child
//! processes: what each gives (text layer, rendering, or which error) is what
//! tests/fixtures/pdf/expected.json says; the born-digital page's text layer is read in
//! reading order (two columns one after the other, the rotated margin line last), ligatures
//! written out, and its word boxes lie on the rendered page's ink. (The OCR of the rendered
//! pages is checked end to end by the CLI and worker tests.)

mod common;

use ocrfleet_ocr::TextSource;
use ocrfleet_pdf::{plan, render, PlannedPage, ReadOptions, TextMode};

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(common::fixtures().join("expected.json")).unwrap())
        .unwrap()
}

#[tokio::test]
async fn every_fixture_gives_what_its_expectation_says() {
    let pool = common::pool(2, false);
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    assert!(files.len() >= 13);
    for (name, want) in files {
        let mut s = pool.session().await.unwrap();
        let got = plan(&mut s, common::fixture(name), &ReadOptions::default()).await;
        if let Some(class) = want["error"].as_str() {
            let e = got.expect_err(name);
            assert_eq!(e.class(), class, "{name}: {e}");
            continue;
        }
        let pages = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            pages.len() as u64,
            want["pages"].as_u64().unwrap(),
            "{name}"
        );
        let sources: Vec<&str> = pages
            .iter()
            .map(|p| match p {
                PlannedPage::Text(_) => "text",
                PlannedPage::Render { .. } => "ocr",
            })
            .collect();
        let want_sources: Vec<&str> = want["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(sources, want_sources, "{name}");
        let images = render(&mut s, &pages, &ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(
            images.len(),
            sources.iter().filter(|s| **s == "ocr").count()
        );
        for (img, p) in images.iter().zip(
            pages
                .iter()
                .filter(|p| matches!(p, PlannedPage::Render { .. })),
        ) {
            let PlannedPage::Render { width, height, .. } = p else {
                unreachable!()
            };
            assert_eq!(img.dimensions(), (*width, *height), "{name}");
            assert!(img.width().max(img.height()) <= ocrfleet_pdf::DEFAULT_MAX_SIDE);
            // Something was drawn: not a blank page.
            assert!(
                img.pixels().any(|px| px.0[0] < 128),
                "{name}: a blank render"
            );
        }
    }
}

/// The born-digital page (reportlab: two columns, a rotated margin line, ﬁ and ﬂ ligatures)
/// read from its layer, and the same page with `/Rotate 90`: the same lines in the same order.
#[tokio::test]
async fn the_text_layer_is_read_in_reading_order() {
    let pool = common::pool(1, false);
    let exp = expected();
    let truth: Vec<&str> = exp["text"]["born_digital.pdf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (name, first) in [
        ("born_digital.pdf", "Annual Summary 2026"),
        ("rotated.pdf", "Rotated page"),
    ] {
        let mut s = pool.session().await.unwrap();
        let pages = plan(&mut s, common::fixture(name), &ReadOptions::default())
            .await
            .unwrap();
        let PlannedPage::Text(t) = &pages[0] else {
            panic!("{name}: page 1 rendered")
        };
        assert_eq!(t.sources, [TextSource::Text]);
        let lines: Vec<&str> = t.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(lines[0], first, "{name}");
        assert_eq!(&lines[1..], &truth[1..], "{name}");
        assert!(t.lines.iter().all(|l| !l.words.is_empty()));
    }
}

/// Each word box of the born-digital page covers ink of the same page rendered, and little
/// outside it: the layer's boxes are in the rendered raster's pixels.
#[tokio::test]
async fn word_boxes_sit_on_the_rendered_words() {
    let pool = common::pool(1, false);
    let mut s = pool.session().await.unwrap();
    let opts = ReadOptions::default();
    let bytes = common::fixture("born_digital.pdf");
    let text = plan(&mut s, bytes.clone(), &opts).await.unwrap();
    let PlannedPage::Text(t) = &text[0] else {
        panic!()
    };
    let forced = ReadOptions {
        mode: TextMode::Ocr,
        ..opts
    };
    let pages = plan(&mut s, bytes, &forced).await.unwrap();
    let img = render(&mut s, &pages, &forced).await.unwrap().remove(0);
    assert_eq!((t.width, t.height), img.dimensions());
    let mut words = 0;
    for w in t.lines.iter().flat_map(|l| &l.words) {
        let xs = w.bbox.iter().map(|p| p[0]);
        let ys = w.bbox.iter().map(|p| p[1]);
        let (x0, x1) = (
            xs.clone().min().unwrap().max(0) as u32,
            xs.max().unwrap() as u32,
        );
        let (y0, y1) = (
            ys.clone().min().unwrap().max(0) as u32,
            ys.max().unwrap() as u32,
        );
        let ink = (y0..y1.min(img.height()))
            .flat_map(|y| (x0..x1.min(img.width())).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128)
            .count();
        assert!(ink > 0, "no ink under {:?} ({})", w.bbox, w.text);
        words += 1;
    }
    assert!(words > 50, "{words} words");
}

/// The born-digital page read both ways: its text layer, and the same page rendered and OCRed
/// by the real engine. Words found by both (same text) have boxes that overlap: the mean IoU is
/// printed, and must be at least 0.5.
#[test]
fn text_layer_word_boxes_overlap_the_boxes_ocr_finds() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = common::pool(1, false);
    let opts = ReadOptions::default();
    let bytes = common::fixture("born_digital.pdf");
    let (text, img) = rt.block_on(async {
        let mut s = pool.session().await.unwrap();
        let text = plan(&mut s, bytes.clone(), &opts).await.unwrap().remove(0);
        let forced = ReadOptions {
            mode: TextMode::Ocr,
            ..opts
        };
        let pages = plan(&mut s, bytes, &forced).await.unwrap();
        (
            text,
            render(&mut s, &pages, &forced).await.unwrap().remove(0),
        )
    });
    let PlannedPage::Text(layer) = text else {
        panic!()
    };
    let engine = ocrfleet_ocr::Engine::new(ocrfleet_ocr::EngineConfig {
        models_dir: common::root().join("models"),
        intra_threads: 1,
        ..Default::default()
    })
    .unwrap();
    let ocr = engine
        .recognize(std::slice::from_ref(&img))
        .remove(0)
        .unwrap();
    let rect = |b: &[[i32; 2]; 4]| {
        let xs = b.iter().map(|p| p[0] as f64);
        let ys = b.iter().map(|p| p[1] as f64);
        (
            xs.clone().fold(f64::MAX, f64::min),
            ys.clone().fold(f64::MAX, f64::min),
            xs.fold(f64::MIN, f64::max),
            ys.fold(f64::MIN, f64::max),
        )
    };
    let iou = |a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)| {
        let i = (a.2.min(b.2) - a.0.max(b.0)).max(0.0) * (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
        let u = (a.2 - a.0) * (a.3 - a.1) + (b.2 - b.0) * (b.3 - b.1) - i;
        if u > 0.0 {
            i / u
        } else {
            0.0
        }
    };
    let ocr_words: Vec<_> = ocr.lines.iter().flat_map(|l| &l.words).collect();
    let mut ious = Vec::new();
    for w in layer.lines.iter().flat_map(|l| &l.words) {
        let a = rect(&w.bbox);
        let best = ocr_words
            .iter()
            .filter(|o| o.text == w.text)
            .map(|o| iou(a, rect(&o.bbox)))
            .fold(0.0, f64::max);
        if ocr_words.iter().any(|o| o.text == w.text) {
            ious.push(best);
        }
    }
    let mean = ious.iter().sum::<f64>() / ious.len().max(1) as f64;
    let mut sorted = ious.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{} words in both readings; word-box IoU mean {mean:.3}, median {:.3}, min {:.3}",
        ious.len(),
        sorted[sorted.len() / 2],
        sorted[0]
    );
    assert!(ious.len() >= 40, "{} words matched", ious.len());
    assert!(mean >= 0.5, "mean IoU {mean:.3}");
}

//! Shared helpers: the engine on the real weights (installed by `models/fetch.sh`), fixtures,
//! and comparison metrics.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use geo::{Area, BooleanOps, Coord, LineString, Polygon};
use ocrfleet_ocr::{Engine, EngineConfig, Line, ModelSet};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The PP-OCRv4 configuration on CPU with `threads` intra-op threads: v4 is the set that Python
/// RapidOCR 1.4.4 runs, which the fixtures' expectations (`rapidocr_expected.json`) come from,
/// with RapidOCR's (and PaddleOCR's) box growth, classifier threshold, no upscaling, unpadded crops and one detector pass; the
/// defaults differ.
/// The default settings have their own test in `parity.rs`.
pub fn rapidocr_config(threads: usize) -> EngineConfig {
    let mut cfg = EngineConfig::with_models_dir(repo_root().join("models"));
    cfg.model_set = ModelSet::V4;
    cfg.det.unclip_ratio = 1.5;
    cfg.det.upscale_to = 0;
    cfg.det.crop_padding = 0.0;
    cfg.det.small_text_px = 0.0;
    cfg.cls.thresh = 0.9;
    cfg.intra_threads = threads;
    cfg
}

/// An engine with [`rapidocr_config`].
pub fn engine(threads: usize) -> Engine {
    Engine::new(rapidocr_config(threads)).expect("engine starts (run models/fetch.sh first)")
}

/// Fixture images, sorted by name.
pub fn fixture_images() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn polygon(b: &[[f64; 2]; 4]) -> Polygon<f64> {
    Polygon::new(
        LineString::from(
            b.iter()
                .map(|p| Coord { x: p[0], y: p[1] })
                .collect::<Vec<_>>(),
        ),
        vec![],
    )
}

/// Intersection over union of two quadrilaterals.
pub fn iou(a: &[[f64; 2]; 4], b: &[[f64; 2]; 4]) -> f64 {
    let (pa, pb) = (polygon(a), polygon(b));
    let inter = pa.intersection(&pb).unsigned_area();
    let union = pa.union(&pb).unsigned_area();
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

pub fn quad(l: &Line) -> [[f64; 2]; 4] {
    l.bbox.map(|p| [p[0] as f64, p[1] as f64])
}

/// Character error rate of `got` against `want` (whitespace removed: PP-OCR's spacing is not
/// part of what is measured), as (edit distance, reference length).
pub fn cer_parts(got: &str, want: &str) -> (usize, usize) {
    let g: Vec<char> = got.chars().filter(|c| !c.is_whitespace()).collect();
    let w: Vec<char> = want.chars().filter(|c| !c.is_whitespace()).collect();
    (strsim::generic_levenshtein(&g, &w), w.len())
}

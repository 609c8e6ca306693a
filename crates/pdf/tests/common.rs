//! Shared by the pdf crate's tests: the renderer pool over this crate's child binary, and the
//! fixtures that tests/fixtures/make_pdfs.py writes (tests/run.sh makes them first).

#![allow(dead_code)]

use std::path::PathBuf;

use ocrfleet_pdf::{RendererConfig, Renderers};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The fixtures folder; fails with what to run when they are missing.
pub fn fixtures() -> PathBuf {
    let dir = root().join("tests/fixtures/pdf");
    assert!(
        dir.join("expected.json").is_file(),
        "PDF fixtures missing: run `.venv/bin/python tests/fixtures/make_pdfs.py` (tests/run.sh does)"
    );
    dir
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

pub fn pool(children: usize, test_faults: bool) -> Renderers {
    Renderers::new(RendererConfig {
        program: env!("CARGO_BIN_EXE_ocrfleet-pdf-child").into(),
        args: Vec::new(),
        library: root().join("models/lib/libpdfium.so"),
        children,
        memory_limit: 2 << 30,
        test_faults,
    })
}

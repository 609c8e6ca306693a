//! The renderer child: PDFium in a process of its own, answering [`Request`]s on stdin with
//! [`Response`]s on stdout (see [`crate::protocol`]). It holds one document at a time and does
//! only what PDFium must do: open, list a page's characters with their boxes, render. Every
//! judgement (is the text layer usable, in what order are the lines) is made by the worker on
//! what this returns, so that a crash or a hang here costs the worker nothing but this process.
//!
//! **Test faults.** With `OCRFLEET_TEST_PDF_FAULTS=1` in its environment (the worker's hidden
//! `--test-pdf-faults`), a document whose bytes contain `%ocrfleet-test-abort` aborts the
//! process and one with `%ocrfleet-test-hang` hangs it, as a crash or an endless loop inside
//! PDFium would.

use std::io::{Read, Write};
use std::path::Path;

use pdfium_render::prelude::*;

use crate::protocol::{read_frame, write_frame, Failure, PageData, RawChar, Request, Response};

/// The test faults' environment switch.
pub const TEST_FAULTS_ENV: &str = "OCRFLEET_TEST_PDF_FAULTS";

/// Serves requests from `input` until it closes. `Err` for an I/O failure or a library that
/// cannot be bound (the worker then sees the child end).
pub fn serve(
    library: &Path,
    mut input: impl Read,
    mut output: impl Write,
) -> anyhow_like::Result<()> {
    let bindings = Pdfium::bind_to_library(library).map_err(|e| {
        anyhow_like::Error(format!(
            "cannot load PDFium from {}: {e}",
            library.display()
        ))
    })?;
    let pdfium = Pdfium::new(bindings);
    let faults = std::env::var(TEST_FAULTS_ENV).is_ok_and(|v| v == "1");
    let mut doc: Option<PdfDocument<'_>> = None;
    while let Some((req, payload)) = read_frame::<Request>(&mut input)? {
        let (resp, pixels) = match req {
            Request::Open => {
                doc = None;
                if faults {
                    test_fault(&payload);
                }
                match pdfium.load_pdf_from_byte_vec(payload, None) {
                    Ok(d) => {
                        let pages = u32::try_from(d.pages().len()).unwrap_or(0);
                        doc = Some(d);
                        (Response::Opened { pages }, Vec::new())
                    }
                    Err(e) => (failed(open_failure(&e), e), Vec::new()),
                }
            }
            Request::Page {
                index,
                dpi,
                max_side,
                max_scan_dpi,
            } => match doc.as_ref() {
                None => (no_document(), Vec::new()),
                Some(d) => match page_data(d, index, dpi, max_side, max_scan_dpi) {
                    Ok(p) => (Response::Page(p), Vec::new()),
                    Err(e) => (failed(Failure::Page, e), Vec::new()),
                },
            },
            Request::Render {
                index,
                width,
                height,
            } => match doc.as_ref() {
                None => (no_document(), Vec::new()),
                Some(d) => match render(d, index, width, height) {
                    Ok(px) => (Response::Rendered { width, height }, px),
                    Err(e) => (failed(Failure::Page, e), Vec::new()),
                },
            },
            Request::Close => {
                doc = None;
                (Response::Closed, Vec::new())
            }
        };
        write_frame(&mut output, &resp, &pixels)?;
    }
    Ok(())
}

/// A minimal error type, so that the child needs no error crate.
pub mod anyhow_like {
    #[derive(Debug)]
    pub struct Error(pub String);
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl From<std::io::Error> for Error {
        fn from(e: std::io::Error) -> Error {
            Error(e.to_string())
        }
    }
    pub type Result<T> = std::result::Result<T, Error>;
}

fn test_fault(bytes: &[u8]) {
    let has = |m: &[u8]| bytes.windows(m.len()).any(|w| w == m);
    if has(b"%ocrfleet-test-abort") {
        eprintln!("pdf child: test fault: aborting");
        std::process::abort();
    }
    if has(b"%ocrfleet-test-hang") {
        eprintln!("pdf child: test fault: hanging");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

fn failed(failure: Failure, e: impl std::fmt::Display) -> Response {
    Response::Failed {
        failure,
        message: e.to_string(),
    }
}

fn no_document() -> Response {
    failed(Failure::Protocol, "no document is open")
}

fn open_failure(e: &PdfiumError) -> Failure {
    match e {
        PdfiumError::PdfiumLibraryInternalError(PdfiumInternalError::PasswordError)
        | PdfiumError::PdfiumLibraryInternalError(PdfiumInternalError::SecurityError) => {
            Failure::Encrypted
        }
        _ => Failure::Malformed,
    }
}

fn page<'a>(d: &'a PdfDocument<'_>, index: u32) -> Result<PdfPage<'a>, String> {
    let i = i32::try_from(index).map_err(|_| format!("page {index} out of range"))?;
    d.pages()
        .get(i)
        .map_err(|e| format!("cannot load page {}: {e}", index + 1))
}

/// The raster size of a page `w` × `h` points at `dpi`, scaled down to `max_side`.
pub fn raster_size(w: f32, h: f32, dpi: f32, max_side: u32) -> (u32, u32) {
    let scale = dpi / 72.0;
    let (mut pw, mut ph) = ((w * scale).max(1.0), (h * scale).max(1.0));
    let long = pw.max(ph);
    if long > max_side as f32 {
        let k = max_side as f32 / long;
        pw *= k;
        ph *= k;
    }
    (pw.round().max(1.0) as u32, ph.round().max(1.0) as u32)
}

fn config(width: u32, height: u32) -> PdfRenderConfig {
    PdfRenderConfig::new()
        .set_target_size(width as Pixels, height as Pixels)
        .render_form_data(true)
        .render_annotations(true)
}

fn page_data(
    d: &PdfDocument<'_>,
    index: u32,
    dpi: f32,
    max_side: u32,
    max_scan_dpi: f32,
) -> Result<PageData, String> {
    let p = page(d, index)?;
    let (w, h) = (p.width().value, p.height().value);
    let mut image_area = 0.0f32;
    // The largest image covering a quarter of the page or more: a scan, whose own resolution
    // the page is rendered at (its pixels read as scanned, neither blurred up nor thrown away).
    let mut scan: Option<(f32, f32)> = None;
    for o in p.objects().iter() {
        if o.object_type() == PdfPageObjectType::Image {
            if let Ok(b) = o.bounds() {
                let (l, r) = (b.left().value.max(0.0), b.right().value.min(w.max(h)));
                let (bt, t) = (b.bottom().value.max(0.0), b.top().value.min(w.max(h)));
                let area = (r - l).max(0.0) * (t - bt).max(0.0);
                image_area += area;
                if let Some(img) = o.as_image_object() {
                    let own = img
                        .horizontal_dpi()
                        .unwrap_or(0.0)
                        .max(img.vertical_dpi().unwrap_or(0.0));
                    if area >= 0.25 * w * h && own > 0.0 && scan.is_none_or(|(a, _)| area > a) {
                        scan = Some((area, own));
                    }
                }
            }
        }
    }
    let min = crate::protocol::MIN_SCAN_DPI;
    let dpi = scan.map_or(dpi, |(_, own)| own.clamp(min, max_scan_dpi.max(min)));
    let (width_px, height_px) = raster_size(w, h, dpi, max_side);
    let cfg = config(width_px, height_px);
    let to_px = |x: PdfPoints, y: PdfPoints| -> [f32; 2] {
        // PDFium maps to whole pixels; good enough for boxes that OCR's own boxes are in.
        match p.points_to_pixels(x, y, &cfg) {
            Ok((px, py)) => [px as f32, py as f32],
            Err(_) => [0.0, 0.0],
        }
    };
    let rotation = match p.rotation() {
        Ok(PdfPageRenderRotation::Degrees90) => 90,
        Ok(PdfPageRenderRotation::Degrees180) => 180,
        Ok(PdfPageRenderRotation::Degrees270) => 270,
        _ => 0,
    };
    let annotations = p
        .annotations()
        .iter()
        .filter(|a| {
            !matches!(
                a.annotation_type(),
                PdfPageAnnotationType::Link | PdfPageAnnotationType::Popup
            )
        })
        .count() as u32;
    let mut chars = Vec::new();
    if let Ok(text) = p.text() {
        for c in text.chars().iter() {
            let Ok(b) = c.loose_bounds() else { continue };
            let corners = [
                to_px(b.left(), b.top()),
                to_px(b.right(), b.top()),
                to_px(b.right(), b.bottom()),
                to_px(b.left(), b.bottom()),
            ];
            let origin = c.origin().map(|(x, y)| to_px(x, y)).unwrap_or(corners[3]);
            let visible = !matches!(c.render_mode(), Ok(PdfPageTextRenderMode::Invisible));
            chars.push(RawChar {
                unicode: c.unicode_value(),
                generated: c.is_generated().unwrap_or(false),
                visible,
                quad: [
                    corners[0][0],
                    corners[0][1],
                    corners[1][0],
                    corners[1][1],
                    corners[2][0],
                    corners[2][1],
                    corners[3][0],
                    corners[3][1],
                ],
                origin,
            });
        }
    }
    Ok(PageData {
        width_pt: w,
        height_pt: h,
        rotation,
        width_px,
        height_px,
        dpi,
        image_cover: (image_area / (w * h).max(1.0)).min(1.0),
        annotations,
        chars,
    })
}

fn render(d: &PdfDocument<'_>, index: u32, width: u32, height: u32) -> Result<Vec<u8>, String> {
    let p = page(d, index)?;
    let bitmap = p
        .render_with_config(&config(width, height))
        .map_err(|e| format!("cannot render page {}: {e}", index + 1))?;
    let raw = bitmap.as_raw_bytes();
    let (w, h) = (bitmap.width() as usize, bitmap.height() as usize);
    if w != width as usize || h != height as usize || h == 0 {
        return Err(format!("PDFium rendered {w}x{h}, not {width}x{height}"));
    }
    let stride = raw.len() / h;
    let mut rgb = Vec::with_capacity(w * h * 3);
    for row in raw.chunks_exact(stride).take(h) {
        for px in row[..w * 4].chunks_exact(4) {
            // BGRx on a white page (no alpha to blend).
            rgb.extend_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    Ok(rgb)
}

//! # ocrfleet-pdf
//!
//! PDF input: a PDF's pages read from their text layer when it can be trusted (exact, and no
//! engine time), the others rendered to pixels for OCR. PDFium (Chrome's PDF engine) does the
//! reading and rendering, in child processes ([`pool`], [`child`]): a PDF is untrusted input
//! and PDFium a large C++ library, so a crash or an endless loop inside it costs one child and
//! one document, never the worker.
//!
//! A body is a PDF by its magic bytes ([`is_pdf`]), whatever its content type or URL says.
//! [`plan`] opens a document and decides, page by page, between its text layer (see [`layer`]
//! for what "usable" means) and rendering; the caller charges the rendered pages to its memory
//! budget, then [`render`]s them.
//!
//! **Rendering resolution.** A page that carries a scan (an image over a quarter of the page or
//! more) is rendered at the scan's own resolution (between 72 and [`DEFAULT_MAX_SCAN_DPI`]), so
//! that its pixels reach the engine as they were scanned; other pages at [`DEFAULT_DPI`] (150);
//! the longer side at most [`DEFAULT_MAX_SIDE`] pixels. deploy/docs/performance.md ("PDF
//! pages") has the measurement behind both.

pub mod child;
pub mod layer;
pub mod pool;
pub mod protocol;

use std::time::Duration;

use ocrfleet_ocr::{ImageText, TextSource, Timings};

pub use pool::{RendererConfig, Renderers, Session};

/// Pages are rendered at this resolution for OCR.
pub const DEFAULT_DPI: f32 = 150.0;
/// A scanned page is rendered at its scan's own resolution, at most this.
pub const DEFAULT_MAX_SCAN_DPI: f32 = 400.0;
/// The longest side of a rendered page, in pixels (a poster-sized page is scaled down to it).
pub const DEFAULT_MAX_SIDE: u32 = 4096;
/// The version of PDFium that models/fetch.sh installs (pypdfium2 5.15.2's build).
pub const PDFIUM_VERSION: &str = "159.0.8149.0";

/// Whether `bytes` are a PDF: `%PDF-` within the first 1024 bytes (where readers accept it).
pub fn is_pdf(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(1024)];
    head.windows(5).any(|w| w == b"%PDF-")
}

/// Where a PDF's pages take their text from (`--pdf-text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextMode {
    /// The text layer when it is usable, else render and OCR.
    #[default]
    Auto,
    /// Always render and OCR.
    Ocr,
    /// Never render: the text layer, whatever it holds (a page without one is empty).
    Text,
}

impl std::str::FromStr for TextMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(TextMode::Auto),
            "ocr" => Ok(TextMode::Ocr),
            "text" => Ok(TextMode::Text),
            _ => Err(format!("{s:?} is not auto, ocr or text")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for TextMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a PDF could not be read. [`PdfError::class`] is its dead letter's class (stage `decode`);
/// [`PdfError::Renderer`] alone is not the document's fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PdfError {
    #[error("the PDF is encrypted and the empty user password does not open it")]
    Encrypted,
    #[error("not a readable PDF: {0}")]
    Malformed(String),
    #[error("the PDF has no pages")]
    NoPages,
    #[error("the PDF has {pages} pages, more than --max-pages ({max})")]
    TooManyPages { pages: u32, max: u32 },
    #[error("page {page} cannot be read: {message}")]
    Page { page: u32, message: String },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Crashed(String),
    /// The renderer itself does not work (cannot start, a missing library): infrastructure.
    #[error("{0}")]
    Renderer(String),
}

impl PdfError {
    /// The dead letter's class (stage `decode`).
    pub fn class(&self) -> &'static str {
        match self {
            PdfError::Encrypted => "encrypted",
            PdfError::Malformed(_) | PdfError::NoPages | PdfError::Page { .. } => "pdf",
            PdfError::TooManyPages { .. } => "too_many_pages",
            PdfError::Timeout(_) => "pdf_timeout",
            PdfError::Crashed(_) => "pdf_crash",
            PdfError::Renderer(_) => "pdf_renderer",
        }
    }

    /// Whether the renderer's own state is in doubt (a crash): the caller probes it before
    /// blaming the document.
    pub fn renderer_in_doubt(&self) -> bool {
        matches!(self, PdfError::Crashed(_) | PdfError::Renderer(_))
    }
}

/// How a document is read.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub mode: TextMode,
    /// Resolution of pages drawn as text and vectors.
    pub dpi: f32,
    /// A scanned page is rendered at its scan's own resolution, at most this.
    pub max_scan_dpi: f32,
    pub max_side: u32,
    pub max_pages: u32,
    /// Each request to the renderer (open, a page's layer, a page's render) within this.
    pub page_deadline: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            mode: TextMode::Auto,
            dpi: DEFAULT_DPI,
            max_scan_dpi: DEFAULT_MAX_SCAN_DPI,
            max_side: DEFAULT_MAX_SIDE,
            max_pages: 50,
            page_deadline: Duration::from_secs(30),
        }
    }
}

/// What a page will give.
#[derive(Debug, Clone, PartialEq)]
pub enum PlannedPage {
    /// Read from its text layer.
    Text(ImageText),
    /// To render at `width` × `height` and OCR (`why`: the layer's verdict, or the mode).
    Render {
        index: u32,
        width: u32,
        height: u32,
        why: String,
    },
}

impl PlannedPage {
    /// Bytes of the RGB raster it will need (0 for a text page).
    pub fn raster_bytes(&self) -> u64 {
        match self {
            PlannedPage::Text(_) => 0,
            PlannedPage::Render { width, height, .. } => 3 * u64::from(*width) * u64::from(*height),
        }
    }
}

/// A text-layer page as a page of OCR output (in the raster's pixels, sources `text`).
pub fn text_page(page: &protocol::PageData, lines: Vec<ocrfleet_ocr::Line>) -> ImageText {
    let text = lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    ImageText {
        width: page.width_px,
        height: page.height_px,
        lines,
        text,
        pages: 1,
        sources: vec![TextSource::Text],
        timings: Timings::default(),
    }
}

/// Opens `bytes` in `session` and plans every page (see [`PlannedPage`]).
pub async fn plan(
    session: &mut Session,
    bytes: Vec<u8>,
    opts: &ReadOptions,
) -> Result<Vec<PlannedPage>, PdfError> {
    let pages = session.open(bytes, opts.page_deadline).await?;
    if pages == 0 {
        return Err(PdfError::NoPages);
    }
    if pages > opts.max_pages {
        return Err(PdfError::TooManyPages {
            pages,
            max: opts.max_pages,
        });
    }
    let mut out = Vec::with_capacity(pages as usize);
    for index in 0..pages {
        let p = session
            .page(
                index,
                opts.dpi,
                opts.max_side,
                opts.max_scan_dpi,
                opts.page_deadline,
            )
            .await?;
        let render = |why: String| PlannedPage::Render {
            index,
            width: p.width_px,
            height: p.height_px,
            why,
        };
        out.push(match opts.mode {
            TextMode::Ocr => render("--pdf-text ocr".into()),
            TextMode::Text => PlannedPage::Text(text_page(&p, layer::lines(&p))),
            TextMode::Auto => match layer::judge(&p) {
                layer::Verdict::Usable => PlannedPage::Text(text_page(&p, layer::lines(&p))),
                layer::Verdict::Unusable(why) => render(why),
            },
        });
    }
    Ok(out)
}

/// Renders the planned pages that need it, in order.
pub async fn render(
    session: &mut Session,
    planned: &[PlannedPage],
    opts: &ReadOptions,
) -> Result<Vec<image::RgbImage>, PdfError> {
    let mut out = Vec::new();
    for p in planned {
        if let PlannedPage::Render {
            index,
            width,
            height,
            ..
        } = p
        {
            out.push(
                session
                    .render(*index, *width, *height, opts.page_deadline)
                    .await?,
            );
        }
    }
    Ok(out)
}

/// One document's result from its plan and the OCR of its rendered pages (in order).
pub fn assemble(planned: Vec<PlannedPage>, ocr: Vec<ImageText>) -> Option<ImageText> {
    let mut ocr = ocr.into_iter();
    let pages: Vec<ImageText> = planned
        .into_iter()
        .filter_map(|p| match p {
            PlannedPage::Text(t) => Some(t),
            PlannedPage::Render { .. } => ocr.next(),
        })
        .collect();
    ImageText::from_pages(pages)
}

/// The renderer child's entry point: `[--library PATH]` (default `models/lib/libpdfium.so`),
/// then requests on stdin until it closes. Returns the process's exit code.
pub fn child_main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let mut library = std::path::PathBuf::from("models/lib/libpdfium.so");
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--library" {
            if let Some(p) = it.next() {
                library = p.into();
            }
        }
    }
    let stdin = std::io::stdin().lock();
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match child::serve(&library, std::io::BufReader::new(stdin), stdout) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pdf child: {e}");
            2
        }
    }
}

/// A one-page PDF known to be readable (the renderer's probe).
pub const PROBE_PDF: &[u8] = b"%PDF-1.4
1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj
2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj
3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >> endobj
trailer << /Root 1 0 R >>
%%EOF
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pdf_is_known_by_its_magic_bytes_within_1_kib() {
        assert!(is_pdf(b"%PDF-1.7\n..."));
        let mut junk = vec![b' '; 1000];
        junk.extend_from_slice(b"%PDF-1.4");
        assert!(is_pdf(&junk), "leading junk, as readers accept");
        let mut late = vec![b' '; 1024];
        late.extend_from_slice(b"%PDF-1.4");
        assert!(!is_pdf(&late));
        assert!(!is_pdf(b"\x89PNG\r\n\x1a\n"));
        assert!(!is_pdf(b""));
    }

    #[test]
    fn text_modes_parse() {
        assert_eq!("auto".parse(), Ok(TextMode::Auto));
        assert_eq!("ocr".parse(), Ok(TextMode::Ocr));
        assert_eq!("text".parse(), Ok(TextMode::Text));
        assert!("pdf".parse::<TextMode>().is_err());
    }

    #[test]
    fn pages_are_assembled_in_order_with_their_sources() {
        let t = |s: &str, src| ImageText {
            width: 1,
            height: 1,
            lines: Vec::new(),
            text: s.into(),
            pages: 1,
            sources: vec![src],
            timings: Timings::default(),
        };
        let plan = vec![
            PlannedPage::Text(t("one", TextSource::Text)),
            PlannedPage::Render {
                index: 1,
                width: 1,
                height: 1,
                why: String::new(),
            },
            PlannedPage::Text(t("three", TextSource::Text)),
        ];
        let doc = assemble(plan, vec![t("two", TextSource::Ocr)]).unwrap();
        assert_eq!(doc.text, "one\n\ntwo\n\nthree");
        assert_eq!(doc.pages, 3);
        assert_eq!(
            doc.sources,
            [TextSource::Text, TextSource::Ocr, TextSource::Text]
        );
    }
}

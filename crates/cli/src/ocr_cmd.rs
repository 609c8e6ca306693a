//! `ocrfleet ocr PATHS...`: OCR files and directories, print text or NDJSON.
//!
//! PDFs (known by their magic bytes) are read as the worker reads them: pages with a usable
//! text layer from it, the others rendered by a PDFium child process and OCRed; each page is
//! numbered, with where its text came from.
//!
//! An unreadable or undecodable file is reported in the output (an `error` object in NDJSON)
//! and the run goes on. At the end a summary line goes to stderr when any file failed or more
//! than one was read. Exit code: 0 when every file was read, 1 when any failed, 2 for unusable
//! arguments or an engine that cannot start.
//!
//! Above 8 files a progress bar is drawn on stderr when stderr is a terminal; output is written
//! while the bar is cleared, so that no stale bar is left between output lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ocrfleet_ocr::{Engine, ImageText, OcrError};
use serde_json::json;

use crate::engine_args::EngineArgs;

#[derive(clap::Args, Debug)]
pub struct OcrArgs {
    /// Image or PDF files, or directories (searched recursively for jpg, jpeg, png, webp, bmp, tif, tiff, gif, pdf).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// How PDFs are read: the worker's settings of the same names.
    #[command(flatten)]
    pub pdf: ocrfleet_worker::config::PdfArgs,
    /// Print one JSON object per image instead of readable text.
    #[arg(long)]
    pub ndjson: bool,
    /// Images per engine call (detection batches group same-shape images within it); the
    /// worker's setting of the same name.
    #[arg(long = "ocr-batch", alias = "batch-size", env = "OCRFLEET_OCR_BATCH", default_value = ocrfleet_worker::config::default_of("ocr-batch"))]
    pub ocr_batch: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
}

const EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "pdf",
];

/// Expands directories (sorted, recursive); files named explicitly are always kept.
pub fn collect_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
}

pub fn run(args: OcrArgs) -> anyhow::Result<ExitCode> {
    let files = collect_files(&args.paths);
    if files.is_empty() {
        anyhow::bail!("no image files found under {:?}", args.paths);
    }
    let engine = Engine::new(args.engine.config()).context("cannot start the OCR engine")?;
    let pdf = PdfReader::new(&args)?;
    let progress = if files.len() > 8 {
        let pb = ProgressBar::new(files.len() as u64);
        pb.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let (mut ok, mut failed) = (0usize, 0usize);
    for chunk in files.chunks(args.ocr_batch.max(1)) {
        let mut results: Vec<Option<Result<ImageText, (String, String)>>> = vec![None; chunk.len()];
        let mut bytes = Vec::new();
        let mut slots = Vec::new();
        for (i, f) in chunk.iter().enumerate() {
            match std::fs::read(f) {
                Ok(b) => {
                    bytes.push(b);
                    slots.push(i);
                }
                Err(e) => results[i] = Some(Err(("read".into(), e.to_string()))),
            }
        }
        // PDFs go through the renderer; images to the engine in one call.
        let (pdfs, images): (Vec<_>, Vec<_>) = slots
            .into_iter()
            .zip(bytes)
            .partition(|(_, b)| ocrfleet_pdf::is_pdf(b));
        let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
        for ((i, _), r) in images.iter().zip(engine.recognize_bytes(&refs)) {
            results[*i] = Some(r.map_err(|e: OcrError| (e.stage().to_string(), e.to_string())));
        }
        for (i, b) in pdfs {
            results[i] = Some(pdf.read(&engine, b));
        }
        let mut buf = Vec::new();
        for (f, r) in chunk.iter().zip(results) {
            let r = r.expect("every file has a result");
            if r.is_ok() {
                ok += 1;
            } else {
                failed += 1;
            }
            write_result(&mut buf, f, &r, args.ndjson)?;
        }
        // The bar is cleared while the chunk's output is written, then drawn again below it.
        progress.suspend(|| -> std::io::Result<()> {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        })?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    if failed > 0 || files.len() > 1 {
        eprintln!("ocr: {} file(s): {ok} read, {failed} failed", files.len());
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One PDF renderer child (this binary's `pdf-child`) over the PDFium of `models_dir`, for the
/// commands that read PDFs one at a time (`ocr`, `bench pdf`).
pub fn one_renderer(models_dir: &Path) -> anyhow::Result<ocrfleet_pdf::Renderers> {
    Ok(ocrfleet_pdf::Renderers::new(ocrfleet_pdf::RendererConfig {
        program: std::env::current_exe()?,
        args: vec!["pdf-child".into()],
        library: models_dir.join("lib/libpdfium.so"),
        children: 1,
        memory_limit: 0,
        test_faults: false,
    }))
}

/// Reads PDFs for `ocr` with one renderer child, as the worker does (see [`ocrfleet_pdf`]).
pub struct PdfReader {
    rt: tokio::runtime::Runtime,
    renderers: ocrfleet_pdf::Renderers,
    opts: ocrfleet_pdf::ReadOptions,
}

impl PdfReader {
    pub fn new(args: &OcrArgs) -> anyhow::Result<PdfReader> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let engine = args.engine.config();
        let renderers = one_renderer(&engine.models_dir)?;
        Ok(PdfReader {
            rt,
            renderers,
            opts: args
                .pdf
                .clone()
                .settle()
                .map_err(anyhow::Error::msg)?
                .read_options(&engine),
        })
    }

    /// One PDF: its text-layer pages, its rendered pages OCRed, in page order.
    pub fn read(&self, engine: &Engine, bytes: Vec<u8>) -> Result<ImageText, (String, String)> {
        let decode = |e: ocrfleet_pdf::PdfError| ("decode".to_string(), e.to_string());
        let (plan, images) = self
            .rt
            .block_on(async {
                let mut s = self.renderers.session().await?;
                let plan = ocrfleet_pdf::plan(&mut s, bytes, &self.opts).await?;
                let images = ocrfleet_pdf::render(&mut s, &plan, &self.opts).await?;
                Ok((plan, images))
            })
            .map_err(decode)?;
        let mut pages = Vec::with_capacity(images.len());
        for r in engine.recognize(&images) {
            pages.push(r.map_err(|e| (e.stage().to_string(), e.to_string()))?);
        }
        ocrfleet_pdf::assemble(plan, pages).ok_or_else(|| decode(ocrfleet_pdf::PdfError::NoPages))
    }
}

fn write_result(
    out: &mut impl Write,
    file: &Path,
    r: &Result<ImageText, (String, String)>,
    ndjson: bool,
) -> std::io::Result<()> {
    let name = file.display().to_string();
    match (r, ndjson) {
        (Ok(t), true) => {
            let v = json!({"file": name, "width": t.width, "height": t.height, "pages": t.pages, "page_sources": t.sources, "lines": t.lines, "timings_ms": t.timings});
            writeln!(out, "{v}")
        }
        (Err((stage, message)), true) => {
            writeln!(
                out,
                "{}",
                json!({"file": name, "error": {"stage": stage, "message": message}})
            )
        }
        (Ok(t), false) => {
            writeln!(
                out,
                "== {name} ({}x{}, {} lines, {:.0} ms)",
                t.width,
                t.height,
                t.lines.len(),
                t.timings.total
            )?;
            let mut page = 0;
            for l in &t.lines {
                if t.pages > 1 && l.page != page {
                    page = l.page;
                    let source = t
                        .sources
                        .get(page as usize - 1)
                        .map_or("ocr", |s| s.as_str());
                    writeln!(out, "-- page {page} ({source})")?;
                }
                writeln!(out, "{}", l.text)?;
            }
            writeln!(out)
        }
        (Err((stage, message)), false) => writeln!(out, "== {name}: {stage} error: {message}\n"),
    }
}

//! `ocrfleet bench pdf`: pages per second of one PDF renderer child (one core: PDFium is
//! single-threaded), for reading a page's text layer and for rendering a page, and optionally
//! the OCR of the rendered pages, printed as a table. `tests/bench/pdf.sh` runs it beside
//! Poppler's `pdftoppm` at the same resolution.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use ocrfleet_ocr::Engine;
use ocrfleet_pdf::PlannedPage;

use crate::engine_args::EngineArgs;
use crate::ocr_cmd::collect_files;

#[derive(clap::Args)]
pub struct PdfBenchArgs {
    /// PDF files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// How PDFs are read: the worker's settings of the same names.
    #[command(flatten)]
    pub pdf: ocrfleet_worker::config::PdfArgs,
    /// Passes over the files.
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Also OCR the rendered pages (the engine's time per page beside the renderer's).
    #[arg(long)]
    pub ocr: bool,
    /// One JSON line with the figures after the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub fn bench_pdf(args: PdfBenchArgs) -> anyhow::Result<ExitCode> {
    let files: Vec<PathBuf> = collect_files(&args.paths)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf")))
        .collect();
    anyhow::ensure!(!files.is_empty(), "no PDF under {:?}", args.paths);
    let docs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let engine_cfg = args.engine.config();
    let engine = if args.ocr {
        Some(Engine::new(engine_cfg.clone()).context("cannot start the OCR engine")?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pool = crate::ocr_cmd::one_renderer(&engine_cfg.models_dir)?;
    let opts = args
        .pdf
        .clone()
        .settle()
        .map_err(anyhow::Error::msg)?
        .read_options(&engine_cfg);
    // Per page: reading its layer (open and plan, shared out over the pages), rendering, OCR.
    let (mut layer_ms, mut render_ms, mut ocr_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut text_pages, mut rendered_pages, mut pixels) = (0usize, 0usize, 0u64);
    let mut failed = 0usize;
    let wall = Instant::now();
    for _ in 0..args.repeat.max(1) {
        for bytes in &docs {
            let read = rt.block_on(async {
                let mut s = pool.session().await?;
                let t = Instant::now();
                let planned = ocrfleet_pdf::plan(&mut s, bytes.clone(), &opts).await?;
                let t_plan = t.elapsed().as_secs_f64() * 1000.0;
                let t = Instant::now();
                let images = ocrfleet_pdf::render(&mut s, &planned, &opts).await?;
                Ok::<_, ocrfleet_pdf::PdfError>((
                    planned,
                    t_plan,
                    images,
                    t.elapsed().as_secs_f64() * 1000.0,
                ))
            });
            let (planned, t_plan, images, t_render) = match read {
                Ok(r) => r,
                Err(e) => {
                    failed += 1;
                    tracing::debug!(error = %e, "a PDF of the set cannot be read; not counted");
                    continue;
                }
            };
            let n = planned.len().max(1) as f64;
            layer_ms.extend(std::iter::repeat_n(t_plan / n, planned.len()));
            text_pages += planned
                .iter()
                .filter(|p| matches!(p, PlannedPage::Text(_)))
                .count();
            if !images.is_empty() {
                rendered_pages += images.len();
                pixels += images
                    .iter()
                    .map(|i| u64::from(i.width()) * u64::from(i.height()))
                    .sum::<u64>();
                render_ms.extend(std::iter::repeat_n(
                    t_render / images.len() as f64,
                    images.len(),
                ));
                if let Some(e) = &engine {
                    let t = Instant::now();
                    let r = e.recognize(&images);
                    let per = t.elapsed().as_secs_f64() * 1000.0 / images.len() as f64;
                    anyhow::ensure!(r.iter().all(Result::is_ok), "OCR failed on a rendered page");
                    ocr_ms.extend(std::iter::repeat_n(per, images.len()));
                }
            }
        }
    }
    let wall = wall.elapsed().as_secs_f64();
    println!(
        "# ocrfleet bench pdf: {} file(s), {} pass(es), --pdf-text {:?}, {} dpi, one renderer child (one core); {:.1} s in all",
        files.len(),
        args.repeat.max(1),
        opts.mode,
        opts.dpi,
        wall
    );
    println!(
        "{:<28} {:>7} {:>10} {:>10} {:>12}",
        "step", "pages", "p50 ms", "p99 ms", "pages/s/core"
    );
    let mut json = serde_json::Map::new();
    for (name, v) in [
        ("text layer read (every page)", &mut layer_ms),
        ("render", &mut render_ms),
        ("ocr of the rendered pages", &mut ocr_ms),
    ] {
        if v.is_empty() {
            continue;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "{:<28} {:>7} {:>10.2} {:>10.2} {:>12.1}",
            name,
            v.len(),
            p50,
            p99,
            1000.0 / mean
        );
        json.insert(
            name.split(' ').next().unwrap_or(name).to_string(),
            serde_json::json!({"pages": v.len(), "p50_ms": p50, "p99_ms": p99, "pages_per_s": 1000.0 / mean}),
        );
    }
    println!(
        "pages from the text layer: {text_pages}; rendered: {rendered_pages} ({:.2} MP each on average); documents that could not be read (not counted): {failed}",
        pixels as f64 / rendered_pages.max(1) as f64 / 1e6
    );
    if args.json {
        json.insert("dpi".into(), serde_json::json!(opts.dpi));
        println!("{}", serde_json::Value::Object(json));
    }
    Ok(ExitCode::SUCCESS)
}

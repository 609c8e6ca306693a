//! `ocrfleet bench ocr`: throughput and latency per stage and for the whole engine, at a
//! range of batch sizes, printed as a table. Optionally compares with a peer run
//! (`bench/rapidocr_bench.py --json`) on the same images.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use image::RgbImage;
use ocrfleet_ocr::device::Realism;
use ocrfleet_ocr::{crop, decode, Engine};

use crate::engine_args::EngineArgs;
use crate::ocr_cmd::collect_files;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Engine-only benchmark: det, cls, rec and the whole pipeline at several batch sizes.
    Ocr(OcrBenchArgs),
    /// Model-only benchmark: ONNX Runtime `run` time per model and input shape, no pre- or
    /// post-processing (the yardstick for the engine's overhead).
    Models(ModelsBenchArgs),
    /// PDF pages per second of one renderer child: text layers read, pages rendered (and,
    /// with --ocr, OCRed).
    Pdf(crate::bench_pdf::PdfBenchArgs),
}

#[derive(clap::Args)]
pub struct ModelsBenchArgs {
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Timed runs per point (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Shapes as model:HxW (det, cls or rec).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "det:960x960,det:640x640,rec:48x320,rec:48x640,cls:48x192"
    )]
    pub shapes: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn bench_models(args: ModelsBenchArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::new(args.engine.config()).context("cannot start the OCR engine")?;
    println!(
        "# ocrfleet bench models: device {}, models {}, repeat {}",
        engine.provider(),
        engine.model_version(),
        args.repeat
    );
    println!(
        "{:<5} {:>10} {:>5} {:>10} {:>10} {:>10}",
        "model", "input", "batch", "items/s", "p50 ms", "p99 ms"
    );
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for spec in &args.shapes {
        let (name, hw) = spec.split_once(':').context("shape must be model:HxW")?;
        let (h, w) = hw.split_once('x').context("shape must be model:HxW")?;
        let (h, w): (usize, usize) = (h.parse()?, w.parse()?);
        let model = match name {
            "det" => ocrfleet_ocr::Model::Det,
            "rec" => ocrfleet_ocr::Model::Rec,
            "cls" => ocrfleet_ocr::Model::Cls,
            o => anyhow::bail!("unknown model {o:?}"),
        };
        for &n in &args.batch_sizes {
            // Deterministic pseudo-random input in [-1, 1].
            let tensor: Vec<f32> = (0..n * 3 * h * w)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect();
            engine
                .run_model_only(model, &tensor, n, [3, h, w])
                .map_err(anyhow::Error::msg)?;
            let mut lat: Vec<f64> = (0..args.repeat.max(1))
                .map(|_| {
                    engine
                        .run_model_only(model, &tensor, n, [3, h, w])
                        .map(|s| s * 1000.0)
                })
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
            lat.sort_by(f64::total_cmp);
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            println!(
                "{:<5} {:>10} {:>5} {:>10.1} {:>10.2} {:>10.2}",
                name,
                format!("3x{h}x{w}"),
                n,
                n as f64 * 1000.0 / mean,
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct OcrBenchArgs {
    /// Images or directories to use.
    #[arg(long = "images", default_value = "tests/fixtures/images")]
    pub images: Vec<PathBuf>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub batch_sizes: Vec<usize>,
    /// Passes over the image set per measurement.
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Stages to measure (det, cls, rec, pipeline).
    #[arg(long, value_delimiter = ',', default_value = "det,cls,rec,pipeline")]
    pub stages: Vec<String>,
    /// JSON line printed by `bench/rapidocr_bench.py --json` for the same images and threads:
    /// prints the pipeline's ratio against it.
    #[arg(long)]
    pub peer: Option<PathBuf>,
    /// The recorded device: record every model output during the warm-up, then answer every
    /// measured run from the recording. All CPU stages run for real and the networks do not,
    /// so the table shows the host's ceiling (what the CPU could feed a device).
    #[arg(long)]
    pub simulate: bool,
    /// With --simulate, a simulated device whose runs cost what this JSON file says (per model:
    /// fixed ms per run, ms per unit of padded tensor; see crates/ocr/src/instruments/device.rs and
    /// tests/bench/costs/). Each pipeline row is then run again on the pessimistic device
    /// (input copies, host CPU per run, streams that overlap 30 %; `pipe/pess` rows). Without it
    /// the recording answers at once.
    #[arg(long, requires = "simulate")]
    pub device_costs: Option<PathBuf>,
    /// With --device-costs, multiplies every cost (e.g. 4 to make the device the bottleneck on a
    /// small host).
    #[arg(long, default_value_t = 1.0, requires = "device_costs")]
    pub device_scale: f64,
    /// With --simulate, shape the work as the CUDA path does (detector canvases, CUDA width
    /// buckets, recogniser batch 32, batches padded to 1, ⌈B/4⌉ or B), so that the simulated
    /// device sees CUDA's tensors.
    #[arg(long, requires = "simulate")]
    pub like_cuda: bool,
    /// With --like-cuda, also give each input shape its own session as CUDA does (every shape
    /// made and run once at warm-up, on the CPU provider here): the CUDA path's sessions and
    /// their memory, measurable without a GPU.
    #[arg(long, requires = "like_cuda")]
    pub session_per_shape: bool,
    /// Engine calls in flight at once in the pipeline rows (0: one per runner, as the worker on
    /// CPU; the worker keeps two per runner on CUDA).
    #[arg(long, default_value_t = 0)]
    pub lanes: usize,
    /// Print, for the crops of the images, how much of the recogniser's tensors is padding
    /// under several width-bucket sets and batch paddings (and how many sessions each needs on
    /// CUDA), then stop.
    #[arg(long)]
    pub padding_report: bool,
    /// Also print one JSON object at the end (img_per_s, device_busy, host_cpu_ms_per_img,
    /// device, ...) for the best pipeline row, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Run fill, model and post-processing of neighbouring batches one after another instead
    /// of overlapped (for comparison).
    #[arg(long)]
    pub no_overlap: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Ocr(a) => bench_ocr(a),
        BenchCommand::Models(a) => bench_models(a),
        BenchCommand::Pdf(a) => crate::bench_pdf::bench_pdf(a),
    }
}

struct Row {
    stage: &'static str,
    batch: usize,
    items: usize,
    images: usize,
    lines: usize,
    secs: f64,
    /// Seconds inside ONNX Runtime's `run` during the measurement (the device's busy time).
    device_secs: f64,
    latencies_ms: Vec<f64>,
}

impl Row {
    fn new(
        stage: &'static str,
        batch: usize,
        images: usize,
        lines: usize,
        (secs, device_secs, latencies_ms): (f64, f64, Vec<f64>),
    ) -> Row {
        Row {
            stage,
            batch,
            items: if images > 0 { images } else { lines },
            images,
            lines,
            secs,
            device_secs,
            latencies_ms,
        }
    }
}

/// Prints one row of the `bench ocr` table (see the header in [`bench_ocr`]).
fn print_row(r: Option<&Row>) {
    let Some(r) = r else { return };
    let mut lat = r.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let per = |n: usize| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", n as f64 / r.secs)
        }
    };
    println!(
        "{:<9} {:>5} {:>7} {:>9} {:>9} {:>9.1} {:>9.1} {:>9.1}",
        r.stage,
        r.batch,
        r.items,
        per(r.images),
        per(r.lines),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        100.0 * r.device_secs / r.secs
    );
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx]
}

/// Runs `f` on the engine over `items` in chunks of `batch`, `repeat` times, from `lanes`
/// threads at once (each taking the next chunk); returns (seconds, seconds inside model runs
/// summed over models and runners, per-call ms).
fn time_chunks<T: Sync>(
    engine: &mut Engine,
    items: &[T],
    batch: usize,
    repeat: usize,
    lanes: usize,
    f: impl Fn(&Engine, &[T]) + Sync,
) -> anyhow::Result<(f64, f64, Vec<f64>)> {
    // Every shape these batch sizes make gets its session first (a no-op on CPU), so that no
    // timed run pays for one.
    engine.warm_up().context("engine warm-up failed")?;
    let engine: &Engine = engine;
    let chunks: Vec<&[T]> = (0..repeat).flat_map(|_| items.chunks(batch)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let lat = std::sync::Mutex::new(Vec::new());
    let device0 = engine.model_time().total();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..lanes.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { return };
                let t = Instant::now();
                f(engine, chunk);
                lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        secs,
        engine.model_time().total() - device0,
        lat.into_inner().unwrap(),
    ))
}

fn bench_ocr(args: OcrBenchArgs) -> anyhow::Result<ExitCode> {
    let files = collect_files(&args.images);
    anyhow::ensure!(!files.is_empty(), "no images under {:?}", args.images);
    let costs = device_costs(&args)?;
    let mut cfg = args.engine.config();
    if args.like_cuda {
        cfg = cfg.like_cuda();
    }
    if args.session_per_shape {
        cfg.session_per_shape = Some(true);
    }
    cfg.overlap = !args.no_overlap;
    let images: Vec<RgbImage> = files
        .iter()
        .filter_map(|f| {
            let b = std::fs::read(f).ok()?;
            decode::decode(&b, cfg.max_pixels).ok()
        })
        .collect();
    let mut engine = Engine::new(cfg).context("cannot start the OCR engine")?;
    let shapes = engine.warm_up().context("engine warm-up failed")?;
    let defaults = engine.config().clone();

    // Warm-up, and the crops that the cls and rec stages are measured on.
    let warm_up = Instant::now();
    if args.simulate {
        engine.record();
    }
    let boxes = engine.detect(&images);
    let crops: Vec<RgbImage> = images
        .iter()
        .zip(&boxes)
        .flat_map(|(img, b)| {
            b.as_ref()
                .map(|qs| {
                    qs.iter()
                        .filter_map(|q| crop::cut(img, q, defaults.det.crop_padding))
                        .map(|(pixels, _)| pixels)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    if args.padding_report {
        padding_report(&crops);
        return Ok(ExitCode::SUCCESS);
    }
    let warm = engine.recognize(&images);
    if args.simulate {
        // The stage rows run cls and rec on unrotated crops, which the pipeline never saw.
        engine.classify_lines(&crops);
        engine.recognize_lines(&crops);
    }
    let warm_up = warm_up.elapsed().as_secs_f64();
    let recorded = if args.simulate {
        Some(engine.simulate(costs.unwrap_or_default(), args.like_cuda))
    } else {
        None
    };
    let lanes = if args.lanes == 0 {
        engine.streams()
    } else {
        args.lanes
    };
    let lines_per_pass: usize = warm
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|t| t.lines.len())
        .sum();
    let all = |n: usize| {
        if n == 0 {
            "all".to_string()
        } else {
            n.to_string()
        }
    };
    let device = match (recorded, &costs) {
        (Some(n), None) => format!("recorded outputs of {} ({n} model items recorded; \"in run %\" is the lookup)", engine.provider()),
        (Some(n), Some(c)) => format!(
            "SIMULATED device of {} streams, costs {} x{} = {c:?} ({n} model items recorded from {}; \"in run %\" is the simulated device's busy share per stream)",
            engine.streams(),
            args.device_costs.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            args.device_scale,
            engine.provider()
        ),
        (None, _) => engine.provider(),
    };
    println!(
        "# ocrfleet bench ocr: {} images, {} crops, {} recognised lines per pass; device {}, models {} ({} graphs), streams {}, lanes {}, threads {}, host threads {}, overlap {}, repeat {}, shape warm-up {:.1} s ({} shapes, {} sessions), first pass {:.1} s",
        images.len(),
        crops.len(),
        lines_per_pass,
        device,
        engine.model_version(),
        match defaults.graph_variant() {
            "" => "downloaded",
            v => v,
        },
        engine.streams(),
        lanes,
        all(defaults.intra_threads),
        all(defaults.host_threads),
        if defaults.overlap { "on" } else { "off" },
        args.repeat,
        shapes.seconds,
        shapes.shapes,
        shapes.sessions,
        warm_up
    );

    let wants = |s: &str| args.stages.iter().any(|x| x == s);
    let mut rows = Vec::new();
    let mut costs = Vec::new();
    let mut pessimistic = Vec::new();
    // On the simulated device, one unmeasured pass of the pipeline at the rows' lanes before
    // the first row: the recording pass ran as one call on one lane, so the first row would
    // otherwise also pay for the memory that K lanes of calls take once (the kept batch
    // tensors, the allocator's heaps), which the kernel maps and zeroes on first touch:
    // measured at K = 2, 50–56 ms of host CPU a page in the first row against 31–36 in the
    // pessimistic row right after it, the difference all page zeroing.
    let mut settled = !args.simulate;
    // Rows are printed as they are measured, so a run cut short still leaves its table.
    println!(
        "{:<9} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "stage", "batch", "items", "img/s", "lines/s", "p50 ms", "p99 ms", "in run %"
    );
    for &b in &args.batch_sizes {
        let b = b.max(1);
        if wants("det") {
            engine.config_mut().det.batch_size = b;
            let t = time_chunks(&mut engine, &images, b, args.repeat, 1, |e, c| {
                e.detect(c);
            })?;
            rows.push(Row::new("det", b, images.len() * args.repeat, 0, t));
            print_row(rows.last());
        }
        if wants("cls") && !crops.is_empty() {
            engine.config_mut().cls.batch_size = b;
            let t = time_chunks(&mut engine, &crops, b, args.repeat, 1, |e, c| {
                e.classify_lines(c);
            })?;
            rows.push(Row::new("cls", b, 0, crops.len() * args.repeat, t));
            print_row(rows.last());
        }
        if wants("rec") && !crops.is_empty() {
            engine.config_mut().rec.batch_size = b;
            let t = time_chunks(&mut engine, &crops, b, args.repeat, 1, |e, c| {
                e.recognize_lines(c);
            })?;
            rows.push(Row::new("rec", b, 0, crops.len() * args.repeat, t));
            print_row(rows.last());
        }
        *engine.config_mut() = defaults.clone();
        if wants("pipeline") {
            engine.config_mut().det.batch_size = b;
            if !settled {
                time_chunks(&mut engine, &images, b, 1, lanes, |e, c| {
                    e.recognize(c);
                })?;
                settled = true;
            }
            let (row, cost) = pipeline_row(&mut engine, &images, b, args.repeat, lanes)?;
            costs.push((b, cost));
            rows.push(row);
            print_row(rows.last());
            if let (Some(d), Some(_)) = (engine.simulated_device(), &args.device_costs) {
                // The same batches on the pessimistic device, beside the idealised one.
                d.set_realism(Realism::PESSIMISTIC);
                let (mut row, cost) = pipeline_row(&mut engine, &images, b, args.repeat, lanes)?;
                d.set_realism(Realism::IDEAL);
                row.stage = PESSIMISTIC_ROW;
                pessimistic.push((b, cost));
                rows.push(row);
                print_row(rows.last());
            }
            *engine.config_mut() = defaults.clone();
        }
    }
    if !pessimistic.is_empty() {
        println!(
            "# {PESSIMISTIC_ROW}: the pipeline on the pessimistic device {:?} (guesses, see crates/ocr/src/instruments/device.rs)",
            Realism::PESSIMISTIC
        );
    }

    print_costs(&costs, &pessimistic);

    if args.json {
        // The best pipeline row, for scripts (tests/bench/gpu.sh, the simulated-device table).
        if let Some(v) = best_json(
            &args,
            &engine,
            &rows,
            (&costs, &pessimistic),
            (images.len(), lanes, &shapes),
        ) {
            println!("{v}");
        }
    }

    if let Some(peer) = &args.peer {
        print_against_peer(&rows, peer)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--device-costs`, scaled by `--device-scale`.
fn device_costs(args: &OcrBenchArgs) -> anyhow::Result<Option<ocrfleet_ocr::device::Costs>> {
    let Some(p) = &args.device_costs else {
        return Ok(None);
    };
    Ok(Some(read_costs(p)?.scaled(args.device_scale)))
}

/// A device cost file (`tests/bench/costs/`).
pub(crate) fn read_costs(p: &std::path::Path) -> anyhow::Result<ocrfleet_ocr::device::Costs> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str::<ocrfleet_ocr::device::Costs>(&text)
        .with_context(|| format!("{} is not a device cost file", p.display()))
}

/// One pipeline row: `images` recognised in batches of `b` on `lanes` concurrent calls, with
/// what each stage cost, the process's CPU, the bytes sent to the models and the device's
/// busy share.
fn pipeline_row(
    engine: &mut Engine,
    images: &[RgbImage],
    b: usize,
    repeat: usize,
    lanes: usize,
) -> anyhow::Result<(Row, StageCost)> {
    let tally = std::sync::Mutex::new((0usize, StageCost::default()));
    let cpu0 = process_cpu_seconds();
    let sim0 = engine
        .simulated_device()
        .map_or(0.0, |d| d.bookkeeping_seconds());
    let busy0 = engine.simulated_device().map(|d| d.busy_seconds());
    let bytes0 = engine.input_bytes();
    let t = time_chunks(engine, images, b, repeat, lanes, |e, c| {
        let out = e.recognize(c);
        let mut tally = tally.lock().unwrap();
        for t in out.iter().filter_map(|r| r.as_ref().ok()) {
            tally.0 += t.lines.len();
            tally.1.add(&t.timings);
        }
    })?;
    let (lines, mut cost) = tally.into_inner().unwrap();
    // The simulator's own CPU (hashing inputs to find their recordings) is not the engine's.
    cost.simulator_cpu_secs = engine
        .simulated_device()
        .map_or(0.0, |d| d.bookkeeping_seconds())
        - sim0;
    cost.cpu_secs = process_cpu_seconds() - cpu0 - cost.simulator_cpu_secs;
    cost.wall_secs = t.0;
    cost.input_bytes = engine.input_bytes() - bytes0;
    cost.device_busy = match (busy0, engine.simulated_device()) {
        (Some(b0), Some(d)) => (d.busy_seconds() - b0) / (t.0 * engine.streams() as f64),
        _ => t.1 / (t.0 * engine.streams() as f64),
    };
    let row = Row::new("pipeline", b, images.len() * repeat, lines, t);
    Ok((row, cost))
}

/// A pipeline row's batch size and what its stages cost.
type BatchCost = (usize, StageCost);

/// The stage name of the pipeline rows on the pessimistic device.
const PESSIMISTIC_ROW: &str = "pipe/pess";

/// The pipeline rows' cost per image by stage (those on the pessimistic device marked `p`).
fn print_costs(costs: &[BatchCost], pessimistic: &[BatchCost]) {
    if costs.is_empty() {
        return;
    }
    println!("\n# pipeline cost per image by stage, ms summed over threads (det, cls and rec include their share of the batch's tensor fill, the wait for a free runner and the model run or replay); process CPU per image and images per second per busy core from /proc/self/stat, less the simulated device's own bookkeeping; input MB: model input per image, what a device is sent");
    println!(
        "{:<5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>10} {:>9}",
        "batch", "det", "crop", "cls", "rec", "total", "CPU ms", "cores", "img/s/core", "input MB"
    );
    let marked = costs.iter().map(|(b, c)| (b.to_string(), c));
    for (b, c) in marked.chain(pessimistic.iter().map(|(b, c)| (format!("{b}p"), c))) {
        let n = c.images.max(1) as f64;
        println!(
            "{:<5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7.2} {:>10.1} {:>9.2}",
            b,
            c.det / n,
            c.crop / n,
            c.cls / n,
            c.rec / n,
            (c.det + c.crop + c.cls + c.rec) / n,
            1000.0 * c.cpu_secs / n,
            c.cpu_secs / c.wall_secs.max(1e-9),
            n / c.cpu_secs.max(1e-9),
            c.input_bytes as f64 / 1e6 / n
        );
    }
}

/// The best pipeline row as one JSON line (`--json`): images, lanes and the warm-up are the
/// run's.
fn best_json(
    args: &OcrBenchArgs,
    engine: &Engine,
    rows: &[Row],
    (costs, pessimistic): (&[BatchCost], &[BatchCost]),
    (images, lanes, shapes): (usize, usize, &ocrfleet_ocr::WarmUp),
) -> Option<serde_json::Value> {
    let (r, (b, c)) = rows
        .iter()
        .filter(|r| r.stage == "pipeline")
        .zip(costs.iter())
        .max_by(|a, b| (a.0.images as f64 / a.0.secs).total_cmp(&(b.0.images as f64 / b.0.secs)))?;
    let mut v = row_json(r, c);
    // The pessimistic device at the same batch size.
    if let Some((pr, (_, pc))) = rows
        .iter()
        .filter(|r| r.stage == PESSIMISTIC_ROW)
        .zip(pessimistic.iter())
        .find(|(_, (pb, _))| pb == b)
    {
        v["pessimistic"] = row_json(pr, pc);
        v["pessimistic"]["realism"] = serde_json::json!(Realism::PESSIMISTIC);
    }
    let more = serde_json::json!({
        "batch": b,
        "device": if args.device_costs.is_some() { "simulated".to_string() } else if args.simulate { "recorded".to_string() } else { engine.provider() },
        "streams": engine.streams(),
        "lanes": lanes,
        "images": images,
        "warm_up_s": shapes.seconds,
        "sessions": shapes.sessions,
        // The shared arena's counters after warm-up and after the rows (null with an arena
        // per session): what the device memory the engine holds comes to.
        "arena_after_warm_up": shapes.arena,
        "arena": engine.arena(),
    });
    for (k, x) in more.as_object()?.clone() {
        v[k] = x;
    }
    Some(v)
}

/// A pipeline row's figures for the JSON line: throughput, device busy share, host CPU, the
/// bytes sent, latency.
fn row_json(r: &Row, c: &StageCost) -> serde_json::Value {
    let mut lat = r.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let n = c.images.max(1) as f64;
    serde_json::json!({
        "img_per_s": r.images as f64 / r.secs,
        "lines_per_s": r.lines as f64 / r.secs,
        "device_busy": c.device_busy,
        "host_cpu_ms_per_img": 1000.0 * c.cpu_secs / n,
        "simulator_cpu_ms_per_img": 1000.0 * c.simulator_cpu_secs / n,
        "input_mb_per_img": c.input_bytes as f64 / 1e6 / n,
        "busy_cores": c.cpu_secs / c.wall_secs.max(1e-9),
        "p50_ms": percentile(&lat, 0.5),
        "p99_ms": percentile(&lat, 0.99),
    })
}

/// The pipeline rows against a peer's JSON line (`--peer`).
fn print_against_peer(rows: &[Row], peer: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(peer).with_context(|| format!("reading {}", peer.display()))?;
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))
        .with_context(|| format!("{} is not a JSON line", peer.display()))?;
    let peer_ips = v["img_per_s"]
        .as_f64()
        .context("peer JSON has no img_per_s")?;
    println!(
        "\n# against peer {} ({:.2} img/s)",
        v["engine"]
            .as_str()
            .or(v["name"].as_str())
            .unwrap_or("peer"),
        peer_ips
    );
    println!(
        "{:<9} {:>5} {:>9} {:>9} {:>7}",
        "stage", "batch", "img/s", "peer", "ratio"
    );
    for r in rows.iter().filter(|r| r.stage == "pipeline") {
        let ips = r.images as f64 / r.secs;
        println!(
            "{:<9} {:>5} {:>9.2} {:>9.2} {:>6.2}x",
            r.stage,
            r.batch,
            ips,
            peer_ips,
            ips / peer_ips
        );
    }
    Ok(())
}

/// Per-stage milliseconds summed over images (from each result's [`ocrfleet_ocr::Timings`]).
#[derive(Default)]
struct StageCost {
    images: usize,
    /// CPU seconds of the whole process (user + system) during the row, less the simulated
    /// device's bookkeeping (`simulator_cpu_secs`), and wall seconds.
    cpu_secs: f64,
    simulator_cpu_secs: f64,
    wall_secs: f64,
    /// The device's busy share per stream during the row (simulated, or time inside runs).
    device_busy: f64,
    /// Bytes of model input (what a device is sent) during the row.
    input_bytes: u64,
    det: f64,
    crop: f64,
    cls: f64,
    rec: f64,
}

impl StageCost {
    fn add(&mut self, t: &ocrfleet_ocr::Timings) {
        self.images += 1;
        self.det += t.det;
        self.crop += t.crop;
        self.cls += t.cls;
        self.rec += t.rec;
    }
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat` through procfs (the
/// crate behind the worker's process metrics, which also reads the clock-tick rate); 0 where
/// that file does not exist.
fn process_cpu_seconds() -> f64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64)
        .unwrap_or(0.0)
}

/// The recogniser's padded share for `crops` under several bucket sets and batch paddings (see
/// `--padding-report`): batches as the recogniser stage makes them (sorted by bucket, at most
/// `B` = 32 each), each padded to its bucket's width and to the batch size the ladder gives.
fn padding_report(crops: &[RgbImage]) {
    use ocrfleet_ocr::rec;
    let widths: Vec<u32> = crops
        .iter()
        .map(|c| {
            ocrfleet_ocr::preprocess::width_at_height(c.width(), c.height(), rec::HEIGHT, u32::MAX)
        })
        .collect();
    let every = |from: u32, to: u32, step: u32| -> Vec<u32> {
        (from..=to).step_by(step as usize).collect()
    };
    let mut cuda = vec![320, 480, 640, 960, 1280, 1920, 2560];
    let mut fine = every(128, 1280, 64);
    fine.extend([1920, 2560]);
    let mut mid = ocrfleet_ocr::RecConfig::CUDA_WIDTHS.to_vec();
    let sets: Vec<(&str, Vec<u32>)> = vec![
        (
            "CUDA until 2026-12-02: 320, 480, 640, 960, 1280, 1920, 2560",
            std::mem::take(&mut cuda),
        ),
        (
            "CUDA now (RecConfig::CUDA_WIDTHS): 160, 240, 320, 400, 480, 640, 800, 960, 1280, 1920, 2560",
            std::mem::take(&mut mid),
        ),
        (
            "every 64 px from 128 to 1280, 1920, 2560",
            std::mem::take(&mut fine),
        ),
        ("every 32 px from 64 (the CPU's)", every(64, 2560, 32)),
    ];
    let b = 32usize;
    /// A batch padding: its name, the padded size of a run of n, and the sizes it makes.
    type Ladder = (&'static str, Box<dyn Fn(usize) -> usize>, usize);
    let ladders: Vec<Ladder> = vec![
        (
            "1, B/4, B",
            Box::new(move |n| [1, b / 4, b].into_iter().find(|&s| s >= n).unwrap_or(n)),
            3,
        ),
        (
            "multiples of 8",
            Box::new(|n: usize| n.div_ceil(8) * 8),
            b / 8,
        ),
        ("none (exact)", Box::new(|n| n), b),
    ];
    println!("# recogniser padding over {} crops (content = each crop's width at height 48, capped by its bucket); B = {b}", crops.len());
    println!("| width buckets | batch padding | padded share | of which batch padding | sessions per runner |");
    println!("|---|---|---|---|---|");
    for (name, set) in &sets {
        for (lname, ladder, sizes) in &ladders {
            let mut sorted: Vec<(u32, u32)> = widths
                .iter()
                .map(|&w| {
                    let bucket = set
                        .iter()
                        .copied()
                        .find(|&x| x >= w)
                        .unwrap_or(*set.last().unwrap());
                    (bucket, w.min(bucket))
                })
                .collect();
            sorted.sort_unstable();
            let (mut content, mut width_padded, mut total) = (0u64, 0u64, 0u64);
            for run in sorted.chunk_by(|a, b| a.0 == b.0) {
                for batch in run.chunks(b) {
                    let bucket = u64::from(batch[0].0);
                    content += batch.iter().map(|x| u64::from(x.1)).sum::<u64>();
                    width_padded += bucket * batch.len() as u64;
                    total += bucket * ladder(batch.len()) as u64;
                }
            }
            println!(
                "| {name} | {lname} | {:.1} % | {:.1} % | {} |",
                100.0 * (1.0 - content as f64 / total as f64),
                100.0 * (total - width_padded) as f64 / total as f64,
                set.len() * sizes
            );
        }
    }
}

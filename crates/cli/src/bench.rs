//! `ocrfleet bench ocr`: throughput and latency per stage and for the whole engine, at a
//! range of batch sizes, printed as a table. Optionally compares with a peer run
//! (`bench/rapidocr_bench.py --json`) on the same images.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use image::RgbImage;
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
    let mut engine = Engine::new(args.engine.config()).context("cannot start the OCR engine")?;
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
    /// The replay device: record every model output during the warm-up, then answer every
    /// measured run from the recording. All CPU stages run for real and the networks do not,
    /// so the table shows the host's ceiling (what the CPU could feed a device).
    #[arg(long)]
    pub replay: bool,
    /// With --replay, a simulated device: milliseconds per batch item that each det, cls and
    /// rec run waits (e.g. 2.83,0.05,0.31, from the H200 model-only figures in the README).
    #[arg(long, value_delimiter = ',', requires = "replay")]
    pub replay_device_ms: Vec<f64>,
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

/// Runs `f` on the engine over `items` in chunks of `batch`, `repeat` times; returns (seconds,
/// seconds inside ONNX Runtime's `run`, per-call ms).
fn time_chunks<T>(
    engine: &mut Engine,
    items: &[T],
    batch: usize,
    repeat: usize,
    mut f: impl FnMut(&mut Engine, &[T]),
) -> anyhow::Result<(f64, f64, Vec<f64>)> {
    // Every shape these batch sizes make gets its session first (a no-op on CPU), so that no
    // timed run pays for one.
    engine.warm_up().context("engine warm-up failed")?;
    let mut lat = Vec::new();
    let device0 = engine.model_time().total();
    let t0 = Instant::now();
    for _ in 0..repeat {
        for chunk in items.chunks(batch) {
            let t = Instant::now();
            f(engine, chunk);
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((secs, engine.model_time().total() - device0, lat))
}

fn bench_ocr(args: OcrBenchArgs) -> anyhow::Result<ExitCode> {
    let files = collect_files(&args.images);
    anyhow::ensure!(!files.is_empty(), "no images under {:?}", args.images);
    anyhow::ensure!(
        matches!(args.replay_device_ms.len(), 0 | 3),
        "--replay-device-ms takes three numbers: det,cls,rec"
    );
    let mut cfg = args.engine.config();
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
    if args.replay {
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
    let warm = engine.recognize(&images);
    if args.replay {
        // The stage rows run cls and rec on unrotated crops, which the pipeline never saw.
        engine.classify_lines(&crops);
        engine.recognize_lines(&crops);
    }
    let warm_up = warm_up.elapsed().as_secs_f64();
    let recorded = if args.replay {
        let ms = |i: usize| args.replay_device_ms.get(i).copied().unwrap_or(0.0);
        Some(engine.replay_on_device(ocrfleet_ocr::ModelTime {
            det: ms(0),
            cls: ms(1),
            rec: ms(2),
        }))
    } else {
        None
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
    println!(
        "# ocrfleet bench ocr: {} images, {} crops, {} recognised lines per pass; device {}, models {} ({} graphs), threads {}, host threads {}, overlap {}, repeat {}, shape warm-up {:.1} s ({} shapes, {} sessions), first pass {:.1} s",
        images.len(),
        crops.len(),
        lines_per_pass,
        match recorded {
            Some(n) if args.replay_device_ms.is_empty() => format!("replay of {} ({n} model items recorded; \"in run %\" is the replay's lookup)", engine.provider()),
            Some(n) => format!("replay of {} on a simulated device of {:?} ms per det/cls/rec item ({n} model items recorded; \"in run %\" is the simulated device's busy share)", engine.provider(), args.replay_device_ms),
            None => engine.provider(),
        },
        engine.model_version(),
        match defaults.graph_variant() {
            "" => "downloaded",
            v => v,
        },
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
    // Rows are printed as they are measured, so a run cut short still leaves its table.
    println!(
        "{:<9} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "stage", "batch", "items", "img/s", "lines/s", "p50 ms", "p99 ms", "in run %"
    );
    for &b in &args.batch_sizes {
        let b = b.max(1);
        if wants("det") {
            engine.config_mut().det.batch_size = b;
            let t = time_chunks(&mut engine, &images, b, args.repeat, |e, c| {
                e.detect(c);
            })?;
            rows.push(Row::new("det", b, images.len() * args.repeat, 0, t));
            print_row(rows.last());
        }
        if wants("cls") && !crops.is_empty() {
            engine.config_mut().cls.batch_size = b;
            let t = time_chunks(&mut engine, &crops, b, args.repeat, |e, c| {
                e.classify_lines(c);
            })?;
            rows.push(Row::new("cls", b, 0, crops.len() * args.repeat, t));
            print_row(rows.last());
        }
        if wants("rec") && !crops.is_empty() {
            engine.config_mut().rec.batch_size = b;
            let t = time_chunks(&mut engine, &crops, b, args.repeat, |e, c| {
                e.recognize_lines(c);
            })?;
            rows.push(Row::new("rec", b, 0, crops.len() * args.repeat, t));
            print_row(rows.last());
        }
        *engine.config_mut() = defaults.clone();
        if wants("pipeline") {
            engine.config_mut().det.batch_size = b;
            let mut lines = 0usize;
            let mut cost = StageCost::default();
            let cpu0 = process_cpu_seconds();
            let t = time_chunks(&mut engine, &images, b, args.repeat, |e, c| {
                for t in e.recognize(c).iter().filter_map(|r| r.as_ref().ok()) {
                    lines += t.lines.len();
                    cost.add(&t.timings);
                }
            })?;
            cost.cpu_secs = process_cpu_seconds() - cpu0;
            cost.wall_secs = t.0;
            costs.push((b, cost));
            rows.push(Row::new(
                "pipeline",
                b,
                images.len() * args.repeat,
                lines,
                t,
            ));
            print_row(rows.last());
            *engine.config_mut() = defaults.clone();
        }
    }

    if !costs.is_empty() {
        println!("\n# pipeline cost per image by stage, ms summed over threads (det, cls and rec include their share of the batch's tensor fill and model run or replay); process CPU per image and images per second per busy core from /proc/self/stat");
        println!(
            "{:<5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>10}",
            "batch", "det", "crop", "cls", "rec", "total", "CPU ms", "cores", "img/s/core"
        );
        for (b, c) in &costs {
            let n = c.images.max(1) as f64;
            println!(
                "{:<5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7.2} {:>10.1}",
                b,
                c.det / n,
                c.crop / n,
                c.cls / n,
                c.rec / n,
                (c.det + c.crop + c.cls + c.rec) / n,
                1000.0 * c.cpu_secs / n,
                c.cpu_secs / c.wall_secs.max(1e-9),
                n / c.cpu_secs.max(1e-9)
            );
        }
    }

    if let Some(peer) = &args.peer {
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
    }
    Ok(ExitCode::SUCCESS)
}

/// Per-stage milliseconds summed over images (from each result's [`ocrfleet_ocr::Timings`]).
#[derive(Default)]
struct StageCost {
    images: usize,
    /// CPU seconds of the whole process (user + system) and wall seconds during the row.
    cpu_secs: f64,
    wall_secs: f64,
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

//! `ocrfleet`: the command-line entry point. Each subcommand lives in its own module; this file
//! only parses arguments and sets up logging.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod engine_args;
mod ocr_cmd;
mod replay_cmd;
mod worker_cmd;

/// Kafka-driven fleet of batched PP-OCR workers.
#[derive(Parser)]
#[command(name = "ocrfleet", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: text or json.
    #[arg(
        long,
        global = true,
        env = "OCRFLEET_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// OCR image files or directories and print the text (or NDJSON).
    Ocr(ocr_cmd::OcrArgs),
    /// Run a worker: Kafka → download → batched OCR → Elasticsearch, failures to the dead-letter topic.
    Worker(Box<worker_cmd::WorkerCmd>),
    /// Publish image URLs (one per line, or JSON messages) to the source topic.
    Produce(worker_cmd::ProduceCmd),
    /// Re-publish dead letters to the source topic (filter by stage, class, time, partition).
    Replay(replay_cmd::ReplayCmd),
    /// Benchmarks that print tables.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Ocr(args) => ocr_cmd::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Worker(cmd) => worker_cmd::run_worker(*cmd),
        Command::Produce(cmd) => worker_cmd::run_produce(cmd),
        Command::Replay(cmd) => replay_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! `ocrfleet`: the command-line entry point. Each subcommand lives in its own module; this file
//! only parses arguments and sets up logging.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_pdf;
mod engine_args;
mod ocr_cmd;
mod produce_cmd;
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
    #[command(
        after_help = "Exit status: 0 every line sent (blank and # lines skipped); 1 a delivery failed; 2 unusable arguments or no broker (nothing sent); 3 some lines were invalid (not sent, counted and logged), every valid one delivered."
    )]
    Produce(produce_cmd::ProduceCmd),
    /// Re-publish dead letters to the source topic (filter by stage, class, time, partition).
    Replay(replay_cmd::ReplayCmd),
    /// Benchmarks that print tables.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--version`: the build's features and the ONNX Runtime library it would load (the
/// default `models/lib`, or `ORT_DYLIB_PATH`), with that library's own version.
fn long_version() -> String {
    let features = if ocrfleet_ocr::CUDA_BUILT {
        "cuda"
    } else {
        "none (CPU only; build with --features cuda for GPUs)"
    };
    let lib = ocrfleet_ocr::EngineConfig::default().ort_library_path();
    let ort = match ocrfleet_ocr::runtime::read_version(&lib) {
        Some(v) => format!("{v} ({})", lib.display()),
        None => format!(
            "not found at {} (models/fetch.sh installs it; ORT_DYLIB_PATH or --models-dir point elsewhere)",
            lib.display()
        ),
    };
    let models = std::env::var_os("OCRFLEET_MODELS_DIR").map_or_else(
        || ocrfleet_ocr::EngineConfig::default().models_dir,
        Into::into,
    );
    let pdfium_lib = models.join("lib/libpdfium.so");
    let pdfium = if pdfium_lib.is_file() {
        format!(
            "{} ({})",
            ocrfleet_pdf::PDFIUM_VERSION,
            pdfium_lib.display()
        )
    } else {
        format!(
            "not found at {} (models/fetch.sh installs PDFium {}; --models-dir points elsewhere)",
            pdfium_lib.display(),
            ocrfleet_pdf::PDFIUM_VERSION
        )
    };
    format!(
        "{}\nfeatures: {features}\nonnxruntime: {ort}\npdfium: {pdfium}",
        env!("CARGO_PKG_VERSION")
    )
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // The PDF renderer child (`ocrfleet pdf-child --library PATH`), started by `ocr` and the
    // worker: before anything else, since its stdout is a protocol, not a terminal.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "pdf-child") {
        let code = ocrfleet_pdf::child_main(args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let mut command = Cli::command();
    if std::env::args().any(|a| a == "--version") {
        command = command.long_version(long_version());
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Ocr(args) => ocr_cmd::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Worker(cmd) => worker_cmd::run_worker(*cmd),
        Command::Produce(cmd) => produce_cmd::run_produce(cmd),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use ocrfleet_worker::config::REFERENCE;

    use super::Cli;

    /// A flag that is a worker setting means the same in every command that takes it: the same
    /// environment variable and the same default as the settings table, so that no command can
    /// keep a copy that drifts (the shared sections are flattened from the table).
    #[test]
    fn every_command_takes_the_worker_settings_it_shares_from_the_table() {
        let cli = Cli::command();
        let mut stack = vec![&cli];
        let mut shared = std::collections::BTreeMap::<&str, Vec<String>>::new();
        while let Some(c) = stack.pop() {
            stack.extend(c.get_subcommands());
            for a in c.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                let Some(r) = REFERENCE.iter().find(|r| r.flag == long) else {
                    continue;
                };
                // `replay --group` names replay's own consumer group (to resume a replay), not
                // the workers': a different setting under the same word.
                if (c.get_name(), long) == ("replay", "group") {
                    continue;
                }
                let env = a.get_env().and_then(|e| e.to_str());
                assert_eq!(env, Some(r.env), "`{}` --{long}", c.get_name());
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let defaults: Vec<_> = a.get_default_values().iter().collect();
                let same_default = match defaults.as_slice() {
                    [] => {
                        r.default.is_empty() || help.contains(&format!("[default: {}]", r.default))
                    }
                    [d] => d.to_str() == Some(r.default),
                    _ => false,
                };
                assert!(
                    same_default,
                    "`{}` --{long}: {defaults:?} {help}",
                    c.get_name()
                );
                shared
                    .entry(r.flag)
                    .or_default()
                    .push(c.get_name().to_owned());
            }
        }
        // The shared sections reach the other commands: the engine's, the Kafka connection's.
        for flag in [
            "device",
            "models",
            "det-limit",
            "brokers",
            "kafka-option",
            "pdf-dpi",
        ] {
            assert!(
                shared[flag].len() >= 2,
                "--{flag} only in {:?}",
                shared[flag]
            );
        }
    }
}

//! `ocrfleet worker` and `ocrfleet produce`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use ocrfleet_worker::config::{reference_markdown, KafkaConfig};
use ocrfleet_worker::{WorkerArgs, WorkerConfig};

#[derive(clap::Args)]
pub struct WorkerCmd {
    /// TOML file with settings (keys are the flag names); flags and OCRFLEET_* variables win.
    #[arg(long, env = "OCRFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the settings reference as a Markdown table and exit.
    #[arg(long)]
    pub print_reference: bool,
    /// Test-only: inject an engine fault (`fail:AFTER_IMAGES:SECONDS`, `exit:AFTER_IMAGES`, or
    /// `panic|abort|hang:WIDTHxHEIGHT`).
    #[arg(long, hide = true)]
    pub test_engine_fault: Option<ocrfleet_ocr::FaultPlan>,
    /// Test-only: a prepare task panics (in its decode stage) on a URL containing this text.
    #[arg(long, hide = true)]
    pub test_prepare_panic: Option<String>,
    /// Test-only: the PDF renderer children abort on a document containing
    /// `%ocrfleet-test-abort` and hang on one containing `%ocrfleet-test-hang`.
    #[arg(long, hide = true)]
    pub test_pdf_faults: bool,
    #[command(flatten)]
    pub settings: WorkerArgs,
}

pub fn run_worker(cmd: WorkerCmd) -> anyhow::Result<ExitCode> {
    if cmd.print_reference {
        print!("{}", reference_markdown());
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = WorkerConfig::load(cmd.settings, cmd.config.as_deref())?;
    for name in ocrfleet_worker::config::unknown_env(std::env::vars()) {
        tracing::warn!(
            variable = %name,
            "{name} is not a worker setting and is ignored (see `ocrfleet worker --print-reference`)"
        );
    }
    if let Some(plan) = cmd.test_engine_fault {
        tracing::warn!(?plan, "test-only engine fault injection is on");
        cfg.engine.fault = Some(plan);
    }
    if cmd.test_pdf_faults {
        tracing::warn!("test-only PDF renderer fault injection is on");
        cfg.pdf.test_faults = true;
    }
    if let Some(s) = cmd.test_prepare_panic {
        tracing::warn!(url_contains = %s, "test-only prepare panic injection is on");
        cfg.test_prepare_panic = Some(s);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match rt.block_on(ocrfleet_worker::run(cfg, ocrfleet_worker::termination())) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        // The cause is logged by the worker; exit non-zero so that the pod is restarted.
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Connection to Kafka for the short-lived commands (`produce`, `replay`), under the worker's
/// flag names and variables.
#[derive(clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "OCRFLEET_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Kafka security.protocol.
    #[arg(
        long,
        env = "OCRFLEET_KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: String,
    /// Kafka SASL mechanism.
    #[arg(long, env = "OCRFLEET_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// Kafka SASL username.
    #[arg(long, env = "OCRFLEET_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// File holding the Kafka SASL password.
    #[arg(long, env = "OCRFLEET_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// CA certificate (PEM) for Kafka TLS.
    #[arg(long, env = "OCRFLEET_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,
}

impl KafkaArgs {
    /// The connection settings, for `topic`.
    pub fn config(&self, topic: &str) -> anyhow::Result<KafkaConfig> {
        let password = match &self.kafka_sasl_password_file {
            Some(p) => Some(ocrfleet_worker::config::Secret::from(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?
                    .trim_end()
                    .to_owned(),
            )),
            None => None,
        };
        Ok(KafkaConfig {
            brokers: self.brokers.clone(),
            topic: topic.to_owned(),
            group: String::new(),
            dlq_topic: String::new(),
            security_protocol: self.kafka_security_protocol.clone(),
            sasl_mechanism: self.kafka_sasl_mechanism.clone(),
            sasl_username: self.kafka_sasl_username.clone(),
            sasl_password: password,
            ssl_ca_location: self.kafka_ssl_ca_location.clone(),
            options: Vec::new(),
        })
    }
}

#[derive(clap::Args)]
pub struct ProduceCmd {
    /// File of URLs or JSON messages, one per line; `-` or nothing reads standard input.
    pub input: Option<PathBuf>,
    /// Topic to publish to.
    #[arg(long, env = "OCRFLEET_KAFKA_TOPIC", default_value = "ocr.requests")]
    pub topic: String,
    /// Create the topic and its dead-letter topic (<topic>.dlq) with this many partitions each
    /// if they do not exist yet.
    #[arg(long)]
    pub create_partitions: Option<i32>,
    /// How long to wait for the brokers at start and for each message's delivery; past it the
    /// command says so and exits non-zero.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub delivery_timeout: std::time::Duration,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

pub fn run_produce(cmd: ProduceCmd) -> anyhow::Result<ExitCode> {
    let kafka = cmd.kafka.config(&cmd.topic)?;
    let input: Box<dyn BufRead> = match cmd.input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", p.display()))?,
        )),
    };
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(p) = cmd.create_partitions {
        for t in [cmd.topic.clone(), format!("{}.dlq", cmd.topic)] {
            if rt.block_on(ocrfleet_worker::commands::produce::ensure_topic(
                &kafka, &t, p,
            ))? {
                eprintln!("created topic {t} with {p} partition(s)");
            }
        }
    }
    let counts = rt.block_on(ocrfleet_worker::commands::produce::produce(
        &kafka,
        &cmd.topic,
        input,
        cmd.delivery_timeout,
        |c| {
            pb.set_message(format!(
                "sent {} invalid {} failed {}",
                c.sent, c.invalid, c.failed
            ));
            pb.tick();
        },
    ))?;
    pb.finish_and_clear();
    println!(
        "produced to {}: sent {}, invalid {}, failed {}, skipped {}",
        cmd.topic, counts.sent, counts.invalid, counts.failed, counts.skipped
    );
    Ok(produce_exit(&counts))
}

/// `ocrfleet produce`'s exit code: 0 when every line was sent (blank and `#` lines are
/// skipped), 1 when a delivery failed, 3 when every valid line was delivered but some lines
/// were invalid (not sent). 2 is for unusable arguments or a check that failed before anything
/// was sent.
fn produce_exit(c: &ocrfleet_worker::commands::produce::ProduceCounts) -> ExitCode {
    if c.failed > 0 {
        ExitCode::from(1)
    } else if c.invalid > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

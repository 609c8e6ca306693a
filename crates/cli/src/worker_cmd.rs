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
    /// Test-only: inject an engine fault (`fail:AFTER_IMAGES:SECONDS` or `exit:AFTER_IMAGES`).
    #[arg(long, hide = true)]
    pub test_engine_fault: Option<ocrfleet_ocr::FaultPlan>,
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

#[derive(clap::Args)]
pub struct ProduceCmd {
    /// File of URLs or JSON messages, one per line; `-` or nothing reads standard input.
    pub input: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "OCRFLEET_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic to publish to.
    #[arg(long, env = "OCRFLEET_KAFKA_TOPIC", default_value = "ocr.requests")]
    pub topic: String,
    /// Create the topic and its dead-letter topic (<topic>.dlq) with this many partitions if
    /// they do not exist yet.
    #[arg(long)]
    pub create_partitions: Option<i32>,
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
    /// How long to wait for the brokers at start and for each message's delivery; past it the
    /// command says so and exits non-zero.
    #[arg(long, default_value = "30s")]
    pub delivery_timeout: ocrfleet_worker::config::HumanDuration,
}

pub fn run_produce(cmd: ProduceCmd) -> anyhow::Result<ExitCode> {
    let password = match &cmd.kafka_sasl_password_file {
        Some(p) => Some(ocrfleet_worker::config::Secret(
            std::fs::read_to_string(p)?.trim_end().to_owned(),
        )),
        None => None,
    };
    let kafka = KafkaConfig {
        brokers: cmd.brokers.clone(),
        topic: cmd.topic.clone(),
        group: String::new(),
        dlq_topic: String::new(),
        security_protocol: cmd.kafka_security_protocol.clone(),
        sasl_mechanism: cmd.kafka_sasl_mechanism.clone(),
        sasl_username: cmd.kafka_sasl_username.clone(),
        sasl_password: password,
        ssl_ca_location: cmd.kafka_ssl_ca_location.clone(),
        options: Vec::new(),
    };
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
        for (t, n) in [(cmd.topic.clone(), p), (format!("{}.dlq", cmd.topic), 1)] {
            if rt.block_on(ocrfleet_worker::kafka::produce::ensure_topic(&kafka, &t, n))? {
                eprintln!("created topic {t} with {n} partition(s)");
            }
        }
    }
    let counts = rt.block_on(ocrfleet_worker::kafka::produce::produce(
        &kafka,
        &cmd.topic,
        input,
        cmd.delivery_timeout.0,
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
    Ok(if counts.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

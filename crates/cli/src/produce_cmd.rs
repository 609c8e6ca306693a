//! `ocrfleet produce`: publish image URLs (or JSON messages) to the source topic.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use ocrfleet_worker::config::{self, default_of};

#[derive(clap::Args)]
pub struct ProduceCmd {
    /// File of URLs or JSON messages, one per line; `-` or nothing reads standard input.
    pub input: Option<PathBuf>,
    /// Topic to publish to.
    #[arg(long, env = "OCRFLEET_KAFKA_TOPIC", default_value = default_of("topic"))]
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
    pub kafka: config::KafkaConnectionArgs,
}

pub fn run_produce(cmd: ProduceCmd) -> anyhow::Result<ExitCode> {
    let kafka = cmd
        .kafka
        .settle()
        .map_err(anyhow::Error::msg)?
        .kafka_config(&cmd.topic, "", "")?;
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

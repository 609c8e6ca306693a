//! `ocrfleet replay`: re-publish dead letters to the source topic once their fault is fixed
//! (the rules are in `ocrfleet_worker::commands::replay`).

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use ocrfleet_worker::commands::replay::{self, Counts, Filter, Options};

use ocrfleet_worker::config::{self, default_of};

#[derive(clap::Args)]
pub struct ReplayCmd {
    /// Source topic: where dead letters go back to (unless their header names another topic).
    #[arg(long, env = "OCRFLEET_KAFKA_TOPIC", default_value = default_of("topic"))]
    pub topic: String,
    /// Publish to this topic instead of each record's source topic.
    #[arg(long)]
    pub to: Option<String>,
    /// Only these stages (parse, fetch, decode, ocr, index), comma-separated.
    #[arg(long, value_delimiter = ',', help_heading = "Filters")]
    pub stage: Vec<String>,
    /// Only classes that start with one of these (e.g. http_5,timeout), comma-separated.
    #[arg(long, value_delimiter = ',', help_heading = "Filters")]
    pub class: Vec<String>,
    /// Only dead letters written at or after this time: RFC 3339 (2026-11-27T10:00:00Z) or a
    /// duration ago (2h).
    #[arg(long, value_parser = parse_time, help_heading = "Filters")]
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters written before this time (same forms as --since).
    #[arg(long, value_parser = parse_time, help_heading = "Filters")]
    pub until: Option<DateTime<Utc>>,
    /// Only dead letters of these source partitions, comma-separated.
    #[arg(long, value_delimiter = ',', help_heading = "Filters")]
    pub source_partition: Vec<i32>,
    /// Count what would be replayed, by stage and class, and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Resume: start where the last run with this consumer group stopped, and commit this run's
    /// progress to it (up to the first record whose delivery failed). Without it every run
    /// reads the whole dead-letter topic again, and records that keep failing are replayed
    /// again each run.
    #[arg(long)]
    pub group: Option<String>,
    /// How long to wait for the brokers, for each delivery, and for the next record.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// The dead-letter topic to read (default: <topic>.dlq) and the replay key shared with the
    /// workers, which signs the replay headers so that a replayed record gets its original's
    /// document id and version (without it the workers ignore those headers).
    #[command(flatten)]
    pub dead_letters: config::DeadLetterArgs,
    #[command(flatten)]
    pub kafka: config::KafkaConnectionArgs,
}

/// RFC 3339, or a duration meaning "that long ago".
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-27T10:00:00Z) nor a duration (2h)")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| format!("{s:?} is too long ago"))
}

pub fn run(cmd: ReplayCmd) -> anyhow::Result<ExitCode> {
    let kafka = cmd
        .kafka
        .settle()
        .map_err(anyhow::Error::msg)?
        .kafka_config(&cmd.topic, "", "")?;
    let dead_letters = cmd.dead_letters.settle().map_err(anyhow::Error::msg)?;
    let opts = Options {
        dlq_topic: dead_letters
            .dlq_topic
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| format!("{}.dlq", cmd.topic)),
        source_topic: cmd.topic.clone(),
        to: cmd.to.clone(),
        filter: Filter {
            stages: cmd.stage,
            classes: cmd.class,
            since: cmd.since,
            until: cmd.until,
            source_partitions: cmd.source_partition,
        },
        dry_run: cmd.dry_run,
        timeout: cmd.timeout,
        key: config::replay_key(dead_letters.replay_key, dead_letters.replay_key_file)?
            .map(|k| k.expose().as_bytes().to_vec()),
        group: cmd.group.clone(),
    };
    if opts.key.is_none() && !opts.dry_run {
        tracing::warn!("no --replay-key: the replay headers are not signed, and the workers ignore them (a replayed record without an id of its own gets a new document id)");
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} dead letters read, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let counts = rt.block_on(replay::replay(&kafka, &opts, |c| {
        pb.set_length(c.total);
        pb.set_position(c.read);
        pb.set_message(format!("{} matching, {} replayed", c.matched, c.replayed));
    }))?;
    pb.finish_and_clear();
    print!("{}", summary(&opts, &counts));
    Ok(if counts.failed > 0 || counts.minimal > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The final report: matching dead letters by stage and class, then one line of totals.
fn summary(opts: &Options, c: &Counts) -> String {
    let mut s = String::new();
    if !c.by_class.is_empty() {
        s.push_str(&format!(
            "{:<8} {:<28} {:>8}\n",
            "stage", "class", "matching"
        ));
        for ((stage, class), n) in &c.by_class {
            s.push_str(&format!("{stage:<8} {class:<28} {n:>8}\n"));
        }
    }
    let target = opts
        .to
        .clone()
        .unwrap_or_else(|| "their source topic".to_owned());
    if opts.dry_run {
        s.push_str(&format!(
            "dry run on {}: read {} of {}, {} matching would be replayed to {target}{}\n",
            opts.dlq_topic,
            c.read,
            c.total,
            c.matched - c.minimal,
            minimal_note(c)
        ));
    } else {
        s.push_str(&format!(
            "replayed from {} to {target}: read {} of {}, matching {}, replayed {}, failed {}{}\n",
            opts.dlq_topic,
            c.read,
            c.total,
            c.matched,
            c.replayed,
            c.failed,
            minimal_note(c)
        ));
    }
    s
}

fn minimal_note(c: &Counts) -> String {
    if c.minimal == 0 {
        String::new()
    } else {
        format!(
            "; {} minimal dead letter(s) have no payload and cannot be replayed (their originals are listed above)",
            c.minimal
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-11-27T10:00:00Z").unwrap().to_rfc3339(),
            "2026-11-27T10:00:00+00:00"
        );
        let ago = Utc::now() - parse_time("2h").unwrap();
        assert!((7190..=7210).contains(&ago.num_seconds()), "{ago}");
        assert!(parse_time("yesterday").is_err());
    }
}

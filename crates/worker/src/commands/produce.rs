//! `ocrfleet produce`: publishes image URLs to the source topic.
//!
//! Input lines are either bare URLs or JSON objects of the message contract (see
//! [`crate::message`]); blank lines and `#` comments are skipped, and invalid lines are counted
//! and reported, not sent. JSON lines are sent as given (keyed by `id` when present); bare URLs
//! are sent as `{"url": ...}`.

use std::io::BufRead;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::kafka::QuietContext;
use crate::message;

/// Final counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProduceCounts {
    pub sent: u64,
    pub invalid: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// Turns one input line into (key, value), or an error message.
pub fn encode_line(line: &str) -> Option<Result<(Option<String>, String), String>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    Some(match message::parse(Some(line.as_bytes())) {
        Ok(req) if line.starts_with('{') => Ok((req.id, line.to_owned())),
        Ok(req) => Ok((None, serde_json::json!({"url": req.url}).to_string())),
        Err(e) => Err(e.to_string()),
    })
}

/// Creates `topic` with `partitions` partitions if it does not exist yet (an existing topic is
/// left as it is).
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<bool> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<QuietContext> = kafka
        .client_config()
        .create_with_context(QuietContext::default())?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match admin.create_topics(&[t], &opts).await?.pop() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((name, e))) => anyhow::bail!("cannot create topic {name}: {e}"),
        None => Ok(false),
    }
}

/// Reads lines from `input` and sends them to `topic`, calling `progress` after each line.
/// Before reading any input it checks, within `delivery_timeout`, that the brokers answer and
/// the topic exists; afterwards each message is delivered or counted as failed within
/// `delivery_timeout` (librdkafka's `message.timeout.ms`), so the command always ends.
pub async fn produce(
    kafka: &KafkaConfig,
    topic: &str,
    input: impl BufRead,
    delivery_timeout: Duration,
    mut progress: impl FnMut(&ProduceCounts),
) -> anyhow::Result<ProduceCounts> {
    let producer: FutureProducer<QuietContext> = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().max(1).to_string(),
        )
        .create_with_context(QuietContext::default())?;
    let (checked, wanted) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        crate::kafka::check_topics(&checked, &[wanted.as_str()], delivery_timeout)
    })
    .await?
    .map_err(|e| e.context("nothing was sent (the check waits --delivery-timeout)"))?;
    let mut counts = ProduceCounts::default();
    let mut pending = crate::kafka::InFlight::new();
    // Lines as bytes: a line that is not UTF-8 is an invalid line, not the end of the run. An
    // input that cannot be read any more ends the reading; the deliveries already started are
    // awaited and counted either way, and the error is returned after them.
    let mut read_error = None;
    for (n, line) in input.split(b'\n').enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        let line = match String::from_utf8(line) {
            Ok(l) => l,
            Err(_) => {
                counts.invalid += 1;
                tracing::warn!(line = n + 1, "invalid line not sent: not UTF-8");
                progress(&counts);
                continue;
            }
        };
        match encode_line(&line) {
            None => counts.skipped += 1,
            Some(Err(e)) => {
                counts.invalid += 1;
                tracing::warn!(line = n + 1, error = %e, "invalid line not sent");
            }
            Some(Ok((key, value))) => {
                let producer = producer.clone();
                let topic = topic.to_owned();
                let done = pending.push(async move {
                    let mut rec = FutureRecord::<String, String>::to(&topic).payload(&value);
                    if let Some(k) = &key {
                        rec = rec.key(k);
                    }
                    producer
                        .send(rec, Duration::from_secs(30))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                });
                if let Some(r) = done.await {
                    tally(&mut counts, r);
                }
            }
        }
        progress(&counts);
    }
    while let Some(r) = pending.next().await {
        tally(&mut counts, r);
        progress(&counts);
    }
    match read_error {
        Some(e) => Err(anyhow::anyhow!(
            "reading the input failed after {} line(s) ({} sent, {} failed, {} invalid): {e}",
            counts.sent + counts.failed + counts.invalid + counts.skipped,
            counts.sent,
            counts.failed,
            counts.invalid
        )),
        None => Ok(counts),
    }
}

fn tally(c: &mut ProduceCounts, r: Result<(), rdkafka::error::KafkaError>) {
    match r {
        Ok(()) => c.sent += 1,
        Err(e) => {
            c.failed += 1;
            tracing::warn!(error = %e, "send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(encode_line("   "), None);
        assert_eq!(encode_line("# c"), None);
        assert_eq!(
            encode_line("http://h/a.png"),
            Some(Ok((None, r#"{"url":"http://h/a.png"}"#.to_owned())))
        );
        let j = r#"{"url":"http://h/b.png","id":"b"}"#;
        assert_eq!(encode_line(j), Some(Ok((Some("b".into()), j.to_owned()))));
        assert!(matches!(encode_line("{\"id\":1}"), Some(Err(_))));
    }
}

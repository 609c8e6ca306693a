//! The dead-letter topic. Each record keeps the original key, value and headers and adds
//! `ocrfleet.error.*` headers saying which stage failed and why. The producer is idempotent
//! (`enable.idempotence`, `acks=all`) and every send waits for the broker's ack before the
//! message counts as finished (and so before its offset can be committed).
//!
//! Size: the added headers are cut to [`MAX_ERROR_MESSAGE`] bytes (an error message used to
//! carry a whole 600 KB URL, doubling the record). If Kafka still refuses the record as too
//! large, a **minimal** record is sent instead: the `ocrfleet.*` headers only (source topic,
//! partition and offset say where the original is), no key or value, and
//! `ocrfleet.dlq.minimal: true`. Any other refusal (missing topic, missing ACL, broker down) is
//! an infrastructure fault: [`DeadLetter::send`] returns it and the caller retries, never
//! committing the message meanwhile.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::envelope::Failure;
use crate::failure::truncate;
use crate::message::{ReplayKey, ReplayOrigin};
use crate::metrics::Metrics;

/// Header names added to every dead-letter record.
pub mod headers {
    pub const STAGE: &str = "ocrfleet.error.stage";
    pub const CLASS: &str = "ocrfleet.error.class";
    pub const MESSAGE: &str = "ocrfleet.error.message";
    pub const TOPIC: &str = "ocrfleet.source.topic";
    pub const PARTITION: &str = "ocrfleet.source.partition";
    pub const OFFSET: &str = "ocrfleet.source.offset";
    pub const TIMESTAMP: &str = "ocrfleet.source.timestamp";
    pub const ATTEMPTS: &str = "ocrfleet.error.attempts";
    pub const WORKER: &str = "ocrfleet.worker";
    pub const TIME: &str = "ocrfleet.error.time";
    pub const MINIMAL: &str = "ocrfleet.dlq.minimal";
    /// On a record whose header list was cut at `--max-headers`: how many it had, how many
    /// are kept.
    pub const HEADERS_CUT: &str = "ocrfleet.error.headers_cut";
    /// The prefix put before a producer's own header in the reserved `ocrfleet.` namespace
    /// (see [`super::carried_headers`]).
    pub const PRODUCER_PREFIX: &str = "producer.";
    /// Added by `ocrfleet replay` (see `commands::replay`): replays so far.
    pub const REPLAY_COUNT: &str = "ocrfleet.replay.count";
    /// Added by `ocrfleet replay`: `<topic>-<partition>-<offset>` of the original record.
    pub const REPLAY_OF: &str = "ocrfleet.replay.of";
    /// Added by `ocrfleet replay`: the original record's timestamp (ms).
    pub const REPLAY_TIMESTAMP: &str = "ocrfleet.replay.timestamp";
    /// HMAC-SHA256 of the two above and the value, with the replay key (hex).
    pub const REPLAY_SIGNATURE: &str = "ocrfleet.replay.signature";
}

/// The longest `ocrfleet.error.message` header, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Which record reached the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The original key, value and headers plus the error headers.
    Full,
    /// Only the error and source headers: the full record was too large for Kafka.
    Minimal,
}

#[derive(Clone)]
pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    worker_id: String,
    metrics: Metrics,
    /// Tells `ocrfleet replay`'s own headers from a producer's (see [`carried_headers`]).
    replay_key: Option<ReplayKey>,
}

/// The original record's headers as its dead letter carries them. The `ocrfleet.` namespace
/// is the worker's and `ocrfleet replay`'s: a producer's header there (`ocrfleet.replay.of`,
/// say, which replay would otherwise sign as if the worker had vouched for it) is carried as
/// `producer.<name>`, where nothing reads it. The replay headers of a record that `ocrfleet
/// replay` really re-published (their signature checks with `--replay-key`) are kept as they
/// are, so that a second replay keeps the original's id and version.
pub fn carried_headers<'a>(
    headers: &'a [(Vec<u8>, Option<Vec<u8>>)],
    value: Option<&[u8]>,
    key: Option<&ReplayKey>,
) -> Vec<(String, Option<&'a [u8]>)> {
    let replayed = ReplayOrigin::read(headers, value, key).of.is_some();
    headers
        .iter()
        .map(|(k, v)| {
            // Keys are bytes in Kafka but &str in rdkafka's producer API: a non-UTF-8 key is
            // passed on with U+FFFD in place of the bad bytes.
            let k = String::from_utf8_lossy(k);
            let ours = replayed && k.starts_with("ocrfleet.replay.");
            let k = if k.starts_with("ocrfleet.") && !ours {
                format!("{}{k}", headers::PRODUCER_PREFIX)
            } else {
                k.into_owned()
            };
            (k, v.as_deref())
        })
        .collect()
}

/// Why a dead letter was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Kafka refused it or is unreachable: retry (an infrastructure fault).
    Retry(String),
    /// The idempotent producer hit a fatal error (librdkafka's `rd_kafka_fatal_error`: its
    /// sequence numbers can no longer be trusted). Every later send fails the same way, so the
    /// process must end for a fresh producer to start.
    Fatal(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Retry(r) | SendError::Fatal(r) => f.write_str(r),
        }
    }
}

/// The reason to give for librdkafka's fatal error, if the producer has one.
fn fatal_error(fatal: Option<(RDKafkaErrorCode, String)>) -> Option<String> {
    fatal.map(|(code, text)| {
        format!("the dead-letter producer hit a fatal error ({code:?}: {text}); it cannot send again in this process")
    })
}

fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge) | Some(RDKafkaErrorCode::InvalidRecord)
    )
}

impl DeadLetter {
    /// A producer to `kafka.dlq_topic`, for records of `kafka.topic`.
    pub fn new(
        kafka: &KafkaConfig,
        worker_id: &str,
        replay_key: Option<ReplayKey>,
        metrics: Metrics,
    ) -> anyhow::Result<DeadLetter> {
        let producer: FutureProducer = kafka
            .client_config_with(
                &[
                    ("message.timeout.ms", "30000".into()),
                    ("client.id", format!("ocrfleet-dlq-{worker_id}")),
                ],
                // A dead letter must not be lost or written twice.
                &[
                    ("enable.idempotence", "true".into()),
                    ("acks", "all".into()),
                ],
            )
            .create()?;
        Ok(DeadLetter {
            producer,
            topic: kafka.dlq_topic.clone(),
            source_topic: kafka.topic.clone(),
            worker_id: worker_id.to_owned(),
            metrics,
            replay_key,
        })
    }

    /// The `ocrfleet.*` headers of a dead letter for `f`.
    fn error_headers(&self, f: &Failure) -> Vec<(&'static str, String)> {
        let e = &f.envelope;
        let r = &f.rejection;
        let mut h = vec![
            (headers::STAGE, r.stage.as_str().to_owned()),
            (headers::CLASS, truncate(&r.class, 64)),
            (headers::MESSAGE, truncate(&r.message, MAX_ERROR_MESSAGE)),
            (headers::TOPIC, self.source_topic.clone()),
            (headers::PARTITION, e.partition.to_string()),
            (headers::OFFSET, e.offset.to_string()),
            (headers::ATTEMPTS, r.attempts.to_string()),
            (headers::WORKER, self.worker_id.clone()),
            (headers::TIME, chrono::Utc::now().to_rfc3339()),
        ];
        if let Some(ts) = e.timestamp_ms {
            h.push((headers::TIMESTAMP, ts.to_string()));
        }
        if e.headers_total > e.headers.len() {
            h.push((
                headers::HEADERS_CUT,
                format!(
                    "{} headers, the first {} kept",
                    e.headers_total,
                    e.headers.len()
                ),
            ));
        }
        h
    }

    async fn produce(&self, f: &Failure, minimal: bool) -> Result<(), KafkaError> {
        let e = &f.envelope;
        let mut h = OwnedHeaders::new();
        if !minimal {
            for (k, v) in carried_headers(&e.headers, e.value.as_deref(), self.replay_key.as_ref())
            {
                h = h.insert(Header { key: &k, value: v });
            }
        }
        for (k, v) in self.error_headers(f) {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        if minimal {
            h = h.insert(Header {
                key: headers::MINIMAL,
                value: Some("true"),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(h);
        if !minimal {
            if let Some(k) = &e.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &e.value {
                rec = rec.payload(v.as_slice());
            }
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(err, _)| err)
    }

    /// Sends one dead letter and waits for the ack; falls back to the minimal record when Kafka
    /// refuses the full one as too large. `Err` is an infrastructure fault (the record is not
    /// in the topic; retry later, do not commit), or, for [`SendError::Fatal`], one that no
    /// retry in this process can clear.
    pub async fn send(&self, f: &Failure) -> Result<Sent, SendError> {
        self.send_once(f).await.map_err(|reason| {
            match fatal_error(rdkafka::producer::Producer::client(&self.producer).fatal_error()) {
                Some(fatal) => SendError::Fatal(format!("{reason}; {fatal}")),
                None => SendError::Retry(reason),
            }
        })
    }

    async fn send_once(&self, f: &Failure) -> Result<Sent, String> {
        let t = Instant::now();
        let sent = match self.produce(f, false).await {
            Ok(()) => Sent::Full,
            Err(e) if is_too_large(&e) => {
                tracing::warn!(partition = f.envelope.partition, offset = f.envelope.offset, bytes = f.envelope.size(), error = %e, "dead letter too large for Kafka; sending a minimal one (headers only)");
                self.produce(f, true).await.map_err(|e| {
                    format!(
                        "dead-letter topic {:?} refused even the minimal record: {e}",
                        self.topic
                    )
                })?;
                self.metrics.dead_letters_minimal.inc();
                Sent::Minimal
            }
            Err(e) => {
                return Err(format!(
                    "dead-letter topic {:?} refused a record: {e}",
                    self.topic
                ))
            }
        };
        self.metrics
            .stage_seconds
            .with_label_values(&["dlq"])
            .observe(t.elapsed().as_secs_f64());
        self.metrics
            .dead_lettered
            .with_label_values(&[f.rejection.stage.as_str()])
            .inc();
        tracing::info!(partition = f.envelope.partition, offset = f.envelope.offset, stage = %f.rejection.stage, class = %f.rejection.class, message = %truncate(&f.rejection.message, 300), minimal = sent == Sent::Minimal, "dead-lettered");
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    /// A producer cannot write the worker's or replay's headers into a dead letter: they go
    /// aside as `producer.*`. The replay headers of a record that replay really signed stay.
    #[test]
    fn a_producers_reserved_headers_are_moved_aside() {
        let key = ReplayKey::new(b"k");
        let forged = hs(&[
            ("trace", "1"),
            ("ocrfleet.replay.of", "victim-id"),
            ("ocrfleet.replay.timestamp", "99999999999999"),
            ("ocrfleet.error.stage", "none"),
        ]);
        let names: Vec<String> = carried_headers(&forged, Some(b"v"), Some(&key))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            names,
            [
                "trace",
                "producer.ocrfleet.replay.of",
                "producer.ocrfleet.replay.timestamp",
                "producer.ocrfleet.error.stage"
            ]
        );
        let sig = key.sign("t-0-9", "1700000000000", Some(b"v"));
        let genuine = hs(&[
            ("ocrfleet.replay.count", "1"),
            ("ocrfleet.replay.signature", &sig),
            ("ocrfleet.replay.of", "t-0-9"),
            ("ocrfleet.replay.timestamp", "1700000000000"),
        ]);
        let kept = carried_headers(&genuine, Some(b"v"), Some(&key));
        assert!(
            kept.iter().all(|(k, _)| k.starts_with("ocrfleet.replay.")),
            "{kept:?}"
        );
        let other_value = carried_headers(&genuine, Some(b"w"), Some(&key));
        assert!(
            other_value.iter().all(|(k, _)| k.starts_with("producer.")),
            "a signature over another value proves nothing"
        );
    }

    #[test]
    fn only_a_fatal_producer_error_is_fatal() {
        assert_eq!(fatal_error(None), None);
        let f = fatal_error(Some((
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            "sequence desynchronised".into(),
        )))
        .unwrap();
        assert!(
            f.contains("OutOfOrderSequenceNumber") && f.contains("cannot send again"),
            "{f}"
        );
    }
}

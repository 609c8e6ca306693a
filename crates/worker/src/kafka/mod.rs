//! Everything that talks to Kafka: the [`source`] (a consumer-group member on its own thread,
//! with its pure [`state`] and [`offsets`]), the [`dlq`] producer, start-up checks, and the
//! `ocrfleet produce` and `ocrfleet replay` commands ([`produce`], [`replay`]).

pub mod committer;
pub mod dlq;
pub mod headers;
pub mod journal;
pub mod offsets;
pub mod source;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// Which partitions this worker owns now, and in which generation: published by the source
/// thread on every rebalance, read by the sink so that work of a revoked partition is dropped
/// instead of being indexed or dead-lettered by a worker that no longer owns it.
#[derive(Clone, Default, Debug)]
pub struct Assignment(Arc<RwLock<HashMap<i32, u64>>>);

impl Assignment {
    pub fn assign(&self, partition: i32, generation: u64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition, generation);
    }

    pub fn revoke(&self, partition: i32) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition);
    }

    /// Whether work of (partition, generation) is still ours.
    pub fn is_current(&self, partition: i32, generation: u64) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            == Some(&generation)
    }
}

/// Deliveries in flight for the short-lived producers (`produce`, `replay`): at most
/// [`InFlight::MAX`] at once, so that a large input neither fills librdkafka's queue nor holds
/// every future in memory.
pub(crate) struct InFlight<F: std::future::Future> {
    pending: futures::stream::FuturesUnordered<F>,
}

impl<F: std::future::Future> InFlight<F> {
    pub const MAX: usize = 1000;

    pub fn new() -> Self {
        InFlight {
            pending: futures::stream::FuturesUnordered::new(),
        }
    }

    /// Adds a delivery; at the bound, waits for one to finish and returns its result.
    pub async fn push(&mut self, f: F) -> Option<F::Output> {
        use futures::StreamExt;
        self.pending.push(f);
        if self.pending.len() >= Self::MAX {
            self.pending.next().await
        } else {
            None
        }
    }

    /// The next finished delivery, or `None` when none is left.
    pub async fn next(&mut self) -> Option<F::Output> {
        use futures::StreamExt;
        self.pending.next().await
    }
}

/// A client context for short-lived clients (the `produce` command, start-up checks) that keeps
/// librdkafka from flooding the log: an unreachable broker makes it report every connection
/// attempt, several times each (the `produce` command wrote 517 error lines in 60 s). Errors
/// and warnings are logged at most once per [`QuietContext::EVERY`], with the number held back;
/// librdkafka's notices and debug lines go to `debug`.
#[derive(Default)]
pub struct QuietContext {
    /// When the last line was logged, and how many were held back since.
    last: Mutex<Option<(Instant, u64)>>,
}

impl QuietContext {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// True when a line may be logged now; the count held back before it comes along.
    fn admit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some((at, held)) if at.elapsed() < Self::EVERY => {
                *last = Some((at, held + 1));
                None
            }
            Some((_, held)) => {
                *last = Some((Instant::now(), 0));
                Some(held)
            }
            None => {
                *last = Some((Instant::now(), 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        use RDKafkaLogLevel::*;
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            if let Some(held) = self.admit() {
                tracing::warn!(
                    facility = fac,
                    held_back = held,
                    "librdkafka: {log_message}"
                );
            }
        } else {
            tracing::debug!(facility = fac, "librdkafka: {log_message}");
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Some(held) = self.admit() {
            tracing::error!(held_back = held, "Kafka: {error}: {reason}");
        }
    }
}

/// The metadata check of [`check_topics`] runs on a consumer with librdkafka's default hooks.
impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Start-up check: the brokers answer and both topics exist and may be described. Fails with a
/// message that says what to do. (Whether the dead-letter topic may be *written* shows at the
/// first dead letter: a refusal then is an infrastructure fault, which pauses the worker and
/// turns `/readyz` to 503 instead of losing the record.)
pub fn check_topics(cfg: &KafkaConfig, topics: &[&str], timeout: Duration) -> anyhow::Result<()> {
    let c: BaseConsumer<QuietContext> = cfg
        .client_config()
        .create_with_context(QuietContext::default())?;
    for topic in topics {
        let md = c.fetch_metadata(Some(topic), timeout).map_err(|e| {
            anyhow::anyhow!(
                "cannot reach Kafka at {}: cannot read metadata of topic {topic:?} within {timeout:?}: {e}; check --brokers and the network",
                cfg.brokers
            )
        })?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == *topic)
            .ok_or_else(|| anyhow::anyhow!("Kafka returned no metadata for topic {topic:?}"))?;
        match t.error().map(RDKafkaErrorCode::from) {
            None if !t.partitions().is_empty() => {}
            None | Some(RDKafkaErrorCode::UnknownTopicOrPartition) => anyhow::bail!(
                "topic {topic:?} does not exist on {}: create it first (e.g. `ocrfleet produce --create-partitions N --topic <source topic>` creates the source and dead-letter topics)",
                cfg.brokers
            ),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => anyhow::bail!(
                "not authorized to describe topic {topic:?}: grant the worker's principal Describe, Read (source) and Write (dead-letter) on it"
            ),
            Some(e) => anyhow::bail!("topic {topic:?} is not usable: {e}"),
        }
    }
    Ok(())
}

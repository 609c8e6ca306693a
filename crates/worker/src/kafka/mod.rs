//! Everything that talks to Kafka: the [`source`] (a consumer-group member on its own thread,
//! with its pure [`state`] and [`offsets`]), the [`dlq`] producer, start-up checks, and the
//! `ocrfleet produce` command ([`produce`]).

pub mod dlq;
pub mod headers;
pub mod offsets;
pub mod produce;
pub mod source;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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

/// Start-up check: the brokers answer and both topics exist and may be described. Fails with a
/// message that says what to do. (Whether the dead-letter topic may be *written* shows at the
/// first dead letter: a refusal then is an infrastructure fault, which pauses the worker and
/// turns `/readyz` to 503 instead of losing the record.)
pub fn check_topics(cfg: &KafkaConfig, topics: &[&str], timeout: Duration) -> anyhow::Result<()> {
    let c: BaseConsumer = cfg.client_config().create()?;
    for topic in topics {
        let md = c.fetch_metadata(Some(topic), timeout).map_err(|e| {
            anyhow::anyhow!(
                "cannot read metadata of topic {topic:?} from Kafka at {} within {timeout:?}: {e}; check --brokers and the network",
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

//! The dead-letter topic. Each record keeps the original key, value and headers and adds
//! `ocrfleet.error.*` headers saying which stage failed and why. The producer is idempotent
//! (`enable.idempotence`, `acks=all`) and every send waits for the broker's ack before the
//! message counts as finished (and so before its offset can be committed).

use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::WorkerConfig;
use crate::envelope::Failure;
use crate::metrics::Metrics;

/// Header names added to every dead-letter record.
pub mod headers {
    pub const STAGE: &str = "ocrfleet.error.stage";
    pub const CLASS: &str = "ocrfleet.error.class";
    pub const MESSAGE: &str = "ocrfleet.error.message";
    pub const TOPIC: &str = "ocrfleet.source.topic";
    pub const PARTITION: &str = "ocrfleet.source.partition";
    pub const OFFSET: &str = "ocrfleet.source.offset";
    pub const ATTEMPTS: &str = "ocrfleet.error.attempts";
    pub const WORKER: &str = "ocrfleet.worker";
    pub const TIME: &str = "ocrfleet.error.time";
}

#[derive(Clone)]
pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    worker_id: String,
    metrics: Metrics,
}

impl DeadLetter {
    pub fn new(cfg: &WorkerConfig, metrics: Metrics) -> anyhow::Result<DeadLetter> {
        let producer: FutureProducer = cfg
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("client.id", format!("ocrfleet-dlq-{}", cfg.worker_id))
            .create()?;
        Ok(DeadLetter {
            producer,
            topic: cfg.kafka.dlq_topic.clone(),
            source_topic: cfg.kafka.topic.clone(),
            worker_id: cfg.worker_id.clone(),
            metrics,
        })
    }

    /// Sends one record and waits for the ack, retrying (with growing delay) until it is
    /// acknowledged: an unacknowledged failure must never be committed.
    pub async fn send(&self, f: &Failure) {
        let e = &f.envelope;
        let now = chrono::Utc::now().to_rfc3339();
        let (partition, offset, attempts) = (
            e.partition.to_string(),
            e.offset.to_string(),
            f.attempts.to_string(),
        );
        let mut delays = crate::retry::unbounded(Duration::from_millis(200));
        loop {
            let mut h = OwnedHeaders::new();
            for (k, v) in &e.headers {
                h = h.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            for (k, v) in [
                (headers::STAGE, f.stage.as_str()),
                (headers::CLASS, f.class.as_str()),
                (headers::MESSAGE, f.message.as_str()),
                (headers::TOPIC, self.source_topic.as_str()),
                (headers::PARTITION, partition.as_str()),
                (headers::OFFSET, offset.as_str()),
                (headers::ATTEMPTS, attempts.as_str()),
                (headers::WORKER, self.worker_id.as_str()),
                (headers::TIME, now.as_str()),
            ] {
                h = h.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(h);
            if let Some(k) = &e.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &e.value {
                rec = rec.payload(v.as_slice());
            }
            let t = Instant::now();
            match self.producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => {
                    self.metrics
                        .stage_seconds
                        .with_label_values(&["dlq"])
                        .observe(t.elapsed().as_secs_f64());
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[f.stage.as_str()])
                        .inc();
                    tracing::info!(partition = e.partition, offset = e.offset, stage = f.stage.as_str(), class = %f.class, message = %f.message, "dead-lettered");
                    return;
                }
                Err((err, _)) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %err, retry_in = ?delay, "dead-letter send failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

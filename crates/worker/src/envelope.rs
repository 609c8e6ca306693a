//! What travels between the stages: a Kafka message's coordinates and raw parts, and how it
//! ended (a document to index, or a failure to dead-letter).

use std::time::Instant;

/// A message as received, with the generation of its partition's assignment (see
/// [`crate::offsets::OffsetTracker`]).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
    pub received_at: Instant,
}

/// The pipeline stage in which a message failed; the `stage` dead-letter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailStage {
    Parse,
    Fetch,
    Decode,
    Ocr,
    Index,
}

impl FailStage {
    pub fn as_str(self) -> &'static str {
        match self {
            FailStage::Parse => "parse",
            FailStage::Fetch => "fetch",
            FailStage::Decode => "decode",
            FailStage::Ocr => "ocr",
            FailStage::Index => "index",
        }
    }
}

/// A message that could not be indexed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub envelope: Envelope,
    pub stage: FailStage,
    pub class: String,
    pub message: String,
    pub attempts: usize,
}

/// A document ready for Elasticsearch.
#[derive(Debug, Clone)]
pub struct Document {
    pub envelope: Envelope,
    pub id: String,
    pub body: serde_json::Value,
}

/// How a message left the pipeline.
#[derive(Debug)]
pub enum Outcome {
    Doc(Document),
    Failed(Failure),
}

impl Outcome {
    pub fn envelope(&self) -> &Envelope {
        match self {
            Outcome::Doc(d) => &d.envelope,
            Outcome::Failed(f) => &f.envelope,
        }
    }
}

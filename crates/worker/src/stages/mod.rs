//! The pipeline's stages, in the order a message flows through them:
//!
//! source → prepare (parse, fetch, decode) → ocr (the engine's lanes) → sink (Elasticsearch
//! bulk), with rejections to the dead-letter topic and done events back to the source, which owns
//! the offsets: the diagram is in the README ("How a message flows").
//!
//! Downloads run as independent tasks, so fetching and decoding chunk N+1 goes on while the
//! engine works on chunk N. Every channel is bounded; read-ahead is bounded in messages by the
//! source and in bytes by the memory budget.

pub mod ocr;
pub mod prepare;
pub mod sink;
pub mod watch;

use crate::envelope::{Envelope, Failure};
use crate::es::document::Document;

/// How a message left the pipeline.
#[derive(Debug)]
pub enum Outcome {
    Doc(Box<Document>),
    Failed(Failure),
    /// Its partition was revoked before it was run: dropped (the new owner redoes it).
    Dropped(Envelope),
}

impl Outcome {
    pub fn envelope(&self) -> &Envelope {
        match self {
            Outcome::Doc(d) => &d.envelope,
            Outcome::Failed(f) => &f.envelope,
            Outcome::Dropped(e) => e,
        }
    }
}

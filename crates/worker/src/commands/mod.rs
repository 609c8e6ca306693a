//! The library side of the binary's other commands: `ocrfleet produce` (publish image URLs)
//! and `ocrfleet replay` (re-publish dead letters). They share the Kafka plumbing of
//! [`crate::kafka`] with the worker.

pub mod produce;
pub mod replay;

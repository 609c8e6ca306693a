//! # ocrfleet-worker
//!
//! `ocrfleet worker`: a stateless consumer-group member that drains an image-URL topic into an
//! Elasticsearch index, at least once, with every bad record on a dead-letter topic and every
//! infrastructure fault met by pausing, backing off and resuming (the fault model is in
//! [`failure`]).
//!
//! Layout, in the order a message flows: [`kafka`] (the source thread, offsets, the dead-letter
//! producer), [`fetch`] (HTTP, the SSRF guard, the image hosts' breakers), [`stages`] (prepare,
//! OCR, sink), [`es`] (the document, bulk requests, the client); beside them [`health`],
//! [`budget`], [`metrics`] and [`config`]. Running a worker (start-up, the pipeline's tasks,
//! supervision and draining) is `server`; this file is the module list and the public API:
//! [`run`], [`termination`], [`Summary`].

pub(crate) mod budget;
pub mod commands;
pub mod config;
pub(crate) mod envelope;
pub mod es;
pub mod failure;
pub mod fetch;
pub(crate) mod health;
pub mod kafka;
pub(crate) mod message;
pub(crate) mod metrics;
pub(crate) mod retry;
mod server;
pub(crate) mod stages;

use std::time::Duration;

pub use config::{WorkerArgs, WorkerConfig};
pub use server::run;

use crate::failure::Stage;

/// Resolves when SIGTERM or SIGINT arrives: the `shutdown` future the binary passes to [`run`].
pub async fn termination() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// What a worker did, for its exit line.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub consumed: u64,
    pub indexed: u64,
    pub superseded: u64,
    pub dead_lettered: Vec<(Stage, u64)>,
    pub wall: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dl: u64 = self.dead_lettered.iter().map(|(_, n)| n).sum();
        let by: Vec<String> = self
            .dead_lettered
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        write!(
            f,
            "consumed {}, indexed {}, superseded {}, dead-lettered {dl}{} in {:.1} s",
            self.consumed,
            self.indexed,
            self.superseded,
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            },
            self.wall.as_secs_f64()
        )
    }
}

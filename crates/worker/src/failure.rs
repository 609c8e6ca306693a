//! The fault model: one vocabulary for every failure, shared by dead-letter headers, metrics
//! and logs.
//!
//! Every failure is one of two kinds, and the kind decides what happens:
//!
//! - **the record is bad** (a [`Rejection`]): exactly one dead-letter record naming its
//!   [`Stage`] and class, then the offset may be committed;
//! - **the infrastructure is bad** (a [`Component`] fault): never a dead letter and never a
//!   commit past it; intake pauses, the work is retried with backoff, `/readyz` answers 503 with
//!   the reason, and work resumes when the fault clears. A fault that cannot clear inside the
//!   process ends it with a non-zero status, so that Kubernetes restarts it.
//!
//! Which failure is which kind, case by case, is the README's table ("The fault model"), the one
//! copy kept; the tests named in its proof table hold each row.
//!
//! The decision is made where the failure is seen, with the types here: record faults become a
//! [`Rejection`], infrastructure faults are reported to [`crate::health::Health`].

use std::fmt;

/// The pipeline stage in which a record failed: the `ocrfleet.error.stage` dead-letter header
/// and the `stage` label of `ocrfleet_messages_dead_lettered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The message itself: value, headers.
    Parse,
    /// Downloading the image.
    Fetch,
    /// Turning bytes into pixels.
    Decode,
    /// The OCR engine, for this image only.
    Ocr,
    /// Elasticsearch refused this document.
    Index,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Parse,
        Stage::Fetch,
        Stage::Decode,
        Stage::Ocr,
        Stage::Index,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Ocr => "ocr",
            Stage::Index => "index",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one record cannot be processed: it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub stage: Stage,
    /// A short machine-readable class (`http_404`, `not_utf8`, `too_large`, ...): the
    /// `ocrfleet.error.class` header.
    pub class: String,
    /// What went wrong, for people (URLs without their query: signed URLs carry tokens).
    pub message: String,
    /// Download attempts made (0 when no download was tried).
    pub attempts: usize,
}

impl Rejection {
    pub fn new(stage: Stage, class: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            stage,
            class: class.into(),
            message: message.into(),
            attempts: 0,
        }
    }

    pub fn attempts(mut self, n: usize) -> Rejection {
        self.attempts = n;
        self
    }
}

/// A piece of infrastructure whose failure pauses the worker instead of failing records: the
/// `component` label of `ocrfleet_component_up` and the keys of `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The Kafka cluster the source consumes from.
    Broker,
    /// The Elasticsearch cluster.
    Elasticsearch,
    /// The dead-letter topic (its producer).
    DeadLetter,
    /// The OCR engine and its device.
    Engine,
    /// The way out to the image hosts: a DNS or egress outage, as seen across many hosts or by
    /// the operator's probe URL (see [`crate::fetch::hosts`]).
    ImageHosts,
    /// The memory budget, when a decode has waited for it for long (see [`crate::budget`]).
    MemoryBudget,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Component::Broker,
        Component::Elasticsearch,
        Component::DeadLetter,
        Component::Engine,
        Component::ImageHosts,
        Component::MemoryBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Broker => "broker",
            Component::Elasticsearch => "elasticsearch",
            Component::DeadLetter => "dead_letter",
            Component::Engine => "engine",
            Component::ImageHosts => "image_hosts",
            Component::MemoryBudget => "memory_budget",
        }
    }

    /// Whether a fault of this component stops intake (new messages would only pile up).
    /// A broker fault needs no pause: nothing arrives then anyway.
    pub fn blocks_intake(self) -> bool {
        !matches!(self, Component::Broker)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut. Dead-letter headers
/// and log fields carry text from outside (URLs, server answers) that may be huge.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghij", 8), "abcde...");
        let t = truncate("发票发票发票", 8); // 3 bytes per character
        assert!(
            t.len() <= 8 && t.starts_with("发") && t.ends_with("..."),
            "{t}"
        );
    }

    #[test]
    fn only_broker_faults_leave_intake_open() {
        let open: Vec<_> = Component::ALL
            .iter()
            .filter(|c| !c.blocks_intake())
            .collect();
        assert_eq!(open, [&Component::Broker]);
    }
}

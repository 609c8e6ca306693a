//! What travels between the stages: a Kafka message's coordinates and raw parts, its
//! completion, and its rejection (how a message left the pipeline is
//! [`crate::stages::Outcome`]).

use crate::failure::Rejection;

/// How a record is to be handled, from its history so far (kept by
/// [`crate::kafka::journal`], read by the stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Care {
    #[default]
    Normal,
    /// It was in the engine when a process died (as a suspect, or this many times alone): run
    /// it alone.
    Alone(u32),
    /// It has died this many times alone, at the limit: dead-letter it without running it.
    CrashLoop(u32),
}

/// A message as received, with the generation of its partition's assignment (see
/// [`crate::kafka::offsets::OffsetTracker`]). Its bytes count towards the source's
/// `--max-in-flight-bytes` until it is finished.
#[derive(Debug)]
pub struct Envelope {
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header keys as bytes: Kafka does not promise UTF-8 (a non-UTF-8 key is a bad record,
    /// not a reason to crash).
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Headers the record has on the wire; more than `headers.len()` when the list was cut at
    /// `--max-headers` (such a record is a dead letter, `parse/too_many_headers`).
    pub headers_total: usize,
    /// Record timestamp in ms since the epoch (create or log-append time), if any. It is the
    /// document's external version: an older record cannot overwrite a newer one's document.
    pub timestamp_ms: Option<i64>,
    /// Whether it crashed a worker process before (see [`crate::kafka::journal`]).
    pub care: Care,
}

/// What one header costs in memory besides its bytes: its slot in the list (two vectors) and
/// the allocator's rounding and bookkeeping of its key and value (about 16 bytes each on
/// glibc). An empty header is not free: 50 000 of them on a record held 2.4 MB of list.
pub const HEADER_OVERHEAD: usize = std::mem::size_of::<(Vec<u8>, Option<Vec<u8>>)>() + 32;
/// What a message costs besides its key, value and headers (the envelope itself, allocator
/// bookkeeping of the key and value).
pub const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Envelope>() + 32;

impl Envelope {
    /// Bytes the message holds in memory: key, value, headers, and the overhead of each
    /// ([`HEADER_OVERHEAD`], [`MESSAGE_OVERHEAD`]), so that a record of many tiny headers counts
    /// what it really costs towards `--max-in-flight-bytes`.
    pub fn size(&self) -> u64 {
        let h: usize = self
            .headers
            .iter()
            .map(|(k, v)| HEADER_OVERHEAD + k.capacity() + v.as_ref().map_or(0, Vec::capacity))
            .sum();
        (MESSAGE_OVERHEAD
            + self.key.as_ref().map_or(0, Vec::capacity)
            + self.value.as_ref().map_or(0, Vec::capacity)
            + self.headers.capacity().saturating_sub(self.headers.len())
                * std::mem::size_of::<(Vec<u8>, Option<Vec<u8>>)>()
            + h) as u64
    }

    /// The (partition, offset, generation) that identifies this message's completion.
    pub fn done(&self) -> Done {
        Done {
            partition: self.partition,
            offset: self.offset,
            generation: self.generation,
            bytes: self.size(),
        }
    }
}

/// A message is finished (indexed, superseded or dead-lettered), or was dropped because its
/// partition was revoked: sent back to the Kafka source, which owns the offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
    /// The message's size ([`Envelope::size`]), given back to the source's bytes bound.
    pub bytes: u64,
}

/// A message that failed as a record.
#[derive(Debug)]
pub struct Failure {
    pub envelope: Envelope,
    pub rejection: Rejection,
}

/// The engine's calls now ((partition, offset, generation, alone); none: it is idle), for
/// the crash-loop journal (see [`crate::kafka::journal`]). `recorded` is given when a call is
/// about to add records: the Kafka source answers once that is on the broker. Without it (a
/// call returned) the source records it with its next commit.
#[derive(Debug)]
pub struct EngineJournal {
    pub running: Vec<(i32, i64, u64, bool)>,
    pub recorded: Option<tokio::sync::oneshot::Sender<()>>,
}

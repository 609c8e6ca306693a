//! The Kafka source's state, without Kafka: what to take, when to close a chunk, when to pause,
//! what to commit. The poll loop in [`super::source`] feeds it events and carries out what it
//! says; every rule here is unit-tested without a broker.
//!
//! - **Chunks** close at `max_messages` or after `linger`.
//! - **Read-ahead is bounded in messages and in bytes:** messages taken from Kafka and not yet
//!   finished (building, waiting for the pipeline, or in it) never exceed `max_in_flight`
//!   messages, nor `max_in_flight_bytes` of keys, values and headers, by more than what one poll
//!   returns (one message). At either bound the source pauses its partitions (librdkafka then
//!   drops what it prefetched and fetches again from the last taken offset on resume) and
//!   resumes when a chunk's worth of messages, and half the bytes, are below it (hysteresis,
//!   so it does not flap).
//! - **No partition takes more than its share of the read-ahead:** with P partitions assigned,
//!   one partition's unfinished messages (or bytes) reaching 1/min(P, 4) of either bound
//!   pauses that partition alone, until it is back under half its share. A partition whose
//!   records all wait (held for a dead image host, say) so pauses itself, not the pod: the
//!   other partitions keep the rest of the read-ahead.
//! - **Infrastructure faults pause intake** (see [`crate::failure`]); work in flight keeps
//!   retrying.
//! - **Commits** are what the [`OffsetTracker`] says is finished; finished events arrive from
//!   the sink over a channel, and every message taken produces exactly one, including work
//!   dropped after a revoke (it still left the pipeline).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::envelope::{Done, Envelope};
use crate::kafka::offsets::OffsetTracker;

/// Bounds of the source.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub max_in_flight_bytes: u64,
}

/// The source's state (see the module doc).
#[derive(Debug)]
pub struct SourceState {
    limits: Limits,
    pub tracker: OffsetTracker,
    building: Vec<Envelope>,
    chunk_started: Option<Instant>,
    pending: Option<Vec<Envelope>>,
    /// Handed to the pipeline and not yet done.
    in_pipeline: usize,
    /// Bytes of every message taken and not finished (see [`Envelope::size`]).
    bytes: u64,
    paused: bool,
    /// Unfinished messages and bytes per partition.
    per_partition: HashMap<i32, (usize, u64)>,
    /// Partitions paused on their own (over their share).
    paused_alone: BTreeSet<i32>,
    last_message: Option<Instant>,
}

impl SourceState {
    pub fn new(limits: Limits) -> SourceState {
        SourceState {
            limits: Limits {
                max_messages: limits.max_messages.max(1),
                max_in_flight: limits.max_in_flight.max(1),
                ..limits
            },
            tracker: OffsetTracker::default(),
            building: Vec::new(),
            chunk_started: None,
            pending: None,
            in_pipeline: 0,
            bytes: 0,
            paused: false,
            per_partition: HashMap::new(),
            paused_alone: BTreeSet::new(),
            last_message: None,
        }
    }

    fn count(&mut self, partition: i32, bytes: u64, add: bool) {
        let e = self.per_partition.entry(partition).or_default();
        if add {
            e.0 += 1;
            e.1 += bytes;
        } else {
            e.0 = e.0.saturating_sub(1);
            e.1 = e.1.saturating_sub(bytes);
            if e.0 == 0 {
                self.per_partition.remove(&partition);
            }
        }
    }

    /// Messages taken and not finished: building, waiting and in the pipeline.
    pub fn in_flight(&self) -> usize {
        self.building.len() + self.pending.as_ref().map_or(0, Vec::len) + self.in_pipeline
    }

    /// Bytes of the messages taken and not finished. (tests only)
    #[cfg(test)]
    pub fn in_flight_bytes(&self) -> u64 {
        self.bytes
    }

    /// A message arrived (its envelope already carries its generation from `tracker`).
    pub fn on_message(&mut self, e: Envelope, now: Instant) {
        self.bytes += e.size();
        self.count(e.partition, e.size(), true);
        if self.building.is_empty() {
            self.chunk_started = Some(now);
        }
        self.building.push(e);
        self.last_message = Some(now);
    }

    /// A message left the pipeline.
    pub fn on_done(&mut self, d: Done) {
        self.in_pipeline = self.in_pipeline.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(d.bytes);
        self.count(d.partition, d.bytes, false);
        self.tracker.finished(d.partition, d.offset, d.generation);
    }

    /// Closes the chunk being built when it is full or has lingered long enough, if no other
    /// chunk is waiting; returns its size.
    pub fn close_chunk_if_due(&mut self, now: Instant) -> Option<usize> {
        let due = self.building.len() >= self.limits.max_messages
            || self
                .chunk_started
                .is_some_and(|t| now.duration_since(t) >= self.limits.linger);
        if self.pending.is_none() && !self.building.is_empty() && due {
            let n = self.building.len();
            self.pending = Some(std::mem::take(&mut self.building));
            self.chunk_started = None;
            return Some(n);
        }
        None
    }

    /// The chunk waiting for the pipeline, if any (put it back with [`Self::unsent`]).
    pub fn take_pending(&mut self) -> Option<Vec<Envelope>> {
        let c = self.pending.take();
        if let Some(c) = &c {
            self.in_pipeline += c.len();
        }
        c
    }

    /// The pipeline could not take the chunk yet.
    pub fn unsent(&mut self, chunk: Vec<Envelope>) {
        self.in_pipeline -= chunk.len();
        self.pending = Some(chunk);
    }

    /// Whether a chunk is waiting for the pipeline. (tests only)
    #[cfg(test)]
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Drops everything not yet handed to the pipeline (stopping: it is not committed, so it is
    /// redelivered).
    pub fn drop_undispatched(&mut self) {
        let dropped: Vec<(i32, u64)> = self
            .building
            .iter()
            .chain(self.pending.iter().flatten())
            .map(|e| (e.partition, e.size()))
            .collect();
        for (p, b) in dropped {
            self.bytes = self.bytes.saturating_sub(b);
            self.count(p, b, false);
        }
        self.building.clear();
        self.pending = None;
        self.chunk_started = None;
    }

    /// Whether the partitions should be paused now; `intake_blocked` is an infrastructure
    /// fault. Pauses at `max_in_flight` messages or `max_in_flight_bytes`, resumes once a
    /// chunk's worth of messages and half the bytes are below the bounds.
    pub fn wants_pause(&self, intake_blocked: bool) -> bool {
        if intake_blocked {
            return true;
        }
        let (n, bytes) = (self.in_flight(), self.bytes);
        let l = &self.limits;
        if self.paused {
            let resume_at = l
                .max_in_flight
                .saturating_sub(l.max_messages)
                .max(l.max_in_flight / 2);
            n > resume_at || bytes > l.max_in_flight_bytes / 2
        } else {
            n >= l.max_in_flight || bytes >= l.max_in_flight_bytes
        }
    }

    /// The partitions that should be paused on their own now, out of `assigned` (see the
    /// module documentation): over their share, or paused and not yet under half of it.
    pub fn partitions_over_share(&self, assigned: &[i32]) -> BTreeSet<i32> {
        if assigned.len() < 2 {
            return BTreeSet::new();
        }
        let ways = assigned.len().min(4);
        let l = &self.limits;
        let (msgs, bytes) = (
            (l.max_in_flight / ways).max(1),
            (l.max_in_flight_bytes / ways as u64).max(1),
        );
        assigned
            .iter()
            .copied()
            .filter(|p| {
                let (n, b) = self.per_partition.get(p).copied().unwrap_or_default();
                if self.paused_alone.contains(p) {
                    n > msgs / 2 || b > bytes / 2
                } else {
                    n >= msgs || b >= bytes
                }
            })
            .collect()
    }

    /// Records which partitions are paused on their own.
    pub fn set_paused_alone(&mut self, partitions: BTreeSet<i32>) {
        self.paused_alone = partitions;
    }

    /// A partition was revoked: it is no longer paused on its own (its next assignment sets
    /// its pause flag afresh).
    pub fn revoked(&mut self, partition: i32) {
        self.paused_alone.remove(&partition);
    }

    pub fn paused_alone(&self) -> &BTreeSet<i32> {
        &self.paused_alone
    }

    /// Records that the partitions were paused or resumed.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// How long to block in the next poll.
    pub fn poll_timeout(&self, now: Instant) -> Duration {
        if self.pending.is_some() {
            return Duration::from_millis(20);
        }
        match self.chunk_started {
            Some(t) => self
                .limits
                .linger
                .saturating_sub(now.duration_since(t))
                .max(Duration::from_millis(1)),
            None => Duration::from_millis(100),
        }
    }

    /// Idle: nothing taken and unfinished, and no message for `idle`.
    pub fn idle_for(&self, idle: Duration, now: Instant) -> bool {
        self.in_flight() == 0
            && self.tracker.in_flight() == 0
            && self
                .last_message
                .is_some_and(|t| now.duration_since(t) >= idle)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A message of `partition` at `offset`, received by `state` (assigning the partition first
    /// if needed).
    pub(crate) fn env(state: &mut SourceState, partition: i32, offset: i64) -> Envelope {
        if state.tracker.generation(partition).is_none() {
            state.tracker.assign(partition);
        }
        let generation = state.tracker.received(partition, offset).unwrap();
        Envelope {
            partition,
            offset,
            generation,
            key: None,
            value: Some(b"http://x/a.png".to_vec()),
            headers: Vec::new(),
            headers_total: 0,
            timestamp_ms: Some(1),
            care: Default::default(),
        }
    }

    fn limits(max_messages: usize, max_in_flight: usize) -> Limits {
        Limits {
            max_messages,
            linger: Duration::from_millis(100),
            max_in_flight,
            max_in_flight_bytes: u64::MAX,
        }
    }

    #[test]
    fn chunks_close_when_full_or_after_linger() {
        let mut s = SourceState::new(limits(3, 100));
        let t0 = Instant::now();
        for o in 0..2 {
            let e = env(&mut s, 0, o);
            s.on_message(e, t0);
        }
        assert_eq!(s.close_chunk_if_due(t0), None, "2 of 3, no linger yet");
        assert_eq!(
            s.close_chunk_if_due(t0 + Duration::from_millis(100)),
            Some(2),
            "linger"
        );
        assert_eq!(s.take_pending().map(|c| c.len()), Some(2));
        for o in 2..5 {
            let e = env(&mut s, 0, o);
            s.on_message(e, t0);
        }
        assert_eq!(s.close_chunk_if_due(t0), Some(3), "full");
        assert_eq!(s.in_flight(), 5);
    }

    #[test]
    fn one_chunk_waits_at_a_time() {
        let mut s = SourceState::new(limits(1, 100));
        let t0 = Instant::now();
        let e = env(&mut s, 0, 0);
        s.on_message(e, t0);
        assert_eq!(s.close_chunk_if_due(t0), Some(1));
        let e = env(&mut s, 0, 1);
        s.on_message(e, t0);
        assert_eq!(s.close_chunk_if_due(t0), None, "a chunk is already waiting");
        let c = s.take_pending().unwrap();
        s.unsent(c); // pipeline full
        assert!(s.has_pending());
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn read_ahead_pauses_at_the_bound_and_resumes_with_hysteresis() {
        let mut s = SourceState::new(limits(10, 20));
        let t0 = Instant::now();
        let mut dones = Vec::new();
        for o in 0..20 {
            let e = env(&mut s, 0, o);
            dones.push(e.done());
            s.on_message(e, t0);
            if s.close_chunk_if_due(t0).is_some() {
                s.take_pending();
            }
        }
        assert!(s.wants_pause(false), "20 in flight = the bound");
        s.set_paused(true);
        for d in &dones[..5] {
            s.on_done(*d);
        }
        assert!(
            s.wants_pause(false),
            "15 in flight: not yet a chunk below the bound"
        );
        for d in &dones[5..10] {
            s.on_done(*d);
        }
        assert!(!s.wants_pause(false), "10 in flight: resume");
        s.set_paused(false);
        assert_eq!(s.tracker.take_commits(), vec![(0, 10, String::new())]);
    }

    #[test]
    fn infrastructure_faults_pause_regardless_of_load() {
        let s = SourceState::new(limits(10, 20));
        assert!(!s.wants_pause(false));
        assert!(s.wants_pause(true));
    }

    #[test]
    fn stale_done_events_free_room_but_never_commit() {
        let mut s = SourceState::new(limits(1, 5));
        let t0 = Instant::now();
        let e = env(&mut s, 3, 7);
        let d = e.done();
        s.on_message(e, t0);
        s.close_chunk_if_due(t0);
        s.take_pending();
        assert_eq!(s.tracker.revoke(3), None);
        s.on_done(d);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.tracker.take_commits(), vec![]);
    }

    #[test]
    fn idle_needs_no_work_and_a_quiet_period() {
        let mut s = SourceState::new(limits(1, 5));
        let t0 = Instant::now();
        assert!(
            !s.idle_for(Duration::from_secs(1), t0),
            "never saw a message"
        );
        let e = env(&mut s, 0, 0);
        let d = e.done();
        s.on_message(e, t0);
        s.close_chunk_if_due(t0);
        s.take_pending();
        assert!(!s.idle_for(Duration::ZERO, t0 + Duration::from_secs(5)));
        s.on_done(d);
        assert!(s.idle_for(Duration::from_secs(1), t0 + Duration::from_secs(5)));
        assert!(!s.idle_for(Duration::from_secs(10), t0 + Duration::from_secs(5)));
    }

    /// Large messages pause intake by their bytes long before their count would; the bytes
    /// come back as they finish, and the source resumes at half the bound.
    #[test]
    fn read_ahead_is_bounded_in_bytes_too() {
        let mut s = SourceState::new(Limits {
            max_in_flight_bytes: 1000,
            ..limits(100, 1000)
        });
        let t0 = Instant::now();
        let mut dones = Vec::new();
        let each = {
            let mut e = env(&mut s, 9, 0);
            e.value = Some(vec![b'x'; 300]);
            e.size()
        };
        s = SourceState::new(Limits {
            max_in_flight_bytes: 10 * each / 3,
            ..limits(100, 1000)
        });
        for o in 0..4 {
            let mut e = env(&mut s, 0, o);
            e.value = Some(vec![b'x'; 300]);
            dones.push(e.done());
            s.on_message(e, t0);
        }
        assert_eq!(s.in_flight_bytes(), 4 * each);
        assert!(s.wants_pause(false), "4 messages taken, bound 3.3");
        s.set_paused(true);
        s.close_chunk_if_due(t0 + Duration::from_secs(1));
        s.take_pending();
        s.on_done(dones[0]);
        s.on_done(dones[1]);
        assert!(s.wants_pause(false), "600 bytes: above half the bound");
        s.on_done(dones[2]);
        assert_eq!(s.in_flight_bytes(), each);
        assert!(!s.wants_pause(false), "one message's bytes: resume");
    }

    /// Many tiny headers count what they cost: 50 000 empty headers are megabytes, not zero.
    #[test]
    fn headers_count_their_overhead() {
        let mut s = SourceState::new(limits(10, 100));
        let mut e = env(&mut s, 0, 0);
        let bare = e.size();
        e.headers = vec![(Vec::new(), None); 50_000];
        assert!(
            e.size() >= bare + 50_000 * 48,
            "{} bytes counted for 50 000 headers",
            e.size() - bare
        );
    }

    /// A partition whose messages never finish (all held for a dead host) pauses itself at its
    /// share of the read-ahead; the others keep going, and it resumes under half its share.
    #[test]
    fn one_partition_cannot_take_the_whole_read_ahead() {
        let mut s = SourceState::new(limits(10, 40));
        let t0 = Instant::now();
        let assigned = [0, 1];
        let mut dones = Vec::new();
        for o in 0..20 {
            let e = env(&mut s, 0, o);
            dones.push(e.done());
            s.on_message(e, t0);
        }
        assert!(
            !s.wants_pause(false),
            "20 of 40 in flight: no pod-wide pause"
        );
        let over = s.partitions_over_share(&assigned);
        assert_eq!(over, [0].into(), "partition 0 is at its half");
        s.set_paused_alone(over);
        for o in 0..15 {
            let e = env(&mut s, 1, o);
            s.on_message(e, t0);
        }
        assert_eq!(
            s.partitions_over_share(&assigned),
            [0].into(),
            "1 is under its share"
        );
        for d in &dones[..9] {
            s.on_done(*d);
        }
        assert_eq!(
            s.partitions_over_share(&assigned),
            [0].into(),
            "11 > half of 20"
        );
        s.on_done(dones[9]);
        assert!(s.partitions_over_share(&assigned).is_empty(), "10: resume");
        assert!(
            s.partitions_over_share(&[0]).is_empty(),
            "alone, a partition has it all"
        );
    }
}

//! Crash-loop protection: which records were in the OCR engine when a worker process died,
//! kept in the metadata of each partition's committed offset, so that a record that kills
//! every process that reads it (a segfault inside ONNX Runtime, an out-of-memory kill, a hung
//! device call: anything that is not a panic, which the engine catches) cannot crash-loop the
//! fleet. Kafka keeps the metadata for the group, so the count follows the partition to
//! whichever worker gets it next.
//!
//! How it works:
//! - Before each engine call, the OCR stage has the committer (see [`super::committer`], a
//!   thread of its own, so that the poll loop never waits on the broker) commit, for every
//!   partition in the call, its position with the offsets in the engine in the metadata (the
//!   call starts only once that commit returned): `run=` for a batch, `solo=` for a record that
//!   runs alone. When a call returns, its offsets leave the journal (with the next commit, not
//!   waited for: a process that dies before that is written only makes suspects of records
//!   that were done). Every other commit carries the same metadata, so it is never lost in
//!   between. An orderly stop
//!   or revoke whose calls all returned leaves no `run=` or `solo=` behind.
//! - A process that dies (or exits on a hung device call) leaves what was in the engine. The
//!   next owner of the partition reads it at assignment ([`Journal::after_restart`]):
//!   - each record of a **batch** (`run=`) becomes a **suspect** (`sus=`): it runs alone next
//!     time, and no death is counted, since any of the batch may have caused the crash;
//!   - the record that ran **alone** (`solo=`) has caused it: one **death** (`dead=o:n`).
//! - A record with a death or under suspicion runs **alone** (a call of its own, nothing else in
//!   the engine on any lane), so that a crash is charged to it alone and never to an innocent
//!   neighbour. A record that has died `--crash-loop-attempts` times is dead-lettered
//!   (`ocr/crash_loop`) without being run.
//!
//! So a poison image costs one crash in its batch and then `--crash-loop-attempts` crashes
//! alone; each of its batch-mates one run on its own, and never a death.
//!
//! **Size.** Kafka refuses metadata over `offset.metadata.max.bytes` (4 KiB by default) and
//! then every commit of the partition fails. [`Journal::encode`] never writes more than
//! [`MAX_METADATA`] bytes: offsets are written as ranges, and when they do not fit, the
//! closest ranges are merged (the merged gap's records become suspects too: slower, never
//! unsafe); at most [`MAX_DEATHS`] death counts are kept (the lowest offsets: they block the
//! commits).
//!
//! **Versions.** `ocrfleet/2` is written; `ocrfleet/1` (whose `run=` counted a death for every
//! record of the batch) is read as suspects. Metadata this worker cannot read (another tool's,
//! a newer format) is kept as it is while the journal has nothing to say, and replaced only when
//! it has (its counts are then lost; see deploy/docs/production.md).

use std::collections::BTreeMap;

use crate::envelope::Care;

/// The metadata's prefix and format version.
const TAG: &str = "ocrfleet/2";
const TAG_V1: &str = "ocrfleet/1";
/// Death counts kept per partition at most (the lowest offsets win: they block the commits).
pub const MAX_DEATHS: usize = 64;
/// The longest metadata written: Kafka's default `offset.metadata.max.bytes`.
pub const MAX_METADATA: usize = 4096;
/// Bytes of the metadata each list may take (with the tag and the names, under the maximum).
const RUN_BUDGET: usize = 1300;
const SUSPECT_BUDGET: usize = 1300;
const DEATH_BUDGET: usize = 1400;

/// A set of offsets kept as inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(BTreeMap<i64, i64>);

impl Ranges {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `a..=b`, merging with the ranges it touches.
    pub fn insert_range(&mut self, a: i64, b: i64) {
        let (mut a, mut b) = (a.min(b), a.max(b));
        // A range starting at or before b+1 and ending at or after a-1 touches.
        let touching: Vec<(i64, i64)> = self
            .0
            .range(..=b.saturating_add(1))
            .rev()
            .take_while(|(_, &e)| e >= a.saturating_sub(1))
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            a = a.min(s);
            b = b.max(e);
        }
        self.0.insert(a, b);
    }

    pub fn insert(&mut self, o: i64) {
        self.insert_range(o, o);
    }

    pub fn contains(&self, o: i64) -> bool {
        self.0.range(..=o).next_back().is_some_and(|(_, &e)| e >= o)
    }

    /// Forgets every offset below `position`.
    pub fn retain_from(&mut self, position: i64) {
        let cut: Vec<(i64, i64)> = self.0.range(..position).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in cut {
            self.0.remove(&s);
            if e >= position {
                self.0.insert(position, e);
            }
        }
    }

    /// Adds every offset of `other`.
    pub fn extend(&mut self, other: &Ranges) {
        for (&a, &b) in &other.0 {
            self.insert_range(a, b);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.0.iter().map(|(&a, &b)| (a, b))
    }

    /// `1-4,7,9-10`, within `budget` bytes: when the exact list is longer, the ranges with the
    /// smallest gaps between them are merged until it fits (a superset, never a subset).
    pub fn encode_within(&self, budget: usize) -> String {
        let mut rs: Vec<(i64, i64)> = self.iter().collect();
        loop {
            let text = rs
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            if text.len() <= budget || rs.len() <= 1 {
                return text;
            }
            // Merge the closest pair; a quarter of them at a time when there are many.
            let mut gaps: Vec<(i64, usize)> = rs
                .windows(2)
                .enumerate()
                .map(|(i, w)| (w[1].0.saturating_sub(w[0].1), i))
                .collect();
            gaps.sort_unstable();
            let n = (gaps.len() / 4).max(1);
            let mut merge: Vec<usize> = gaps[..n].iter().map(|&(_, i)| i).collect();
            merge.sort_unstable();
            let mut out: Vec<(i64, i64)> = Vec::with_capacity(rs.len());
            let mut m = merge.into_iter().peekable();
            for (i, r) in rs.iter().enumerate() {
                match out.last_mut() {
                    Some(last) if i > 0 && m.peek() == Some(&(i - 1)) => {
                        m.next();
                        last.1 = r.1;
                    }
                    _ => out.push(*r),
                }
            }
            rs = out;
        }
    }

    /// Reads [`Ranges::encode_within`]'s text; a malformed part is skipped.
    pub fn decode(s: &str) -> Ranges {
        let mut out = Ranges::default();
        for r in s.split(',') {
            // A leading '-' is a negative number, not a range.
            match r.get(1..).and_then(|t| t.find('-')).map(|i| i + 1) {
                Some(i) => {
                    if let (Ok(a), Ok(b)) = (r[..i].parse::<i64>(), r[i + 1..].parse::<i64>()) {
                        if b >= a {
                            out.insert_range(a, b);
                        }
                    }
                }
                None => {
                    if let Ok(o) = r.parse() {
                        out.insert(o);
                    }
                }
            }
        }
        out
    }
}

impl FromIterator<i64> for Ranges {
    fn from_iter<I: IntoIterator<Item = i64>>(it: I) -> Ranges {
        let mut r = Ranges::default();
        for o in it {
            r.insert(o);
        }
        r
    }
}

/// One partition's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// Offsets in the engine now, in batch calls.
    pub running: Ranges,
    /// The offset running alone now, if one is.
    pub solo: Option<i64>,
    /// Offsets that were in a batch when a process died: each runs alone next.
    pub suspects: Ranges,
    /// Deaths (crashes while running alone) per offset.
    pub deaths: BTreeMap<i64, u32>,
    /// Metadata this worker could not read, kept while it has nothing of its own to say.
    pub foreign: Option<String>,
}

impl Journal {
    /// Whether the journal says nothing of its own.
    fn is_empty(&self) -> bool {
        self.running.is_empty()
            && self.solo.is_none()
            && self.suspects.is_empty()
            && self.deaths.is_empty()
    }

    /// The committed offset's metadata: never longer than [`MAX_METADATA`] bytes; empty (or the
    /// unreadable metadata found) when there is nothing to say.
    pub fn encode(&self) -> String {
        if self.is_empty() {
            return self
                .foreign
                .clone()
                .filter(|f| f.len() <= MAX_METADATA)
                .unwrap_or_default();
        }
        let mut s = String::from(TAG);
        if !self.running.is_empty() {
            s.push_str(" run=");
            s.push_str(&self.running.encode_within(RUN_BUDGET));
        }
        if let Some(o) = self.solo {
            s.push_str(&format!(" solo={o}"));
        }
        if !self.suspects.is_empty() {
            s.push_str(" sus=");
            s.push_str(&self.suspects.encode_within(SUSPECT_BUDGET));
        }
        if !self.deaths.is_empty() {
            s.push_str(" dead=");
            let mut used = 0;
            let d: Vec<String> = self
                .deaths
                .iter()
                .take(MAX_DEATHS)
                .map(|(o, n)| format!("{o}:{n}"))
                .take_while(|e| {
                    used += e.len() + 1;
                    used <= DEATH_BUDGET
                })
                .collect();
            s.push_str(&d.join(","));
        }
        debug_assert!(s.len() <= MAX_METADATA, "{} bytes", s.len());
        s
    }

    /// Reads metadata written by [`Journal::encode`] (or by a version-1 worker); anything else
    /// is kept aside as `foreign`.
    pub fn decode(meta: &str) -> Journal {
        let mut j = Journal::default();
        let mut parts = meta.split(' ');
        // Version 1 had no solo runs: its `run=` reads as a batch (suspects after a restart,
        // the safe reading), its `dead=` as deaths.
        if !matches!(parts.next(), Some(TAG | TAG_V1)) {
            j.foreign = (!meta.is_empty()).then(|| meta.to_owned());
            return j;
        }
        for part in parts {
            if let Some(r) = part.strip_prefix("run=") {
                j.running = Ranges::decode(r);
            } else if let Some(o) = part.strip_prefix("solo=") {
                j.solo = o.parse().ok();
            } else if let Some(r) = part.strip_prefix("sus=") {
                j.suspects = Ranges::decode(r);
            } else if let Some(d) = part.strip_prefix("dead=") {
                j.deaths = d
                    .split(',')
                    .filter_map(|e| {
                        let (o, n) = e.split_once(':')?;
                        Some((o.parse().ok()?, n.parse().ok()?))
                    })
                    .collect();
            }
        }
        j
    }

    /// The journal a new owner starts from, given the committed offset and its metadata: what
    /// was in the engine when the last owner stopped is suspected (a batch) or has died once
    /// more (alone). Offsets below the committed position are finished and forgotten.
    pub fn after_restart(meta: &str, position: Option<i64>) -> Journal {
        let mut j = Journal::decode(meta);
        let batch = std::mem::take(&mut j.running);
        j.suspects.extend(&batch);
        if let Some(o) = j.solo.take() {
            *j.deaths.entry(o).or_default() += 1;
        }
        if let Some(p) = position {
            j.finished_below(p);
        }
        while j.deaths.len() > MAX_DEATHS {
            j.deaths.pop_last();
        }
        j
    }

    /// How to handle the record at `offset`, with `limit` deaths allowed (0: no limit).
    pub fn care(&self, offset: i64, limit: u32) -> Care {
        match self.deaths.get(&offset).copied().unwrap_or(0) {
            d if limit > 0 && d >= limit => Care::CrashLoop(d),
            0 if !self.suspects.contains(offset) => Care::Normal,
            d => Care::Alone(d),
        }
    }

    /// Forgets what lies below the committed position `position`.
    pub fn finished_below(&mut self, position: i64) {
        self.deaths.retain(|&o, _| o >= position);
        self.suspects.retain_from(position);
        self.running.retain_from(position);
        if self.solo.is_some_and(|o| o < position) {
            self.solo = None;
        }
    }

    /// The engine's calls now: `batch` offsets in batch calls, `solo` alone. Returns whether a
    /// record was added (then the journal must be on the broker before the call starts).
    pub fn set_running(&mut self, batch: Ranges, solo: Option<i64>) -> bool {
        let added = batch
            .iter()
            .any(|(a, b)| (a..=b).any(|o| !self.running.contains(o)))
            || (solo.is_some() && solo != self.solo);
        self.running = batch;
        self.solo = solo;
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(v: &[i64]) -> Ranges {
        v.iter().copied().collect()
    }

    #[test]
    fn the_journal_round_trips_through_the_metadata() {
        let j = Journal {
            running: ranges(&[3, 4, 5, 9, 11, 12]),
            solo: Some(20),
            suspects: ranges(&[30, 31]),
            deaths: [(7, 1), (40, 2)].into(),
            foreign: None,
        };
        let m = j.encode();
        assert_eq!(
            m,
            "ocrfleet/2 run=3-5,9,11-12 solo=20 sus=30-31 dead=7:1,40:2"
        );
        assert_eq!(Journal::decode(&m), j);
        assert_eq!(Journal::default().encode(), "");
        assert_eq!(Journal::decode(""), Journal::default());
    }

    #[test]
    fn metadata_it_cannot_read_is_kept_while_it_has_nothing_to_say() {
        let j = Journal::after_restart("ocrfleet/9 something new", Some(5));
        assert_eq!(j.encode(), "ocrfleet/9 something new");
        assert_eq!(j.care(5, 3), Care::Normal);
        let mut j = j;
        j.set_running(ranges(&[6]), None);
        assert_eq!(j.encode(), "ocrfleet/2 run=6", "replaced once it has");
        j.set_running(Ranges::default(), None);
        assert_eq!(j.encode(), "ocrfleet/9 something new");
    }

    #[test]
    fn a_batch_that_died_makes_suspects_and_a_solo_run_a_death() {
        let j = Journal::after_restart("ocrfleet/2 run=10-12 dead=3:2", Some(10));
        assert!(
            j.deaths.is_empty(),
            "no death for a batch; 3 is below the position"
        );
        for o in 10..=12 {
            assert_eq!(j.care(o, 3), Care::Alone(0), "{o} runs alone");
        }
        assert_eq!(j.care(13, 3), Care::Normal);
        // The suspect 11 runs alone and the process dies again.
        let mut again = j.clone();
        again.set_running(Ranges::default(), Some(11));
        let j = Journal::after_restart(&again.encode(), Some(10));
        assert_eq!(j.care(11, 3), Care::Alone(1));
        assert_eq!(
            j.care(10, 3),
            Care::Alone(0),
            "still a suspect, never charged"
        );
        let mut j = j;
        for _ in 0..2 {
            j.set_running(Ranges::default(), Some(11));
            j = Journal::after_restart(&j.encode(), Some(10));
        }
        assert_eq!(j.care(11, 3), Care::CrashLoop(3));
        assert_eq!(j.care(11, 0), Care::Alone(3), "0 turns the limit off");
        assert_eq!(j.care(12, 3), Care::Alone(0));
    }

    #[test]
    fn version_1_runs_are_read_as_suspects() {
        let j = Journal::after_restart("ocrfleet/1 run=10-11 dead=12:1", Some(10));
        assert_eq!(j.care(10, 3), Care::Alone(0));
        assert_eq!(j.care(12, 3), Care::Alone(1), "v1 deaths are kept");
    }

    #[test]
    fn a_clean_end_leaves_nothing_to_count() {
        let mut j = Journal::after_restart("ocrfleet/2 dead=5:1", Some(5));
        j.set_running(ranges(&[5, 6]), None);
        j.set_running(Ranges::default(), None);
        let next = Journal::after_restart(&j.encode(), Some(5));
        assert_eq!(next.deaths, [(5, 1)].into(), "no new death");
        assert!(next.suspects.is_empty());
    }

    #[test]
    fn only_additions_must_be_written_ahead() {
        let mut j = Journal::default();
        assert!(j.set_running(ranges(&[1, 2]), None));
        assert!(!j.set_running(ranges(&[2]), None), "a call returned");
        assert!(j.set_running(ranges(&[2]), Some(9)));
        assert!(!j.set_running(ranges(&[2]), Some(9)));
    }

    #[test]
    fn ranges_merge_and_trim() {
        let mut r = ranges(&[1, 2, 3, 7, 9, 10]);
        assert_eq!(r.encode_within(100), "1-3,7,9-10");
        r.insert(8);
        assert_eq!(r.encode_within(100), "1-3,7-10");
        assert!(r.contains(9) && !r.contains(5) && !r.contains(11));
        r.retain_from(2);
        assert_eq!(r.encode_within(100), "2-3,7-10");
        assert_eq!(
            Ranges::decode("2-3,7-10,x,5-1,-4"),
            ranges(&[2, 3, 7, 8, 9, 10, -4])
        );
        // Over the budget: the closest ranges merge (a superset).
        let sparse: Ranges = (0..100).map(|i| i * 10).collect();
        let text = sparse.encode_within(40);
        assert!(text.len() <= 40, "{text}");
        let back = Ranges::decode(&text);
        assert!((0..100).all(|i| back.contains(i * 10)));
    }

    mod bounded {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever it holds (sparse offsets near i64::MAX, long batches, many deaths), the
            /// metadata fits Kafka's default limit, and what was running is still covered.
            #[test]
            fn metadata_never_exceeds_4_kib_and_keeps_what_was_running(
                base in prop_oneof![Just(0i64), Just(i64::MAX / 2), Just(i64::MAX - 10_000_000)],
                running in proptest::collection::vec(0i64..5_000_000, 0..3000),
                suspects in proptest::collection::vec(0i64..5_000_000, 0..3000),
                deaths in proptest::collection::vec((0i64..5_000_000, 1u32..u32::MAX), 0..500),
                solo in proptest::option::of(0i64..5_000_000),
            ) {
                let j = Journal {
                    running: running.iter().map(|o| base + o).collect(),
                    solo: solo.map(|o| base + o),
                    suspects: suspects.iter().map(|o| base + o).collect(),
                    deaths: deaths.iter().map(|&(o, n)| (base + o, n)).collect(),
                    foreign: None,
                };
                let m = j.encode();
                prop_assert!(m.len() <= MAX_METADATA, "{} bytes", m.len());
                let back = Journal::decode(&m);
                for o in &running {
                    prop_assert!(back.running.contains(base + o));
                }
                for o in &suspects {
                    prop_assert!(back.suspects.contains(base + o));
                }
                prop_assert_eq!(back.solo, j.solo);
                let next = Journal::after_restart(&m, None);
                for o in &running {
                    prop_assert_ne!(next.care(base + o, 3), Care::Normal);
                }
            }
        }
    }
}

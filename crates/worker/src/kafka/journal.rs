//! Crash-loop protection: which records were in the OCR engine when a worker process died,
//! kept in the metadata of each partition's committed offset, so that a record that kills
//! every process that reads it (a segfault inside ONNX Runtime, an out-of-memory kill, a hung
//! device call: anything that is not a panic, which the engine catches) cannot crash-loop the
//! fleet. Kafka keeps the metadata for the group, so the count follows the partition to
//! whichever worker gets it next.
//!
//! How it works:
//! - Before each engine call, the OCR stage has the source commit, for every partition in the
//!   batch, its position with `run=<the batch's offsets>` in the metadata (synchronously: the
//!   call starts only once it is written). When the engine goes idle, `run` is cleared. Every
//!   other commit carries the same metadata, so it is never lost in between.
//! - A process that ends cleanly leaves no `run` behind. One that dies leaves the offsets that
//!   were in the engine: the next owner of the partition reads them at assignment
//!   ([`Journal::after_restart`]) and counts one death for each (`dead=<offset>:<count>`).
//! - A record with a death is run **alone** (a batch of its own, nothing else in the engine),
//!   so that further deaths are its own, not a batch-mate's. A record that has died
//!   `--crash-loop-attempts` times is dead-lettered (`ocr/crash_loop`) without being run.
//!
//! So a poison image costs `--crash-loop-attempts` crashes, and each of its first batch-mates
//! one run on its own. Metadata is kept under Kafka's default 4 KiB limit (`offset.metadata.max.bytes`):
//! offsets are written as ranges, and at most [`MAX_DEATHS`] counts are kept.

use std::collections::{BTreeMap, BTreeSet};

/// The metadata's prefix and format version.
const TAG: &str = "ocrfleet/1";
/// Death counts kept per partition at most (the lowest offsets win: they block the commits).
pub const MAX_DEATHS: usize = 64;

/// How a record is to be handled, from its deaths so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Care {
    #[default]
    Normal,
    /// It was in the engine when a process died (this many times): run it alone.
    Alone(u32),
    /// It has died this many times, at the limit: dead-letter it without running it.
    CrashLoop(u32),
}

/// One partition's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// Offsets in the engine now.
    pub running: BTreeSet<i64>,
    /// Deaths per offset.
    pub deaths: BTreeMap<i64, u32>,
}

impl Journal {
    /// The committed offset's metadata (empty when there is nothing to say).
    pub fn encode(&self) -> String {
        if self.running.is_empty() && self.deaths.is_empty() {
            return String::new();
        }
        let mut s = String::from(TAG);
        if !self.running.is_empty() {
            s.push_str(" run=");
            s.push_str(&ranges(&self.running));
        }
        if !self.deaths.is_empty() {
            s.push_str(" dead=");
            let d: Vec<String> = self
                .deaths
                .iter()
                .take(MAX_DEATHS)
                .map(|(o, n)| format!("{o}:{n}"))
                .collect();
            s.push_str(&d.join(","));
        }
        s
    }

    /// Reads metadata written by [`Journal::encode`]; anything else (another tool's metadata,
    /// an older format) reads as an empty journal.
    pub fn decode(meta: &str) -> Journal {
        let mut j = Journal::default();
        let mut parts = meta.split(' ');
        if parts.next() != Some(TAG) {
            return j;
        }
        for part in parts {
            if let Some(r) = part.strip_prefix("run=") {
                j.running = parse_ranges(r);
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

    /// The journal a new owner starts from, given the committed offset and its metadata: the
    /// offsets that were running when the last owner stopped died once more. Offsets below the
    /// committed position are finished and forgotten.
    pub fn after_restart(meta: &str, position: Option<i64>) -> Journal {
        let mut j = Journal::decode(meta);
        for o in std::mem::take(&mut j.running) {
            *j.deaths.entry(o).or_default() += 1;
        }
        if let Some(p) = position {
            j.deaths.retain(|&o, _| o >= p);
        }
        while j.deaths.len() > MAX_DEATHS {
            j.deaths.pop_last();
        }
        j
    }

    /// How to handle the record at `offset`, with `limit` deaths allowed (0: no limit).
    pub fn care(&self, offset: i64, limit: u32) -> Care {
        match self.deaths.get(&offset).copied().unwrap_or(0) {
            0 => Care::Normal,
            d if limit > 0 && d >= limit => Care::CrashLoop(d),
            d => Care::Alone(d),
        }
    }

    /// Forgets what lies below the committed position `position`.
    pub fn finished_below(&mut self, position: i64) {
        self.deaths.retain(|&o, _| o >= position);
        self.running.retain(|&o| o >= position);
    }
}

/// `1-4,7,9-10`.
fn ranges(offsets: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = offsets.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().expect("peeked");
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn parse_ranges(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for r in s.split(',') {
        match r.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    // A range never spans more than a batch; a corrupt one is not expanded.
                    if b >= a && b - a < 100_000 {
                        out.extend(a..=b);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_round_trips_through_the_metadata() {
        let j = Journal {
            running: [3, 4, 5, 9, 11, 12].into(),
            deaths: [(7, 1), (40, 2)].into(),
        };
        let m = j.encode();
        assert_eq!(m, "ocrfleet/1 run=3-5,9,11-12 dead=7:1,40:2");
        assert_eq!(Journal::decode(&m), j);
        assert_eq!(Journal::default().encode(), "");
        assert_eq!(Journal::decode("someone else's"), Journal::default());
        assert_eq!(Journal::decode(""), Journal::default());
    }

    #[test]
    fn what_was_running_when_the_owner_died_counts_one_death() {
        let m = "ocrfleet/1 run=10-12 dead=11:1,3:2";
        let j = Journal::after_restart(m, Some(10));
        assert!(j.running.is_empty());
        assert_eq!(
            j.deaths,
            [(10, 1), (11, 2), (12, 1)].into(),
            "3 is below the position"
        );
        assert_eq!(j.care(10, 3), Care::Alone(1));
        assert_eq!(j.care(11, 3), Care::Alone(2));
        assert_eq!(j.care(13, 3), Care::Normal);
        let again = Journal::after_restart(
            &Journal {
                running: [11].into(),
                ..j.clone()
            }
            .encode(),
            Some(10),
        );
        assert_eq!(again.care(11, 3), Care::CrashLoop(3));
        assert_eq!(again.care(11, 0), Care::Alone(3), "0 turns the limit off");
    }

    #[test]
    fn a_clean_end_leaves_nothing_to_count() {
        let j = Journal {
            running: BTreeSet::new(),
            deaths: [(5, 1)].into(),
        };
        let next = Journal::after_restart(&j.encode(), Some(5));
        assert_eq!(next.deaths, [(5, 1)].into(), "no new death");
    }

    #[test]
    fn metadata_stays_small() {
        let j = Journal {
            running: (1_000_000..1_000_512).collect(),
            deaths: (0..1000).map(|o| (o * 1000, 2)).collect(),
        };
        let m = j.encode();
        assert!(m.len() < 4096, "{} bytes", m.len());
        assert_eq!(Journal::decode(&m).running.len(), 512);
        assert_eq!(Journal::after_restart(&m, None).deaths.len(), MAX_DEATHS);
    }
}

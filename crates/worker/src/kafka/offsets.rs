//! Which offsets may be committed.
//!
//! For each partition the tracker keeps the offsets received and not yet finished (indexed or
//! dead-lettered). The commit position is the lowest unfinished offset, or one past the highest
//! received when all are finished: every message below it is done. Each assignment of a
//! partition gets a new generation; work from an older generation (a partition that was revoked
//! and maybe re-assigned) is ignored, so it can never move a commit.
//!
//! Each partition also keeps its crash-loop [`Journal`], which rides along as the metadata of
//! every commit of that partition (see [`super::journal`]).

use std::collections::{BTreeMap, HashMap};

use super::journal::{Journal, Ranges};
use crate::envelope::Care;

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// offset → finished?
    pending: BTreeMap<i64, bool>,
    /// One past the highest offset received in this generation.
    next: Option<i64>,
    /// First offset received in this generation.
    first_received: Option<i64>,
    /// Last position handed out for commit.
    committed: Option<i64>,
    /// The group's committed position when the partition was assigned (if known).
    assigned_at: Option<i64>,
    journal: Journal,
    /// The metadata last handed out for commit (at assignment: what the broker holds).
    written: String,
}

/// The engine's calls of one moment: (partition, offset, generation, alone).
pub type Running = [(i32, i64, u64, bool)];

/// Per-partition progress for one topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<i32, Partition>,
    next_generation: u64,
    /// The lowest offset of each partition that arrived while it was not assigned (and was
    /// therefore not taken); see [`OffsetTracker::received`].
    unassigned: HashMap<i32, i64>,
}

impl OffsetTracker {
    /// A partition was assigned: start a new generation for it.
    pub fn assign(&mut self, partition: i32) {
        self.assign_with(partition, None, "");
    }

    /// [`OffsetTracker::assign`], knowing the group's committed position and its metadata
    /// (the crash-loop journal the last owner left, see [`Journal::after_restart`]).
    pub fn assign_with(&mut self, partition: i32, committed: Option<i64>, metadata: &str) {
        self.next_generation += 1;
        let g = self.next_generation;
        let mut p = Partition {
            generation: g,
            assigned_at: committed,
            journal: Journal::after_restart(metadata, committed),
            // What the last owner left is rewritten at the first commit (its runs become
            // suspects or deaths now, and must not be counted again by the next owner).
            written: metadata.to_owned(),
            ..Default::default()
        };
        if let Some(floor) = self.unassigned.remove(&partition) {
            // A message at `floor` was seen and not taken: hold commits below it until it has
            // been received again and finished, unless the group's position is already past it
            // (then nothing below the position is ours to redo, and the message will not come
            // again: holding it would freeze the partition's commits).
            if committed.is_none_or(|c| floor >= c) {
                p.pending.insert(floor, false);
                p.first_received = Some(floor);
            }
        }
        self.parts.insert(partition, p);
    }

    /// The crash-loop deaths of a partition, for logs.
    pub fn deaths(&self, partition: i32) -> Vec<(i64, u32)> {
        self.history(partition).0
    }

    /// The crash-loop deaths and the suspects (as ranges) of a partition, for logs.
    pub fn history(&self, partition: i32) -> (Vec<(i64, u32)>, String) {
        self.parts
            .get(&partition)
            .map(|p| {
                (
                    p.journal.deaths.iter().map(|(&o, &n)| (o, n)).collect(),
                    p.journal.suspects.encode_within(200),
                )
            })
            .unwrap_or_default()
    }

    /// How to handle the record at (`partition`, `offset`), with `limit` deaths allowed.
    pub fn care(&self, partition: i32, offset: i64, limit: u32) -> Care {
        self.parts
            .get(&partition)
            .map_or(Care::Normal, |p| p.journal.care(offset, limit))
    }

    /// The engine's calls now (`entries`; empty: it is idle). Returns whether a record was
    /// added to a partition's journal: then the journal must be committed (see
    /// [`OffsetTracker::take_commits`]) before the call starts. Entries of stale generations
    /// are not recorded.
    pub fn journal_running(&mut self, entries: &Running) -> bool {
        let mut now: HashMap<i32, (Ranges, Option<i64>)> = HashMap::new();
        for &(part, offset, generation, alone) in entries {
            if self.is_current(part, generation) {
                let e = now.entry(part).or_default();
                if alone {
                    e.1 = Some(offset);
                } else {
                    e.0.insert(offset);
                }
            }
        }
        let mut added = false;
        for (part, p) in self.parts.iter_mut() {
            let (batch, solo) = now.remove(part).unwrap_or_default();
            added |= p.journal.set_running(batch, solo);
        }
        added
    }

    /// A partition was revoked: forget its in-flight work. Returns what to commit first, if
    /// anything changed: the position (or the last known one) with the journal as metadata.
    /// Calls that have not returned stay in it: if this process dies before they return, the
    /// next owner runs their records alone (suspects, never a death).
    pub fn revoke(&mut self, partition: i32) -> Option<(i64, String)> {
        let moved = self.commit_position(partition);
        let pos = self.best_position(partition);
        let p = self.parts.remove(&partition)?;
        let mut journal = p.journal;
        if let Some(m) = moved {
            journal.finished_below(m);
        }
        let meta = journal.encode();
        let changed = moved.is_some_and(|m| p.committed.is_none_or(|c| m > c)) || meta != p.written;
        pos.filter(|_| changed).map(|pos| (pos, meta))
    }

    /// The position to commit the journal at when the commit position has not moved: the
    /// last one handed out, else the group's at assignment, else the first offset received.
    fn best_position(&self, partition: i32) -> Option<i64> {
        let p = self.parts.get(&partition)?;
        self.commit_position(partition)
            .or(p.committed)
            .or(p.assigned_at)
            .or(p.first_received)
    }

    /// The current generation of a partition, or `None` if it is not assigned.
    pub fn generation(&self, partition: i32) -> Option<u64> {
        self.parts.get(&partition).map(|p| p.generation)
    }

    /// Whether work tagged (partition, generation) is still current.
    pub fn is_current(&self, partition: i32, generation: u64) -> bool {
        self.generation(partition) == Some(generation)
    }

    /// Records a received message and returns its generation, or `None` when the partition is
    /// not assigned: such a message is not taken (not tracked, never committed), because the
    /// sink would drop it as not ours while a done event for it would count. A generation made
    /// up here would be one that [`crate::kafka::Assignment`] never published: the message would
    /// then be committed with neither a document nor a dead letter.
    ///
    /// The offset is remembered: if the partition is assigned later, commits stay below it
    /// until it has been received and finished in the new generation, so that nothing between
    /// the committed position and it can be skipped.
    pub fn received(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let Some(p) = self.parts.get_mut(&partition) else {
            let floor = self.unassigned.entry(partition).or_insert(offset);
            *floor = (*floor).min(offset);
            return None;
        };
        p.pending.insert(offset, false);
        p.first_received.get_or_insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(p.generation)
    }

    /// Marks a message finished. Ignored when the generation is stale.
    pub fn finished(&mut self, partition: i32, offset: i64, generation: u64) -> bool {
        match self.parts.get_mut(&partition) {
            Some(p) if p.generation == generation => {
                if let Some(done) = p.pending.get_mut(&offset) {
                    *done = true;
                }
                while let Some((_, true)) = p.pending.first_key_value() {
                    p.pending.pop_first();
                }
                true
            }
            _ => false,
        }
    }

    /// Position below which every received message of the partition is finished.
    pub fn commit_position(&self, partition: i32) -> Option<i64> {
        let p = self.parts.get(&partition)?;
        match p.pending.first_key_value() {
            // The first unfinished offset, if something before it finished in this generation.
            Some((&first, _)) => p.first_received.filter(|&s| first > s).map(|_| first),
            None => p.next,
        }
    }

    /// What to commit now, each with its partition's journal as metadata: positions that
    /// moved since the last call, and partitions whose journal changed (at the last known
    /// position), so that what the engine runs, and its end, reach the broker.
    pub fn take_commits(&mut self) -> Vec<(i32, i64, String)> {
        let mut out = Vec::new();
        let keys: Vec<i32> = self.parts.keys().copied().collect();
        for part in keys {
            let moved = self.commit_position(part);
            let best = self.best_position(part);
            let p = self.parts.get_mut(&part).expect("key exists");
            let pos = match moved {
                Some(pos) if p.committed.is_none_or(|c| pos > c) => {
                    p.committed = Some(pos);
                    p.journal.finished_below(pos);
                    Some(pos)
                }
                _ => None,
            };
            let meta = p.journal.encode();
            if let Some(pos) = pos.or(best.filter(|_| meta != p.written)) {
                p.written.clone_from(&meta);
                out.push((part, pos, meta));
            }
        }
        out.sort_unstable();
        out
    }

    /// A commit of `partition` failed: forget what was handed out, so that the next
    /// [`OffsetTracker::take_commits`] offers the position again even if nothing moved.
    pub fn commit_failed(&mut self, partition: i32) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.committed = None;
            p.written = String::from("(not written)");
        }
    }

    /// Messages received and not finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    /// Assigned partitions.
    pub fn partitions(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.parts.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_first_unfinished_offset() {
        let mut t = OffsetTracker::default();
        t.assign(0);
        let g = (10..15).map(|o| t.received(0, o).unwrap()).last().unwrap();
        assert_eq!(t.take_commits(), vec![]);
        t.finished(0, 11, g);
        t.finished(0, 12, g);
        assert_eq!(t.take_commits(), vec![], "10 is not finished");
        t.finished(0, 10, g);
        assert_eq!(t.take_commits(), vec![(0, 13, String::new())]);
        assert_eq!(t.take_commits(), vec![], "no movement, no commit");
        t.finished(0, 14, g);
        t.finished(0, 13, g);
        assert_eq!(t.take_commits(), vec![(0, 15, String::new())]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn revoked_work_is_ignored() {
        let mut t = OffsetTracker::default();
        t.assign(3);
        let g1 = t.received(3, 100).unwrap();
        t.received(3, 101);
        t.finished(3, 100, g1);
        assert_eq!(t.revoke(3), Some((101, String::new())));
        // Re-assigned: the old generation's completions must not count.
        t.assign(3);
        let g2 = t.received(3, 101).unwrap();
        assert_ne!(g1, g2);
        assert!(!t.finished(3, 101, g1));
        assert_eq!(t.take_commits(), vec![]);
        assert!(t.finished(3, 101, g2));
        assert_eq!(t.take_commits(), vec![(3, 102, String::new())]);
    }

    #[test]
    fn a_failed_commit_is_offered_again() {
        let mut t = OffsetTracker::default();
        t.assign(2);
        let g = t.received(2, 7).unwrap();
        t.finished(2, 7, g);
        assert_eq!(t.take_commits(), vec![(2, 8, String::new())]);
        assert_eq!(t.take_commits(), vec![]);
        t.commit_failed(2);
        assert_eq!(t.take_commits(), vec![(2, 8, String::new())]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.assign(0);
        t.assign(1);
        let a = t.received(0, 0).unwrap();
        let _b = t.received(1, 0).unwrap();
        t.finished(0, 0, a);
        assert_eq!(t.take_commits(), vec![(0, 1, String::new())]);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.partitions(), vec![0, 1]);
    }

    /// A message of a partition that is not assigned gets no generation, is not tracked and
    /// can never move a commit; once the partition is assigned, commits wait for that offset.
    #[test]
    fn a_message_of_an_unassigned_partition_is_not_taken_and_holds_commits_below_it() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.received(5, 40), None, "not assigned: not taken");
        assert_eq!(t.in_flight(), 0);
        assert!(
            !t.finished(5, 40, 1),
            "no generation exists to finish it in"
        );
        assert_eq!(t.take_commits(), vec![]);
        t.assign(5);
        let g = t.generation(5).unwrap();
        // Later offsets arrive and finish first: the commit must not pass 40.
        for o in 41..44 {
            assert_eq!(t.received(5, o), Some(g));
            assert!(t.finished(5, o, g));
        }
        assert_eq!(t.take_commits(), vec![], "40 was never processed");
        assert_eq!(t.received(5, 40), Some(g));
        assert!(t.finished(5, 40, g));
        assert_eq!(t.take_commits(), vec![(5, 44, String::new())]);
    }

    /// The floor of a message seen while unassigned must not freeze commits when the group's
    /// committed position is already past it (it will not be delivered again).
    #[test]
    fn a_floor_below_the_committed_position_does_not_freeze_commits() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.received(4, 40), None);
        t.assign_with(4, Some(50), "");
        let g = t.generation(4).unwrap();
        t.received(4, 50);
        t.finished(4, 50, g);
        assert_eq!(t.take_commits(), vec![(4, 51, String::new())]);
    }

    /// The journal follows the engine: written (at the partition's position, which does not
    /// move) before a call adds records, cleared as calls return, carried by every commit.
    #[test]
    fn the_engine_journal_rides_on_the_commits() {
        let mut t = OffsetTracker::default();
        t.assign_with(0, Some(10), "");
        let g = t.generation(0).unwrap();
        for o in 10..14 {
            t.received(0, o);
        }
        let batch = [(0, 10, g, false), (0, 11, g, false), (0, 12, g, false)];
        assert!(t.journal_running(&[&batch[..], &[(7, 1, 1, false)]].concat()));
        assert_eq!(
            t.take_commits(),
            vec![(0, 10, "ocrfleet/2 run=10-12".to_string())]
        );
        assert!(!t.journal_running(&batch), "no change");
        assert_eq!(t.take_commits(), vec![]);
        t.finished(0, 10, g);
        t.finished(0, 11, g);
        assert_eq!(
            t.take_commits(),
            vec![(0, 12, "ocrfleet/2 run=12".to_string())],
            "a commit during the call keeps what is running"
        );
        assert!(!t.journal_running(&[]), "idle: nothing added");
        assert_eq!(t.take_commits(), vec![(0, 12, String::new())], "cleared");
        assert!(
            !t.journal_running(&[(0, 13, g + 1, false)]),
            "stale generation"
        );
        assert!(t.journal_running(&[(0, 13, g, true)]));
        assert_eq!(
            t.take_commits(),
            vec![(0, 12, "ocrfleet/2 solo=13".to_string())]
        );
    }

    /// A new owner makes suspects of a batch that was running and counts a death for a record
    /// that ran alone; both ride on until the commits pass them.
    #[test]
    fn deaths_are_read_at_assignment_and_kept_until_finished() {
        let mut t = OffsetTracker::default();
        t.assign_with(0, Some(10), "ocrfleet/2 run=10-11 solo=12");
        assert_eq!(t.deaths(0), vec![(12, 1)]);
        assert_eq!(t.care(0, 12, 3), Care::Alone(1));
        assert_eq!(t.care(0, 11, 3), Care::Alone(0));
        assert_eq!(t.care(0, 13, 3), Care::Normal);
        assert_eq!(
            t.take_commits(),
            vec![(0, 10, "ocrfleet/2 sus=10-11 dead=12:1".to_string())],
            "what the last owner left is rewritten at once: it must not count twice"
        );
        let g = t.generation(0).unwrap();
        for o in 10..13 {
            t.received(0, o);
        }
        t.finished(0, 10, g);
        assert_eq!(
            t.take_commits(),
            vec![(0, 11, "ocrfleet/2 sus=11 dead=12:1".to_string())]
        );
        t.finished(0, 11, g);
        assert_eq!(
            t.revoke(0),
            Some((12, "ocrfleet/2 dead=12:1".to_string())),
            "a revoke keeps the deaths"
        );
    }

    /// An orderly revoke whose engine calls returned clears `run=` even when the position
    /// cannot move (a slow download at the head): the next owner counts nothing.
    #[test]
    fn a_revoke_behind_a_slow_head_record_clears_what_ran() {
        let mut t = OffsetTracker::default();
        t.assign_with(0, Some(100), "");
        let g = t.generation(0).unwrap();
        for o in 100..110 {
            t.received(0, o);
        }
        // 100 is still downloading; 101..=104 go through the engine.
        assert!(t.journal_running(&(101..105).map(|o| (0, o, g, false)).collect::<Vec<_>>()));
        assert_eq!(
            t.take_commits(),
            vec![(0, 100, "ocrfleet/2 run=101-104".into())]
        );
        for o in 101..105 {
            t.finished(0, o, g);
        }
        t.journal_running(&[]);
        assert_eq!(
            t.revoke(0),
            Some((100, String::new())),
            "cleared at the old position"
        );
        let next = Journal::after_restart("", Some(100));
        assert_eq!(next.care(101, 3), Care::Normal);
        // With a call still in the engine at the revoke, its records stay (suspects at worst).
        let mut t = OffsetTracker::default();
        t.assign_with(0, Some(100), "");
        let g = t.generation(0).unwrap();
        t.received(0, 100);
        t.received(0, 101);
        t.journal_running(&[(0, 101, g, false)]);
        t.take_commits();
        assert_eq!(t.revoke(0), None, "nothing changed: run=101 stays written");
    }

    /// A partition whose metadata could not be written is offered again.
    #[test]
    fn a_failed_journal_commit_is_offered_again() {
        let mut t = OffsetTracker::default();
        t.assign_with(0, Some(5), "");
        let g = t.generation(0).unwrap();
        t.received(0, 5);
        t.journal_running(&[(0, 5, g, false)]);
        assert_eq!(t.take_commits(), vec![(0, 5, "ocrfleet/2 run=5".into())]);
        t.commit_failed(0);
        assert_eq!(t.take_commits(), vec![(0, 5, "ocrfleet/2 run=5".into())]);
    }
}

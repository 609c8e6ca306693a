//! Which offsets may be committed.
//!
//! For each partition the tracker keeps the offsets received and not yet finished (indexed or
//! dead-lettered). The commit position is the lowest unfinished offset, or one past the highest
//! received when all are finished: every message below it is done. Each assignment of a
//! partition gets a new generation; work from an older generation (a partition that was revoked
//! and maybe re-assigned) is ignored, so it can never move a commit.

use std::collections::{BTreeMap, HashMap};

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
}

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
        self.next_generation += 1;
        let g = self.next_generation;
        let mut p = Partition {
            generation: g,
            ..Default::default()
        };
        if let Some(floor) = self.unassigned.remove(&partition) {
            // A message at `floor` was seen and not taken: hold commits below it until it has
            // been received again and finished.
            p.pending.insert(floor, false);
            p.first_received = Some(floor);
        }
        self.parts.insert(partition, p);
    }

    /// A partition was revoked: forget its in-flight work. Returns the position to commit
    /// first, if any progress was made.
    pub fn revoke(&mut self, partition: i32) -> Option<i64> {
        let pos = self.commit_position(partition);
        self.parts.remove(&partition);
        pos
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

    /// Positions that moved since the last call, to commit now.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        let keys: Vec<i32> = self.parts.keys().copied().collect();
        for part in keys {
            if let Some(pos) = self.commit_position(part) {
                let p = self.parts.get_mut(&part).expect("key exists");
                if p.committed.is_none_or(|c| pos > c) {
                    p.committed = Some(pos);
                    out.push((part, pos));
                }
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
        assert_eq!(t.take_commits(), vec![(0, 13)]);
        assert_eq!(t.take_commits(), vec![], "no movement, no commit");
        t.finished(0, 14, g);
        t.finished(0, 13, g);
        assert_eq!(t.take_commits(), vec![(0, 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn revoked_work_is_ignored() {
        let mut t = OffsetTracker::default();
        t.assign(3);
        let g1 = t.received(3, 100).unwrap();
        t.received(3, 101);
        t.finished(3, 100, g1);
        assert_eq!(t.revoke(3), Some(101));
        // Re-assigned: the old generation's completions must not count.
        t.assign(3);
        let g2 = t.received(3, 101).unwrap();
        assert_ne!(g1, g2);
        assert!(!t.finished(3, 101, g1));
        assert_eq!(t.take_commits(), vec![]);
        assert!(t.finished(3, 101, g2));
        assert_eq!(t.take_commits(), vec![(3, 102)]);
    }

    #[test]
    fn a_failed_commit_is_offered_again() {
        let mut t = OffsetTracker::default();
        t.assign(2);
        let g = t.received(2, 7).unwrap();
        t.finished(2, 7, g);
        assert_eq!(t.take_commits(), vec![(2, 8)]);
        assert_eq!(t.take_commits(), vec![]);
        t.commit_failed(2);
        assert_eq!(t.take_commits(), vec![(2, 8)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.assign(0);
        t.assign(1);
        let a = t.received(0, 0).unwrap();
        let _b = t.received(1, 0).unwrap();
        t.finished(0, 0, a);
        assert_eq!(t.take_commits(), vec![(0, 1)]);
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
        assert_eq!(t.take_commits(), vec![(5, 44)]);
    }
}

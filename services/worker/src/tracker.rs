//! Which offsets of each partition are unfinished, so that the committed offset never passes one.

use std::collections::{BTreeSet, HashMap};

#[derive(Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
}

#[derive(Default)]
struct Partition {
    unfinished: BTreeSet<i64>,
    highest_finished: Option<i64>,
}

impl OffsetTracker {
    pub(crate) fn started(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .unfinished
            .insert(offset);
    }

    /// Marks an offset finished; returns the offset the group may now commit up to (exclusive).
    pub(crate) fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if !p.unfinished.remove(&offset) {
            return None;
        }
        p.highest_finished = Some(p.highest_finished.map_or(offset, |h| h.max(offset)));
        match p.unfinished.first() {
            Some(lowest) => Some(*lowest),
            None => p.highest_finished.map(|h| h + 1),
        }
    }

    pub(crate) fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_point_stops_at_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for offset in [10, 11, 12] {
            t.started(0, offset);
        }
        assert_eq!(t.finished(0, 12), Some(10), "10 and 11 are still running");
        assert_eq!(t.finished(0, 10), Some(11));
        assert_eq!(t.finished(0, 11), Some(13));
        assert_eq!(t.finished(0, 11), None, "finishing twice changes nothing");
        t.forget(0);
        assert_eq!(t.finished(0, 13), None);
    }
}

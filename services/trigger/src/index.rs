//! The in-memory time index of next fire times for the partitions this instance owns.
//! Derived from RocksDB when a partition catches up; never persisted.

use std::collections::{BTreeSet, HashMap};

use kairos_core::Timestamp;

#[derive(Default)]
pub(crate) struct DueIndex {
    by_time: BTreeSet<(Timestamp, i32, String)>,
    by_job: HashMap<String, (Timestamp, i32)>,
}

impl DueIndex {
    pub(crate) fn set(&mut self, partition: i32, job: &str, next: Timestamp) {
        self.remove(job);
        self.by_time.insert((next, partition, job.to_string()));
        self.by_job.insert(job.to_string(), (next, partition));
    }

    pub(crate) fn remove(&mut self, job: &str) {
        if let Some((next, partition)) = self.by_job.remove(job) {
            self.by_time.remove(&(next, partition, job.to_string()));
        }
    }

    pub(crate) fn drop_partition(&mut self, partition: i32) {
        self.by_time.retain(|(_, p, _)| *p != partition);
        self.by_job.retain(|_, (_, p)| *p != partition);
    }

    pub(crate) fn next_due(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(t, _, _)| *t)
    }

    /// Jobs whose next slot is at or before `now`, earliest first.
    pub(crate) fn due(&self, now: Timestamp) -> Vec<(i32, String)> {
        self.by_time
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .map(|(_, p, j)| (*p, j.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_come_due_in_time_order_and_moving_a_job_replaces_its_entry() {
        let t = |s: i64| kairos_core::from_millis(s * 1000).unwrap();
        let mut index = DueIndex::default();
        index.set(0, "b", t(20));
        index.set(1, "a", t(10));
        index.set(0, "b", t(5));
        assert_eq!(
            index.due(t(10)),
            vec![(0, "b".to_string()), (1, "a".to_string())]
        );
        index.drop_partition(0);
        assert_eq!(index.next_due(), Some(t(10)));
        index.remove("a");
        assert_eq!(index.next_due(), None);
    }
}

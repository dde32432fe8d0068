//! When to look at a job again without a new event.
//!
//! A job's reconcile decides all its unfinished runs at once, so one timer per job (the earliest
//! any of its runs asks for) is enough. With one timer per run, a job with many runs behind (a
//! backlog after faults) was reconciled once per run at each wake, every reconcile reading and
//! deciding all of them: in a 10-minute chaos run two dispatchers spent minutes of CPU there
//! (their stacks: `wake_due` → `reconcile_job`), stopped reading their partitions, and held
//! their consumer group's rebalances until the group gave up on them.

use std::collections::{BTreeSet, HashMap};

use kairos_core::Timestamp;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// (due, partition, job), earliest first.
    due: BTreeSet<(Timestamp, i32, String)>,
    /// Each job's one timer.
    of_job: HashMap<(i32, String), Timestamp>,
}

impl Timers {
    /// Has the job looked at again by `due`: a later timer it has already is brought forward,
    /// an earlier one stays.
    pub(crate) fn set(&mut self, due: Timestamp, partition: i32, job: &str) {
        let key = (partition, job.to_string());
        if let Some(&existing) = self.of_job.get(&key) {
            if existing <= due {
                return;
            }
            self.due.remove(&(existing, partition, key.1.clone()));
        }
        self.due.insert((due, partition, job.to_string()));
        self.of_job.insert(key, due);
    }

    /// When the next timer is due.
    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.due.first().map(|(due, _, _)| *due)
    }

    /// Takes the timers due by `now`: each job once.
    pub(crate) fn take_due(&mut self, now: Timestamp) -> Vec<(i32, String)> {
        let mut due = Vec::new();
        while self.due.first().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, partition, job)) = self.due.pop_first() {
                self.of_job.remove(&(partition, job.clone()));
                due.push((partition, job));
            }
        }
        due
    }

    /// Drops the timers of partitions this dispatcher no longer owns.
    pub(crate) fn forget(&mut self, partitions: &[i32]) {
        self.due.retain(|(_, p, _)| !partitions.contains(p));
        self.of_job.retain(|(p, _), _| !partitions.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        kairos_core::from_millis(1_800_000_000_000 + secs * 1000).unwrap()
    }

    /// Given the runs of one job asking to be looked at 10 s, 5 s and 8 s from now, and another
    /// job at 6 s, when the timers come due at 7 s, then each job is reconciled once (the first
    /// at its earliest time) and what is left is the second job's timer.
    #[test]
    fn a_job_has_one_timer_the_earliest_its_runs_ask_for() {
        let mut timers = Timers::default();
        timers.set(at(10), 0, "a");
        timers.set(at(5), 0, "a");
        timers.set(at(8), 0, "a");
        timers.set(at(6), 1, "b");
        assert_eq!(timers.next(), Some(at(5)));
        assert_eq!(timers.take_due(at(5)), vec![(0, "a".to_string())]);
        assert_eq!(timers.next(), Some(at(6)));
        // A reconcile of `a` asks again: its runs' new times.
        timers.set(at(9), 0, "a");
        timers.set(at(12), 0, "a");
        assert_eq!(timers.take_due(at(7)), vec![(1, "b".to_string())]);
        assert_eq!(timers.next(), Some(at(9)));
    }

    /// Given timers on two partitions, when one partition is revoked, then only the other's
    /// timers are left, and a job of the revoked partition can be given a timer again.
    #[test]
    fn a_revoked_partition_keeps_no_timer() {
        let mut timers = Timers::default();
        timers.set(at(5), 0, "a");
        timers.set(at(6), 1, "b");
        timers.forget(&[0]);
        assert_eq!(timers.take_due(at(99)), vec![(1, "b".to_string())]);
        timers.set(at(7), 0, "a");
        assert_eq!(timers.next(), Some(at(7)));
    }
}

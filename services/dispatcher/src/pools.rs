//! Per-pool concurrency: how many attempts of each pool are in flight on the partitions this
//! dispatcher owns, and which runs wait for room, highest priority first, then oldest slot.
//!
//! In memory only: the in-flight set is rebuilt from the runs' states as the dispatcher folds and
//! reconciles them, and waiting runs are found again when their job is next reconciled.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use kairos_core::run::{RunId, RunState, RunStatus};
use kairos_core::Timestamp;

/// A waiting run, in dispatch order: higher priority, then earlier slot.
type Waiting = (Reverse<i32>, Timestamp, i32, String, RunId);

#[derive(Default)]
pub(crate) struct Pools {
    limits: HashMap<String, usize>,
    in_flight: HashMap<String, BTreeSet<(i32, RunId)>>,
    waiting: HashMap<String, BTreeSet<Waiting>>,
}

impl Pools {
    pub(crate) fn new(limits: HashMap<String, usize>) -> Self {
        Pools {
            limits,
            ..Pools::default()
        }
    }

    /// Keeps the in-flight set in step with a run's state.
    pub(crate) fn track(&mut self, partition: i32, run: &RunState) {
        let Some(pool) = &run.pool else { return };
        let set = self.in_flight.entry(pool.clone()).or_default();
        if matches!(run.status, RunStatus::Dispatched | RunStatus::Started) {
            set.insert((partition, run.run_id));
        } else {
            set.remove(&(partition, run.run_id));
        }
    }

    /// Whether a run of `priority` for `slot` may be dispatched to `pool` now: the pool has room,
    /// and no waiting run comes before it.
    pub(crate) fn admits(&self, pool: &str, priority: i32, slot: Timestamp) -> bool {
        let Some(limit) = self.limits.get(pool) else {
            return true;
        };
        let busy = self.in_flight.get(pool).map_or(0, BTreeSet::len);
        let first = self.waiting.get(pool).and_then(BTreeSet::first);
        busy < *limit && first.is_none_or(|(p, s, ..)| (*p, *s) >= (Reverse(priority), slot))
    }

    pub(crate) fn wait(&mut self, pool: &str, priority: i32, partition: i32, run: &RunState) {
        let entry = (
            Reverse(priority),
            run.scheduled_for,
            partition,
            run.job_id.to_string(),
            run.run_id,
        );
        self.waiting
            .entry(pool.to_string())
            .or_default()
            .insert(entry);
    }

    /// The jobs to reconcile because their pool has room for their waiting runs, best first.
    pub(crate) fn ready(&mut self) -> Vec<(i32, String)> {
        let mut out = vec![];
        for (pool, waiting) in &mut self.waiting {
            let busy = self.in_flight.get(pool).map_or(0, BTreeSet::len);
            let room = self
                .limits
                .get(pool)
                .map_or(usize::MAX, |limit| limit.saturating_sub(busy));
            for _ in 0..room.min(waiting.len()) {
                if let Some((_, _, partition, job, _)) = waiting.pop_first() {
                    out.push((partition, job));
                }
            }
        }
        out
    }

    pub(crate) fn forget(&mut self, partitions: &[i32]) {
        self.in_flight
            .values_mut()
            .for_each(|set| set.retain(|(p, _)| !partitions.contains(p)));
        self.waiting
            .values_mut()
            .for_each(|set| set.retain(|(_, _, p, _, _)| !partitions.contains(p)));
    }

    /// (pool, in flight, waiting) for the gauges.
    pub(crate) fn levels(&self) -> Vec<(String, usize, usize)> {
        let pools: BTreeSet<&String> = self.in_flight.keys().chain(self.waiting.keys()).collect();
        pools
            .into_iter()
            .map(|p| {
                (
                    p.clone(),
                    self.in_flight.get(p).map_or(0, BTreeSet::len),
                    self.waiting.get(p).map_or(0, BTreeSet::len),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::run::{apply, RunEvent, RunEventKind, TriggerKind};
    use kairos_core::JobId;

    fn run(job: &str, slot_secs: i64, dispatched: bool) -> RunState {
        let job_id = JobId::parse(job).unwrap();
        let slot = kairos_core::from_millis(slot_secs * 1000).unwrap();
        let run_id = RunId::derive(&job_id, slot, TriggerKind::Schedule);
        let mut kinds = vec![RunEventKind::RunScheduled {
            trigger: TriggerKind::Schedule,
            definition_offset: 0,
        }];
        if dispatched {
            kinds.push(RunEventKind::RunDispatched {
                attempt: 1,
                pool: "batch".into(),
            });
        }
        let mut state = None;
        for kind in kinds {
            let event = RunEvent {
                job_id: job_id.clone(),
                run_id,
                scheduled_for: slot,
                at: slot,
                kind,
                shard: None,
            };
            state = Some(apply(state.as_ref(), &event).unwrap());
        }
        state.unwrap()
    }

    #[test]
    fn a_full_pool_admits_nothing_and_frees_room_for_the_highest_priority_first() {
        let mut pools = Pools::new(HashMap::from([("batch".to_string(), 1)]));
        let busy = run("a", 1, true);
        pools.track(0, &busy);
        let (low, high) = (run("low", 2, false), run("high", 3, false));
        assert!(!pools.admits("batch", 0, low.scheduled_for));
        pools.wait("batch", 0, 1, &low);
        pools.wait("batch", 10, 2, &high);
        assert_eq!(pools.ready(), vec![], "no room yet");
        let mut done = busy.clone();
        done.status = RunStatus::Succeeded;
        pools.track(0, &done);
        assert_eq!(
            pools.ready(),
            vec![(2, "high".to_string())],
            "one slot, the higher priority"
        );
        assert!(pools.admits("batch", 10, high.scheduled_for));
        assert!(
            !pools.admits("batch", 0, low.scheduled_for + chrono::Duration::seconds(1)),
            "a later low run queues behind low"
        );
        assert_eq!(pools.levels(), vec![("batch".to_string(), 0, 1)]);
    }

    #[test]
    fn pools_without_a_limit_admit_everything() {
        let pools = Pools::new(HashMap::new());
        assert!(pools.admits("default", 0, kairos_core::from_millis(0).unwrap()));
    }
}

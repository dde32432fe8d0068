//! Which worker runs each started attempt, on the partitions this dispatcher owns, so that a dead
//! worker's attempts can be found without scanning every run.
//!
//! In memory only, like the pool levels: it follows the runs' states as the dispatcher folds and
//! reconciles them, and a partition's reconcile on catch-up fills it again after a restart.

use std::collections::{BTreeSet, HashMap};

use kairos_core::run::{RunId, RunState};
use kairos_core::Timestamp;
use kairos_runtime::workers::{Liveness, Registry};

#[derive(Default)]
pub(crate) struct Attempts {
    by_worker: HashMap<String, BTreeSet<(i32, String, RunId)>>,
    workers_of: HashMap<RunId, (i32, Vec<String>)>,
}

impl Attempts {
    /// Keeps the index in step with a run's state: a started attempt is on its workers (one per
    /// running shard of a sharded run), any other state on none.
    pub(crate) fn track(&mut self, partition: i32, run: &RunState) {
        let job = run.job_id.to_string();
        if let Some((partition, workers)) = self.workers_of.remove(&run.run_id) {
            for worker in workers {
                self.remove(&worker, &(partition, job.clone(), run.run_id));
            }
        }
        let workers: Vec<String> = run.workers().into_iter().map(str::to_string).collect();
        if workers.is_empty() {
            return;
        }
        for worker in &workers {
            self.by_worker.entry(worker.clone()).or_default().insert((
                partition,
                job.clone(),
                run.run_id,
            ));
        }
        self.workers_of.insert(run.run_id, (partition, workers));
    }

    fn remove(&mut self, worker: &str, entry: &(i32, String, RunId)) {
        if let Some(set) = self.by_worker.get_mut(worker) {
            set.remove(entry);
            if set.is_empty() {
                self.by_worker.remove(worker);
            }
        }
    }

    pub(crate) fn forget(&mut self, partitions: &[i32]) {
        for set in self.by_worker.values_mut() {
            set.retain(|(p, _, _)| !partitions.contains(p));
        }
        self.by_worker.retain(|_, set| !set.is_empty());
        self.workers_of.retain(|_, (p, _)| !partitions.contains(p));
    }

    /// The jobs (by partition) with an attempt on a worker the registry says is lost.
    pub(crate) fn on_lost_workers(
        &self,
        workers: &Registry,
        now: Timestamp,
    ) -> BTreeSet<(i32, String)> {
        self.by_worker
            .iter()
            .filter(|(worker, _)| workers.liveness(worker, now) == Some(Liveness::Lost))
            .flat_map(|(_, set)| set.iter().map(|(p, job, _)| (*p, job.clone())))
            .collect()
    }
}

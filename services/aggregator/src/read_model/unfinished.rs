//! Runs that are not over, indexed by partition: what the pending-run check and the fire audit's
//! stuck-run check read, without scanning every run.
//!
//! A run handed to a pool and not started yet is pending. One whose pool has no live worker for
//! its task type stays visible in the API, and raises a `run_pending` alert once it has waited
//! longer than `--pending-alert-after`.
//!
//! The index (`unfinished/<partition>/<run>`, the run's state without its output) follows the
//! ledger, so a rebuild reproduces it; whether a pool is served is judged against the live worker
//! registry when asked.

use kairos_core::run::{RunId, RunState, RunStatus};
use kairos_core::Timestamp;
use kairos_runtime::workers::Registry;
use kairos_runtime::{Batch, Store};
use serde::{Deserialize, Serialize};

use super::{job, JobRecord};

/// A dispatched run no worker has started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct PendingRun {
    pub job_id: String,
    pub run_id: RunId,
    pub pool: String,
    pub dispatched_at: Timestamp,
}

impl PendingRun {
    /// The run's pending form, if it is pending.
    pub(crate) fn of(state: &RunState) -> Option<Self> {
        match (state.status, &state.pool, state.dispatched_at) {
            (RunStatus::Dispatched, Some(pool), Some(dispatched_at)) => Some(PendingRun {
                job_id: state.job_id.to_string(),
                run_id: state.run_id,
                pool: pool.clone(),
                dispatched_at,
            }),
            _ => None,
        }
    }
}

const PREFIX: &str = "unfinished/";
/// The index of an earlier release, which held dispatched runs only.
const RETIRED_PREFIX: &str = "pending/";

fn partition_prefix(partition: i32) -> String {
    format!("{PREFIX}{partition:05}/")
}

fn unfinished_key(partition: i32, run: RunId) -> String {
    format!("{}{run}", partition_prefix(partition))
}

/// Keeps the index in step with a run's new state, in the batch that stores the state.
pub(crate) fn track(batch: &mut Batch, partition: i32, state: &RunState) {
    let key = unfinished_key(partition, state.run_id);
    if state.status.is_final() {
        batch.delete(&key);
    } else {
        batch.put(
            &key,
            &RunState {
                output: None,
                ..state.clone()
            },
        );
    }
}

/// The unfinished runs of a partition.
pub(crate) fn of_partition(store: &Store, partition: i32) -> anyhow::Result<Vec<RunState>> {
    Ok(store
        .scan::<RunState>(&partition_prefix(partition))?
        .into_iter()
        .map(|(_, run)| run)
        .collect())
}

/// Every pending run.
pub(crate) fn pending(store: &Store) -> anyhow::Result<Vec<PendingRun>> {
    Ok(store
        .scan::<RunState>(PREFIX)?
        .iter()
        .filter_map(|(_, run)| PendingRun::of(run))
        .collect())
}

/// Drops the index an earlier release kept. Runs it listed are indexed again by their next event.
pub(crate) fn retire_old_index(store: &Store) -> anyhow::Result<()> {
    let retired = store.keys(RETIRED_PREFIX)?;
    if retired.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new();
    for key in &retired {
        batch.delete(key);
    }
    store.write(batch)?;
    tracing::info!(
        entries = retired.len(),
        "Dropped the pending-run index of an earlier release."
    );
    Ok(())
}

/// Why nobody will take the run now, or `None` when a live worker serves its pool and task type
/// (it is merely queued there).
pub(crate) fn unserved(
    store: &Store,
    workers: &Registry,
    run: &PendingRun,
    now: Timestamp,
) -> anyhow::Result<Option<String>> {
    let job: Option<JobRecord> = job(store, &run.job_id)?;
    // A deleted job's run still needs a worker of its pool, of whatever task type.
    let task_type = job.as_ref().map(|j| j.definition.task.kind());
    Ok(
        (!workers.serves(&run.pool, task_type, now)).then(|| match task_type {
            Some(kind) => format!(
                "no live worker serves pool {:?} with {kind} tasks",
                run.pool
            ),
            None => format!("no live worker serves pool {:?}", run.pool),
        }),
    )
}

//! Runs handed to a pool and not started yet. A run whose pool has no live worker for its task
//! type stays here, visible in the API, and raises a `run_pending` alert once it has waited longer
//! than `--pending-alert-after`.
//!
//! The index (`pending/<run>`) follows the ledger, so a rebuild reproduces it; whether a pool is
//! served is judged against the live worker registry when asked.

use kairos_core::run::{RunId, RunState, RunStatus};
use kairos_core::Timestamp;
use kairos_runtime::workers::Registry;
use kairos_runtime::{Batch, Store};
use serde::{Deserialize, Serialize};

use crate::{job_key, JobRecord};

/// A dispatched run no worker has started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct PendingRun {
    pub job_id: String,
    pub run_id: RunId,
    pub pool: String,
    pub dispatched_at: Timestamp,
}

pub(crate) const PREFIX: &str = "pending/";

fn pending_key(run: RunId) -> String {
    format!("{PREFIX}{run}")
}

/// Keeps the index in step with a run's new state, in the batch that stores the state.
pub(crate) fn track(batch: &mut Batch, state: &RunState) {
    match (state.status, &state.pool, state.dispatched_at) {
        (RunStatus::Dispatched, Some(pool), Some(dispatched_at)) => batch.put(
            &pending_key(state.run_id),
            &PendingRun {
                job_id: state.job_id.to_string(),
                run_id: state.run_id,
                pool: pool.clone(),
                dispatched_at,
            },
        ),
        _ => batch.delete(&pending_key(state.run_id)),
    }
}

pub(crate) fn all(store: &Store) -> anyhow::Result<Vec<PendingRun>> {
    Ok(store
        .scan::<PendingRun>(PREFIX)?
        .into_iter()
        .map(|(_, run)| run)
        .collect())
}

pub(crate) fn get(store: &Store, run: RunId) -> anyhow::Result<Option<PendingRun>> {
    Ok(store.get(&pending_key(run))?)
}

/// Why nobody will take the run now, or `None` when a live worker serves its pool and task type
/// (it is merely queued there).
pub(crate) fn unserved(
    store: &Store,
    workers: &Registry,
    run: &PendingRun,
    now: Timestamp,
) -> anyhow::Result<Option<String>> {
    let job: Option<JobRecord> = store.get(&job_key(&run.job_id))?;
    // A deleted job's run still needs a worker of its pool, of whatever task type.
    let task_type = job.as_ref().map(|j| j.spec.task.kind());
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

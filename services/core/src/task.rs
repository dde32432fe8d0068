//! What the dispatcher hands to a worker pool: tasks, and requests to cancel them.

use std::time::Duration;

use crate::job::{JobId, TaskSpec};
use crate::run::RunId;
use crate::signing::Signature;
use crate::Timestamp;

/// One attempt of one run, as a worker receives it on its pool's task topic.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskAssigned {
    pub job_id: JobId,
    pub run_id: RunId,
    pub attempt: u32,
    pub scheduled_for: Timestamp,
    pub pool: String,
    pub task: TaskSpec,
    /// The worker kills the task after this long.
    pub timeout: Option<Duration>,
    pub definition_offset: i64,
    pub assigned_at: Timestamp,
    /// When the worker starts the attempt by its own clock (the slot plus the job's jitter): a
    /// task dispatched ahead of its slot is held until then. `None`, or a time already past,
    /// starts it at once.
    pub start_at: Option<Timestamp>,
    /// For a sharded job: the one shard this task runs.
    pub shard: Option<ShardAssignment>,
    /// The job's runs may run side by side (`overlap: allow`): the worker does not make this run
    /// wait for the job's earlier runs. Under the other policies runs take turns on the worker
    /// too, so that a replaced run's process is gone before its successor starts.
    pub concurrent_runs: bool,
    /// The job definition's signature of the task, which the worker verifies before it runs it.
    pub signature: Option<Signature>,
}

/// One shard of a sharded run, as its task carries it to the worker.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardAssignment {
    pub index: u32,
    pub total: u32,
    /// The job's `shard_params[index]`, if it gives them.
    pub param: Option<String>,
}

impl TaskAssigned {
    /// The record key on the task topic: the job id, and for a shard the job id and its index,
    /// so that a run's shards spread over the pool's partitions (and workers) while the tasks of
    /// one shard stay in order.
    pub fn key(&self) -> String {
        match &self.shard {
            Some(shard) => format!("{}#{}", self.job_id, shard.index),
            None => self.job_id.to_string(),
        }
    }

    /// Which shard a worker's events about this task name.
    pub fn shard_of(&self) -> Option<crate::run::ShardOf> {
        self.shard.as_ref().map(|s| crate::run::ShardOf {
            index: s.index,
            total: s.total,
        })
    }
}

/// A request to cancel a run: a queued run is removed, a running attempt is stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct CancelRequest {
    pub job_id: JobId,
    pub run_id: RunId,
    pub reason: Option<String>,
    /// `Some(n)`: a fence, not a cancel. The dispatcher has recorded an outcome for attempt `n`
    /// on a worker's behalf (lost, or silent past its deadline), so attempts up to `n` must not
    /// run anywhere; the run itself goes on. `None`: the whole run is cancelled.
    pub attempt: Option<u32>,
    pub at: Timestamp,
}

impl CancelRequest {
    /// The highest attempt of the run this request stops (every attempt for a cancel).
    pub fn stops_up_to(&self) -> u32 {
        self.attempt.unwrap_or(u32::MAX)
    }
}

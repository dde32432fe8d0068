//! What the API serves besides runs' histories, as the aggregator answers and `kairosctl` reads
//! it: jobs, runs waiting for a worker, the worker registry, and recent alerts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::history::RunView;
use crate::job::JobSpec;
use crate::run::RunId;
use crate::Timestamp;

/// A job with its latest run, its outcome statistics and its next fire times
/// (`GET /api/v1/jobs/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// The schedules in words, with their cron dialect and zone.
    pub schedule_description: String,
    /// The current definition, as a job file; a credential a producer wrote in clear is masked.
    pub definition: JobSpec,
    /// Offset of the current definition on the jobs topic.
    pub definition_offset: i64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
    /// Who wrote the current definition: `api:<token name>` or `cli:<user>@<host>`.
    pub author: Option<String>,
    /// The job's latest changes, oldest first.
    pub changes: Vec<JobChange>,
    pub last_run: Option<RunView>,
    pub stats: JobStats,
    /// None while paused or once `max_runs` is reached; days a calendar excludes are left out.
    #[schema(value_type = Vec<String>, format = DateTime)]
    pub next_fire_times: Vec<Timestamp>,
}

/// `GET /api/v1/jobs`: every job, by id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobsList {
    pub jobs: Vec<JobView>,
}

/// One change of a job's definition, as the jobs topic records it. The aggregator keeps these as
/// it serves them: a read model, not the job's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobChange {
    /// `created`, `updated`, `paused` or `resumed`.
    pub change: String,
    pub offset: i64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<Timestamp>,
    pub author: Option<String>,
}

/// What the aggregator keeps about a job's outcomes, as it serves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStats {
    /// Runs the schedule fired (not manual or backfill runs, not skipped slots): what
    /// `max_runs` counts.
    #[serde(default)]
    pub scheduled: u32,
    pub succeeded: u64,
    pub abandoned: u64,
    /// Runs abandoned since the last success.
    pub failures_in_a_row: u32,
    pub last_outcome: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_finished_at: Option<Timestamp>,
}

/// Slots checked for a decision on the ledger (`RunScheduled` or `RunSkipped`) within the grace
/// period after their fire time, and runs whose next step was overdue; the latest 20 findings of
/// each kind (`GET /api/v1/jobs/{id}/audit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = JobAudit)]
pub struct JobAuditView {
    pub job_id: String,
    /// A paused job owes no decision for the slots that pass while it is paused.
    pub paused: bool,
    pub grace_seconds: f64,
    /// The last slot checked; null until the first check.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub checked_through: Option<Timestamp>,
    pub missed_slots: Vec<MissedSlot>,
    pub stuck_runs: Vec<StuckRun>,
}

/// A due slot with no decision on the ledger by `due_by`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MissedSlot {
    #[schema(value_type = String, format = DateTime)]
    pub slot: Timestamp,
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    #[schema(value_type = String, format = DateTime)]
    pub due_by: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub found_at: Timestamp,
}

/// A run whose next step was due by `due_by` and was not recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StuckRun {
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    pub status: String,
    pub attempt: u32,
    #[schema(value_type = String, format = DateTime)]
    pub due_by: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub found_at: Timestamp,
}

/// `GET /api/v1/jobs/{id}/next-fire-times`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NextFireTimes {
    pub job_id: String,
    pub paused: bool,
    /// The schedules in words, with their cron dialect and zone.
    pub schedule_description: String,
    /// None while paused or once `max_runs` is reached; days a calendar excludes are left out.
    #[schema(value_type = Vec<String>, format = DateTime)]
    pub next_fire_times: Vec<Timestamp>,
}

/// A dispatched run no worker has started yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingRunView {
    pub job_id: String,
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    pub pool: String,
    #[schema(value_type = String, format = DateTime)]
    pub dispatched_at: Timestamp,
    /// How long it has waited since its dispatch.
    pub waiting_ms: i64,
    /// Why no live worker will take it; null when one serves its pool and it is queued there.
    pub unserved: Option<String>,
}

/// `GET /api/v1/runs/pending`: oldest dispatch first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingRuns {
    pub runs: Vec<PendingRunView>,
}

/// A worker as its latest heartbeat shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    pub worker_id: String,
    pub pool: String,
    /// `live`, `lost` (missed three beats) or `stopped` (said goodbye).
    pub status: String,
    pub capacity: u32,
    pub task_types: Vec<String>,
    /// The runs it holds or executes.
    pub in_flight: Vec<String>,
    pub heartbeat_interval_ms: u64,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: Timestamp,
}

/// `GET /api/v1/workers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkersList {
    pub workers: Vec<WorkerView>,
}

/// An alert, as the API and the webhook show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    /// Derived from what the alert is about, so a repeated alert can be recognised.
    #[schema(value_type = String, format = "uuid")]
    pub alert_id: uuid::Uuid,
    /// e.g. `run_abandoned`, `job_failing`, `worker_lost`, `slot_missed`.
    pub kind: String,
    pub job_id: Option<String>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub run_id: Option<RunId>,
    pub worker_id: Option<String>,
    pub pool: Option<String>,
    pub message: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// `GET /api/v1/alerts`: the latest alerts this aggregator raised since it started, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertsList {
    pub alerts: Vec<AlertView>,
}

//! What the API serves besides runs and jobs, as the aggregator answers and `kairosctl` reads it:
//! runs waiting for a worker, the worker registry, and recent alerts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::run::RunId;
use crate::Timestamp;

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

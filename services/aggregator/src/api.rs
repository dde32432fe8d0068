//! The REST query API: jobs, a job's runs, one run with its history. JSON in, JSON out, errors as
//! `{"error": {"code", "message"}}` with a matching status.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kairos_runtime::telemetry::Health;
use kairos_runtime::Store;
use serde::Deserialize;
use serde_json::json;

use crate::pending::{self, PendingRun};
use crate::workers::Workers;
use crate::{job_key, run_key, runs_of_job, JobRecord, RunRecord};

/// Most runs one request returns.
const MAX_LIMIT: usize = 1000;

#[derive(Clone)]
struct ApiState {
    store: Store,
    health: Arc<Health>,
    workers: Workers,
}

pub(crate) fn router(store: Store, health: Arc<Health>, workers: Workers) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/runs", get(job_runs))
        .route("/api/v1/runs/pending", get(pending_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/workers", get(list_workers))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(ApiState {
            store,
            health,
            workers,
        })
}

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        tracing::error!(%error, "API request failed.");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    }
}

impl From<kairos_runtime::store::StoreError> for ApiError {
    fn from(error: kairos_runtime::store::StoreError) -> Self {
        ApiError::from(anyhow::Error::from(error))
    }
}

async fn healthz(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "caught_up": state.health.caught_up()}))
}

async fn list_jobs(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let jobs: Vec<(String, JobRecord)> = state.store.scan("job/")?;
    let jobs: Vec<_> = jobs
        .into_iter()
        .map(|(_, job)| job_json(&state.store, job))
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn get_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job: JobRecord = state.store.get(&job_key(&id))?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {id:?}"),
        )
    })?;
    Ok(Json(job_json(&state.store, job)?))
}

/// A job with its latest run and its next fire times.
fn job_json(store: &Store, job: JobRecord) -> Result<serde_json::Value, ApiError> {
    let last_run = runs_of_job(store, &job.spec.id, 1)?.into_iter().next();
    let next_fires = job
        .spec
        .validate()
        .map(|d| d.upcoming(chrono::Utc::now(), 5))
        .unwrap_or_default();
    Ok(json!({
        "id": job.spec.id,
        "definition": job.spec,
        "definition_offset": job.offset,
        "updated_at": job.updated_at,
        "last_run": last_run,
        "next_fire_times": next_fires,
    }))
}

#[derive(Deserialize)]
struct RunsQuery {
    limit: Option<String>,
}

async fn job_runs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit must be 1-{MAX_LIMIT}, got {raw:?}"),
                )
            })?,
    };
    let runs = runs_of_job(&state.store, &id, limit)?;
    let known = !runs.is_empty() || state.store.get::<JobRecord>(&job_key(&id))?.is_some();
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {id:?} and no runs of it"),
        ));
    }
    Ok(Json(json!({ "job_id": id, "runs": runs })))
}

/// A run with its history; a dispatched run that no live worker will take says why.
async fn get_run(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(id) = kairos_core::RunId::parse(&run_id) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_run_id",
            format!("{run_id:?} is not a run id (a UUID)"),
        ));
    };
    let record: RunRecord = state.store.get(&run_key(&run_id))?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("no run {run_id}"),
        )
    })?;
    let mut body = serde_json::to_value(record).map_err(anyhow::Error::from)?;
    if let Some(waiting) = pending::get(&state.store, id)? {
        body["waiting_for_worker"] = json!(pending_json(&state, &waiting)?["unserved"]);
    }
    Ok(Json(body))
}

/// Dispatched runs no worker has started yet, oldest first, each saying whether a live worker
/// serves its pool.
async fn pending_runs(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut waiting = pending::all(&state.store)?;
    waiting.sort_by_key(|p| p.dispatched_at);
    let runs: Vec<_> = waiting
        .iter()
        .map(|p| pending_json(&state, p))
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({ "runs": runs })))
}

fn pending_json(state: &ApiState, run: &PendingRun) -> Result<serde_json::Value, ApiError> {
    let now = kairos_runtime::now();
    let unserved = pending::unserved(&state.store, &state.workers.registry(), run, now)?;
    Ok(json!({
        "job_id": run.job_id,
        "run_id": run.run_id,
        "pool": run.pool,
        "dispatched_at": run.dispatched_at,
        "waiting_ms": (now - run.dispatched_at).num_milliseconds().max(0),
        "unserved": unserved,
    }))
}

async fn list_workers(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "workers": state.workers.view(chrono::Utc::now()) }))
}

//! The REST API: jobs (read and write), runs with filters and pages, one run with its history,
//! workers, alerts, and the OpenAPI document. JSON in, JSON out; every error is
//! `{"error": {"code", "message"}}` with a matching status.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use kairos_core::history::{RunDetail, RunView, RunsPage};
use kairos_core::job::JobSpec;
use kairos_core::run::{RunStatus, TriggerKind};
use kairos_core::secrets::masked;
use kairos_core::views::{
    AlertsList, JobAuditView, JobView, JobsList, NextFireTimes, PendingRunView, PendingRuns,
    WorkersList,
};
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::jobs;
use kairos_runtime::Store;
use serde::Deserialize;

use super::doc::{Unchanged, Written};
use super::{authorize, healthz, openapi, scanning, ApiError, ApiQuery, ApiState, Signing};
use crate::access::{Caller, Role};
use crate::audit::JobAudit;
use crate::read_model::unfinished::{self, PendingRun};
use crate::read_model::{self as model, JobRecord, RunIndex};

/// Most runs one request returns.
const MAX_LIMIT: usize = 1000;
/// Runs a page returns unless asked otherwise.
const DEFAULT_LIMIT: usize = 50;
/// Index entries one request reads at most while filtering; a page cut short by it still carries
/// a cursor, so a sparse filter is paged through rather than scanned in one request.
const MAX_SCANNED: usize = 20_000;
/// Most next fire times one request computes.
const MAX_FIRE_TIMES: usize = 100;

pub(crate) fn router(state: ApiState) -> Router {
    let needs = |role: Role| middleware::from_fn_with_state((state.clone(), role), authorize);
    let reads = Router::new()
        .route("/", get(super::status_page::page))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/runs", get(job_runs))
        .route("/api/v1/jobs/{id}/next-fire-times", get(next_fire_times))
        .route("/api/v1/jobs/{id}/audit", get(job_audit))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/pending", get(pending_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/workers", get(list_workers))
        .route("/api/v1/alerts", get(list_alerts))
        .route_layer(needs(Role::Read));
    let operations = Router::new()
        .route("/api/v1/jobs/{id}/pause", post(pause_job))
        .route("/api/v1/jobs/{id}/resume", post(resume_job))
        .route("/api/v1/jobs/{id}/trigger", post(trigger_job))
        .route_layer(needs(Role::Operate));
    let definitions = Router::new()
        .route("/api/v1/jobs", post(create_job))
        .route(
            "/api/v1/jobs/{id}",
            axum::routing::put(put_job).delete(delete_job),
        )
        .route_layer(needs(Role::Admin));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(reads)
        .merge(operations)
        .merge(definitions)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here"),
            )
        })
        .with_state(state)
}

// Jobs: reads.

#[utoipa::path(get, path = "/api/v1/jobs", summary = "Every job with its last run and statistics", responses((status = 200, description = "Every job, as `GET /api/v1/jobs/{id}` gives it", body = JobsList)))]
async fn list_jobs(State(state): State<ApiState>) -> Result<Json<JobsList>, ApiError> {
    let jobs = scanning(&state, |state| {
        model::jobs(&state.store)?
            .into_iter()
            .map(|(_, job)| job_view(&state.store, job))
            .collect::<Result<_, _>>()
    })
    .await?;
    Ok(Json(JobsList { jobs }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", summary = "One job", params(("id" = String, Path, description = "Job id")), responses((status = 200, description = "The job with its latest changes, last run, statistics and next fire times", body = JobView)))]
async fn get_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(job_view(&state.store, known_job(&state.store, &id)?)?))
}

fn known_job(store: &Store, id: &str) -> Result<JobRecord, ApiError> {
    model::job(store, id)?.ok_or_else(|| ApiError::job_not_found(id))
}

/// A job with its latest run, its outcome statistics and its next fire times.
pub(crate) fn job_view(store: &Store, job: JobRecord) -> Result<JobView, ApiError> {
    let id = job.definition.id.as_str();
    let last_run = model::runs_of_job(store, id, 1)?.into_iter().next();
    let stats = model::job_stats(store, id)?;
    let changes = model::job_changes(store, id)?;
    let next_fire_times = upcoming(&job.definition, 5, stats.scheduled);
    let spec = job.definition.to_spec();
    Ok(JobView {
        id: spec.id.clone(),
        schedule_description: job.definition.describe_schedule(),
        // A credential a producer wrote in clear is not served back.
        definition: JobSpec {
            task: masked(&spec.task),
            ..spec
        },
        definition_offset: job.offset,
        updated_at: job.updated_at,
        author: job.author,
        changes,
        last_run: last_run.map(RunView::from),
        stats,
        next_fire_times,
    })
}

/// The next fire times of a job that has fired `fired` runs; none while it is paused, and none
/// once `max_runs` is reached.
fn upcoming(job: &JobDefinition, count: usize, fired: u32) -> Vec<Timestamp> {
    if job.paused {
        return vec![];
    }
    job.upcoming(chrono::Utc::now(), count, fired)
}

#[derive(Deserialize)]
struct CountQuery {
    count: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/next-fire-times", summary = "The job's next fire times", params(("id" = String, Path, description = "Job id"), ("count" = Option<u32>, Query, minimum = 1, maximum = 100, description = "How many, 1-100 (default 5)")), responses((status = 200, description = "The job's next fire times", body = NextFireTimes)))]
async fn next_fire_times(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<CountQuery>,
) -> Result<Json<NextFireTimes>, ApiError> {
    let count = bounded("count", query.count.as_deref(), 5, MAX_FIRE_TIMES)?;
    let definition = known_job(&state.store, &id)?.definition;
    let stats = model::job_stats(&state.store, &id)?;
    Ok(Json(NextFireTimes {
        job_id: id,
        paused: definition.paused,
        schedule_description: definition.describe_schedule(),
        next_fire_times: upcoming(&definition, count, stats.scheduled),
    }))
}

/// What the fire audit has checked of the job and what it found: slots with no decision on the
/// ledger within the grace period, and runs whose next step was overdue.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/audit", summary = "What the fire audit found for the job", params(("id" = String, Path, description = "Job id")), responses((status = 200, description = "The audit of the job", body = JobAuditView)))]
async fn job_audit(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<JobAuditView>, ApiError> {
    let job = known_job(&state.store, &id)?;
    let audit = JobAudit::of(&state.store, &id)?;
    Ok(Json(JobAuditView {
        job_id: id,
        paused: job.definition.paused,
        grace_seconds: state.audit_grace.as_secs_f64(),
        checked_through: audit.checked_through,
        missed_slots: audit.missed,
        stuck_runs: audit.stuck,
    }))
}

/// A number from a query parameter, `default` when absent, refused outside `1..=max`.
fn bounded(name: &str, raw: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    format!("{name} must be 1-{max}, got {raw:?}"),
                )
            }),
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs: writes.

/// A job definition from a request body, validated as `kairosctl job apply` validates it.
fn job_from_body(body: Result<Bytes, BytesRejection>) -> Result<JobDefinition, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(rejection.status(), "invalid_body", rejection.body_text())
    })?;
    let spec: JobSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("not a job definition: {e}")))?;
    spec.validate().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            e.to_string(),
        )
    })
}

async fn write_job(
    state: &ApiState,
    caller: &Caller,
    job: &JobDefinition,
    signing: Signing,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let written = state.writer.put_job(job, signing, caller).await?;
    if let Some(topic) = &written.created_pool_topic {
        tracing::info!(job_id = %job.id, topic, "Created the task topic of a new pool.");
    }
    let written = Written {
        created_pool_topic: written.created_pool_topic,
        ..Written::of(job.id.to_string(), &written.delivered)
    };
    Ok((status, Json(written)).into_response())
}

/// Creates a job; refused if the job exists (use `PUT` to replace one).
#[utoipa::path(post, path = "/api/v1/jobs", summary = "Create a job (409 if it exists)", request_body = JobSpec, responses((status = 202, description = "Written to Kafka; the read models follow once it is consumed", body = Written)))]
async fn create_job(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let job = job_from_body(body)?;
    if model::job(&state.store, job.id.as_str())?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_exists",
            format!(
                "job {:?} exists; PUT /api/v1/jobs/{} replaces it",
                job.id.as_str(),
                job.id.as_str()
            ),
        ));
    }
    write_job(&state, &caller, &job, Signing::Anew, StatusCode::ACCEPTED).await
}

/// Creates or replaces a job.
#[utoipa::path(put, path = "/api/v1/jobs/{id}", summary = "Create or replace a job", params(("id" = String, Path, description = "Job id")), request_body = JobSpec, responses((status = 202, description = "Written to Kafka; the read models follow once it is consumed", body = Written)))]
async fn put_job(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let job = job_from_body(body)?;
    if job.id.as_str() != id {
        return Err(ApiError::bad_request(
            "id_mismatch",
            format!("the path names job {id:?}, the body {:?}", job.id.as_str()),
        ));
    }
    write_job(&state, &caller, &job, Signing::Anew, StatusCode::ACCEPTED).await
}

#[utoipa::path(delete, path = "/api/v1/jobs/{id}", summary = "Delete a job (a tombstone on the jobs topic)", params(("id" = String, Path, description = "Job id")), responses((status = 202, description = "Written to Kafka; the read models follow once it is consumed", body = Written)))]
async fn delete_job(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = known_job(&state.store, &id)?.definition.id;
    let delivered = state.writer.delete_job(&id, &caller).await?;
    let written = Written::of(id.to_string(), &delivered);
    Ok((StatusCode::ACCEPTED, Json(written)).into_response())
}

async fn set_paused(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    paused: bool,
) -> Result<Response, ApiError> {
    let mut job = known_job(&state.store, id)?.definition;
    if job.paused == paused {
        let unchanged = Unchanged {
            job_id: id.to_string(),
            paused,
            changed: false,
        };
        return Ok(Json(unchanged).into_response());
    }
    job.paused = paused;
    // Every service validates what it reads from the jobs topic: a definition accepted under
    // earlier rules is refused here, where the caller hears why, not dead-lettered there.
    let job = job
        .to_spec()
        .validate()
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "invalid_job", e.to_string()))?;
    write_job(state, caller, &job, Signing::Keep, StatusCode::ACCEPTED).await
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/pause", summary = "Pause a job: no slot fires until it is resumed", params(("id" = String, Path, description = "Job id")), responses((status = 202, description = "Written to Kafka; the read models follow once it is consumed", body = Written), (status = 200, description = "Already paused: nothing written", body = Unchanged)))]
async fn pause_job(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&state, &caller, &id, true).await
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/resume", summary = "Resume a job under its misfire policy", params(("id" = String, Path, description = "Job id")), responses((status = 202, description = "Written to Kafka; the read models follow once it is consumed", body = Written), (status = 200, description = "Not paused: nothing written", body = Unchanged)))]
async fn resume_job(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&state, &caller, &id, false).await
}

/// Runs the job now, as well as on schedule; its overlap policy applies.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/trigger", summary = "Run the job now, as well as on schedule", params(("id" = String, Path, description = "Job id")), responses((status = 202, description = "Written to Kafka; the read models follow once it is consumed", body = Written)))]
async fn trigger_job(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = known_job(&state.store, &id)?;
    let event = jobs::requested_run(
        &job.definition,
        job.offset,
        chrono::Utc::now(),
        TriggerKind::Manual,
    );
    let delivered = state.writer.schedule_run(&event, &caller).await?;
    let written = Written {
        run_id: Some(event.run_id),
        scheduled_for: Some(event.scheduled_for),
        ..Written::of(id, &delivered)
    };
    Ok((StatusCode::ACCEPTED, Json(written)).into_response())
}

// ---------------------------------------------------------------------------------------------
// Runs.

/// A runs query as given: each parameter is checked by [`RunFilter::parse`], which answers a bad
/// one with its own coded error.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RunsQuery {
    /// Comma-separated run statuses: scheduled, skipped, dispatched, started, succeeded, failed,
    /// timed_out, cancelled, lost, retry_scheduled, abandoned
    status: Option<String>,
    /// Earliest slot (RFC 3339), inclusive
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// Latest slot (RFC 3339), inclusive
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// Runs per page, 1-1000 (default 50)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// next_cursor of the previous page
    cursor: Option<String>,
}

/// A validated runs query.
struct RunFilter {
    statuses: Option<HashSet<RunStatus>>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    limit: usize,
    /// The `<slot millis>/<run>` of the last run of the previous page.
    cursor: Option<String>,
}

impl RunFilter {
    fn parse(query: RunsQuery) -> Result<Self, ApiError> {
        let time = |name: &str, raw: Option<String>| {
            raw.map(|raw| {
                chrono::DateTime::parse_from_rfc3339(&raw)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| {
                        ApiError::bad_request(
                            "invalid_parameter",
                            format!("{name} must be an RFC 3339 time, got {raw:?}: {e}"),
                        )
                    })
            })
            .transpose()
        };
        let statuses = query
            .status
            .map(|raw| {
                raw.split(',')
                    .map(|name| {
                        RunStatus::parse(name.trim()).ok_or_else(|| {
                            let known: Vec<_> = RunStatus::ALL.map(RunStatus::as_str).into();
                            ApiError::bad_request(
                                "invalid_parameter",
                                format!("unknown status {name:?}; one of {}", known.join(", ")),
                            )
                        })
                    })
                    .collect::<Result<HashSet<_>, _>>()
            })
            .transpose()?;
        let cursor = query.cursor.filter(|c| !c.is_empty());
        if let Some(cursor) = &cursor {
            let valid = cursor.split_once('/').is_some_and(|(millis, run)| {
                millis.len() == 15
                    && millis.bytes().all(|b| b.is_ascii_digit())
                    && kairos_core::RunId::parse(run).is_some()
            });
            if !valid {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("{cursor:?} is not a cursor this API returned"),
                ));
            }
        }
        let filter = RunFilter {
            statuses,
            from: time("from", query.from)?,
            to: time("to", query.to)?,
            limit: bounded("limit", query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?,
            cursor,
        };
        if let (Some(from), Some(to)) = (filter.from, filter.to) {
            if from > to {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    "from is after to",
                ));
            }
        }
        Ok(filter)
    }

    /// One page of the index's runs, newest slot first, and the cursor of the next page if there
    /// may be one.
    fn page(
        &self,
        store: &Store,
        index: RunIndex,
    ) -> Result<(Vec<RunView>, Option<String>), ApiError> {
        // Positions sort by slot: start below the cursor, or just past `to`.
        let before = match (&self.cursor, self.to) {
            (Some(cursor), _) => Some(cursor.clone()),
            (None, Some(to)) => Some(model::slot_millis(to + chrono::Duration::milliseconds(1))),
            (None, None) => None,
        };
        let from = self.from.map(model::slot_millis);
        let mut runs = vec![];
        let mut scanned = 0;
        let mut last = None;
        let mut more = false;
        index.visit_rev(store, before.as_deref(), |position, record| {
            if from.as_deref().is_some_and(|from| position < from) {
                return Ok(false);
            }
            if runs.len() == self.limit || scanned == MAX_SCANNED {
                more = true;
                return Ok(false);
            }
            scanned += 1;
            last = Some(position.to_string());
            if let Some(record) = record {
                if self
                    .statuses
                    .as_ref()
                    .is_none_or(|s| s.contains(&record.state.status))
                {
                    runs.push(RunView::from(record.state));
                }
            }
            Ok(true)
        })?;
        Ok((runs, if more { last } else { None }))
    }
}

/// Runs of every job, newest slot first, filtered and paged.
#[utoipa::path(get, path = "/api/v1/runs", summary = "Runs of every job, newest slot first", params(RunsQuery), responses((status = 200, description = "A page of runs", body = RunsPage)))]
async fn list_runs(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<RunsPage>, ApiError> {
    let filter = RunFilter::parse(query)?;
    let (runs, next_cursor) = scanning(&state, move |state| {
        filter.page(&state.store, RunIndex::All)
    })
    .await?;
    Ok(Json(RunsPage {
        job_id: None,
        runs,
        next_cursor,
    }))
}

/// Runs of one job, newest slot first, filtered and paged.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/runs", summary = "Runs of one job, newest slot first", params(("id" = String, Path, description = "Job id"), RunsQuery), responses((status = 200, description = "A page of the job's runs", body = RunsPage)))]
async fn job_runs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<RunsPage>, ApiError> {
    let filter = RunFilter::parse(query)?;
    let job = id.clone();
    let (runs, next_cursor, known) = scanning(&state, move |state| {
        let (runs, next_cursor) = filter.page(&state.store, RunIndex::OfJob(&job))?;
        let known = !runs.is_empty()
            || next_cursor.is_some()
            || model::job(&state.store, &job)?.is_some()
            || !model::runs_of_job(&state.store, &job, 1)?.is_empty();
        Ok((runs, next_cursor, known))
    })
    .await?;
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {id:?} and no runs of it"),
        ));
    }
    Ok(Json(RunsPage {
        job_id: Some(id),
        runs,
        next_cursor,
    }))
}

/// A run with its history; a dispatched run that no live worker will take says why.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}", summary = "One run with its full event history", params(("run_id" = String, Path, description = "Run id (UUID)")), responses((status = 200, description = "The run and its history", body = RunDetail)))]
async fn get_run(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    if kairos_core::RunId::parse(&run_id).is_none() {
        return Err(ApiError::bad_request(
            "invalid_run_id",
            format!("{run_id:?} is not a run id (a UUID)"),
        ));
    }
    let record = model::run_record(&state.store, &run_id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("no run {run_id}"),
        )
    })?;
    let waiting_for_worker = match PendingRun::of(&record.state) {
        Some(waiting) => {
            let registry = state.workers.registry();
            unfinished::unserved(&state.store, &registry, &waiting, kairos_runtime::now())?
        }
        None => None,
    };
    Ok(Json(RunDetail {
        run: RunView::from(record.state),
        history: record.history.into_iter().map(|e| e.public()).collect(),
        waiting_for_worker,
    }))
}

/// Dispatched runs no worker has started yet, oldest first, each saying whether a live worker
/// serves its pool.
#[utoipa::path(get, path = "/api/v1/runs/pending", summary = "Dispatched runs no worker has started yet", responses((status = 200, description = "Each run, oldest dispatch first, and whether a live worker serves its pool", body = PendingRuns)))]
async fn pending_runs(State(state): State<ApiState>) -> Result<Json<PendingRuns>, ApiError> {
    let runs = scanning(&state, |state| {
        let mut waiting = unfinished::pending(&state.store)?;
        waiting.sort_by_key(|p| p.dispatched_at);
        waiting
            .iter()
            .map(|p| pending_view(state, p))
            .collect::<Result<_, _>>()
    })
    .await?;
    Ok(Json(PendingRuns { runs }))
}

/// The registry is locked for each run alone: a long list must not hold off the heartbeats the
/// aggregator's loop records.
fn pending_view(state: &ApiState, run: &PendingRun) -> Result<PendingRunView, ApiError> {
    let now = kairos_runtime::now();
    let unserved = unfinished::unserved(&state.store, &state.workers.registry(), run, now)?;
    Ok(PendingRunView {
        job_id: run.job_id.clone(),
        run_id: run.run_id,
        pool: run.pool.clone(),
        dispatched_at: run.dispatched_at,
        waiting_ms: (now - run.dispatched_at).num_milliseconds().max(0),
        unserved,
    })
}

// ---------------------------------------------------------------------------------------------
// Workers and alerts.

#[utoipa::path(get, path = "/api/v1/workers", summary = "The worker registry", responses((status = 200, description = "Each worker's latest heartbeat and liveness", body = WorkersList)))]
async fn list_workers(State(state): State<ApiState>) -> Json<WorkersList> {
    let workers = state.workers.view(chrono::Utc::now());
    Json(WorkersList { workers })
}

/// The latest alerts this aggregator raised since it started, newest first (the alerts topic
/// has all of them).
#[utoipa::path(get, path = "/api/v1/alerts", summary = "Recent alerts", responses((status = 200, description = "The latest alerts, newest first", body = AlertsList)))]
async fn list_alerts(State(state): State<ApiState>) -> Json<AlertsList> {
    Json(AlertsList {
        alerts: state.alerts.recent(),
    })
}

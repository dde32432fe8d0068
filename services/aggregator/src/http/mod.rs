//! The aggregator's HTTP side: the REST API ([`api`]) and the status page ([`status_page`]), and
//! what both use: the state the handlers share, the API's JSON errors, access checks, and reads
//! that scan the store on the blocking pool.
//!
//! Reads come from the read models; writes go to Kafka (the jobs topic, or the ledger for a
//! triggered run) and are answered `202 Accepted`: the read models follow once the record is
//! consumed. With tokens configured, every endpoint but `/healthz` and the OpenAPI document needs
//! one whose role covers it (see [`crate::access`]); every write carries its caller as author.

pub(crate) mod api;
mod doc;
mod status_page;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kairos_core::run::RunEvent;
use kairos_core::{JobDefinition, JobId};
use kairos_runtime::jobs::{self, WriteError};
use kairos_runtime::kafka::{Delivered, Producer, TopicAdmin};
use kairos_runtime::keys::SigningKey;
use kairos_runtime::telemetry::Health;
use kairos_runtime::{KafkaArgs, Store};
use serde_json::{json, Value};

use crate::access::{Access, Caller, Denied, Role};
use crate::alerts::Alerts;
use crate::workers::Workers;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) store: Store,
    pub(crate) health: Arc<Health>,
    pub(crate) workers: Workers,
    pub(crate) alerts: Alerts,
    pub(crate) writer: Writer,
    /// Who may call which endpoint.
    pub(crate) access: Arc<Access>,
    /// The fire audit's grace period, which its findings are judged by.
    pub(crate) audit_grace: std::time::Duration,
}

/// Whether a write signs the definition with the API's key.
#[derive(Clone, Copy)]
enum Signing {
    /// A definition the caller gave: signed, if the API has a key.
    Anew,
    /// The definition as it is on the topic, paused or resumed: its signature (which does not
    /// cover `paused`) is kept, so that pausing never signs what the API did not check.
    Keep,
}

/// The write side: a producer of its own (an API request fails after the producer's timeout
/// when the broker is down, instead of waiting for it like the pipeline does).
#[derive(Clone)]
pub(crate) struct Writer {
    producer: Option<Producer>,
    admin: Option<TopicAdmin>,
    kafka: KafkaArgs,
    /// Signs every definition written.
    signing_key: Option<Arc<SigningKey>>,
}

impl Writer {
    pub(crate) fn new(kafka: KafkaArgs, signing_key: Option<SigningKey>) -> Self {
        let producer = match kafka.producer() {
            Ok(producer) => Some(producer),
            Err(error) => {
                tracing::error!(%error, "Cannot create the API's producer; writes will fail.");
                None
            }
        };
        let admin = match TopicAdmin::new(&kafka) {
            Ok(admin) => Some(admin),
            Err(error) => {
                tracing::error!(%error, "Cannot create the API's admin client; job writes will fail.");
                None
            }
        };
        Writer {
            producer,
            admin,
            kafka,
            signing_key: signing_key.map(Arc::new),
        }
    }

    /// Puts a definition on the jobs topic, written by `caller`, signed as `signing` says.
    async fn put_job(
        &self,
        job: &JobDefinition,
        signing: Signing,
        caller: &Caller,
    ) -> Result<jobs::Written, ApiError> {
        let key = match signing {
            Signing::Anew => self.signing_key.as_deref(),
            Signing::Keep => None,
        };
        Ok(jobs::put_job(self.admin()?, self.producer()?, job, key, &caller.author()).await?)
    }

    /// Deletes a job, by `caller`.
    async fn delete_job(&self, id: &JobId, caller: &Caller) -> Result<Delivered, ApiError> {
        Ok(jobs::delete_job(&self.kafka, self.producer()?, id, &caller.author()).await?)
    }

    /// Appends a run `caller` asked for to the ledger.
    async fn schedule_run(&self, event: &RunEvent, caller: &Caller) -> Result<Delivered, ApiError> {
        Ok(jobs::schedule_run(&self.kafka, self.producer()?, event, &caller.author()).await?)
    }

    fn producer(&self) -> Result<&Producer, ApiError> {
        self.producer
            .as_ref()
            .ok_or_else(|| unavailable("producer"))
    }

    fn admin(&self) -> Result<&TopicAdmin, ApiError> {
        self.admin
            .as_ref()
            .ok_or_else(|| unavailable("admin client"))
    }
}

/// A write refused because the API could not make the broker `client` it needs.
fn unavailable(client: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        format!("the API has no {client} (see the aggregator's log)"),
    )
}

pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// A query string, refused with the API's JSON error (`400 invalid_query`) rather than axum's
/// plain-text one.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| ApiQuery(query))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn job_not_found(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {id:?}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(doc::ErrorBody {
                error: doc::ErrorDetail {
                    code: self.code,
                    message: self.message,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a valid header"),
            );
        }
        response
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

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        let (status, code) = match &error {
            WriteError::NoJobsTopic(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_jobs_topic"),
            WriteError::Broker(_) => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
            WriteError::Codec(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_job"),
            WriteError::CredentialInClear(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "credential_in_clear")
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// Lets a request through when its token's role covers the route's (or no token is
/// configured), and hands the handler its caller.
async fn authorize(
    State((state, needs)): State<(ApiState, Role)>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match state.access.check(presented, needs) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(denied @ Denied::Forbidden { .. }) => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", denied.to_string()).into_response()
        }
        Err(denied) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", denied.to_string())
            .into_response(),
    }
}

#[utoipa::path(get, path = "/healthz", summary = "Liveness, and whether the aggregator has caught up", security(()), responses((status = 200, description = "`status` and `caught_up`", body = Object)))]
async fn healthz(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({"status": "ok", "caught_up": state.health.caught_up()}))
}

#[utoipa::path(get, path = "/api/v1/openapi.json", summary = "This document", security(()), responses((status = 200, description = "The OpenAPI document", body = Object)))]
async fn openapi() -> Response {
    let document: &str = &doc::DOCUMENT;
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

/// Runs a read that scans the store on the blocking pool: a scan of thousands of keys would hold
/// a runtime thread, and with it other requests and the aggregator's own loop.
pub(crate) async fn scanning<T: Send + 'static>(
    state: &ApiState,
    read: impl FnOnce(&ApiState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || read(&state))
        .await
        .map_err(|error| ApiError::from(anyhow::Error::from(error)))?
}

// ---------------------------------------------------------------------------------------------

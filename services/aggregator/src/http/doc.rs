//! The OpenAPI document, generated from the handlers' annotations and the types they answer with
//! (utoipa). One schema is written by hand, in the core: the job definition's
//! (`kairos_core::job::JobSpec`), whose durations, schedules and task types are strings and tagged
//! objects with a grammar serde does not describe.

use std::sync::LazyLock;

use kairos_core::history::{EventFacts, HistoryEntry, RunDetail, RunView, RunsPage};
use kairos_core::job::JobSpec;
use kairos_core::run::{RunId, RunStatus, SkipReason, TaskOutput, TriggerKind};
use kairos_core::views::{
    AlertView, AlertsList, JobAuditView, JobChange, JobStats, JobView, JobsList, MissedSlot,
    NextFireTimes, PendingRunView, PendingRuns, StuckRun, WorkerView, WorkersList,
};
use kairos_core::Timestamp;

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kairos aggregator API",
        version = "1",
        description = "Read models of the Kairos run ledger, and job writes (which go to the jobs topic). Errors are {\"error\": {\"code\", \"message\"}}. With tokens configured (--api-token, --api-tokens), every endpoint but /healthz and this document needs `Authorization: Bearer <token>` whose role covers it: `read` for reads, `operate` to pause, resume and trigger, `admin` to define and delete jobs; a missing or unknown token is 401, a role that does not cover the endpoint 403. Each write carries its caller (`api:<token name>`) as its author."
    ),
    paths(
        super::healthz,
        super::openapi,
        super::api::list_jobs,
        super::api::create_job,
        super::api::get_job,
        super::api::put_job,
        super::api::delete_job,
        super::api::pause_job,
        super::api::resume_job,
        super::api::trigger_job,
        super::api::job_runs,
        super::api::next_fire_times,
        super::api::job_audit,
        super::api::list_runs,
        super::api::pending_runs,
        super::api::get_run,
        super::api::list_workers,
        super::api::list_alerts,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        Written,
        Unchanged,
        JobSpec,
        JobsList,
        JobView,
        JobChange,
        JobStats,
        NextFireTimes,
        JobAuditView,
        MissedSlot,
        StuckRun,
        RunsPage,
        RunDetail,
        RunView,
        HistoryEntry,
        EventFacts,
        TaskOutput,
        RunStatus,
        TriggerKind,
        SkipReason,
        PendingRuns,
        PendingRunView,
        WorkersList,
        WorkerView,
        AlertsList,
        AlertView,
    )),
    modifiers(&Bearer, &Errors),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// The document, built once.
pub(crate) static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// The bearer token scheme every endpoint but `/healthz` and the document asks for.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every operation may answer an error, with the one body every error has: added to each as its
/// `default` response rather than written on each handler.
struct Errors;

impl Modify for Errors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = ResponseBuilder::new()
            .description(
                "An error: `{\"error\": {\"code\", \"message\"}}`; 401 without a token that \
                 is known, 403 with one whose role does not cover the endpoint",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.responses.insert("Error".into(), error.into());
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("default".into())
                    .or_insert_with(|| Ref::from_response_name("Error").into());
            }
        }
    }
}

/// Every error the API answers: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// What went wrong, for a program: e.g. `job_not_found`.
    #[schema(example = "job_not_found")]
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

/// What a write put on Kafka: the record's partition and offset.
#[derive(Serialize, ToSchema)]
pub(crate) struct Written {
    pub job_id: String,
    /// The run a trigger asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub run_id: Option<RunId>,
    /// The slot of the run a trigger asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_for: Option<Timestamp>,
    pub partition: i32,
    pub offset: i64,
    /// The task topic created for a pool no job had used before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_pool_topic: Option<String>,
}

impl Written {
    /// The receipt of a job's record at `delivered`.
    pub(crate) fn of(job_id: String, delivered: &kairos_runtime::kafka::Delivered) -> Self {
        Written {
            job_id,
            run_id: None,
            scheduled_for: None,
            partition: delivered.partition,
            offset: delivered.offset,
            created_pool_topic: None,
        }
    }
}

/// A pause or resume that found the job already so: nothing was written.
#[derive(Serialize, ToSchema)]
pub(crate) struct Unchanged {
    pub job_id: String,
    pub paused: bool,
    pub changed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route_and_its_hand_written_schemas() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        assert_eq!(doc["paths"].as_object().unwrap().len(), 15);
        let schemas = &doc["components"]["schemas"];
        for name in [
            "JobDefinition",
            "JobAudit",
            "RunView",
            "RunsPage",
            "ErrorBody",
        ] {
            assert!(schemas[name].is_object(), "{name} is missing");
        }
        // The hand-written schema comes through utoipa's model whole: no keyword is dropped.
        let hand: serde_json::Value =
            serde_json::from_str(include_str!("../../../core/src/job_schema.json")).unwrap();
        assert_eq!(
            schemas["JobDefinition"], hand,
            "the job definition changed on its way"
        );
        // Every operation may answer the one error body.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                assert_eq!(
                    operation["responses"]["default"]["$ref"], "#/components/responses/Error",
                    "{method} {path}"
                );
            }
        }
        // The open endpoints ask for no token.
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([{}])
        );
    }
}

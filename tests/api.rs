//! The REST API end to end: every endpoint, the token on writes, and bad input answered with a
//! JSON error and a code, never a crash or a write.

use std::time::Duration;

use kairos_tests::{get_json, shell_job, stop_all, wait_caught_up, wait_for, Stack};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

/// One request to the API: its status and JSON body.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        (status, body)
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }
    async fn write(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.call(method, path, Some(TOKEN), body).await
    }
}

/// Asserts an error answer: its status and code.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        answer.1
    );
}

fn job_body(id: &str, every: &str) -> String {
    serde_json::to_string(&shell_job(id, every, "echo api")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_answers_and_bad_input_gets_a_coded_json_error() {
    let stack = Stack::new(3).await;
    let aggregator = stack.aggregator_with("aggregator", |c| c.api_token = Some(TOKEN.into()));
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker("w1"),
        aggregator,
    ];
    wait_caught_up(&services).await;
    let api = Api {
        base: format!("http://{}", services[3].http_addr.unwrap()),
        client: reqwest::Client::new(),
    };

    // Writes need the token.
    let body = job_body("api-job", "1s");
    assert_error(
        &api.call(Method::POST, "/api/v1/jobs", None, Some(&body))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &api.call(Method::POST, "/api/v1/jobs", Some("wrong"), Some(&body))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &api.call(Method::DELETE, "/api/v1/jobs/api-job", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // Reads do not.
    assert_eq!(api.get("/api/v1/jobs").await.1["jobs"], json!([]));

    // Bad job bodies: nothing is written.
    for (bad, status, code) in [
        ("{not json", StatusCode::BAD_REQUEST, "invalid_json"),
        (r#"{"id": "x"}"#, StatusCode::BAD_REQUEST, "invalid_json"),
        (
            r#"{"id": "x", "schedule": {"cron": "61 * * * *"}, "task": {"shell": {"command": ["true"]}}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
        ),
        (
            r#"{"id": "x", "schedule": {"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "task": {"shell": {"command": ["true"]}}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
        ),
        (
            r#"{"id": "bad id!", "schedule": {"every": "1s"}, "task": {"shell": {"command": ["true"]}}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
        ),
    ] {
        assert_error(
            &api.write(Method::POST, "/api/v1/jobs", Some(bad)).await,
            status,
            code,
        );
    }
    let (status, written) = api.write(Method::POST, "/api/v1/jobs", Some(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{written}");
    assert_eq!(written["job_id"], "api-job");
    let job = wait_for(
        "the created job in the read model",
        Duration::from_secs(30),
        || async { get_json(&format!("{}/api/v1/jobs/api-job", api.base)).await },
    )
    .await;
    assert_eq!(job["definition"]["schedule"]["every"], "1s");
    assert_eq!(job["next_fire_times"].as_array().map(Vec::len), Some(5));
    let invalid_jobs: Vec<_> = api.get("/api/v1/jobs").await.1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(
        invalid_jobs,
        [json!("api-job")],
        "only the valid job was written"
    );
    assert_error(
        &api.write(Method::POST, "/api/v1/jobs", Some(&body)).await,
        StatusCode::CONFLICT,
        "job_exists",
    );

    // Replace with PUT; the path and the body must agree.
    assert_error(
        &api.write(Method::PUT, "/api/v1/jobs/other", Some(&body))
            .await,
        StatusCode::BAD_REQUEST,
        "id_mismatch",
    );
    let (status, _) = api
        .write(
            Method::PUT,
            "/api/v1/jobs/api-job",
            Some(&job_body("api-job", "2s")),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_for(
        "the replaced definition",
        Duration::from_secs(30),
        || async {
            let job = get_json(&format!("{}/api/v1/jobs/api-job", api.base)).await?;
            (job["definition"]["schedule"]["every"] == "2s").then_some(())
        },
    )
    .await;

    // Next fire times.
    let (status, next) = api
        .get("/api/v1/jobs/api-job/next-fire-times?count=3")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        next["next_fire_times"].as_array().map(Vec::len),
        Some(3),
        "{next}"
    );
    assert_error(
        &api.get("/api/v1/jobs/api-job/next-fire-times?count=0")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    );
    assert_error(
        &api.get("/api/v1/jobs/nope/next-fire-times").await,
        StatusCode::NOT_FOUND,
        "job_not_found",
    );

    // Runs appear; filters and pages.
    wait_for("three succeeded runs", Duration::from_secs(60), || async {
        let runs = get_json(&format!("{}/api/v1/runs?status=succeeded", api.base)).await?;
        (runs["runs"].as_array()?.len() >= 3).then_some(())
    })
    .await;
    let (_, first) = api.get("/api/v1/runs?status=succeeded&limit=2").await;
    let first_runs = first["runs"].as_array().unwrap().clone();
    assert_eq!(first_runs.len(), 2, "{first}");
    assert!(
        first_runs[0]["scheduled_for"].as_str() > first_runs[1]["scheduled_for"].as_str(),
        "newest slot first"
    );
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a full page has a cursor")
        .to_string();
    let (_, second) = api
        .get(&format!(
            "/api/v1/runs?status=succeeded&limit=2&cursor={cursor}"
        ))
        .await;
    let second_runs = second["runs"].as_array().unwrap();
    assert!(!second_runs.is_empty(), "{second}");
    assert!(
        second_runs
            .iter()
            .all(|r| r["scheduled_for"].as_str() < first_runs[1]["scheduled_for"].as_str()),
        "the next page is older"
    );
    assert!(second_runs.iter().all(|r| r["status"] == "succeeded"));
    // A time range that holds only the newest run of the first page.
    let newest = first_runs[0]["scheduled_for"].as_str().unwrap();
    let (_, ranged) = api
        .get(&format!(
            "/api/v1/jobs/api-job/runs?from={newest}&to={newest}"
        ))
        .await;
    let ranged: Vec<_> = ranged["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].clone())
        .collect();
    assert_eq!(ranged, [first_runs[0]["run_id"].clone()]);
    assert_eq!(
        api.get("/api/v1/runs?status=abandoned").await.1["runs"],
        json!([])
    );
    for bad in [
        "status=bogus",
        "from=yesterday",
        "limit=0",
        "limit=1001",
        "cursor=xyz",
        "from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
    ] {
        assert_error(
            &api.get(&format!("/api/v1/runs?{bad}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        );
    }
    assert_error(
        &api.get("/api/v1/jobs/nope/runs").await,
        StatusCode::NOT_FOUND,
        "job_not_found",
    );

    // One run with its full history.
    let run_id = first_runs[0]["run_id"].as_str().unwrap();
    let (status, run) = api.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<_> = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "RunScheduled",
            "RunDispatched",
            "RunStarted",
            "RunSucceeded"
        ],
        "{run}"
    );
    assert_error(
        &api.get("/api/v1/runs/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "invalid_run_id",
    );
    assert_error(
        &api.get(&format!("/api/v1/runs/{}", uuid::Uuid::new_v4()))
            .await,
        StatusCode::NOT_FOUND,
        "run_not_found",
    );

    // Pause, resume, trigger.
    let (status, _) = api
        .write(Method::POST, "/api/v1/jobs/api-job/pause", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_for("the job paused", Duration::from_secs(30), || async {
        let job = get_json(&format!("{}/api/v1/jobs/api-job", api.base)).await?;
        (job["definition"]["paused"] == true).then_some(())
    })
    .await;
    assert_eq!(
        api.get("/api/v1/jobs/api-job/next-fire-times").await.1["next_fire_times"],
        json!([])
    );
    let (status, again) = api
        .write(Method::POST, "/api/v1/jobs/api-job/pause", None)
        .await;
    assert_eq!((status, &again["changed"]), (StatusCode::OK, &json!(false)));
    let (status, triggered) = api
        .write(Method::POST, "/api/v1/jobs/api-job/trigger", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{triggered}");
    let manual = triggered["run_id"].as_str().unwrap().to_string();
    let run = wait_for(
        "the triggered run to succeed",
        Duration::from_secs(30),
        || async {
            let run = get_json(&format!("{}/api/v1/runs/{manual}", api.base)).await?;
            (run["status"] == "succeeded").then_some(run)
        },
    )
    .await;
    assert_eq!(run["trigger"], "manual");
    let (status, _) = api
        .write(Method::POST, "/api/v1/jobs/api-job/resume", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_error(
        &api.write(Method::POST, "/api/v1/jobs/nope/trigger", None)
            .await,
        StatusCode::NOT_FOUND,
        "job_not_found",
    );

    // Workers, pending runs, alerts.
    let (_, workers) = api.get("/api/v1/workers").await;
    assert_eq!(workers["workers"][0]["worker_id"], "w1", "{workers}");
    assert_eq!(api.get("/api/v1/runs/pending").await.0, StatusCode::OK);
    assert!(api.get("/api/v1/alerts").await.1["alerts"].is_array());

    // The OpenAPI document: every path and method it lists is served.
    let (status, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14, "{}", paths.len());
    for (path, methods) in paths {
        let concrete = path.replace("{id}", "api-job").replace("{run_id}", run_id);
        for method in methods.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            // Without a token: served routes answer, writes with 401, nothing with "no such endpoint".
            let response = api
                .client
                .request(method.clone(), format!("{}{concrete}", api.base))
                .send()
                .await
                .unwrap();
            assert!(
                ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED]
                    .contains(&response.status()),
                "{method} {path} is documented but answers {}",
                response.status()
            );
        }
    }
    assert_error(
        &api.get("/api/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call(Method::PATCH, "/api/v1/jobs", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // Delete.
    let (status, _) = api
        .write(Method::DELETE, "/api/v1/jobs/api-job", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_for("the job to be gone", Duration::from_secs(30), || async {
        (api.get("/api/v1/jobs/api-job").await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_error(
        &api.write(Method::DELETE, "/api/v1/jobs/api-job", None)
            .await,
        StatusCode::NOT_FOUND,
        "job_not_found",
    );
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_writes_are_open_and_the_api_binds_loopback_by_default() {
    use clap::CommandFactory as _;
    let command = kairos_aggregator::Config::command();
    let default = |id: &str| {
        let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
        arg.get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    for addr in ["http_addr", "metrics_addr"] {
        let addr: std::net::SocketAddr = default(addr)[0].parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }
    assert!(default("api_token").is_empty());

    let stack = Stack::new(1).await;
    let aggregator = stack.aggregator("aggregator");
    aggregator.caught_up().await;
    let api = Api {
        base: format!("http://{}", aggregator.http_addr.unwrap()),
        client: reqwest::Client::new(),
    };
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            None,
            Some(&job_body("open", "1h")),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    stop_all([aggregator]).await;
}

//! The REST API end to end: every endpoint, tokens and their roles, the author of each write,
//! and bad input answered with a JSON error and a code, never a crash or a write.

use std::time::Duration;

use kairos_tests::{shell_job, stop_all, wait_caught_up, wait_for, Stack};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

/// One request to the API: its status and JSON body.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    /// One request, answered whatever its body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        request.send().await.expect("the API answers")
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let response = self.send(method, path, token, body).await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        (status, body)
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(TOKEN), None).await
    }
    /// The body of a successful read, if it succeeds.
    async fn json(&self, path: &str) -> Option<Value> {
        let (status, body) = self.get(path).await;
        status.is_success().then_some(body)
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
    // So do reads, once a token is configured.
    assert_error(
        &api.call(Method::GET, "/api/v1/jobs", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
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
        || async { api.json("/api/v1/jobs/api-job").await },
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
            let job = api.json("/api/v1/jobs/api-job").await?;
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
        let runs = api.json("/api/v1/runs?status=succeeded").await?;
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
        let job = api.json("/api/v1/jobs/api-job").await?;
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
            let run = api.json(&format!("/api/v1/runs/{manual}")).await?;
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
            // Without a token: every route but /healthz and this document answers 401, none "no such endpoint".
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

/// Tokens with roles: each endpoint answers the roles that cover it (read < operate < admin),
/// refuses the others with 403 and a missing or unknown token with 401; every write carries the
/// name of the token that made it, as the author header on its record and in the job's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_what_it_covers_and_every_write_names_its_author() {
    use sha2::{Digest as _, Sha256};
    let stack = Stack::new(1).await;
    let hex = |token: &str| -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let tokens = stack.data_dir("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: grafana, role: read, sha256: {}}}\n  - {{name: oncall, role: operate, sha256: {}}}\n  - {{name: deployer, role: admin, sha256: {}}}\n",
            hex("read-token"),
            hex("operate-token"),
            hex("admin-token")
        ),
    )
    .unwrap();
    let aggregator = stack.aggregator_with("aggregator", |c| c.api_tokens = Some(tokens));
    aggregator.caught_up().await;
    let api = Api {
        base: format!("http://{}", aggregator.http_addr.unwrap()),
        client: reqwest::Client::new(),
    };
    let body = job_body("roles", "1h");
    let as_ = |token: &'static str| Some(token);

    // What each role may do, and what it is refused.
    let needs_admin = [
        (Method::POST, "/api/v1/jobs", Some(body.as_str())),
        (Method::PUT, "/api/v1/jobs/roles", Some(body.as_str())),
        (Method::DELETE, "/api/v1/jobs/roles", None),
    ];
    let needs_operate = [
        (Method::POST, "/api/v1/jobs/roles/pause", None),
        (Method::POST, "/api/v1/jobs/roles/resume", None),
        (Method::POST, "/api/v1/jobs/roles/trigger", None),
    ];
    let reads = [
        "/",
        "/api/v1/jobs",
        "/api/v1/jobs/roles",
        "/api/v1/jobs/roles/runs",
        "/api/v1/jobs/roles/next-fire-times",
        "/api/v1/jobs/roles/audit",
        "/api/v1/runs",
        "/api/v1/runs/pending",
        "/api/v1/workers",
        "/api/v1/alerts",
    ];
    let status_of =
        |method: Method, path: &'static str, token: Option<&'static str>, body: Option<&str>| {
            let (api, body) = (&api, body.map(str::to_string));
            async move {
                api.send(method, path, token, body.as_deref())
                    .await
                    .status()
            }
        };
    for path in reads {
        assert_eq!(
            status_of(Method::GET, path, None, None).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            status_of(Method::GET, path, as_("wrong"), None).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_ne!(
            status_of(Method::GET, path, as_("read-token"), None).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_ne!(
            status_of(Method::GET, path, as_("read-token"), None).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    for open in ["/healthz", "/api/v1/openapi.json"] {
        assert_eq!(
            status_of(Method::GET, open, None, None).await,
            StatusCode::OK,
            "{open}"
        );
    }
    for (method, path, body) in needs_operate.iter().chain(&needs_admin) {
        assert_eq!(
            status_of(method.clone(), path, None, *body).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        assert_error(
            &api.call(method.clone(), path, as_("read-token"), *body)
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    for (method, path, body) in &needs_admin {
        assert_error(
            &api.call(method.clone(), path, as_("operate-token"), *body)
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }

    // The admin defines the job, the operator pauses it: each is the author of its change.
    let (status, written) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            as_("admin-token"),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{written}");
    let created = wait_for(
        "the job in the read model",
        Duration::from_secs(30),
        || async {
            let (status, job) = api
                .call(Method::GET, "/api/v1/jobs/roles", as_("read-token"), None)
                .await;
            status.is_success().then_some(job)
        },
    )
    .await;
    assert_eq!(created["author"], "api:deployer", "{created}");
    let (status, paused) = api
        .call(
            Method::POST,
            "/api/v1/jobs/roles/pause",
            as_("operate-token"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{paused}");
    let job = wait_for(
        "the pause in the read model",
        Duration::from_secs(30),
        || async {
            let (_, job) = api
                .call(Method::GET, "/api/v1/jobs/roles", as_("read-token"), None)
                .await;
            (job["definition"]["paused"] == json!(true)).then_some(job)
        },
    )
    .await;
    assert_eq!(job["author"], "api:oncall", "{job}");
    let history: Vec<(String, String)> = job["changes"]
        .as_array()
        .expect("the job's changes")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().into(),
                c["author"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("created".to_string(), "api:deployer".to_string()),
            ("paused".to_string(), "api:oncall".to_string())
        ]
    );
    // On the topic itself, for any other reader.
    let authors: Vec<String> = stack
        .read_records(&stack.kafka.topics().jobs())
        .iter()
        .filter_map(|r| r.header("kairos_author").map(str::to_string))
        .collect();
    assert_eq!(authors, ["api:deployer", "api:oncall"]);
    // A manual run names who asked for it on the ledger.
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/jobs/roles/trigger",
            as_("operate-token"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let ledger_authors: Vec<String> = stack
        .read_records(&stack.kafka.topics().runs())
        .iter()
        .filter_map(|r| r.header("kairos_author").map(str::to_string))
        .collect();
    assert_eq!(ledger_authors, ["api:oncall"]);
    stop_all([aggregator]).await;
}

/// With a certificate and key the API speaks TLS only, with that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_serves_tls_with_the_certificate_it_is_given() {
    let stack = Stack::new(2).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .output()
        .expect("running openssl (scripts/lib.sh installs it)");
    assert!(made.status.success(), "{made:?}");
    let aggregator = stack.aggregator_with("aggregator", |config| {
        config.tls_cert = Some(cert.clone());
        config.tls_key = Some(key.clone());
    });
    let addr = aggregator.http_addr.unwrap();
    let services = vec![aggregator];
    wait_caught_up(&services).await;
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    for path in ["/healthz", "/api/v1/jobs"] {
        let response = trusting
            .get(format!("https://{addr}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} over TLS: {e}"));
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // Plain HTTP gets no answer, and a client that does not trust the certificate refuses it.
    assert!(reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err());
    assert!(reqwest::get(format!("https://{addr}/healthz"))
        .await
        .is_err());
    stop_all(services).await;
}

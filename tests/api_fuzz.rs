//! The REST API against its own OpenAPI document, by an independent property-based tester:
//! schemathesis (PyPI) generates requests for every operation the document describes, valid and
//! not, and checks each answer: no server error, and a status, content type, headers and body
//! that the document allows.

use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_tests::{shell_job, stop_all, wait_caught_up, wait_for, Stack};

const TOKEN: &str = "fuzz-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_allow() {
    let stack = Stack::new(2).await;
    // The API alone: what schemathesis defines is written to the topics and never fired.
    let aggregator = stack.aggregator_with("aggregator", |config| {
        config.api_token = Some(TOKEN.into());
    });
    let api = format!("http://{}", aggregator.http_addr.unwrap());
    let services = vec![aggregator];
    wait_caught_up(&services).await;
    // Jobs to read, so that the paths naming one are exercised past "not found": one as plain as
    // can be, and one with every field of a definition set, so that the answers' schema is
    // checked against each of them.
    stack.apply_job(shell_job("fuzzed", "1h", "true")).await;
    stack.apply_job(every_field_set()).await;
    let client = reqwest::Client::new();
    wait_for(
        "the API to know the jobs",
        Duration::from_secs(30),
        || async {
            let response = client
                .get(format!("{api}/api/v1/jobs/everything"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;

    let python = std::env::var("KAIROS_TEST_PYTHON").expect(
        "KAIROS_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs schemathesis",
    );
    let schemathesis = std::path::Path::new(&python).with_file_name("schemathesis");
    // Its reports and cache go to the stack's directory, not the working tree.
    let report = stack.data_dir("schemathesis");
    std::fs::create_dir_all(&report).unwrap();
    let out = tokio::process::Command::new(&schemathesis)
        .current_dir(&report)
        .args([
            "run",
            &format!("{api}/api/v1/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "20",
            "--workers",
            "2",
            "--request-timeout",
            "20",
            "--seed",
            "1",
            "--report-dir",
        ])
        .arg(&report)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", schemathesis.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not allow:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It tested every operation the document lists (all but the document itself), not none.
    let count = |label: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.rsplit('/').next())
            .and_then(|n| n.trim().parse::<usize>().ok())
    };
    let (selected, tested) = (count("Selected: "), count("Tested: "));
    assert!(
        selected.is_some_and(|n| n >= 17) && tested == selected,
        "selected {selected:?}, tested {tested:?}:\n{stdout}"
    );
    stop_all(services).await;
}

/// A job with every optional field of a definition set.
fn every_field_set() -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "id": "everything",
        "description": "every field set",
        "schedule": {"cron": "0 30 2 * * MON-FRI", "timezone": "Europe/Berlin", "dst_gap": "skip"},
        "more_schedules": [{"every": "1h"}, {"at": "2040-01-01T00:00:00Z"}],
        "calendars": [{"name": "holidays", "timezone": "Europe/Berlin", "dates": ["2040-12-25"],
                       "ranges": [{"from": "2040-08-01", "to": "2040-08-15"}], "weekdays": ["sat"]}],
        "task": {"http": {"url": "https://user:secret@example.com/hook", "method": "POST",
                          "headers": {"Authorization": "Bearer clear", "X-Trace": "1"},
                          "body": "{}"}},
        "pool": "reports",
        "timeout": "30s",
        "misfire": {"policy": "catch_up", "grace": "10s", "catch_up_window": "1h"},
        "retry": {"max_attempts": 3, "backoff": {"initial": "10s", "max": "1m", "multiplier": 2.0, "jitter": 0.1}},
        "overlap": "forbid",
        "paused": true,
        "start_at": "2030-01-01T00:00:00Z",
        "end_at": "2050-01-01T00:00:00Z",
        "max_runs": 100,
        "jitter": "5s",
        "priority": 7,
        "shards": 2,
        "shard_params": ["a", "b"],
        "signature": {"key_id": "0123456789abcdef", "value": "00"}
    }))
    .expect("a job file with every field")
}

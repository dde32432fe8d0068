//! The REST API against its own OpenAPI document, by an independent property-based tester:
//! schemathesis (PyPI) generates requests for every operation the document describes, valid and
//! not, and checks each answer: no server error, and a status, content type, headers and body
//! that the document allows.

use std::time::Duration;

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
    // A job to read, so that the paths naming one are exercised past "not found".
    stack.apply_job(shell_job("fuzzed", "1h", "true")).await;
    let client = reqwest::Client::new();
    wait_for(
        "the API to know the job",
        Duration::from_secs(30),
        || async {
            let response = client
                .get(format!("{api}/api/v1/jobs/fuzzed"))
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

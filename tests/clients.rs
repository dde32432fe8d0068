//! Clients from outside. Producing: the shipped Python client
//! (`examples/clients/python/submit_job.py`: kafka-python and fastavro, from `schemas/` alone)
//! submits a job that Kairos runs, and the definition lands in the partition where Kairos keeps
//! the job's runs. Consuming: `kairosctl tail` follows the ledger and the dead letters, and
//! every ledger record carries CloudEvents headers; the job-status topic has each job's latest
//! outcome.

use std::time::Duration;

use kairos_core::run::RunEventKind;
use kairos_runtime::codec;
use kairos_tests::{shell_job, stop_all, wait_for, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_submitted_with_kafka_python_and_fastavro_runs() {
    let stack = Stack::new(6).await;
    let services = stack.start_pipeline().await;
    let python = std::env::var("KAIROS_TEST_PYTHON").expect(
        "KAIROS_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs the client libraries",
    );
    let script = kairos_tests::repo_path("examples/clients/python/submit_job.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args(["--brokers", &stack.kafka.brokers])
        .args(["--topic-prefix", &stack.kafka.topic_prefix])
        .args(["--id", "from-python", "--every-ms", "1000", "--"])
        .args(["sh", "-c", "echo submitted from python"])
        .output()
        .await
        .expect("the Python client runs");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the client's JSON");

    let output = wait_for(
        "a run of the job submitted from Python to succeed",
        Duration::from_secs(60),
        || async {
            stack
                .job_ledger("from-python")
                .into_iter()
                .find_map(|e| match e.kind {
                    RunEventKind::RunSucceeded { output, .. } => Some(output),
                    _ => None,
                })
        },
    )
    .await;
    assert_eq!(output.stdout.trim(), "submitted from python");

    // Co-partitioned: the definition sits where Kairos writes the job's runs.
    let runs_partition = stack
        .read_all(&stack.kafka.topics().runs())
        .into_iter()
        .find_map(|(partition, _, payload)| {
            let event = codec::decode_run_event(&payload?).ok()?;
            (event.job_id.as_str() == "from-python").then_some(partition)
        })
        .expect("the job's runs on the ledger");
    assert_eq!(sent["partition"], runs_partition, "{sent}");
    stop_all(services).await;
}

/// Runs `kairosctl --json tail ARGS` and returns its JSON lines; fails if it has not printed
/// what `--limit` asks for within a minute.
async fn tail(stack: &Stack, args: &[&str]) -> Vec<serde_json::Value> {
    let bin = std::env::var("KAIROS_TEST_BIN_DIR")
        .expect("KAIROS_TEST_BIN_DIR is not set: run scripts/test.sh");
    let run = tokio::process::Command::new(format!("{bin}/kairosctl"))
        .args(["--json", "tail"])
        .args(args)
        .env("KAIROS_BROKERS", &stack.kafka.brokers)
        .env("KAIROS_TOPIC_PREFIX", &stack.kafka.topic_prefix)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("kairosctl tail {args:?} printed too little within a minute"))
        .expect("kairosctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect()
}

/// Consuming from outside: `kairosctl tail` follows the ledger of one job and the dead letters,
/// decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kairosctl_tail_follows_the_ledger_and_the_dead_letters() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    stack.apply_job(shell_job("tailed", "1s", "true")).await;
    stack.apply_job(shell_job("other", "1s", "true")).await;
    stack
        .produce(
            &stack.kafka.topics().jobs(),
            "garbage",
            Some(b"not avro at all"),
        )
        .await;

    let events = tail(
        &stack,
        &[
            "runs",
            "--job",
            "tailed",
            "--from-beginning",
            "--limit",
            "6",
        ],
    )
    .await;
    assert_eq!(events.len(), 6);
    assert!(events.iter().all(|e| e["job_id"] == "tailed"), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "RunScheduled" && e["detail"] == "schedule"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["run_id"].is_string() && e["offset"].is_i64()),
        "{events:?}"
    );

    let letters = tail(&stack, &["deadletter", "--from-beginning", "--limit", "1"]).await;
    assert_eq!(
        letters[0]["source_topic"],
        stack.kafka.topics().jobs(),
        "{letters:?}"
    );
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not Avro single-object"),
        "{letters:?}"
    );
    stop_all(services).await;
}

/// Generic routers and sinks see what a ledger record is without Kairos code: every record the
/// trigger, dispatcher and worker append carries CloudEvents binary-mode headers, and its id is
/// the same when the same event is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_records_carry_cloudevents_headers_and_job_statuses_are_published() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    stack.apply_job(shell_job("described", "1s", "true")).await;
    let records = wait_for(
        "a run of the job to succeed",
        Duration::from_secs(60),
        || async {
            let records = stack.read_records(&stack.kafka.topics().runs());
            records
                .iter()
                .any(|r| r.header("ce_type") == Some("io.kairos.run.RunSucceeded"))
                .then_some(records)
        },
    )
    .await;
    let mut sources = std::collections::BTreeSet::new();
    for record in &records {
        let event = codec::decode_run_event(record.payload.as_deref().unwrap()).unwrap();
        assert_eq!(record.header("ce_specversion"), Some("1.0"), "{record:?}");
        assert_eq!(
            record.header("ce_type"),
            Some(format!("io.kairos.run.{}", event.kind.name()).as_str())
        );
        assert_eq!(record.header("ce_subject"), Some(event.job_id.as_str()));
        assert_eq!(record.header("content-type"), Some("application/avro"));
        assert!(
            record
                .header("ce_id")
                .is_some_and(|id| id.starts_with(&event.run_id.to_string())),
            "{record:?}"
        );
        let time: chrono::DateTime<chrono::Utc> =
            record.header("ce_time").unwrap().parse().unwrap();
        assert_eq!(time, event.at);
        sources.insert(record.header("ce_source").unwrap().to_string());
    }
    for service in ["trigger", "dispatcher", "worker"] {
        assert!(
            sources.contains(&format!("/kairos/{service}")),
            "{sources:?}"
        );
    }
    stop_all(services).await;
}

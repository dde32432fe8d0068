//! Producing from outside: the shipped Python client (`examples/clients/python/submit_job.py`:
//! kafka-python and fastavro, from `schemas/` alone) submits a job that Kairos runs, and the
//! definition lands in the partition where Kairos keeps the job's runs.

use std::time::Duration;

use kairos_core::run::RunEventKind;
use kairos_runtime::codec;
use kairos_tests::{stop_all, wait_for, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_submitted_with_kafka_python_and_fastavro_runs() {
    let stack = Stack::new(6).await;
    let services = stack.start_pipeline().await;
    let python = std::env::var("KAIROS_TEST_PYTHON").expect(
        "KAIROS_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs the client libraries",
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/clients/python/submit_job.py");
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

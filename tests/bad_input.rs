//! Bad input never stops a service: garbage on every topic a service consumes (jobs, runs,
//! trigger state, a pool's tasks, control, heartbeats), records of another
//! schema, and valid Avro that is not a valid job all go to the dead-letter topic with the reason
//! and their origin, and valid jobs keep running.

use std::time::Duration;

use kairos_runtime::codec::{self, TriggerState};
use kairos_runtime::kafka::Delivered;
use kairos_tests::{get_json, shell_job, stop_all, wait_for, Stack};

/// Whether a dead letter is about the record that landed at `at` on `topic`.
fn is_from(letter: &codec::DeadLetter, topic: &str, at: &Delivered) -> bool {
    letter.source_topic == topic
        && letter.source_partition == at.partition
        && letter.source_offset == at.offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_records_are_dead_lettered_and_the_pipeline_goes_on() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let topics = stack.kafka.topics();
    let (jobs, runs) = (topics.jobs(), topics.runs());

    let garbage = b"\x00\x01 definitely not avro".to_vec();
    let wrong_schema = codec::encode_trigger_state(&TriggerState {
        job_id: kairos_core::JobId::parse("x").unwrap(),
        last_slot: chrono::Utc::now(),
        definition_offset: 0,
        schedule: String::new(),
        fired: 0,
    })
    .unwrap();
    // Valid Avro, valid shape, but a cron expression no scheduler could run (hour 25).
    let mut bad_cron_job = shell_job("bad-cron", "1s", "true");
    bad_cron_job.schedule =
        serde_json::from_value(serde_json::json!({"cron": "0 0 23 * * *"})).unwrap();
    let mut bad_cron = codec::encode_job(&bad_cron_job.validate().unwrap()).unwrap();
    let at = bad_cron.windows(2).position(|w| w == b"23").unwrap();
    bad_cron[at..at + 2].copy_from_slice(b"25");
    let mismatched =
        codec::encode_job(&shell_job("real-id", "1s", "true").validate().unwrap()).unwrap();
    // The right marker and fingerprint, then a datum cut short, and one whose first string (the
    // id) claims 400 MiB: both dead-lettered without allocating what they claim.
    let valid = codec::encode_job(&shell_job("cut", "1s", "true").validate().unwrap()).unwrap();
    let truncated = valid[..valid.len() - 3].to_vec();
    let huge_id = [&valid[..10], &[0x80, 0x80, 0x80, 0x90, 0x03][..], b"x"].concat();

    let expectations = [
        (
            jobs.clone(),
            "garbage",
            garbage.clone(),
            "not Avro single-object",
        ),
        (
            jobs.clone(),
            "wrong-schema",
            wrong_schema,
            "unknown schema fingerprint",
        ),
        (jobs.clone(), "bad-cron", bad_cron, "invalid cron"),
        (jobs.clone(), "other-key", mismatched, "does not match"),
        (jobs.clone(), "cut", truncated, "Avro"),
        (jobs.clone(), "huge-id", huge_id, "allocat"),
        (
            runs.clone(),
            "garbage",
            garbage.clone(),
            "not Avro single-object",
        ),
        (
            topics.trigger_state(),
            "garbage",
            garbage.clone(),
            "not Avro single-object",
        ),
        (
            topics.tasks("default"),
            "garbage",
            garbage.clone(),
            "not Avro single-object",
        ),
        (
            topics.control(),
            "garbage",
            garbage.clone(),
            "not Avro single-object",
        ),
        (
            topics.heartbeats(),
            "garbage",
            garbage,
            "not Avro single-object",
        ),
    ];
    let mut produced = vec![];
    for (topic, key, bytes, reason) in &expectations {
        let at = stack.produce(topic, key, Some(bytes)).await;
        produced.push((topic.clone(), at, bytes.clone(), *reason));
    }
    stack
        .apply_job(shell_job("survivor", "1s", "echo alive"))
        .await;

    let letters = wait_for(
        "a dead letter for every bad record",
        Duration::from_secs(60),
        || async {
            let letters: Vec<codec::DeadLetter> = stack
                .read_all(&topics.deadletter())
                .into_iter()
                .filter_map(|(_, _, payload)| codec::decode_dead_letter(&payload?).ok())
                .collect();
            let all = produced
                .iter()
                .all(|(topic, at, _, _)| letters.iter().any(|l| is_from(l, topic, at)));
            all.then_some(letters)
        },
    )
    .await;
    for (topic, at, bytes, reason) in &produced {
        let letter = letters.iter().find(|l| is_from(l, topic, at)).unwrap();
        assert!(
            letter.reason.contains(reason),
            "{topic}@{at:?}: expected {reason:?}, got {:?}",
            letter.reason
        );
        assert_eq!(
            letter.payload.as_ref(),
            Some(bytes),
            "the original bytes are kept"
        );
    }
    let api = format!("http://{}", services[3].http_addr.unwrap());
    wait_for(
        "survivor to keep running after the bad records",
        Duration::from_secs(60),
        || async {
            let body = get_json(&format!("{api}/api/v1/jobs/survivor/runs?limit=100")).await?;
            (body["runs"]
                .as_array()?
                .iter()
                .filter(|r| r["status"] == "succeeded")
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;
    // Garbage on the ledger is dead-lettered by each service that reads it.
    let ledger_letters = wait_for(
        "both ledger readers to dead-letter the garbage",
        Duration::from_secs(30),
        || async {
            let mut services: Vec<String> = stack
                .read_all(&topics.deadletter())
                .into_iter()
                .filter_map(|(_, _, payload)| codec::decode_dead_letter(&payload?).ok())
                .filter(|l| l.source_topic == runs)
                .map(|l| l.service)
                .collect();
            services.sort();
            (services.len() >= 2).then_some(services)
        },
    )
    .await;
    assert_eq!(
        ledger_letters,
        ["aggregator", "dispatcher"],
        "each reader of the ledger dead-letters its garbage once"
    );
    stop_all(services).await;
}

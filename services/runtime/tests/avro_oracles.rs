//! Kairos's wire format checked against independent Avro implementations: from the files in
//! `schemas/` alone, fastavro computes the fingerprint Kairos writes, and both fastavro and the
//! Apache Avro project's official Python library decode Kairos's records and encode them again
//! into bytes that Kairos decodes to the same values.
//!
//! Needs `KAIROS_TEST_PYTHON` (a Python with fastavro and avro), which `scripts/test.sh` installs
//! and sets.

use std::io::Write;
use std::process::{Command, Stdio};

use kairos_core::job::JobSpec;
use kairos_core::run::{RunEvent, RunEventKind, RunId, SkipReason, TriggerKind};
use kairos_core::JobId;
use kairos_runtime::codec;

/// Asks fastavro about each (record name, schema file, bytes Kairos wrote).
fn fastavro(records: &[(&str, &str, &[u8])]) -> serde_json::Value {
    let query = records
        .iter()
        .map(|(name, schema, bytes)| {
            (
                name.to_string(),
                serde_json::json!({"schema": schema, "bytes": hex::encode(bytes)}),
            )
        })
        .collect();
    ask_fastavro(query)
}

fn ask_fastavro(query: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let python = std::env::var("KAIROS_TEST_PYTHON").expect(
        "KAIROS_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs fastavro",
    );
    // The manifest directory cargo gives the running test, not the one compiled in (a shared
    // build cache can hold a binary built in another checkout).
    let script = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        )
        .join("../../tests/oracles/avro_roundtrip.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::Value::Object(query).to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the fastavro oracle failed");
    serde_json::from_slice(&output.stdout).expect("a JSON answer")
}

#[test]
fn fastavro_computes_kairos_fingerprints_and_both_libraries_round_trip_its_records() {
    let job: JobSpec = serde_json::from_value(serde_json::json!({
        "id": "payroll",
        "description": "Runs payroll.",
        "schedule": {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin", "dst_gap": "skip"},
        "more_schedules": [{"every": "6h"}, {"at": "2027-01-01T00:00:00Z"}],
        "calendars": [{"name": "holidays-de", "timezone": "Europe/Berlin",
                       "dates": ["2026-12-25"], "ranges": [{"from": "2026-12-27", "to": "2027-01-02"}],
                       "weekdays": ["sat", "sun"]}],
        "task": {"http": {"url": "http://127.0.0.1:9/hook", "method": "POST", "headers": {"X-A": "b"}}},
        "retry": {"max_attempts": 3},
        "start_at": "2026-01-01T00:00:00Z",
        "max_runs": 10
    }))
    .unwrap();
    let job = job.validate().unwrap();
    let job_id = JobId::parse("payroll").unwrap();
    let slot = "2026-12-25T01:30:00Z".parse().unwrap();
    let event = RunEvent {
        job_id: job_id.clone(),
        run_id: RunId::derive(&job_id, slot, TriggerKind::Schedule),
        scheduled_for: slot,
        at: "2026-12-25T01:30:00.250Z".parse().unwrap(),
        kind: RunEventKind::RunSkipped {
            reason: SkipReason::Calendar,
        },
        shard: None,
    };
    let alert = codec::Alert::misfire(job_id, event.run_id, slot, event.at);

    let job_bytes = codec::encode_job(&job).unwrap();
    let event_bytes = codec::encode_run_event(&event).unwrap();
    let alert_bytes = codec::encode_alert(&alert).unwrap();
    let answers = fastavro(&[
        ("JobDefinition", "schemas/job_definition.avsc", &job_bytes),
        ("RunEvent", "schemas/run_event.avsc", &event_bytes),
        ("Alert", "schemas/alert.avsc", &alert_bytes),
    ]);

    for (name, written) in [
        ("JobDefinition", &job_bytes),
        ("RunEvent", &event_bytes),
        ("Alert", &alert_bytes),
    ] {
        let answer = &answers[name];
        assert!(answer.get("error").is_none(), "{name}: {answer}");
        assert_eq!(
            answer["fingerprint"],
            hex::encode(&written[2..10]),
            "{name}: the fingerprint Kairos writes"
        );
    }
    let reencoded =
        |name: &str| hex::decode(answers[name]["reencoded"].as_str().unwrap()).expect("hex");
    assert_eq!(codec::decode_job(&reencoded("JobDefinition")).unwrap(), job);
    assert_eq!(
        codec::decode_run_event(&reencoded("RunEvent")).unwrap(),
        event
    );
    assert_eq!(codec::decode_alert(&reencoded("Alert")).unwrap(), alert);
}

/// The schemas and fingerprints `kairosctl schemas` gives a client are the ones fastavro derives
/// from those schemas: a producer that follows them is not dead-lettered.
#[test]
fn every_published_schema_has_the_fingerprint_fastavro_computes() {
    let published = codec::wire_schemas();
    assert_eq!(published.len(), 9);
    let query = published
        .iter()
        .map(|s| (s.name.to_string(), serde_json::json!({"schema": s.schema})))
        .collect();
    let answers = ask_fastavro(query);
    for schema in &published {
        assert_eq!(
            answers[schema.name]["fingerprint"], schema.fingerprint,
            "{}: {}",
            schema.name, answers[schema.name]
        );
    }
}

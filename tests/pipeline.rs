//! End to end: a job applied with kairosctl fires on schedule, runs on a worker, and is recorded,
//! through the four services talking only through the broker.

use std::time::Duration;

use kairos_core::run::{RunEventKind, RunId, TriggerKind};
use kairos_core::JobId;
use kairos_tests::{get_json, stop_all, wait_for, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_applied_with_kairosctl_runs_every_slot_and_is_recorded() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let api = format!("http://{}", services[3].http_addr.unwrap());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e2e.yaml");
    std::fs::write(
        &file,
        "id: e2e\nschedule:\n  every: 1s\ntask:\n  shell:\n    command: [sh, -c, 'echo \"run $KAIROS_RUN_ID attempt $KAIROS_ATTEMPT\"']\n",
    )
    .unwrap();
    let applied_at = chrono::Utc::now();
    let out = stack.kairosctl(&api, &["job", "apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "kairosctl job apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let runs = wait_for(
        "3 succeeded runs of e2e in the API",
        Duration::from_secs(60),
        || async {
            let body = get_json(&format!("{api}/api/v1/jobs/e2e/runs?limit=100")).await?;
            let mut runs = body["runs"].as_array()?.clone();
            runs.sort_by_key(|r| r["scheduled_for"].as_str().unwrap_or_default().to_string());
            let first: Vec<_> = runs.into_iter().take(3).collect();
            (first.len() == 3 && first.iter().all(|r| r["status"] == "succeeded")).then_some(first)
        },
    )
    .await;

    let job = JobId::parse("e2e").unwrap();
    let slots: Vec<chrono::DateTime<chrono::Utc>> = runs
        .iter()
        .map(|r| r["scheduled_for"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        slots[0] > applied_at - chrono::Duration::seconds(1),
        "first slot {} predates the job",
        slots[0]
    );
    for pair in slots.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "slots are not consecutive: {slots:?}"
        );
    }
    for (run, slot) in runs.iter().zip(&slots) {
        assert_eq!(
            slot.timestamp_subsec_millis(),
            0,
            "interval slots align to whole seconds"
        );
        let run_id = RunId::derive(&job, *slot, TriggerKind::Schedule).to_string();
        assert_eq!(run["run_id"], run_id.as_str());
        assert_eq!(
            run["output"]["stdout"],
            format!("run {run_id} attempt 1\n").as_str()
        );
        assert_eq!(run["output"]["exit_code"], 0);
        assert_eq!(run["worker_id"], "w1");

        let detail = get_json(&format!("{api}/api/v1/runs/{run_id}"))
            .await
            .expect("run detail");
        let events: Vec<&str> = detail["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            events,
            [
                "RunScheduled",
                "RunDispatched",
                "RunStarted",
                "RunSucceeded"
            ]
        );
    }

    // The ledger has exactly one RunScheduled per slot.
    let ledger = stack.ledger();
    for run in &runs {
        let scheduled = ledger
            .iter()
            .filter(|e| e.run_id.to_string() == run["run_id"].as_str().unwrap())
            .filter(|e| matches!(e.kind, RunEventKind::RunScheduled { .. }))
            .count();
        assert_eq!(
            scheduled, 1,
            "run {} scheduled {scheduled} times",
            run["run_id"]
        );
    }

    // The CLI reads the same runs.
    let out = stack.kairosctl(&api, &["runs", "list", "e2e", "--limit", "100", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("runs list --json is JSON");
    let listed_ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    for run in &runs {
        assert!(listed_ids.contains(&run["run_id"].as_str().unwrap()));
    }
    // One run, as a person reads it: its fields and its history, from the API's typed answer.
    let run_id = runs[0]["run_id"].as_str().unwrap();
    let out = stack.kairosctl(&api, &["run", "get", run_id]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains(&format!("run_id:       {run_id}"))
            && shown.contains("status:       succeeded")
            && shown.contains("RunScheduled")
            && shown.contains("RunSucceeded"),
        "{shown}"
    );

    // A bad job file is refused with the reason, and nothing reaches the jobs topic.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "id: broken\nschedule:\n  cron: '0 0 25 * * *'\ntask:\n  shell:\n    command: ['true']\n",
    )
    .unwrap();
    let before = stack.read_all(&stack.kafka.topics().jobs()).len();
    let out = stack.kairosctl(&api, &["job", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid cron") && stderr.contains("broken"),
        "{stderr}"
    );
    assert_eq!(
        stack.read_all(&stack.kafka.topics().jobs()).len(),
        before,
        "a rejected job reached the topic"
    );

    stop_all(services).await;
}

//! Operator control with kairosctl on the real broker: pause and resume (missed slots follow the
//! misfire policy), a manual trigger, and a backfill that schedules nothing new when run twice.

use std::time::Duration;

use kairos_core::job::{MisfireKind, MisfirePolicy};
use kairos_core::run::{RunEvent, RunEventKind, SkipReason, TriggerKind};
use kairos_tests::{get_json, shell_job, stop_all, wait_for, Stack};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kairosctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn decisions(ledger: &[RunEvent], job: &str) -> Vec<RunEvent> {
    ledger
        .iter()
        .filter(|e| e.job_id.as_str() == job)
        .filter(|e| {
            matches!(
                e.kind,
                RunEventKind::RunScheduled { .. }
                    | RunEventKind::RunSkipped {
                        reason: SkipReason::Misfire
                    }
            )
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_job_fires_nothing_and_resumes_under_its_misfire_policy() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    let mut job = shell_job("pausable", "1s", "true");
    job.misfire = MisfirePolicy {
        policy: MisfireKind::FireOnce,
        grace: Duration::from_millis(500),
        ..MisfirePolicy::default()
    };
    stack.apply_job(job).await;
    wait_for(
        "two runs before the pause",
        Duration::from_secs(60),
        || async { (decisions(&stack.ledger(), "pausable").len() >= 2).then_some(()) },
    )
    .await;

    ok(stack.kairosctl(&api, &["job", "pause", "pausable"]));
    wait_for(
        "the API to show the job paused",
        Duration::from_secs(30),
        || async {
            let job = get_json(&format!("{api}/api/v1/jobs/pausable")).await?;
            (job["definition"]["paused"] == true).then_some(())
        },
    )
    .await;
    let paused_at = chrono::Utc::now();
    // The pause under test: several slots come due while the job is paused.
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(4)).await;
    let during = decisions(&stack.ledger(), "pausable");
    assert!(
        during
            .iter()
            .all(|e| e.at < paused_at + chrono::Duration::seconds(1)),
        "the paused job fired: {:?}",
        during
            .iter()
            .map(|e| (e.scheduled_for, e.at))
            .collect::<Vec<_>>()
    );

    ok(stack.kairosctl(&api, &["job", "resume", "pausable"]));
    let resumed_at = chrono::Utc::now();
    let after = wait_for(
        "an on-time run after the resume",
        Duration::from_secs(60),
        || async {
            let all = decisions(&stack.ledger(), "pausable");
            all.iter()
                .any(|e| {
                    e.scheduled_for > resumed_at
                        && matches!(e.kind, RunEventKind::RunScheduled { .. })
                })
                .then_some(all)
        },
    )
    .await;
    // Every slot has one decision; the slots missed during the pause were misfired but one.
    for pair in after.windows(2) {
        assert_eq!(
            pair[1].scheduled_for - pair[0].scheduled_for,
            chrono::Duration::seconds(1)
        );
    }
    // The slots missed during the pause are decided together when the resume is read, in one
    // pass (one decision time): the oldest misfired, the latest run. Which slot is the latest
    // depends on when the resume lands, so the pass is found by its first misfire.
    let resumed = after
        .iter()
        .find(|e| e.scheduled_for > paused_at && matches!(e.kind, RunEventKind::RunSkipped { .. }))
        .map(|e| e.at)
        .expect("slots of the pause were recorded as misfired");
    // (The same pass fires the next slot ahead, on time: it is not one of the missed.)
    let missed: Vec<&RunEvent> = after
        .iter()
        .filter(|e| e.at == resumed && e.scheduled_for <= resumed)
        .collect();
    assert!(
        missed.len() >= 3,
        "only {} slots were missed during the pause",
        missed.len()
    );
    let ran: Vec<_> = missed
        .iter()
        .filter(|e| matches!(e.kind, RunEventKind::RunScheduled { .. }))
        .map(|e| e.scheduled_for)
        .collect();
    assert_eq!(
        ran,
        [missed.last().unwrap().scheduled_for],
        "fire_once runs the latest missed slot on resume, and only that one"
    );
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trigger_runs_now_and_backfill_schedules_each_slot_once() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    let mut job = shell_job("daily", "1s", "echo $KAIROS_SCHEDULED_FOR");
    job.schedule = serde_json::from_value(
        serde_json::json!({"cron": "0 0 6 * * *", "timezone": "Europe/Berlin"}),
    )
    .unwrap();
    stack.apply_job(job).await;
    wait_for(
        "the API to know the job",
        Duration::from_secs(30),
        || async { get_json(&format!("{api}/api/v1/jobs/daily")).await },
    )
    .await;

    let out = ok(stack.kairosctl(&api, &["job", "trigger", "daily"]));
    assert!(out.contains("scheduled"), "{out}");
    let manual = wait_for(
        "the manual run to succeed",
        Duration::from_secs(60),
        || async {
            let runs = get_json(&format!("{api}/api/v1/jobs/daily/runs")).await?;
            runs["runs"]
                .as_array()?
                .iter()
                .find(|r| r["trigger"] == "manual" && r["status"] == "succeeded")
                .cloned()
        },
    )
    .await;
    assert_eq!(manual["attempt"], 1);

    // Five mornings, 06:00 Berlin = 05:00Z in January; run the backfill twice.
    let range = [
        "backfill",
        "daily",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-05T23:00:00Z",
    ];
    for _ in 0..2 {
        let out = ok(stack.kairosctl(&api, &range));
        assert!(out.contains("backfilled 5 slots"), "{out}");
    }
    let backfilled = wait_for(
        "five backfilled runs to succeed",
        Duration::from_secs(60),
        || async {
            let runs = get_json(&format!("{api}/api/v1/jobs/daily/runs?limit=100")).await?;
            let done: Vec<serde_json::Value> = runs["runs"]
                .as_array()?
                .iter()
                .filter(|r| r["trigger"] == "backfill" && r["status"] == "succeeded")
                .cloned()
                .collect();
            (done.len() >= 5).then_some(done)
        },
    )
    .await;
    let mut slots: Vec<&str> = backfilled
        .iter()
        .map(|r| r["scheduled_for"].as_str().unwrap())
        .collect();
    slots.sort();
    assert_eq!(
        slots,
        [
            "2026-01-01T05:00:00Z",
            "2026-01-02T05:00:00Z",
            "2026-01-03T05:00:00Z",
            "2026-01-04T05:00:00Z",
            "2026-01-05T05:00:00Z"
        ]
    );
    // The second backfill was recognised: each slot was scheduled twice, dispatched once.
    let ledger = stack.ledger();
    for run in &backfilled {
        let id = run["run_id"].as_str().unwrap();
        let count = |pick: fn(&RunEventKind) -> bool| {
            ledger
                .iter()
                .filter(|e| e.run_id.to_string() == id && pick(&e.kind))
                .count()
        };
        assert_eq!(
            count(|k| matches!(
                k,
                RunEventKind::RunScheduled {
                    trigger: TriggerKind::Backfill,
                    ..
                }
            )),
            2
        );
        assert_eq!(
            count(|k| matches!(k, RunEventKind::RunDispatched { .. })),
            1,
            "run {id} ran twice"
        );
    }
    stop_all(services).await;
}

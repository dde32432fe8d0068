//! A short task costs one ledger record fewer: the worker reports a start as a `RunStarted` of
//! its own only once the task has run `--report-start-after` (1 s by default). A task that ends
//! sooner reports its outcome alone, which records when it began; a longer one reports its start
//! then, dated when it began, not when it was sent.

use std::time::Duration;

use kairos_core::run::{RunEvent, RunEventKind};
use kairos_tests::{events_of, stop_all, wait_caught_up, wait_for, Stack};

/// The start an outcome records.
fn began(event: &RunEvent) -> Option<kairos_core::Timestamp> {
    match &event.kind {
        RunEventKind::RunSucceeded { output, .. } | RunEventKind::RunFailed { output, .. } => {
            output.started_at
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_task_reports_its_start_on_its_outcome_and_a_long_one_when_it_has_run_a_while() {
    let stack = Stack::new(3).await;
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker_with("w1", |config| {
            config.report_start_after = kairos_worker::DEFAULT_REPORT_START_AFTER;
        }),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    stack
        .apply_job(kairos_tests::shell_job("quick", "1s", "true"))
        .await;
    stack
        .apply_job(kairos_tests::shell_job("slow", "5s", "sleep 2"))
        .await;

    let ledger = wait_for(
        "three runs of `quick` and one of `slow` to succeed",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let succeeded = |job: &str| {
                events_of(&ledger, job)
                    .iter()
                    .filter(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
                    .count()
            };
            (succeeded("quick") >= 3 && succeeded("slow") >= 1).then_some(ledger)
        },
    )
    .await;

    for outcome in events_of(&ledger, "quick")
        .into_iter()
        .filter(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
    {
        let run: Vec<&RunEvent> = ledger
            .iter()
            .filter(|e| e.run_id == outcome.run_id)
            .collect();
        assert!(
            !run.iter()
                .any(|e| matches!(e.kind, RunEventKind::RunStarted { .. })),
            "a task of `true` reported a RunStarted: {run:?}"
        );
        let began = began(outcome).expect("the outcome records when the task began");
        assert!(
            began >= outcome.scheduled_for && began <= outcome.at,
            "began {began}, slot {}, finished {}",
            outcome.scheduled_for,
            outcome.at
        );
    }

    let slow = events_of(&ledger, "slow");
    let outcome = slow
        .iter()
        .find(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
        .unwrap();
    let started = slow
        .iter()
        .find(|e| e.run_id == outcome.run_id && matches!(e.kind, RunEventKind::RunStarted { .. }))
        .expect("a task of two seconds reports its start");
    assert_eq!(
        Some(started.at),
        began(outcome),
        "the RunStarted sent a second in is dated when the task began"
    );
    assert!(outcome.at - started.at >= chrono::Duration::milliseconds(1900));

    // The run's state, as the aggregator serves it, has the start either way.
    let quick = events_of(&ledger, "quick");
    let run_id = quick
        .iter()
        .find(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
        .unwrap()
        .run_id;
    let api = services[3]
        .http_addr
        .expect("the aggregator serves its API");
    let run = wait_for("the run in the API", Duration::from_secs(20), || async {
        kairos_tests::get_json(&format!("http://{api}/api/v1/runs/{run_id}")).await
    })
    .await;
    assert!(
        run["started_at"].is_string(),
        "the API shows when the run started: {run}"
    );
    stop_all(services).await;
}

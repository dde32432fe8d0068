//! Retries with backoff on the real broker: a run that fails once and then succeeds, and one that
//! fails every attempt and is abandoned; every decision and its due time is on the ledger.

use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_core::run::{RunEvent, RunEventKind};
use kairos_runtime::codec;
use kairos_tests::{
    events_of, exact_retries, get_json, names, one_shot_job, stop_all, wait_for, Stack,
};

/// A one-shot job two seconds from now that retries with the given backoff.
fn one_shot(id: &str, script: &str, max_attempts: u32, initial: Duration) -> JobSpec {
    let mut job = one_shot_job(id, script, 2);
    job.retry = exact_retries(max_attempts, initial);
    job
}

/// Each RetryScheduled is due exactly the backoff after the failure it follows, and the next
/// dispatch comes no earlier.
fn assert_backoff(events: &[&RunEvent], delays_ms: &[i64]) {
    let failures: Vec<&RunEvent> = events
        .iter()
        .copied()
        .filter(|e| matches!(e.kind, RunEventKind::RunFailed { .. }))
        .collect();
    let retries: Vec<&RunEvent> = events
        .iter()
        .copied()
        .filter(|e| matches!(e.kind, RunEventKind::RetryScheduled { .. }))
        .collect();
    assert_eq!(retries.len(), delays_ms.len());
    for ((failure, retry), delay) in failures.iter().zip(&retries).zip(delays_ms) {
        let RunEventKind::RetryScheduled { attempt, due_at } = retry.kind else {
            unreachable!()
        };
        assert_eq!(
            due_at - failure.at,
            chrono::Duration::milliseconds(*delay),
            "retry {attempt}"
        );
        let dispatch = events
            .iter()
            .find(|e| matches!(e.kind, RunEventKind::RunDispatched { attempt: a, .. } if a == attempt))
            .expect("the retry was dispatched");
        assert!(
            dispatch.at >= due_at,
            "attempt {attempt} dispatched at {} before its due time {due_at}",
            dispatch.at
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_attempts_are_retried_with_backoff_until_success_or_abandonment() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    stack
        .apply_job(one_shot(
            "flaky",
            r#"[ "$KAIROS_ATTEMPT" -ge 2 ]"#,
            3,
            Duration::from_millis(300),
        ))
        .await;
    stack
        .apply_job(one_shot(
            "doomed",
            "echo no luck; exit 3",
            3,
            Duration::from_millis(200),
        ))
        .await;

    let api = format!("http://{}", services[3].http_addr.unwrap());
    for (job, status) in [("flaky", "succeeded"), ("doomed", "abandoned")] {
        let run = wait_for(
            &format!("{job} to end {status}"),
            Duration::from_secs(60),
            || async {
                let body = get_json(&format!("{api}/api/v1/jobs/{job}/runs")).await?;
                body["runs"]
                    .as_array()?
                    .first()
                    .filter(|r| r["status"] == status)
                    .cloned()
            },
        )
        .await;
        assert_eq!(run["attempt"], if job == "flaky" { 2 } else { 3 });
    }

    let ledger = stack.ledger();
    let flaky = events_of(&ledger, "flaky");
    assert_eq!(
        names(&flaky),
        [
            "RunScheduled",
            "RunDispatched(1)",
            "RunStarted(1)",
            "RunFailed(1)",
            "RetryScheduled(2)",
            "RunDispatched(2)",
            "RunStarted(2)",
            "RunSucceeded(2)"
        ]
    );
    assert_backoff(&flaky, &[300]);

    let doomed = events_of(&ledger, "doomed");
    assert_eq!(
        names(&doomed),
        [
            "RunScheduled",
            "RunDispatched(1)",
            "RunStarted(1)",
            "RunFailed(1)",
            "RetryScheduled(2)",
            "RunDispatched(2)",
            "RunStarted(2)",
            "RunFailed(2)",
            "RetryScheduled(3)",
            "RunDispatched(3)",
            "RunStarted(3)",
            "RunFailed(3)",
            "RunAbandoned(3)",
        ]
    );
    assert_backoff(&doomed, &[200, 400]);

    // The abandoned run raised one alert; the run that succeeded on retry raised none. (Alerts
    // about workers are left out: on a loaded machine a test worker's 300 ms beats can be late
    // enough to count as lost.)
    let about_runs = || {
        let mut alerts = stack.alerts();
        alerts.retain(|a| a.run_id.is_some());
        alerts
    };
    let alerts = wait_for(
        "the alert for the abandoned run",
        Duration::from_secs(30),
        || async {
            let alerts = about_runs();
            (!alerts.is_empty()).then_some(alerts)
        },
    )
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].key(), alerts[0].kind),
        ("doomed", codec::AlertKind::RunAbandoned)
    );
    assert_eq!(alerts[0].run_id, Some(doomed[0].run_id));
    assert!(
        alerts[0]
            .message
            .contains("after 3 attempt(s): exited with status 3"),
        "{}",
        alerts[0].message
    );

    // `job explain` tells the story in words.
    let out = stack.kairosctl(&api, &["job", "explain", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let story = String::from_utf8_lossy(&out.stdout);
    for line in [
        "fired on schedule",
        "attempt 1 failed: exited with status 3",
        // The delay shown is from when the retry was recorded, a little after the failure; the
        // backoff itself is checked above.
        "retry: attempt 2 due in 0.",
        "retry: attempt 3 due in 0.",
        "abandoned after 3 attempts",
    ] {
        assert!(
            story.contains(line),
            "`job explain` lacks {line:?}:\n{story}"
        );
    }
    stop_all(services).await;
}

/// A retry that is due before its `RetryScheduled` is even read back (a 1 ms backoff) is taken
/// when it is read back, and the dispatcher goes on reading meanwhile: it once spun on the
/// overdue timer and never read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_due_before_it_is_read_back_does_not_stall_the_dispatcher() {
    let stack = Stack::new(1).await;
    let services = stack.start_pipeline().await;
    stack
        .apply_job(one_shot("eager", "exit 1", 3, Duration::from_millis(1)))
        .await;
    stack.apply_job(one_shot_job("after", "true", 4)).await;
    for (job, last) in [("eager", "RunAbandoned"), ("after", "RunSucceeded")] {
        wait_for(
            &format!("{job} to end with {last}"),
            Duration::from_secs(30),
            || async {
                let ledger = stack.job_ledger(job);
                ledger.iter().any(|e| e.kind.name() == last).then_some(())
            },
        )
        .await;
    }
    let eager = stack.job_ledger("eager");
    let dispatched = eager
        .iter()
        .filter(|e| e.kind.name() == "RunDispatched")
        .count();
    assert_eq!(dispatched, 3, "{:?}", names(&events_of(&eager, "eager")));
    stop_all(services).await;
}

//! Timeouts on the real broker: the worker kills a shell task and every process it started at the
//! task's timeout, and the dispatcher times out an attempt that nobody reports on.

use std::time::Duration;

use kairos_core::decide::DEADLINE_REPORTER;
use kairos_core::job::{Backoff, JobSpec, RetryPolicy};
use kairos_core::run::RunEventKind;
use kairos_tests::{one_shot_job, stop_all, wait_caught_up, wait_for, wait_process_gone, Stack};

fn one_shot(id: &str, script: &str, timeout: Duration) -> JobSpec {
    let mut job = one_shot_job(id, script, 2);
    job.timeout = Some(timeout);
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_kills_a_timed_out_task_with_its_children() {
    let stack = Stack::new(3).await;
    let services = [
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker("w1"),
    ];
    wait_caught_up(&services).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The child records its pid; the task times out after 1 s.
    let script = format!("sleep 60 & echo $! > {}; sleep 60", pid_file.display());
    stack
        .apply_job(one_shot("hung", &script, Duration::from_secs(1)))
        .await;

    let timed_out = wait_for(
        "the hung task to time out",
        Duration::from_secs(60),
        || async {
            stack
                .job_ledger("hung")
                .into_iter()
                .find(|e| matches!(e.kind, RunEventKind::RunTimedOut { .. }))
        },
    )
    .await;
    let RunEventKind::RunTimedOut {
        attempt, worker_id, ..
    } = &timed_out.kind
    else {
        unreachable!()
    };
    assert_eq!(
        (*attempt, worker_id.as_str()),
        (1, "w1"),
        "the worker, not the backstop, timed it out"
    );
    let started = stack
        .job_ledger("hung")
        .into_iter()
        .find(|e| matches!(e.kind, RunEventKind::RunStarted { .. }))
        .expect("the task started");
    let ran_for = (timed_out.at - started.at).to_std().unwrap();
    assert!(
        ran_for >= Duration::from_secs(1) && ran_for < Duration::from_secs(10),
        "killed after {ran_for:?}"
    );

    wait_process_gone(&pid_file, "the child of the timed-out task to die").await;
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dispatcher_times_out_attempts_nobody_reports_on_and_retries_them() {
    let stack = Stack::new(3).await;
    let margin = Duration::from_secs(1);
    let services = [
        stack.trigger("trigger"),
        stack.dispatcher_with_margin("dispatcher", margin),
    ];
    wait_caught_up(&services).await;
    // No worker serves this pool: every attempt is dispatched and never heard of again.
    let mut job = one_shot("unserved", "true", Duration::from_secs(1));
    job.pool = "nobody".into();
    job.retry = RetryPolicy {
        max_attempts: 2,
        backoff: Backoff {
            initial: Duration::from_millis(200),
            ..Backoff::default()
        },
    };
    stack.apply_job(job).await;

    let events = wait_for(
        "the unserved run to be abandoned",
        Duration::from_secs(60),
        || async {
            let events = stack.job_ledger("unserved");
            events
                .iter()
                .any(|e| matches!(e.kind, RunEventKind::RunAbandoned { .. }))
                .then_some(events)
        },
    )
    .await;
    let names: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        names,
        [
            "RunScheduled",
            "RunDispatched",
            "RunTimedOut",
            "RetryScheduled",
            "RunDispatched",
            "RunTimedOut",
            "RunAbandoned"
        ]
    );
    for pair in events.windows(2) {
        if let (RunEventKind::RunDispatched { .. }, RunEventKind::RunTimedOut { worker_id, .. }) =
            (&pair[0].kind, &pair[1].kind)
        {
            assert_eq!(worker_id, DEADLINE_REPORTER);
            let waited = (pair[1].at - pair[0].at).to_std().unwrap();
            assert!(
                waited >= Duration::from_secs(2),
                "timed out after {waited:?}, before timeout + margin"
            );
        }
    }
    stop_all(services).await;
}

/// A task queued on a busy pool is not timed out while its worker lives: it waits its turn. (The
/// dispatcher once timed out every task queued past its deadline and retried it, onto the same
/// queue, which made the queue longer and more tasks late: the retry storm of the chaos runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_queued_behind_others_on_a_live_worker_are_not_timed_out_while_they_wait() {
    let stack = Stack::new(2).await;
    let margin = Duration::from_secs(1);
    let services = [
        stack.trigger("trigger"),
        stack.dispatcher_with_margin("dispatcher", margin),
        stack.worker_with("alone", |config| config.max_concurrent = 1),
    ];
    wait_caught_up(&services).await;
    // A run a second that takes 1.5 s, on a worker that runs one task at a time: the queue
    // grows by half a second a second, past each task's deadline (2 s + 1 s) within seconds.
    let mut job = kairos_tests::shell_job("busy", "1s", "sleep 1.5");
    job.timeout = Some(Duration::from_secs(2));
    job.retry = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let applied_at = chrono::Utc::now();
    stack.apply_job(job).await;
    // Ten runs have finished: the last ones waited far longer than their deadline.
    let ledger = wait_for(
        "ten runs of `busy` to succeed",
        Duration::from_secs(60),
        || async {
            let ledger = stack.job_ledger("busy");
            let succeeded = ledger
                .iter()
                .filter(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
                .count();
            (succeeded >= 10).then_some(ledger)
        },
    )
    .await;
    let waited = ledger
        .iter()
        .filter_map(|e| match &e.kind {
            RunEventKind::RunSucceeded { output, .. } => output.started_at,
            _ => None,
        })
        .zip(
            ledger
                .iter()
                .filter(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. })),
        )
        .map(|(started, e)| (started - e.scheduled_for).to_std().unwrap_or_default())
        .max()
        .unwrap();
    assert!(
        waited > Duration::from_secs(3),
        "no task waited past its deadline ({waited:?} at most): the test shows nothing"
    );
    let timed_out: Vec<_> = ledger
        .iter()
        .filter(|e| matches!(&e.kind, RunEventKind::RunTimedOut { worker_id, .. } if worker_id == DEADLINE_REPORTER))
        .collect();
    assert!(
        timed_out.is_empty(),
        "the dispatcher timed out tasks a live worker had queued (applied {applied_at}): {timed_out:?}"
    );
    stop_all(services).await;
}

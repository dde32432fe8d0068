//! Cancellation on the real broker: `kairosctl run cancel` stops a running shell task with its
//! children and removes a queued run, and the `replace` overlap policy cancels the active run when
//! the next one comes due.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_core::job::{JobSpec, OverlapPolicy};
use kairos_core::run::{RunEvent, RunEventKind, RunId};
use kairos_tests::{get_json, shell_job, stop_all, wait_for, wait_process_gone, Stack};

fn runs_of(ledger: &[RunEvent], job: &str) -> BTreeMap<RunId, Vec<RunEventKind>> {
    let mut runs: BTreeMap<RunId, Vec<RunEventKind>> = BTreeMap::new();
    for event in ledger.iter().filter(|e| e.job_id.as_str() == job) {
        runs.entry(event.run_id)
            .or_default()
            .push(event.kind.clone());
    }
    runs
}

fn has(kinds: &[RunEventKind], pick: fn(&RunEventKind) -> bool) -> bool {
    kinds.iter().any(pick)
}

async fn cancel(stack: &Stack, api: &str, run: RunId) {
    let out = stack.kairosctl(
        api,
        &["run", "cancel", &run.to_string(), "--reason", "test"],
    );
    assert!(
        out.status.success(),
        "kairosctl run cancel failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn status(api: &str, run: RunId) -> Option<String> {
    get_json(&format!("{api}/api/v1/runs/{run}"))
        .await
        .and_then(|r| r["status"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_stops_a_running_task_and_removes_a_queued_run() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    let dir = tempfile::tempdir().unwrap();
    // Every second a run that would take a minute, whose child records its pid in a file named
    // after the run; `queue` keeps one run waiting behind it.
    let script = format!(
        "sleep 60 & echo $! > {}/$KAIROS_RUN_ID.pid; sleep 60",
        dir.path().display()
    );
    let mut job: JobSpec = shell_job("long", "1s", &script);
    job.overlap = OverlapPolicy::Queue;
    // No timeout: only the cancel may stop the task.
    job.timeout = None;
    stack.apply_job(job).await;

    let (running, waiting) = wait_for(
        "one run started and one waiting",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let runs = runs_of(&ledger, "long");
            let started = runs
                .iter()
                .find(|(_, k)| has(k, |k| matches!(k, RunEventKind::RunStarted { .. })))?
                .0;
            // Slots are fired a second ahead, so a later slot also shows only its
            // `RunScheduled` until its start, when `queue` skips it. The run that waits is the
            // oldest one scheduled and nothing more, once its start has come.
            let queued = ledger
                .iter()
                .filter(|e| {
                    e.job_id.as_str() == "long"
                        && runs[&e.run_id].len() == 1
                        && matches!(e.kind, RunEventKind::RunScheduled { .. })
                })
                .min_by_key(|e| (e.scheduled_for, e.run_id))
                .filter(|e| e.scheduled_for <= chrono::Utc::now())?
                .run_id;
            Some((*started, queued))
        },
    )
    .await;

    cancel(&stack, &api, waiting).await;
    cancel(&stack, &api, running).await;
    for run in [running, waiting] {
        wait_for(
            &format!("run {run} to be cancelled"),
            Duration::from_secs(30),
            || async { (status(&api, run).await.as_deref() == Some("cancelled")).then_some(()) },
        )
        .await;
    }
    let runs = runs_of(&stack.ledger(), "long");
    assert!(
        !has(&runs[&waiting], |k| matches!(
            k,
            RunEventKind::RunDispatched { .. }
        )),
        "the queued run was dispatched: {:?}",
        runs[&waiting]
    );
    // The running task and its child were killed.
    let pid_file = dir.path().join(format!("{running}.pid"));
    wait_process_gone(&pid_file, "the child of the cancelled task to die").await;

    let out = stack.kairosctl(&api, &["run", "cancel", &running.to_string()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already over"));
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_cancels_the_active_run_when_the_next_one_comes_due() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let mut job = shell_job("replaced", "2s", "sleep 60");
    job.overlap = OverlapPolicy::Replace;
    stack.apply_job(job).await;

    let runs = wait_for(
        "two runs replaced by their successors",
        Duration::from_secs(60),
        || async {
            let runs = runs_of(&stack.ledger(), "replaced");
            let replaced = runs
                .values()
                .filter(|k| {
                    has(k, |k| matches!(k, RunEventKind::RunStarted { .. }))
                        && has(k, |k| matches!(k, RunEventKind::RunCancelled { .. }))
                })
                .count();
            (replaced >= 2).then_some(runs)
        },
    )
    .await;
    // Every run but the newest two is over, and no run succeeded or failed: each was cut short.
    let open = runs
        .values()
        .filter(|k| !has(k, |k| matches!(k, RunEventKind::RunCancelled { .. })))
        .count();
    assert!(open <= 2, "{open} runs are still active: {runs:?}");
    assert!(runs.values().all(|k| !has(k, |k| matches!(
        k,
        RunEventKind::RunSucceeded { .. } | RunEventKind::RunFailed { .. }
    ))));
    stop_all(services).await;
}

//! Workers dying and stopping on the real broker. A worker killed with `kill -9` mid-task has its
//! attempt recorded as lost and retried on the pool's other worker, which skips the dead attempt
//! when its task is redelivered. A worker told to stop finishes what it runs within its drain
//! timeout, and hands back what it cannot finish to the next worker, which runs the same attempt.

use std::time::Duration;

use kairos_core::run::RunEventKind;
use kairos_tests::{
    events_of, exact_retries, get_json, names, one_shot_job, stop_all, wait_caught_up, wait_for,
    wait_process_gone, Stack,
};

async fn live_workers(api: &str) -> Option<Vec<String>> {
    let workers = get_json(&format!("{api}/api/v1/workers")).await?;
    Some(
        workers["workers"]
            .as_array()?
            .iter()
            .filter(|w| w["status"] == "live")
            .filter_map(|w| w["worker_id"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Waits for the job's first attempt to start; returns the worker that started it.
async fn first_starter(stack: &Stack, job: &str) -> String {
    let started = || async {
        stack
            .job_ledger(job)
            .into_iter()
            .find_map(|e| match e.kind {
                RunEventKind::RunStarted { worker_id, .. } => Some(worker_id),
                _ => None,
            })
    };
    wait_for(
        &format!("the first attempt of {job} to start"),
        Duration::from_secs(60),
        started,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_task_has_its_attempt_lost_and_retried_on_the_other_worker() {
    let stack = Stack::new(2).await;
    let services = [
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    let api = format!("http://{}", services[2].http_addr.unwrap());
    let mut workers = vec![
        ("wa", stack.worker_process("wa")),
        ("wb", stack.worker_process("wb")),
    ];
    wait_for("both workers live", Duration::from_secs(60), || async {
        live_workers(&api).await.filter(|live| live.len() == 2)
    })
    .await;

    // The first attempt sleeps long enough to be killed mid-task; any later one succeeds at once.
    let marker = stack.data_dir("attempted");
    let script = format!(
        "if [ -f {m} ]; then echo second; exit 0; fi; touch {m}; sleep 60",
        m = marker.display()
    );
    let mut job = one_shot_job("fragile", &script, 2);
    job.timeout = Some(Duration::from_secs(120));
    job.retry = exact_retries(3, Duration::from_millis(100));
    stack.apply_job(job).await;
    let doomed = first_starter(&stack, "fragile").await;
    let index = workers.iter().position(|(id, _)| *id == doomed).unwrap();
    let (_, process) = workers.remove(index);
    let (survivor, _) = workers[0];
    process.kill9().await;

    let ledger = wait_for(
        "the run to succeed after its worker died",
        Duration::from_secs(90),
        || async {
            let ledger = stack.ledger();
            ledger
                .iter()
                .any(|e| {
                    e.job_id.as_str() == "fragile"
                        && matches!(e.kind, RunEventKind::RunSucceeded { .. })
                })
                .then_some(ledger)
        },
    )
    .await;
    let events = events_of(&ledger, "fragile");
    assert_eq!(
        names(&events),
        [
            "RunScheduled",
            "RunDispatched(1)",
            "RunStarted(1)",
            "RunLost(1)",
            "RetryScheduled(2)",
            "RunDispatched(2)",
            // Over at once: its start is on its outcome (`--report-start-after`).
            "RunSucceeded(2)",
        ],
        "the dead attempt is lost, retried once, and not run again on redelivery"
    );
    for event in &events {
        if let RunEventKind::RunStarted {
            attempt: 2,
            worker_id,
        }
        | RunEventKind::RunSucceeded {
            attempt: 2,
            worker_id,
            ..
        } = &event.kind
        {
            assert_eq!(worker_id, survivor, "the retry ran on the surviving worker");
        }
    }
    let run = get_json(&format!("{api}/api/v1/jobs/fragile/runs"))
        .await
        .unwrap();
    assert_eq!(run["runs"][0]["status"], "succeeded");
    assert_eq!(run["runs"][0]["worker_id"], survivor);
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_worker_finishes_within_its_drain_timeout_and_hands_back_the_rest() {
    let stack = Stack::new(2).await;
    let services = [
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;

    // A task that fits in the drain timeout finishes on the stopping worker.
    let patient = stack.worker_with("patient", |c| c.drain_timeout = Duration::from_secs(30));
    patient.caught_up().await;
    stack.apply_job(one_shot_job("short", "sleep 2", 1)).await;
    first_starter(&stack, "short").await;
    patient
        .stop()
        .await
        .expect("the worker drains and stops cleanly");
    let short = stack.ledger();
    assert_eq!(
        names(&events_of(&short, "short")),
        [
            "RunScheduled",
            "RunDispatched(1)",
            "RunStarted(1)",
            "RunSucceeded(1)"
        ],
        "the run finished before the worker stopped"
    );

    // A task longer than the drain timeout is killed, not reported, and runs again on the next
    // worker as the same attempt. The first execution records its pid, the second just succeeds.
    let impatient = stack.worker_with("impatient", |c| c.drain_timeout = Duration::from_secs(1));
    impatient.caught_up().await;
    let pid_file = stack.data_dir("long.pid");
    let script = format!(
        "if [ -f {p} ]; then exit 0; fi; echo $$ > {p}; exec sleep 60",
        p = pid_file.display()
    );
    let mut job = one_shot_job("long", &script, 1);
    job.timeout = Some(Duration::from_secs(120));
    stack.apply_job(job).await;
    first_starter(&stack, "long").await;
    impatient
        .stop()
        .await
        .expect("the worker hands back and stops cleanly");
    wait_process_gone(&pid_file, "the handed-back task").await;
    let outcomes = names(&events_of(&stack.ledger(), "long"));
    assert_eq!(
        outcomes,
        ["RunScheduled", "RunDispatched(1)", "RunStarted(1)"],
        "a handed-back attempt has no outcome"
    );

    let next = stack.worker("next");
    wait_for(
        "the handed-back attempt to succeed on the next worker",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let events = names(&events_of(&ledger, "long"));
            events
                .contains(&"RunSucceeded(1)".to_string())
                .then_some(())
        },
    )
    .await;
    let ledger = stack.ledger();
    let events = events_of(&ledger, "long");
    assert_eq!(
        names(&events),
        [
            "RunScheduled",
            "RunDispatched(1)",
            "RunStarted(1)",
            "RunStarted(1)",
            "RunSucceeded(1)"
        ],
        "the same attempt ran again, with no retry spent"
    );
    assert!(matches!(
        &events[4].kind,
        RunEventKind::RunSucceeded { worker_id, .. } if worker_id == "next"
    ));
    stop_all(services.into_iter().chain([next])).await;
}

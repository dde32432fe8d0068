//! State is a cache: wipe any service's RocksDB mid-stream and it rebuilds from the topics, with no
//! lost or repeated run, and a from-scratch rebuild reproduces the live state digest.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_core::run::{RunEventKind, RunId, TriggerKind};
use kairos_core::JobId;
use kairos_tests::{assert_same_state, get_json, shell_job, wait_for, Service, Stack};

async fn succeeded_runs(api: &str, job: &str) -> usize {
    let Some(body) = get_json(&format!("{api}/api/v1/jobs/{job}/runs?limit=1000")).await else {
        return 0;
    };
    body["runs"].as_array().map_or(0, |runs| {
        runs.iter().filter(|r| r["status"] == "succeeded").count()
    })
}

fn is_outcome(kind: &RunEventKind) -> bool {
    matches!(
        kind,
        RunEventKind::RunSucceeded { .. }
            | RunEventKind::RunSkipped { .. }
            | RunEventKind::RunCancelled { .. }
    )
}

async fn wait_for_runs(api: &str, job: &str, at_least: usize) {
    wait_for(
        &format!("{at_least} succeeded runs of {job}"),
        Duration::from_secs(90),
        || async { (succeeded_runs(api, job).await >= at_least).then_some(()) },
    )
    .await;
}

/// Stops a service, deletes its store, and starts it again on an empty one.
async fn wipe_and_restart(
    stack: &Stack,
    service: Service,
    make: impl Fn(&Stack) -> Service,
) -> Service {
    let dir = service.data_dir.clone().unwrap();
    service.stop().await.expect("service stopped cleanly");
    std::fs::remove_dir_all(&dir).expect("wiping the store");
    make(stack)
}

/// Checks that a rebuild from scratch into a new directory reproduces the live store.
async fn assert_rebuild_matches(what: &str, live: Service, rebuild: Service) {
    let live = live.stop_and_read_state().await;
    rebuild.caught_up().await;
    assert_same_state(what, live, rebuild.stop_and_read_state().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiping_each_service_mid_stream_loses_and_repeats_nothing() {
    let stack = Stack::new(3).await;
    let services: [Service; 4] = stack.start_pipeline().await.try_into().ok().expect("four");
    let [mut trigger, mut dispatcher, worker, mut aggregator] = services;
    stack
        .apply_job(shell_job("steady", "1s", "echo tick"))
        .await;
    // A job that will not fire during the test, so the trigger's state has something stable in it.
    let mut yearly = shell_job("yearly", "1s", "true");
    yearly.schedule = serde_json::from_value(
        serde_json::json!({"cron": "0 0 0 1 1 *", "timezone": "Europe/Berlin"}),
    )
    .unwrap();
    stack.apply_job(yearly).await;

    let api = |a: &Service| format!("http://{}", a.http_addr.unwrap());
    wait_for_runs(&api(&aggregator), "steady", 2).await;

    dispatcher = wipe_and_restart(&stack, dispatcher, |s| s.dispatcher("dispatcher")).await;
    wait_for_runs(&api(&aggregator), "steady", 4).await;
    trigger = wipe_and_restart(&stack, trigger, |s| s.trigger("trigger")).await;
    wait_for_runs(&api(&aggregator), "steady", 6).await;
    aggregator = wipe_and_restart(&stack, aggregator, |s| s.aggregator("aggregator")).await;
    wait_for_runs(&api(&aggregator), "steady", 8).await;

    // Stop the stream and let every run finish. (A run fired ahead of a slot after the deletion
    // is cancelled before it starts: that is its outcome.)
    stack
        .produce(&stack.kafka.topics().jobs(), "steady", None)
        .await;
    let ledger = wait_for(
        "every run of steady to reach an outcome",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let mut open: BTreeMap<String, bool> = BTreeMap::new();
            for event in ledger.iter().filter(|e| e.job_id.as_str() == "steady") {
                let done = is_outcome(&event.kind);
                *open.entry(event.run_id.to_string()).or_default() |= done;
            }
            let api_count = get_json(&format!(
                "{}/api/v1/jobs/steady/runs?limit=1000",
                api(&aggregator)
            ))
            .await
            .and_then(|b| {
                b["runs"].as_array().map(|r| {
                    r.iter()
                        .filter(|r| {
                            ["succeeded", "skipped", "cancelled"]
                                .contains(&r["status"].as_str().unwrap_or_default())
                        })
                        .count()
                })
            });
            (open.values().all(|done| *done) && api_count == Some(open.len())).then_some(ledger)
        },
    )
    .await;

    // Ledger: each slot is fired once (RunScheduled, or a recorded misfire), no slot is missing,
    // and each run has at most one dispatch and exactly one outcome.
    let job = JobId::parse("steady").unwrap();
    let mut per_run: BTreeMap<RunId, (chrono::DateTime<chrono::Utc>, Vec<&RunEventKind>)> =
        BTreeMap::new();
    for event in ledger.iter().filter(|e| e.job_id == job) {
        assert_eq!(
            event.run_id,
            RunId::derive(&job, event.scheduled_for, TriggerKind::Schedule)
        );
        per_run
            .entry(event.run_id)
            .or_insert((event.scheduled_for, vec![]))
            .1
            .push(&event.kind);
    }
    let misfire = |k: &RunEventKind| {
        matches!(
            k,
            RunEventKind::RunSkipped {
                reason: kairos_core::SkipReason::Misfire
            }
        )
    };
    for (run, (_, kinds)) in &per_run {
        let count = |f: &dyn Fn(&RunEventKind) -> bool| kinds.iter().filter(|k| f(k)).count();
        let fired = count(&|k| matches!(k, RunEventKind::RunScheduled { .. }) || misfire(k));
        assert_eq!(fired, 1, "run {run} was fired {fired} times: {kinds:?}");
        let outcomes = count(&|k| is_outcome(k));
        assert_eq!(outcomes, 1, "run {run} has {outcomes} outcomes: {kinds:?}");
        let dispatches = count(&|k| matches!(k, RunEventKind::RunDispatched { .. }));
        assert!(
            dispatches <= 1,
            "run {run} was dispatched {dispatches} times: {kinds:?}"
        );
    }
    let mut slots: Vec<_> = per_run.values().map(|(slot, _)| *slot).collect();
    slots.sort();
    for pair in slots.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "a slot is missing between {} and {}",
            pair[0],
            pair[1]
        );
    }
    assert!(slots.len() >= 8, "only {} slots", slots.len());

    // A rebuild from scratch reproduces each service's live state.
    assert_rebuild_matches(
        "dispatcher",
        dispatcher,
        stack.dispatcher("dispatcher-rebuild"),
    )
    .await;
    assert_rebuild_matches(
        "aggregator",
        aggregator,
        stack.aggregator("aggregator-rebuild"),
    )
    .await;
    assert_rebuild_matches("trigger", trigger, stack.trigger("trigger-rebuild")).await;
    worker.stop().await.expect("worker stopped cleanly");
}

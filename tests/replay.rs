//! `kairosctl replay`: each stateful service, stopped, replayed from the earliest offsets and
//! started again, rebuilds exactly the state it had (same digest); a worker pool replayed from a
//! time gets its tasks again and skips those whose attempt is over, so nothing runs again and no
//! decision changes; a running service is refused.

use std::process::Stdio;
use std::time::Duration;

use kairos_tests::{
    assert_same_state, free_addr, get_json, shell_job, stop_all, wait_for, wait_skipped, Service,
    Stack,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Runs `kairosctl` with `args` against the stack; fails the test unless it succeeds.
fn kairosctl_ok(stack: &Stack, args: &[&str]) -> String {
    let out = stack.kairosctl("http://127.0.0.1:1", args);
    assert!(
        out.status.success(),
        "kairosctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs until `job` has `runs` succeeded runs, then pauses it and waits until the last of its
/// runs is over, so that nothing changes any service's state while it is replayed.
async fn settle(stack: &Stack, api: &str, job: &str, runs: usize) {
    wait_for(
        &format!("{runs} runs of {job}"),
        Duration::from_secs(60),
        || async {
            let body = get_json(&format!("{api}/api/v1/jobs/{job}/runs?status=succeeded")).await?;
            (body["runs"].as_array()?.len() >= runs).then_some(())
        },
    )
    .await;
    let out = stack.kairosctl(api, &["job", "pause", job]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("every run to be over", Duration::from_secs(30), || async {
        let body = get_json(&format!("{api}/api/v1/jobs/{job}")).await?;
        let paused = body["definition"]["paused"] == true;
        let pending = get_json(&format!(
            "{api}/api/v1/jobs/{job}/runs?status=scheduled,dispatched,started,retry_scheduled"
        ))
        .await?;
        (paused && pending["runs"].as_array()?.is_empty()).then_some(())
    })
    .await;
}

/// Stops a service, replays it from the earliest offsets, starts it again with `start`, and
/// checks that the rebuilt state is the live one.
async fn replay_and_compare(
    stack: &Stack,
    name: &str,
    service: Service,
    start: impl Fn() -> Service,
) -> Service {
    let dir = service.data_dir.clone().expect("a stateful service");
    let live = service.stop_and_read_state().await;
    let dir_arg = dir.to_string_lossy().into_owned();
    let report: serde_json::Value = serde_json::from_str(&kairosctl_ok(
        stack,
        &[
            "replay",
            name,
            "--to-earliest",
            "--data-dir",
            &dir_arg,
            "--json",
        ],
    ))
    .expect("replay --json prints JSON");
    assert_eq!(report["dropped_store"], true, "{report}");
    assert!(!dir.exists(), "the store is dropped");
    let restarted = start();
    restarted.caught_up().await;
    let state = restarted.stop_and_read_state().await;
    assert!(
        state.1.len() > 3,
        "{name} rebuilt something: {:?}",
        state.1.keys()
    );
    assert_same_state(
        &format!("{name} replayed from the earliest offsets"),
        live,
        state,
    );
    start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_each_service_rebuilds_the_same_state() {
    let stack = Stack::new(3).await;
    let services: [Service; 4] = stack.start_pipeline().await.try_into().ok().expect("four");
    let [mut trigger, mut dispatcher, worker, mut aggregator] = services;
    let api = format!("http://{}", aggregator.http_addr.unwrap());
    stack
        .apply_job(shell_job("steady", "1s", "echo tick"))
        .await;
    stack.apply_job(shell_job("other", "1s", "true")).await;
    settle(&stack, &api, "steady", 4).await;
    settle(&stack, &api, "other", 1).await;

    // A running service is refused: its group has a live member.
    let dir = stack.data_dir("trigger").to_string_lossy().into_owned();
    let refused = stack.kairosctl(
        &api,
        &["replay", "trigger", "--to-earliest", "--data-dir", &dir],
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("live member") && message.contains("stop every instance"),
        "{message}"
    );
    assert!(stack.data_dir("trigger").exists(), "nothing was dropped");

    trigger = replay_and_compare(&stack, "trigger", trigger, || stack.trigger("trigger")).await;
    dispatcher = replay_and_compare(&stack, "dispatcher", dispatcher, || {
        stack.dispatcher("dispatcher")
    })
    .await;

    // The aggregator, watched: kairosctl waits for it and reports the rebuild.
    let dir = aggregator.data_dir.clone().unwrap();
    let live = aggregator.stop_and_read_state().await;
    let ops = free_addr();
    let bin = std::env::var("KAIROS_TEST_BIN_DIR").unwrap();
    let mut watcher = tokio::process::Command::new(format!("{bin}/kairosctl"))
        .args(["replay", "aggregator", "--to-earliest", "--data-dir"])
        .arg(&dir)
        .args(["--watch", &ops.to_string()])
        .env("KAIROS_BROKERS", &stack.kafka.brokers)
        .env("KAIROS_TOPIC_PREFIX", &stack.kafka.topic_prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running kairosctl replay --watch");
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .expect("kairosctl reports its reset")
        .unwrap()
        .unwrap_or_default();
    assert!(first.starts_with("reset"), "{first}");
    aggregator = stack.aggregator_with("aggregator", |c| c.service.metrics_addr = ops);
    let mut rest = vec![];
    while let Some(line) = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .expect("kairosctl finishes watching")
        .unwrap()
    {
        rest.push(line);
    }
    assert!(watcher.wait().await.unwrap().success());
    assert!(rest.iter().any(|l| l.starts_with("rebuilt")), "{rest:?}");
    aggregator.caught_up().await;
    assert_same_state(
        "aggregator replayed from the earliest offsets",
        live,
        aggregator.stop_and_read_state().await,
    );

    // The workers of a pool, replayed from a time before the jobs ran: every task is delivered
    // again, and the worker, finding on the ledger that its attempt is over, skips it: nothing
    // runs again and no decision changes.
    let digest = |service: &Service| {
        let addr = service.metrics_addr;
        async move {
            get_json(&format!("http://{addr}/debug/state"))
                .await
                .unwrap()["digest"]
                .clone()
        }
    };
    let before = digest(&dispatcher).await;
    worker.stop().await.unwrap();
    let before_ledger = stack.ledger().len();
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    kairosctl_ok(
        &stack,
        &["replay", "worker", "--pool", "default", "--to-time", &since],
    );
    let worker = stack.worker("w1");
    worker.caught_up().await;
    wait_skipped(
        "the replayed tasks to be skipped as over",
        Duration::from_secs(60),
        &worker,
        "already_over",
        5,
    )
    .await;
    let again: Vec<_> = stack.ledger().split_off(before_ledger);
    assert!(
        !again
            .iter()
            .any(|e| matches!(e.kind.name(), "RunStarted" | "RunSucceeded")),
        "a replayed task ran again: {again:?}"
    );
    wait_for(
        "the dispatcher to be caught up",
        Duration::from_secs(30),
        || async {
            let state =
                get_json(&format!("http://{}/debug/state", dispatcher.metrics_addr)).await?;
            (state["caught_up"] == true).then_some(())
        },
    )
    .await;
    assert_eq!(
        digest(&dispatcher).await,
        before,
        "the replay changed a decision"
    );
    stop_all([trigger, dispatcher, worker]).await;
}

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

/// Held by the test that floods the broker with a backlog and by the one that times beats: the
/// flood delays one worker's beats more than another's (the broker takes the connections' writes
/// in turn), and the timing test, sharing the broker, once took that for a lost worker.
static FLOODING_THE_BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// A dispatcher reading a long backlog on one partition still hears the heartbeats of the
/// workers running attempts on its other partitions, and so records none of them lost. (It once
/// read heartbeats only when no record was waiting: a rebalance that handed it a partition with
/// minutes of ledger to catch up left it deaf, and after fifteen beat intervals it called every
/// worker lost and retried everything they were running, the collapse of the 10-minute chaos run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_catching_up_one_partition_loses_no_live_worker_on_another() {
    let _alone = FLOODING_THE_BROKER.lock().await;
    use kairos_core::run::{RunEvent, RunId, SkipReason, TriggerKind};
    use kairos_core::JobId;
    use kairos_runtime::ledger::LedgerRecord;

    let stack = Stack::new(2).await;
    let mut services = vec![stack.trigger("trigger"), stack.dispatcher("dispatcher")];
    let worker = stack.worker("steady");
    wait_caught_up(&services).await;
    // An attempt that runs for a minute, on a worker that beats every 300 ms throughout.
    let mut job = one_shot_job("long", "sleep 60", 1);
    job.timeout = Some(Duration::from_secs(120));
    stack.apply_job(job).await;
    let long_partition = wait_for("`long` to start", Duration::from_secs(30), || async {
        let runs = stack.read_records(&stack.kafka.topics().runs());
        runs.iter()
            .find(|r| {
                r.payload
                    .as_deref()
                    .and_then(|p| kairos_runtime::codec::decode_run_event(p).ok())
                    .is_some_and(|e| {
                        e.job_id.as_str() == "long"
                            && matches!(e.kind, RunEventKind::RunStarted { .. })
                    })
            })
            .map(|r| r.partition)
    })
    .await;
    let dispatcher = services.remove(1);
    dispatcher.stop().await.unwrap();

    // Meanwhile the other partition's ledger grows by a long backlog of finished slots of
    // another job, which the dispatcher reads when it is back.
    let producer = stack.kafka.producer().unwrap();
    let runs = stack.kafka.topics().runs();
    let skipped = |job: &JobId, n: i64| {
        let slot = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + n).unwrap();
        RunEvent {
            job_id: job.clone(),
            run_id: RunId::derive(job, slot, TriggerKind::Schedule),
            scheduled_for: slot,
            at: slot,
            kind: RunEventKind::RunSkipped {
                reason: SkipReason::Overlap,
            },
            shard: None,
        }
    };
    let mut filler = None;
    for i in 0.. {
        let job = JobId::parse(&format!("filler-{i}")).unwrap();
        let record = LedgerRecord::of(&skipped(&job, 0), "trigger").unwrap();
        if producer.append(&runs, &record).await.unwrap().partition != long_partition {
            filler = Some(job);
            break;
        }
    }
    let filler = filler.unwrap();
    const BACKLOG: i64 = 80_000;
    for chunk in (1..BACKLOG).collect::<Vec<_>>().chunks(5_000) {
        let sends = chunk.iter().map(|n| {
            let record = LedgerRecord::of(&skipped(&filler, *n), "trigger").unwrap();
            let (producer, runs) = (&producer, &runs);
            async move { producer.append(runs, &record).await }
        });
        futures::future::try_join_all(sends).await.unwrap();
    }

    // The dispatcher comes back: `long`'s partition is caught up at once, the other is not.
    let started = std::time::Instant::now();
    let dispatcher = stack.dispatcher("dispatcher");
    dispatcher.caught_up().await;
    let catch_up = started.elapsed();
    // Fifteen 300 ms beats: the silence after which a deaf dispatcher called a worker lost.
    assert!(
        catch_up > Duration::from_secs(6),
        "the backlog was read in {catch_up:?}: too fast to show anything; make it longer"
    );
    let lost: Vec<RunEvent> = events_of(&stack.ledger(), "long")
        .into_iter()
        .filter(|e| matches!(e.kind, RunEventKind::RunLost { .. }))
        .cloned()
        .collect();
    assert!(
        lost.is_empty(),
        "a live worker's attempt was recorded lost while the dispatcher caught up ({catch_up:?}): {lost:?}"
    );
    services.push(dispatcher);
    services.push(worker);
    stop_all(services).await;
}

/// A worker's beats do not wait behind the records queued in its producer: with its producer
/// holding every record for 3 s (as a broker slow to answer would), its beats still arrive
/// within the silence the dispatcher allows, and it is never judged lost. (Beats once shared the
/// producer, and the connection, of outcomes and handovers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_producer_is_backed_up_still_beats_on_time() {
    let _alone = FLOODING_THE_BROKER.lock().await;
    use kairos_runtime::workers::{Heartbeats, Liveness};

    let stack = Stack::new(2).await;
    let slow = stack.worker_with("slow", |config| {
        config
            .service
            .kafka
            .properties
            .push(("linger.ms".into(), "3000".into()));
    });
    let steady = stack.worker("steady");
    let heartbeats = Heartbeats::follow(&stack.kafka).unwrap();
    wait_for(
        "both workers to be heard",
        Duration::from_secs(30),
        || async {
            let now = kairos_runtime::now();
            let registry = heartbeats.registry();
            let live = |worker| registry.liveness(worker, now) == Some(Liveness::Live);
            (live("slow") && live("steady")).then_some(())
        },
    )
    .await;
    // Two of the slow producer's 3 s holds, judged every 50 ms as a dispatcher would.
    let mut judge = tokio::time::interval(Duration::from_millis(50));
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        judge.tick().await;
        let now = kairos_runtime::now();
        let registry = heartbeats.registry();
        assert_ne!(
            registry.liveness("slow", now),
            Some(Liveness::Lost),
            "the slow worker was judged lost: its beats waited in its producer"
        );
    }
    stop_all(vec![slow, steady]).await;
}

/// A dispatcher that dies between recording a dispatch on the ledger and sending its task leaves
/// an attempt no worker will ever be given (found in the chaos runs: runs dispatched just before
/// a dispatcher's kill stayed dispatched to the end). Reproduced by writing such a dispatch onto
/// the ledger by hand: once no live worker of the pool has held its task for the unclaimed
/// limit, the dispatcher records the attempt lost, and the retry runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatch_whose_task_never_reached_the_workers_is_lost_and_retried() {
    use kairos_core::run::{RunEvent, RunId, TriggerKind};
    use kairos_core::JobId;

    let stack = Stack::new(2).await;
    let mut job = one_shot_job("orphaned", "echo ran", 3600);
    job.retry = exact_retries(3, Duration::from_millis(100));
    let definition = stack.apply_job(job).await;
    // A run asked for by hand, recorded dispatched, whose task never went out.
    let job_id = JobId::parse("orphaned").unwrap();
    let asked_at = chrono::Utc::now();
    let run_id = RunId::derive(&job_id, asked_at, TriggerKind::Manual);
    for kind in [
        RunEventKind::RunScheduled {
            trigger: TriggerKind::Manual,
            definition_offset: definition.offset,
        },
        RunEventKind::RunDispatched {
            attempt: 1,
            pool: "default".into(),
        },
    ] {
        let event = RunEvent {
            job_id: job_id.clone(),
            run_id,
            scheduled_for: asked_at,
            at: asked_at,
            kind,
            shard: None,
        };
        stack.append_to_ledger(&event, "dispatcher").await;
    }

    let limit = Duration::from_secs(3);
    let services = [
        stack.dispatcher_with("dispatcher", |config| config.unclaimed_limit = limit),
        stack.worker("w"),
    ];
    let ledger = wait_for(
        "the orphaned run to succeed",
        Duration::from_secs(60),
        || async {
            let ledger = stack.job_ledger("orphaned");
            ledger
                .iter()
                .any(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
                .then_some(ledger)
        },
    )
    .await;
    // (The retry reports its start only if it runs for longer than `--report-start-after`.)
    let events: Vec<_> = ledger
        .iter()
        .filter(|e| !matches!(e.kind, RunEventKind::RunStarted { .. }))
        .collect();
    assert_eq!(
        names(&events),
        [
            "RunScheduled",
            "RunDispatched(1)",
            "RunLost(1)",
            "RetryScheduled(2)",
            "RunDispatched(2)",
            "RunSucceeded(2)",
        ],
        "the unclaimed attempt is lost once, and its retry runs"
    );
    let lost_at = events[2].at;
    assert!(
        lost_at - asked_at >= chrono::Duration::from_std(limit).unwrap(),
        "not lost before the limit: {lost_at} vs {asked_at}"
    );
    stop_all(services).await;
}

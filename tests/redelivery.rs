//! A finished attempt is never executed again. A worker that dies before its group has committed
//! the tasks it finished leaves them to be redelivered to the partition's next owner; that worker
//! reads the ledger from the tasks' dispatch on, sees their attempts are over, and skips them.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_core::run::RunEventKind;
use kairos_tests::{
    events_of, exact_retries, metric_value, one_shot_job, scrape, shell_job, stop_all,
    wait_caught_up, wait_for, wait_skipped, Stack,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_redelivered_after_their_worker_died_are_not_run_again() {
    let stack = Stack::new(2).await;
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    // A worker that never commits what it has done (its group commits an hour from now), as one
    // killed in the second after finishing its tasks would leave them.
    let (first, _) = stack.service_process(
        "first",
        "kairos-worker",
        &[
            "--worker-id=first",
            "--heartbeat-interval=300ms",
            "-X",
            "auto.commit.interval.ms=3600000",
        ],
    );
    let effects = stack.data_dir("effects");
    let script = format!(
        "echo $KAIROS_RUN_ID $KAIROS_ATTEMPT >> {}",
        effects.display()
    );
    stack.apply_job(shell_job("side", "1s", &script)).await;
    wait_for(
        "four runs of `side` to succeed",
        Duration::from_secs(60),
        || async {
            let succeeded = events_of(&stack.ledger(), "side")
                .iter()
                .filter(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
                .count();
            (succeeded >= 4).then_some(())
        },
    )
    .await;
    // No more runs; the ones fired ahead are cancelled. Then every run is over.
    stack
        .produce(&stack.kafka.topics().jobs(), "side", None)
        .await;
    let over = |kind: &RunEventKind| {
        matches!(
            kind,
            RunEventKind::RunSucceeded { .. }
                | RunEventKind::RunCancelled { .. }
                | RunEventKind::RunSkipped { .. }
        )
    };
    wait_for(
        "every run of `side` to be over",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let mut runs: BTreeMap<_, bool> = BTreeMap::new();
            for event in events_of(&ledger, "side") {
                *runs.entry(event.run_id).or_default() |= over(&event.kind);
            }
            runs.values().all(|over| *over).then_some(())
        },
    )
    .await;
    first.kill9().await;

    let second = stack.worker("second");
    wait_caught_up(std::slice::from_ref(&second)).await;
    // The count is of skips, not tasks: a task skipped behind one held for its last owner is
    // redelivered, and skipped, again if the group rebalances meanwhile (the first worker's
    // session ending).
    wait_skipped(
        "the second worker to skip the redelivered tasks",
        Duration::from_secs(60),
        &second,
        "already_over",
        4,
    )
    .await;
    let lines = std::fs::read_to_string(&effects).expect("the side-effect log");
    let mut executions: BTreeMap<&str, usize> = BTreeMap::new();
    for line in lines.lines() {
        *executions.entry(line).or_default() += 1;
    }
    assert!(executions.len() >= 4);
    assert!(
        executions.values().all(|n| *n == 1),
        "an attempt ran twice: {executions:?}"
    );
    let by_second = stack
        .ledger()
        .into_iter()
        .filter(|e| {
            matches!(&e.kind, RunEventKind::RunStarted { worker_id, .. }
                | RunEventKind::RunSucceeded { worker_id, .. } if worker_id == "second")
        })
        .count();
    assert_eq!(by_second, 0, "the second worker ran a finished attempt");
    stop_all(services.into_iter().chain([second])).await;
}

/// The worker's ledger reader: what a partition's tail records of attempts, from the position
/// asked for, going on from where its last read ended; reads of several partitions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_reader_reads_a_tail_and_goes_on_from_where_it_ended() {
    use kairos_core::run::{RunEvent, RunId, TaskOutput};
    use kairos_core::{JobId, TriggerKind};
    use kairos_runtime::ledger::LedgerReader;

    let stack = &Stack::new(2).await;
    let reader = LedgerReader::start(&stack.kafka, Duration::from_secs(30)).expect("a reader");
    let job = JobId::parse("read-me").expect("a job id");
    let slot = chrono::Utc::now();
    let run = RunId::derive(&job, slot, TriggerKind::Schedule);
    let append = |kind: RunEventKind| {
        let event = RunEvent {
            job_id: job.clone(),
            run_id: run,
            scheduled_for: slot,
            at: slot,
            kind,
            shard: None,
        };
        async move { stack.append_to_ledger(&event, "worker").await }
    };
    let started = |attempt: u32, worker: &str| RunEventKind::RunStarted {
        attempt,
        worker_id: worker.into(),
    };
    let first = append(started(1, "one")).await;
    append(RunEventKind::RunSucceeded {
        attempt: 1,
        worker_id: "one".into(),
        output: TaskOutput::default(),
    })
    .await;
    let (partition, other) = (first.partition, 1 - first.partition);

    let seen = reader
        .read_attempts(partition, first.offset)
        .await
        .expect("the tail is read");
    assert!(seen.is_over((run, 1, None)));
    assert_eq!(seen.started_by((run, 1, None)), Some("one"));
    assert!(!seen.is_over((run, 2, None)));
    assert_eq!(seen.read_to, first.offset + 2);

    let second = append(started(2, "two")).await;
    let (again, nothing) = tokio::join!(
        reader.read_attempts(partition, seen.read_to),
        reader.read_attempts(other, 0)
    );
    let again = again.expect("the news is read");
    assert_eq!(again.started_by((run, 2, None)), Some("two"));
    assert!(!again.is_over((run, 2, None)));
    assert!(
        !again.is_over((run, 1, None)),
        "only the tail from the position asked"
    );
    assert_eq!(again.read_to, second.offset + 1);
    // Asked again from the first record: what was read before is kept, and the news with it.
    let whole = reader
        .read_attempts(partition, first.offset)
        .await
        .expect("the whole tail");
    assert!(whole.is_over((run, 1, None)));
    assert_eq!(whole.started_by((run, 2, None)), Some("two"));
    let nothing = nothing.expect("an empty partition is read");
    assert!(nothing.over.is_empty() && nothing.started_by.is_empty());
}

/// A worker that takes over a long uncommitted backlog (its last owner died before committing
/// what it had done) reads the ledger's tail for it off its loop: it keeps beating the whole time
/// (never silent past its limit, which would have its attempts recorded lost and every task it
/// reads next checked again), and skips every attempt that is over. A loop that waited for the
/// read went silent here and, under load, fell further behind with each batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_taking_over_a_long_backlog_keeps_beating_while_it_reads_the_ledger() {
    let stack = Stack::new(2).await;
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    let (first, _) = stack.service_process(
        "first",
        "kairos-worker",
        &[
            "--worker-id=first",
            "--max-concurrent=16",
            "-X",
            "auto.commit.interval.ms=3600000",
        ],
    );
    let effects = stack.data_dir("effects");
    let script = format!(
        "echo $KAIROS_RUN_ID $KAIROS_ATTEMPT >> {}",
        effects.display()
    );
    let jobs: Vec<String> = (0..60).map(|n| format!("backlog-{n}")).collect();
    let definitions: Vec<kairos_core::JobDefinition> = jobs
        .iter()
        .map(|id| {
            let spec = shell_job(id, "1s", &script);
            spec.validate().expect("test job is valid")
        })
        .collect();
    stack.apply_jobs(&definitions).await;
    let executed = || {
        std::fs::read_to_string(&effects)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_for(
        "a backlog of 600 executions",
        Duration::from_secs(90),
        || async { (executed() >= 600).then_some(()) },
    )
    .await;
    for id in &jobs {
        stack.produce(&stack.kafka.topics().jobs(), id, None).await;
    }
    let all_over = || {
        let mut runs: BTreeMap<_, bool> = BTreeMap::new();
        for event in stack.ledger() {
            *runs.entry(event.run_id).or_default() |= matches!(
                event.kind,
                RunEventKind::RunSucceeded { .. }
                    | RunEventKind::RunCancelled { .. }
                    | RunEventKind::RunSkipped { .. }
            );
        }
        runs.values().all(|over| *over)
    };
    wait_for("every run to be over", Duration::from_secs(90), || async {
        all_over().then_some(())
    })
    .await;
    first.kill9().await;
    let backlog = executed();

    let second = stack.worker_with("second", |config| {
        config.heartbeat_interval = Duration::from_millis(150)
    });
    wait_caught_up(std::slice::from_ref(&second)).await;
    wait_skipped(
        "the second worker to skip the backlog",
        Duration::from_secs(120),
        &second,
        "already_over",
        backlog,
    )
    .await;
    let metrics = scrape(second.metrics_addr).await;
    let silences = r#"kairos_worker_silences_total{pool="default"}"#;
    assert_eq!(
        metric_value(&metrics, silences),
        Some(0.0),
        "the second worker's loop went silent while it read the ledger"
    );
    assert_eq!(
        executed(),
        backlog,
        "the second worker ran a finished attempt"
    );
    stop_all(services.into_iter().chain([second])).await;
}

/// A worker frozen past its group session (as a network partition or a paused VM would leave it)
/// is expelled, and its partition's tasks go to another worker. Resumed, it still fetches from
/// that partition until its consumer hears of the expulsion: it must start none of those tasks,
/// which the other worker runs, and rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_frozen_past_its_session_starts_none_of_the_tasks_taken_over() {
    use nix::sys::signal::{kill, Signal};
    let stack = Stack::new(1).await;
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    let frozen = stack.worker_process("frozen");
    let effects = stack.data_dir("effects");
    let script = format!(
        "echo $KAIROS_RUN_ID $KAIROS_ATTEMPT $(date +%s%N) >> {}; sleep 0.3",
        effects.display()
    );
    let succeeded_on = |worker: &str| {
        events_of(&stack.ledger(), "side")
            .iter()
            .filter(|e| matches!(&e.kind, RunEventKind::RunSucceeded { worker_id, .. } if worker_id == worker))
            .count()
    };
    stack.apply_job(shell_job("side", "1s", &script)).await;
    wait_for(
        "a run on the worker to freeze",
        Duration::from_secs(60),
        || async { (succeeded_on("frozen") >= 2).then_some(()) },
    )
    .await;
    // One partition: the second worker waits in the group with nothing until the first is gone.
    let other = stack.worker("other");
    wait_caught_up(std::slice::from_ref(&other)).await;
    let pid = nix::unistd::Pid::from_raw(frozen.pid().expect("running") as i32);
    let frozen_at = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    wait_for(
        "the other worker to take over",
        Duration::from_secs(60),
        || async { (succeeded_on("other") >= 3).then_some(()) },
    )
    .await;
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    // Whichever worker the group gives the partition to now runs the next slots.
    let succeeded = || succeeded_on("frozen") + succeeded_on("other");
    let before = succeeded();
    wait_for(
        "more runs after the resume",
        Duration::from_secs(60),
        || async { (succeeded() >= before + 6).then_some(()) },
    )
    .await;

    // Per attempt, when each execution began.
    let lines = std::fs::read_to_string(&effects).expect("the side-effect log");
    let mut executions: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for line in lines.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [run, attempt, nanos] = fields[..] {
            let began = nanos.parse().expect("nanoseconds");
            executions.entry((run, attempt)).or_default().push(began);
        }
    }
    // What may run again: an attempt the frozen worker had begun when it froze, whose outcome
    // it could not report. Nothing else.
    let twice: Vec<_> = executions
        .iter()
        .filter(|(_, began)| began.len() > 1 && began.iter().min() > Some(&frozen_at))
        .collect();
    assert!(twice.is_empty(), "attempts executed twice: {twice:?}");
    drop(frozen);
    stop_all(services.into_iter().chain([other])).await;
}

/// A worker joining the pool takes partitions over from a worker that is still running their
/// tasks. Redelivered to the newcomer, a task whose attempt a live worker has said it started is
/// left to that worker, which finishes it and reports: each attempt runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_running_when_a_join_moves_its_partition_is_not_run_again() {
    let stack = Stack::new(2).await;
    let mut services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
        stack.worker("first"),
    ];
    wait_caught_up(&services).await;
    let effects = stack.data_dir("effects");
    let script = format!(
        "echo $KAIROS_RUN_ID $KAIROS_ATTEMPT >> {}; sleep 6",
        effects.display()
    );
    // A long task in each partition, all running on the first worker.
    let mut partitions = std::collections::BTreeSet::new();
    let mut jobs = vec![];
    for n in 0.. {
        let id = format!("long-{n}");
        let landed = stack.apply_job(one_shot_job(&id, &script, 2)).await;
        partitions.insert(landed.partition);
        jobs.push(id);
        if partitions.len() == 2 {
            break;
        }
    }
    let started = |job: &str| {
        events_of(&stack.ledger(), job)
            .iter()
            .any(|e| matches!(e.kind, RunEventKind::RunStarted { .. }))
    };
    wait_for(
        "the long tasks to start",
        Duration::from_secs(60),
        || async { jobs.iter().all(|job| started(job)).then_some(()) },
    )
    .await;

    let second = stack.worker("second");
    wait_caught_up(std::slice::from_ref(&second)).await;
    wait_skipped(
        "the second worker to leave the running attempt to the first",
        Duration::from_secs(60),
        &second,
        "running_elsewhere",
        1,
    )
    .await;
    wait_for("every run to succeed", Duration::from_secs(60), || async {
        jobs.iter()
            .all(|job| {
                events_of(&stack.ledger(), job)
                    .iter()
                    .any(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
            })
            .then_some(())
    })
    .await;
    let lines = std::fs::read_to_string(&effects).expect("the side-effect log");
    let mut executions: BTreeMap<&str, usize> = BTreeMap::new();
    for line in lines.lines() {
        *executions.entry(line).or_default() += 1;
    }
    assert_eq!(executions.len(), jobs.len(), "{executions:?}");
    assert!(
        executions.values().all(|n| *n == 1),
        "an attempt ran twice: {executions:?}"
    );
    services.push(second);
    stop_all(services).await;
}

/// A saturated worker, when a second one joins, has short attempts running that have not said
/// they started, and attempts waiting for a place. Before the group gives a partition to the
/// newcomer, the revocation hands its attempts over: their start is announced on the ledger, the
/// newcomer leaves them to the old owner, and each runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_moves_a_saturated_workers_attempts_without_running_any_twice() {
    let stack = Stack::new(2).await;
    let mut services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
        stack.worker_with("first", |config| config.max_concurrent = 1),
    ];
    wait_caught_up(&services).await;
    let effects = stack.data_dir("effects");
    let script = format!(
        "echo $KAIROS_RUN_ID $KAIROS_ATTEMPT >> {}; sleep 0.4",
        effects.display()
    );
    // One slot for all: a backlog of about 12 s on a worker that runs one task at a time.
    let at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let jobs: Vec<kairos_core::JobDefinition> = (0..30)
        .map(|n| {
            let mut job = shell_job(&format!("short-{n}"), "1s", &script);
            job.schedule =
                serde_json::from_value(serde_json::json!({ "at": at })).expect("an at schedule");
            job.validate().expect("test job is valid")
        })
        .collect();
    stack.apply_jobs(&jobs).await;
    wait_for(
        "the first worker to work through its backlog",
        Duration::from_secs(60),
        || async {
            let lines = std::fs::read_to_string(&effects).unwrap_or_default();
            (lines.lines().count() >= 2).then_some(())
        },
    )
    .await;

    let second = stack.worker("second");
    let succeeded_on = |worker: &str| {
        stack
            .ledger()
            .iter()
            .filter(|e| {
                matches!(&e.kind, RunEventKind::RunSucceeded { worker_id, .. } if worker_id == worker)
            })
            .count()
    };
    wait_for("every run to succeed", Duration::from_secs(90), || async {
        (succeeded_on("first") + succeeded_on("second") >= jobs.len()).then_some(())
    })
    .await;
    // Had the second worker joined after the backlog was gone, the test would prove nothing.
    wait_skipped(
        "the second worker to leave attempts to the first",
        Duration::from_secs(30),
        &second,
        "running_elsewhere",
        1,
    )
    .await;
    let lines = std::fs::read_to_string(&effects).expect("the side-effect log");
    let mut executions: BTreeMap<&str, usize> = BTreeMap::new();
    for line in lines.lines() {
        *executions.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = executions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "attempts ran more than once: {twice:?}");
    assert_eq!(executions.len(), jobs.len(), "{executions:?}");
    services.push(second);
    stop_all(services).await;
}

/// A saturated worker announces, at a handover, the start of the attempts waiting for its place.
/// From then on the ledger shows them as this worker's, and a dispatcher that judges the worker
/// lost (in the chaos runs: its beats delivered late by a busy broker) records them lost and
/// retries them. The worker must not begin one of them afterwards: it reads the ledger before it
/// begins an attempt it announced, and skips those that are over. (Before, it ran them when their
/// place came, and their retries ran too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_announced_at_a_handover_and_then_recorded_lost_is_not_begun() {
    use kairos_core::run::RunEvent;

    let stack = Stack::new(2).await;
    // A heartbeat interval long enough that neither the lateness of the attempts nor their wait
    // for a place passes the silence limit: only the announcement can have them checked.
    let mut services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker_with("first", |config| {
            config.max_concurrent = 1;
            config.heartbeat_interval = Duration::from_secs(10);
        }),
    ];
    wait_caught_up(&services).await;
    let effects = stack.data_dir("effects");
    let record = format!(
        "echo $KAIROS_RUN_ID $KAIROS_ATTEMPT >> {}",
        effects.display()
    );
    let now = chrono::Utc::now();
    let at = |secs| {
        serde_json::from_value(serde_json::json!({ "at": now + chrono::Duration::seconds(secs) }))
            .expect("an at schedule")
    };
    // The blocker takes the only place for 15 s; three short jobs wait behind it.
    let mut blocker = shell_job("blocker", "1s", &format!("{record}; sleep 15"));
    blocker.schedule = at(2);
    blocker.timeout = Some(Duration::from_secs(60));
    let mut jobs = vec![blocker.validate().expect("a valid job")];
    for n in 0..3 {
        let mut job = shell_job(&format!("behind-{n}"), "1s", &record);
        job.schedule = at(4);
        job.retry = exact_retries(3, Duration::from_millis(100));
        jobs.push(job.validate().expect("a valid job"));
    }
    stack.apply_jobs(&jobs).await;
    let executions = || std::fs::read_to_string(&effects).unwrap_or_default();
    wait_for("the blocker to run", Duration::from_secs(30), || async {
        (!executions().is_empty()).then_some(())
    })
    .await;
    // Once the short attempts wait for the place, a second worker joins: the handover announces
    // them as started by `first`. The worker takes them up at their start, which nothing outside
    // it shows, so the test waits for that time; joining too early fails the wait for the
    // announcements below, it cannot pass the test.
    let taken_up = (now + chrono::Duration::seconds(5) - chrono::Utc::now()).to_std();
    tokio::time::sleep(taken_up.unwrap_or_default()).await;
    let second = stack.worker("second");
    let announced: Vec<RunEvent> = wait_for(
        "the waiting attempts to be announced",
        Duration::from_secs(30),
        || async {
            let started: Vec<RunEvent> = stack
                .ledger()
                .into_iter()
                .filter(|e| e.job_id.as_str().starts_with("behind-"))
                .filter(|e| matches!(&e.kind, RunEventKind::RunStarted { worker_id, .. } if worker_id == "first"))
                .collect();
            (started.len() == 3).then_some(started)
        },
    )
    .await;
    assert!(
        executions().lines().count() == 1,
        "only the blocker has run so far: {}",
        executions()
    );
    // Recorded lost while they wait, as a dispatcher that took `first` for dead would.
    for started in &announced {
        let lost = RunEvent {
            kind: RunEventKind::RunLost { attempt: 1 },
            at: chrono::Utc::now(),
            ..started.clone()
        };
        stack.append_to_ledger(&lost, "dispatcher").await;
    }
    wait_for(
        "the retries to succeed",
        Duration::from_secs(90),
        || async {
            let succeeded = stack
                .ledger()
                .iter()
                .filter(|e| matches!(e.kind, RunEventKind::RunSucceeded { attempt: 2, .. }))
                .count();
            (succeeded == 3).then_some(())
        },
    )
    .await;
    let lines = executions();
    for started in &announced {
        let first_attempt = format!("{} 1", started.run_id);
        assert!(
            !lines.lines().any(|line| line == first_attempt),
            "an attempt recorded lost was begun afterwards: {first_attempt}\n{lines}"
        );
    }
    services.push(second);
    stop_all(services).await;
}

/// A task fetched long after its dispatch (behind a backlog, a rebalance, a ledger read) may
/// belong to an attempt the dispatchers have since recorded lost because no worker held it, a
/// retry on its way: the worker reads the ledger before it takes such a task up, and skips it. In
/// a chaos run, five attempts recorded lost this way were begun seconds later by the worker that
/// finally fetched them, and their retries ran too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_fetched_after_its_attempt_was_recorded_lost_is_not_begun() {
    use kairos_core::run::{RunEvent, RunId, TriggerKind};
    use kairos_core::TaskAssigned;

    let stack = Stack::new(1).await;
    let worker = stack.worker("late");
    wait_caught_up(std::slice::from_ref(&worker)).await;
    let effects = stack.data_dir("effects");
    let script = format!("echo $KAIROS_RUN_ID >> {}", effects.display());
    let job = shell_job("late", "1h", &script)
        .validate()
        .expect("a valid job");
    let producer = stack.kafka.producer().expect("producer");
    let now = chrono::Utc::now();
    // Two runs' tasks reach the worker one after the other: the first dispatched 40 s ago and
    // recorded lost since, the second dispatched just now.
    let mut runs = vec![];
    for (slot_secs, age_secs) in [(100, 40), (99, 0)] {
        let slot = now - chrono::Duration::seconds(slot_secs);
        let dispatched_at = now - chrono::Duration::seconds(age_secs);
        let run_id = RunId::derive(&job.id, slot, TriggerKind::Schedule);
        let event = |kind| RunEvent {
            job_id: job.id.clone(),
            run_id,
            scheduled_for: slot,
            at: dispatched_at,
            kind,
            shard: None,
        };
        let scheduled = RunEventKind::RunScheduled {
            trigger: TriggerKind::Schedule,
            definition_offset: 0,
        };
        stack.append_to_ledger(&event(scheduled), "trigger").await;
        let dispatch = RunEventKind::RunDispatched {
            attempt: 1,
            pool: "default".into(),
        };
        let dispatch = stack.append_to_ledger(&event(dispatch), "dispatcher").await;
        if age_secs > 0 {
            let lost = RunEventKind::RunLost { attempt: 1 };
            stack.append_to_ledger(&event(lost), "dispatcher").await;
        }
        let task = TaskAssigned {
            job_id: job.id.clone(),
            run_id,
            attempt: 1,
            scheduled_for: slot,
            pool: "default".into(),
            task: job.task.clone(),
            timeout: job.timeout,
            definition_offset: 0,
            assigned_at: dispatched_at,
            start_at: None,
            shard: None,
            concurrent_runs: true,
            signature: None,
        };
        let payload = kairos_runtime::codec::encode_task(&task).expect("encodes");
        let header = (
            kairos_runtime::ledger::DISPATCHED_AT_HEADER,
            dispatch.offset.to_string(),
        );
        producer
            .send_with_headers(
                &stack.kafka.topics().tasks("default"),
                &task.key(),
                Some(&payload),
                &[header],
            )
            .await
            .expect("producing the task");
        runs.push(run_id);
    }
    wait_for(
        "the fresh task to succeed",
        Duration::from_secs(60),
        || async {
            stack
                .ledger()
                .iter()
                .any(|e| e.run_id == runs[1] && matches!(e.kind, RunEventKind::RunSucceeded { .. }))
                .then_some(())
        },
    )
    .await;
    wait_skipped(
        "the stale task to be skipped",
        Duration::from_secs(30),
        &worker,
        "already_over",
        1,
    )
    .await;
    let executions = std::fs::read_to_string(&effects).unwrap_or_default();
    assert!(
        !executions.contains(&runs[0].to_string()),
        "the attempt recorded lost was begun: {executions}"
    );
    stop_all([worker]).await;
}

//! Fire ahead, start on time: the trigger fires a slot `--fire-ahead` before it is due, the run
//! is dispatched at once, and the worker holds the task and starts it at its slot by its own
//! clock. What the moment decides is still decided by it: a pause or a deletion read before the
//! slot's start cancels the run fired ahead, and the worker drops the held task unrun.

use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_core::run::{RunEvent, RunEventKind};
use kairos_core::Timestamp;
use kairos_tests::{
    events_of, names, scrape, shell_job, stop_all, wait_caught_up, wait_for, Service, Stack,
};

fn first<'a>(events: &[&'a RunEvent], pick: fn(&RunEventKind) -> bool) -> Option<&'a RunEvent> {
    events.iter().copied().find(|e| pick(&e.kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_is_fired_and_dispatched_ahead_and_its_task_starts_at_the_slot() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    stack.apply_job(shell_job("ahead", "1s", "true")).await;

    // The first slot may come before the trigger has read the definition; the ones after it
    // are fired ahead.
    let succeeded_after_the_first = |ledger: &[RunEvent]| -> Vec<RunEvent> {
        let first_slot = ledger.iter().map(|e| e.scheduled_for).min();
        ledger
            .iter()
            .filter(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
            .filter(|e| Some(e.scheduled_for) > first_slot)
            .cloned()
            .collect()
    };
    let ledger = wait_for(
        "three runs of `ahead` after its first to succeed",
        Duration::from_secs(60),
        || async {
            let ledger = stack.job_ledger("ahead");
            (succeeded_after_the_first(&ledger).len() >= 3).then_some(ledger)
        },
    )
    .await;
    let mut checked = 0;
    for event in &succeeded_after_the_first(&ledger) {
        let run: Vec<&RunEvent> = ledger.iter().filter(|e| e.run_id == event.run_id).collect();
        let slot = event.scheduled_for;
        let scheduled = first(&run, |k| matches!(k, RunEventKind::RunScheduled { .. }))
            .expect("a RunScheduled");
        let started =
            first(&run, |k| matches!(k, RunEventKind::RunStarted { .. })).expect("a RunStarted");
        // The default lead is a second: the fire is decided well before the slot (the trigger
        // wakes for it, nothing else has to happen first).
        assert!(
            scheduled.at < slot,
            "{} fired at {}, not ahead of its slot {slot}",
            event.run_id,
            scheduled.at
        );
        // ... and the worker does not start it before its time.
        assert!(
            started.at >= slot,
            "{} started at {}, before its slot {slot}",
            event.run_id,
            started.at
        );
        checked += 1;
    }
    assert!(checked >= 3);

    // The worker measures how late it started tasks, and how early they reached it.
    let metrics = scrape(services[2].metrics_addr).await;
    for series in [
        "kairos_worker_start_lateness_seconds_count",
        "kairos_worker_task_lead_seconds_count",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "{series} missing from the worker's metrics"
        );
    }
    stop_all(services).await;
}

/// A one-off job due `in_secs` from now whose task leaves a mark if it runs.
fn one_off(id: &str, due: Timestamp, mark: &std::path::Path) -> JobSpec {
    let mut job = shell_job(id, "1s", &format!("touch {}", mark.display()));
    job.schedule.every = None;
    job.schedule.at = Some(due);
    job
}

/// A slot 12 s from now, in whole milliseconds as the ledger carries it.
fn twelve_seconds_ahead() -> Timestamp {
    kairos_core::from_millis(
        (chrono::Utc::now() + chrono::Duration::seconds(12)).timestamp_millis(),
    )
    .unwrap()
}

/// The pipeline with a trigger that fires 20 s ahead, so that there is time to act between the
/// fire and the slot; `workers` of the default pool.
async fn long_lead_pipeline(stack: &Stack, workers: &[&str]) -> Vec<Service> {
    let mut services = vec![
        stack.trigger_with("trigger", |c| c.fire_ahead = Duration::from_secs(20)),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    services.extend(workers.iter().map(|id| stack.worker(id)));
    wait_caught_up(&services).await;
    services
}

/// Whether each of `jobs` has an event on `ledger` of the kind `pick` selects.
fn every_job_has(ledger: &[RunEvent], jobs: &[&str], pick: fn(&RunEventKind) -> bool) -> bool {
    jobs.iter()
        .all(|id| events_of(ledger, id).iter().any(|e| pick(&e.kind)))
}

fn succeeded(kind: &RunEventKind) -> bool {
    matches!(kind, RunEventKind::RunSucceeded { .. })
}

/// Puts one-off jobs due at `due` and waits until every one has its first attempt dispatched.
async fn dispatched_ahead(stack: &Stack, jobs: &[&str], due: Timestamp, marks: &std::path::Path) {
    for id in jobs {
        stack.apply_job(one_off(id, due, &marks.join(id))).await;
    }
    wait_for(
        "every run to be dispatched ahead",
        Duration::from_secs(10),
        || async {
            let dispatched = |k: &RunEventKind| matches!(k, RunEventKind::RunDispatched { .. });
            every_job_has(&stack.ledger(), jobs, dispatched).then_some(())
        },
    )
    .await;
    assert!(
        chrono::Utc::now() < due,
        "the runs were not dispatched ahead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_or_deletion_read_before_the_slot_cancels_the_run_fired_ahead() {
    let stack = Stack::new(3).await;
    let services = long_lead_pipeline(&stack, &["w1"]).await;
    let marks = tempfile::tempdir().unwrap();
    let due = twelve_seconds_ahead();
    dispatched_ahead(&stack, &["paused", "deleted", "kept"], due, marks.path()).await;

    let mut paused = one_off("paused", due, &marks.path().join("paused"));
    paused.paused = true;
    stack.apply_job(paused).await;
    stack
        .produce(&stack.kafka.topics().jobs(), "deleted", None)
        .await;

    // The kept job runs at its slot; the other two are cancelled before it and never run.
    wait_for("the kept job to run", Duration::from_secs(40), || async {
        every_job_has(&stack.ledger(), &["kept"], succeeded).then_some(())
    })
    .await;
    let ledger = stack.ledger();
    for id in ["paused", "deleted"] {
        let events = events_of(&ledger, id);
        assert_eq!(
            names(&events),
            ["RunScheduled", "RunDispatched(1)", "RunCancelled(1)"],
            "{id}"
        );
        let cancelled = events.last().unwrap();
        assert!(cancelled.at < due, "{id} was cancelled only after its slot");
        assert!(
            !marks.path().join(id).exists(),
            "the task of {id} ran after it was cancelled"
        );
    }
    assert!(marks.path().join("kept").exists());
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_held_for_their_start_move_with_their_partition_and_run_once() {
    let stack = Stack::new(3).await;
    let mut services = long_lead_pipeline(&stack, &["w1"]).await;
    let marks = tempfile::tempdir().unwrap();
    let due = twelve_seconds_ahead();
    // Enough jobs to be spread over the three partitions, all held by w1.
    let names: Vec<String> = (0..9).map(|n| format!("held-{n}")).collect();
    let jobs: Vec<&str> = names.iter().map(String::as_str).collect();
    dispatched_ahead(&stack, &jobs, due, marks.path()).await;
    // Two more workers join before the slot: the pool's partitions are shared out again, and
    // w1's held tasks of the partitions it gives up go to their new owners.
    services.push(stack.worker("w2"));
    services.push(stack.worker("w3"));
    wait_caught_up(&services).await;
    assert!(
        chrono::Utc::now() < due,
        "the workers joined only after the slot"
    );

    let ledger = wait_for("every run to succeed", Duration::from_secs(60), || async {
        let ledger = stack.ledger();
        every_job_has(&ledger, &jobs, succeeded).then_some(ledger)
    })
    .await;
    let mut workers = std::collections::BTreeSet::new();
    for id in &jobs {
        let starts: Vec<&RunEvent> = events_of(&ledger, id)
            .into_iter()
            .filter(|e| matches!(e.kind, RunEventKind::RunStarted { .. }))
            .collect();
        assert_eq!(starts.len(), 1, "{id} started {} times", starts.len());
        if let RunEventKind::RunStarted { worker_id, .. } = &starts[0].kind {
            workers.insert(worker_id.clone());
        }
    }
    assert!(
        workers.len() > 1,
        "every task ran on {workers:?}: no partition moved, so nothing was tested"
    );
    stop_all(services).await;
}

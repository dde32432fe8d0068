//! Overlap policies with tasks longer than the schedule's interval: under `forbid` and `queue` no
//! two runs of a job ever execute at once; `forbid` skips, `queue` lets one run wait its turn.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_core::job::OverlapPolicy;
use kairos_core::run::{RunEvent, RunEventKind, RunId, SkipReason};
use kairos_core::Timestamp;
use kairos_tests::{shell_job, stop_all, wait_for, Stack};

/// Each run's events, keyed by run id, for one job.
fn runs_of(ledger: &[RunEvent], job: &str) -> BTreeMap<RunId, Vec<RunEvent>> {
    let mut runs: BTreeMap<RunId, Vec<RunEvent>> = BTreeMap::new();
    for event in ledger.iter().filter(|e| e.job_id.as_str() == job) {
        runs.entry(event.run_id).or_default().push(event.clone());
    }
    runs
}

fn is_final(kind: &RunEventKind) -> bool {
    matches!(
        kind,
        RunEventKind::RunSucceeded { .. }
            | RunEventKind::RunSkipped { .. }
            | RunEventKind::RunAbandoned { .. }
    )
}

fn at(events: &[RunEvent], pick: fn(&RunEventKind) -> bool) -> Option<Timestamp> {
    events.iter().find(|e| pick(&e.kind)).map(|e| e.at)
}

/// (dispatched, started, finished) of every run that executed, in slot order.
fn executions(
    runs: &BTreeMap<RunId, Vec<RunEvent>>,
) -> Vec<(Timestamp, Timestamp, Timestamp, Timestamp)> {
    let mut out: Vec<_> = runs
        .values()
        .filter_map(|events| {
            let slot = events[0].scheduled_for;
            let dispatched = at(events, |k| matches!(k, RunEventKind::RunDispatched { .. }))?;
            let started = at(events, |k| matches!(k, RunEventKind::RunStarted { .. }))?;
            let finished = at(events, |k| matches!(k, RunEventKind::RunSucceeded { .. }))?;
            Some((slot, dispatched, started, finished))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forbid_and_queue_never_run_two_runs_of_a_job_at_once() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let jobs = [
        ("forbidden", OverlapPolicy::Forbid),
        ("queued", OverlapPolicy::Queue),
    ];
    for (id, policy) in jobs {
        // Every second, a task that takes 2.5 s.
        let mut job = shell_job(id, "1s", "sleep 2.5");
        job.overlap = policy;
        stack.apply_job(job).await;
    }
    wait_for(
        "three executions of each job",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            jobs.iter()
                .all(|(id, _)| executions(&runs_of(&ledger, id)).len() >= 3)
                .then_some(())
        },
    )
    .await;
    for (id, _) in jobs {
        stack.produce(&stack.kafka.topics().jobs(), id, None).await;
    }
    let ledger = wait_for(
        "every run to be over after the jobs were deleted",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let over = jobs.iter().all(|(id, _)| {
                runs_of(&ledger, id)
                    .values()
                    .all(|events| events.iter().any(|e| is_final(&e.kind)))
            });
            over.then_some(ledger)
        },
    )
    .await;

    for (id, policy) in jobs {
        let runs = runs_of(&ledger, id);
        let executed = executions(&runs);
        for pair in executed.windows(2) {
            assert!(
                pair[1].2 >= pair[0].3,
                "{id}: a run started at {} while the previous ran until {}",
                pair[1].2,
                pair[0].3
            );
        }
        let overlap_skips = runs
            .values()
            .filter(|events| {
                events.iter().any(|e| {
                    matches!(
                        e.kind,
                        RunEventKind::RunSkipped {
                            reason: SkipReason::Overlap
                        }
                    )
                })
            })
            .count();
        assert!(
            overlap_skips >= 1,
            "{id}: no run was skipped for overlapping"
        );
        if policy == OverlapPolicy::Queue {
            // Queued runs waited for the one before to finish instead of being skipped.
            let waited = executed
                .iter()
                .filter(|(slot, dispatched, _, _)| (*dispatched - *slot).num_milliseconds() > 1000)
                .count();
            assert!(waited >= 1, "{id}: no run waited its turn: {executed:?}");
            for pair in executed.windows(2) {
                assert!(
                    pair[1].1 >= pair[0].3,
                    "{id}: a queued run was dispatched before the previous finished"
                );
            }
        }
    }
    stop_all(services).await;
}

/// `allow` means concurrent: with one worker, a run whose task outlasts the job's period runs
/// beside the next one instead of queueing behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_runs_overlapping_runs_side_by_side_on_one_worker() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    // Every second, a task that takes 2.5 s (`allow` is the default).
    let job = shell_job("overlapping", "1s", "sleep 2.5");
    assert_eq!(job.overlap, OverlapPolicy::Allow);
    stack.apply_job(job).await;
    let executed = wait_for(
        "four executions of `overlapping`",
        Duration::from_secs(60),
        || async {
            let executed = executions(&runs_of(&stack.ledger(), "overlapping"));
            (executed.len() >= 4).then_some(executed)
        },
    )
    .await;
    stack
        .produce(&stack.kafka.topics().jobs(), "overlapping", None)
        .await;
    // One worker ran them all, each 2.5 s long, a second apart: with runs taking turns no two
    // would overlap; side by side, every one overlaps the one before.
    let overlapping = executed
        .windows(2)
        .filter(|pair| pair[1].2 < pair[0].3)
        .count();
    assert!(
        overlapping >= 3,
        "runs waited for the one before to finish: {executed:?}"
    );
    stop_all(services).await;
}

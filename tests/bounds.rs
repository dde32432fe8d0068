//! Bounds on when a job fires, on the real broker: `start_at`/`end_at`, `max_runs`, and jitter.

use std::time::Duration;

use kairos_core::decide::fire_time;
use kairos_core::run::{RunEvent, RunEventKind};
use kairos_tests::{shell_job, stop_all, wait_caught_up, wait_for, Stack};

/// The job's events of one kind, in ledger order.
fn of_kind(ledger: &[RunEvent], job: &str, kind: fn(&RunEventKind) -> bool) -> Vec<RunEvent> {
    ledger
        .iter()
        .filter(|e| e.job_id.as_str() == job && kind(&e.kind))
        .cloned()
        .collect()
}

fn fired(ledger: &[RunEvent], job: &str) -> Vec<RunEvent> {
    of_kind(ledger, job, |k| {
        matches!(k, RunEventKind::RunScheduled { .. })
    })
}

fn started(ledger: &[RunEvent], job: &str) -> Vec<RunEvent> {
    of_kind(ledger, job, |k| {
        matches!(k, RunEventKind::RunStarted { .. })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_fire_only_inside_their_bounds_and_jitter_delays_each_slot_by_its_own_amount() {
    let stack = Stack::new(3).await;
    let services = [
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker("w1"),
    ];
    wait_caught_up(&services).await;
    let now = chrono::Utc::now();
    let mut windowed = shell_job("windowed", "1s", "true");
    windowed.start_at = Some(now + chrono::Duration::seconds(3));
    windowed.end_at = Some(now + chrono::Duration::seconds(6));
    let mut limited = shell_job("limited", "1s", "true");
    limited.max_runs = Some(3);
    let mut jittered = shell_job("jittered", "1s", "true");
    jittered.jitter = Some(Duration::from_millis(700));
    let expected_window = windowed.validate().unwrap().upcoming(now, 100, 0);
    let jittered_def = jittered.validate().unwrap();
    for job in [windowed, limited, jittered] {
        stack.apply_job(job).await;
    }

    // Wait until the window has closed and a few more slots have passed.
    let ledger = wait_for(
        "the window to close and five jittered starts",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let done = chrono::Utc::now() > now + chrono::Duration::seconds(8)
                && started(&ledger, "jittered").len() >= 5;
            done.then_some(ledger)
        },
    )
    .await;

    let slots: Vec<_> = fired(&ledger, "windowed")
        .iter()
        .map(|e| e.scheduled_for)
        .collect();
    assert_eq!(
        slots, expected_window,
        "windowed fired outside [start_at, end_at]"
    );
    assert_eq!(fired(&ledger, "limited").len(), 3, "max_runs 3");

    // Fired ahead of the slot, each run starts at its slot plus its own jitter.
    let mut delays = vec![];
    for event in started(&ledger, "jittered") {
        let due = fire_time(&jittered_def, event.scheduled_for);
        assert!(
            event.at >= due,
            "slot {} started at {}, before its jittered time {due}",
            event.scheduled_for,
            event.at
        );
        delays.push((due - event.scheduled_for).num_milliseconds());
    }
    assert!(delays.iter().all(|ms| (0..700).contains(ms)), "{delays:?}");
    let spread = delays.iter().max().unwrap() - delays.iter().min().unwrap();
    assert!(spread > 50, "jitter does not spread the fires: {delays:?}");
    stop_all(services).await;
}

//! A pool's `max_in_flight` on the real broker: with the pool saturated, runs wait (visible as
//! scheduled) and the higher-priority one goes first when room frees up.

use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_core::run::{RunEvent, RunEventKind};
use kairos_tests::{get_json, one_shot_job, stop_all, wait_caught_up, wait_for, Stack};

fn one_shot(id: &str, script: &str, in_secs: i64, priority: i32) -> JobSpec {
    let mut job = one_shot_job(id, script, in_secs);
    job.pool = "batch".into();
    job.priority = priority;
    job
}

fn first(
    ledger: &[RunEvent],
    job: &str,
    pick: fn(&RunEventKind) -> bool,
) -> Option<chrono::DateTime<chrono::Utc>> {
    ledger
        .iter()
        .find(|e| e.job_id.as_str() == job && pick(&e.kind))
        .map(|e| e.at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_pool_dispatches_the_highest_priority_waiting_run_first() {
    let stack = Stack::new(3).await;
    let services = [
        stack.trigger("trigger"),
        stack.dispatcher_with("dispatcher", |config| {
            config.max_in_flight = vec![("batch".into(), 1)]
        }),
        stack.worker_in("batch", "w1"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    // The blocker holds the pool's only slot while low and high come due together.
    stack.apply_job(one_shot("blocker", "sleep 3", 2, 0)).await;
    stack.apply_job(one_shot("low", "true", 3, 0)).await;
    stack.apply_job(one_shot("high", "true", 3, 10)).await;

    wait_for(
        "low and high waiting while the blocker runs",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            first(&ledger, "blocker", |k| {
                matches!(k, RunEventKind::RunStarted { .. })
            })?;
            let waiting = ["low", "high"].iter().all(|job| {
                first(&ledger, job, |k| {
                    matches!(k, RunEventKind::RunScheduled { .. })
                })
                .is_some()
                    && first(&ledger, job, |k| {
                        matches!(k, RunEventKind::RunDispatched { .. })
                    })
                    .is_none()
            });
            waiting.then_some(())
        },
    )
    .await;
    let low = get_json(&format!("{api}/api/v1/jobs/low/runs"))
        .await
        .expect("low's runs");
    assert_eq!(
        low["runs"][0]["status"], "scheduled",
        "a waiting run shows as scheduled"
    );

    let ledger = wait_for(
        "all three runs to succeed",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            ["blocker", "low", "high"]
                .iter()
                .all(|job| {
                    first(&ledger, job, |k| {
                        matches!(k, RunEventKind::RunSucceeded { .. })
                    })
                    .is_some()
                })
                .then_some(ledger)
        },
    )
    .await;
    let dispatched = |job| {
        first(&ledger, job, |k| {
            matches!(k, RunEventKind::RunDispatched { .. })
        })
        .unwrap()
    };
    let finished = |job| {
        first(&ledger, job, |k| {
            matches!(k, RunEventKind::RunSucceeded { .. })
        })
        .unwrap()
    };
    assert!(
        dispatched("high") >= finished("blocker"),
        "high went before the slot was free"
    );
    assert!(
        dispatched("low") >= finished("high"),
        "low went before high was done (or before it)"
    );
    stop_all(services).await;
}

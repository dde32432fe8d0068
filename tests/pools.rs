//! Pools on the real broker. With a pool's `max_in_flight` reached, runs wait (visible as
//! scheduled) and the higher-priority one goes first when room frees up. A run for a pool no
//! worker serves stays visibly pending, raises an alert, and runs once a worker arrives.

use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_core::run::{RunEvent, RunEventKind};
use kairos_runtime::codec;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_for_a_pool_nobody_serves_stays_pending_alerts_and_runs_when_a_worker_comes() {
    let stack = Stack::new(2).await;
    let mut services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker("default-worker"),
        stack.aggregator_with("aggregator", |config| {
            config.pending_alert_after = Duration::from_secs(1)
        }),
    ];
    wait_caught_up(&services).await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    let mut job = one_shot_job("render", "true", 1);
    job.pool = "gpu".into();
    stack.apply_job(job).await;

    let pending = wait_for(
        "the run to be listed as pending on an unserved pool",
        Duration::from_secs(60),
        || async {
            let body = get_json(&format!("{api}/api/v1/runs/pending")).await?;
            body["runs"]
                .as_array()?
                .iter()
                .find(|r| r["job_id"] == "render" && r["unserved"].is_string())
                .cloned()
        },
    )
    .await;
    assert_eq!(pending["pool"], "gpu");
    assert_eq!(
        pending["unserved"],
        "no live worker serves pool \"gpu\" with shell tasks"
    );
    let run_id = pending["run_id"].as_str().unwrap().to_string();
    let listed = stack.kairosctl(&api, &["runs", "pending"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&run_id) && listed.contains("no live worker serves pool \"gpu\""),
        "{listed}"
    );
    let run = get_json(&format!("{api}/api/v1/runs/{run_id}"))
        .await
        .unwrap();
    assert_eq!(run["status"], "dispatched");
    assert_eq!(run["waiting_for_worker"], pending["unserved"]);

    let alert = wait_for("the run_pending alert", Duration::from_secs(30), || async {
        stack
            .alerts()
            .into_iter()
            .find(|a| a.kind == codec::AlertKind::RunPending)
    })
    .await;
    assert_eq!(alert.job_id.as_ref().map(|j| j.as_str()), Some("render"));
    assert_eq!(alert.run_id.map(|r| r.to_string()), Some(run_id.clone()));
    assert!(alert.message.contains("pool \"gpu\""), "{}", alert.message);

    services.push(stack.worker_in("gpu", "gpu-worker"));
    wait_for(
        "the run to succeed on the new worker",
        Duration::from_secs(60),
        || async {
            let run = get_json(&format!("{api}/api/v1/runs/{run_id}")).await?;
            (run["status"] == "succeeded").then_some(())
        },
    )
    .await;
    let body = get_json(&format!("{api}/api/v1/runs/pending"))
        .await
        .unwrap();
    assert_eq!(
        body["runs"],
        serde_json::json!([]),
        "nothing is pending any more"
    );
    // Alerts about the default pool's worker are left out: on a loaded machine its 300 ms beats
    // can be late enough to count as lost.
    let alerts = stack.alerts();
    let mut kinds: Vec<_> = alerts
        .iter()
        .filter(|a| a.worker_id.is_none() && a.pool.as_deref() != Some("default"))
        .map(|a| (a.kind.as_str(), a.key()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [("pool_without_workers", "gpu"), ("run_pending", "render")],
        "one alert for the pool nobody serves, one for the one waiting run: {alerts:?}"
    );
    stop_all(services).await;
}

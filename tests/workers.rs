//! The worker registry on the real broker: workers announce themselves with heartbeats, the
//! aggregator shows them live with the runs they execute, stopped after a clean stop, and lost
//! when they die without a word.

use std::time::Duration;

use kairos_tests::{get_json, one_shot_job, stop_all, wait_for, Stack};

async fn worker_status(api: &str, id: &str) -> Option<serde_json::Value> {
    let workers = get_json(&format!("{api}/api/v1/workers")).await?;
    workers["workers"]
        .as_array()?
        .iter()
        .find(|w| w["worker_id"] == id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_shows_live_stopped_and_lost_workers() {
    let stack = Stack::new(3).await;
    let mut services = stack.start_pipeline().await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    let doomed = stack.worker("w2");

    stack.apply_job(one_shot_job("long", "sleep 4", 1)).await;
    let busy = wait_for(
        "a live worker executing the long run",
        Duration::from_secs(60),
        || async {
            let workers = get_json(&format!("{api}/api/v1/workers")).await?;
            workers["workers"]
                .as_array()?
                .iter()
                .find(|w| {
                    w["status"] == "live" && w["in_flight"].as_array().is_some_and(|r| r.len() == 1)
                })
                .cloned()
        },
    )
    .await;
    assert_eq!(
        (busy["pool"].as_str(), busy["capacity"].as_u64()),
        (Some("default"), Some(4))
    );
    let out = stack.kairosctl(&api, &["workers"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("live"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // w2 dies without a word: after three missed beats it is lost.
    wait_for("w2 to be live", Duration::from_secs(30), || async {
        worker_status(&api, "w2")
            .await
            .filter(|w| w["status"] == "live")
    })
    .await;
    doomed.kill().await;
    wait_for("w2 to be lost", Duration::from_secs(30), || async {
        worker_status(&api, "w2")
            .await
            .filter(|w| w["status"] == "lost")
    })
    .await;

    // w1 stops cleanly: its last beat says so.
    let w1 = services.remove(2);
    w1.stop().await.expect("w1 stopped cleanly");
    wait_for("w1 to be stopped", Duration::from_secs(30), || async {
        worker_status(&api, "w1")
            .await
            .filter(|w| w["status"] == "stopped")
    })
    .await;
    stop_all(services).await;
}

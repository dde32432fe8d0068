//! Sharded jobs on the real broker: each fire runs one task per shard, each with its index, total
//! and parameter; the run succeeds when every shard has, and a retry runs only the shards that
//! have not succeeded yet.

use std::collections::BTreeSet;
use std::time::Duration;

use kairos_core::run::{RunEvent, RunEventKind};
use kairos_tests::{
    events_of, exact_retries, get_json, one_shot_job, stop_all, wait_caught_up, wait_for, Stack,
};

/// `Name(attempt)` with `#shard` for a shard's event.
fn story(events: &[&RunEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let attempt = e.kind.attempt().map(|a| format!("({a})"));
            let shard = e.shard.map(|s| format!("#{}", s.index));
            format!(
                "{}{}{}",
                e.kind.name(),
                attempt.unwrap_or_default(),
                shard.unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_run_succeeds_when_all_shards_do_and_retries_only_the_failed_one() {
    let stack = Stack::new(3).await;
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker("w1"),
        stack.worker("w2"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    let api = format!("http://{}", services[4].http_addr.unwrap());

    // Shard "us" fails its first attempt, a second after the others have succeeded.
    let marker = stack.data_dir("us-failed-once");
    let script = format!(
        "echo \"$KAIROS_SHARD_INDEX/$KAIROS_SHARD_TOTAL $KAIROS_SHARD_PARAM\"; \
         if [ \"$KAIROS_SHARD_PARAM\" = us ] && [ ! -f {m} ]; then touch {m}; sleep 1; exit 1; fi",
        m = marker.display()
    );
    let mut job = one_shot_job("regions", &script, 1);
    job.shards = Some(3);
    job.shard_params = vec!["eu".into(), "us".into(), "ap".into()];
    job.retry = exact_retries(2, Duration::from_millis(100));
    stack.apply_job(job).await;

    let run = wait_for(
        "the sharded run to succeed",
        Duration::from_secs(60),
        || async {
            let body = get_json(&format!("{api}/api/v1/jobs/regions/runs")).await?;
            body["runs"]
                .as_array()?
                .first()
                .filter(|r| r["status"] == "succeeded")
                .cloned()
        },
    )
    .await;
    assert_eq!(run["attempt"], 2);
    assert_eq!(run["shards"]["total"], 3);
    assert_eq!(run["shards"]["succeeded"], serde_json::json!([0, 1, 2]));

    let ledger = stack.ledger();
    let events = events_of(&ledger, "regions");
    let mut first_attempt: Vec<String> = story(&events)[2..8].to_vec();
    first_attempt.sort();
    assert_eq!(story(&events)[..2], ["RunScheduled", "RunDispatched(1)"]);
    assert_eq!(
        first_attempt,
        [
            "RunFailed(1)#1",
            "RunStarted(1)#0",
            "RunStarted(1)#1",
            "RunStarted(1)#2",
            "RunSucceeded(1)#0",
            "RunSucceeded(1)#2",
        ]
    );
    assert_eq!(
        story(&events)[8..],
        [
            "RetryScheduled(2)",
            "RunDispatched(2)",
            "RunStarted(2)#1",
            "RunSucceeded(2)#1"
        ],
        "the retry ran only the shard that failed"
    );
    let outputs: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            RunEventKind::RunSucceeded { output, .. } => Some(output.stdout.trim().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        outputs,
        BTreeSet::from(["0/3 eu".into(), "1/3 us".into(), "2/3 ap".into()]),
        "each shard saw its index, the total and its parameter"
    );
    stop_all(services).await;
}

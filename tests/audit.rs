//! The continuous fire audit: a schedule that silently stops, or a run nobody moves on, is
//! alerted within the grace period, shown by the API and `kairosctl job explain`, and counted;
//! jobs that are served raise nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_runtime::codec::{Alert, AlertKind};
use kairos_runtime::kafka::ServiceKind;
use kairos_tests::{
    get_json, metric_value, one_shot_job, scrape, shell_job, stop_all, wait_caught_up, wait_for,
    Stack,
};
use rdkafka::consumer::{BaseConsumer, Consumer};

const GRACE: Duration = Duration::from_secs(2);

/// A member of the trigger's consumer group that holds the partitions it is given and does
/// nothing with them: a hung trigger instance, as far as the group can tell.
struct Squatter {
    partitions: Arc<Mutex<Vec<i32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    fn join(stack: &Stack) -> Squatter {
        let topics = stack.kafka.topics();
        let (group, inputs) = topics.consumes(&ServiceKind::Trigger);
        let consumer: BaseConsumer = stack
            .kafka
            .client_config()
            .set("group.id", &group)
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "6000")
            .set("enable.auto.commit", "false")
            .create()
            .expect("the squatter's consumer");
        let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&names).expect("subscribing");
        let partitions = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let jobs = topics.jobs();
        let thread = {
            let (partitions, stop) = (partitions.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(100));
                    if let Ok(assignment) = consumer.assignment() {
                        *partitions.lock().unwrap() = assignment
                            .elements()
                            .iter()
                            .filter(|e| e.topic() == jobs)
                            .map(|e| e.partition())
                            .collect();
                    }
                }
                consumer.unsubscribe();
            })
        };
        Squatter {
            partitions,
            stop,
            thread: Some(thread),
        }
    }

    fn partitions(&self) -> Vec<i32> {
        self.partitions.lock().unwrap().clone()
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn audit_alerts(stack: &Stack, job: &str) -> Vec<Alert> {
    stack
        .alerts()
        .into_iter()
        .filter(|a| matches!(a.kind, AlertKind::SlotMissed | AlertKind::RunStuck))
        .filter(|a| a.job_id.as_ref().is_some_and(|j| j.as_str() == job))
        .collect()
}

/// Waits until the audit has checked at least `slots` slots of the job past its first.
async fn wait_checked(api: &str, job: &str, slots: i64) -> serde_json::Value {
    let first = &std::cell::Cell::new(None);
    wait_for(
        &format!("the audit to check {slots} slots of {job}"),
        Duration::from_secs(60),
        || async move {
            let audit = get_json(&format!("{api}/api/v1/jobs/{job}/audit")).await?;
            let through: chrono::DateTime<chrono::Utc> =
                serde_json::from_value(audit["checked_through"].clone()).ok()?;
            let since = first.get().unwrap_or(through);
            first.set(Some(since));
            (through - since >= chrono::Duration::seconds(slots)).then_some(audit)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_partition_nobody_serves_raises_slot_missed_for_its_jobs_only() {
    let stack = Stack::new(2).await;
    let squatter = Squatter::join(&stack);
    let mut services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker("w1"),
        stack.aggregator_with("aggregator", |c| c.audit_grace = GRACE),
    ];
    wait_caught_up(&services).await;
    let squatted = wait_for(
        "the squatter to hold a partition",
        Duration::from_secs(30),
        || async {
            let held = squatter.partitions();
            (held.len() == 1).then(|| held[0])
        },
    )
    .await;
    // Settle the group: the trigger holds the other partition once it has caught up again.
    wait_caught_up(&services[..1]).await;

    // One job in each partition.
    let mut jobs: BTreeMap<i32, String> = BTreeMap::new();
    for n in 0.. {
        let id = format!("audited-{n}");
        let landed = stack.apply_job(shell_job(&id, "1s", "true")).await;
        jobs.entry(landed.partition).or_insert(id);
        if jobs.len() == 2 {
            break;
        }
    }
    let lost = jobs[&squatted].clone();
    let served = jobs.values().find(|j| **j != lost).unwrap().clone();
    let api = format!("http://{}", services[3].http_addr.unwrap());

    // The served job: its slots are checked and nothing is found.
    let audit = wait_checked(&api, &served, 4).await;
    assert_eq!(audit["missed_slots"], serde_json::json!([]), "{audit}");
    assert_eq!(audit["stuck_runs"], serde_json::json!([]), "{audit}");

    // The job nobody fires: its missing slots are alerted, shown and counted.
    let alert = wait_for(
        "slot_missed for the unserved job",
        Duration::from_secs(60),
        || async { audit_alerts(&stack, &lost).into_iter().next() },
    )
    .await;
    assert_eq!(alert.kind, AlertKind::SlotMissed, "{alert:?}");
    assert!(alert.message.contains("no decision"), "{}", alert.message);
    assert!(
        stack.job_ledger(&lost).is_empty(),
        "the squatted partition's job was never fired"
    );
    let audit = get_json(&format!("{api}/api/v1/jobs/{lost}/audit"))
        .await
        .unwrap();
    let missed = audit["missed_slots"].as_array().unwrap();
    assert!(!missed.is_empty(), "{audit}");
    assert_eq!(
        missed[0]["run_id"],
        serde_json::json!(alert.run_id),
        "{audit}"
    );
    let metrics = scrape(services[3].metrics_addr).await;
    let found = metric_value(
        &metrics,
        "kairos_aggregator_audit_findings_total{kind=\"slot_missed\"}",
    )
    .unwrap_or(0.0);
    assert!(found >= 1.0, "{found}");
    let explained = stack.kairosctl(&api, &["job", "explain", &lost]);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(explained.status.success(), "{explained:?}");
    assert!(text.contains("missed slot"), "{text}");

    // Meanwhile the served job raised nothing.
    assert_eq!(audit_alerts(&stack, &served), vec![]);

    drop(squatter);
    services.truncate(4);
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_nobody_dispatches_raises_run_stuck() {
    let stack = Stack::new(1).await;
    // No dispatcher: the slot is decided, and the run then waits for a step nobody takes.
    let services = vec![
        stack.trigger("trigger"),
        stack.aggregator_with("aggregator", |c| c.audit_grace = GRACE),
    ];
    wait_caught_up(&services).await;
    let api = format!("http://{}", services[1].http_addr.unwrap());
    stack.apply_job(one_shot_job("stranded", "true", 2)).await;

    let alert = wait_for("run_stuck", Duration::from_secs(60), || async {
        audit_alerts(&stack, "stranded").into_iter().next()
    })
    .await;
    assert_eq!(alert.kind, AlertKind::RunStuck, "{alert:?}");
    assert!(alert.message.contains("is scheduled"), "{}", alert.message);
    let audit = get_json(&format!("{api}/api/v1/jobs/stranded/audit"))
        .await
        .unwrap();
    assert_eq!(
        audit["missed_slots"],
        serde_json::json!([]),
        "the slot was decided: {audit}"
    );
    assert_eq!(audit["stuck_runs"][0]["status"], "scheduled", "{audit}");
    let explained = stack.kairosctl(&api, &["job", "explain", "stranded"]);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(text.contains("stuck run"), "{text}");

    // Once a dispatcher moves it on, it is over and nothing more is alerted.
    let mut services = services;
    services.push(stack.dispatcher("dispatcher"));
    services.push(stack.worker("w1"));
    wait_for("the run to succeed", Duration::from_secs(60), || async {
        let runs = get_json(&format!("{api}/api/v1/jobs/stranded/runs")).await?;
        (runs["runs"][0]["status"] == "succeeded").then_some(())
    })
    .await;
    assert_eq!(audit_alerts(&stack, "stranded").len(), 1);
    stop_all(services).await;
}

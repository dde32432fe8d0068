//! The Grafana dashboard queries only metrics the services export: the four binaries run as
//! processes of their own (so each exports only its own metrics), a workload gives every metric a
//! reason to exist, and every name in every panel's query is looked up in the scrapes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use kairos_tests::{
    exact_retries, free_addr, get_json, scrape, shell_job, wait_for, Process, Stack,
};

/// The metric names a PromQL expression refers to (every Kairos name is `kairos_…`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("kairos_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every query of every panel of the shipped dashboard, by panel title.
fn dashboard_queries() -> BTreeMap<String, Vec<String>> {
    let path = kairos_tests::repo_path("dashboards/kairos.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboards/kairos.json"))
            .expect("the dashboard is JSON");
    let mut queries = BTreeMap::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let exprs: Vec<String> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str().map(str::to_string))
            .collect();
        if !exprs.is_empty() {
            queries.insert(panel["title"].as_str().unwrap_or("?").to_string(), exprs);
        }
    }
    queries
}

/// The series names in a Prometheus text exposition.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect()
}

struct Running {
    name: &'static str,
    metrics: SocketAddr,
    _process: Process,
}

fn start(stack: &Stack, name: &'static str, binary: &str, extra: &[&str]) -> Running {
    let (process, metrics) = stack.service_process(name, binary, extra);
    Running {
        name,
        metrics,
        _process: process,
    }
}

#[test]
fn every_dashboard_query_names_kairos_metrics() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} panels with queries", queries.len());
    for (title, exprs) in &queries {
        for expr in exprs {
            assert!(!metric_names(expr).is_empty(), "{title}: {expr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_dashboard_queries_is_exported_by_a_running_service() {
    let stack = Stack::new(3).await;
    let mut services = vec![
        start(&stack, "trigger", "kairos-trigger", &[]),
        start(&stack, "dispatcher", "kairos-dispatcher", &[]),
        start(
            &stack,
            "worker",
            "kairos-worker",
            &["--worker-id", "w1", "--heartbeat-interval", "300ms"],
        ),
    ];
    // Succeeding, failing-and-retried, and timed-out runs, and a record nobody can read.
    stack.apply_job(shell_job("fine", "1s", "true")).await;
    let mut flaky = shell_job("flaky", "1s", "exit 1");
    flaky.retry = exact_retries(2, Duration::from_millis(100));
    stack.apply_job(flaky).await;
    let mut slow = shell_job("slow", "2s", "sleep 5");
    slow.timeout = Some(Duration::from_secs(1));
    stack.apply_job(slow).await;
    stack
        .produce(&stack.kafka.topics().runs(), "fine", Some(b"not avro"))
        .await;
    let outcomes = [
        ("fine", "RunSucceeded"),
        ("flaky", "RetryScheduled"),
        ("slow", "RunTimedOut"),
    ];
    wait_for(
        "a success, a retry and a timeout on the ledger",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            outcomes
                .iter()
                .all(|(job, event)| {
                    ledger
                        .iter()
                        .any(|e| e.job_id.as_str() == *job && e.kind.name() == *event)
                })
                .then_some(())
        },
    )
    .await;
    // The aggregator starts last, so it rebuilds from what is on the topics.
    let http = free_addr().to_string();
    services.push(start(
        &stack,
        "aggregator",
        "kairos-aggregator",
        &["--http-addr", &http],
    ));

    let wanted: BTreeMap<String, String> = dashboard_queries()
        .into_iter()
        .flat_map(|(title, exprs)| {
            exprs
                .iter()
                .flat_map(|expr| metric_names(expr))
                .map(|name| (name, title.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    // Consumer lag and rebuild figures appear a few seconds in.
    wait_for(
        "every metric the dashboard queries (the missing ones are printed above)",
        Duration::from_secs(60),
        || async {
            let missing = missing_metrics(&services, &wanted).await;
            if !missing.is_empty() {
                eprintln!("not exported yet, by dashboard panel: {missing:#?}");
            }
            missing.is_empty().then_some(())
        },
    )
    .await;
    // A service's own metrics come from that service, not from another in the same process.
    for service in &services {
        let names = exported(&scrape(service.metrics).await);
        for name in names.iter().filter(|n| n.starts_with("kairos_")) {
            let owner = name
                .trim_start_matches("kairos_")
                .split('_')
                .next()
                .unwrap_or("");
            if ["trigger", "dispatcher", "worker", "aggregator"].contains(&owner) {
                assert_eq!(
                    owner, service.name,
                    "{name} is exported by the {}",
                    service.name
                );
            }
        }
    }
    let api = format!("http://{http}/healthz");
    assert!(
        get_json(&api).await.is_some(),
        "the aggregator serves its API"
    );
}

/// The wanted names that no service exports now, with the panel that queries each.
async fn missing_metrics(
    services: &[Running],
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut names = BTreeSet::new();
    for service in services {
        if let Ok(response) = reqwest::get(format!("http://{}/metrics", service.metrics)).await {
            names.extend(exported(&response.text().await.unwrap_or_default()));
        }
    }
    wanted
        .iter()
        .filter(|(name, _)| !names.contains(*name))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect()
}

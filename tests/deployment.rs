//! The production deployment, checked without running it (no container images here):
//! docker-compose.yml is valid YAML; every flag and environment variable it gives a Kairos binary
//! exists in that binary; the brokers, ports and mounts agree with one another, with
//! deploy/prometheus.yml and the Grafana provisioning; the Dockerfile builds what the compose
//! file runs. And the services' JSON logs carry job and run ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory as _;
use kairos_tests::{free_addr, shell_job, wait_for, Stack};
use serde_yaml_ng::Value;

fn repo(path: &str) -> PathBuf {
    kairos_tests::repo_path(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut value: Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    value.apply_merge().expect("merge keys resolve");
    value
}

fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A service's environment as a map.
fn env(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (str_of(k), str_of(v))).collect())
        .unwrap_or_default()
}

/// A YAML list of scalars, as strings.
fn strings(list: &Value) -> Vec<String> {
    list.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {list:?}"))
        .iter()
        .map(str_of)
        .collect()
}

fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_sequence()
        .map(|c| c.iter().map(str_of).collect())
        .unwrap_or_default()
}

/// The long flags and environment variables a binary accepts, from its clap definition.
fn accepted(command: &clap::Command) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long() {
            flags.insert(format!("--{long}"));
        }
        if let Some(env) = arg.get_env() {
            envs.insert(env.to_string_lossy().into_owned());
        }
    }
    (flags, envs)
}

/// The port of a `host:port` address.
fn port(addr: &str) -> String {
    addr.rsplit(':').next().unwrap().to_string()
}

#[test]
fn the_compose_file_runs_what_the_binaries_accept_on_consistent_ports() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    for expected in [
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "topics",
        "trigger",
        "dispatcher",
        "worker-1",
        "worker-2",
        "aggregator",
        "prometheus",
        "grafana",
    ] {
        assert!(
            names.contains(expected),
            "docker-compose.yml has no {expected}"
        );
    }

    // Three KRaft brokers, each a voter under its own id, advertising its own name.
    let mut voters = BTreeSet::new();
    for n in 1..=3 {
        let broker = &compose["services"][format!("kafka-{n}").as_str()];
        let env = env(broker);
        assert_eq!(env["KAFKA_NODE_ID"], n.to_string());
        assert_eq!(
            env["KAFKA_ADVERTISED_LISTENERS"],
            format!("PLAINTEXT://kafka-{n}:9092")
        );
        assert!(env["KAFKA_PROCESS_ROLES"].contains("controller"));
        voters.insert(format!("{n}@kafka-{n}:9093"));
        assert_eq!(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], "3");
        let listed: BTreeSet<String> = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
            .split(',')
            .map(str::to_string)
            .collect();
        assert_eq!(
            listed,
            voters
                .iter()
                .cloned()
                .chain((n + 1..=3).map(|m| format!("{m}@kafka-{m}:9093")))
                .collect()
        );
    }

    // Every Kairos container: a binary the image has, flags and environment it accepts.
    let binaries: BTreeMap<&str, clap::Command> = [
        ("kairos-trigger", kairos_trigger::Config::command()),
        ("kairos-dispatcher", kairos_dispatcher::Config::command()),
        ("kairos-worker", kairos_worker::Config::command()),
        ("kairos-aggregator", kairos_aggregator::Config::command()),
    ]
    .into();
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let prometheus = yaml("deploy/prometheus.yml");
    let scraped: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().unwrap().iter())
        .flat_map(|c| c["targets"].as_sequence().unwrap().iter().map(str_of))
        .collect();
    let mut kairos_services = 0;
    for (name, service) in services {
        let name = str_of(name);
        if service["image"] != Value::String("kairos:latest".into()) {
            continue;
        }
        kairos_services += 1;
        let command = command(service);
        let binary = command
            .first()
            .unwrap_or_else(|| panic!("{name} has no command"));
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "the Dockerfile does not build {binary} ({name})"
        );
        let env = env(service);
        let brokers: BTreeSet<&str> = env["KAIROS_BROKERS"].split(',').collect();
        assert_eq!(
            brokers,
            ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"].into(),
            "{name}"
        );
        if binary == "kairosctl" {
            // The CLI is not a library: ask the built binary.
            let bin = std::env::var("KAIROS_TEST_BIN_DIR")
                .expect("KAIROS_TEST_BIN_DIR (run scripts/test.sh)");
            let subcommand: Vec<&str> = command[1..]
                .iter()
                .map(String::as_str)
                .take_while(|a| !a.starts_with("--"))
                .collect();
            let help_of = |args: &[&str]| {
                let out = std::process::Command::new(format!("{bin}/kairosctl"))
                    .args(args)
                    .arg("--help")
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            // Connection settings are the top level's; the rest the subcommand's.
            let help = help_of(&[]) + &help_of(&subcommand);
            for flag in command.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    help.contains(flag.as_str()),
                    "kairosctl {subcommand:?} has no {flag}:\n{help}"
                );
            }
            for key in env.keys() {
                assert!(
                    help.contains(&format!("[env: {key}")),
                    "kairosctl has no {key}:\n{help}"
                );
            }
            assert!(
                command
                    .windows(2)
                    .any(|w| w == ["--replication-factor", "3"]),
                "topics are replicated three times"
            );
            continue;
        }
        let (flags, envs) = accepted(&binaries[binary.as_str()]);
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            assert!(flags.contains(flag), "{name}: {binary} has no flag {flag}");
        }
        for key in env.keys() {
            assert!(envs.contains(key), "{name}: {binary} reads no {key}");
        }
        // Prometheus scrapes it where it serves its metrics.
        let metrics = port(&env["KAIROS_METRICS_ADDR"]);
        assert!(
            scraped.contains(&format!("{name}:{metrics}")),
            "prometheus does not scrape {name}:{metrics}: {scraped:?}"
        );
        if binary.ends_with("aggregator") {
            let http = port(&env["KAIROS_HTTP_ADDR"]);
            let published: Vec<String> = strings(&service["ports"]);
            assert!(
                published.iter().any(|p| p.ends_with(&format!(":{http}"))),
                "the API port {http} is not published: {published:?}"
            );
            assert!(
                published.iter().all(|p| p.starts_with("127.0.0.1:")),
                "published on loopback only: {published:?}"
            );
        }
    }
    assert_eq!(
        kairos_services, 6,
        "topics, trigger, dispatcher, two workers, aggregator"
    );
    for target in &scraped {
        let host = target.split(':').next().unwrap();
        assert!(
            names.contains(host),
            "prometheus scrapes {target}, which compose does not run"
        );
    }

    // Grafana reads Prometheus where it listens, and the dashboards where they are mounted.
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let url = str_of(&datasource["datasources"][0]["url"]);
    let prometheus_ports: Vec<String> = strings(&compose["services"]["prometheus"]["ports"]);
    assert_eq!(url, "http://prometheus:9090");
    assert!(prometheus_ports.iter().any(|p| p.ends_with(":9090")));
    let provider = yaml("deploy/grafana/provisioning/dashboards/kairos.yml");
    let dashboards_path = str_of(&provider["providers"][0]["options"]["path"]);
    let grafana_mounts: Vec<String> = strings(&compose["services"]["grafana"]["volumes"]);
    assert!(
        grafana_mounts.contains(&format!("./dashboards:{dashboards_path}:ro")),
        "{grafana_mounts:?}"
    );

    // Every host path mounted exists in the repository.
    for (name, service) in services {
        for volume in service["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(str_of)
        {
            if let Some(host) = volume.split(':').next().filter(|h| h.starts_with("./")) {
                assert!(
                    repo(host).exists(),
                    "{}: mounts {host}, which does not exist",
                    str_of(name)
                );
            } else {
                let named = volume.split(':').next().unwrap();
                assert!(
                    compose["volumes"].get(named).is_some(),
                    "{}: volume {named} is not declared",
                    str_of(name)
                );
            }
        }
        for dependency in service["depends_on"]
            .as_mapping()
            .map(|m| m.keys().map(str_of).collect::<Vec<_>>())
            .or_else(|| {
                service["depends_on"]
                    .as_sequence()
                    .map(|s| s.iter().map(str_of).collect())
            })
            .unwrap_or_default()
        {
            assert!(
                names.contains(&dependency),
                "{} depends on {dependency}, which compose does not run",
                str_of(name)
            );
        }
    }
}

/// Trigger, dispatcher and a worker as processes, each given `extra` arguments.
fn pipeline_processes(stack: &Stack, extra: &[&str]) -> Vec<kairos_tests::Process> {
    let worker = [&["--worker-id", "w1"], extra].concat();
    vec![
        stack.service_process("trigger", "kairos-trigger", extra).0,
        stack
            .service_process("dispatcher", "kairos-dispatcher", extra)
            .0,
        stack.service_process("worker", "kairos-worker", &worker).0,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_job_and_run_ids() {
    let stack = Stack::new(1).await;
    let _services = pipeline_processes(&stack, &["--log-format", "json"]);
    stack.apply_job(shell_job("logged", "1s", "true")).await;
    let log = stack.data_dir("worker.log");
    let line = wait_for(
        "a worker log line about a run",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["job_id"] == "logged" && l["run_id"].is_string())
        },
    )
    .await;
    assert!(
        line["timestamp"].is_string() && line["level"].is_string(),
        "{line}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not a JSON log line: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    use std::sync::{Arc, Mutex};
    // A collector that keeps what services post to /v1/traces.
    let received: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let kind = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    kept.lock().unwrap().push((kind, body.len()));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let addr = free_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let stack = Stack::new(1).await;
    let endpoint = format!("http://{addr}");
    let _services = pipeline_processes(&stack, &["--otlp-endpoint", &endpoint]);
    stack.apply_job(shell_job("traced", "1s", "true")).await;
    let posts = wait_for(
        "spans posted to the collector",
        Duration::from_secs(60),
        || async {
            let posts = received.lock().unwrap().clone();
            (posts.len() >= 2).then_some(posts)
        },
    )
    .await;
    assert!(
        posts
            .iter()
            .all(|(kind, len)| kind == "application/x-protobuf" && *len > 0),
        "{posts:?}"
    );
}

//! A worker runs only what its policy allows. Write access to the jobs topic is not permission
//! to run code: a shell task whose program is not listed, or that goes through a shell, and an
//! HTTP task to a host, port or kind of address the policy does not allow, are refused before
//! they begin, recorded as failed attempts with the rule, not retried, and alerted.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_core::run::RunEventKind;
use kairos_runtime::codec::AlertKind;
use kairos_tests::{
    events_of, exact_retries, free_addr, metric_value, names, scrape, stop_all, wait_caught_up,
    wait_for, Stack,
};

/// A one-shot job due in five seconds, with three attempts allowed, running `task` (YAML).
fn job(id: &str, task: &str) -> JobSpec {
    let at = chrono::Utc::now() + chrono::Duration::seconds(5);
    let yaml = format!(
        "id: {id}\nschedule:\n  at: {}\ntimeout: 10s\ntask:\n{task}",
        at.to_rfc3339()
    );
    let value: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("test job YAML");
    let mut spec: JobSpec = serde_json::from_value(value).expect("test job spec");
    spec.retry = exact_retries(3, Duration::from_millis(200));
    spec
}

fn shell(command: &[&str]) -> String {
    let words: Vec<String> = command.iter().map(|w| format!("{w:?}")).collect();
    format!("  shell:\n    command: [{}]\n", words.join(", "))
}

fn http(url: &str) -> String {
    format!("  http:\n    method: GET\n    url: {url}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_the_policy_does_not_allow_are_refused_recorded_alerted_and_never_run() {
    let stack = Stack::new(2).await;
    // A server the policy lists only on another port, and that must never be called.
    let forbidden = tokio::net::TcpListener::bind(free_addr()).await.unwrap();
    let forbidden_port = forbidden.local_addr().unwrap().port();
    let listed_port = free_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "shell:\n  programs: [/usr/bin/true, /bin/true]\nhttp:\n  schemes: [http]\n  hosts: ['127.0.0.1:{listed_port}', 'localhost:*', '169.254.169.254']\n"
        ),
    )
    .unwrap();
    let worker = stack.worker_with("guarded", |config| config.policy = Some(policy.clone()));
    let mut services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    wait_caught_up(std::slice::from_ref(&worker)).await;

    let marker = dir.path().join("ran");
    let marker = marker.display().to_string();
    let script = format!("touch {marker}");
    let expected: BTreeMap<&str, &str> = [
        ("via-shell", "shell"),
        ("not-listed", "program"),
        ("metadata", "http_address"),
        ("loopback-by-name", "http_address"),
        ("other-port", "http_host"),
    ]
    .into();
    let jobs: Vec<_> = [
        job("allowed", &shell(&["true"])),
        job("via-shell", &shell(&["sh", "-c", &script])),
        job("not-listed", &shell(&["/usr/bin/touch", &marker])),
        job(
            "metadata",
            &http("http://169.254.169.254/latest/meta-data/"),
        ),
        // Listed by name, but the name resolves to a loopback address, which is not allowed.
        job(
            "loopback-by-name",
            &http(&format!("http://localhost:{forbidden_port}/")),
        ),
        job(
            "other-port",
            &http(&format!("http://127.0.0.1:{forbidden_port}/")),
        ),
    ]
    .into_iter()
    .map(|spec| spec.validate().expect("a valid job"))
    .collect();
    stack.apply_jobs(&jobs).await;

    let over = |job: &str| {
        events_of(&stack.ledger(), job).iter().any(|e| {
            matches!(
                e.kind,
                RunEventKind::RunSucceeded { .. } | RunEventKind::RunAbandoned { .. }
            )
        })
    };
    wait_for("every run to be over", Duration::from_secs(60), || async {
        (over("allowed") && expected.keys().all(|job| over(job))).then_some(())
    })
    .await;

    let ledger = stack.ledger();
    assert_eq!(
        names(&events_of(&ledger, "allowed")),
        [
            "RunScheduled",
            "RunDispatched(1)",
            "RunStarted(1)",
            "RunSucceeded(1)"
        ]
    );
    for (job, rule) in &expected {
        let events = events_of(&ledger, job);
        // Not retried. Refused before it began, except the request to a name, which is refused
        // as it connects (when the name resolves): begun, but nothing reached the address (this
        // suite's workers report every start at once).
        let mut story = names(&events);
        if *job == "loopback-by-name" {
            story.retain(|name| name != "RunStarted(1)");
        }
        assert_eq!(
            story,
            [
                "RunScheduled",
                "RunDispatched(1)",
                "RunFailed(1)",
                "RunAbandoned(1)"
            ],
            "{job}"
        );
        let refused = events.iter().find_map(|e| match &e.kind {
            RunEventKind::RunFailed { refused, error, .. } => {
                Some((refused.clone(), error.clone()))
            }
            _ => None,
        });
        let (refused, error) = refused.expect("a RunFailed");
        assert_eq!(refused.as_deref(), Some(*rule), "{job}: {error}");
        assert!(
            error.contains("refused by the worker's policy"),
            "{job}: {error}"
        );
    }
    assert!(
        !std::path::Path::new(&marker).exists(),
        "a refused shell task ran"
    );
    // Nothing connected to the server the policy does not allow.
    assert!(
        tokio::time::timeout(Duration::from_millis(1), forbidden.accept())
            .await
            .is_err(),
        "a refused HTTP task connected"
    );

    wait_for(
        "a task_refused alert per refused run",
        Duration::from_secs(30),
        || async {
            let alerts = stack.alerts();
            let refused: Vec<_> = alerts
                .iter()
                .filter(|a| a.kind == AlertKind::TaskRefused)
                .collect();
            let complete = refused.len() == expected.len()
                && refused.iter().all(|a| {
                    a.worker_id.as_deref() == Some("guarded")
                        && a.pool.as_deref() == Some("default")
                })
                && !alerts.iter().any(|a| a.kind == AlertKind::RunAbandoned);
            complete.then_some(())
        },
    )
    .await;
    let metrics = scrape(worker.metrics_addr).await;
    let counted = |rule: &str| {
        metric_value(
            &metrics,
            &format!(r#"kairos_worker_tasks_refused_total{{pool="default",rule="{rule}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (
            counted("shell"),
            counted("program"),
            counted("http_address"),
            counted("http_host")
        ),
        (1.0, 1.0, 2.0, 1.0)
    );
    services.push(worker);
    stop_all(services).await;
}

/// A worker given no policy runs no shell or HTTP task: it says so in its heartbeats, and
/// refuses such a task that reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_without_a_policy_runs_no_shell_or_http_task() {
    let stack = Stack::new(1).await;
    let worker = stack.worker_with("bare", |config| config.policy = None);
    let mut services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    wait_caught_up(std::slice::from_ref(&worker)).await;
    let heartbeats = stack.read_all(&stack.kafka.topics().heartbeats());
    let announced = heartbeats
        .iter()
        .filter_map(|(_, _, payload)| {
            kairos_runtime::codec::decode_heartbeat(payload.as_deref()?).ok()
        })
        .find(|beat| beat.worker_id == "bare")
        .expect("a heartbeat of the worker");
    assert!(
        !announced
            .task_types
            .iter()
            .any(|t| t == "shell" || t == "http"),
        "{:?}",
        announced.task_types
    );
    stack.apply_job(job("shell", &shell(&["true"]))).await;
    wait_for(
        "the shell task to be refused",
        Duration::from_secs(60),
        || async {
            events_of(&stack.ledger(), "shell")
                .iter()
                .find_map(|e| match &e.kind {
                    RunEventKind::RunFailed { refused, .. } => {
                        assert_eq!(refused.as_deref(), Some("task_type"));
                        Some(())
                    }
                    _ => None,
                })
        },
    )
    .await;
    services.push(worker);
    stop_all(services).await;
}

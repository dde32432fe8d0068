//! Alerts: every kind the aggregator raises lands on the alerts topic and is delivered to a
//! webhook, which is retried with backoff when it fails, without holding up the pipeline.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;
use kairos_core::job::{MisfireKind, MisfirePolicy};
use kairos_runtime::codec;
use kairos_tests::{
    exact_retries, free_addr, get_json, metric_value, scrape, shell_job, stop_all, wait_caught_up,
    wait_for, Stack,
};
use serde_json::Value;

/// A webhook that refuses its first `failures` deliveries with a 500, and keeps the rest.
#[derive(Clone, Default)]
struct Webhook {
    refused: Arc<Mutex<u32>>,
    failures: u32,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    async fn start(failures: u32) -> (Webhook, url::Url) {
        let hook = Webhook {
            failures,
            ..Webhook::default()
        };
        let state = hook.clone();
        let app = axum::Router::new().route(
            "/alerts",
            post(move |Json(alert): Json<Value>| {
                let state = state.clone();
                async move {
                    let mut refused = state.refused.lock().unwrap();
                    if *refused < state.failures {
                        *refused += 1;
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    state.received.lock().unwrap().push(alert);
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let addr = free_addr();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hook, format!("http://{addr}/alerts").parse().unwrap())
    }

    fn kinds(&self) -> BTreeSet<String> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter_map(|a| a["kind"].as_str().map(str::to_string))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_alert_kind_reaches_the_topic_and_a_failing_webhook_after_retries() {
    let stack = Stack::new(3).await;
    let (hook, url) = Webhook::start(2).await;
    let aggregator = stack.aggregator_with("aggregator", |c| {
        c.alert_webhook = Some(url);
        c.alert_failures_in_a_row = 2;
        c.pending_alert_after = Duration::from_secs(1);
    });
    let mut trigger = stack.trigger("trigger");
    let doomed_worker = stack.worker_in("edge", "edge-1");
    let services = vec![
        stack.dispatcher("dispatcher"),
        stack.worker("w1"),
        aggregator,
    ];
    wait_caught_up(&services).await;
    trigger.caught_up().await;
    doomed_worker.caught_up().await;
    let api = format!("http://{}", services[2].http_addr.unwrap());

    // A job that always fails, without retries: abandoned runs, then failing twice in a row.
    let mut doomed = shell_job("doomed", "1s", "exit 3");
    doomed.retry = exact_retries(1, Duration::from_millis(100));
    stack.apply_job(doomed).await;
    // A record nobody can read: dead-lettered by the services that consume the ledger.
    stack
        .produce(&stack.kafka.topics().runs(), "doomed", Some(b"not avro"))
        .await;
    // The only worker of pool "edge" dies without a word: lost, and the pool has nobody.
    wait_for("edge-1 to be live", Duration::from_secs(30), || async {
        let workers = get_json(&format!("{api}/api/v1/workers")).await?;
        workers["workers"]
            .as_array()?
            .iter()
            .any(|w| w["worker_id"] == "edge-1" && w["status"] == "live")
            .then_some(())
    })
    .await;
    doomed_worker.kill().await;

    // A job whose slots pass while the trigger is down: a misfire.
    let mut missed = shell_job("missed", "1s", "true");
    missed.misfire = MisfirePolicy {
        policy: MisfireKind::Skip,
        grace: Duration::from_millis(500),
        catch_up_window: Duration::from_secs(3600),
    };
    stack.apply_job(missed).await;
    wait_for("the job to fire once", Duration::from_secs(30), || async {
        stack.job_ledger("missed").first().map(|_| ())
    })
    .await;
    trigger.stop().await.unwrap();
    // The outage under test: two slots of `missed` (every second) come due, past their 500 ms
    // grace, while nobody owns the job.
    let stopped_at = chrono::Utc::now();
    wait_for(
        "two slots to pass unowned",
        Duration::from_secs(10),
        || async {
            (chrono::Utc::now() - stopped_at >= chrono::Duration::milliseconds(2500)).then_some(())
        },
    )
    .await;
    trigger = stack.trigger("trigger");

    let expected: BTreeSet<String> = [
        "run_abandoned",
        "job_failing",
        "dead_lettered",
        "worker_lost",
        "pool_without_workers",
        "misfire",
    ]
    .map(str::to_string)
    .into();
    let on_topic = wait_for(
        "every kind of alert on the alerts topic",
        Duration::from_secs(60),
        || async {
            let alerts = stack.alerts();
            let kinds: BTreeSet<String> =
                alerts.iter().map(|a| a.kind.as_str().to_string()).collect();
            expected.is_subset(&kinds).then_some(alerts)
        },
    )
    .await;
    let about = |kind: &str| on_topic.iter().find(|a| a.kind.as_str() == kind).unwrap();
    assert_eq!(about("job_failing").key(), "doomed");
    assert!(
        about("job_failing").message.contains("2 runs in a row"),
        "{}",
        about("job_failing").message
    );
    assert_eq!(about("worker_lost").worker_id.as_deref(), Some("edge-1"));
    assert_eq!(about("pool_without_workers").pool.as_deref(), Some("edge"));
    assert_eq!(about("misfire").key(), "missed");
    assert!(
        about("dead_lettered").message.contains("runs"),
        "{}",
        about("dead_lettered").message
    );
    let failing = on_topic
        .iter()
        .filter(|a| a.kind.as_str() == "job_failing")
        .count();
    assert_eq!(failing, 1, "one job_failing alert per streak: {on_topic:?}");
    // Each alert carries CloudEvents headers naming its kind, so a router needs no Avro.
    for record in stack.read_records(&stack.kafka.topics().alerts()) {
        let alert = codec::decode_alert(record.payload.as_deref().unwrap()).unwrap();
        let kind = format!("io.kairos.alert.{}", alert.kind.as_str());
        assert_eq!(record.header("ce_type"), Some(kind.as_str()), "{record:?}");
        let id = alert.alert_id.to_string();
        assert_eq!(record.header("ce_id"), Some(id.as_str()));
        assert_eq!(record.header("ce_source"), Some("/kairos/aggregator"));
    }

    // The webhook refused the first two deliveries; they were retried, and every kind arrived.
    wait_for(
        "every kind at the webhook",
        Duration::from_secs(60),
        || async { expected.is_subset(&hook.kinds()).then_some(()) },
    )
    .await;
    assert_eq!(*hook.refused.lock().unwrap(), 2);
    let first_on_topic = on_topic[0].alert_id.to_string();
    assert!(
        hook.received
            .lock()
            .unwrap()
            .iter()
            .any(|a| a["alert_id"] == first_on_topic.as_str()),
        "the alert whose delivery failed was delivered on a retry"
    );
    let metrics = scrape(services[2].metrics_addr).await;
    let retried = metric_value(
        &metrics,
        "kairos_aggregator_webhook_deliveries_total{outcome=\"retried\"}",
    );
    assert!(retried >= Some(2.0), "{metrics}");
    // The API lists what was raised, newest first.
    let listed = get_json(&format!("{api}/api/v1/alerts")).await.unwrap();
    assert!(listed["alerts"].as_array().unwrap().len() >= expected.len());

    trigger.stop().await.unwrap();
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_that_never_answers_does_not_hold_up_the_pipeline() {
    let stack = Stack::new(1).await;
    // Accepts connections and never answers: each delivery waits for its request timeout.
    let silent = tokio::net::TcpListener::bind(free_addr()).await.unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap())
        .parse()
        .unwrap();
    let _held = tokio::spawn(async move {
        let mut open = vec![];
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let aggregator = stack.aggregator_with("aggregator", |c| {
        c.alert_webhook = Some(url);
        c.alert_failures_in_a_row = 1;
    });
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker("w1"),
        aggregator,
    ];
    wait_caught_up(&services).await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    let mut doomed = shell_job("doomed", "1s", "exit 1");
    doomed.retry = exact_retries(1, Duration::from_millis(100));
    stack.apply_job(doomed).await;
    // Every abandoned run raises two alerts the webhook sits on; the read model keeps up anyway.
    wait_for(
        "five abandoned runs in the read model",
        Duration::from_secs(60),
        || async {
            let runs = get_json(&format!("{api}/api/v1/runs?status=abandoned")).await?;
            (runs["runs"].as_array()?.len() >= 5).then_some(())
        },
    )
    .await;
    assert!(stack.alerts().len() >= 5, "the alerts topic has them all");
    stop_all(services).await;
}

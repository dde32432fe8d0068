//! Custom task types on the real broker: a worker built from the worker crate registers Rust
//! handlers; a job names one with its params and the handler's text becomes the run's output. A
//! handler that panics fails its attempt, not the worker, and a task type the pool's workers do
//! not register fails with an error that says so.

use std::time::Duration;

use kairos_core::job::{HandlerTask, TaskSpec};
use kairos_tests::{get_json, one_shot_job, stop_all, wait_caught_up, wait_for, Stack};
use kairos_worker::{Handlers, TaskContext};

fn handler_job(id: &str, handler: &str, params: serde_json::Value) -> kairos_core::job::JobSpec {
    let mut job = one_shot_job(id, "unused", 1);
    job.pool = "rust".into();
    job.task = TaskSpec::Handler(HandlerTask {
        name: handler.into(),
        params,
    });
    job
}

async fn final_run(api: &str, job: &str) -> serde_json::Value {
    wait_for(
        &format!("the run of {job} to end"),
        Duration::from_secs(60),
        || async {
            let body = get_json(&format!("{api}/api/v1/jobs/{job}/runs")).await?;
            body["runs"]
                .as_array()?
                .first()
                .filter(|r| {
                    ["succeeded", "abandoned"].contains(&r["status"].as_str().unwrap_or(""))
                })
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registered_handlers_run_their_task_type_and_failures_stay_in_the_run() {
    let stack = Stack::new(2).await;
    let handlers = Handlers::new()
        .register("shout", |task: TaskContext| async move {
            let text = task.params["text"]
                .as_str()
                .ok_or("params.text is missing")?;
            Ok(format!(
                "{} (attempt {})",
                text.to_uppercase(),
                task.attempt
            ))
        })
        .register("explode", |_task: TaskContext| async move {
            if true {
                panic!("boom");
            }
            Ok(String::new())
        });
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        stack.worker_with_handlers("rust", "rusty", handlers),
        stack.aggregator("aggregator"),
    ];
    wait_caught_up(&services).await;
    let api = format!("http://{}", services[3].http_addr.unwrap());

    let rusty = wait_for(
        "the handler worker in the registry",
        Duration::from_secs(30),
        || async {
            let body = get_json(&format!("{api}/api/v1/workers")).await?;
            body["workers"]
                .as_array()?
                .iter()
                .find(|w| w["worker_id"] == "rusty")
                .cloned()
        },
    )
    .await;
    assert_eq!(
        rusty["task_types"],
        serde_json::json!(["shell", "http", "explode", "shout"])
    );

    stack
        .apply_job(handler_job(
            "loud",
            "shout",
            serde_json::json!({"text": "hello"}),
        ))
        .await;
    stack
        .apply_job(handler_job("bad-params", "shout", serde_json::json!({})))
        .await;
    stack
        .apply_job(handler_job("boom", "explode", serde_json::Value::Null))
        .await;
    stack
        .apply_job(handler_job(
            "unknown",
            "not-registered",
            serde_json::Value::Null,
        ))
        .await;

    let loud = final_run(&api, "loud").await;
    assert_eq!(loud["status"], "succeeded");
    assert_eq!(loud["output"]["stdout"], "HELLO (attempt 1)");

    let cases = [
        ("bad-params", "params.text is missing"),
        ("boom", "handler \"explode\" panicked: boom"),
        ("unknown", "this worker has no handler \"not-registered\""),
    ];
    for (job, error) in cases {
        let run = final_run(&api, job).await;
        assert_eq!(run["status"], "abandoned", "{job}: {run}");
        let recorded = run["error"].as_str().unwrap_or_default();
        assert!(
            recorded.contains(error),
            "{job}: {recorded:?} does not say {error:?}"
        );
    }
    // The worker survived the panic: it still runs shell tasks of its pool.
    let mut shell = one_shot_job("after-panic", "echo still here", 1);
    shell.pool = "rust".into();
    stack.apply_job(shell).await;
    let after = final_run(&api, "after-panic").await;
    assert_eq!(after["output"]["stdout"], "still here\n");
    stop_all(services).await;
}

//! The aggregator's status page, rendered by headless Chromium as a person's browser would: it
//! shows the jobs, the recent runs, the failures with their errors, the alerts and the workers.

use std::time::Duration;

use kairos_tests::{exact_retries, get_json, shell_job, stop_all, wait_for, Stack};

/// The page's DOM after Chromium has loaded and rendered it.
fn render(url: &str) -> String {
    let chromium = std::env::var("KAIROS_TEST_CHROMIUM").expect(
        "KAIROS_TEST_CHROMIUM is not set: run the suite with scripts/test.sh, which installs Chromium",
    );
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let output = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=2000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("running Chromium");
    assert!(
        output.status.success(),
        "Chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("a UTF-8 DOM")
}

/// The text of the `<section id=…>` of the rendered page.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("the page has no {id} section:\n{dom}"));
    let end = dom[start..]
        .find("</section>")
        .map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_jobs_runs_failures_alerts_and_workers() {
    let stack = Stack::new(1).await;
    let services = stack.start_pipeline().await;
    let api = format!("http://{}", services[3].http_addr.unwrap());
    stack
        .apply_job(shell_job("nightly-export", "1s", "echo ok"))
        .await;
    let mut broken = shell_job("broken-sync", "1s", "exit 4");
    broken.retry = exact_retries(1, Duration::from_millis(100));
    stack.apply_job(broken).await;
    wait_for(
        "a success and a failure",
        Duration::from_secs(60),
        || async {
            let ok = get_json(&format!("{api}/api/v1/runs?status=succeeded")).await?;
            let bad = get_json(&format!("{api}/api/v1/runs?status=abandoned")).await?;
            (!ok["runs"].as_array()?.is_empty() && !bad["runs"].as_array()?.is_empty())
                .then_some(())
        },
    )
    .await;
    // The alert about the abandoned run is raised just after the run is read.
    wait_for("the alert on the API", Duration::from_secs(30), || async {
        let alerts = get_json(&format!("{api}/api/v1/alerts")).await?;
        (!alerts["alerts"].as_array()?.is_empty()).then_some(())
    })
    .await;

    let dom = render(&format!("{api}/"));
    assert!(dom.contains("<title>Kairos status</title>"), "{dom}");
    let jobs = section(&dom, "jobs");
    for job in ["nightly-export", "broken-sync", "every 1s"] {
        assert!(jobs.contains(job), "the jobs table lacks {job}:\n{jobs}");
    }
    let failures = section(&dom, "failures");
    assert!(
        failures.contains("broken-sync") && failures.contains("abandoned"),
        "{failures}"
    );
    assert!(
        failures.contains("exited with status 4"),
        "the failure shows its error:\n{failures}"
    );
    let runs = section(&dom, "runs");
    assert!(
        runs.contains("nightly-export") && runs.contains("succeeded"),
        "{runs}"
    );
    assert!(
        runs.contains("href=\"/api/v1/runs/"),
        "each run links to its history:\n{runs}"
    );
    let workers = section(&dom, "workers");
    assert!(
        workers.contains("w1") && workers.contains("live"),
        "{workers}"
    );
    let alerts = section(&dom, "alerts");
    assert!(
        alerts.contains("run_abandoned") && alerts.contains("broken-sync"),
        "{alerts}"
    );
    assert!(
        dom.contains("caught up"),
        "the page says whether the view is current"
    );
    stop_all(services).await;
}

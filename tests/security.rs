//! Only allowed work runs, and secrets never travel in clear.
//!
//! A worker that trusts a key runs only definitions that key signed: an unsigned, a forged and a
//! tampered definition are refused before they begin, recorded as failed attempts with the rule,
//! and alerted. A secret a job names reaches its task, and nothing else: no topic, API response,
//! log line or stored output holds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kairos_core::job::{JobSpec, ShellTask, TaskSpec};
use kairos_core::run::{RunEvent, RunEventKind};
use kairos_core::secrets::SecretRef;
use kairos_core::signing::sign;
use kairos_runtime::codec::AlertKind;
use kairos_runtime::jobs;
use kairos_runtime::keys::{generate, load_signing_key};
use kairos_tests::{events_of, shell_job, stop_all, wait_caught_up, wait_for, Stack};

/// A key pair written as `name.key` and `name.pub` in `dir`: (private key file, public key file).
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (private, public, _) = generate().unwrap();
    let (key, pub_) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    std::fs::write(&key, private).unwrap();
    std::fs::write(&pub_, public).unwrap();
    (key, pub_)
}

/// Sends `request`, and fails the test with the answer's body unless it succeeds.
async fn succeeds(request: reqwest::RequestBuilder) {
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

/// A job due every second whose task leaves a file named after the job in `dir` if it runs.
fn marking_job(id: &str, dir: &Path) -> JobSpec {
    shell_job(id, "1s", &format!("touch {}/{id}", dir.display()))
}

/// The refusals recorded for `job`, by rule.
fn refusals(ledger: &[RunEvent], job: &str) -> Vec<(String, String)> {
    events_of(ledger, job)
        .into_iter()
        .filter_map(|e| match &e.kind {
            RunEventKind::RunFailed {
                refused: Some(rule),
                error,
                ..
            } => Some((rule.clone(), error.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_definitions_signed_by_a_trusted_key_run_and_the_others_are_refused_and_alerted() {
    let stack = Stack::new(2).await;
    let dir = tempfile::tempdir().unwrap();
    let (writer_key, writer_pub) = key_pair(dir.path(), "writer");
    let (stranger_key, _) = key_pair(dir.path(), "stranger");
    let ran = dir.path().join("ran");
    std::fs::create_dir(&ran).unwrap();
    let worker = stack.worker_with("guarded", |config| {
        config.allow_unsigned = false;
        config.trusted_keys = vec![writer_pub.clone()];
    });
    let aggregator = stack.aggregator_with("aggregator", |config| {
        config.signing_key = Some(writer_key.clone());
    });
    let api = format!("http://{}", aggregator.http_addr.unwrap());
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        worker,
        aggregator,
    ];
    wait_caught_up(&services).await;

    // Signed by the API's key, and by kairosctl's: both run.
    succeeds(
        reqwest::Client::new()
            .put(format!("{api}/api/v1/jobs/signed-by-api"))
            .json(&marking_job("signed-by-api", &ran)),
    )
    .await;
    let file = dir.path().join("cli.json");
    std::fs::write(
        &file,
        serde_json::to_string(&marking_job("signed-by-cli", &ran)).unwrap(),
    )
    .unwrap();
    let out = stack.kairosctl(
        &api,
        &[
            "--signing-key",
            writer_key.to_str().unwrap(),
            "job",
            "apply",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unsigned, as any producer with write access to the topic can write.
    stack.apply_job(marking_job("unsigned", &ran)).await;
    // Signed by a key the worker does not trust.
    let producer = stack.kafka.producer().unwrap();
    let stranger = load_signing_key(&stranger_key).unwrap();
    let forged = marking_job("forged", &ran).validate().unwrap();
    let admin = kairos_runtime::kafka::TopicAdmin::new(&stack.kafka).unwrap();
    jobs::put_job(&admin, &producer, &forged, Some(&stranger), "test")
        .await
        .unwrap();
    // Signed by the trusted key, then its command changed.
    let writer = load_signing_key(&writer_key).unwrap();
    let mut tampered = marking_job("tampered", &ran).validate().unwrap();
    let harmless = TaskSpec::Shell(ShellTask {
        command: vec!["true".into()],
        env: Default::default(),
        env_from: Default::default(),
        working_dir: None,
    });
    tampered.signature = Some(sign(&writer, "tampered", &tampered.pool, &harmless));
    stack.apply_jobs(&[tampered]).await;

    let refused = ["unsigned", "forged", "tampered"];
    let ledger = wait_for(
        "the signed jobs to run and the others to be refused",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let signed_ran = ["signed-by-api", "signed-by-cli"].iter().all(|job| {
                events_of(&ledger, job)
                    .iter()
                    .any(|e| matches!(e.kind, RunEventKind::RunSucceeded { .. }))
            });
            let all_refused = refused.iter().all(|job| !refusals(&ledger, job).is_empty());
            (signed_ran && all_refused).then_some(ledger)
        },
    )
    .await;
    for (job, says) in [
        ("unsigned", "not signed"),
        ("forged", "does not trust"),
        ("tampered", "does not verify"),
    ] {
        for (rule, error) in refusals(&ledger, job) {
            assert_eq!(rule, "signature", "{job}: {error}");
            assert!(error.contains(says), "{job}: {error}");
        }
        assert!(
            !events_of(&ledger, job)
                .iter()
                .any(|e| matches!(e.kind, RunEventKind::RunStarted { .. })),
            "{job} started"
        );
    }
    for job in ["signed-by-api", "signed-by-cli"] {
        assert!(ran.join(job).exists(), "{job} did not run");
    }
    // Pausing through the API (which has a key) keeps a definition's signature as it is: it
    // never signs one it did not check.
    succeeds(reqwest::Client::new().post(format!("{api}/api/v1/jobs/unsigned/pause"))).await;
    let unsigned: Vec<_> = stack
        .read_records(&stack.kafka.topics().jobs())
        .into_iter()
        .filter_map(|r| kairos_runtime::codec::decode_job(&r.payload?).ok())
        .filter(|job| job.id.as_str() == "unsigned")
        .collect();
    assert_eq!(unsigned.len(), 2, "applied, then paused: {unsigned:?}");
    assert!(unsigned[1].paused, "{unsigned:?}");
    assert!(
        unsigned.iter().all(|job| job.signature.is_none()),
        "{unsigned:?}"
    );
    for job in refused {
        assert!(!ran.join(job).exists(), "{job} ran");
    }
    wait_for(
        "each refusal to be alerted",
        Duration::from_secs(30),
        || async {
            let alerts = stack.alerts();
            refused
                .iter()
                .all(|job| {
                    alerts.iter().any(|a| {
                        a.kind == AlertKind::TaskRefused
                            && a.job_id.as_ref().is_some_and(|j| j.as_str() == *job)
                    })
                })
                .then_some(())
        },
    )
    .await;
    stop_all(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_reaches_its_task_and_no_topic_api_response_log_or_stored_output() {
    const SECRET: &str = "kairos-secret-value-8d1f3c";
    const LITERAL: &str = "kairos-literal-token-77ab";
    let stack = Stack::new(2).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("db-password"), format!("{SECRET}\n")).unwrap();
    let reached = dir.path().join("reached");
    let (worker, _) = stack.service_process(
        "worker-with-secrets",
        "kairos-worker",
        &[
            "--worker-id",
            "keeper",
            "--heartbeat-interval",
            "300ms",
            "--secrets-dir",
            secrets.to_str().unwrap(),
        ],
    );
    let aggregator = stack.aggregator("aggregator");
    let api = format!("http://{}", aggregator.http_addr.unwrap());
    let services = vec![
        stack.trigger("trigger"),
        stack.dispatcher("dispatcher"),
        aggregator,
    ];
    wait_caught_up(&services).await;

    // The task checks it received the secret, and prints it: the output must be masked.
    let mut job = shell_job(
        "uses-secret",
        "1s",
        &format!(
            "echo \"password is $PGPASSWORD\"; echo \"$PGPASSWORD\" >&2; test \"$PGPASSWORD\" = \"$(cat {})\" && touch {}",
            secrets.join("db-password").display(),
            reached.display()
        ),
    );
    let TaskSpec::Shell(shell) = &mut job.task else {
        unreachable!()
    };
    shell
        .env_from
        .insert("PGPASSWORD".into(), SecretRef::named("db-password"));
    let client = reqwest::Client::new();
    succeeds(
        client
            .put(format!("{api}/api/v1/jobs/uses-secret"))
            .json(&job),
    )
    .await;

    // A literal credential is refused by the API, with the hint…
    let mut literal = shell_job("literal", "1h", "true");
    let TaskSpec::Shell(shell) = &mut literal.task else {
        unreachable!()
    };
    shell.env.insert("API_TOKEN".into(), LITERAL.into());
    let response = client
        .put(format!("{api}/api/v1/jobs/literal"))
        .json(&literal)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("credential_in_clear") && body.contains("env_from"),
        "{body}"
    );
    // …and one a producer wrote anyway is not served back.
    stack.apply_job(literal).await;

    let output = wait_for(
        "the task to run with its secret",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            events_of(&ledger, "uses-secret")
                .into_iter()
                .find_map(|e| match &e.kind {
                    RunEventKind::RunSucceeded { output, .. } => Some(output.clone()),
                    _ => None,
                })
        },
    )
    .await;
    assert!(reached.exists(), "the task did not receive the secret");
    assert!(output.stdout.contains("password is ***"), "{output:?}");
    assert!(!output.stderr.contains(SECRET), "{output:?}");
    wait_for(
        "the API to know both jobs",
        Duration::from_secs(30),
        || async {
            let jobs = client
                .get(format!("{api}/api/v1/jobs"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (jobs.contains("uses-secret") && jobs.contains("\"literal\"")).then_some(())
        },
    )
    .await;

    // Every topic, every API response about the jobs and their runs, the worker's log.
    let mut seen = vec![];
    let topics = kairos_runtime::kafka::partition_counts(&stack.kafka).unwrap();
    for topic in topics
        .keys()
        .filter(|t| t.starts_with(&stack.kafka.topic_prefix))
    {
        for record in stack.read_records(topic) {
            seen.push((topic.clone(), record.payload.unwrap_or_default()));
        }
    }
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/uses-secret",
        "/api/v1/jobs/uses-secret/runs",
        "/api/v1/jobs/literal",
        "/api/v1/jobs/uses-secret/audit",
        "/api/v1/runs",
        "/api/v1/alerts",
        "/",
    ] {
        let body = client
            .get(format!("{api}{path}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        seen.push((path.to_string(), body.to_vec()));
    }
    let runs: serde_json::Value = client
        .get(format!("{api}/api/v1/jobs/uses-secret/runs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for run in runs["runs"].as_array().into_iter().flatten() {
        let path = format!(
            "/api/v1/runs/{}",
            run["run_id"].as_str().unwrap_or_default()
        );
        let body = client.get(format!("{api}{path}")).send().await.unwrap();
        seen.push((path, body.bytes().await.unwrap().to_vec()));
    }
    seen.push((
        "worker log".into(),
        std::fs::read(stack.data_dir("worker-with-secrets.log")).unwrap(),
    ));
    assert!(
        seen.len() > 10,
        "too little read to prove anything: {}",
        seen.len()
    );
    for (place, bytes) in &seen {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(SECRET), "the secret is in {place}");
        // The producer put the literal on the topics; the API does not serve it back.
        if place.starts_with('/') {
            assert!(
                !text.contains(LITERAL),
                "the literal credential is in {place}"
            );
        }
    }
    // The job shows which secret it names, not its value.
    let shown = String::from_utf8_lossy(
        &seen
            .iter()
            .find(|(place, _)| place == "/api/v1/jobs/uses-secret")
            .unwrap()
            .1,
    )
    .into_owned();
    assert!(shown.contains("db-password"), "{shown}");
    worker.kill9().await;
    stop_all(services).await;
}

/// Runs openssl, the independent implementation the keys and signatures are checked against.
fn openssl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (scripts/lib.sh installs it)")
}

#[test]
fn keys_and_signatures_are_those_openssl_writes_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    // A key pair Kairos generates is one openssl reads, with the same public key.
    let (ours, ours_pub) = key_pair(dir.path(), "ours");
    let derived = openssl(&["pkey", "-in", &path("ours.key"), "-pubout"]);
    assert!(derived.status.success(), "{derived:?}");
    assert_eq!(
        String::from_utf8(derived.stdout).unwrap(),
        std::fs::read_to_string(&ours_pub).unwrap()
    );
    // A key pair openssl generates is one Kairos reads.
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &path("theirs.key")
    ])
    .status
    .success());
    assert!(openssl(&[
        "pkey",
        "-in",
        &path("theirs.key"),
        "-pubout",
        "-out",
        &path("theirs.pub")
    ])
    .status
    .success());
    let theirs = load_signing_key(&dir.path().join("theirs.key")).unwrap();
    let trusted =
        kairos_runtime::keys::load_trusted_keys(&[dir.path().join("theirs.pub")]).unwrap();
    assert_eq!(trusted, [theirs.verifying_key()]);
    // A signature Kairos makes is one openssl verifies, over the message the docs describe.
    let task = marking_job("signed", dir.path()).validate().unwrap().task;
    for (key, public) in [
        (load_signing_key(&ours).unwrap(), path("ours.pub")),
        (theirs, path("theirs.pub")),
    ] {
        let signature = sign(&key, "signed", "default", &task);
        let bytes: Vec<u8> = (0..signature.value.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&signature.value[i..i + 2], 16).unwrap())
            .collect();
        std::fs::write(path("sig"), bytes).unwrap();
        let verify = |message: &[u8]| {
            std::fs::write(path("message"), message).unwrap();
            openssl(&[
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                &public,
                "-rawin",
                "-in",
                &path("message"),
                "-sigfile",
                &path("sig"),
            ])
            .status
            .success()
        };
        let message = kairos_core::signing::signed_message("signed", "default", &task);
        assert!(verify(&message), "openssl rejects the signature");
        let mut tampered = message.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(!verify(&tampered), "openssl accepts a tampered message");
    }
}

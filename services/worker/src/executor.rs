//! Runs one task: a process (shell), an HTTP request, or a handler registered in code, with a
//! timeout, cancellation and capped output.
//!
//! A shell task runs in its own process group, so that on timeout or cancel the whole group is
//! killed and no child it started survives. The run id and attempt reach the task as its idempotency key:
//! `KAIROS_RUN_ID` / `KAIROS_ATTEMPT` in the environment, `X-Kairos-Run-Id` / `X-Kairos-Attempt`
//! as HTTP headers; a shard's index, total and parameter come the same way, and so does the
//! worker's id, so that a task's own logs can say where it ran.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kairos_core::job::{HandlerTask, HttpTask, ShellTask, TaskSpec};
use kairos_core::run::TaskOutput;
use kairos_core::secrets::mask_values;
use kairos_core::signing::Trust;
use kairos_core::TaskAssigned;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::handlers::{Handlers, TaskContext};
use crate::policy::{Policy, Refusal};
use crate::secrets::{Resolved, SecretSource};

/// How an attempt ended on this worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    TimedOut,
    /// Stopped because the run was cancelled.
    Cancelled,
    /// Not run: the worker's policy does not allow it.
    Refused(Refusal),
}

/// The outcome and what the task printed or answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Execution {
    pub outcome: Outcome,
    pub output: TaskOutput,
}

/// What a worker checks before it runs a task, and where it finds the task's secrets.
#[derive(Clone, Debug)]
pub struct Safeguards {
    /// What this worker agrees to run.
    pub policy: Policy,
    /// Whose signed definitions it runs.
    pub trust: Trust,
    pub secrets: SecretSource,
}

impl Safeguards {
    /// Development: every task runs, signed or not; secrets come from the environment.
    pub fn none() -> Self {
        Safeguards {
            policy: Policy::AllowAny,
            trust: Trust::default().allowing_unsigned(),
            secrets: SecretSource::default(),
        }
    }
}

/// Runs tasks of every type this worker knows.
#[derive(Clone)]
pub struct Executor {
    /// Bytes of stdout and of stderr kept per attempt.
    pub output_limit: usize,
    pub http: reqwest::Client,
    /// The client of requests that carry secrets: it follows a redirect only to the same
    /// origin, so that no secret header goes to a host the job did not name.
    pub http_with_secrets: reqwest::Client,
    pub handlers: Handlers,
    /// This worker's name on the ledger.
    pub worker_id: String,
    /// What this worker agrees to run.
    pub policy: Arc<Policy>,
    pub trust: Arc<Trust>,
    pub secrets: SecretSource,
    /// `prlimit` and its arguments when the policy limits a shell task's resources: resolved
    /// once, not for every task.
    limited: Option<(PathBuf, Vec<String>)>,
    /// The worker's own `KAIROS_*` variables (its secrets, its Kafka properties), which a shell
    /// task does not inherit; read once, as the worker's environment does not change.
    own_variables: Arc<Vec<std::ffi::OsString>>,
}

impl Executor {
    /// Runs any shell and http task, and no handlers (development, and tests of execution).
    pub fn new(output_limit: usize) -> Self {
        Self::with_safeguards(
            output_limit,
            Safeguards::none(),
            Handlers::new(),
            "worker".into(),
        )
    }

    /// Runs what the safeguards let through, and the `handlers`.
    pub fn with_safeguards(
        output_limit: usize,
        safeguards: Safeguards,
        handlers: Handlers,
        worker_id: String,
    ) -> Self {
        let policy = Arc::new(safeguards.policy);
        let limited = policy.limited();
        Executor {
            output_limit,
            http: http_client(&policy, Redirects::Any),
            http_with_secrets: http_client(&policy, Redirects::SameOrigin),
            handlers,
            worker_id,
            policy,
            trust: Arc::new(safeguards.trust),
            secrets: safeguards.secrets,
            limited,
            own_variables: Arc::new(
                std::env::vars_os()
                    .map(|(name, _)| name)
                    .filter(|name| name.to_string_lossy().starts_with("KAIROS_"))
                    .collect(),
            ),
        }
    }

    /// Whether `task` may run, as far as can be told before it begins (the address an HTTP
    /// host resolves to is checked as the request connects), and what it runs with: its
    /// definition's signature verifies, the policy allows it, and its secrets are here.
    pub fn admit(&self, task: &TaskAssigned) -> Result<Admitted, Refusal> {
        self.trust
            .verify(
                task.signature.as_ref(),
                task.job_id.as_str(),
                &task.pool,
                &task.task,
            )
            .map_err(|error| Refusal {
                rule: "signature",
                reason: error.to_string(),
            })?;
        let program = match &task.task {
            TaskSpec::Shell(shell) => Some(self.policy.admit_shell(shell)?),
            // A URL that does not parse fails as the request is made, like any bad request.
            TaskSpec::Http(request) => {
                if let Ok(url) = url::Url::parse(&request.url) {
                    self.policy.admit_url(&url)?;
                }
                None
            }
            TaskSpec::Handler(_) => None,
        };
        let secrets = self.secrets.resolve(&task.task)?;
        Ok(Admitted { program, secrets })
    }

    /// Executes `task` if the policy lets it; never panics, whatever the task does.
    pub async fn execute(&self, task: &TaskAssigned, cancel: &CancellationToken) -> Execution {
        match self.admit(task) {
            Ok(admitted) => self.run(task, admitted, cancel).await,
            Err(refusal) => refused(refusal),
        }
    }

    /// Executes `task` as [`Executor::admit`] let it; never panics, whatever the task does.
    pub async fn run(
        &self,
        task: &TaskAssigned,
        admitted: Admitted,
        cancel: &CancellationToken,
    ) -> Execution {
        let run = Run {
            task,
            limited: self.limited.as_ref(),
            own_variables: &self.own_variables,
            limit: self.output_limit,
            timeout: self.policy.timeout(task.timeout),
            worker_id: &self.worker_id,
            cancel,
        };
        let secrets = admitted.secrets;
        let execution = match &task.task {
            TaskSpec::Shell(shell) => {
                run_shell(&run, shell, admitted.program, &secrets.fields).await
            }
            TaskSpec::Http(request) => {
                let client = match secrets.fields.is_empty() {
                    true => &self.http,
                    false => &self.http_with_secrets,
                };
                run_http(&run, request, client, &secrets.fields).await
            }
            TaskSpec::Handler(handler) => self.run_handler(&run, handler).await,
        };
        masked(execution, &secrets)
    }

    /// Calls the registered handler in a task of its own, so that a panic fails the attempt and
    /// a timeout or cancel stops it.
    async fn run_handler(&self, run: &Run<'_>, handler: &HandlerTask) -> Execution {
        let (task, cancel) = (run.task, run.cancel);
        let Some(call) = self.handlers.get(&handler.name) else {
            return failed(format!(
                "this worker has no handler {:?}; the workers of pool {:?} must register it",
                handler.name, task.pool
            ));
        };
        let context = TaskContext {
            job_id: task.job_id.clone(),
            run_id: task.run_id,
            attempt: task.attempt,
            scheduled_for: task.scheduled_for,
            params: handler.params.clone(),
            shard: task.shard.clone(),
            cancel: cancel.child_token(),
        };
        let stop = context.cancel.clone();
        let running = tokio::spawn(call(context));
        let abort = running.abort_handle();
        let ended = bounded(running, run.timeout, cancel).await;
        stop.cancel();
        abort.abort();
        let capped = |text: String| cap(text.into_bytes(), self.output_limit);
        match ended {
            Ended::Finished(Ok(Ok(stdout))) => Execution {
                outcome: Outcome::Succeeded,
                output: TaskOutput {
                    exit_code: None,
                    stdout: capped(stdout),
                    stderr: String::new(),
                    ..TaskOutput::default()
                },
            },
            Ended::Finished(Ok(Err(error))) => Execution {
                outcome: Outcome::Failed(error.clone()),
                output: TaskOutput {
                    exit_code: None,
                    stdout: String::new(),
                    stderr: capped(error),
                    ..TaskOutput::default()
                },
            },
            Ended::Finished(Err(join)) => failed(format!(
                "handler {:?} panicked: {}",
                handler.name,
                panic_message(join)
            )),
            Ended::TimedOut => Execution {
                outcome: Outcome::TimedOut,
                output: TaskOutput::default(),
            },
            Ended::Cancelled => Execution {
                outcome: Outcome::Cancelled,
                output: TaskOutput::default(),
            },
        }
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".into()),
        Err(error) => error.to_string(),
    }
}

/// How waiting for a task ended.
enum Ended<T> {
    Finished(T),
    TimedOut,
    Cancelled,
}

/// Waits for `work` until it finishes, the timeout passes, or the run is cancelled.
async fn bounded<T>(
    work: impl std::future::Future<Output = T>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Ended<T> {
    let deadline = async {
        match timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        value = work => Ended::Finished(value),
        _ = deadline => Ended::TimedOut,
        _ = cancel.cancelled() => Ended::Cancelled,
    }
}

fn refused(refusal: Refusal) -> Execution {
    Execution {
        outcome: Outcome::Refused(refusal),
        output: TaskOutput::default(),
    }
}

/// What the safeguards let a task run: for a shell task, the program its first word resolved
/// to; and the task's secrets (which its `Debug` does not show).
#[derive(Debug)]
pub struct Admitted {
    program: Option<PathBuf>,
    secrets: Resolved,
}

/// The execution with every secret value the task received masked in what it printed,
/// answered or failed with, so that none reaches the ledger.
fn masked(mut execution: Execution, secrets: &Resolved) -> Execution {
    if secrets.values.is_empty() {
        return execution;
    }
    let mask = |text: &mut String| *text = mask_values(text, &secrets.values);
    mask(&mut execution.output.stdout);
    mask(&mut execution.output.stderr);
    if let Outcome::Failed(reason) = &mut execution.outcome {
        mask(reason);
    }
    execution
}

/// What every kind of task runs with.
struct Run<'a> {
    task: &'a TaskAssigned,
    /// `prlimit` and its arguments, when the policy limits a shell task's resources.
    limited: Option<&'a (PathBuf, Vec<String>)>,
    /// Variables of the worker's that a shell task does not inherit.
    own_variables: &'a [std::ffi::OsString],
    /// Bytes of output kept.
    limit: usize,
    /// The job's timeout, capped by the policy.
    timeout: Option<Duration>,
    worker_id: &'a str,
    cancel: &'a CancellationToken,
}

/// Which redirects an HTTP task's client follows (besides what the policy allows).
#[derive(Clone, Copy, PartialEq)]
enum Redirects {
    Any,
    /// Only to the scheme, host and port of the request: reqwest drops `Authorization` and
    /// cookies on a redirect elsewhere, but not the other headers a secret may be in.
    SameOrigin,
}

/// The client of HTTP tasks: under an enforced policy it connects only to addresses the policy
/// allows (checked on every resolution, so a name cannot be made to point elsewhere after the
/// check), follows only redirects the policy allows, and goes through no proxy.
fn http_client(policy: &Arc<Policy>, redirects: Redirects) -> reqwest::Client {
    let allowed = Arc::clone(policy);
    let follow = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("too many redirects");
        }
        let first = attempt.previous().first();
        if redirects == Redirects::SameOrigin
            && first.is_some_and(|first| first.origin() != attempt.url().origin())
        {
            let elsewhere = attempt.url().origin().ascii_serialization();
            return attempt.error(format!(
                "a request carrying secrets is not redirected to another origin ({elsewhere})"
            ));
        }
        match allowed.admit_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refusal) => attempt.error(refusal),
        }
    });
    if matches!(**policy, Policy::AllowAny) {
        return reqwest::Client::builder()
            .redirect(follow)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
    }
    reqwest::Client::builder()
        .dns_resolver(Arc::new(PolicyResolver(Arc::clone(policy))))
        .redirect(follow)
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Resolves a host name, keeping only the addresses the policy allows.
struct PolicyResolver(Arc<Policy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let mut refusal = None;
            let allowed: Vec<std::net::SocketAddr> = found
                .filter(|address| match policy.admit_address(address.ip()) {
                    Ok(()) => true,
                    Err(refused) => {
                        refusal.get_or_insert(refused);
                        false
                    }
                })
                .collect();
            match refusal {
                Some(refusal) if allowed.is_empty() => Err(Box::new(refusal) as _),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The policy's refusal somewhere in an error's chain of causes.
fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        cause = error.source();
    }
    None
}

fn failed(reason: String) -> Execution {
    Execution {
        outcome: Outcome::Failed(reason),
        output: TaskOutput::default(),
    }
}

/// Runs `program`, the command's first word as the policy resolved it.
async fn run_shell(
    run: &Run<'_>,
    shell: &ShellTask,
    program: Option<PathBuf>,
    secret_env: &[(String, String)],
) -> Execution {
    let (task, limit, timeout, cancel) = (run.task, run.limit, run.timeout, run.cancel);
    let Some((name, args)) = shell.command.split_first() else {
        return failed("empty command".into());
    };
    let program = program.unwrap_or_else(|| name.into());
    // Under the policy's resource limits, `prlimit` sets them and then becomes the program.
    let mut command = match run.limited {
        Some((prlimit, limits)) => {
            let mut command = tokio::process::Command::new(prlimit);
            command.args(limits).arg(&program);
            command
        }
        None => {
            let mut command = tokio::process::Command::new(&program);
            command.arg0(name);
            command
        }
    };
    // The worker's own settings stay with it: its `KAIROS_SECRET_*` values (a task receives only
    // the secrets it names) and its Kafka properties, SASL password among them.
    for name in run.own_variables {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(&shell.env)
        .envs(secret_env.iter().map(|(name, value)| (name, value)))
        .env("KAIROS_JOB_ID", task.job_id.as_str())
        .env("KAIROS_RUN_ID", task.run_id.to_string())
        .env("KAIROS_ATTEMPT", task.attempt.to_string())
        .env("KAIROS_SCHEDULED_FOR", task.scheduled_for.to_rfc3339())
        .env("KAIROS_WORKER_ID", run.worker_id)
        .envs(
            shard_fields(task)
                .into_iter()
                .map(|(name, value)| (format!("KAIROS_SHARD_{name}"), value)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &shell.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return failed(format!("cannot start {program:?}: {error}")),
    };
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = async {
        let (status, stdout, stderr) = tokio::join!(
            child.wait(),
            read_capped(stdout, limit),
            read_capped(stderr, limit)
        );
        (status, stdout, stderr)
    };
    let ended = bounded(finished, timeout, cancel).await;
    let outcome = match ended {
        Ended::Finished(result) => result,
        Ended::TimedOut | Ended::Cancelled => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                kill_group(pid);
            }
            let _ = child.wait().await;
            let outcome = if matches!(ended, Ended::TimedOut) {
                Outcome::TimedOut
            } else {
                Outcome::Cancelled
            };
            return Execution {
                outcome,
                output: TaskOutput::default(),
            };
        }
    };
    match outcome {
        (Ok(status), stdout, stderr) => {
            let output = TaskOutput {
                exit_code: status.code(),
                stdout,
                stderr,
                ..TaskOutput::default()
            };
            let outcome = if status.success() {
                Outcome::Succeeded
            } else {
                Outcome::Failed(match status.code() {
                    Some(code) => format!("exited with status {code}"),
                    None => "killed by a signal".to_string(),
                })
            };
            Execution { outcome, output }
        }
        (Err(error), stdout, stderr) => Execution {
            outcome: Outcome::Failed(format!("waiting for the process failed: {error}")),
            output: TaskOutput {
                exit_code: None,
                stdout,
                stderr,
                ..TaskOutput::default()
            },
        },
    }
}

/// A shard's index, total and parameter (`INDEX`, `TOTAL`, `PARAM`): `KAIROS_SHARD_*` in a
/// shell task's environment, `X-Kairos-Shard-*` headers of an http task.
fn shard_fields(task: &TaskAssigned) -> Vec<(&'static str, String)> {
    let Some(shard) = &task.shard else {
        return vec![];
    };
    let mut fields = vec![
        ("INDEX", shard.index.to_string()),
        ("TOTAL", shard.total.to_string()),
    ];
    fields.extend(shard.param.clone().map(|param| ("PARAM", param)));
    fields
}

/// Kills the task's whole process group, children included.
fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    if let Err(error) = killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL) {
        tracing::warn!(%error, pgid, "Killing the task's process group failed.");
    }
}

/// Reads a stream to its end, keeping the first `limit` bytes (lossy UTF-8).
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, limit: usize) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    with_dropped(&kept, dropped)
}

/// The first `limit` bytes of `bytes` as text (lossy UTF-8), saying how many were not kept.
fn cap(bytes: Vec<u8>, limit: usize) -> String {
    let dropped = bytes.len().saturating_sub(limit);
    with_dropped(&bytes[..bytes.len().min(limit)], dropped)
}

fn with_dropped(kept: &[u8], dropped: usize) -> String {
    let mut text = String::from_utf8_lossy(kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!("\n[... {dropped} more bytes not kept]"));
    }
    text
}

async fn run_http(
    run: &Run<'_>,
    request: &HttpTask,
    client: &reqwest::Client,
    secret_headers: &[(String, String)],
) -> Execution {
    let (task, limit, timeout, cancel) = (run.task, run.limit, run.timeout, run.cancel);
    let method = match reqwest::Method::from_bytes(request.method.as_bytes()) {
        Ok(method) => method,
        Err(_) => return failed(format!("invalid HTTP method {:?}", request.method)),
    };
    let mut builder = client
        .request(method, &request.url)
        .header("X-Kairos-Job-Id", task.job_id.as_str())
        .header("X-Kairos-Run-Id", task.run_id.to_string())
        .header("X-Kairos-Attempt", task.attempt.to_string())
        .header("X-Kairos-Worker-Id", run.worker_id);
    for (name, value) in shard_fields(task) {
        builder = builder.header(format!("X-Kairos-Shard-{}", name.to_lowercase()), value);
    }
    for (name, value) in request
        .headers
        .iter()
        .chain(secret_headers.iter().map(|(name, value)| (name, value)))
    {
        builder = builder.header(name, value);
    }
    if let Some(body) = &request.body {
        builder = builder.body(body.clone());
    }
    let send = async {
        let response = builder.send().await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    match bounded(send, timeout, cancel).await {
        Ended::TimedOut => Execution {
            outcome: Outcome::TimedOut,
            output: TaskOutput::default(),
        },
        Ended::Cancelled => Execution {
            outcome: Outcome::Cancelled,
            output: TaskOutput::default(),
        },
        Ended::Finished(Err(error)) => match refusal_in(&error) {
            Some(refusal) => refused(refusal),
            None => failed(format!("request to {} failed: {error}", request.url)),
        },
        Ended::Finished(Ok((status, body))) => {
            let output = TaskOutput {
                exit_code: Some(i32::from(status)),
                stdout: cap(body.to_vec(), limit),
                stderr: String::new(),
                ..TaskOutput::default()
            };
            let expected = if request.expected_status.is_empty() {
                (200..300).contains(&status)
            } else {
                request.expected_status.contains(&status)
            };
            let outcome = if expected {
                Outcome::Succeeded
            } else {
                Outcome::Failed(format!("unexpected HTTP status {status}"))
            };
            Execution { outcome, output }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::run::{RunId, TriggerKind};
    use kairos_core::JobId;

    fn task(spec: TaskSpec, timeout: Option<Duration>) -> TaskAssigned {
        let job_id = JobId::parse("exec-test").unwrap();
        let now = chrono::Utc::now();
        TaskAssigned {
            signature: None,
            run_id: RunId::derive(&job_id, now, TriggerKind::Manual),
            job_id,
            attempt: 3,
            scheduled_for: now,
            pool: "default".into(),
            task: spec,
            timeout,
            definition_offset: 0,
            shard: None,
            assigned_at: now,
            start_at: None,
            concurrent_runs: false,
        }
    }

    fn sh(script: &str) -> TaskSpec {
        TaskSpec::Shell(ShellTask {
            env_from: Default::default(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            working_dir: Some("/".into()),
        })
    }

    #[tokio::test]
    async fn a_shell_task_sees_its_run_id_attempt_env_and_working_dir() {
        let t = task(
            sh("echo $GREETING $KAIROS_RUN_ID $KAIROS_ATTEMPT $KAIROS_WORKER_ID; pwd; echo oops >&2"),
            None,
        );
        let run = Executor::new(1024)
            .execute(&t, &CancellationToken::new())
            .await;
        assert_eq!(run.outcome, Outcome::Succeeded);
        assert_eq!(run.output.stdout, format!("hi {} 3 worker\n/\n", t.run_id));
        assert_eq!(run.output.stderr, "oops\n");
        assert_eq!(run.output.exit_code, Some(0));
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_a_missing_program_is_a_clear_failure() {
        let run = Executor::new(1024)
            .execute(&task(sh("exit 7"), None), &CancellationToken::new())
            .await;
        assert_eq!(run.outcome, Outcome::Failed("exited with status 7".into()));
        let missing = TaskSpec::Shell(ShellTask {
            env_from: Default::default(),
            command: vec!["/no/such/program".into()],
            env: Default::default(),
            working_dir: None,
        });
        let run = Executor::new(1024)
            .execute(&task(missing, None), &CancellationToken::new())
            .await;
        assert!(
            matches!(&run.outcome, Outcome::Failed(reason) if reason.contains("/no/such/program")),
            "{run:?}"
        );
    }

    /// Given a policy with memory and CPU limits, when a task allocates past the one or spins
    /// past the other, then it fails, where the same task without limits does not.
    #[tokio::test]
    async fn the_policy_limits_a_shell_tasks_memory_and_cpu() {
        let python = |code: &str| {
            TaskSpec::Shell(ShellTask {
                env_from: Default::default(),
                command: vec!["python3".into(), "-c".into(), code.into()],
                env: Default::default(),
                working_dir: None,
            })
        };
        let limited = Executor::with_safeguards(
            1024,
            Safeguards {
                policy: Policy::parse(
                    "shell:\n  programs: ['/usr/bin/*', '/bin/*']\n  max_memory: 256MiB\n  max_cpu: 1s\n",
                )
                .unwrap(),
                ..Safeguards::none()
            },
            Handlers::new(),
            "limited".into(),
        );
        let allocate = task(python("bytearray(1024 * 1024 * 1024)"), None);
        let unlimited = Executor::new(1024)
            .execute(&allocate, &CancellationToken::new())
            .await;
        assert_eq!(unlimited.outcome, Outcome::Succeeded, "{unlimited:?}");
        let run = limited.execute(&allocate, &CancellationToken::new()).await;
        assert!(
            matches!(run.outcome, Outcome::Failed(_)) && run.output.stderr.contains("MemoryError"),
            "{run:?}"
        );
        // Killed by SIGXCPU after a second of CPU, long before its timeout.
        let spin = task(python("while True: pass"), Some(Duration::from_secs(60)));
        let run = limited.execute(&spin, &CancellationToken::new()).await;
        assert_eq!(
            run.outcome,
            Outcome::Failed("killed by a signal".into()),
            "{run:?}"
        );
    }

    #[tokio::test]
    async fn output_is_capped() {
        let run = Executor::new(100)
            .execute(
                &task(sh("head -c 5000 /dev/zero | tr '\\0' x"), None),
                &CancellationToken::new(),
            )
            .await;
        assert!(run.output.stdout.starts_with(&"x".repeat(100)));
        assert!(
            run.output.stdout.contains("4900 more bytes"),
            "{}",
            run.output.stdout
        );
    }

    /// The timeout kills the task's children too: the grandchild would write a file after 2 s.
    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        // The child records its pid, so the test can see it die.
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pid_file.display());
        let started = std::time::Instant::now();
        let run = Executor::new(1024)
            .execute(
                &task(sh(&script), Some(Duration::from_secs(1))),
                &CancellationToken::new(),
            )
            .await;
        assert_eq!(run.outcome, Outcome::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the task was not stopped at its timeout"
        );
        let pid = std::fs::read_to_string(&pid_file).expect("the child started before the timeout");
        eventually("the child of the timed-out task to die", || {
            process_gone(pid.trim())
        })
        .await;
    }

    /// Whether process `pid` has ended: gone, or a zombie waiting for whoever reaps it.
    fn process_gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                    == Some("Z")
            }
        }
    }

    /// Waits up to 5 s for `check` to hold. Files and processes have no event to await, so this
    /// looks again every POLL.
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        const POLL: Duration = Duration::from_millis(20);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A one-connection HTTP server: answers `reply` (or nothing, if `None`) and hands back the
    /// raw request it received.
    async fn http_server(reply: Option<&'static str>) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&request).contains("payload") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            match reply {
                Some(reply) => socket.write_all(reply.as_bytes()).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, server)
    }

    fn post(url: &str, expected_status: Vec<u16>) -> TaskSpec {
        TaskSpec::Http(HttpTask {
            headers_from: Default::default(),
            method: "POST".into(),
            url: url.into(),
            headers: [("X-Team".to_string(), "data".to_string())].into(),
            body: Some("payload".into()),
            expected_status,
        })
    }

    #[tokio::test]
    async fn an_http_task_sends_its_idempotency_key_and_checks_the_status() {
        let (url, server) = http_server(Some(
            "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ))
        .await;
        let t = task(post(&url, vec![202]), Some(Duration::from_secs(10)));
        let run = Executor::new(1024)
            .execute(&t, &CancellationToken::new())
            .await;
        assert_eq!(run.outcome, Outcome::Succeeded);
        assert_eq!(
            (run.output.exit_code, run.output.stdout.as_str()),
            (Some(202), "ok")
        );
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /hook "), "{request}");
        assert!(
            request.contains(&format!("x-kairos-run-id: {}", t.run_id)),
            "{request}"
        );
        assert!(
            request.contains("x-kairos-attempt: 3") && request.contains("x-team: data"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn an_unexpected_status_fails_and_a_silent_server_times_out() {
        let (url, _server) = http_server(Some(
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ))
        .await;
        let run = Executor::new(1024)
            .execute(
                &task(post(&url, vec![200]), None),
                &CancellationToken::new(),
            )
            .await;
        assert_eq!(
            run.outcome,
            Outcome::Failed("unexpected HTTP status 202".into())
        );
        let (url, _server) = http_server(None).await;
        let run = Executor::new(1024)
            .execute(
                &task(post(&url, vec![]), Some(Duration::from_millis(300))),
                &CancellationToken::new(),
            )
            .await;
        assert_eq!(run.outcome, Outcome::TimedOut);
    }

    #[tokio::test]
    async fn a_cancelled_shell_task_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pid_file.display());
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let watched = pid_file.clone();
        // Cancel once the task is running, which the child's pid file shows. The file exists as
        // soon as the shell opens it, before the pid is written: wait for the whole line, or the
        // cancel can leave it empty and the child unknown.
        tokio::spawn(async move {
            eventually("the task to start its child", || {
                std::fs::read_to_string(&watched).is_ok_and(|pid| pid.ends_with('\n'))
            })
            .await;
            trigger.cancel();
        });
        let run = Executor::new(1024)
            .execute(&task(sh(&script), None), &cancel)
            .await;
        assert_eq!(run.outcome, Outcome::Cancelled);
        let pid = std::fs::read_to_string(&pid_file).expect("the child started before the cancel");
        eventually("the child of the cancelled task to die", || {
            process_gone(pid.trim())
        })
        .await;
    }
}

//! `kairosctl`: the operator CLI. Writes go to Kafka (never around it); reads come from the
//! aggregator's REST API. Every input is validated before anything is produced.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use kairos_core::job::JobSpec;
use kairos_core::run::TriggerKind;
use kairos_core::schedule::{parse_timezone, Schedule};
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::codec;
use kairos_runtime::jobs;
use kairos_runtime::kafka::{apply_topics, TopicSet};
use kairos_runtime::KafkaArgs;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "kairosctl",
    version,
    about = "Operate Kairos: topics, jobs, runs, schedules."
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The aggregator's REST API.
    #[arg(
        long,
        env = "KAIROS_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the topic set.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Define, inspect and delete jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// List the runs of a job.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Inspect one run.
    #[command(subcommand)]
    Run(RunCommand),
    /// Schedule every slot of a job in a past range, once: running it again adds nothing.
    Backfill {
        id: String,
        /// First instant of the range (RFC 3339), inclusive.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// Last instant of the range (RFC 3339), inclusive.
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
    },
    /// The worker registry: every worker's pool, status (live, lost, stopped) and load.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Compute a schedule's next fire times.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create missing topics from the topic set and report drift; never deletes.
    Apply {
        /// The topic set file; the one shipped with this build when absent.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Override the partition count of the co-partitioned topics (new installations only).
        #[arg(long)]
        partitions: Option<i32>,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Validate job files (YAML or JSON; one job or a list) and put them on the jobs topic.
    Apply {
        #[arg(long, short, required = true)]
        file: Vec<PathBuf>,
    },
    /// Show one job.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List jobs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a job (a tombstone on the jobs topic).
    Delete { id: String },
    /// Stop a job from firing; its definition stays.
    Pause { id: String },
    /// Let a paused job fire again; slots missed meanwhile follow its misfire policy.
    Resume { id: String },
    /// Run a job now, as well as on schedule (its overlap policy applies).
    Trigger { id: String },
    /// The job's latest decisions from the ledger, in words: why each run did or did not run.
    Explain {
        id: String,
        /// How many runs, newest first.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Runs of a job, newest slot first.
    List {
        job: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Dispatched runs no worker has started, and why, when no live worker serves their pool.
    Pending {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RunCommand {
    /// One run with its event history.
    Get {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run: a waiting run is removed, a running attempt is stopped on its worker.
    Cancel {
        run_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Next fire times of a cron expression (5, 6 or 7 fields).
    Next {
        expr: String,
        #[arg(long, default_value = "UTC")]
        tz: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Topics(TopicsCommand::Apply { file, partitions }) => {
            topics_apply(&cli.kafka, file.as_deref(), partitions).await
        }
        Command::Job(JobCommand::Apply { file }) => job_apply(&cli.kafka, &file).await,
        Command::Job(JobCommand::Delete { id }) => job_delete(&cli.kafka, &id).await,
        Command::Job(JobCommand::Explain { id, limit }) => explain(&cli.api, &id, limit).await,
        Command::Job(JobCommand::Pause { id }) => set_paused(&cli.kafka, &cli.api, &id, true).await,
        Command::Job(JobCommand::Resume { id }) => {
            set_paused(&cli.kafka, &cli.api, &id, false).await
        }
        Command::Job(JobCommand::Trigger { id }) => {
            let now = chrono::Utc::now();
            schedule_runs(&cli.kafka, &cli.api, &id, &[now], TriggerKind::Manual).await
        }
        Command::Workers { json } => {
            let workers = api_get(&cli.api, "/api/v1/workers").await?;
            if json {
                print_json(&workers);
            } else {
                let rows: Vec<Vec<String>> = workers["workers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|w| {
                        let running = w["in_flight"].as_array().map_or(0, Vec::len);
                        vec![
                            text(&w["worker_id"]),
                            text(&w["pool"]),
                            text(&w["status"]),
                            format!("{running}/{}", text(&w["capacity"])),
                            text(&w["last_seen"]),
                        ]
                    })
                    .collect();
                print_table(&["WORKER", "POOL", "STATUS", "RUNNING", "LAST SEEN"], &rows);
            }
            Ok(())
        }
        Command::Backfill { id, from, to } => backfill(&cli.kafka, &cli.api, &id, from, to).await,
        Command::Job(JobCommand::Get { id, json }) => {
            let job = api_get(&cli.api, &format!("/api/v1/jobs/{id}")).await?;
            if json {
                print_json(&job)
            } else {
                print_job(&job)
            }
            Ok(())
        }
        Command::Job(JobCommand::List { json }) => {
            let jobs = api_get(&cli.api, "/api/v1/jobs").await?;
            if json {
                print_json(&jobs);
            } else {
                let rows = jobs["jobs"].as_array().cloned().unwrap_or_default();
                let rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|j| {
                        vec![
                            text(&j["id"]),
                            schedule_text(&j["definition"]["schedule"]),
                            text(&j["definition"]["pool"]),
                            text(&j["last_run"]["status"]),
                            text(&j["next_fire_times"][0]),
                        ]
                    })
                    .collect();
                print_table(&["JOB", "SCHEDULE", "POOL", "LAST RUN", "NEXT FIRE"], &rows);
            }
            Ok(())
        }
        Command::Runs(RunsCommand::Pending { json }) => {
            let pending = api_get(&cli.api, "/api/v1/runs/pending").await?;
            if json {
                print_json(&pending);
            } else {
                let rows: Vec<Vec<String>> = pending["runs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        let waited = r["waiting_ms"].as_i64().unwrap_or(0) / 1000;
                        vec![
                            text(&r["run_id"]),
                            text(&r["job_id"]),
                            text(&r["pool"]),
                            format!("{waited}s"),
                            r["unserved"]
                                .as_str()
                                .unwrap_or("queued on a live worker")
                                .to_string(),
                        ]
                    })
                    .collect();
                print_table(&["RUN", "JOB", "POOL", "WAITING", "WHY"], &rows);
            }
            Ok(())
        }
        Command::Runs(RunsCommand::List { job, limit, json }) => {
            let runs = api_get(&cli.api, &format!("/api/v1/jobs/{job}/runs?limit={limit}")).await?;
            if json {
                print_json(&runs);
            } else {
                let rows: Vec<Vec<String>> = runs["runs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["run_id"]),
                            text(&r["scheduled_for"]),
                            text(&r["status"]),
                            text(&r["attempt"]),
                            text(&r["worker_id"]),
                            text(&r["output"]["exit_code"]),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "RUN",
                        "SCHEDULED FOR",
                        "STATUS",
                        "ATTEMPT",
                        "WORKER",
                        "EXIT",
                    ],
                    &rows,
                );
            }
            Ok(())
        }
        Command::Run(RunCommand::Cancel { run_id, reason }) => {
            run_cancel(&cli.kafka, &cli.api, &run_id, reason).await
        }
        Command::Run(RunCommand::Get { run_id, json }) => {
            let run = api_get(&cli.api, &format!("/api/v1/runs/{run_id}")).await?;
            if json {
                print_json(&run)
            } else {
                print_run(&run)
            }
            Ok(())
        }
        Command::Schedule(ScheduleCommand::Next { expr, tz, count }) => {
            let schedule = Schedule::cron(&expr, &tz)?;
            let zone = parse_timezone(&tz)?;
            for t in schedule.upcoming(chrono::Utc::now(), count) {
                println!(
                    "{}  ({})",
                    t.with_timezone(&zone).to_rfc3339(),
                    t.to_rfc3339()
                );
            }
            Ok(())
        }
    }
}

async fn topics_apply(
    kafka: &KafkaArgs,
    file: Option<&Path>,
    partitions: Option<i32>,
) -> anyhow::Result<()> {
    let mut set = match file {
        Some(path) => TopicSet::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => TopicSet::shipped(),
    };
    if let Some(partitions) = partitions {
        anyhow::ensure!(partitions > 0, "--partitions must be positive");
        set.partitions = partitions;
    }
    let report = apply_topics(kafka, &set).await?;
    for name in &report.created {
        println!("created    {name}");
    }
    for name in &report.unchanged {
        println!("exists     {name}");
    }
    for drift in &report.drift {
        println!("DRIFT      {drift}");
    }
    Ok(())
}

/// Reads a job file: YAML (JSON is YAML too), one job or a list of jobs.
fn read_jobs(path: &Path) -> anyhow::Result<Vec<JobSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Through a JSON value, so that YAML and JSON files mean exactly the same thing.
    let value: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not YAML or JSON", path.display()))?;
    let specs = if value.is_array() {
        serde_json::from_value::<Vec<JobSpec>>(value)
    } else {
        serde_json::from_value::<JobSpec>(value).map(|s| vec![s])
    };
    specs.with_context(|| format!("{}: not a job file", path.display()))
}

async fn job_apply(kafka: &KafkaArgs, files: &[PathBuf]) -> anyhow::Result<()> {
    // Validate everything before producing anything.
    let mut jobs: Vec<JobDefinition> = vec![];
    for file in files {
        for spec in read_jobs(file)? {
            let id = spec.id.clone();
            jobs.push(
                spec.validate()
                    .with_context(|| format!("{}: job {id:?}", file.display()))?,
            );
        }
    }
    let producer = kafka.producer()?;
    for job in &jobs {
        let written = jobs::put_job(kafka, &producer, job).await?;
        if let Some(topic) = written.created_pool_topic {
            println!("created    {topic} (new pool {:?})", job.pool);
        }
        println!(
            "applied    {} (partition {}, offset {})",
            job.id, written.delivered.partition, written.delivered.offset
        );
    }
    Ok(())
}

async fn run_cancel(
    kafka: &KafkaArgs,
    api: &str,
    run_id: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let Some(id) = kairos_core::RunId::parse(run_id) else {
        bail!("{run_id:?} is not a run id (a UUID)");
    };
    // The request is keyed by job, so it lands in the partition of the job's runs.
    let run = api_get(api, &format!("/api/v1/runs/{id}")).await?;
    let job_id = kairos_core::JobId::parse(run["job_id"].as_str().unwrap_or_default())?;
    if let Some(status) = run["status"]
        .as_str()
        .filter(|s| ["succeeded", "skipped", "cancelled", "abandoned"].contains(s))
    {
        bail!("run {id} is already over ({status})");
    }
    let request = kairos_core::CancelRequest {
        job_id: job_id.clone(),
        run_id: id,
        reason,
        attempt: None,
        at: chrono::Utc::now(),
    };
    let bytes = codec::encode_cancel(&request)?;
    let producer = kafka.producer()?;
    producer
        .send(&kafka.topics().control(), job_id.as_str(), Some(&bytes))
        .await?;
    println!("cancel requested for run {id} of job {job_id}");
    Ok(())
}

async fn explain(api: &str, id: &str, limit: usize) -> anyhow::Result<()> {
    let runs = api_get(api, &format!("/api/v1/jobs/{id}/runs?limit={limit}")).await?;
    let runs = runs["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        println!("{id} has no runs yet");
    }
    for run in runs {
        let run_id = text(&run["run_id"]);
        let detail = api_get(api, &format!("/api/v1/runs/{run_id}")).await?;
        println!(
            "slot {}  run {run_id}  now {}",
            text(&run["scheduled_for"]),
            text(&run["status"])
        );
        for entry in detail["history"].as_array().cloned().unwrap_or_default() {
            println!("  {}  {}", text(&entry["at"]), explain_entry(&entry));
        }
    }
    Ok(())
}

/// One ledger event of a run, in words.
fn explain_entry(entry: &Value) -> String {
    let detail = entry["detail"].as_str().unwrap_or_default();
    let attempt = entry["attempt"].as_u64().unwrap_or_default();
    let words = match entry["event"].as_str().unwrap_or_default() {
        "RunScheduled" => match detail {
            "manual" => "triggered by hand".to_string(),
            "backfill" => "scheduled by a backfill".to_string(),
            _ => "fired on schedule".to_string(),
        },
        "RunSkipped" => match detail {
            "misfire" => {
                "skipped: the slot was missed while no trigger owned the job (misfire policy)"
                    .to_string()
            }
            "overlap" => "skipped: another run of the job was active (overlap policy)".to_string(),
            "job_deleted" => "skipped: the job was deleted".to_string(),
            other => format!("skipped ({other})"),
        },
        "RunDispatched" => format!("attempt {attempt} dispatched to pool {detail}"),
        "RunStarted" => format!("attempt {attempt} started on worker {detail}"),
        "RunSucceeded" => format!("attempt {attempt} succeeded (exit {detail})"),
        "RunFailed" => format!("attempt {attempt} failed: {detail}"),
        "RunTimedOut" => format!("attempt {attempt} timed out (reported by {detail})"),
        "RunLost" => format!("attempt {attempt} lost with its worker"),
        "RunCancelled" => format!("cancelled (attempt {attempt})"),
        "RetryScheduled" => {
            let due = detail.parse::<Timestamp>().ok();
            let at = entry["at"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            match (due, at) {
                (Some(due), Some(at)) => {
                    let wait = (due - at).to_std().unwrap_or_default();
                    format!(
                        "retry: attempt {attempt} due in {:.1} s",
                        wait.as_secs_f64()
                    )
                }
                _ => format!("retry: attempt {attempt} due at {detail}"),
            }
        }
        "RunAbandoned" => format!("abandoned after {attempt} attempts (retry policy exhausted)"),
        other => other.to_string(),
    };
    match entry["effect"].as_str() {
        Some("applied") | None => words,
        Some(effect) => format!("{words} [no effect: {effect}]"),
    }
}

/// The most slots one backfill schedules; a larger range is split by the operator.
const MAX_BACKFILL_SLOTS: usize = 10_000;

/// The job's current definition and its offset, as the aggregator has it.
async fn current_job(api: &str, id: &str) -> anyhow::Result<(JobDefinition, i64)> {
    let job = api_get(api, &format!("/api/v1/jobs/{id}")).await?;
    let spec: JobSpec = serde_json::from_value(job["definition"].clone())
        .context("the API returned a definition this kairosctl cannot read")?;
    let offset = job["definition_offset"]
        .as_i64()
        .context("the API returned no definition offset")?;
    Ok((spec.validate()?, offset))
}

async fn set_paused(kafka: &KafkaArgs, api: &str, id: &str, paused: bool) -> anyhow::Result<()> {
    let (mut job, _) = current_job(api, id).await?;
    if job.paused == paused {
        println!(
            "{id} is already {}",
            if paused { "paused" } else { "running" }
        );
        return Ok(());
    }
    job.paused = paused;
    let delivered = jobs::put_job(kafka, &kafka.producer()?, &job)
        .await?
        .delivered;
    let verb = if paused { "paused" } else { "resumed" };
    println!(
        "{verb:<11}{id} (partition {}, offset {})",
        delivered.partition, delivered.offset
    );
    Ok(())
}

async fn backfill(
    kafka: &KafkaArgs,
    api: &str,
    id: &str,
    from: Timestamp,
    to: Timestamp,
) -> anyhow::Result<()> {
    anyhow::ensure!(from <= to, "--from must not be after --to");
    let (job, _) = current_job(api, id).await?;
    let start = from - chrono::Duration::milliseconds(1);
    let slots: Vec<Timestamp> = std::iter::successors(job.schedule.next_after(start), |t| {
        job.schedule.next_after(*t)
    })
    .take_while(|t| *t <= to)
    .take(MAX_BACKFILL_SLOTS + 1)
    .collect();
    anyhow::ensure!(
        slots.len() <= MAX_BACKFILL_SLOTS,
        "the range holds more than {MAX_BACKFILL_SLOTS} slots; split it"
    );
    anyhow::ensure!(
        !slots.is_empty(),
        "the schedule has no slot between {from} and {to}"
    );
    schedule_runs(kafka, api, id, &slots, TriggerKind::Backfill).await
}

/// Appends `RunScheduled` for each slot; run ids are derived from (job, slot, kind), so a slot
/// scheduled twice is one run.
async fn schedule_runs(
    kafka: &KafkaArgs,
    api: &str,
    id: &str,
    slots: &[Timestamp],
    kind: TriggerKind,
) -> anyhow::Result<()> {
    let (job, definition_offset) = current_job(api, id).await?;
    let producer = kafka.producer()?;
    for (done, slot) in slots.iter().enumerate() {
        let event = jobs::requested_run(&job, definition_offset, *slot, kind);
        jobs::schedule_run(kafka, &producer, &event).await?;
        if slots.len() == 1 {
            println!(
                "scheduled  run {} of {} ({})",
                event.run_id,
                job.id,
                kind.as_str()
            );
        } else {
            eprint!(
                "\rscheduled  {}/{} slots of {}",
                done + 1,
                slots.len(),
                job.id
            );
        }
    }
    if slots.len() > 1 {
        eprintln!();
        println!(
            "backfilled {} slots of {} from {} to {}",
            slots.len(),
            job.id,
            slots[0],
            slots[slots.len() - 1]
        );
    }
    Ok(())
}

async fn job_delete(kafka: &KafkaArgs, id: &str) -> anyhow::Result<()> {
    let id = kairos_core::JobId::parse(id)?;
    let delivered = jobs::delete_job(kafka, &kafka.producer()?, &id).await?;
    println!(
        "deleted    {id} (partition {}, offset {})",
        delivered.partition, delivered.offset
    );
    Ok(())
}

async fn api_get(api: &str, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let response = reqwest::get(&url).await.with_context(|| {
        format!("cannot reach the aggregator at {api} (is it running? set --api or KAIROS_API)")
    })?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("{url}: the answer is not JSON"))?;
    if !status.is_success() {
        bail!(
            "{} ({status})",
            body["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        );
    }
    Ok(body)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn schedule_text(schedule: &Value) -> String {
    if let Some(cron) = schedule["cron"].as_str() {
        format!(
            "cron {cron} {}",
            schedule["timezone"].as_str().unwrap_or("UTC")
        )
    } else if let Some(every) = schedule["every"].as_str() {
        format!("every {every}")
    } else {
        format!("at {}", text(&schedule["at"]))
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    rows.iter().for_each(|r| line(r.clone()));
}

fn print_job(job: &Value) {
    println!("job:          {}", text(&job["id"]));
    println!(
        "schedule:     {}",
        schedule_text(&job["definition"]["schedule"])
    );
    println!("pool:         {}", text(&job["definition"]["pool"]));
    println!("definition:   offset {}", text(&job["definition_offset"]));
    println!(
        "last run:     {} {}",
        text(&job["last_run"]["status"]),
        text(&job["last_run"]["scheduled_for"])
    );
    let next: Vec<String> = job["next_fire_times"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(text)
        .collect();
    println!("next fires:   {}", next.join(", "));
}

fn print_run(run: &Value) {
    for field in [
        "run_id",
        "job_id",
        "scheduled_for",
        "trigger",
        "status",
        "attempt",
        "worker_id",
        "error",
    ] {
        println!("{:<14}{}", format!("{field}:"), text(&run[field]));
    }
    println!("{:<14}{}", "exit code:", text(&run["output"]["exit_code"]));
    if let Some(stdout) = run["output"]["stdout"].as_str().filter(|s| !s.is_empty()) {
        println!("stdout:\n{}", stdout.trim_end());
    }
    if let Some(stderr) = run["output"]["stderr"].as_str().filter(|s| !s.is_empty()) {
        println!("stderr:\n{}", stderr.trim_end());
    }
    println!("history:");
    for entry in run["history"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {}  {:<15} attempt {}  {}",
            text(&entry["at"]),
            text(&entry["event"]),
            text(&entry["attempt"]),
            text(&entry["effect"])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job file shipped in `examples/` is one `kairosctl job apply` accepts.
    #[test]
    fn every_example_job_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut files = vec![];
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("reading examples/") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 8, "examples found: {files:?}");
        for file in files {
            for spec in read_jobs(&file).unwrap() {
                if let Err(error) = spec.validate() {
                    panic!("{}: {error}", file.display());
                }
            }
        }
    }
}

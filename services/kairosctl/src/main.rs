//! `kairosctl`: the operator CLI. Writes go to Kafka (never around it); reads come from the
//! aggregator's REST API. Every input is validated before anything is produced. Output is a table
//! or a few lines for people, or with `--json` one JSON document for programs.

mod replay;
mod tail;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{CommandFactory as _, Parser, Subcommand};
use kairos_core::history::{RunDetail, RunView, RunsPage};
use kairos_core::job::JobSpec;
use kairos_core::run::{RunId, RunStatus, TriggerKind};
use kairos_core::schedule::{DstGap, Schedule, Slot};
use kairos_core::views::{
    AlertsList, JobAuditView, JobChange, JobView, JobsList, PendingRuns, WorkersList,
};
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::jobs;
use kairos_runtime::kafka::{apply_topics, ServiceKind, TopicAdmin, TopicSet};
use kairos_runtime::keys::SigningKey;
use kairos_runtime::KafkaArgs;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "kairosctl",
    version,
    about = "Operate Kairos: topics, jobs, runs, workers, schedules, replays."
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
    /// The bearer token presented to the API, when the aggregator is configured with tokens.
    #[arg(long, env = "KAIROS_API_TOKEN", hide_env_values = true, global = true)]
    api_token: Option<String>,
    /// Who makes the changes this command writes, recorded with each (the `kairos_author`
    /// header); defaults to the user and host name.
    #[arg(long, env = "KAIROS_AUTHOR", global = true)]
    author: Option<String>,
    /// The private key (PKCS#8 PEM, `kairosctl keys generate`) that signs the job definitions
    /// this command writes; workers run only definitions signed by a key they trust.
    #[arg(long, env = "KAIROS_SIGNING_KEY", global = true)]
    signing_key: Option<PathBuf>,
    /// Print one JSON document instead of a table or text.
    #[arg(long, global = true)]
    json: bool,
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
    Workers,
    /// The alerts the aggregator raised since it started, newest first.
    Alerts,
    /// The Avro schemas of the wire contract and the fingerprints Kairos writes: what a client
    /// producing jobs or consuming the ledger needs. With NAME, that schema (self-contained).
    Schemas {
        /// JobDefinition, RunEvent, TaskAssigned, TriggerState, DeadLetter, ControlCommand,
        /// Alert, WorkerHeartbeat or JobStatus.
        name: Option<String>,
        /// Print only the fingerprint (the 8 bytes after `C3 01`, in hex).
        #[arg(long, requires = "name")]
        fingerprint: bool,
    },
    /// Follow the run ledger, the alerts or the dead letters live, decoded (`--json`: one JSON
    /// object a line). Reads without a consumer group: no service's offsets move.
    Tail(tail::TailArgs),
    /// Compute a schedule's next fire times.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Make a stopped service read its inputs again from a point and rebuild its state: resets
    /// its consumer group and drops its local state (the service must be stopped).
    Replay(ReplayArgs),
    /// Signing keys for job definitions.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell completion script, e.g. `kairosctl completions bash > /etc/bash_completion.d/kairosctl`.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["to_earliest", "to_offset", "to_time"])))]
struct ReplayArgs {
    /// trigger, dispatcher, aggregator, or worker (with --pool).
    service: String,
    /// The worker pool whose group is replayed.
    #[arg(long, default_value = kairos_core::job::DEFAULT_POOL)]
    pool: String,
    /// Read everything the topics still hold.
    #[arg(long)]
    to_earliest: bool,
    /// Read each input partition from this offset (clamped to what the partition holds).
    #[arg(long)]
    to_offset: Option<i64>,
    /// Read each input partition from its first record at or after this time (RFC 3339).
    #[arg(long)]
    to_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The service's data directory (its RocksDB store), which the replay drops. Needed for the
    /// trigger, dispatcher and aggregator, run on the service's host.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The service's ops address (its --metrics-addr, e.g. 127.0.0.1:9402): after the reset,
    /// wait for it to be started again and show its rebuild's progress.
    #[arg(long)]
    watch: Option<String>,
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
        /// Override the replication factor of every topic (3 on a production cluster).
        #[arg(long)]
        replication_factor: Option<i32>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new Ed25519 key pair: NAME.key, the private key for `--signing-key` (readable by
    /// its owner only), and NAME.pub, the public key for the workers' `--trusted-keys`.
    Generate { name: PathBuf },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Validate job files (YAML or JSON; one job or a list) and put them on the jobs topic.
    Apply {
        #[arg(long, short, required = true)]
        file: Vec<PathBuf>,
    },
    /// Show one job.
    Get { id: String },
    /// List jobs.
    List,
    /// Delete a job (a tombstone on the jobs topic).
    Delete { id: String },
    /// Stop a job from firing; its definition stays.
    Pause { id: String },
    /// Let a paused job fire again; slots missed meanwhile follow its misfire policy.
    Resume { id: String },
    /// Run a job now, as well as on schedule (its overlap policy applies).
    Trigger { id: String },
    /// The job's latest decisions from the ledger, in words: why each run did or did not run,
    /// and what the fire audit found (slots with no decision, runs whose next step is overdue).
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
        /// Only runs in these statuses (comma-separated, e.g. failed,abandoned).
        #[arg(long)]
        status: Option<String>,
    },
    /// Dispatched runs no worker has started, and why, when no live worker serves their pool.
    Pending,
}

#[derive(Subcommand)]
enum RunCommand {
    /// One run with its event history.
    Get { run_id: String },
    /// Cancel a run: a waiting run is removed, a running attempt is stopped on its worker.
    Cancel {
        run_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// The dialect, meaning and next slots of a cron expression: 5 fields are crontab
    /// (day-of-week 0-7, 0 and 7 Sunday), 6 or 7 fields Quartz (seconds first, 1 = Sunday).
    /// Slots that a DST change moves or drops are marked.
    Next {
        expr: String,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Slots strictly after this instant (RFC 3339); now when absent.
        #[arg(long)]
        from: Option<Timestamp>,
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// What a slot whose local time does not exist (DST gap) does: run_after or skip.
        #[arg(long, default_value = "run_after")]
        dst_gap: DstGap,
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

/// How results are printed.
struct Out {
    json: bool,
}

impl Out {
    /// Prints `value` as JSON, or as `text` renders it for a person.
    fn print(&self, value: &Value, text: impl FnOnce(&Value)) {
        if self.json {
            use std::io::Write as _;
            // A reader that stops early (`| head`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            text(value);
        }
    }

    /// Prints an answer of the API as JSON, or as `text` renders it for a person.
    fn print_as<T: serde::Serialize>(&self, value: &T, text: impl FnOnce(&T)) {
        match self.json {
            true => self.print(&serde_json::to_value(value).unwrap_or_default(), |_| {}),
            false => text(value),
        }
    }

    /// Prints an answer of the API as JSON, or its `items` as a table, one row each.
    fn table<T: serde::Serialize, I>(
        &self,
        value: &T,
        items: &[I],
        headers: &[&str],
        row: impl Fn(&I) -> Vec<String>,
    ) {
        self.print_as(value, |_| {
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            print_table(headers, &rows);
        });
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Out { json: cli.json };
    let (kafka, api) = (
        &cli.kafka,
        &Api {
            base: cli.api.clone(),
            token: cli.api_token.clone(),
        },
    );
    let author = &cli.author.clone().unwrap_or_else(default_author);
    let key = cli
        .signing_key
        .as_deref()
        .map(kairos_runtime::keys::load_signing_key)
        .transpose()?;
    let key = key.as_ref();
    match cli.command {
        Command::Topics(TopicsCommand::Apply {
            file,
            partitions,
            replication_factor,
        }) => topics_apply(&out, kafka, file.as_deref(), partitions, replication_factor).await,
        Command::Job(JobCommand::Apply { file }) => {
            job_apply(&out, kafka, author, key, &file).await
        }
        Command::Job(JobCommand::Delete { id }) => job_delete(&out, kafka, author, &id).await,
        Command::Job(JobCommand::Explain { id, limit }) => explain(&out, api, &id, limit).await,
        Command::Job(JobCommand::Pause { id }) => {
            set_paused(&out, kafka, author, api, &id, true).await
        }
        Command::Job(JobCommand::Resume { id }) => {
            set_paused(&out, kafka, author, api, &id, false).await
        }
        Command::Job(JobCommand::Trigger { id }) => {
            let now = chrono::Utc::now();
            schedule_runs(&out, kafka, author, api, &id, &[now], TriggerKind::Manual).await
        }
        Command::Backfill { id, from, to } => {
            backfill(&out, kafka, author, api, &id, from, to).await
        }
        Command::Job(JobCommand::Get { id }) => {
            let job: JobView = api_get_as(api, &format!("/api/v1/jobs/{id}")).await?;
            out.print_as(&job, print_job);
            Ok(())
        }
        Command::Job(JobCommand::List) => {
            let list: JobsList = api_get_as(api, "/api/v1/jobs").await?;
            let headers = ["JOB", "SCHEDULE", "POOL", "LAST RUN", "NEXT FIRE"];
            out.table(&list, &list.jobs, &headers, |j| {
                vec![
                    j.id.clone(),
                    j.definition.schedule.to_string(),
                    j.definition.pool.clone(),
                    j.last_run
                        .as_ref()
                        .map_or("-".into(), |r| r.status.as_str().to_string()),
                    j.next_fire_times.first().map_or("-".into(), when),
                ]
            });
            Ok(())
        }
        Command::Workers => {
            let list: WorkersList = api_get_as(api, "/api/v1/workers").await?;
            let headers = ["WORKER", "POOL", "STATUS", "RUNNING", "LAST SEEN"];
            out.table(&list, &list.workers, &headers, |w| {
                vec![
                    w.worker_id.clone(),
                    w.pool.clone(),
                    w.status.clone(),
                    format!("{}/{}", w.in_flight.len(), w.capacity),
                    when(&w.last_seen),
                ]
            });
            Ok(())
        }
        Command::Alerts => {
            let list: AlertsList = api_get_as(api, "/api/v1/alerts").await?;
            out.table(&list, &list.alerts, &["AT", "KIND", "MESSAGE"], |a| {
                vec![when(&a.at), a.kind.clone(), a.message.clone()]
            });
            Ok(())
        }
        Command::Runs(RunsCommand::Pending) => {
            let pending: PendingRuns = api_get_as(api, "/api/v1/runs/pending").await?;
            let headers = ["RUN", "JOB", "POOL", "WAITING", "WHY"];
            out.table(&pending, &pending.runs, &headers, |r| {
                vec![
                    r.run_id.to_string(),
                    r.job_id.clone(),
                    r.pool.clone(),
                    format!("{}s", r.waiting_ms / 1000),
                    r.unserved
                        .clone()
                        .unwrap_or_else(|| "queued on a live worker".into()),
                ]
            });
            Ok(())
        }
        Command::Runs(RunsCommand::List { job, limit, status }) => {
            let filter = status.map(|s| format!("&status={s}")).unwrap_or_default();
            let page: RunsPage = api_get_as(
                api,
                &format!("/api/v1/jobs/{job}/runs?limit={limit}{filter}"),
            )
            .await?;
            let headers = [
                "RUN",
                "SCHEDULED FOR",
                "STATUS",
                "ATTEMPT",
                "WORKER",
                "EXIT",
            ];
            out.table(&page, &page.runs, &headers, run_row);
            Ok(())
        }
        Command::Run(RunCommand::Cancel { run_id, reason }) => {
            run_cancel(&out, kafka, author, api, &run_id, reason).await
        }
        Command::Run(RunCommand::Get { run_id }) => {
            let run: RunDetail = api_get_as(api, &format!("/api/v1/runs/{run_id}")).await?;
            out.print_as(&run, print_run);
            Ok(())
        }
        Command::Schedule(ScheduleCommand::Next {
            expr,
            tz,
            from,
            count,
            dst_gap,
        }) => schedule_next(
            &out,
            &expr,
            &tz,
            from.unwrap_or_else(chrono::Utc::now),
            count,
            dst_gap,
        ),
        Command::Tail(args) => tail::tail(kafka, args, out.json).await,
        Command::Schemas { name, fingerprint } => schemas(&out, name.as_deref(), fingerprint),
        Command::Replay(args) => replay(&out, kafka, args).await,
        Command::Keys(KeysCommand::Generate { name }) => keys_generate(&out, &name),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kairosctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

async fn replay(out: &Out, kafka: &KafkaArgs, args: ReplayArgs) -> anyhow::Result<()> {
    let service = match args.service.as_str() {
        "trigger" => ServiceKind::Trigger,
        "dispatcher" => ServiceKind::Dispatcher,
        "aggregator" => ServiceKind::Aggregator,
        "worker" => ServiceKind::Worker {
            pool: args.pool.clone(),
        },
        other => bail!("unknown service {other:?}: one of trigger, dispatcher, worker, aggregator"),
    };
    let from = match (args.to_earliest, args.to_offset, args.to_time) {
        (true, _, _) => replay::From::Earliest,
        (_, Some(offset), _) => replay::From::Offset(offset),
        (_, _, Some(time)) => replay::From::Time(time),
        _ => bail!("say where to replay from: --to-earliest, --to-offset or --to-time"),
    };
    let reset = replay::reset(kafka, &service, from, args.data_dir.as_deref())?;
    let mut value = reset.to_json();
    if !out.json {
        println!(
            "reset      group {} to {} partition position(s){}",
            reset.group,
            reset.positions.len(),
            if reset.dropped_store {
                "; dropped the local store"
            } else {
                ""
            }
        );
    }
    if let Some(ops) = &args.watch {
        if !out.json {
            println!("start the {} again; waiting for it to rebuild (Ctrl-C stops waiting, not the rebuild)", args.service);
        }
        let took = replay::watch(ops, &args.service, out.json).await?;
        value["rebuilt_in_seconds"] = json!(took.as_secs_f64());
        if !out.json {
            println!(
                "rebuilt    in {:.1} s; the {} is caught up",
                took.as_secs_f64(),
                args.service
            );
        }
    }
    out.print(&value, |_| {});
    Ok(())
}

async fn topics_apply(
    out: &Out,
    kafka: &KafkaArgs,
    file: Option<&Path>,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
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
    if let Some(replication) = replication_factor {
        anyhow::ensure!(replication > 0, "--replication-factor must be positive");
        set.replication_factor = replication;
    }
    let report = apply_topics(kafka, &set)
        .await
        .map_err(|e| reach_broker(kafka, e))?;
    let value =
        json!({"created": report.created, "unchanged": report.unchanged, "drift": report.drift});
    out.print(&value, |_| {
        for name in &report.created {
            println!("created    {name}");
        }
        for name in &report.unchanged {
            println!("exists     {name}");
        }
        for drift in &report.drift {
            println!("DRIFT      {drift}");
        }
    });
    Ok(())
}

/// Says which broker could not be reached and how to point at another.
fn reach_broker(kafka: &KafkaArgs, error: impl Into<anyhow::Error>) -> anyhow::Error {
    error.into().context(format!(
        "talking to the broker at {} (set --brokers or KAIROS_BROKERS)",
        kafka.brokers
    ))
}

/// Writes a new key pair, the private key readable by its owner only.
fn keys_generate(out: &Out, name: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public, id) = kairos_runtime::keys::generate()?;
    let private_path = name.with_extension("key");
    let public_path = name.with_extension("pub");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_path)
        .and_then(|mut file| file.write_all(private.as_bytes()))
        .with_context(|| format!("writing {} (it must not exist yet)", private_path.display()))?;
    std::fs::write(&public_path, public)
        .with_context(|| format!("writing {}", public_path.display()))?;
    let value = json!({"key_id": id, "private_key": private_path, "public_key": public_path});
    out.print(&value, |_| {
        println!("key {id}");
        println!(
            "  sign with:  kairosctl --signing-key {}",
            private_path.display()
        );
        println!(
            "  trust with: kairos-worker --trusted-keys {}",
            public_path.display()
        );
    });
    Ok(())
}

async fn job_apply(
    out: &Out,
    kafka: &KafkaArgs,
    author: &str,
    key: Option<&SigningKey>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    // Validate everything before producing anything.
    let mut definitions: Vec<JobDefinition> = vec![];
    for file in files {
        for spec in read_jobs(file)? {
            let id = spec.id.clone();
            let definition = spec
                .validate()
                .with_context(|| format!("{}: job {id:?}", file.display()))?;
            jobs::refuse_credentials_in_clear(&definition)
                .with_context(|| format!("{}: job {id:?}", file.display()))?;
            definitions.push(definition);
        }
    }
    let producer = kafka.producer()?;
    let admin = TopicAdmin::new(kafka)?;
    let mut applied = vec![];
    for job in &definitions {
        let written = jobs::put_job(&admin, &producer, job, key, author)
            .await
            .map_err(|e| reach_broker(kafka, e))?;
        if !out.json {
            if let Some(topic) = &written.created_pool_topic {
                println!("created    {topic} (new pool {:?})", job.pool);
            }
            println!(
                "applied    {} (partition {}, offset {})",
                job.id, written.delivered.partition, written.delivered.offset
            );
        }
        applied.push(json!({
            "job_id": job.id.as_str(),
            "partition": written.delivered.partition,
            "offset": written.delivered.offset,
            "created_pool_topic": written.created_pool_topic,
        }));
    }
    out.print(&json!({ "applied": applied }), |_| {});
    Ok(())
}

async fn run_cancel(
    out: &Out,
    kafka: &KafkaArgs,
    author: &str,
    api: &Api,
    run_id: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let Some(id) = kairos_core::RunId::parse(run_id) else {
        bail!("{run_id:?} is not a run id (a UUID)");
    };
    // The request is keyed by job, so it lands in the partition of the job's runs.
    let RunDetail { run, .. } = api_get_as(api, &format!("/api/v1/runs/{id}")).await?;
    let job_id = run.job_id;
    if run.status.is_final() {
        bail!("run {id} is already over ({})", run.status.as_str());
    }
    let request = kairos_core::CancelRequest {
        job_id: job_id.clone(),
        run_id: id,
        reason,
        attempt: None,
        at: chrono::Utc::now(),
    };
    jobs::request_cancel(kafka, &kafka.producer()?, &request, author)
        .await
        .map_err(|e| reach_broker(kafka, e))?;
    out.print(
        &json!({"cancel_requested": id, "job_id": job_id.as_str()}),
        |_| println!("cancel requested for run {id} of job {job_id}"),
    );
    Ok(())
}

/// What `kairosctl job explain` tells: who changed the job, what the fire audit found, and each
/// run's story.
#[derive(serde::Serialize)]
struct Explanation {
    job_id: String,
    author: Option<String>,
    /// None for a deleted job, whose runs remain.
    changes: Option<Vec<JobChange>>,
    audit: Option<JobAuditView>,
    runs: Vec<RunStory>,
}

#[derive(serde::Serialize)]
struct RunStory {
    run_id: RunId,
    scheduled_for: Timestamp,
    status: RunStatus,
    story: Vec<StoryLine>,
}

#[derive(serde::Serialize)]
struct StoryLine {
    at: Timestamp,
    what: String,
}

async fn explain(out: &Out, api: &Api, id: &str, limit: usize) -> anyhow::Result<()> {
    let page: RunsPage = api_get_as(api, &format!("/api/v1/jobs/{id}/runs?limit={limit}")).await?;
    let mut runs = vec![];
    for run in page.runs {
        let detail: RunDetail = api_get_as(api, &format!("/api/v1/runs/{}", run.run_id)).await?;
        let story = detail
            .history
            .iter()
            .map(|entry| StoryLine {
                at: entry.at,
                what: entry.explain(),
            })
            .collect();
        runs.push(RunStory {
            run_id: run.run_id,
            scheduled_for: run.scheduled_for,
            status: run.status,
            story,
        });
    }
    // A deleted job has runs but no audit.
    let audit: Option<JobAuditView> = api_get_as(api, &format!("/api/v1/jobs/{id}/audit"))
        .await
        .ok();
    // A deleted job has runs but no definition, nor its changes.
    let job: Option<JobView> = api_get_as(api, &format!("/api/v1/jobs/{id}")).await.ok();
    let (author, changes) = job.map_or((None, None), |j| (j.author, Some(j.changes)));
    let explanation = Explanation {
        job_id: id.to_string(),
        author,
        changes,
        audit,
        runs,
    };
    out.print_as(&explanation, |explained| {
        print_changes(
            explained.author.as_deref(),
            explained.changes.as_deref().unwrap_or_default(),
        );
        if let Some(audit) = &explained.audit {
            print_audit(audit);
        }
        if explained.runs.is_empty() {
            println!("{id} has no runs yet");
        }
        for run in &explained.runs {
            println!(
                "slot {}  run {}  now {}",
                when(&run.scheduled_for),
                run.run_id,
                run.status.as_str()
            );
            for line in &run.story {
                println!("  {}  {}", when(&line.at), line.what);
            }
        }
    });
    Ok(())
}

/// Who changed the job's definition, newest last.
fn print_changes(author: Option<&str>, changes: &[JobChange]) {
    if changes.is_empty() && author.is_none() {
        return;
    }
    println!("definition by {}", author.unwrap_or("-"));
    for change in changes {
        println!("  {}", change_line(change));
    }
}

/// A change of a job's definition, as `job get` and `job explain` list them.
fn change_line(change: &JobChange) -> String {
    format!(
        "{}  {:<8} by {} (offset {})",
        change.at.as_ref().map_or("-".into(), when),
        change.change,
        change.author.as_deref().unwrap_or("-"),
        change.offset
    )
}

/// The fire audit's word on a job: how far it has checked, and what it found.
fn print_audit(audit: &JobAuditView) {
    let through = audit
        .checked_through
        .as_ref()
        .map_or("not checked yet".to_string(), |at| {
            format!("checked through {}", when(at))
        });
    println!(
        "audit: {through} (grace {}s): {} missed slot(s), {} stuck run(s)",
        audit.grace_seconds,
        audit.missed_slots.len(),
        audit.stuck_runs.len()
    );
    for slot in &audit.missed_slots {
        println!(
            "  missed slot {}  run {}: no decision on the ledger by {}",
            when(&slot.slot),
            slot.run_id,
            when(&slot.due_by)
        );
    }
    for run in &audit.stuck_runs {
        println!(
            "  stuck run {}: {} (attempt {}), its next step was due by {}",
            run.run_id,
            run.status,
            run.attempt,
            when(&run.due_by)
        );
    }
}

/// The most slots one backfill schedules; a larger range is split by the operator.
const MAX_BACKFILL_SLOTS: usize = 10_000;

/// The job's current definition and its offset, as the aggregator has it.
async fn current_job(api: &Api, id: &str) -> anyhow::Result<(JobDefinition, i64)> {
    let job: JobView = api_get_as(api, &format!("/api/v1/jobs/{id}")).await?;
    Ok((job.definition.validate()?, job.definition_offset))
}

async fn set_paused(
    out: &Out,
    kafka: &KafkaArgs,
    author: &str,
    api: &Api,
    id: &str,
    paused: bool,
) -> anyhow::Result<()> {
    let (mut job, _) = current_job(api, id).await?;
    if job.paused == paused {
        out.print(
            &json!({"job_id": id, "paused": paused, "changed": false}),
            |_| {
                println!(
                    "{id} is already {}",
                    if paused { "paused" } else { "running" }
                )
            },
        );
        return Ok(());
    }
    job.paused = paused;
    // Not signed anew: the signature, which does not cover `paused`, stays as it is, so that
    // pausing never signs a definition nobody checked.
    let delivered = jobs::put_job(
        &TopicAdmin::new(kafka)?,
        &kafka.producer()?,
        &job,
        None,
        author,
    )
    .await
    .map_err(|e| reach_broker(kafka, e))?
    .delivered;
    let verb = if paused { "paused" } else { "resumed" };
    let value = json!({"job_id": id, "paused": paused, "changed": true, "partition": delivered.partition, "offset": delivered.offset});
    out.print(&value, |_| {
        println!(
            "{verb:<11}{id} (partition {}, offset {})",
            delivered.partition, delivered.offset
        )
    });
    Ok(())
}

/// Prints the wire schemas and their fingerprints, or one of them.
fn schemas(out: &Out, name: Option<&str>, fingerprint_only: bool) -> anyhow::Result<()> {
    let all = kairos_runtime::codec::wire_schemas();
    let Some(name) = name else {
        out.print(&json!(all), |_| {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| vec![s.name.to_string(), s.fingerprint.clone()])
                .collect();
            print_table(&["SCHEMA", "FINGERPRINT (after C3 01)"], &rows);
        });
        return Ok(());
    };
    let known: Vec<&str> = all.iter().map(|s| s.name).collect();
    let schema = all
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(name))
        .with_context(|| format!("no schema {name:?}; the schemas are {}", known.join(", ")))?;
    if fingerprint_only {
        out.print(
            &json!({"name": schema.name, "fingerprint": schema.fingerprint}),
            |_| println!("{}", schema.fingerprint),
        );
    } else {
        out.print(&schema.schema, |s| {
            println!("{}", serde_json::to_string_pretty(s).unwrap_or_default())
        });
    }
    Ok(())
}

/// Prints a cron expression's dialect, its meaning and its next `count` slots after `from`.
fn schedule_next(
    out: &Out,
    expr: &str,
    tz: &str,
    from: Timestamp,
    count: usize,
    dst_gap: DstGap,
) -> anyhow::Result<()> {
    let schedule = Schedule::cron_with(expr, tz, dst_gap)?;
    let Schedule::Cron(cron) = &schedule else {
        bail!("{expr:?} is not a cron expression");
    };
    let zone = cron.timezone();
    let slots: Vec<Slot> = schedule.slots_after(from).take(count).collect();
    let listed: Vec<Value> = slots
        .iter()
        .map(|slot| {
            json!({
                "at": slot.at,
                "local": slot.at.with_timezone(&zone).to_rfc3339(),
                "runs": !slot.is_dropped(),
                "dst": slot.dst.map(|d| d.describe()),
            })
        })
        .collect();
    let value = json!({
        "cron": cron.expr(),
        "dialect": cron.dialect().as_str(),
        "timezone": zone.name(),
        "dst_gap": cron.dst_gap().as_str(),
        "description": schedule.describe(),
        "slots": listed,
        "next_fire_times": slots.iter().filter(|s| !s.is_dropped()).map(|s| s.at).collect::<Vec<_>>(),
    });
    out.print(&value, |_| {
        println!("{}", schedule.describe());
        for slot in &slots {
            let note = slot
                .dst
                .map_or(String::new(), |d| format!("  DST: {}", d.describe()));
            println!(
                "{}  ({}){note}",
                slot.at.with_timezone(&zone).to_rfc3339(),
                slot.at.to_rfc3339()
            );
        }
    });
    Ok(())
}

async fn backfill(
    out: &Out,
    kafka: &KafkaArgs,
    author: &str,
    api: &Api,
    id: &str,
    from: Timestamp,
    to: Timestamp,
) -> anyhow::Result<()> {
    anyhow::ensure!(from <= to, "--from must not be after --to");
    let (job, _) = current_job(api, id).await?;
    let start = from - chrono::Duration::milliseconds(1);
    // Every slot of every schedule that would have run: none a calendar excludes or a DST rule
    // drops.
    let slots: Vec<Timestamp> = job
        .slots_after(start)
        .take_while(|s| s.at <= to)
        .filter(|s| job.runs_at(s))
        .map(|s| s.at)
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
    schedule_runs(out, kafka, author, api, id, &slots, TriggerKind::Backfill).await
}

/// A run `kairosctl job trigger` or `backfill` scheduled.
#[derive(serde::Serialize)]
struct ScheduledRun {
    run_id: RunId,
    scheduled_for: Timestamp,
}

/// Appends `RunScheduled` for each slot; run ids are derived from (job, slot, kind), so a slot
/// scheduled twice is one run.
async fn schedule_runs(
    out: &Out,
    kafka: &KafkaArgs,
    author: &str,
    api: &Api,
    id: &str,
    slots: &[Timestamp],
    kind: TriggerKind,
) -> anyhow::Result<()> {
    let (job, definition_offset) = current_job(api, id).await?;
    let producer = kafka.producer()?;
    let progress = if out.json || slots.len() == 1 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(slots.len() as u64)
    };
    let mut runs = vec![];
    for slot in slots {
        let event = jobs::requested_run(&job, definition_offset, *slot, kind);
        jobs::schedule_run(kafka, &producer, &event, author)
            .await
            .map_err(|e| reach_broker(kafka, e))?;
        runs.push(ScheduledRun {
            run_id: event.run_id,
            scheduled_for: event.scheduled_for,
        });
        progress.inc(1);
    }
    progress.finish_and_clear();
    let value = json!({"job_id": job.id.as_str(), "trigger": kind.as_str(), "runs": runs});
    out.print(&value, |_| match runs.as_slice() {
        [run] => println!(
            "scheduled  run {} of {} ({})",
            run.run_id,
            job.id,
            kind.as_str()
        ),
        _ => println!(
            "backfilled {} slots of {} from {} to {}",
            slots.len(),
            job.id,
            slots[0],
            slots[slots.len() - 1]
        ),
    });
    Ok(())
}

async fn job_delete(out: &Out, kafka: &KafkaArgs, author: &str, id: &str) -> anyhow::Result<()> {
    let id = kairos_core::JobId::parse(id)?;
    let delivered = jobs::delete_job(kafka, &kafka.producer()?, &id, author)
        .await
        .map_err(|e| reach_broker(kafka, e))?;
    let value = json!({"deleted": id.as_str(), "partition": delivered.partition, "offset": delivered.offset});
    out.print(&value, |_| {
        println!(
            "deleted    {id} (partition {}, offset {})",
            delivered.partition, delivered.offset
        )
    });
    Ok(())
}

/// The aggregator's REST API, and the token presented to it.
struct Api {
    base: String,
    token: Option<String>,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// The author of changes made from this shell: `cli:<user>@<host>`.
fn default_author() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    let host = kairos_runtime::host_name().unwrap_or_else(|| "localhost".into());
    format!("cli:{user}@{host}")
}

/// A GET of the API, read into the API's own type for the answer.
async fn api_get_as<T: serde::de::DeserializeOwned>(api: &Api, path: &str) -> anyhow::Result<T> {
    let body = api_get(api, path).await?;
    serde_json::from_value(body)
        .with_context(|| format!("{path}: not the answer this kairosctl knows"))
}

async fn api_get(api: &Api, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", api.base.trim_end_matches('/'));
    let mut request = reqwest::Client::new().get(&url);
    if let Some(token) = &api.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| {
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

/// Reads a job file: YAML (JSON is YAML too), one job or a list of jobs.
fn read_jobs(path: &Path) -> anyhow::Result<Vec<JobSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Through a JSON value, so that YAML and JSON files mean exactly the same thing.
    let value: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not YAML or JSON", path.display()))?;
    // serde_path_to_error names the field that is wrong (`[1].calendars[0].dates[0]`), which
    // serde_json alone does not once the YAML positions are gone.
    let specs = if value.is_array() {
        serde_path_to_error::deserialize::<_, Vec<JobSpec>>(value)
    } else {
        serde_path_to_error::deserialize::<_, JobSpec>(value).map(|s| vec![s])
    };
    specs.map_err(|e| {
        anyhow::anyhow!(
            "{}: not a job file: {}: {}",
            path.display(),
            e.path(),
            e.inner()
        )
    })
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

fn print_job(job: &JobView) {
    println!("job:          {}", job.id);
    println!("schedule:     {}", job.definition.schedule);
    println!("meaning:      {}", job.schedule_description);
    println!("pool:         {}", job.definition.pool);
    println!("definition:   offset {}", job.definition_offset);
    println!(
        "changed by:   {} at {}",
        job.author.as_deref().unwrap_or("-"),
        job.updated_at.as_ref().map_or("-".into(), when)
    );
    if job.changes.len() > 1 {
        println!("changes:");
        for change in &job.changes {
            println!("  {}", change_line(change));
        }
    }
    match &job.last_run {
        Some(run) => println!(
            "last run:     {} {}",
            run.status.as_str(),
            when(&run.scheduled_for)
        ),
        None => println!("last run:     - -"),
    }
    let next: Vec<String> = job.next_fire_times.iter().map(when).collect();
    println!("next fires:   {}", next.join(", "));
}

/// A time as the API writes it (RFC 3339, UTC as `Z`).
fn when(at: &Timestamp) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A run as a row of `kairosctl runs list`.
fn run_row(run: &RunView) -> Vec<String> {
    let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    vec![
        run.run_id.to_string(),
        when(&run.scheduled_for),
        run.status.as_str().to_string(),
        run.attempt.to_string(),
        or_dash(run.worker_id.clone()),
        or_dash(
            run.output
                .as_ref()
                .and_then(|o| o.exit_code)
                .map(|c| c.to_string()),
        ),
    ]
}

fn print_run(detail: &RunDetail) {
    let run = &detail.run;
    let or_dash = |s: Option<&str>| s.unwrap_or("-").to_string();
    let fields = [
        ("run_id", run.run_id.to_string()),
        ("job_id", run.job_id.to_string()),
        ("scheduled_for", when(&run.scheduled_for)),
        ("trigger", run.trigger.as_str().to_string()),
        ("status", run.status.as_str().to_string()),
        ("attempt", run.attempt.to_string()),
        ("worker_id", or_dash(run.worker_id.as_deref())),
        ("error", or_dash(run.error.as_deref())),
    ];
    for (field, value) in fields {
        println!("{:<14}{value}", format!("{field}:"));
    }
    let output = run.output.as_ref();
    let exit = output.and_then(|o| o.exit_code).map(|c| c.to_string());
    println!("{:<14}{}", "exit code:", or_dash(exit.as_deref()));
    if let Some(output) = output {
        for (name, text) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            if !text.is_empty() {
                println!("{name}:\n{}", text.trim_end());
            }
        }
    }
    if let Some(why) = &detail.waiting_for_worker {
        println!("{:<14}{why}", "waiting:");
    }
    println!("history:");
    for entry in &detail.history {
        println!(
            "  {}  {:<15} attempt {}  {}",
            when(&entry.at),
            entry.event,
            entry.attempt.map_or_else(|| "-".into(), |a| a.to_string()),
            entry.effect
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `examples/`, from the manifest directory cargo gives the running test (a shared build
    /// cache can hold a test binary compiled in another checkout).
    fn examples() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(
                || env!("CARGO_MANIFEST_DIR").into(),
                std::path::PathBuf::from,
            )
            .join("../../examples")
    }

    /// Every job file shipped in `examples/` is one `kairosctl job apply` accepts.
    #[test]
    fn every_example_job_is_valid() {
        let root = examples();
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

    /// A mistake in a job file is named by its path in the file, which the YAML-to-JSON step would
    /// otherwise lose.
    #[test]
    fn a_bad_field_in_a_job_file_is_named_by_its_path() {
        let file = std::env::temp_dir().join(format!("kairosctl-bad-{}.yaml", std::process::id()));
        std::fs::write(
            &file,
            "- id: ok\n  schedule: {every: 1s}\n  task: {shell: {command: [\"true\"]}}\n\
             - id: bad\n  schedule: {cron: \"0 12 * * 1-5\"}\n  calendars: [{name: h, dates: [2026-13-01]}]\n  task: {shell: {command: [\"true\"]}}\n",
        )
        .unwrap();
        let error = read_jobs(&file).unwrap_err().to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(
            error.contains("not a job file: [1].calendars[0].dates[0]: input is out of range"),
            "{error}"
        );
    }

    /// A calendar written once in a job file (a YAML anchor) is the same calendar in every job
    /// that lists it.
    #[test]
    fn jobs_in_one_file_share_a_calendar_through_an_anchor() {
        let file = examples().join("business-days.yaml");
        let jobs = read_jobs(&file).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].calendars[0].name, "holidays-de");
        assert_eq!(jobs[0].calendars, jobs[1].calendars);
    }
}

//! The worker: executes the tasks of one pool and reports every attempt on the run ledger.
//!
//! It consumes `tasks.<pool>` in the pool's consumer group. Tasks of different jobs run
//! concurrently (up to `--max-concurrent`), tasks of one job run one after another in offset order
//! (for a sharded job, the tasks of one shard), except that runs of a job with `overlap: allow`
//! run side by side.
//! For each attempt it appends `RunStarted`, runs the task, and appends the outcome; a task's offset
//! becomes committable only after its outcome is acknowledged by the broker, and a partition's
//! committed offset never passes its lowest unfinished task. A crash therefore re-delivers
//! unfinished tasks (at-least-once); the ledger keeps the first outcome of an attempt. A task
//! redelivered here (or read after this worker was silent past three heartbeats) is first checked
//! against the ledger's tail from its dispatch: an attempt already over is skipped, not run again.
//! That read runs off the loop, through one long-lived [`LedgerReader`]: the partition's tasks
//! wait for it in order while the loop goes on consuming other partitions and committing
//! outcomes. Heartbeats come from a task of their own (see [`beats`]): a loop waiting on the
//! broker (a ledger read, a rebalance) went silent, and its worker was taken for lost.
//!
//! A task dispatched ahead of its slot (`start_at`) is held, without taking one of the
//! `--max-concurrent` places, and started at its start time by this worker's own clock; its
//! `RunStarted` is sent as it starts, not waited for first. A cancel or fence that arrives while
//! it is held drops it unrun; a stop hands it back unrun (uncommitted), so that the partition's
//! next owner runs it, once. A revoked partition's attempts are handed over before the group may
//! give the partition to another worker (see [`handover`]): those not taken up are released,
//! those taken up (waiting for a place, or running) are announced on the ledger, so that the
//! next owner leaves them to this worker.
//!
//! Stopping (SIGTERM) drains: no new task starts, running ones get `--drain-timeout` to finish,
//! and whatever is left is killed and handed back — not reported, not committed — so that the
//! pool's next owner of the partition runs the same attempt again.
//!
//! The control topic tells every worker which runs to stop: cancelled runs, and attempts the
//! dispatcher has recorded as lost or timed out (fences). A fence is remembered for a while, so
//! that the attempt is not run again when its task is redelivered here after a rebalance.

mod beats;
pub mod executor;
mod handlers;
mod handover;
mod metrics_names;
pub mod policy;
pub mod secrets;
mod tracker;

pub use handlers::{Handlers, TaskContext};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use kairos_core::run::RunId;
use kairos_core::run::{RunEvent, RunEventKind};
use kairos_core::{CancelRequest, JobId, TaskAssigned, Timestamp};
use kairos_runtime::codec;
use kairos_runtime::deadletter::{reason_label, DeadLetters};
use kairos_runtime::kafka::ServiceKind;
use kairos_runtime::kafka::{
    broadcast_consumer, check_co_partitioning, task_topic_config, Input, ReliableProducer,
    TopicAdmin,
};
use kairos_runtime::ledger::{AttemptKey, Attempts, Ledger, LedgerReader, DISPATCHED_AT_HEADER};
use kairos_runtime::telemetry::Health;
use kairos_runtime::workers::{Heartbeats, Liveness, Registry};
use kairos_runtime::{KafkaArgs, PartitionedConsumer};
use kairos_runtime::{ServiceArgs, ServiceParts, ServiceSpec};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::Offset;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::beats::{Announcement, Beater, LoopClock, Silence};
use crate::executor::{Executor, Outcome, Safeguards};
use crate::handover::{Claim, Claims, HANDOVER_TIMEOUT};
use crate::metrics_names as m;
use crate::policy::{Policy, Refusal};
use crate::secrets::SecretSource;
use crate::tracker::OffsetTracker;

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "kairos-worker",
    version,
    about = "Executes the tasks of a worker pool.",
    mut_arg("metrics_addr", |a| a.default_value("127.0.0.1:9403")),
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The pool this worker serves; it consumes `<prefix>.tasks.<pool>`.
    #[arg(long, env = "KAIROS_POOL", default_value = "default")]
    pub pool: String,
    /// Tasks run at once.
    #[arg(long, env = "KAIROS_MAX_CONCURRENT", default_value_t = 4)]
    pub max_concurrent: usize,
    /// This worker's name on the ledger; defaults to host name and process id.
    #[arg(long, env = "KAIROS_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Bytes of stdout and of stderr kept per attempt.
    #[arg(long, env = "KAIROS_OUTPUT_LIMIT", default_value_t = 64 * 1024)]
    pub output_limit: usize,
    /// How often the worker announces itself on the heartbeats topic.
    #[arg(long, env = "KAIROS_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// On SIGTERM, how long running tasks may take to finish before they are handed back.
    #[arg(long, env = "KAIROS_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How long a task runs before its start is reported as a `RunStarted` of its own. A task
    /// that ends sooner reports only its outcome, which records when it began: one ledger record
    /// fewer per run. 0 reports every start as the task starts.
    #[arg(long, env = "KAIROS_REPORT_START_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub report_start_after: Duration,
    /// The worker's policy (YAML): which programs its shell tasks may run, which hosts its HTTP
    /// tasks may call, how long any task may run. Without one it runs only the handlers
    /// compiled into it.
    #[arg(long, env = "KAIROS_WORKER_POLICY", conflicts_with = "allow_any_task")]
    pub policy: Option<std::path::PathBuf>,
    /// Development only: run every task, whatever it runs or calls.
    #[arg(long, env = "KAIROS_ALLOW_ANY_TASK")]
    pub allow_any_task: bool,
    /// The public keys (PEM files, or directories of `*.pem`/`*.pub`) whose signed job
    /// definitions this worker runs; several, to rotate a key.
    #[arg(long, env = "KAIROS_TRUSTED_KEYS", value_delimiter = ',')]
    pub trusted_keys: Vec<std::path::PathBuf>,
    /// Also run unsigned job definitions: for development, or while the writers are being
    /// given keys (a signed definition must still verify).
    #[arg(long, env = "KAIROS_ALLOW_UNSIGNED")]
    pub allow_unsigned: bool,
    /// The directory whose files are the secrets tasks name (`env_from`, `headers_from`), as
    /// Kubernetes mounts a Secret; a secret not there is read from `KAIROS_SECRET_<NAME>`.
    #[arg(long, env = "KAIROS_SECRETS_DIR")]
    pub secrets_dir: Option<std::path::PathBuf>,
}

impl Config {
    pub fn new(kafka: KafkaArgs, metrics_addr: SocketAddr) -> Self {
        Config {
            service: ServiceArgs::new(kafka, metrics_addr),
            pool: "default".into(),
            max_concurrent: 4,
            worker_id: None,
            output_limit: 64 * 1024,
            heartbeat_interval: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            report_start_after: DEFAULT_REPORT_START_AFTER,
            policy: None,
            allow_any_task: false,
            trusted_keys: vec![],
            allow_unsigned: false,
            secrets_dir: None,
        }
    }

    /// The policy the flags name; says loudly what an unguarded worker runs.
    fn load_policy(&self) -> anyhow::Result<Policy> {
        if self.allow_any_task {
            tracing::warn!("--allow-any-task: this worker runs ANY shell command and calls ANY URL that appears on its task topic. For development only.");
            return Ok(Policy::AllowAny);
        }
        match &self.policy {
            Some(path) => Policy::load(path),
            None => {
                tracing::warn!("No --policy: this worker runs no shell or http task, only the handlers compiled into it.");
                Ok(Policy::handlers_only())
            }
        }
    }

    /// The policy, the trusted keys and the secrets directory the flags name.
    fn safeguards(&self) -> anyhow::Result<Safeguards> {
        Ok(Safeguards {
            policy: self.load_policy()?,
            trust: kairos_runtime::keys::trust(&self.trusted_keys, self.allow_unsigned)?,
            secrets: SecretSource {
                dir: self.secrets_dir.clone(),
            },
        })
    }

    fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = kairos_runtime::host_name().unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// How long a worker may take to read the ledger's tail for the tasks redelivered to it.
const LEDGER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The ledger offset of the task's dispatch, from its header.
fn dispatched_at(message: &OwnedMessage) -> Option<i64> {
    // A negative one (earlier dispatchers wrote the offset of a send acknowledged as a duplicate,
    // which has none) is no position, as if there were no header.
    kairos_runtime::record_header(message, DISPATCHED_AT_HEADER)?
        .parse()
        .ok()
        .filter(|offset| *offset >= 0)
}

/// The task's attempt (and shard) as the ledger's outcome events name it.
fn attempt_key(task: &TaskAssigned) -> AttemptKey {
    (
        task.run_id,
        task.attempt,
        task.shard.as_ref().map(|s| s.index),
    )
}

/// Why a redelivered attempt is not run here, if another worker ran it or is running it: the
/// ledger records it as over, or another worker said it started it and is still alive (it reports
/// the outcome), lost (the dispatcher records the attempt lost, and a retry follows) or not yet
/// heard of (this worker has just started and is still reading the heartbeats; every worker
/// beats before it takes a task). One started by a worker that has since stopped was handed back
/// unfinished, and runs here.
fn taken_elsewhere(
    seen: &Attempts,
    task: &TaskAssigned,
    me: &str,
    workers: &Registry,
    now: Timestamp,
) -> Option<&'static str> {
    let key = attempt_key(task);
    if seen.is_over(key) {
        return Some("already_over");
    }
    let starter = seen.started_by(key).filter(|worker| *worker != me)?;
    match workers.liveness(starter, now) {
        Some(Liveness::Live | Liveness::Lost) | None => Some(RUNNING_ELSEWHERE),
        Some(Liveness::Stopped) => None,
    }
}

/// The skip reason of an attempt left to the worker running it, which recorded its outcome.
const RUNNING_ELSEWHERE: &str = "running_elsewhere";
/// How soon a redelivered task whose attempt another worker is running looks at the ledger again,
/// and how far apart its looks grow.
const RECHECK_FIRST: Duration = Duration::from_secs(1);
const RECHECK_MAX: Duration = Duration::from_secs(15);
/// How many times the last look before an attempt begins tries to read the ledger: a read that
/// keeps failing (the broker gone) lets the attempt run, at least once, rather than never.
const LAST_LOOK_READS: u32 = 3;

/// How long after its dispatch a task may be taken up before the ledger is read for it: half the
/// dispatchers' unclaimed limit, after which they record an attempt no worker holds as lost (its
/// task was fetched late, behind a backlog or a rebalance). Younger tasks are taken as they come:
/// reading the ledger for every late task made a loaded worker fall further behind.
const STALE_TASK_AGE: Duration =
    Duration::from_secs(kairos_core::decide::DEFAULT_UNCLAIMED_LIMIT.as_secs() / 2);

/// The default of `--report-start-after`.
pub const DEFAULT_REPORT_START_AFTER: Duration = Duration::from_secs(1);

/// The task types every worker executes; handlers registered in code add theirs.
const BUILT_IN_TASK_TYPES: [&str; 2] = ["shell", "http"];

/// A task this worker has taken, waiting for or in execution.
struct Pending {
    partition: i32,
    offset: i64,
    task: TaskAssigned,
    /// The ledger offset of the task's dispatch, from its header.
    dispatched_at: Option<i64>,
    /// Redelivered (read from before the end its partition had when it was assigned here), and
    /// its partition's last owner has said it started the attempt.
    started_elsewhere: bool,
}

/// Tasks that run one after another, in offset order: a job's runs take turns, unless the job lets
/// them overlap (`overlap: allow`), when each run has a lane of its own; a sharded job's shards
/// each have theirs. A run's own attempts always share one (a retry is dispatched only once the
/// attempt before it is over).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Lane {
    job_id: JobId,
    /// Set when the job's runs may run side by side.
    run_id: Option<RunId>,
    shard: Option<u32>,
}

fn lane(task: &TaskAssigned) -> Lane {
    Lane {
        job_id: task.job_id.clone(),
        run_id: task.concurrent_runs.then_some(task.run_id),
        shard: task.shard.as_ref().map(|s| s.index),
    }
}

/// The attempt a lane has taken off its queue: held until its start, waiting for a place, or
/// running.
struct Running {
    run_id: RunId,
    attempt: u32,
    partition: i32,
    cancel: CancellationToken,
    claim: Arc<Claim>,
}

/// How long a fence from the control topic is remembered: longer than a consumer-group
/// rebalance takes to redeliver the fenced attempt's task.
const FENCE_MEMORY: Duration = Duration::from_secs(600);

/// How long a worker beating every `interval` may go without a heartbeat before a dispatcher
/// calls it lost, and its attempts may be run elsewhere.
fn silence_limit(interval: Duration) -> Duration {
    interval * kairos_runtime::workers::MISSED_BEATS
}

/// How long handed-back attempts get to die after they are killed, before the worker stops anyway.
const HAND_BACK_GRACE: Duration = Duration::from_secs(5);

/// Waits while this worker is out of its consumer group, or may be without knowing it: it has not
/// beaten within the silence limit (it was frozen or cut off, and has yet to look at what
/// the silence means). A cancel or `released` ends the wait. Returns whether it waited.
async fn until_in_group(
    membership: &mut tokio::sync::watch::Receiver<Membership>,
    silence: Duration,
    cancel: &CancellationToken,
    released: &CancellationToken,
) -> bool {
    let mut waited = false;
    loop {
        let now = *membership.borrow_and_update();
        if !now.expelled && now.last_beat.elapsed() <= silence {
            return waited;
        }
        waited = true;
        tokio::select! {
            changed = membership.changed() => if changed.is_err() { return waited },
            _ = cancel.cancelled() => return waited,
            _ = released.cancelled() => return waited,
        }
    }
}

/// A partition's tasks waiting for what the ledger says of its redelivered ones.
struct Checking {
    /// The read whose answer they wait for.
    read: u64,
    /// Where a further read must start, for redelivered tasks that came while the read ran.
    again_from: Option<i64>,
    /// What the reads answered so far.
    seen: Attempts,
    waiting: Vec<OwnedMessage>,
}

/// A ledger read's answer, for the tasks of `partition` that wait for it.
struct Checked {
    partition: i32,
    read: u64,
    attempts: anyhow::Result<Attempts>,
}

/// Sent by an execution when its outcome is acknowledged.
struct Finished {
    partition: i32,
    offset: i64,
    lane: Lane,
    attempt: AttemptKey,
}

/// Runs the worker, with the built-in task types only, until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_handlers(config, Handlers::new(), shutdown).await
}

/// Runs a worker that also executes the custom task types of `handlers`, until `shutdown`
/// resolves.
pub async fn run_with_handlers(
    config: Config,
    handlers: Handlers,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let safeguards = config.safeguards()?;
    let topics = config.service.kafka.topics();
    let input = topics.tasks(&config.pool);
    // A pool's task topic may not exist yet when its first worker starts; it is created
    // co-partitioned with the ledger, as the dispatcher would on the pool's first task.
    let partitions = check_co_partitioning(&config.service.kafka, &[topics.runs()])?;
    let admin = TopicAdmin::new(&config.service.kafka)?;
    if admin
        .ensure_topic(&input, partitions, &task_topic_config())
        .await?
    {
        tracing::info!(topic = input, "Created the task topic of a new pool.");
    }
    check_co_partitioning(&config.service.kafka, &[topics.runs(), input.clone()])?;
    let (group, inputs) = topics.consumes(&ServiceKind::Worker {
        pool: config.pool.clone(),
    });
    let spec = ServiceSpec {
        name: "worker",
        args: &config.service,
        group,
        inputs: &inputs,
        store: None,
    };
    let control = broadcast_consumer(
        &config.service.kafka,
        &topics.control(),
        partitions,
        Offset::End,
    )?;
    let topics_heartbeats = topics.heartbeats();
    // Refuses to start, naming the topic, rather than retry heartbeats forever into nothing.
    let others = Heartbeats::follow(&config.service.kafka)?;
    let parts = ServiceParts::start(spec, shutdown).await?;
    let worker_id = config.worker_id();
    let task_types: Vec<String> = BUILT_IN_TASK_TYPES
        .into_iter()
        .filter(|kind| safeguards.policy.runs(kind))
        .chain(handlers.names())
        .map(str::to_string)
        .collect();
    tracing::info!(
        pool = config.pool,
        worker_id,
        max_concurrent = config.max_concurrent,
        ?task_types,
        "Worker ready."
    );
    m::register(&config.pool, config.max_concurrent.max(1));
    let (finished_tx, finished) = mpsc::unbounded_channel();
    let (checked_tx, checked) = mpsc::unbounded_channel();
    let (silences_tx, silences) = mpsc::unbounded_channel();
    let announcement = Announcement {
        worker_id: worker_id.clone(),
        pool: config.pool.clone(),
        capacity: u32::try_from(config.max_concurrent.max(1)).unwrap_or(u32::MAX),
        task_types,
        interval: config.heartbeat_interval,
    };
    let membership = tokio::sync::watch::Sender::new(Membership {
        expelled: false,
        last_beat: Instant::now(),
        silences: 0,
    });
    let claims = Arc::new(Claims::default());
    let loop_clock = LoopClock::new();
    let beater = Beater {
        producer: config
            .service
            .kafka
            .heartbeat_producer(silence_limit(config.heartbeat_interval))?,
        topic: topics_heartbeats.clone(),
        announcement: announcement.clone(),
        claims: Arc::clone(&claims),
        membership: membership.clone(),
        silences: silences_tx,
        silence_limit: silence_limit(config.heartbeat_interval),
        expulsion_after: config.service.kafka.expulsion_after(),
        loop_clock: Arc::clone(&loop_clock),
        stall_limit: beats::LOOP_STALL_LIMIT,
    };
    let mut worker = Worker {
        reporter: Reporter {
            ledger: parts.ledger(),
            worker_id: worker_id.clone(),
            report_start_after: config.report_start_after,
        },
        producer: parts.producer,
        heartbeats: topics_heartbeats,
        announcement,
        deadletters: parts.deadletters,
        input,
        pool: config.pool.clone(),
        consumer: parts.consumer,
        slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
        executor: Executor::with_safeguards(config.output_limit, safeguards, handlers, worker_id),
        queues: HashMap::new(),
        tracker: OffsetTracker::default(),
        finished_tx,
        finished,
        control,
        running: HashMap::new(),
        fences: HashMap::new(),
        executions: JoinSet::new(),
        draining: false,
        hand_back: CancellationToken::new(),
        drain_timeout: config.drain_timeout,
        health: parts.health,
        kafka: config.service.kafka.clone(),
        ledger: LedgerReader::start(&config.service.kafka, LEDGER_READ_TIMEOUT)?,
        checking: HashMap::new(),
        checks_started: 0,
        checked_tx,
        checked,
        beater: Some(beater),
        beating: None,
        silences,
        loop_clock,
        redelivered_below: HashMap::new(),
        finished_here: HashMap::new(),
        membership,
        expelled_since: None,
        others,
        claims,
    };
    worker.hand_over_on_revoke()?;
    let result = worker.run(parts.shutdown).await;
    parts
        .ops
        .finish(&worker.consumer, &worker.producer, result)
        .await
}

struct Worker {
    /// Kept for a clean stop: the reporter and dead letters produce through it.
    producer: ReliableProducer,
    heartbeats: String,
    /// What the heartbeats say of this worker, its beat interval among it.
    announcement: Announcement,
    input: String,
    pool: String,
    consumer: PartitionedConsumer,
    deadletters: DeadLetters,
    reporter: Reporter,
    slots: Arc<Semaphore>,
    executor: Executor,
    /// Per lane: tasks taken but not finished, the first one running.
    queues: HashMap<Lane, VecDeque<Pending>>,
    tracker: OffsetTracker,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished: mpsc::UnboundedReceiver<Finished>,
    /// Cancel requests and fences, broadcast to every worker.
    control: StreamConsumer,
    /// The attempt each lane has taken off its queue, and how to stop it.
    running: HashMap<Lane, Running>,
    /// Per run, the highest attempt that must not run (every attempt for a cancelled run), and
    /// when that was learnt.
    fences: HashMap<RunId, (u32, Instant)>,
    executions: JoinSet<()>,
    /// Stopping: queued tasks stay queued (and uncommitted) for the partition's next owner.
    draining: bool,
    /// Fired when the drain timeout passes: running attempts are killed and not reported.
    hand_back: CancellationToken,
    drain_timeout: Duration,
    health: Arc<Health>,
    kafka: KafkaArgs,
    /// Reads the ledger's tail for redelivered tasks, off the loop.
    ledger: LedgerReader,
    /// Per partition whose redelivered tasks wait for the ledger: the tasks read since, in offset
    /// order (none is taken before the ones ahead of it).
    checking: HashMap<i32, Checking>,
    /// Ledger reads started, to tell a read's answer from that of an earlier assignment.
    checks_started: u64,
    checked_tx: mpsc::UnboundedSender<Checked>,
    checked: mpsc::UnboundedReceiver<Checked>,
    /// The regular beats, on a task of their own once the first is sent (see [`beats`]); the
    /// first and the last beat go through the main producer, retried until acknowledged.
    beater: Option<Beater>,
    beating: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// The beater's word that this worker was silent.
    silences: mpsc::UnboundedReceiver<Silence>,
    /// Turned by the loop, watched by the beater.
    loop_clock: Arc<LoopClock>,
    /// Per partition assigned to this worker, the end of its task topic at the assignment: a
    /// task before it may have been run already by the partition's last owner.
    redelivered_below: HashMap<i32, i64>,
    /// Attempts this worker has run and reported lately, and when: a copy redelivered here (the
    /// partition left and came back while the attempt ran) is not run again.
    finished_here: HashMap<AttemptKey, Instant>,
    /// Whether this worker is in its consumer group, as its executions need to know before they
    /// start an attempt (see [`Worker::after_silence`]).
    membership: tokio::sync::watch::Sender<Membership>,
    /// When this worker found it had been expelled, while it has not rejoined.
    expelled_since: Option<Instant>,
    /// Every worker's latest heartbeat: whether the worker that started a redelivered attempt is
    /// still at it.
    others: Heartbeats,
    /// The attempts taken off the lanes' queues, shared with the revocation's callback, which
    /// hands them over (see [`handover`]).
    claims: Arc<Claims>,
}

impl Drop for Worker {
    /// A worker that stops on an error stops beating too (in a test, the process goes on).
    fn drop(&mut self) {
        if let Some((_, beater)) = &self.beating {
            beater.abort();
        }
    }
}

/// What the executions know of the worker's place in its consumer group.
#[derive(Clone, Copy, Debug)]
struct Membership {
    /// Silent for nearly the group session or longer: the group may have expelled this worker,
    /// and another may own its partitions and be running their tasks, until it has rejoined (or a
    /// session has passed without a rebalance).
    expelled: bool,
    /// When the worker last beat, its beater having first looked at how long it had been silent.
    last_beat: Instant,
    /// How many silences past the limit the worker has had: an attempt taken before one (held
    /// for its start, or waiting for a place, and woken after the beats resumed) may have been
    /// recorded lost meanwhile, and looks at the ledger before it begins.
    silences: u64,
}

impl Worker {
    /// Before the group may give a partition to another worker, this worker's attempts of it are
    /// settled: those not taken up released, those taken up announced on the ledger.
    fn hand_over_on_revoke(&self) -> anyhow::Result<()> {
        let claims = Arc::clone(&self.claims);
        let reporter = self.reporter.clone();
        self.consumer.on_revoke(Box::new(move |partitions, lost| {
            let handed = claims.revoke(partitions, lost);
            if !handed.to_announce.is_empty() || handed.released > 0 {
                tracing::info!(
                    ?partitions,
                    released = handed.released,
                    announced = handed.to_announce.len(),
                    lost,
                    "Handing over the attempts of revoked partitions."
                );
            }
            // Also waits for outcomes already sent: the next owner reads them. With nothing to
            // announce, no outcome is unaccounted for (an attempt whose outcome is in flight is
            // still taken up), and the group is not held up.
            if !handed.to_announce.is_empty() {
                reporter.announce_blocking(&handed.to_announce);
            }
        }))
    }

    async fn run(&mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Every worker beats before it takes a task: the others learn of it before they read a
        // `RunStarted` of its. Later beats come from the beater, without waiting for the broker.
        self.beat(false).await?;
        if let Some(beater) = self.beater.take() {
            let stop = CancellationToken::new();
            self.beating = Some((stop.clone(), tokio::spawn(beater.run(stop))));
        }
        let mut look = tokio::time::interval(self.announcement.interval);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.loop_clock.turned();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.drain().await,
                _ = look.tick() => {
                    self.others.check()?;
                    if self.beating.as_ref().is_some_and(|(_, task)| task.is_finished()) {
                        anyhow::bail!("the heartbeat task stopped");
                    }
                    self.rejoin_unless_expelled();
                }
                Some(silence) = self.silences.recv() => self.after_silence(silence),
                Some(done) = self.finished.recv() => self.on_finished(done),
                Some(checked) = self.checked.recv() => self.on_checked(checked).await?,
                Ok(message) = self.control.recv() => {
                    if let Some(request) = control_request(&message) {
                        self.cancel(&request);
                    }
                }
                Some(_) = self.executions.join_next() => {}
                input = self.consumer.next(None) => self.handle(input).await?,
            }
            self.health.set_caught_up(self.consumer.ready());
        }
    }

    /// Lets running attempts finish within the drain timeout, hands back the rest, and says
    /// goodbye on the heartbeats topic. Offsets are committed by the caller as the consumer closes.
    async fn drain(&mut self) -> anyhow::Result<()> {
        self.draining = true;
        // Attempts not begun (held for their start, or waiting for a place) never start: only
        // those running are waited for, and a backlog does not keep starting until the timeout
        // and then get killed and run again elsewhere.
        self.release_held(|_| true, true);
        tracing::info!(
            running = self.running.len(),
            timeout = ?self.drain_timeout,
            "Draining: no new tasks; running ones may finish."
        );
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let mut give_up = deadline + HAND_BACK_GRACE;
        // A draining worker is alive, and the beater goes on saying so.
        loop {
            self.loop_clock.turned();
            tokio::select! {
                biased;
                Some(done) = self.finished.recv() => self.on_finished(done),
                Ok(message) = self.control.recv() => {
                    if let Some(request) = control_request(&message) {
                        self.cancel(&request);
                    }
                }
                joined = self.executions.join_next() => {
                    if joined.is_none() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !self.hand_back.is_cancelled() => {
                    tracing::warn!(running = self.running.len(), "Drain timeout: handing back the attempts still running.");
                    self.hand_back.cancel();
                    give_up = tokio::time::Instant::now() + HAND_BACK_GRACE;
                }
                _ = tokio::time::sleep_until(give_up) => {
                    tracing::error!(running = self.running.len(), "Attempts did not stop in time; leaving them.");
                    self.executions.abort_all();
                    break;
                }
            }
        }
        while let Ok(done) = self.finished.try_recv() {
            self.on_finished(done);
        }
        // The goodbye lands after every regular beat, so that the compacted topic keeps it.
        if let Some((stop, beater)) = self.beating.take() {
            stop.cancel();
            let _ = beater.await;
        }
        self.beat(true).await
    }

    async fn handle(&mut self, input: Input) -> anyhow::Result<()> {
        match input {
            Input::Assigned(partitions) => {
                self.rejoined();
                self.claims.assigned(&partitions);
                self.check_tasks_read_before_now(&partitions);
            }
            Input::Revoked(partitions) => {
                // Settled by the revocation's callback already, unless the partitions were
                // assigned again in between: begun attempts finish and report, their offsets
                // belong to the new owner now.
                self.claims.forget(&partitions);
                let released = self.release_held(|p| partitions.contains(&p), false);
                for partition in partitions {
                    self.tracker.forget(partition);
                    self.redelivered_below.remove(&partition);
                    // Tasks still waiting for the ledger were never taken: the next owner's.
                    self.checking.remove(&partition);
                    for queue in self.queues.values_mut() {
                        if let Some(running) = queue.pop_front() {
                            queue.retain(|p| p.partition != partition);
                            queue.push_front(running);
                        }
                    }
                }
                self.queues.retain(|_, queue| !queue.is_empty());
                for lane in &released {
                    if !self.draining && self.queues.contains_key(lane) {
                        self.start_head(lane);
                    }
                }
            }
            Input::Records(messages) => {
                let reads = self.redelivered_from(&messages);
                for message in messages {
                    let partition = message.partition();
                    if let Some(from) = reads.get(&partition).copied() {
                        match self.checking.get_mut(&partition) {
                            // Redelivered tasks that came while a read ran: one more read.
                            Some(checking) => {
                                checking.again_from =
                                    Some(checking.again_from.map_or(from, |f| f.min(from)))
                            }
                            None => {
                                let read = self.read_ledger(partition, from);
                                self.checking.insert(
                                    partition,
                                    Checking {
                                        read,
                                        again_from: None,
                                        seen: Attempts::default(),
                                        waiting: vec![],
                                    },
                                );
                            }
                        }
                    }
                    match self.checking.get_mut(&partition) {
                        // Behind tasks waiting for the ledger: taken after them, in order.
                        Some(checking) => {
                            self.tracker.started(partition, message.offset());
                            checking.waiting.push(message);
                        }
                        None => self.take(message, &Attempts::default()).await?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Asks the ledger reader for the tail of `partition` from `from`; the answer comes to the
    /// loop as a [`Checked`]. Returns the read's number.
    fn read_ledger(&mut self, partition: i32, from: i64) -> u64 {
        self.checks_started += 1;
        let read = self.checks_started;
        let (ledger, checked) = (self.ledger.clone(), self.checked_tx.clone());
        tokio::spawn(async move {
            let attempts = ledger.read_attempts(partition, from).await;
            let _ = checked.send(Checked {
                partition,
                read,
                attempts,
            });
        });
        read
    }

    /// Takes the tasks that waited for the ledger's answer, unless their partition has gone
    /// meanwhile (they are its next owner's), or tasks that came while it was read need a
    /// further read. A ledger that cannot be read lets them run, as before: at least once.
    async fn on_checked(&mut self, checked: Checked) -> anyhow::Result<()> {
        let Some(checking) = self
            .checking
            .get_mut(&checked.partition)
            .filter(|c| c.read == checked.read)
        else {
            return Ok(());
        };
        match checked.attempts {
            Ok(found) => checking.seen.extend(found),
            Err(error) => {
                tracing::warn!(%error, partition = checked.partition, "Reading the ledger for redelivered tasks failed; they run again.");
            }
        }
        if let Some(from) = checking.again_from.take() {
            let read = self.read_ledger(checked.partition, from);
            if let Some(checking) = self.checking.get_mut(&checked.partition) {
                checking.read = read;
            }
            return Ok(());
        }
        let Some(checking) = self.checking.remove(&checked.partition) else {
            return Ok(());
        };
        for message in checking.waiting {
            self.take(message, &checking.seen).await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        job_id = kairos_runtime::record_key(&message).unwrap_or_default(),
    ))]
    async fn take(&mut self, message: OwnedMessage, redelivered: &Attempts) -> anyhow::Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        self.tracker.started(partition, offset);
        let rejection = match message.payload().map(codec::decode_task) {
            Some(Ok(task)) if self.is_fenced(&task) => {
                tracing::info!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, "Skipping a stopped attempt.");
                self.skip(partition, offset, "stopped");
                return Ok(());
            }
            Some(Ok(task)) if self.finished_here.contains_key(&attempt_key(&task)) => {
                tracing::info!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, "Skipping a redelivered copy of an attempt this worker has run.");
                self.skip(partition, offset, "already_over");
                return Ok(());
            }
            Some(Ok(task)) if redelivered.is_over(attempt_key(&task)) => {
                tracing::info!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, "Skipping a redelivered attempt the ledger records as over.");
                self.skip(partition, offset, "already_over");
                return Ok(());
            }
            Some(Ok(task)) if task.pool == self.pool => {
                let pending = Pending {
                    partition,
                    offset,
                    dispatched_at: dispatched_at(&message),
                    started_elsewhere: redelivered
                        .started_by(attempt_key(&task))
                        .is_some_and(|worker| worker != self.reporter.worker_id),
                    task,
                };
                self.enqueue(pending);
                return Ok(());
            }
            Some(Ok(task)) => (
                "invalid",
                format!(
                    "task for pool {:?} on the topic of pool {:?}",
                    task.pool, self.pool
                ),
            ),
            Some(Err(error)) => (reason_label(&error), error.to_string()),
            None => ("invalid", "task record without a value".to_string()),
        };
        self.deadletters
            .send(&message, rejection.0, &rejection.1)
            .await?;
        // Like a finished task: committable once every earlier task of the partition is done.
        self.commit_up_to(partition, offset);
        Ok(())
    }

    fn enqueue(&mut self, pending: Pending) {
        let task = &pending.task;
        if let Some(start_at) = task.start_at {
            let pool = self.pool.clone();
            match (start_at - chrono::Utc::now()).to_std() {
                Ok(lead) => {
                    metrics::histogram!(m::TASK_LEAD, "pool" => pool).record(lead.as_secs_f64())
                }
                Err(_) => metrics::counter!(m::ARRIVED_LATE, "pool" => pool).increment(1),
            }
        }
        let lane = lane(task);
        let queue = self.queues.entry(lane.clone()).or_default();
        queue.push_back(pending);
        if queue.len() == 1 {
            self.start_head(&lane);
        }
        metrics::gauge!(m::QUEUED, "pool" => self.pool.clone())
            .set(self.queues.values().map(VecDeque::len).sum::<usize>() as f64);
    }

    /// A worker silent for longer than the dispatcher waits before calling it lost (stopped,
    /// suspended, cut off from the broker) may since have lost its partitions to another worker
    /// that ran their tasks, without having heard of it yet: the tasks it had fetched before are
    /// checked against the ledger, as redelivered ones are.
    ///
    /// Silent for nearly its group session or longer, it may have been expelled, and until its
    /// consumer hears so (at its next group heartbeat) it still fetches tasks from partitions
    /// another worker now owns, whose attempts that worker may be running: no attempt starts
    /// here until the worker has rejoined (the beater has told the executions already), and the
    /// revocation that comes first hands them over unrun.
    fn after_silence(&mut self, silence: Silence) {
        let Silence { lasted, expelled } = silence;
        metrics::counter!(m::SILENCES, "pool" => self.pool.clone()).increment(1);
        tracing::warn!(
            silent = ?lasted,
            expelled,
            "This worker was silent; the tasks it reads next are checked against the ledger first{}.",
            if expelled { ", and none starts until it has rejoined its group" } else { "" }
        );
        if expelled {
            self.expelled_since = Some(Instant::now());
        }
        let owned: Vec<i32> = self.consumer.owned().collect();
        self.check_tasks_read_before_now(&owned);
    }

    /// Has the tasks of `partitions` up to their current end checked against the ledger before
    /// they run: they may have run elsewhere already. An end the broker does not tell is taken
    /// as endless (every task checked until the next assignment): a check too many delays a
    /// task, one too few runs it twice.
    fn check_tasks_read_before_now(&mut self, partitions: &[i32]) {
        for &partition in partitions {
            let end = self
                .consumer
                .high_watermark(&self.input, partition)
                .unwrap_or(i64::MAX);
            self.redelivered_below.insert(partition, end);
        }
    }

    /// The group has given this worker partitions again: attempts held for that may start.
    fn rejoined(&mut self) {
        if self.expelled_since.take().is_some() {
            tracing::info!("Rejoined the group after an expulsion; held attempts may start.");
            self.membership.send_modify(|m| m.expelled = false);
        }
    }

    /// An expulsion the consumer has not acted on within a session is taken back: the group
    /// must have kept this worker after all (its consumer heartbeats from a thread of its own,
    /// which a stalled loop does not stop).
    fn rejoin_unless_expelled(&mut self) {
        if self
            .expelled_since
            .is_some_and(|since| since.elapsed() > self.kafka.session_timeout())
        {
            tracing::warn!("No rebalance came within a session of the silence; resuming.");
            self.rejoined();
        }
    }

    fn silence_limit(&self) -> Duration {
        silence_limit(self.announcement.interval)
    }

    /// Leaves a task unrun: committable once every earlier task of the partition is done.
    fn skip(&mut self, partition: i32, offset: i64, reason: &'static str) {
        metrics::counter!(m::SKIPPED, "pool" => self.pool.clone(), "reason" => reason).increment(1);
        self.commit_up_to(partition, offset);
    }

    /// Where the ledger must be read, per partition, for the tasks of `messages` redelivered to
    /// this worker (read from before the end their partition had when it was assigned here): its
    /// tail from each partition's earliest such dispatch, and no more. A task dispatched without
    /// its dispatch's position (by an older dispatcher) is run again, as before: at least once.
    fn redelivered_from(&mut self, messages: &[OwnedMessage]) -> BTreeMap<i32, i64> {
        let mut from: BTreeMap<i32, i64> = BTreeMap::new();
        for message in messages {
            let partition = message.partition();
            let Some(end) = self.redelivered_below.get(&partition).copied() else {
                continue;
            };
            if message.offset() + 1 >= end {
                self.redelivered_below.remove(&partition);
            }
            if message.offset() >= end {
                continue;
            }
            if let Some(dispatched_at) = dispatched_at(message) {
                let earliest = from.entry(partition).or_insert(dispatched_at);
                *earliest = (*earliest).min(dispatched_at);
            }
        }
        from
    }

    /// Hands back the attempts of the partitions `on` selects that have not been taken up (held
    /// for their start or for the ledger), with `waiting_too` those waiting for a place as well,
    /// and those the revocation's callback released: they never run here, and the partition's next owner gets them again from the
    /// uncommitted offset and runs them once. Returns their lanes, whose queue heads are gone.
    fn release_held(&mut self, on: impl Fn(i32) -> bool, waiting_too: bool) -> Vec<Lane> {
        let released: Vec<Lane> = self
            .running
            .iter()
            .filter(|(_, r)| on(r.partition) && r.claim.release(waiting_too))
            .map(|(lane, _)| lane.clone())
            .collect();
        for lane in &released {
            self.running.remove(lane);
            if let Some(queue) = self.queues.get_mut(lane) {
                queue.pop_front();
            }
        }
        if !released.is_empty() {
            tracing::info!(
                held = released.len(),
                "Handed back attempts not begun to the partitions' next owner."
            );
        }
        released
    }

    fn commit_up_to(&mut self, partition: i32, offset: i64) {
        if let Some(next) = self.tracker.finished(partition, offset) {
            self.consumer.store_position(&self.input, partition, next);
        }
    }

    /// Announces this worker, its capacity and the runs it executes on the heartbeats topic, and
    /// waits for the broker to take it: the first beat and the goodbye.
    async fn beat(&self, stopping: bool) -> anyhow::Result<()> {
        self.membership
            .send_modify(|m| m.last_beat = Instant::now());
        let bytes = self.announcement.beat(&self.claims, stopping)?;
        self.producer
            .send(&self.heartbeats, &self.reporter.worker_id, Some(&bytes))
            .await?;
        Ok(())
    }

    /// Whether a cancel or fence seen on the control topic stops this attempt.
    fn is_fenced(&self, task: &TaskAssigned) -> bool {
        self.fences
            .get(&task.run_id)
            .is_some_and(|(up_to, _)| task.attempt <= *up_to)
    }

    /// Stops the attempts of the run that the request names: a started one is stopped (and
    /// reported as cancelled; the ledger already has the dispatcher's record), queued ones are
    /// dropped, and the request is remembered for tasks of the run that arrive later.
    fn cancel(&mut self, request: &CancelRequest) {
        let up_to = request.stops_up_to();
        self.fences
            .retain(|_, (_, learnt)| learnt.elapsed() < FENCE_MEMORY);
        let fence = self
            .fences
            .entry(request.run_id)
            .or_insert((up_to, Instant::now()));
        *fence = (fence.0.max(up_to), Instant::now());
        let stopped_runs = self
            .running
            .values()
            .filter(|r| r.run_id == request.run_id && r.attempt <= up_to);
        for running in stopped_runs {
            tracing::info!(job_id = %request.job_id, run_id = %request.run_id, attempt = running.attempt, "Stopping a running attempt.");
            running.cancel.cancel();
        }
        let stopped = |p: &Pending| p.task.run_id == request.run_id && p.task.attempt <= up_to;
        let mut dropped: Vec<(i32, i64)> = vec![];
        let lanes = self
            .queues
            .iter_mut()
            .filter(|(lane, _)| lane.job_id == request.job_id);
        for (_, queue) in lanes {
            dropped.extend(
                queue
                    .iter()
                    .skip(1)
                    .filter(|p| stopped(p))
                    .map(|p| (p.partition, p.offset)),
            );
            // The head of the queue is started (it has a cancel token), so only later entries go.
            if let Some(head) = queue.pop_front() {
                queue.retain(|p| !stopped(p));
                queue.push_front(head);
            }
        }
        for (partition, offset) in dropped {
            tracing::info!(job_id = %request.job_id, run_id = %request.run_id, "Dropped a cancelled task from the queue.");
            self.commit_up_to(partition, offset);
        }
    }

    fn on_finished(&mut self, done: Finished) {
        self.finished_here
            .retain(|_, reported| reported.elapsed() < FENCE_MEMORY);
        self.finished_here.insert(done.attempt, Instant::now());
        self.running.remove(&done.lane);
        self.commit_up_to(done.partition, done.offset);
        if let Some(queue) = self.queues.get_mut(&done.lane) {
            queue.pop_front();
            if queue.is_empty() {
                self.queues.remove(&done.lane);
            } else if !self.draining {
                self.start_head(&done.lane);
            }
        }
    }

    /// Starts the first queued task of a lane in the background.
    fn start_head(&mut self, lane: &Lane) {
        // A redelivered copy of an attempt, queued behind the attempt itself (its partition was
        // taken away and given back while it ran), is not run again once the attempt is over.
        while let Some(pending) = self.queues.get(lane).and_then(|q| q.front()) {
            if !self.finished_here.contains_key(&attempt_key(&pending.task)) {
                break;
            }
            let (partition, offset) = (pending.partition, pending.offset);
            tracing::info!(job_id = %pending.task.job_id, run_id = %pending.task.run_id, attempt = pending.task.attempt, "Skipping a redelivered copy of an attempt this worker has run.");
            if let Some(queue) = self.queues.get_mut(lane) {
                queue.pop_front();
            }
            self.skip(partition, offset, "already_over");
        }
        let Some(pending) = self.queues.get(lane).and_then(|q| q.front()) else {
            self.queues.remove(lane);
            return;
        };
        let (partition, offset, task) = (pending.partition, pending.offset, pending.task.clone());
        // Where to read the ledger from if this worker sleeps through the task's start.
        let recheck = pending
            .dispatched_at
            .map(|from| (self.ledger.clone(), from, self.silence_limit()));
        // Handing back stops every attempt through its own token, like a cancel, but leaves the
        // outcome unreported.
        let hand_back = self.hand_back.clone();
        let cancel = hand_back.child_token();
        let claim = self.claims.take(partition, task.clone());
        self.running.insert(
            lane.clone(),
            Running {
                run_id: task.run_id,
                attempt: task.attempt,
                partition,
                cancel: cancel.clone(),
                claim: Arc::clone(&claim),
            },
        );
        let slots = Arc::clone(&self.slots);
        let reporter = self.reporter.clone();
        let executor = self.executor.clone();
        let finished = self.finished_tx.clone();
        let pool = self.pool.clone();
        let mut membership = self.membership.subscribe();
        let silences_when_taken = membership.borrow().silences;
        let silence = self.silence_limit();
        let workers = self.others.shared();
        let me = self.reporter.worker_id.clone();
        // Taken long after its dispatch (behind a backlog, a rebalance, a ledger read): the
        // dispatchers may have recorded it lost as unclaimed, a retry on its way.
        let stale = (kairos_runtime::now() - task.assigned_at)
            .to_std()
            .is_ok_and(|waited| waited > STALE_TASK_AGE);
        let check_ledger_first = pending.started_elsewhere || stale;
        self.executions.spawn(async move {
            let done = || Finished {
                partition,
                offset,
                lane: self::lane(&task),
                attempt: attempt_key(&task),
            };
            let skipped = |reason: &'static str| {
                if !claim.skip() {
                    return; // Released: the partition's next owner decides.
                }
                tracing::info!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, reason, "Not starting an attempt another worker ran or is running.");
                metrics::counter!(m::SKIPPED, "pool" => pool.clone(), "reason" => reason).increment(1);
                let _ = finished.send(done());
            };
            // Held until its start, without a place: only running tasks take one. A cancel, a
            // fence or a hand-back ends the wait.
            let wait = task
                .start_at
                .and_then(|at| (at - chrono::Utc::now()).to_std().ok());
            if let Some(wait) = wait {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => {}
                    _ = claim.released.cancelled() => {}
                }
            }
            // A revocation meanwhile hands the attempt over.
            let mut waited = until_in_group(&mut membership, silence, &cancel, &claim.released).await;
            // Redelivered, and its partition's last owner said it began it, or stale: held until
            // the ledger and the heartbeats tell (a revocation meanwhile hands it over). Before
            // it is taken up, so that no place is held through the read.
            if let (true, Some((ledger, from, _))) = (check_ledger_first, &recheck) {
                let mut seen = Attempts {
                    read_to: *from,
                    ..Attempts::default()
                };
                let mut pause = RECHECK_FIRST;
                let mut left_to_its_worker = false;
                loop {
                    match ledger.read_attempts(partition, seen.read_to).await {
                        Ok(news) => seen.extend(news),
                        Err(error) => {
                            tracing::warn!(%error, partition, "Reading the ledger for a redelivered task failed; it runs again.");
                            break;
                        }
                    }
                    let verdict = {
                        let workers = workers.read().expect("registry lock");
                        taken_elsewhere(&seen, &task, &me, &workers, kairos_runtime::now())
                    };
                    match verdict {
                        None => break,
                        Some(RUNNING_ELSEWHERE) => {
                            left_to_its_worker = true;
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = cancel.cancelled() => break,
                                _ = claim.released.cancelled() => break,
                            }
                            pause = (pause * 2).min(RECHECK_MAX);
                        }
                        Some(_) if left_to_its_worker => return skipped(RUNNING_ELSEWHERE),
                        Some(reason) => return skipped(reason),
                    }
                }
            }
            // Taken up: from here a revocation no longer hands the attempt over but announces it,
            // and the partition's next owner leaves it to this worker.
            if !claim.take_up(kairos_runtime::now()) {
                return; // Its partition was revoked: the next owner runs it.
            }
            // Released while it waits for a place only by a lost assignment.
            let _slot = tokio::select! {
                slot = slots.acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return claim.end(),
                },
                _ = claim.released.cancelled() => return,
            };
            if hand_back.is_cancelled() {
                return claim.end();
            }
            // A last look, for a worker frozen between its start and now; looked again should
            // the ledger read fail, or the worker fall silent while it looks (a freeze that
            // catches the ledger read in flight has it answered with what the ledger held
            // before: in the chaos runs, a worker resumed from a SIGSTOP began attempts recorded
            // lost while it was stopped).
            let mut reads_failed = 0;
            loop {
                let silences_before = membership.borrow().silences;
                waited |= until_in_group(&mut membership, silence, &cancel, &claim.released).await;
                // Silent since it was taken (a freeze it slept through): the dispatchers may have
                // recorded it lost, and a retry be on its way.
                waited |= membership.borrow().silences != silences_when_taken;
                // Announced as started at a handover while it waited for a place: the ledger
                // shows it as this worker's, and the dispatchers may have recorded it lost
                // meanwhile (in the chaos runs, a worker whose beats came late had its whole
                // backlog lost, then run twice). The stop that goes with such a loss came
                // seconds late, behind the worker's loop busy with the handover's aftermath.
                // (Reading the ledger for every attempt that merely waited long
                // for a place held the places through the reads, and a loaded worker fell
                // further and further behind: a chaos run ended with 3,199 runs unfinished.)
                waited |= claim.was_start_sent();
                // Woken long after the start, or held while out of the group (the worker was
                // stopped, suspended or cut off): its partition may meanwhile have gone to
                // another worker that ran the attempt.
                let mut read_failed = false;
                if let Some((ledger, from, silence)) = &recheck {
                    let late = task
                        .start_at
                        .and_then(|at| (chrono::Utc::now() - at).to_std().ok())
                        .unwrap_or_default();
                    if late > *silence || waited {
                        match ledger.read_attempts(partition, *from).await {
                            Ok(seen) if seen.is_over(attempt_key(&task)) => {
                                return skipped("already_over")
                            }
                            Ok(_) => {}
                            Err(error) => {
                                reads_failed += 1;
                                read_failed = reads_failed < LAST_LOOK_READS;
                                tracing::warn!(%error, job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, again = read_failed, "Reading the ledger before an attempt begins failed.");
                            }
                        }
                    }
                }
                // Undisturbed: no silence began or ended while it looked (the beater may not
                // have heard of one yet, the executions of a resumed worker running first).
                let now = *membership.borrow();
                let undisturbed = now.silences == silences_before
                    && !now.expelled
                    && now.last_beat.elapsed() <= silence
                    && !read_failed;
                if undisturbed || cancel.is_cancelled() || claim.released.is_cancelled() {
                    break;
                }
                if read_failed {
                    tokio::select! {
                        _ = tokio::time::sleep(RECHECK_FIRST) => {}
                        _ = cancel.cancelled() => {}
                        _ = claim.released.cancelled() => {}
                    }
                }
            }

            // Cancelled while waiting for a slot: nothing ran, and the dispatcher has recorded it.
            if cancel.is_cancelled() {
                if claim.skip() {
                    let _ = finished.send(done());
                }
                return;
            }
            if !claim.begin() {
                return; // Its assignment was lost: the partition's next owner runs it.
            }
            let began = kairos_runtime::now();
            let reported = reporter
                .attempt(&task, began, &claim, &executor, &pool, &cancel, &hand_back)
                .await;
            claim.end();
            if reported {
                let _ = finished.send(done());
            }
        });
    }
}

/// The request a control record carries. The topic is Kairos's own, and the dispatcher
/// dead-letters what does not decode, so here it is just skipped.
fn control_request(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<CancelRequest> {
    message.payload().map(codec::decode_cancel)?.ok()
}

/// Appends an attempt's lifecycle events, retrying until the broker takes them.
#[derive(Clone)]
struct Reporter {
    ledger: Ledger,
    worker_id: String,
    /// `--report-start-after`.
    report_start_after: Duration,
}

impl Reporter {
    /// Runs one attempt and reports it; false if the outcome was not recorded (shutdown, or the
    /// attempt was handed back).
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        task: &TaskAssigned,
        began: Timestamp,
        claim: &Claim,
        executor: &Executor,
        pool: &str,
        cancel: &CancellationToken,
        hand_back: &CancellationToken,
    ) -> bool {
        let started = RunEventKind::RunStarted {
            attempt: task.attempt,
            worker_id: self.worker_id.clone(),
        };
        if let Some(start_at) = task.start_at {
            let lateness = (began - start_at).to_std().unwrap_or_default();
            metrics::histogram!(m::START_LATENESS, "pool" => pool.to_string())
                .record(lateness.as_secs_f64());
        }
        let admitted = match executor.admit(task) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.refuse(task, pool, refusal).await,
        };
        tracing::info!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, "Task started.");
        metrics::gauge!(m::IN_FLIGHT, "pool" => pool.to_string()).increment(1.0);
        let clock = std::time::Instant::now();
        // The start is reported while the task runs, so the broker's round trip is not between
        // the start time and the start, and only once it has run `--report-start-after`: a task
        // that ends sooner reports its start on its outcome alone. Once a start is reported,
        // the outcome goes only after it is recorded; if it cannot be, neither is the outcome,
        // and the task is not committed: it runs again, as after a crash.
        let execution = executor.run(task, admitted, cancel);
        tokio::pin!(execution);
        let mut execution = tokio::select! {
            biased;
            execution = &mut execution, if !self.report_start_after.is_zero() => execution,
            () = tokio::time::sleep(self.report_start_after) => {
                let (started, execution) =
                    tokio::join!(self.report(task, started, began), execution);
                if started {
                    claim.start_sent();
                } else {
                    metrics::gauge!(m::IN_FLIGHT, "pool" => pool.to_string()).decrement(1.0);
                    return false;
                }
                execution
            }
        };
        metrics::gauge!(m::IN_FLIGHT, "pool" => pool.to_string()).decrement(1.0);
        execution.output.started_at = Some(began);
        metrics::histogram!(m::DURATION, "pool" => pool.to_string())
            .record(clock.elapsed().as_secs_f64());
        if hand_back.is_cancelled() && execution.outcome == Outcome::Cancelled {
            tracing::info!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, "Handed back: the attempt will run again on the partition's next owner.");
            metrics::counter!(m::TASKS, "pool" => pool.to_string(), "outcome" => "handed_back")
                .increment(1);
            return false;
        }
        let (label, kind) = match execution.outcome {
            Outcome::Succeeded => (
                "succeeded",
                RunEventKind::RunSucceeded {
                    attempt: task.attempt,
                    worker_id: self.worker_id.clone(),
                    output: execution.output,
                },
            ),
            Outcome::Failed(error) => (
                "failed",
                RunEventKind::RunFailed {
                    attempt: task.attempt,
                    worker_id: self.worker_id.clone(),
                    error,
                    output: execution.output,
                    refused: None,
                },
            ),
            // Refused as it connected (the address its host resolved to).
            Outcome::Refused(refusal) => return self.refuse(task, pool, refusal).await,
            Outcome::Cancelled => (
                "cancelled",
                RunEventKind::RunCancelled {
                    attempt: task.attempt,
                },
            ),
            Outcome::TimedOut => (
                "timed_out",
                RunEventKind::RunTimedOut {
                    attempt: task.attempt,
                    worker_id: self.worker_id.clone(),
                    output: execution.output,
                },
            ),
        };
        metrics::counter!(m::TASKS, "pool" => pool.to_string(), "outcome" => label).increment(1);
        tracing::info!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, outcome = label, "Task finished.");
        self.report(task, kind, kairos_runtime::now()).await
    }

    /// Records an attempt the policy refused: failed, with the rule, never run.
    async fn refuse(&self, task: &TaskAssigned, pool: &str, refusal: Refusal) -> bool {
        tracing::warn!(job_id = %task.job_id, run_id = %task.run_id, attempt = task.attempt, rule = refusal.rule, reason = refusal.reason, "Task refused by this worker's policy.");
        metrics::counter!(m::TASKS, "pool" => pool.to_string(), "outcome" => "refused")
            .increment(1);
        metrics::counter!(m::REFUSED, "pool" => pool.to_string(), "rule" => refusal.rule)
            .increment(1);
        let kind = RunEventKind::RunFailed {
            attempt: task.attempt,
            worker_id: self.worker_id.clone(),
            error: refusal.to_string(),
            output: kairos_core::run::TaskOutput::default(),
            refused: Some(refusal.rule.to_string()),
        };
        self.report(task, kind, kairos_runtime::now()).await
    }

    /// The ledger event of the attempt that happened `at`.
    fn event(&self, task: &TaskAssigned, kind: RunEventKind, at: Timestamp) -> RunEvent {
        RunEvent {
            job_id: task.job_id.clone(),
            run_id: task.run_id,
            scheduled_for: task.scheduled_for,
            at,
            kind,
            shard: task.shard_of(),
        }
    }

    /// Appends the `RunStarted` of attempts begun here, blocking the thread until they (and every
    /// record sent before them) are acknowledged or the handover's time is up.
    fn announce_blocking(&self, begun: &[(TaskAssigned, Timestamp)]) {
        let events: Vec<RunEvent> = begun
            .iter()
            .map(|(task, began)| {
                let started = RunEventKind::RunStarted {
                    attempt: task.attempt,
                    worker_id: self.worker_id.clone(),
                };
                self.event(task, started, *began)
            })
            .collect();
        let acknowledged = self.ledger.append_blocking(&events, HANDOVER_TIMEOUT);
        if acknowledged < begun.len() {
            tracing::warn!(
                announced = acknowledged,
                begun = begun.len(),
                "Not every attempt running here could be announced before the handover; the partition's next owner may run them again."
            );
        }
    }

    /// Appends an event of the attempt that happened `at`.
    async fn report(&self, task: &TaskAssigned, kind: RunEventKind, at: Timestamp) -> bool {
        match self.ledger.append(&self.event(task, kind, at)).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, run_id = %task.run_id, "The attempt's event was not recorded.");
                false
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kairos_runtime::codec::WorkerHeartbeat;

    fn at(secs: i64) -> Timestamp {
        kairos_core::from_millis(1_800_000_000_000 + secs * 1000).unwrap()
    }

    pub(crate) fn task() -> TaskAssigned {
        let job_id = JobId::parse("job").unwrap();
        TaskAssigned {
            signature: None,
            run_id: RunId::derive(&job_id, at(0), kairos_core::TriggerKind::Schedule),
            job_id,
            attempt: 1,
            scheduled_for: at(0),
            pool: "default".into(),
            task: kairos_core::TaskSpec::Shell(kairos_core::ShellTask {
                env_from: Default::default(),
                command: vec!["true".into()],
                env: Default::default(),
                working_dir: None,
            }),
            timeout: None,
            definition_offset: 0,
            assigned_at: at(0),
            start_at: Some(at(0)),
            shard: None,
            concurrent_runs: false,
        }
    }

    fn beat(worker: &str, stopping: bool) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: worker.into(),
            pool: "default".into(),
            capacity: 1,
            task_types: vec!["shell".into()],
            in_flight: vec![],
            interval: Duration::from_secs(1),
            stopping,
            at: at(1),
        }
    }

    fn started_by(worker: &str) -> Attempts {
        let mut seen = Attempts::default();
        seen.started_by.insert(attempt_key(&task()), worker.into());
        seen
    }

    #[test]
    fn given_a_redelivered_attempt_then_it_is_left_to_a_live_or_lost_starter_and_run_otherwise() {
        let mut workers = Registry::default();
        workers.record(beat("live", false));
        workers.record(beat("gone", true));
        let verdict = |seen: &Attempts, now| taken_elsewhere(seen, &task(), "me", &workers, now);

        let mut over = started_by("live");
        over.over.insert((task().run_id, 1, None));
        assert_eq!(verdict(&over, at(2)), Some("already_over"));
        assert_eq!(verdict(&started_by("live"), at(2)), Some(RUNNING_ELSEWHERE));
        // Silent for long enough to be lost: the dispatcher records the attempt lost.
        assert_eq!(
            verdict(&started_by("live"), at(30)),
            Some(RUNNING_ELSEWHERE)
        );
        // Stopped: it handed the attempt back unfinished.
        assert_eq!(verdict(&started_by("gone"), at(2)), None);
        assert_eq!(verdict(&started_by("me"), at(2)), None);
        // Not yet heard of: its heartbeats are still being read.
        assert_eq!(
            verdict(&started_by("never-heard-of"), at(2)),
            Some(RUNNING_ELSEWHERE)
        );
        assert_eq!(verdict(&Attempts::default(), at(2)), None);
    }
}

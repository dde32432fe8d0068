//! The dispatcher: folds the run ledger and hands each scheduled run to its worker pool.
//!
//! It consumes `jobs` and `runs` (co-partitioned, one consumer group). RocksDB holds the
//! definitions it needs and the state of every run, folded with `kairos_core::apply`. While a
//! partition is rebuilding (catching up to the high watermark seen at assignment) it only folds;
//! once caught up it reconciles: every active run whose next step is missing gets it.
//!
//! Its state is the fold of the ledger in ledger order, its own steps included: a step is appended
//! and folded only when it is read back, because a worker's event about the same run may land
//! before it (a success just before the deadline backstop, say) and must win, as it does for every
//! other reader. Until then the run waits, with the state the step is expected to give it standing
//! in for decisions about the job's other runs.

mod attempts;
mod metrics_names;
mod pools;
mod timers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kairos_core::decide::{
    decide_step, take_step, wake_at_given, Attendance, Because, Circumstances, FollowUp, JobView,
    Step, Taken, DEFAULT_DEADLINE_MARGIN, DEFAULT_UNCLAIMED_LIMIT,
};
use kairos_core::job::stored;
use kairos_core::run::{apply, RunEvent, RunEventKind, RunId, RunState, RunStatus};
use kairos_core::{CancelRequest, JobDefinition, TaskAssigned, Timestamp};
use kairos_runtime::codec;
use kairos_runtime::kafka::{
    check_co_partitioning, task_topic_config, ReliableProducer, ServiceKind, TopicAdmin,
};
use kairos_runtime::ledger::{Ledger, DISPATCHED_AT_HEADER};
use kairos_runtime::record_loop::{
    self, Decoded, Folded, InputKind, Live, Reading, Record, StatefulService,
};
use kairos_runtime::workers::{Heartbeats, Liveness};
use kairos_runtime::{Batch, KafkaArgs, Store, Topics};
use kairos_runtime::{ServiceArgs, ServiceParts, ServiceSpec, StoreArgs};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::attempts::Attempts;
use crate::metrics_names as m;
use crate::pools::Pools;
use crate::timers::Timers;

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "kairos-dispatcher",
    version,
    about = "Dispatches scheduled runs to worker pools.",
    mut_arg("metrics_addr", |a| a.default_value("127.0.0.1:9402")),
    mut_arg("data_dir", |a| a.default_value(".kairos/data/dispatcher")),
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Most attempts of a pool in flight at once on this dispatcher's partitions, as POOL=N
    /// (repeatable); pools not named have no limit.
    #[arg(long = "max-in-flight", value_name = "POOL=N", env = "KAIROS_MAX_IN_FLIGHT", value_delimiter = ',', value_parser = parse_limit)]
    pub max_in_flight: Vec<(String, usize)>,
    /// How long past its task timeout an attempt that never reported is recorded as timed out.
    #[arg(long, env = "KAIROS_DEADLINE_MARGIN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub deadline_margin: Duration,
    /// How long a dispatched task may go unheld by any live worker of its pool (none announces it
    /// in its heartbeats) before the attempt is recorded lost and retried: the backstop for a
    /// task that never reached the tasks topic, or an attempt whose worker restarted under the
    /// same id. Workers read the ledger before they take up a task older than half the default
    /// (30 s), so a shorter limit lets a task fetched late run after its attempt was given up.
    #[arg(long, env = "KAIROS_UNCLAIMED_LIMIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub unclaimed_limit: Duration,
}

impl Config {
    pub fn new(kafka: KafkaArgs, data_dir: PathBuf, metrics_addr: SocketAddr) -> Self {
        Config {
            service: ServiceArgs::new(kafka, metrics_addr),
            store: StoreArgs { data_dir },
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            unclaimed_limit: DEFAULT_UNCLAIMED_LIMIT,
            max_in_flight: vec![],
        }
    }
}

fn parse_limit(s: &str) -> Result<(String, usize), String> {
    let (pool, limit) = s
        .split_once('=')
        .ok_or_else(|| format!("expected POOL=N, got {s:?}"))?;
    let limit = limit
        .parse()
        .map_err(|_| format!("{limit:?} is not a number of attempts"))?;
    Ok((pool.trim().to_string(), limit))
}

/// The soonest a timer set by a reconcile fires.
const MIN_TIMER_DELAY: chrono::Duration = chrono::Duration::milliseconds(20);

/// How often the dispatcher looks for attempts on workers that have gone silent.
const WORKER_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Runs whose step may be on its way to the broker at once: enough to keep the producer's
/// batches full, few enough that an outage holds back a bounded amount of work.
const MAX_SENDS_IN_FLIGHT: usize = 1000;

/// What the dispatcher stores of a job: its latest definition or tombstone, and where it was read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct StoredJob {
    /// Absent once the job is deleted.
    #[serde(rename = "spec", with = "stored::option")]
    definition: Option<JobDefinition>,
    offset: i64,
}

impl StoredJob {
    fn view(&self) -> JobView<'_> {
        match &self.definition {
            Some(definition) => JobView::Defined {
                definition,
                offset: self.offset,
            },
            None => JobView::Deleted {
                offset: self.offset,
            },
        }
    }
}

fn job_key(partition: i32, job: &str) -> String {
    format!("job/{partition:05}/{job}")
}
fn run_key(partition: i32, job: &str, run: &str) -> String {
    format!("run/{partition:05}/{job}/{run}")
}
/// Cancel requests not yet acted on.
fn cancel_key(partition: i32, job: &str, run: &str) -> String {
    format!("cancel/{partition:05}/{job}/{run}")
}
/// Runs that may still need a step; scanned on catch-up and when a definition arrives.
fn active_key(partition: i32, job: &str, run: &str) -> String {
    format!("active/{partition:05}/{job}/{run}")
}

/// Runs the dispatcher until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topics = config.service.kafka.topics();
    let (group, inputs) = topics.consumes(&ServiceKind::Dispatcher);
    let partitions = check_co_partitioning(
        &config.service.kafka,
        &[
            topics.jobs(),
            topics.runs(),
            topics.control(),
            topics.tasks("default"),
        ],
    )?;
    let heartbeats = Heartbeats::follow(&config.service.kafka)?;
    let store = config.store.open()?;
    let spec = ServiceSpec {
        name: "dispatcher",
        args: &config.service,
        group,
        inputs: &inputs,
        store: Some(store.clone()),
    };
    let parts = ServiceParts::start(spec, shutdown).await?;
    m::register();
    let mut check_workers = tokio::time::interval(WORKER_CHECK_INTERVAL);
    check_workers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dispatcher = Dispatcher {
        admin: TopicAdmin::new(&config.service.kafka)?,
        topics,
        partitions,
        store: store.clone(),
        producer: parts.producer.clone(),
        ledger: parts.ledger(),
        known_pools: HashSet::new(),
        timers: Timers::default(),
        check_workers,
        deadline_margin: config.deadline_margin,
        unclaimed_limit: config.unclaimed_limit,
        pools: Pools::new(config.max_in_flight.iter().cloned().collect()),
        heartbeats,
        attempts: Attempts::default(),
        awaiting: HashMap::new(),
        sends: JoinSet::new(),
    };
    parts.run(&mut dispatcher, &store).await
}

struct Dispatcher {
    admin: TopicAdmin,
    topics: Topics,
    partitions: i32,
    store: Store,
    producer: ReliableProducer,
    ledger: Ledger,
    /// Pools whose task topic is known to exist.
    known_pools: HashSet<String>,
    /// When to look at a job again without a new event.
    timers: Timers,
    /// When to look for attempts on workers that have gone silent.
    check_workers: tokio::time::Interval,
    deadline_margin: Duration,
    unclaimed_limit: Duration,
    /// In-flight attempts and waiting runs per pool, for `--max-in-flight`.
    pools: Pools,
    /// Every worker's latest heartbeat.
    heartbeats: Heartbeats,
    /// The worker of each started attempt, to find a dead worker's attempts.
    attempts: Attempts,
    /// Runs with a step appended but not read back yet: the step, and the state it should give.
    awaiting: HashMap<RunId, Awaiting>,
    /// Steps being sent (see [`Dispatcher::send_in_order`]).
    sends: JoinSet<anyhow::Result<()>>,
}

/// What wakes the dispatcher besides the ledger.
enum Wake {
    /// A sequence of records was sent.
    Sent,
    /// Time to look for attempts on workers that have gone silent.
    CheckWorkers,
    /// A job's timer (retry due, deadline, unclaimed limit) has come due.
    TimersDue,
}

impl StatefulService for Dispatcher {
    type Wake = Wake;
    /// Timers first: a busy ledger is always ready, and would otherwise starve retries, deadlines
    /// and lost checks. (Heartbeats are read on a task of their own.)
    const WAKE_FIRST: bool = true;

    fn reads(&self, kind: InputKind) -> Reading {
        match kind {
            // The trigger dead-letters definitions that do not decode.
            InputKind::Jobs => Reading::Shared,
            _ => Reading::Owned,
        }
    }

    fn fold(&mut self, record: Record<'_>, batch: &mut Batch) -> anyhow::Result<Folded> {
        let (partition, offset) = (record.message.partition(), record.message.offset());
        let job = match record.value {
            Decoded::Definition(definition) => {
                let job = definition.id.to_string();
                let stored = StoredJob {
                    definition: Some(*definition),
                    offset,
                };
                batch.put(&job_key(partition, &job), &stored);
                Some(job)
            }
            Decoded::JobDeleted(job) => {
                let stored = StoredJob {
                    definition: None,
                    offset,
                };
                batch.put(&job_key(partition, &job), &stored);
                Some(job)
            }
            Decoded::Cancel(request) => self.apply_cancel(partition, &request, batch),
            Decoded::Event(event) => self.apply_event(partition, &event, batch)?,
            _ => None,
        };
        Ok(job.map_or(Folded::Unchanged, Folded::Touched))
    }

    async fn caught_up(&mut self, partition: i32, _live: &Live) -> anyhow::Result<()> {
        tracing::info!(partition, "Partition caught up; reconciling its runs.");
        self.reconcile(partition, None).await
    }

    async fn touched(&mut self, partition: i32, job: &str, _live: &Live) -> anyhow::Result<()> {
        self.reconcile(partition, Some(job)).await
    }

    fn revoked(&mut self, partitions: &[i32]) {
        self.timers.forget(partitions);
        self.pools.forget(partitions);
        self.attempts.forget(partitions);
        self.awaiting
            .retain(|_, a| !partitions.contains(&a.partition));
    }

    async fn woken(&mut self) -> anyhow::Result<Wake> {
        tokio::select! {
            biased;
            Some(sent) = self.sends.join_next() => {
                sent??;
                Ok(Wake::Sent)
            }
            _ = self.check_workers.tick() => Ok(Wake::CheckWorkers),
            _ = record_loop::sleep_until(self.timers.next()) => Ok(Wake::TimersDue),
        }
    }

    async fn wake(&mut self, wake: Wake, live: &Live) -> anyhow::Result<()> {
        match wake {
            Wake::Sent => Ok(()),
            Wake::CheckWorkers => self.reconcile_lost_workers(live).await,
            Wake::TimersDue => self.wake_due(live).await,
        }
    }

    async fn after_turn(&mut self, live: &Live) -> anyhow::Result<()> {
        self.drain_pools(live).await
    }

    /// Waits for the steps being sent; one interrupted by the shutdown is decided again after the
    /// restart, as it is not on the ledger.
    async fn stop(&mut self) -> anyhow::Result<()> {
        while let Some(sent) = self.sends.join_next().await {
            kairos_runtime::kafka::clean_exit(sent?)?;
        }
        Ok(())
    }
}

/// Whether `read` is the ledger's copy of the step `sent`: same type, attempt and decision time.
fn is_same_step(sent: &RunEvent, read: &RunEvent) -> bool {
    sent.kind.name() == read.kind.name()
        && sent.kind.attempt() == read.kind.attempt()
        && sent.at == read.at
}

/// A record the dispatcher sends.
struct Outgoing {
    topic: String,
    key: String,
    payload: Vec<u8>,
    /// CloudEvents attributes, on ledger records.
    headers: kairos_runtime::cloudevents::Headers,
}

/// A step of the dispatcher's own on its way through the ledger.
struct Awaiting {
    partition: i32,
    event: RunEvent,
    expected: RunState,
}

impl Dispatcher {
    /// Gives waiting runs the room their pools have now, highest priority first.
    async fn drain_pools(&mut self, live: &Live) -> anyhow::Result<()> {
        for (partition, job) in self.pools.ready() {
            if live.contains(partition) {
                self.reconcile(partition, Some(&job)).await?;
            }
        }
        for (pool, in_flight, waiting) in self.pools.levels() {
            metrics::gauge!(m::IN_FLIGHT, "pool" => pool.clone()).set(in_flight as f64);
            metrics::gauge!(m::WAITING, "pool" => pool).set(waiting as f64);
        }
        Ok(())
    }

    /// Whether a live worker is on the run's attempt (see [`Attendance`]).
    fn attendance(
        &self,
        run: &RunState,
        definition: Option<&JobDefinition>,
        now: Timestamp,
    ) -> Attendance {
        match definition {
            Some(definition) => self.heartbeats.registry().attendance(
                run,
                &definition.pool,
                definition.task.kind(),
                now,
            ),
            None => Attendance::Unattended,
        }
    }

    /// Reconciles the jobs with an attempt on a worker that has gone silent, so that the attempt
    /// is recorded as lost and retried.
    async fn reconcile_lost_workers(&mut self, live: &Live) -> anyhow::Result<()> {
        self.heartbeats.check()?;
        let lost = self
            .attempts
            .on_lost_workers(&self.heartbeats.registry(), kairos_runtime::now());
        for (partition, job) in lost {
            if live.contains(partition) {
                self.reconcile(partition, Some(&job)).await?;
            }
        }
        Ok(())
    }

    /// Reconciles the jobs whose timers (retry due times) have come due.
    /// Only the timers due when it begins: one that a reconcile sets again, already due, waits
    /// for the next turn of the loop, so records keep being read in between.
    async fn wake_due(&mut self, live: &Live) -> anyhow::Result<()> {
        let due = self.timers.take_due(kairos_runtime::now());
        for (partition, job) in due {
            if live.contains(partition) {
                self.reconcile(partition, Some(&job)).await?;
            }
        }
        Ok(())
    }

    /// Notes a cancel request; the run is cancelled when its job is next reconciled (at once when
    /// the partition is caught up). Returns the job.
    fn apply_cancel(
        &mut self,
        partition: i32,
        request: &CancelRequest,
        batch: &mut Batch,
    ) -> Option<String> {
        if request.attempt.is_some() {
            // A fence this or another dispatcher sent to the workers; the run goes on.
            return None;
        }
        let job = request.job_id.to_string();
        tracing::info!(job_id = job, run_id = %request.run_id, reason = ?request.reason, "Cancel requested.");
        batch.put(
            &cancel_key(partition, &job, &request.run_id.to_string()),
            &(),
        );
        Some(job)
    }

    /// Folds one ledger event into its run; returns the job whose run may now have a next step.
    fn apply_event(
        &mut self,
        partition: i32,
        event: &RunEvent,
        batch: &mut Batch,
    ) -> anyhow::Result<Option<String>> {
        let job = event.job_id.to_string();
        // Our own step back: from here on the stored state speaks for the run, which may need its
        // next step even if a worker's event came first and the step changed nothing.
        let own_step = self
            .awaiting
            .get(&event.run_id)
            .is_some_and(|a| is_same_step(&a.event, event));
        if own_step {
            self.awaiting.remove(&event.run_id);
        }
        let changed = self.fold_event(partition, event, batch)?.is_some();
        Ok((own_step || changed).then_some(job))
    }

    /// Applies `event` to its run in `batch`; the run's new state, or `None` when the event
    /// changed nothing.
    fn fold_event(
        &mut self,
        partition: i32,
        event: &RunEvent,
        batch: &mut Batch,
    ) -> anyhow::Result<Option<RunState>> {
        let (job, run) = (event.job_id.as_str(), event.run_id.to_string());
        let key = run_key(partition, job, &run);
        let current: Option<RunState> = batch.get(&self.store, &key)?;
        match apply(current.as_ref(), event) {
            Ok(next) => {
                if next.status.is_final() {
                    batch.delete(&active_key(partition, job, &run));
                } else {
                    batch.put(&active_key(partition, job, &run), &());
                }
                batch.put(&key, &next);
                self.pools.track(partition, &next);
                self.attempts.track(partition, &next);
                Ok(Some(next))
            }
            Err(error) => {
                if error.is_expected() {
                    tracing::debug!(%error, "Event recorded without effect.");
                } else {
                    tracing::warn!(%error, "Event breaks the run protocol; ignored.");
                }
                metrics::counter!(m::IGNORED_EVENTS, "expected" => if error.is_expected() { "true" } else { "false" })
                    .increment(1);
                Ok(None)
            }
        }
    }

    /// Gives every unfinished run of the partition (or of one job) its missing next step.
    async fn reconcile(&mut self, partition: i32, job: Option<&str>) -> anyhow::Result<()> {
        let root = format!("active/{partition:05}/");
        let prefix = job.map_or_else(|| root.clone(), |job| format!("{root}{job}/"));
        let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, ()) in self.store.scan::<()>(&prefix)? {
            if let Some((job, run)) = key
                .strip_prefix(&root)
                .and_then(|rest| rest.rsplit_once('/'))
            {
                by_job
                    .entry(job.to_string())
                    .or_default()
                    .push(run.to_string());
            }
        }
        for (job, runs) in by_job {
            self.reconcile_job(partition, &job, &runs).await?;
        }
        Ok(())
    }

    /// Decides a job's unfinished runs in slot order, each seeing the others as they are after
    /// the steps taken before it (the overlap policy depends on them).
    async fn reconcile_job(
        &mut self,
        partition: i32,
        job: &str,
        run_ids: &[String],
    ) -> anyhow::Result<()> {
        let mut runs = Vec::with_capacity(run_ids.len());
        for run in run_ids {
            runs.extend(self.store.get::<RunState>(&run_key(partition, job, run))?);
        }
        // A run whose step is on its way counts as what the step will make it.
        for run in &mut runs {
            if let Some(awaiting) = self.awaiting.get(&run.run_id) {
                *run = awaiting.expected.clone();
            }
        }
        runs.sort_by_key(|r| (r.scheduled_for, r.run_id));
        for run in &runs {
            self.pools.track(partition, run);
            self.attempts.track(partition, run);
        }
        // A definition this release cannot read back is taken as not read yet: its runs wait
        // until the job is written again; taking it for deleted would end them.
        let stored: Option<StoredJob> = self.store.get_readable(&job_key(partition, job))?;
        let view = stored.as_ref().map_or(JobView::Unknown, StoredJob::view);
        let definition = view.definition();
        let cancels: Vec<(String, ())> =
            self.store.scan(&format!("cancel/{partition:05}/{job}/"))?;
        let cancel_requested = |run: &RunState| {
            cancels
                .iter()
                .any(|(key, ())| key.ends_with(&run.run_id.to_string()))
        };
        for i in 0..runs.len() {
            // A step can make the next one due at once (a retry whose time has passed while the
            // partition was rebuilding), so keep stepping until the run waits on someone. A
            // requested cancel comes first.
            let cancelling = cancel_requested(&runs[i]);
            while !self.awaiting.contains_key(&runs[i].run_id) {
                let now = kairos_runtime::now();
                let worker_lost = runs[i].workers().into_iter().any(|worker| {
                    self.heartbeats.registry().liveness(worker, now) == Some(Liveness::Lost)
                });
                let around = Circumstances {
                    job: view,
                    runs_of_job: &runs,
                    cancel_requested: cancelling,
                    worker_lost,
                    attendance: self.attendance(&runs[i], definition, now),
                    now,
                    deadline_margin: self.deadline_margin,
                    unclaimed_limit: self.unclaimed_limit,
                };
                let Some((step, because)) = decide_step(&runs[i], &around) else {
                    break;
                };
                let run = &runs[i];
                match because {
                    Because::WorkerLost => {
                        tracing::warn!(job_id = %run.job_id, run_id = %run.run_id, attempt = run.attempt, workers = ?run.workers(), "A worker of the attempt is lost.");
                    }
                    Because::Unclaimed { last_held } => {
                        tracing::warn!(job_id = %run.job_id, run_id = %run.run_id, attempt = run.attempt, ?last_held, "No live worker holds the dispatched task; recording the attempt lost.");
                        metrics::counter!(m::UNCLAIMED, "pool" => run.pool.clone().unwrap_or_default()).increment(1);
                    }
                    Because::CancelRequested | Because::Due => {}
                }
                if let Some(pool) = step.pool() {
                    let priority = definition.map_or(0, |d| d.priority);
                    if !self.pools.admits(pool, priority, runs[i].scheduled_for) {
                        // The pool is saturated: the run waits, visible as scheduled.
                        self.pools.wait(pool, priority, partition, &runs[i]);
                        break;
                    }
                }
                match self.take(partition, &runs[i], step).await? {
                    Some(next) => runs[i] = next,
                    // The fold refuses the dispatcher's own step; asking again would repeat it.
                    None => break,
                }
            }
            // A run awaiting its step is reconciled when the step is read back; a timer for it
            // now could already be due and would only spin.
            if self.awaiting.contains_key(&runs[i].run_id) {
                continue;
            }
            let now = kairos_runtime::now();
            let attendance = self.attendance(&runs[i], definition, now);
            let wake = wake_at_given(
                &runs[i],
                definition,
                self.deadline_margin,
                self.unclaimed_limit,
                now,
                attendance,
            );
            if let Some(due) = wake {
                // Timers come before records in the loop: one that is due at every turn (a run
                // whose retry is overdue but whose pool is full) must leave room for reading.
                let due = due.max(now + MIN_TIMER_DELAY);
                self.timers.set(due, partition, job);
            }
        }
        // A request is done with once its run is over; one for a run not read yet is kept.
        let mut done = Batch::new();
        for (key, ()) in &cancels {
            let run = key.rsplit('/').next().unwrap_or_default();
            let state: Option<RunState> = self.store.get(&run_key(partition, job, run))?;
            let Some(state) = state.filter(|r| r.status.is_final()) else {
                continue;
            };
            if state.status != RunStatus::Cancelled {
                tracing::info!(job_id = job, run_id = run, status = ?state.status, "Cancel request dropped: the run was over before it was read.");
            }
            done.delete(key);
        }
        self.store.write(done)?;
        Ok(())
    }

    /// Appends the step to the ledger (and the task to its pool) and returns the state it should
    /// give the run once read back (`None` if the fold refuses it).
    async fn take(
        &mut self,
        partition: i32,
        run: &RunState,
        step: Step,
    ) -> anyhow::Result<Option<RunState>> {
        let now = kairos_runtime::now();
        let Taken { event, then } = take_step(run, step, now);
        // The ledger record first, each of the others once the one before is acknowledged.
        let mut records = vec![self.ledger_record(&event)?];
        for follow_up in &then {
            records.push(match follow_up {
                FollowUp::Publish(task) => self.task_record(task).await?,
                FollowUp::Stop { attempt } => self.stop_record(run, *attempt, now)?,
            });
        }
        match &event.kind {
            RunEventKind::RunCancelled { attempt } => {
                tracing::info!(job_id = %run.job_id, run_id = %run.run_id, attempt, "Cancelled.");
            }
            RunEventKind::RunDispatched { attempt, pool } => {
                metrics::counter!(m::DISPATCHES, "pool" => pool.clone()).increment(1);
                tracing::debug!(job_id = %run.job_id, run_id = %run.run_id, attempt, pool, tasks = then.len(), "Dispatched.");
            }
            kind => {
                tracing::debug!(job_id = %run.job_id, run_id = %run.run_id, event = kind.name(), "Recorded.");
            }
        }
        // Only a dispatch sends a task, whose header may need where the ledger was read to.
        let read_to = match event.kind {
            RunEventKind::RunDispatched { .. } => {
                self.store.next_offset(self.ledger.topic(), partition)?
            }
            _ => None,
        };
        self.send_in_order(records, read_to).await?;
        let expected = match apply(Some(run), &event) {
            Ok(expected) => expected,
            Err(error) => {
                tracing::error!(job_id = %run.job_id, run_id = %run.run_id, %error, "The dispatcher's own step does not apply.");
                return Ok(None);
            }
        };
        // Pool levels and workers follow the step at once, or the pool would be over-admitted
        // while the step travels.
        self.pools.track(partition, &expected);
        self.attempts.track(partition, &expected);
        self.awaiting.insert(
            run.run_id,
            Awaiting {
                partition,
                event,
                expected: expected.clone(),
            },
        );
        Ok(Some(expected))
    }

    /// Sends records one after another, in the background: the dispatcher goes on with other
    /// runs meanwhile, and this run's next step waits for this one to be read back anyway. At
    /// most [`MAX_SENDS_IN_FLIGHT`] such sequences are under way; a send the broker refuses ends
    /// the service, as it would have in the loop. `read_to` is where this dispatcher has read the
    /// ledger partition the records go to: whatever it appends lands there or later.
    async fn send_in_order(
        &mut self,
        records: Vec<Outgoing>,
        read_to: Option<i64>,
    ) -> anyhow::Result<()> {
        while self.sends.len() >= MAX_SENDS_IN_FLIGHT {
            if let Some(sent) = self.sends.join_next().await {
                sent??;
            }
        }
        let producer = self.producer.clone();
        let ledger = self.ledger.topic().to_string();
        self.sends.spawn(async move {
            // A task names where its dispatch is on the ledger, for a worker it is redelivered to.
            let mut dispatched_at = None;
            for mut record in records {
                if let (false, Some(offset)) = (record.topic == ledger, dispatched_at) {
                    record
                        .headers
                        .push((DISPATCHED_AT_HEADER, format!("{offset}")));
                }
                let delivered = producer
                    .send_with_headers(
                        &record.topic,
                        &record.key,
                        Some(&record.payload),
                        &record.headers,
                    )
                    .await?;
                if record.topic == ledger {
                    // A send retried after a broker restart can be acknowledged as a duplicate
                    // (librdkafka counts DUPLICATE_SEQUENCE_NUMBER as delivered) with no offset,
                    // a negative one: the dispatch is then somewhere past `read_to`, which is all
                    // a worker needs to find it.
                    dispatched_at = Some(delivered.offset).filter(|at| *at >= 0).or(read_to);
                }
            }
            Ok(())
        });
        Ok(())
    }

    /// A request for the workers (they read the control topic) to stop the run, or with
    /// `attempt` only that attempt and earlier ones.
    fn stop_record(
        &self,
        run: &RunState,
        attempt: Option<u32>,
        now: Timestamp,
    ) -> anyhow::Result<Outgoing> {
        let request = CancelRequest {
            job_id: run.job_id.clone(),
            run_id: run.run_id,
            reason: None,
            attempt,
            at: now,
        };
        Ok(Outgoing {
            topic: self.topics.control(),
            key: run.job_id.to_string(),
            payload: codec::encode_cancel(&request)?,
            headers: vec![],
        })
    }

    fn ledger_record(&self, event: &RunEvent) -> anyhow::Result<Outgoing> {
        let record = self.ledger.record(event)?;
        Ok(Outgoing {
            topic: self.ledger.topic().to_string(),
            key: record.key,
            payload: record.payload,
            headers: record.headers,
        })
    }

    /// A task for its pool's topic, which is created the first time a job uses the pool.
    async fn task_record(&mut self, task: &TaskAssigned) -> anyhow::Result<Outgoing> {
        let topic = self.topics.tasks(&task.pool);
        if !self.known_pools.contains(&task.pool) {
            // Co-partitioned with the ledger, so that any producer of job definitions can name a
            // new pool.
            let created = self
                .admin
                .ensure_topic(&topic, self.partitions, &task_topic_config())
                .await?;
            if created {
                tracing::info!(topic, "Created the task topic of a new pool.");
            }
            self.known_pools.insert(task.pool.clone());
        }
        Ok(Outgoing {
            topic,
            key: task.key(),
            payload: codec::encode_task(task)?,
            headers: vec![],
        })
    }
}

//! The result-aggregator: read models of the run ledger, served as a REST API.
//!
//! It consumes `jobs` and `runs` into RocksDB: jobs by id, each run's state (folded with
//! `kairos_core::apply`) and its full event history including duplicates and stale events, and an
//! index of runs by job in slot order. It never decides anything; it answers "what happened?".

mod api;
mod metrics_names;
mod pending;
mod workers;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_core::run::{apply, RunEventKind, RunId, RunState, RunStatus, SkipReason};
use kairos_core::Timestamp;
use kairos_runtime::codec::{self, Alert};
use kairos_runtime::deadletter::DeadLetters;
use kairos_runtime::kafka::{check_co_partitioning, Input, ReliableProducer};
use kairos_runtime::telemetry::{Health, LogFormat};
use kairos_runtime::{open_store, ServiceParts, ServiceSpec};
use kairos_runtime::{
    record_key, record_time, Batch, KafkaArgs, PartitionedConsumer, Store, Topics,
};
use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics_names as m;
use crate::workers::Workers;

/// History entries kept per run; a run that loops through more retries keeps its latest ones.
const MAX_HISTORY: usize = 200;

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "kairos-aggregator",
    version,
    about = "Read models of the run ledger and the REST API."
)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// RocksDB directory (a cache: delete it and the aggregator rebuilds from the topics).
    #[arg(
        long,
        env = "KAIROS_DATA_DIR",
        default_value = ".kairos/data/aggregator"
    )]
    pub data_dir: PathBuf,
    #[arg(long, env = "KAIROS_METRICS_ADDR", default_value = "127.0.0.1:9404")]
    pub metrics_addr: SocketAddr,
    /// Where the REST API listens.
    #[arg(long, env = "KAIROS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// How long a dispatched run may wait while no live worker serves its pool and task type
    /// before a `run_pending` alert is raised.
    #[arg(long, env = "KAIROS_PENDING_ALERT_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub pending_alert_after: Duration,
    #[arg(long, env = "KAIROS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    pub fn new(
        kafka: KafkaArgs,
        data_dir: PathBuf,
        metrics_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> Self {
        Config {
            kafka,
            data_dir,
            metrics_addr,
            http_addr,
            pending_alert_after: Duration::from_secs(60),
            log_format: LogFormat::Text,
        }
    }
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub spec: JobSpec,
    pub offset: i64,
    pub updated_at: Option<Timestamp>,
}

/// One ledger event of a run, and what it did to the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub event: String,
    pub at: Timestamp,
    pub attempt: Option<u32>,
    pub offset: i64,
    /// `applied`, or why it changed nothing (a duplicate, a stale attempt, ...).
    pub effect: String,
    /// What the event says beyond its type: the skip reason, pool, worker, error or due time.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The part of an event a person needs to understand the run's history.
fn detail(kind: &RunEventKind) -> Option<String> {
    use RunEventKind::*;
    match kind {
        RunScheduled { trigger, .. } => Some(trigger.as_str().to_string()),
        RunSkipped { reason } => Some(
            match reason {
                SkipReason::Misfire => "misfire",
                SkipReason::JobDeleted => "job_deleted",
                SkipReason::Overlap => "overlap",
            }
            .to_string(),
        ),
        RunDispatched { pool, .. } => Some(pool.clone()),
        RunStarted { worker_id, .. } | RunTimedOut { worker_id, .. } => Some(worker_id.clone()),
        RunSucceeded { output, .. } => output.exit_code.map(|code| code.to_string()),
        RunFailed { error, .. } => Some(error.clone()),
        RetryScheduled { due_at, .. } => {
            Some(due_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }
        RunCancelled { .. } | RunLost { .. } | RunAbandoned { .. } => None,
    }
}

/// A run's state and how it got there.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    #[serde(flatten)]
    pub state: RunState,
    pub history: Vec<HistoryEntry>,
}

fn job_key(job: &str) -> String {
    format!("job/{job}")
}
fn run_key(run: &str) -> String {
    format!("run/{run}")
}
/// Runs of a job in slot order: `jobrun/<job>/<slot millis, zero-padded>/<run>`.
fn job_run_key(job: &str, slot: Timestamp, run: &str) -> String {
    format!("jobrun/{job}/{:015}/{run}", slot.timestamp_millis().max(0))
}

/// Runs the aggregator until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topics = config.kafka.topics();
    check_co_partitioning(&config.kafka, &[topics.jobs(), topics.runs()])?;
    check_co_partitioning(&config.kafka, &[topics.heartbeats()])?;
    let inputs = [topics.jobs(), topics.runs(), topics.heartbeats()];
    let store = open_store(&config.data_dir)?;
    let spec = ServiceSpec {
        name: "aggregator",
        kafka: &config.kafka,
        group: topics.group("aggregator"),
        inputs: &inputs,
        store: Some(store.clone()),
        metrics_addr: config.metrics_addr,
    };
    let mut parts = ServiceParts::start(spec, shutdown).await?;
    let workers = Workers::default();
    let router = api::router(store.clone(), parts.health.clone(), workers.clone());
    parts.ops.serve(config.http_addr, router).await?;
    tracing::info!(http_addr = %config.http_addr, "REST API listening.");
    let mut aggregator = Aggregator {
        topics,
        store,
        producer: parts.producer,
        consumer: parts.consumer,
        deadletters: parts.deadletters,
        health: parts.health,
        workers,
        pending_alert_after: config.pending_alert_after,
        alerted_pending: HashSet::new(),
    };
    let result = aggregator.run(parts.shutdown).await;
    parts
        .ops
        .finish(&aggregator.consumer, &aggregator.producer, result)
        .await
}

struct Aggregator {
    topics: Topics,
    /// The worker registry, a live view rebuilt from the compacted heartbeats topic on start.
    workers: Workers,
    store: Store,
    /// Kept for a clean stop: dead letters are produced through it.
    producer: ReliableProducer,
    consumer: PartitionedConsumer,
    deadletters: DeadLetters,
    health: Arc<Health>,
    pending_alert_after: Duration,
    /// Pending runs already alerted about (in memory: after a restart a still-waiting run is
    /// alerted once more, with the same alert id).
    alerted_pending: HashSet<RunId>,
}

/// How often the aggregator looks for runs waiting on a pool nobody serves.
const PENDING_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Aggregator {
    async fn run(&mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut check_pending = tokio::time::interval(PENDING_CHECK_INTERVAL);
        check_pending.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = check_pending.tick() => self.alert_pending().await?,
                input = self.consumer.next(Some(&self.store)) => {
                    if let Input::Record(message) = input {
                        if message.topic() == self.topics.heartbeats() {
                            self.record_heartbeat(&message).await?;
                        } else {
                            self.apply(&message).await?;
                        }
                        self.consumer.applied(&message);
                    }
                }
            }
            self.health.set_caught_up(self.consumer.ready());
        }
    }

    /// Keeps a worker's heartbeat in the registry. Not stored, and its position not kept: the
    /// registry is read again from the compacted topic whenever the aggregator starts (so a
    /// heartbeat that does not decode is dead-lettered again, with the same source offset).
    async fn record_heartbeat(&self, message: &OwnedMessage) -> anyhow::Result<()> {
        if let Some(beat) = self
            .deadletters
            .decode(message, codec::decode_heartbeat)
            .await?
        {
            self.workers.record(beat);
        }
        Ok(())
    }

    /// Applies a definition or ledger event in one batch with its position, then raises the
    /// alert it calls for, if the partition is live.
    async fn apply(&mut self, message: &OwnedMessage) -> anyhow::Result<()> {
        let mut batch = Batch::new();
        let mut alert = None;
        if message.topic() == self.topics.jobs() {
            self.apply_definition(message, &mut batch);
        } else {
            alert = self.apply_event(message, &mut batch).await?;
        }
        batch.consumed(message.topic(), message.partition(), message.offset());
        self.store.write(batch)?;
        // Alerts are about now: a rebuild replaying history raises none.
        if let Some(alert) = alert.filter(|_| self.consumer.is_caught_up(message.partition())) {
            self.raise(&alert).await?;
        }
        Ok(())
    }

    /// Definitions that do not decode are the trigger's to dead-letter; here they are skipped.
    fn apply_definition(&self, message: &OwnedMessage, batch: &mut Batch) {
        let Some(key) = record_key(message) else {
            return;
        };
        match message.payload().map(codec::decode_job) {
            None => batch.delete(&job_key(&key)),
            Some(Ok(definition)) if definition.id.as_str() == key => {
                let record = JobRecord {
                    spec: definition.to_spec(),
                    offset: message.offset(),
                    updated_at: record_time(message),
                };
                batch.put(&job_key(&key), &record);
            }
            Some(_) => {}
        }
    }

    /// Folds one ledger event into its run's read model; returns the alert it raises, if any.
    async fn apply_event(
        &mut self,
        message: &OwnedMessage,
        batch: &mut Batch,
    ) -> anyhow::Result<Option<Alert>> {
        let Some(event) = self
            .deadletters
            .decode(message, codec::decode_run_event)
            .await?
        else {
            return Ok(None);
        };
        let run = event.run_id.to_string();
        let current: Option<RunRecord> = self.store.get(&run_key(&run))?;
        let folded = apply(current.as_ref().map(|r| &r.state), &event);
        let entry = |effect: String| HistoryEntry {
            event: event.kind.name().to_string(),
            at: event.at,
            attempt: event.kind.attempt(),
            offset: message.offset(),
            effect,
            detail: detail(&event.kind),
        };
        let mut alert = None;
        let record = match (folded, current) {
            (Ok(state), current) => {
                record_outcome(&state, current.as_ref().map(|r| &r.state));
                if state.status == RunStatus::Abandoned {
                    let error = state.error.as_deref();
                    alert = Some(Alert::run_abandoned(
                        state.job_id.clone(),
                        state.run_id,
                        state.attempt,
                        error,
                        event.at,
                    ));
                }
                let mut history = current.map(|r| r.history).unwrap_or_default();
                history.push(entry("applied".into()));
                RunRecord { state, history }
            }
            (Err(error), Some(mut record)) => {
                metrics::counter!(m::UNAPPLIED_EVENTS, "expected" => if error.is_expected() { "true" } else { "false" }).increment(1);
                record.history.push(entry(error.to_string()));
                record
            }
            (Err(error), None) => {
                tracing::warn!(%error, "Event for a run with no RunScheduled; ignored.");
                metrics::counter!(m::UNAPPLIED_EVENTS, "expected" => "false").increment(1);
                return Ok(None);
            }
        };
        let mut record = record;
        let excess = record.history.len().saturating_sub(MAX_HISTORY);
        record.history.drain(..excess);
        batch.put(
            &job_run_key(event.job_id.as_str(), event.scheduled_for, &run),
            &(),
        );
        pending::track(batch, &record.state);
        batch.put(&run_key(&run), &record);
        Ok(alert)
    }

    /// Raises `run_pending` for each run that has waited past the threshold on a pool that no
    /// live worker serves. Only when caught up: a rebuilding view would see stale dispatches.
    async fn alert_pending(&mut self) -> anyhow::Result<()> {
        if !self.consumer.ready() {
            return Ok(());
        }
        let now = kairos_runtime::now();
        let waiting = pending::all(&self.store)?;
        let still_waiting: HashSet<RunId> = waiting.iter().map(|p| p.run_id).collect();
        self.alerted_pending
            .retain(|run| still_waiting.contains(run));
        for run in waiting {
            let waited = (now - run.dispatched_at).to_std().unwrap_or_default();
            if waited < self.pending_alert_after || self.alerted_pending.contains(&run.run_id) {
                continue;
            }
            let why = pending::unserved(&self.store, &self.workers.registry(), &run, now)?;
            if let (Some(why), Ok(job_id)) = (why, kairos_core::JobId::parse(&run.job_id)) {
                let alert = Alert::run_pending(job_id, run.run_id, waited, &why, now);
                self.raise(&alert).await?;
                self.alerted_pending.insert(run.run_id);
            }
        }
        Ok(())
    }

    async fn raise(&self, alert: &Alert) -> anyhow::Result<()> {
        tracing::warn!(job_id = %alert.job_id, kind = alert.kind.as_str(), "{}", alert.message);
        let bytes = codec::encode_alert(alert)?;
        self.producer
            .send(&self.topics.alerts(), alert.job_id.as_str(), Some(&bytes))
            .await?;
        metrics::counter!(m::ALERTS, "kind" => alert.kind.as_str()).increment(1);
        Ok(())
    }
}

fn record_outcome(state: &RunState, before: Option<&RunState>) {
    let became_final = state.status.is_final() && before.is_none_or(|b| !b.status.is_final());
    if !became_final {
        return;
    }
    metrics::counter!(m::RUNS, "outcome" => state.status.as_str()).increment(1);
    if let (Some(started), Some(finished)) = (state.started_at, state.finished_at) {
        let seconds = (finished - started)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        metrics::histogram!(m::RUN_DURATION, "outcome" => state.status.as_str()).record(seconds);
    }
}

/// Reads for the API, shared with tests.
pub(crate) fn runs_of_job(store: &Store, job: &str, limit: usize) -> anyhow::Result<Vec<RunState>> {
    let keys: Vec<(String, ())> = store.scan_rev(&format!("jobrun/{job}/"), limit)?;
    let mut runs = Vec::with_capacity(keys.len());
    for (key, ()) in keys {
        if let Some(run) = key.rsplit('/').next() {
            if let Some(record) = store.get::<RunRecord>(&run_key(run))? {
                runs.push(record.state);
            }
        }
    }
    Ok(runs)
}

//! The result-aggregator: read models of the run ledger, served as a REST API.
//!
//! It consumes `jobs` and `runs` into RocksDB: jobs by id, each run's state (folded with
//! `kairos_core::apply`) and its full event history including duplicates and stale events, and an
//! index of runs by job in slot order. It never decides anything; it answers "what happened?".

mod access;
mod alerts;
mod audit;
mod http;
mod metrics_names;
mod read_model;
mod workers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kairos_core::outcomes::{streak_after, Streak};
use kairos_core::run::{apply, RunEvent, RunEventKind, RunId, RunState, SkipReason, TriggerKind};
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::codec::{self, Alert, AlertKind, JobStatus};
use kairos_runtime::jobs::AUTHOR_HEADER;
use kairos_runtime::kafka::{check_co_partitioning, ReliableProducer, ServiceKind};
use kairos_runtime::record_loop::{
    Decoded, Folded, InputKind, Live, Reading, Record, StatefulService,
};
use kairos_runtime::telemetry::TlsFiles;
use kairos_runtime::workers::Liveness;
use kairos_runtime::{record_header, record_key, record_time, Batch, KafkaArgs, Store, Topics};
use kairos_runtime::{ServiceArgs, ServiceParts, ServiceSpec, StoreArgs};
use rdkafka::message::{Message, OwnedMessage};

use crate::alerts::Alerts;
use crate::audit::Audit;
use crate::metrics_names as m;
use crate::read_model::unfinished::{self, PendingRun};
use crate::read_model::{
    job_changes_key, job_key, job_run_key, job_stats_key, run_key, slot_key, HistoryEntry,
    JobChange, JobRecord, JobStats, RunRecord,
};
use crate::workers::Workers;

/// History entries kept per run; a run that loops through more retries keeps its latest ones.
const MAX_HISTORY: usize = 200;
/// Changes of a job's definition kept in its read model.
const MAX_JOB_CHANGES: usize = 20;

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "kairos-aggregator",
    version,
    about = "Read models of the run ledger and the REST API.",
    mut_arg("metrics_addr", |a| a.default_value("127.0.0.1:9404")),
    mut_arg("data_dir", |a| a.default_value(".kairos/data/aggregator")),
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where the REST API listens.
    #[arg(long, env = "KAIROS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// How long a dispatched run may wait while no live worker serves its pool and task type
    /// before a `run_pending` alert is raised.
    #[arg(long, env = "KAIROS_PENDING_ALERT_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub pending_alert_after: Duration,
    /// After how many failed runs in a row (abandoned after their retries) a job raises a
    /// `job_failing` alert; once per streak.
    #[arg(long, env = "KAIROS_ALERT_FAILURES_IN_A_ROW", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub alert_failures_in_a_row: u32,
    /// How long after a slot's fire time the fire audit waits for its decision on the ledger,
    /// and after a run's next step was due for it to be recorded, before raising `slot_missed` or
    /// `run_stuck`. Longer than a trigger or dispatcher failover (the consumer session timeout
    /// and a rebuild) and than the dispatcher's `--deadline-margin` over its default.
    #[arg(long, env = "KAIROS_AUDIT_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub audit_grace: Duration,
    /// Where alerts are also POSTed as JSON, with retries; the alerts topic always has them.
    #[arg(long, env = "KAIROS_ALERT_WEBHOOK")]
    pub alert_webhook: Option<url::Url>,
    /// A bearer token with every right (role `admin`, named `api-token`). With any token
    /// configured, every endpoint but `/healthz` and the OpenAPI document needs one; without
    /// any, the API is open to anyone who can reach its address (which is why it binds
    /// 127.0.0.1 by default).
    #[arg(long, env = "KAIROS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// A YAML file of named tokens with roles (`read`, `operate`, `admin`), stored as SHA-256
    /// digests: `tokens: [{name: grafana, role: read, sha256: <hex>}]`. The name is the author
    /// of every change made with the token.
    #[arg(long, env = "KAIROS_API_TOKENS")]
    pub api_tokens: Option<PathBuf>,
    /// The private key (PKCS#8 PEM, `kairosctl keys generate`) that signs the job definitions
    /// written through the API; workers run only definitions signed by a key they trust.
    #[arg(long, env = "KAIROS_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Serve the API over TLS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, env = "KAIROS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "KAIROS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl Config {
    pub fn new(
        kafka: KafkaArgs,
        data_dir: PathBuf,
        metrics_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> Self {
        Config {
            service: ServiceArgs::new(kafka, metrics_addr),
            store: StoreArgs { data_dir },
            http_addr,
            pending_alert_after: Duration::from_secs(60),
            alert_failures_in_a_row: 3,
            audit_grace: Duration::from_secs(60),
            alert_webhook: None,
            api_token: None,
            api_tokens: None,
            signing_key: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Runs the aggregator until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let access = access::Access::load(config.api_tokens.as_deref(), config.api_token.as_deref())?;
    if access.is_open() {
        tracing::warn!(http_addr = %config.http_addr, "No API token: anyone who can reach the API may read, define and delete jobs.");
    }
    let topics = config.service.kafka.topics();
    check_co_partitioning(&config.service.kafka, &[topics.jobs(), topics.runs()])?;
    check_co_partitioning(&config.service.kafka, &[topics.heartbeats()])?;
    let (group, inputs) = topics.consumes(&ServiceKind::Aggregator);
    let store = config.store.open()?;
    unfinished::retire_old_index(&store)?;
    let audit = Audit::load(&store, config.audit_grace, kairos_runtime::now())?;
    let spec = ServiceSpec {
        name: "aggregator",
        args: &config.service,
        group,
        inputs: &inputs,
        store: Some(store.clone()),
    };
    let mut parts = ServiceParts::start(spec, shutdown).await?;
    m::register();
    let workers = Workers::default();
    let alerts = Alerts::new(
        parts.producer.clone(),
        topics.alerts(),
        config.alert_webhook.clone(),
        parts.shutdown.clone(),
    );
    let signing_key = config
        .signing_key
        .as_deref()
        .map(kairos_runtime::keys::load_signing_key)
        .transpose()?;
    if signing_key.is_none() {
        tracing::warn!("No --signing-key: job definitions written through the API are unsigned, and workers that require signatures will not run them.");
    }
    let writer = http::Writer::new(config.service.kafka.clone(), signing_key);
    let router = http::api::router(http::ApiState {
        store: store.clone(),
        health: parts.health.clone(),
        workers: workers.clone(),
        alerts: alerts.clone(),
        writer,
        access: Arc::new(access),
        audit_grace: config.audit_grace,
    });
    let tls = config
        .tls_cert
        .clone()
        .zip(config.tls_key.clone())
        .map(|(cert, key)| TlsFiles { cert, key });
    parts
        .ops
        .serve(config.http_addr, router, tls.as_ref())
        .await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(http_addr = %config.http_addr, scheme, "REST API listening.");
    audit.probe(
        parts.consumer.watermark_reader(),
        topics.runs(),
        parts.shutdown.clone(),
    );
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut aggregator = Aggregator {
        topics,
        store: store.clone(),
        producer: parts.producer.clone(),
        workers,
        alerts,
        check,
        pending_alert_after: config.pending_alert_after,
        failures_in_a_row: config.alert_failures_in_a_row,
        alerted: Alerted::default(),
        audit,
        folded: Outcome::default(),
    };
    parts.run(&mut aggregator, &store).await
}

struct Aggregator {
    topics: Topics,
    /// The worker registry, a live view rebuilt from the compacted heartbeats topic on start.
    workers: Workers,
    store: Store,
    /// Alerts and job statuses are produced through it.
    producer: ReliableProducer,
    alerts: Alerts,
    /// When to look at pending runs, the workers and the fire audit.
    check: tokio::time::Interval,
    pending_alert_after: Duration,
    failures_in_a_row: u32,
    alerted: Alerted,
    audit: Audit,
    /// What the records being folded call for, sent before their batch is written.
    folded: Outcome,
}

impl StatefulService for Aggregator {
    type Wake = ();
    /// The checks first: a busy ledger would otherwise hold back alerts and the audit.
    const WAKE_FIRST: bool = true;

    fn reads(&self, kind: InputKind) -> Reading {
        match kind {
            // The trigger dead-letters definitions that do not decode; a dead letter that does
            // not decode is only logged.
            InputKind::Jobs | InputKind::DeadLetters => Reading::Shared,
            InputKind::Heartbeats => Reading::InMemory,
            _ => Reading::Owned,
        }
    }

    fn fold(&mut self, record: Record<'_>, batch: &mut Batch) -> anyhow::Result<Folded> {
        let Record {
            message,
            value,
            live,
        } = record;
        match value {
            Decoded::Heartbeat(beat) => self.workers.record(beat),
            Decoded::DeadLetter(letter) if live => {
                let job_id = record_key(message).and_then(|k| kairos_core::JobId::parse(&k).ok());
                let alert = Alert::dead_lettered(&letter, job_id, kairos_runtime::now());
                self.folded.alerts.push(alert);
            }
            Decoded::Definition(definition) => {
                self.apply_definition(message, definition.id.to_string(), Some(*definition), batch)
            }
            Decoded::JobDeleted(job) => self.apply_definition(message, job, None, batch),
            Decoded::Event(event) => {
                let outcome = self.apply_event(message, &event, batch, live)?;
                // History replayed by a rebuild is neither counted nor alerted again.
                if live {
                    self.folded.alerts.extend(outcome.alerts);
                    if let Some(status) = outcome.status {
                        self.folded
                            .statuses
                            .insert(status.job_id.to_string(), status);
                    }
                }
            }
            _ => {}
        }
        Ok(Folded::Unchanged)
    }

    /// Raises the alerts and publishes the job statuses the records call for: alerts with the
    /// same ids after a crash; the status topic is compacted.
    async fn send_folded(&mut self) -> anyhow::Result<()> {
        let Outcome { alerts, statuses } = std::mem::take(&mut self.folded);
        for alert in alerts {
            self.raise(alert).await?;
        }
        futures::future::try_join_all(statuses.values().map(|s| self.publish_status(s))).await?;
        Ok(())
    }

    async fn woken(&mut self) -> anyhow::Result<()> {
        self.check.tick().await;
        Ok(())
    }

    async fn wake(&mut self, (): (), live: &Live) -> anyhow::Result<()> {
        self.check(live).await
    }
}

/// Conditions already alerted about, kept in memory: after a restart a condition that still holds
/// is alerted once more, with the same alert id.
#[derive(Default)]
struct Alerted {
    pending: HashSet<RunId>,
    /// Lost workers, with the last beat their loss was alerted for.
    lost: HashMap<String, Timestamp>,
    /// Pools without a live worker.
    unserved_pools: HashSet<String>,
    /// The decision time of the last misfire alerted per job.
    misfires: HashMap<String, Timestamp>,
}

/// What folding ledger events calls for, once their partition is live.
#[derive(Default)]
struct Outcome {
    alerts: Vec<Alert>,
    /// The latest status of each job whose runs' outcomes changed it: one record each.
    statuses: BTreeMap<String, JobStatus>,
}

/// What folding one ledger event calls for.
#[derive(Default)]
struct EventOutcome {
    alerts: Vec<Alert>,
    /// The job's status, when a run's outcome changed it.
    status: Option<JobStatus>,
}

/// The least time between two misfire alerts of one job.
const MISFIRE_QUIET: Duration = Duration::from_secs(600);

/// How often the aggregator looks at pending runs and at the workers.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Aggregator {
    /// Definitions that do not decode are the trigger's to dead-letter; here they are skipped.
    fn apply_definition(
        &mut self,
        message: &OwnedMessage,
        key: String,
        definition: Option<JobDefinition>,
        batch: &mut Batch,
    ) {
        match definition {
            None => {
                batch.delete(&job_key(&key));
                batch.delete(&job_changes_key(&key));
                self.audit.forget(&key, batch);
            }
            Some(definition) => {
                let before: Option<JobRecord> =
                    batch.get(&self.store, &job_key(&key)).ok().flatten();
                let author = record_header(message, AUTHOR_HEADER);
                let change = match &before {
                    None => "created",
                    Some(b) if !b.definition.paused && definition.paused => "paused",
                    Some(b) if b.definition.paused && !definition.paused => "resumed",
                    Some(_) => "updated",
                };
                let mut changes: Vec<JobChange> = batch
                    .get(&self.store, &job_changes_key(&key))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                changes.push(JobChange {
                    change: change.to_string(),
                    offset: message.offset(),
                    at: record_time(message),
                    author: author.clone(),
                });
                keep_latest(&mut changes, MAX_JOB_CHANGES);
                batch.put(&job_changes_key(&key), &changes);
                let record = JobRecord {
                    definition,
                    offset: message.offset(),
                    updated_at: record_time(message),
                    partition: Some(message.partition()),
                    author,
                };
                batch.put(&job_key(&key), &record);
                self.audit.define(&key, &record);
            }
        }
    }

    /// Folds one ledger event into its run's read model and its job's statistics; returns the
    /// alerts it raises.
    fn apply_event(
        &mut self,
        message: &OwnedMessage,
        event: &RunEvent,
        batch: &mut Batch,
        live: bool,
    ) -> anyhow::Result<EventOutcome> {
        let run = event.run_id.to_string();
        let current: Option<RunRecord> = batch.get(&self.store, &run_key(&run))?;
        let folded = apply(current.as_ref().map(|r| &r.state), event);
        let entry = |effect: String| HistoryEntry {
            event: event.kind.name().to_string(),
            at: event.at,
            attempt: event.kind.attempt(),
            offset: message.offset(),
            effect,
            facts: event.kind.facts(),
            stored_summary: None,
        };
        let mut alerts = vec![];
        let mut status = None;
        let mut record = match (folded, current) {
            (Ok(state), current) => {
                if live {
                    count(&event.kind, &state, current.as_ref().map(|r| &r.state));
                }
                if let RunEventKind::RunSkipped {
                    reason: SkipReason::Misfire,
                } = event.kind
                {
                    alerts.push(Alert::misfire(
                        state.job_id.clone(),
                        state.run_id,
                        state.scheduled_for,
                        event.at,
                    ));
                }
                if current.is_none() {
                    if let RunEventKind::RunScheduled {
                        trigger: TriggerKind::Schedule,
                        ..
                    } = event.kind
                    {
                        let key = job_stats_key(state.job_id.as_str());
                        let mut stats: JobStats = batch.get(&self.store, &key)?.unwrap_or_default();
                        stats.scheduled += 1;
                        batch.put(&key, &stats);
                    }
                }
                let became_final = state.status.is_final()
                    && current.as_ref().is_none_or(|r| !r.state.status.is_final());
                if became_final {
                    let (raised, latest) = self.finished(&state, batch)?;
                    alerts.extend(raised);
                    status = latest;
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
                return Ok(EventOutcome::default());
            }
        };
        keep_latest(&mut record.history, MAX_HISTORY);
        batch.put(
            &job_run_key(event.job_id.as_str(), event.scheduled_for, &run),
            &(),
        );
        batch.put(&slot_key(event.scheduled_for, &run), &());
        unfinished::track(batch, message.partition(), &record.state);
        batch.put(&run_key(&run), &record);
        Ok(EventOutcome { alerts, status })
    }

    /// Updates the job's statistics with a run that is over; returns the alerts its outcome
    /// raises (the run abandoned, the job failing too often in a row) and, when the outcome says
    /// whether the job works, the job's new status.
    fn finished(
        &self,
        state: &RunState,
        batch: &mut Batch,
    ) -> anyhow::Result<(Vec<Alert>, Option<JobStatus>)> {
        let key = job_stats_key(state.job_id.as_str());
        let mut stats: JobStats = batch.get(&self.store, &key)?.unwrap_or_default();
        let mut alerts = vec![];
        // Skipped and cancelled runs say nothing about whether the job works.
        let Some(streak) = streak_after(
            stats.failures_in_a_row,
            state.status,
            self.failures_in_a_row,
        ) else {
            return Ok((alerts, None));
        };
        match streak {
            Streak::Ended => {
                stats.succeeded += 1;
                stats.failures_in_a_row = 0;
            }
            Streak::Extended {
                failures_in_a_row,
                alert,
            } => {
                stats.abandoned += 1;
                stats.failures_in_a_row = failures_in_a_row;
                let at = state.finished_at.unwrap_or(state.scheduled_for);
                alerts.push(if state.refused.is_some() {
                    Alert::task_refused(
                        state.job_id.clone(),
                        state.run_id,
                        state.worker_id.as_deref(),
                        state.pool.as_deref(),
                        state.error.as_deref(),
                        at,
                    )
                } else {
                    Alert::run_abandoned(
                        state.job_id.clone(),
                        state.run_id,
                        state.attempt,
                        state.error.as_deref(),
                        at,
                    )
                });
                if alert {
                    alerts.push(Alert::job_failing(
                        state.job_id.clone(),
                        state.run_id,
                        failures_in_a_row,
                        at,
                    ));
                }
            }
        }
        stats.last_outcome = Some(state.status.as_str().to_string());
        stats.last_finished_at = state.finished_at;
        batch.put(&key, &stats);
        let status = JobStatus {
            job_id: state.job_id.clone(),
            last_run_id: state.run_id,
            last_status: state.status.as_str().to_string(),
            last_scheduled_for: state.scheduled_for,
            last_finished_at: state.finished_at,
            scheduled: u64::from(stats.scheduled),
            succeeded: stats.succeeded,
            abandoned: stats.abandoned,
            failures_in_a_row: stats.failures_in_a_row,
        };
        Ok((alerts, Some(status)))
    }

    /// Puts the job's latest status on the compacted job-status topic.
    async fn publish_status(&self, status: &JobStatus) -> anyhow::Result<()> {
        let bytes = codec::encode_job_status(status)?;
        self.producer
            .send(
                &self.topics.job_status(),
                status.job_id.as_str(),
                Some(&bytes),
            )
            .await?;
        Ok(())
    }

    /// The periodic checks, once caught up (a rebuilding view would see stale dispatches): runs
    /// waiting on a pool nobody serves, lost workers, pools without workers, and the fire audit.
    async fn check(&mut self, live: &Live) -> anyhow::Result<()> {
        let now = kairos_runtime::now();
        self.export_live_workers(now);
        if !live.ready {
            return Ok(());
        }
        let waiting = unfinished::pending(&self.store)?;
        self.alert_pending(&waiting, now).await?;
        self.alert_workers(&waiting, now).await?;
        self.audit(live).await
    }

    /// A pass of the fire audit: its alerts go out before its cursors are stored, so that a crash
    /// in between repeats them (with the same ids) rather than losing them.
    async fn audit(&mut self, live: &Live) -> anyhow::Result<()> {
        let findings = self.audit.pass(&self.store, live, &self.topics.runs())?;
        for alert in findings.alerts {
            self.raise(alert).await?;
        }
        self.store.write(findings.batch)?;
        Ok(())
    }

    /// Raises `run_pending` for each run that has waited past the threshold on a pool that no
    /// live worker serves.
    async fn alert_pending(
        &mut self,
        waiting: &[PendingRun],
        now: Timestamp,
    ) -> anyhow::Result<()> {
        let still_waiting: HashSet<RunId> = waiting.iter().map(|p| p.run_id).collect();
        self.alerted
            .pending
            .retain(|run| still_waiting.contains(run));
        for run in waiting {
            let waited = (now - run.dispatched_at).to_std().unwrap_or_default();
            if waited < self.pending_alert_after || self.alerted.pending.contains(&run.run_id) {
                continue;
            }
            let why = unfinished::unserved(&self.store, &self.workers.registry(), run, now)?;
            if let (Some(why), Ok(job_id)) = (why, kairos_core::JobId::parse(&run.job_id)) {
                let alert = Alert::run_pending(job_id, run.run_id, waited, &why, now);
                self.raise(alert).await?;
                self.alerted.pending.insert(run.run_id);
            }
        }
        Ok(())
    }

    /// Raises `worker_lost` once per loss (a worker heard from again and lost again is a new
    /// loss), and `pool_without_workers` when a pool that had workers, or that runs wait on, has
    /// no live one.
    async fn alert_workers(
        &mut self,
        waiting: &[PendingRun],
        now: Timestamp,
    ) -> anyhow::Result<()> {
        let mut alerts = vec![];
        let mut pools: HashMap<String, (bool, Option<Timestamp>)> = HashMap::new();
        {
            let registry = self.workers.registry();
            for (beat, liveness) in registry.workers(now) {
                let pool = pools.entry(beat.pool.clone()).or_default();
                pool.0 |= liveness == Liveness::Live;
                pool.1 = pool.1.max(Some(beat.at));
                if liveness == Liveness::Lost
                    && self.alerted.lost.get(&beat.worker_id) != Some(&beat.at)
                {
                    self.alerted.lost.insert(beat.worker_id.clone(), beat.at);
                    alerts.push(Alert::worker_lost(
                        &beat.worker_id,
                        &beat.pool,
                        beat.at,
                        now,
                    ));
                }
            }
        }
        for run in waiting {
            pools.entry(run.pool.clone()).or_default();
        }
        for (pool, (served, last_seen)) in pools {
            if served {
                self.alerted.unserved_pools.remove(&pool);
            } else if self.alerted.unserved_pools.insert(pool.clone()) {
                let why = match last_seen {
                    Some(_) => "every worker it had is lost or stopped",
                    None => "runs wait on it and no worker has ever served it",
                };
                let since = last_seen.unwrap_or_default();
                alerts.push(Alert::pool_without_workers(&pool, why, since, now));
            }
        }
        for alert in alerts {
            self.raise(alert).await?;
        }
        Ok(())
    }

    fn export_live_workers(&self, now: Timestamp) {
        let mut live: HashMap<String, u32> = HashMap::new();
        for (beat, liveness) in self.workers.registry().workers(now) {
            let count = live.entry(beat.pool.clone()).or_default();
            if liveness == Liveness::Live {
                *count += 1;
            }
        }
        for (pool, count) in live {
            metrics::gauge!(m::LIVE_WORKERS, "pool" => pool).set(count as f64);
        }
    }

    /// Raises an alert, except a misfire of a job alerted less than [`MISFIRE_QUIET`] before:
    /// a long outage is worked off in many catch-up passes, each skipping up to a thousand slots.
    async fn raise(&mut self, alert: Alert) -> anyhow::Result<()> {
        if alert.kind == AlertKind::Misfire {
            let job = alert.key().to_string();
            let quiet = chrono::Duration::from_std(MISFIRE_QUIET).unwrap_or_default();
            if self
                .alerted
                .misfires
                .get(&job)
                .is_some_and(|last| alert.at - *last < quiet)
            {
                return Ok(());
            }
            self.alerted.misfires.insert(job, alert.at);
        }
        self.alerts.raise(&alert).await
    }
}

/// Drops the oldest entries of a bounded list (a run's history, an audit's findings) beyond `max`.
fn keep_latest<T>(entries: &mut Vec<T>, max: usize) {
    let excess = entries.len().saturating_sub(max);
    entries.drain(..excess);
}

/// Counts what an applied event says happened.
fn count(kind: &RunEventKind, state: &RunState, before: Option<&RunState>) {
    match kind {
        RunEventKind::RunSkipped { reason } => {
            metrics::counter!(m::SKIPS, "reason" => reason.as_str()).increment(1);
        }
        RunEventKind::RetryScheduled { .. } => metrics::counter!(m::RETRIES).increment(1),
        RunEventKind::RunTimedOut { .. } => metrics::counter!(m::TIMEOUTS).increment(1),
        _ => {}
    }
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

//! The continuous fire audit: for every enabled job, each due slot has a decision on the ledger
//! (`RunScheduled`, or `RunSkipped` with its reason) within a grace period after its fire time,
//! and each run that is not over has its next step recorded within the grace period after it was
//! due. A gap raises `slot_missed` or `run_stuck`, is counted, and is kept with the job for
//! `GET /api/v1/jobs/{id}/audit` and `kairosctl job explain`.
//!
//! The rules (which slots, due by when) are `kairos_core::audit`'s, on the trigger's own schedule
//! functions. What this module adds is when a judgement is sound: a slot is judged only once the
//! aggregator has applied its runs partition up to a high watermark read from the broker after
//! the slot's deadline, so an aggregator that lags or rebuilds never takes a decision it has not
//! read yet for a missing one. A partition this aggregator does not own, or is still rebuilding,
//! is not judged at all. The watermarks are read by a task of their own: a broker that does not
//! answer holds up the audit, never the record loop.
//!
//! Each job's cursor (`local/audit/<job>`) is progress, not a fold of the topics: a restart goes
//! on from it, covering the time the aggregator was down; a rebuild from an empty store starts
//! afresh from the moment it has caught up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_core::audit::{next_step_due, slots_counted_from, slots_to_check};
use kairos_core::decide::{fire_time, DEFAULT_DEADLINE_MARGIN};
use kairos_core::run::{RunId, RunStatus};
use kairos_core::views::{MissedSlot, StuckRun};
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::codec::{Alert, AlertKind};
use kairos_runtime::kafka::WatermarkReader;
use kairos_runtime::record_loop::Live;
use kairos_runtime::{Batch, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics_names as m;
use crate::read_model::{self as model, audit_key, unfinished, JobRecord};

/// How often the audit reads the ends of the runs partitions, and so how often it judges.
const AUDIT_INTERVAL: Duration = Duration::from_secs(5);
/// The most slots of one job a pass checks: a long gap is worked off over several passes.
const MAX_SLOTS_PER_PASS: usize = 1000;
/// Findings kept per job, newest last.
const MAX_FINDINGS: usize = 20;

/// What the audit keeps of a job.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct JobAudit {
    /// The schedule the cursor belongs to: a new schedule is checked from when it was written.
    pub schedule: String,
    /// The last slot checked.
    pub checked_through: Option<Timestamp>,
    #[serde(default)]
    pub missed: Vec<MissedSlot>,
    #[serde(default)]
    pub stuck: Vec<StuckRun>,
}

impl JobAudit {
    /// What the audit keeps of the job; empty for a job it never checked.
    pub(crate) fn of(store: &Store, job: &str) -> anyhow::Result<JobAudit> {
        Ok(store.get(&audit_key(job))?.unwrap_or_default())
    }
}

/// A job the audit checks: where its runs are, and its validated definition.
struct AuditedJob {
    partition: i32,
    definition: JobDefinition,
    written_at: Timestamp,
}

/// At `taken_at`, the runs partition ended before `high`: once the aggregator has applied it up to
/// there, every decision recorded before `taken_at` is in its store.
#[derive(Clone, Copy)]
struct Barrier {
    taken_at: Timestamp,
    high: i64,
}

/// What one pass found: alerts to raise, then cursors and findings to store.
#[derive(Default)]
pub(crate) struct Findings {
    pub alerts: Vec<Alert>,
    pub batch: Batch,
}

pub(crate) struct Audit {
    grace: Duration,
    jobs: HashMap<String, AuditedJob>,
    /// The latest barrier of each probed partition, kept by the prober task.
    barriers: Arc<Mutex<HashMap<i32, Barrier>>>,
    /// The partitions the prober reads: those owned and caught up.
    probed: Arc<Mutex<Vec<i32>>>,
    /// The moment up to which each partition was last judged.
    judged_until: HashMap<i32, Timestamp>,
    /// Runs already alerted as stuck, per partition, in the state they were stuck in.
    stuck_alerted: HashMap<i32, HashSet<(RunId, u32, RunStatus)>>,
    /// Where a job never audited by this store starts: not before this aggregator began.
    started_at: Timestamp,
}

impl Audit {
    /// The audit of the jobs already in the store; definitions applied later update it.
    pub(crate) fn load(store: &Store, grace: Duration, now: Timestamp) -> anyhow::Result<Self> {
        let mut audit = Audit {
            grace,
            jobs: HashMap::new(),
            barriers: Arc::default(),
            probed: Arc::default(),
            judged_until: HashMap::new(),
            stuck_alerted: HashMap::new(),
            started_at: now,
        };
        for (job, record) in model::jobs(store)? {
            audit.define(&job, &record);
        }
        Ok(audit)
    }

    /// Checks the job as now defined. A definition stored by a release that did not record its
    /// partition is not checked until it is written again.
    pub(crate) fn define(&mut self, job: &str, record: &JobRecord) {
        let Some(partition) = record.partition else {
            self.jobs.remove(job);
            return;
        };
        let written_at = record.updated_at.unwrap_or(self.started_at);
        self.jobs.insert(
            job.to_string(),
            AuditedJob {
                partition,
                definition: record.definition.clone(),
                written_at,
            },
        );
    }

    /// Stops checking a deleted job, and forgets its cursor: a job created again under its id
    /// is checked from when it is written.
    pub(crate) fn forget(&mut self, job: &str, batch: &mut Batch) {
        self.jobs.remove(job);
        batch.delete(&audit_key(job));
    }

    /// Starts the task that reads, every [`AUDIT_INTERVAL`], where each probed runs partition
    /// ends, until `shutdown`.
    pub(crate) fn probe(
        &self,
        reader: WatermarkReader,
        runs_topic: String,
        shutdown: CancellationToken,
    ) {
        let (barriers, probed) = (self.barriers.clone(), self.probed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AUDIT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let partitions = probed.lock().expect("audit lock").clone();
                let mut read = HashMap::new();
                for partition in partitions {
                    let taken_at = kairos_runtime::now();
                    match reader.high(&runs_topic, partition).await {
                        Ok(high) => {
                            read.insert(partition, Barrier { taken_at, high });
                        }
                        Err(error) => {
                            tracing::debug!(%error, partition, "Reading where the runs partition ends failed; its audit waits.");
                        }
                    }
                }
                *barriers.lock().expect("audit lock") = read;
            }
        });
    }

    /// Judges each owned, caught-up partition that the aggregator has applied up to a barrier
    /// newer than its last judgement.
    pub(crate) fn pass(
        &mut self,
        store: &Store,
        live: &Live,
        runs_topic: &str,
    ) -> anyhow::Result<Findings> {
        let mut findings = Findings::default();
        let live: Vec<i32> = live.partitions().collect();
        self.judged_until.retain(|p, _| live.contains(p));
        self.stuck_alerted.retain(|p, _| live.contains(p));
        *self.probed.lock().expect("audit lock") = live.clone();
        let barriers = self.barriers.lock().expect("audit lock").clone();
        for &partition in &live {
            let Some(barrier) = barriers.get(&partition) else {
                continue;
            };
            let judged = self.judged_until.get(&partition);
            if judged.is_some_and(|until| *until >= barrier.taken_at) {
                continue;
            }
            let applied = store.next_offset(runs_topic, partition)?.unwrap_or(0);
            if applied >= barrier.high {
                self.judge(partition, barrier.taken_at, store, &mut findings)?;
                self.judged_until.insert(partition, barrier.taken_at);
            }
        }
        let now = kairos_runtime::now();
        let behind = live
            .iter()
            .map(|p| self.judged_until.get(p).copied().unwrap_or(self.started_at))
            .map(|until| (now - until).to_std().unwrap_or_default().as_secs_f64())
            .fold(0.0, f64::max);
        metrics::gauge!(m::AUDIT_BEHIND).set(behind);
        Ok(findings)
    }

    /// Judges a partition's jobs and unfinished runs as of `until`, a moment all of whose records
    /// the store holds.
    fn judge(
        &mut self,
        partition: i32,
        until: Timestamp,
        store: &Store,
        findings: &mut Findings,
    ) -> anyhow::Result<()> {
        let grace = chrono::Duration::from_std(self.grace).unwrap_or_default();
        let mut stuck: HashMap<String, Vec<StuckRun>> = HashMap::new();
        let alerted = self.stuck_alerted.entry(partition).or_default();
        let mut still_stuck = HashSet::new();
        for run in unfinished::of_partition(store, partition)? {
            let definition = self.jobs.get(run.job_id.as_str()).map(|j| &j.definition);
            let Some(due) = next_step_due(&run, definition, DEFAULT_DEADLINE_MARGIN) else {
                continue;
            };
            let due_by = due + grace;
            let state = (run.run_id, run.attempt, run.status);
            if due_by > until {
                continue;
            }
            still_stuck.insert(state);
            if alerted.contains(&state) {
                continue;
            }
            let status = run.status.as_str();
            findings.alerts.push(Alert::run_stuck(
                run.job_id.clone(),
                run.run_id,
                status,
                run.attempt,
                due_by,
                until,
            ));
            metrics::counter!(m::AUDIT_FINDINGS, "kind" => AlertKind::RunStuck.as_str())
                .increment(1);
            stuck
                .entry(run.job_id.to_string())
                .or_default()
                .push(StuckRun {
                    run_id: run.run_id,
                    status: status.to_string(),
                    attempt: run.attempt,
                    due_by,
                    found_at: until,
                });
        }
        *alerted = still_stuck;

        for (id, job) in self.jobs.iter().filter(|(_, j)| j.partition == partition) {
            let key = audit_key(id);
            let previous: Option<JobAudit> = store.get(&key)?;
            let schedule = job.definition.schedule_key();
            let last = previous
                .as_ref()
                .and_then(|a| Some((a.schedule.as_str(), a.checked_through?)));
            // A job this store never audited is checked from when this aggregator began, not
            // from slots whose ledger may be gone.
            let written_at = match last {
                Some(_) => job.written_at,
                None => job.written_at.max(self.started_at),
            };
            let from = slots_counted_from(last, &schedule, written_at);
            let stats = model::job_stats(store, id)?;
            let check = slots_to_check(
                &job.definition,
                from,
                until,
                self.grace,
                stats.scheduled,
                MAX_SLOTS_PER_PASS,
            );
            metrics::counter!(m::AUDIT_SLOTS_CHECKED).increment(check.owed.len() as u64);
            let mut audit = previous.clone().unwrap_or_default();
            for (slot, run_id) in check.owed {
                if model::has_run(store, &run_id.to_string())? {
                    continue;
                }
                let due_by = fire_time(&job.definition, slot) + grace;
                findings.alerts.push(Alert::slot_missed(
                    job.definition.id.clone(),
                    run_id,
                    slot,
                    due_by,
                    until,
                ));
                metrics::counter!(m::AUDIT_FINDINGS, "kind" => AlertKind::SlotMissed.as_str())
                    .increment(1);
                audit.missed.push(MissedSlot {
                    slot,
                    run_id,
                    due_by,
                    found_at: until,
                });
            }
            audit.stuck.extend(stuck.remove(id).unwrap_or_default());
            crate::keep_latest(&mut audit.missed, MAX_FINDINGS);
            crate::keep_latest(&mut audit.stuck, MAX_FINDINGS);
            audit.schedule = schedule;
            audit.checked_through = Some(check.checked_through);
            if previous.as_ref() != Some(&audit) {
                findings.batch.put(&key, &audit);
            }
        }
        Ok(())
    }
}

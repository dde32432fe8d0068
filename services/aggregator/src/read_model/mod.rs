//! The aggregator's store, its one owner: every key it writes and every query the API, the
//! status page, the pending-run check and the fire audit make. Nothing outside this module spells
//! a key.
//!
//! - `job/<job>`: the job's latest definition ([`JobRecord`]); `local/jobchanges/<job>`: its
//!   latest changes; `jobstats/<job>`: its outcome counts ([`JobStats`]).
//! - `run/<run>`: a run's state and history ([`RunRecord`]).
//! - `slot/<slot millis>/<run>` and `jobrun/<job>/<slot millis>/<run>`: runs in slot order, of
//!   all jobs and of one ([`RunIndex`]).
//! - `unfinished/<partition>/<run>`: runs not over ([`unfinished`]).
//! - `local/audit/<job>`: the fire audit's cursor and findings.

pub(crate) mod unfinished;

use kairos_core::history::{self, EventFacts};
use kairos_core::job::stored;
use kairos_core::run::RunState;
pub(crate) use kairos_core::views::{JobChange, JobStats};
use kairos_core::JobDefinition;
use kairos_core::Timestamp;
use kairos_runtime::store::StoreError;
use kairos_runtime::store::LOCAL_PREFIX;
use kairos_runtime::Store;
use serde::{Deserialize, Serialize};

/// What a read of the store gives.
type Result<T> = std::result::Result<T, StoreError>;

/// A job's latest definition, validated when it was read from the jobs topic and kept so
/// ([`stored`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct JobRecord {
    #[serde(rename = "spec", with = "stored")]
    pub definition: JobDefinition,
    pub offset: i64,
    pub updated_at: Option<Timestamp>,
    /// The partition of the job's records (absent in stores of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Who wrote the current definition (its record's author header), if the writer said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// Where a job's latest changes are kept.
pub(crate) fn job_changes_key(job: &str) -> String {
    format!("{LOCAL_PREFIX}jobchanges/{job}")
}

/// One ledger event of a run, and what it did to the run, as stored; served as
/// [`kairos_core::history::HistoryEntry`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct HistoryEntry {
    pub event: String,
    pub at: Timestamp,
    pub attempt: Option<u32>,
    pub offset: i64,
    /// `applied`, or why it changed nothing (a duplicate, a stale attempt, ...).
    pub effect: String,
    /// What the event says beyond its type.
    #[serde(default)]
    pub facts: EventFacts,
    /// The summary an earlier release stored instead of the facts; never written now.
    #[serde(default, rename = "detail", skip_serializing)]
    pub stored_summary: Option<String>,
}

impl HistoryEntry {
    /// The entry as the API serves it.
    pub(crate) fn public(self) -> history::HistoryEntry {
        history::HistoryEntry {
            detail: self.facts.summary().or(self.stored_summary),
            event: self.event,
            at: self.at,
            attempt: self.attempt,
            offset: self.offset,
            effect: self.effect,
            facts: self.facts,
        }
    }
}

/// A run's state and how it got there.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct RunRecord {
    #[serde(flatten)]
    pub state: RunState,
    pub history: Vec<HistoryEntry>,
}

const JOB_PREFIX: &str = "job/";
const RUN_PREFIX: &str = "run/";
const SLOT_PREFIX: &str = "slot/";
const JOB_RUN_PREFIX: &str = "jobrun/";

pub(crate) fn job_key(job: &str) -> String {
    format!("{JOB_PREFIX}{job}")
}
pub(crate) fn run_key(run: &str) -> String {
    format!("{RUN_PREFIX}{run}")
}
/// Runs of a job in slot order: `jobrun/<job>/<slot millis, zero-padded>/<run>`.
pub(crate) fn job_run_key(job: &str, slot: Timestamp, run: &str) -> String {
    format!("{JOB_RUN_PREFIX}{job}/{}/{run}", slot_millis(slot))
}
/// All runs in slot order: `slot/<slot millis, zero-padded>/<run>`.
pub(crate) fn slot_key(slot: Timestamp, run: &str) -> String {
    format!("{SLOT_PREFIX}{}/{run}", slot_millis(slot))
}
pub(crate) fn slot_millis(slot: Timestamp) -> String {
    format!("{:015}", slot.timestamp_millis().max(0))
}
pub(crate) fn job_stats_key(job: &str) -> String {
    format!("jobstats/{job}")
}

pub(crate) fn audit_key(job: &str) -> String {
    format!("{LOCAL_PREFIX}audit/{job}")
}

/// An index of runs in slot order.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RunIndex<'a> {
    /// The runs of every job.
    All,
    /// The runs of one job.
    OfJob(&'a str),
}

impl RunIndex<'_> {
    /// The index's keys, each followed by `<slot millis>/<run>`.
    pub(crate) fn prefix(&self) -> String {
        match self {
            RunIndex::All => SLOT_PREFIX.to_string(),
            RunIndex::OfJob(job) => format!("{JOB_RUN_PREFIX}{job}/"),
        }
    }

    /// Visits the index's runs newest slot first, from below `before` (a position within the
    /// index: a slot's millis, or a cursor this function gave), while `visit` returns true;
    /// `visit` gets each run's position and record (none for a run no longer stored).
    pub(crate) fn visit_rev(
        &self,
        store: &Store,
        before: Option<&str>,
        mut visit: impl FnMut(&str, Option<RunRecord>) -> Result<bool>,
    ) -> Result<()> {
        let prefix = self.prefix();
        let before = before.map(|position| format!("{prefix}{position}"));
        store.visit_keys_rev(&prefix, before.as_deref(), |key| {
            let position = &key[prefix.len()..];
            let record = match key.rsplit('/').next() {
                Some(run) => run_record(store, run)?,
                None => None,
            };
            visit(position, record)
        })
    }

    /// The index's newest `limit` runs.
    pub(crate) fn newest(&self, store: &Store, limit: usize) -> Result<Vec<RunState>> {
        let mut runs = Vec::new();
        if limit == 0 {
            return Ok(runs);
        }
        self.visit_rev(store, None, |_, record| {
            runs.extend(record.map(|r| r.state));
            Ok(runs.len() < limit)
        })?;
        Ok(runs)
    }
}

/// Every job's latest definition, by id; one this release cannot read back is left out, and
/// logged.
pub(crate) fn jobs(store: &Store) -> Result<Vec<(String, JobRecord)>> {
    Ok(store
        .scan_readable::<JobRecord>(JOB_PREFIX)?
        .into_iter()
        .filter_map(|(key, job)| Some((key.strip_prefix(JOB_PREFIX)?.to_string(), job)))
        .collect())
}

pub(crate) fn job(store: &Store, job: &str) -> Result<Option<JobRecord>> {
    store.get_readable(&job_key(job))
}

pub(crate) fn job_stats(store: &Store, job: &str) -> Result<JobStats> {
    Ok(store.get(&job_stats_key(job))?.unwrap_or_default())
}

pub(crate) fn job_changes(store: &Store, job: &str) -> Result<Vec<JobChange>> {
    Ok(store.get(&job_changes_key(job))?.unwrap_or_default())
}

pub(crate) fn run_record(store: &Store, run: &str) -> Result<Option<RunRecord>> {
    store.get(&run_key(run))
}

/// Whether the run has a record: whether any event of it was read.
pub(crate) fn has_run(store: &Store, run: &str) -> Result<bool> {
    store.contains(&run_key(run))
}

/// The job's latest `limit` runs, newest slot first.
pub(crate) fn runs_of_job(store: &Store, job: &str, limit: usize) -> Result<Vec<RunState>> {
    RunIndex::OfJob(job).newest(store, limit)
}

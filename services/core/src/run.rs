//! A run's life: its deterministic id, the events on the run ledger, and the fold that turns a
//! run's events into its state.
//!
//! [`apply`] is the only way run state changes, everywhere in Kairos: the dispatcher folds with it
//! to decide, the aggregator folds with it to answer queries, and a rebuild folds with it to
//! recover. It holds no business logic — only which transitions are legal — and never panics.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::EventFacts;
use crate::job::JobId;
use crate::Timestamp;

/// Namespace of Kairos's UUIDv5 run ids; changing it would change every run id ever derived.
const RUN_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("5f1c7f4e-0a53-4b8e-9b0f-6b6169726f73");

/// Deterministic run identity: the same (job, slot, trigger kind) always yields the same id, so a
/// slot fired twice after a crash is recognised as one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(uuid::Uuid);

impl RunId {
    pub fn derive(job_id: &JobId, scheduled_for: Timestamp, trigger: TriggerKind) -> Self {
        let name = format!(
            "{}\u{0}{}\u{0}{}",
            job_id,
            scheduled_for.timestamp_millis(),
            trigger.as_str()
        );
        RunId(uuid::Uuid::new_v5(&RUN_ID_NAMESPACE, name.as_bytes()))
    }

    /// 64 bits of the id, to seed deterministic choices about the run (retry jitter).
    pub fn seed(&self) -> u64 {
        let bits = self.0.as_u128();
        (bits as u64) ^ ((bits >> 64) as u64)
    }

    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::parse_str(s).ok().map(RunId)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Why a run exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// A slot of the job's schedule.
    Schedule,
    /// An operator asked for a run now.
    Manual,
    /// An operator asked for the slots of a past range.
    Backfill,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Schedule => "schedule",
            TriggerKind::Manual => "manual",
            TriggerKind::Backfill => "backfill",
        }
    }
}

/// Why a run was not executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The slot was missed (nobody owned the job when it was due) and a later slot superseded it.
    Misfire,
    /// The job was deleted before the run could be dispatched.
    JobDeleted,
    /// Another run of the job was active and the overlap policy does not let this one wait.
    Overlap,
    /// A calendar of the job excludes the slot's day.
    Calendar,
    /// The slot's local time does not exist (clocks sprang forward) and the job's `dst_gap`
    /// policy is `skip`.
    DstGap,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        SkipReason::Misfire,
        SkipReason::JobDeleted,
        SkipReason::Overlap,
        SkipReason::Calendar,
        SkipReason::DstGap,
    ];

    /// The reason as the API, logs and metric labels name it.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Misfire => "misfire",
            SkipReason::JobDeleted => "job_deleted",
            SkipReason::Overlap => "overlap",
            SkipReason::Calendar => "calendar",
            SkipReason::DstGap => "dst_gap",
        }
    }
}

/// What an execution produced, capped by the worker, and when it began.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskOutput {
    /// Process exit code (shell) or response status (http).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// When the worker began the execution, by its clock. A task that finishes before the
    /// worker's `--report-start-after` reports no `RunStarted`: its outcome records the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
}

/// One record of the run ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEvent {
    pub job_id: JobId,
    pub run_id: RunId,
    /// The slot this run belongs to; on every event so that any reader can index by time.
    pub scheduled_for: Timestamp,
    /// When the event was decided.
    pub at: Timestamp,
    pub kind: RunEventKind,
    /// For a worker's event about one shard of a sharded run: which one.
    pub shard: Option<ShardOf>,
}

/// One shard of a sharded run, as the worker that runs it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOf {
    pub index: u32,
    pub total: u32,
}

/// Where a sharded run's shards are: those that succeeded (in any attempt) and who runs the
/// others of the current attempt. The run succeeds when every shard has; the first shard that
/// fails or times out decides the attempt, and a retry runs only the shards not yet succeeded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardProgress {
    pub total: u32,
    pub succeeded: BTreeSet<u32>,
    /// Shard index to the worker running it in the current attempt; `[[index, worker], ...]` in
    /// JSON, because maps with number keys do not survive serde's flattening of run records.
    #[serde(with = "index_pairs")]
    pub running: BTreeMap<u32, String>,
}

mod index_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<u32, String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u32, String>, D::Error> {
        Ok(Vec::<(u32, String)>::deserialize(d)?.into_iter().collect())
    }
}

/// What happened to a run. Every event after dispatch carries the attempt it is about.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEventKind {
    RunScheduled {
        trigger: TriggerKind,
        definition_offset: i64,
    },
    RunSkipped {
        reason: SkipReason,
    },
    RunDispatched {
        attempt: u32,
        pool: String,
    },
    RunStarted {
        attempt: u32,
        worker_id: String,
    },
    RunSucceeded {
        attempt: u32,
        worker_id: String,
        output: TaskOutput,
    },
    RunFailed {
        attempt: u32,
        worker_id: String,
        error: String,
        output: TaskOutput,
        /// The rule of the worker's policy that refused the task: it never ran, and the run
        /// is not retried (another attempt would be refused the same way).
        refused: Option<String>,
    },
    RunTimedOut {
        attempt: u32,
        worker_id: String,
        output: TaskOutput,
    },
    RunCancelled {
        attempt: u32,
    },
    RunLost {
        attempt: u32,
    },
    RetryScheduled {
        attempt: u32,
        due_at: Timestamp,
    },
    /// The last attempt failed and the retry policy allows no more: the run is over.
    RunAbandoned {
        attempt: u32,
    },
}

impl RunEventKind {
    /// The attempt the event is about; `None` for events that precede dispatch.
    pub fn attempt(&self) -> Option<u32> {
        use RunEventKind::*;
        match self {
            RunScheduled { .. } | RunSkipped { .. } => None,
            RunDispatched { attempt, .. }
            | RunStarted { attempt, .. }
            | RunSucceeded { attempt, .. }
            | RunFailed { attempt, .. }
            | RunTimedOut { attempt, .. }
            | RunCancelled { attempt }
            | RunLost { attempt }
            | RetryScheduled { attempt, .. }
            | RunAbandoned { attempt } => Some(*attempt),
        }
    }

    /// What the event says beyond its name and attempt, typed (see [`crate::history`]).
    pub fn facts(&self) -> EventFacts {
        use RunEventKind::*;
        let mut facts = EventFacts::default();
        match self {
            RunScheduled { trigger, .. } => facts.trigger = Some(*trigger),
            RunSkipped { reason } => facts.skip_reason = Some(*reason),
            RunDispatched { pool, .. } => facts.pool = Some(pool.clone()),
            RunStarted { worker_id, .. } | RunTimedOut { worker_id, .. } => {
                facts.worker_id = Some(worker_id.clone())
            }
            RunSucceeded { output, .. } => facts.exit_code = output.exit_code,
            RunFailed { error, .. } => facts.error = Some(error.clone()),
            RetryScheduled { due_at, .. } => facts.due_at = Some(*due_at),
            RunCancelled { .. } | RunLost { .. } | RunAbandoned { .. } => {}
        }
        facts
    }

    /// The event's type name as it appears on the wire and in logs.
    pub fn name(&self) -> &'static str {
        use RunEventKind::*;
        match self {
            RunScheduled { .. } => "RunScheduled",
            RunSkipped { .. } => "RunSkipped",
            RunDispatched { .. } => "RunDispatched",
            RunStarted { .. } => "RunStarted",
            RunSucceeded { .. } => "RunSucceeded",
            RunFailed { .. } => "RunFailed",
            RunTimedOut { .. } => "RunTimedOut",
            RunCancelled { .. } => "RunCancelled",
            RunLost { .. } => "RunLost",
            RetryScheduled { .. } => "RetryScheduled",
            RunAbandoned { .. } => "RunAbandoned",
        }
    }
}

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Scheduled,
    Skipped,
    Dispatched,
    Started,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
    RetryScheduled,
    /// Every attempt the retry policy allows has failed.
    Abandoned,
}

impl RunStatus {
    /// Whether the current attempt has a recorded outcome (or the run never ran).
    pub fn is_outcome(self) -> bool {
        use RunStatus::*;
        matches!(
            self,
            Skipped | Succeeded | Failed | TimedOut | Cancelled | Lost | Abandoned
        )
    }

    /// Whether the run is over: nothing more will happen to it. A failed, timed-out or lost
    /// attempt is not final; the retry policy decides what comes next.
    pub fn is_final(self) -> bool {
        use RunStatus::*;
        matches!(self, Skipped | Succeeded | Cancelled | Abandoned)
    }

    pub const ALL: [RunStatus; 11] = [
        RunStatus::Scheduled,
        RunStatus::Skipped,
        RunStatus::Dispatched,
        RunStatus::Started,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Cancelled,
        RunStatus::Lost,
        RunStatus::RetryScheduled,
        RunStatus::Abandoned,
    ];

    /// The status named as [`RunStatus::as_str`] names it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        use RunStatus::*;
        match self {
            Scheduled => "scheduled",
            Skipped => "skipped",
            Dispatched => "dispatched",
            Started => "started",
            Succeeded => "succeeded",
            Failed => "failed",
            TimedOut => "timed_out",
            Cancelled => "cancelled",
            Lost => "lost",
            RetryScheduled => "retry_scheduled",
            Abandoned => "abandoned",
        }
    }
}

/// A run's state, folded from its ledger events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub job_id: JobId,
    pub run_id: RunId,
    pub scheduled_for: Timestamp,
    pub trigger: TriggerKind,
    /// Offset of the job definition on the jobs topic that this run was fired from.
    pub definition_offset: Option<i64>,
    pub status: RunStatus,
    /// The current attempt; 0 until the first dispatch.
    pub attempt: u32,
    pub pool: Option<String>,
    pub worker_id: Option<String>,
    pub skip_reason: Option<SkipReason>,
    pub error: Option<String>,
    /// The rule of a worker's policy that refused the current attempt: it never ran, and the
    /// run is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub output: Option<TaskOutput>,
    pub retry_due_at: Option<Timestamp>,
    /// When the current attempt was dispatched; its deadline is counted from here.
    #[serde(default)]
    pub dispatched_at: Option<Timestamp>,
    /// A sharded run's shards, once a worker has reported on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardProgress>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// Why an event did not change a run. Callers record these and act on none of them.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TransitionError {
    #[error("{event} for unknown run {run_id}")]
    UnknownRun { run_id: RunId, event: &'static str },
    #[error("{event} repeats what run {run_id} already recorded")]
    Duplicate { run_id: RunId, event: &'static str },
    #[error("{event} for attempt {got} of run {run_id}, whose current attempt is {current}")]
    StaleAttempt {
        run_id: RunId,
        event: &'static str,
        got: u32,
        current: u32,
    },
    #[error("{event} is not allowed for run {run_id} in state {from:?} (attempt {attempt})")]
    Illegal {
        run_id: RunId,
        event: &'static str,
        from: RunStatus,
        attempt: u32,
    },
}

impl TransitionError {
    fn illegal(state: &RunState, event: &RunEvent) -> Self {
        TransitionError::Illegal {
            run_id: event.run_id,
            event: event.kind.name(),
            from: state.status,
            attempt: state.attempt,
        }
    }

    fn duplicate(event: &RunEvent) -> Self {
        TransitionError::Duplicate {
            run_id: event.run_id,
            event: event.kind.name(),
        }
    }

    /// Duplicates and stale attempts are normal under at-least-once delivery; an illegal transition
    /// means a producer broke the protocol and deserves an operator's look.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            TransitionError::Duplicate { .. } | TransitionError::StaleAttempt { .. }
        )
    }
}

/// Folds one event into a run's state. `state` is `None` before the run's first event.
pub fn apply(state: Option<&RunState>, event: &RunEvent) -> Result<RunState, TransitionError> {
    use RunEventKind::*;
    use RunStatus as S;

    let name = event.kind.name();
    let run_id = event.run_id;
    let Some(state) = state else {
        return match &event.kind {
            RunScheduled {
                trigger,
                definition_offset,
            } => Ok(new_run(
                event,
                *trigger,
                Some(*definition_offset),
                S::Scheduled,
            )),
            RunSkipped { reason } => {
                let mut run = new_run(event, TriggerKind::Schedule, None, S::Skipped);
                run.skip_reason = Some(*reason);
                run.finished_at = Some(event.at);
                Ok(run)
            }
            _ => Err(TransitionError::UnknownRun {
                run_id,
                event: name,
            }),
        };
    };

    let illegal = || TransitionError::illegal(state, event);
    let duplicate = || TransitionError::duplicate(event);
    if let Some(got) = event.kind.attempt() {
        if got < state.attempt {
            return Err(TransitionError::StaleAttempt {
                run_id,
                event: name,
                got,
                current: state.attempt,
            });
        }
    }

    if let Some(shard) = event.shard {
        if matches!(
            event.kind,
            RunStarted { .. } | RunSucceeded { .. } | RunFailed { .. } | RunTimedOut { .. }
        ) {
            return apply_shard(state, event, shard);
        }
    }

    let mut next = state.clone();
    next.updated_at = event.at;
    match &event.kind {
        RunScheduled { .. } => return Err(duplicate()),
        RunSkipped { reason } => match state.status {
            S::Scheduled | S::RetryScheduled => {
                next.status = S::Skipped;
                next.skip_reason = Some(*reason);
                next.finished_at = Some(event.at);
            }
            S::Skipped => return Err(duplicate()),
            _ => return Err(illegal()),
        },
        RunDispatched { attempt, pool } => match state.status {
            S::Scheduled if *attempt == 1 => {
                next.status = S::Dispatched;
                next.attempt = 1;
                next.pool = Some(pool.clone());
                next.dispatched_at = Some(event.at);
            }
            S::RetryScheduled if *attempt == state.attempt => {
                next.status = S::Dispatched;
                next.pool = Some(pool.clone());
                next.dispatched_at = Some(event.at);
                next.retry_due_at = None;
            }
            _ if *attempt == state.attempt => return Err(duplicate()),
            _ => return Err(illegal()),
        },
        RunStarted { attempt, worker_id } => match state.status {
            S::Dispatched if *attempt == state.attempt => {
                next.status = S::Started;
                next.worker_id = Some(worker_id.clone());
                next.started_at = Some(event.at);
            }
            // The attempt was redelivered to another worker (its first one died or handed it
            // back): it runs there now, and that worker is the one to watch.
            S::Started
                if *attempt == state.attempt
                    && state.worker_id.as_deref() != Some(worker_id.as_str()) =>
            {
                next.worker_id = Some(worker_id.clone());
                next.started_at = Some(event.at);
            }
            S::Started | S::Succeeded | S::Failed | S::TimedOut | S::Cancelled | S::Lost
                if *attempt == state.attempt =>
            {
                return Err(duplicate())
            }
            _ => return Err(illegal()),
        },
        RunSucceeded {
            attempt,
            worker_id,
            output,
        }
        | RunFailed {
            attempt,
            worker_id,
            output,
            ..
        }
        | RunTimedOut {
            attempt,
            worker_id,
            output,
        } => {
            if *attempt != state.attempt {
                return Err(illegal());
            }
            match state.status {
                S::Dispatched | S::Started => {
                    next.status = match &event.kind {
                        RunSucceeded { .. } => S::Succeeded,
                        RunFailed { .. } => S::Failed,
                        _ => S::TimedOut,
                    };
                    next.worker_id = Some(worker_id.clone());
                    // The worker that produced the outcome began it then (a redelivered attempt
                    // may have been started before, by a worker that died).
                    if let Some(started_at) = output.started_at {
                        next.started_at = Some(started_at);
                    }
                    next.output = Some(output.clone());
                    next.error = match &event.kind {
                        RunFailed { error, .. } => Some(error.clone()),
                        RunTimedOut { .. } => Some("timed out".to_string()),
                        _ => None,
                    };
                    if let RunFailed { refused, .. } = &event.kind {
                        next.refused = refused.clone();
                    }
                    next.finished_at = Some(event.at);
                }
                status if status.is_outcome() => return Err(duplicate()),
                _ => return Err(illegal()),
            }
        }
        RunLost { attempt } => match state.status {
            S::Dispatched | S::Started if *attempt == state.attempt => {
                next.status = S::Lost;
                next.error = Some("worker lost".to_string());
                next.finished_at = Some(event.at);
            }
            status if status.is_outcome() && *attempt == state.attempt => return Err(duplicate()),
            _ => return Err(illegal()),
        },
        RunCancelled { attempt } => match state.status {
            S::Cancelled => return Err(duplicate()),
            status if status.is_outcome() => return Err(illegal()),
            _ if *attempt == state.attempt => {
                next.status = S::Cancelled;
                next.finished_at = Some(event.at);
            }
            _ => return Err(illegal()),
        },
        RetryScheduled { attempt, due_at } => match state.status {
            S::Failed | S::TimedOut | S::Lost if *attempt == state.attempt + 1 => {
                next.status = S::RetryScheduled;
                next.attempt = *attempt;
                next.retry_due_at = Some(*due_at);
                next.finished_at = None;
            }
            S::RetryScheduled | S::Dispatched | S::Started if *attempt == state.attempt => {
                return Err(duplicate())
            }
            _ => return Err(illegal()),
        },
        RunAbandoned { attempt } => match state.status {
            S::Failed | S::TimedOut | S::Lost if *attempt == state.attempt => {
                next.status = S::Abandoned;
                next.finished_at = Some(event.at);
            }
            S::Abandoned if *attempt == state.attempt => return Err(duplicate()),
            _ => return Err(illegal()),
        },
    }
    Ok(settled(next))
}

/// An attempt that is over runs on no worker any more.
fn settled(mut run: RunState) -> RunState {
    if !matches!(run.status, RunStatus::Dispatched | RunStatus::Started) {
        if let Some(shards) = &mut run.shards {
            shards.running.clear();
        }
    }
    run
}

/// Folds a worker's event about one shard (its attempt is not stale).
fn apply_shard(
    state: &RunState,
    event: &RunEvent,
    shard: ShardOf,
) -> Result<RunState, TransitionError> {
    use RunEventKind::*;
    use RunStatus as S;

    let illegal = || TransitionError::illegal(state, event);
    let duplicate = || TransitionError::duplicate(event);
    let known_total = state.shards.as_ref().map_or(shard.total, |p| p.total);
    if event.kind.attempt() != Some(state.attempt)
        || shard.index >= shard.total
        || shard.total != known_total
    {
        return Err(illegal());
    }
    let mut next = state.clone();
    next.updated_at = event.at;
    let running = matches!(state.status, S::Dispatched | S::Started);
    // A shard short enough to report no `RunStarted` records its start on its outcome.
    if let RunSucceeded { output, .. } | RunFailed { output, .. } | RunTimedOut { output, .. } =
        &event.kind
    {
        if running {
            next.started_at = next.started_at.or(output.started_at);
        }
    }
    let progress = next.shards.get_or_insert_with(|| ShardProgress {
        total: shard.total,
        ..ShardProgress::default()
    });
    match &event.kind {
        RunStarted { worker_id, .. } => {
            if !running || progress.running.get(&shard.index) == Some(worker_id) {
                return Err(if state.status.is_outcome() || running {
                    duplicate()
                } else {
                    illegal()
                });
            }
            progress.running.insert(shard.index, worker_id.clone());
            next.worker_id = Some(worker_id.clone());
            if state.status == S::Dispatched {
                next.status = S::Started;
                next.started_at = Some(event.at);
            }
        }
        RunSucceeded {
            worker_id, output, ..
        } => {
            // Once another shard has decided the attempt, a late success is recorded, not
            // counted: the retry runs that shard again.
            if !running || progress.succeeded.contains(&shard.index) {
                return Err(duplicate());
            }
            progress.succeeded.insert(shard.index);
            progress.running.remove(&shard.index);
            if running && progress.succeeded.len() as u32 == progress.total {
                next.status = S::Succeeded;
                next.worker_id = Some(worker_id.clone());
                next.output = Some(output.clone());
                next.finished_at = Some(event.at);
            }
        }
        RunFailed {
            worker_id, output, ..
        }
        | RunTimedOut {
            worker_id, output, ..
        } => {
            if !running {
                return Err(duplicate());
            }
            let (status, error) = match &event.kind {
                RunFailed { error, .. } => (S::Failed, error.as_str()),
                _ => (S::TimedOut, "timed out"),
            };
            next.status = status;
            next.error = Some(format!("shard {}: {error}", shard.index));
            if let RunFailed { refused, .. } = &event.kind {
                next.refused = refused.clone();
            }
            next.worker_id = Some(worker_id.clone());
            next.output = Some(output.clone());
            next.finished_at = Some(event.at);
        }
        _ => return Err(illegal()),
    }
    Ok(settled(next))
}

impl RunState {
    /// The workers the current attempt runs on: one, or one per running shard.
    pub fn workers(&self) -> Vec<&str> {
        if self.status != RunStatus::Started {
            return vec![];
        }
        match &self.shards {
            Some(shards) => shards.running.values().map(String::as_str).collect(),
            None => self.worker_id.as_deref().into_iter().collect(),
        }
    }

    /// The shards a new attempt must run: all of them, less those that already succeeded (and
    /// all again should none be left, rather than an attempt that runs nothing).
    pub fn shards_to_run(&self, total: u32) -> Vec<u32> {
        let done = self.shards.as_ref().map(|p| &p.succeeded);
        let left: Vec<u32> = (0..total)
            .filter(|i| done.is_none_or(|done| !done.contains(i)))
            .collect();
        if left.is_empty() {
            (0..total).collect()
        } else {
            left
        }
    }
}

fn new_run(
    event: &RunEvent,
    trigger: TriggerKind,
    definition_offset: Option<i64>,
    status: RunStatus,
) -> RunState {
    RunState {
        job_id: event.job_id.clone(),
        run_id: event.run_id,
        scheduled_for: event.scheduled_for,
        trigger,
        definition_offset,
        status,
        attempt: 0,
        pool: None,
        worker_id: None,
        skip_reason: None,
        error: None,
        refused: None,
        output: None,
        retry_due_at: None,
        dispatched_at: None,
        shards: None,
        created_at: event.at,
        started_at: None,
        finished_at: None,
        updated_at: event.at,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn t(secs: i64) -> Timestamp {
        crate::from_millis(1_800_000_000_000 + secs * 1000).unwrap()
    }

    fn job() -> JobId {
        JobId::parse("job-1").unwrap()
    }

    fn event(kind: RunEventKind) -> RunEvent {
        let run_id = RunId::derive(&job(), t(0), TriggerKind::Schedule);
        RunEvent {
            job_id: job(),
            run_id,
            scheduled_for: t(0),
            at: t(1),
            kind,
            shard: None,
        }
    }

    fn fold(kinds: Vec<RunEventKind>) -> (Option<RunState>, Vec<TransitionError>) {
        let mut state = None;
        let mut errors = vec![];
        for kind in kinds {
            match apply(state.as_ref(), &event(kind)) {
                Ok(next) => state = Some(next),
                Err(e) => errors.push(e),
            }
        }
        (state, errors)
    }

    fn scheduled() -> RunEventKind {
        RunEventKind::RunScheduled {
            trigger: TriggerKind::Schedule,
            definition_offset: 7,
        }
    }
    fn dispatched(attempt: u32) -> RunEventKind {
        RunEventKind::RunDispatched {
            attempt,
            pool: "default".into(),
        }
    }
    fn started(attempt: u32, worker: &str) -> RunEventKind {
        RunEventKind::RunStarted {
            attempt,
            worker_id: worker.into(),
        }
    }
    fn succeeded(attempt: u32, worker: &str) -> RunEventKind {
        RunEventKind::RunSucceeded {
            attempt,
            worker_id: worker.into(),
            output: TaskOutput::default(),
        }
    }
    fn failed(attempt: u32) -> RunEventKind {
        RunEventKind::RunFailed {
            attempt,
            worker_id: "w".into(),
            error: "exit 1".into(),
            output: TaskOutput::default(),
            refused: None,
        }
    }

    #[test]
    fn run_id_is_stable_for_a_slot_and_differs_between_slots_and_kinds() {
        let a = RunId::derive(&job(), t(0), TriggerKind::Schedule);
        assert_eq!(a, RunId::derive(&job(), t(0), TriggerKind::Schedule));
        assert_ne!(a, RunId::derive(&job(), t(1), TriggerKind::Schedule));
        assert_ne!(a, RunId::derive(&job(), t(0), TriggerKind::Manual));
        assert_ne!(
            a,
            RunId::derive(&JobId::parse("job-2").unwrap(), t(0), TriggerKind::Schedule)
        );
        assert_eq!(RunId::parse(&a.to_string()), Some(a));
    }

    #[test]
    fn the_happy_path_ends_succeeded_with_the_worker_recorded() {
        let (state, errors) = fold(vec![
            scheduled(),
            dispatched(1),
            started(1, "w1"),
            succeeded(1, "w1"),
        ]);
        let state = state.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.status, RunStatus::Succeeded);
        assert_eq!(state.attempt, 1);
        assert_eq!(state.worker_id.as_deref(), Some("w1"));
        assert_eq!(state.definition_offset, Some(7));
    }

    #[test]
    fn first_outcome_wins_and_later_ones_are_duplicates() {
        let (state, errors) = fold(vec![
            scheduled(),
            dispatched(1),
            started(1, "w1"),
            succeeded(1, "w1"),
            failed(1),
        ]);
        assert_eq!(state.unwrap().status, RunStatus::Succeeded);
        assert!(matches!(
            errors.as_slice(),
            [TransitionError::Duplicate {
                event: "RunFailed",
                ..
            }]
        ));
    }

    #[test]
    fn a_slow_worker_of_an_old_attempt_is_fenced() {
        let retry = RunEventKind::RetryScheduled {
            attempt: 2,
            due_at: t(5),
        };
        let (state, errors) = fold(vec![
            scheduled(),
            dispatched(1),
            started(1, "slow"),
            failed(1),
            retry,
            dispatched(2),
            started(2, "fast"),
            succeeded(1, "slow"),
        ]);
        let state = state.unwrap();
        assert_eq!((state.status, state.attempt), (RunStatus::Started, 2));
        assert_eq!(state.worker_id.as_deref(), Some("fast"));
        assert!(matches!(
            errors.as_slice(),
            [TransitionError::StaleAttempt {
                got: 1,
                current: 2,
                ..
            }]
        ));
    }

    #[test]
    fn replaying_the_ledger_twice_changes_nothing() {
        let events = vec![
            scheduled(),
            dispatched(1),
            started(1, "w"),
            succeeded(1, "w"),
        ];
        let (once, _) = fold(events.clone());
        let (twice, errors) = fold(events.iter().chain(events.iter()).cloned().collect());
        assert_eq!(once, twice);
        assert!(
            errors.iter().all(TransitionError::is_expected),
            "{errors:?}"
        );
    }

    #[test]
    fn a_redelivered_attempt_moves_to_its_new_worker_and_its_first_outcome_still_wins() {
        let (state, errors) = fold(vec![
            scheduled(),
            dispatched(1),
            started(1, "w1"),
            started(1, "w2"),
            started(1, "w2"),
            succeeded(1, "w2"),
            succeeded(1, "w1"),
        ]);
        let state = state.unwrap();
        assert_eq!(state.status, RunStatus::Succeeded);
        assert_eq!(state.worker_id.as_deref(), Some("w2"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(TransitionError::is_expected));
    }

    fn of_shard(index: u32, kind: RunEventKind) -> RunEvent {
        RunEvent {
            shard: Some(ShardOf { index, total: 3 }),
            ..event(kind)
        }
    }

    fn fold_events(events: Vec<RunEvent>) -> (Option<RunState>, Vec<TransitionError>) {
        let mut state = None;
        let mut errors = vec![];
        for event in events {
            match apply(state.as_ref(), &event) {
                Ok(next) => state = Some(next),
                Err(e) => errors.push(e),
            }
        }
        (state, errors)
    }

    #[test]
    fn a_sharded_run_succeeds_when_every_shard_has() {
        let mut events = vec![event(scheduled()), event(dispatched(1))];
        events.extend([
            of_shard(0, started(1, "w1")),
            of_shard(1, started(1, "w2")),
            of_shard(2, started(1, "w1")),
            of_shard(0, succeeded(1, "w1")),
            of_shard(1, succeeded(1, "w2")),
        ]);
        let (state, errors) = fold_events(events.clone());
        let state = state.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            state.status,
            RunStatus::Started,
            "one shard is still running"
        );
        assert_eq!(state.workers(), ["w1"]);
        events.push(of_shard(1, succeeded(1, "w2")));
        events.push(of_shard(2, succeeded(1, "w1")));
        let (state, errors) = fold_events(events);
        let state = state.unwrap();
        assert_eq!(state.status, RunStatus::Succeeded);
        assert_eq!(state.shards.as_ref().unwrap().succeeded.len(), 3);
        assert!(state.workers().is_empty());
        assert!(matches!(
            errors.as_slice(),
            [TransitionError::Duplicate { .. }]
        ));
    }

    /// Given a dispatched attempt, when its worker reports only the outcome (the task ended
    /// before `--report-start-after`), then the run is over and records when it began; a worker
    /// that ran a redelivered attempt again records its own start over the first one's.
    #[test]
    fn an_outcome_without_a_start_records_when_the_execution_began() {
        let quick = |worker: &str, began: i64| RunEventKind::RunSucceeded {
            attempt: 1,
            worker_id: worker.into(),
            output: TaskOutput {
                started_at: Some(t(began)),
                ..TaskOutput::default()
            },
        };
        let (state, errors) = fold(vec![scheduled(), dispatched(1), quick("w1", 5)]);
        let state = state.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.status, RunStatus::Succeeded);
        assert_eq!(state.started_at, Some(t(5)));
        assert_eq!(state.worker_id.as_deref(), Some("w1"));

        let (state, _) = fold(vec![
            scheduled(),
            dispatched(1),
            started(1, "w1"),
            quick("w2", 9),
        ]);
        assert_eq!(state.unwrap().started_at, Some(t(9)));

        let (state, errors) = fold_events(vec![
            event(scheduled()),
            event(dispatched(1)),
            of_shard(0, quick("w1", 4)),
            of_shard(1, quick("w2", 3)),
            of_shard(2, quick("w1", 6)),
        ]);
        let state = state.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.status, RunStatus::Succeeded);
        assert_eq!(
            state.started_at,
            Some(t(4)),
            "the first shard read began it"
        );
    }

    #[test]
    fn the_first_failing_shard_decides_the_attempt_and_a_retry_runs_only_the_shards_left() {
        let (state, errors) = fold_events(vec![
            event(scheduled()),
            event(dispatched(1)),
            of_shard(0, started(1, "w1")),
            of_shard(1, started(1, "w2")),
            of_shard(0, succeeded(1, "w1")),
            of_shard(1, failed(1)),
            // Too late to count: the attempt is decided.
            of_shard(2, succeeded(1, "w1")),
            event(RunEventKind::RetryScheduled {
                attempt: 2,
                due_at: t(5),
            }),
            // A straggler of the first attempt is stale.
            of_shard(2, succeeded(1, "w1")),
        ]);
        let state = state.unwrap();
        assert_eq!(state.status, RunStatus::RetryScheduled);
        assert_eq!(state.shards_to_run(3), [1, 2]);
        assert!(matches!(
            errors.as_slice(),
            [
                TransitionError::Duplicate { .. },
                TransitionError::StaleAttempt { .. }
            ]
        ));
        let (failed_state, _) = fold_events(vec![
            event(scheduled()),
            event(dispatched(1)),
            of_shard(1, failed(1)),
        ]);
        assert_eq!(
            failed_state.unwrap().error.as_deref(),
            Some("shard 1: exit 1")
        );
    }

    /// Read models embed the state with `#[serde(flatten)]`, which cannot read maps with number
    /// keys back.
    #[test]
    fn a_sharded_state_survives_being_flattened_into_a_read_model() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Record {
            #[serde(flatten)]
            state: RunState,
            note: String,
        }
        let (state, _) = fold_events(vec![
            event(scheduled()),
            event(dispatched(1)),
            of_shard(2, started(1, "w1")),
            of_shard(0, started(1, "w2")),
        ]);
        let record = Record {
            state: state.unwrap(),
            note: "x".into(),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
    }

    #[test]
    fn a_shard_outside_the_run_is_refused() {
        let base = vec![event(scheduled()), event(dispatched(1))];
        let beyond = RunEvent {
            shard: Some(ShardOf { index: 3, total: 3 }),
            ..event(started(1, "w"))
        };
        let other_total = RunEvent {
            shard: Some(ShardOf { index: 0, total: 4 }),
            ..event(started(1, "w"))
        };
        let (_, errors) = fold_events(
            base.into_iter()
                .chain([of_shard(0, started(1, "w")), beyond, other_total])
                .collect(),
        );
        assert!(
            matches!(
                errors.as_slice(),
                [
                    TransitionError::Illegal { .. },
                    TransitionError::Illegal { .. }
                ]
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn events_before_scheduling_are_rejected_not_invented() {
        let (state, errors) = fold(vec![started(1, "w")]);
        assert!(state.is_none());
        assert!(matches!(
            errors.as_slice(),
            [TransitionError::UnknownRun { .. }]
        ));
    }

    fn any_event() -> impl Strategy<Value = RunEventKind> {
        let attempt = 0u32..4;
        prop_oneof![
            Just(scheduled()),
            Just(RunEventKind::RunSkipped {
                reason: SkipReason::Misfire
            }),
            attempt.clone().prop_map(dispatched),
            attempt.clone().prop_map(|a| started(a, "w")),
            attempt.clone().prop_map(|a| succeeded(a, "w")),
            attempt.clone().prop_map(failed),
            attempt.clone().prop_map(|a| RunEventKind::RunTimedOut {
                attempt: a,
                worker_id: "w".into(),
                output: TaskOutput::default()
            }),
            attempt
                .clone()
                .prop_map(|attempt| RunEventKind::RunCancelled { attempt }),
            attempt
                .clone()
                .prop_map(|attempt| RunEventKind::RunLost { attempt }),
            attempt
                .clone()
                .prop_map(|attempt| RunEventKind::RetryScheduled {
                    attempt,
                    due_at: t(9)
                }),
            attempt.prop_map(|attempt| RunEventKind::RunAbandoned { attempt }),
        ]
    }

    proptest! {
        /// Any sequence folds without panicking, attempts never go backwards, and once an attempt
        /// has an outcome no event of that attempt changes it.
        #[test]
        fn any_sequence_folds_and_keeps_the_invariants(kinds in proptest::collection::vec(any_event(), 0..40)) {
            let mut state: Option<RunState> = None;
            for kind in kinds {
                let before = state.clone();
                if let Ok(next) = apply(state.as_ref(), &event(kind.clone())) {
                    if let Some(before) = &before {
                        prop_assert!(next.attempt >= before.attempt);
                        if before.status.is_outcome() {
                            prop_assert!(matches!(kind, RunEventKind::RetryScheduled { .. } | RunEventKind::RunAbandoned { .. }),
                                "{:?} changed the outcome of {:?}", kind, before.status);
                        }
                    }
                    state = Some(next);
                }
            }
        }
    }
}

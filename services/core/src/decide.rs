//! Decisions: given state and the current time, what should be emitted next.
//!
//! These functions hold the business rules that [`crate::run::apply`] deliberately does not. They
//! are pure, so every policy is tested with given/when/then scenarios and a manual clock, and a
//! service that rebuilds its state and asks again gets the same answer (which is what makes
//! re-emitting after a crash harmless: same run ids, same attempts).

use std::time::Duration;

use crate::job::{Backoff, JobDefinition, MisfireKind, OverlapPolicy, MAX_QUEUED};
use crate::run::{
    RunEvent, RunEventKind, RunId, RunState, RunStatus, SkipReason, TaskOutput, TriggerKind,
};
use crate::task::{ShardAssignment, TaskAssigned};
use crate::Timestamp;

/// What the trigger does with one slot of a job's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fire {
    /// Emit `RunScheduled` for the slot.
    Run(Timestamp),
    /// Record `RunSkipped { reason }` for the slot, so that every slot has a decision on the
    /// ledger: a missed slot superseded by a later one (`misfire`), a day a calendar excludes
    /// (`calendar`), or a local time that does not exist and that the job skips (`dst_gap`).
    Skipped(Timestamp, SkipReason),
}

impl Fire {
    pub fn slot(self) -> Timestamp {
        match self {
            Fire::Run(t) | Fire::Skipped(t, _) => t,
        }
    }
}

/// The next slot decision for a job whose schedule was last handled up to `cursor` (the last fired
/// or skipped slot, or the moment the definition was written), having fired `fired` runs so far;
/// `None` when the next slot is not due yet or the job has no more. Call repeatedly, advancing
/// `cursor` to the returned slot, to work through a backlog.
///
/// A slot is due at its fire time (the slot plus the job's jitter for it), and is fired `lead`
/// earlier: the trigger fires ahead so that the run is dispatched and on its worker, held there,
/// by the time it starts. How late a slot is (for the misfire policy) is counted from its fire
/// time, whatever the lead. A slot that a calendar excludes or that the DST policy drops is
/// recorded as skipped when it comes due. One late by no more than the misfire grace always runs. A later one is a missed slot: `fire_once` runs it only
/// if it is the latest runnable slot due by `now`, `skip` never runs it, and `catch_up` runs it if
/// it is within the catch-up window. A missed slot that does not run is recorded as misfired, so
/// every slot has exactly one decision on the ledger. Skipped slots do not count toward `max_runs`.
pub fn next_fire(
    job: &JobDefinition,
    cursor: Timestamp,
    now: Timestamp,
    fired: u32,
    lead: Duration,
) -> Option<Fire> {
    if job.max_runs.is_some_and(|max| fired >= max) {
        return None;
    }
    let slot = job.next_slot(cursor)?;
    let due = fire_time(job, slot.at);
    if due > now + chrono::Duration::from_std(lead).unwrap_or_default() {
        return None;
    }
    if slot.is_dropped() {
        return Some(Fire::Skipped(slot.at, SkipReason::DstGap));
    }
    if job.excluded_by(slot.at).is_some() {
        return Some(Fire::Skipped(slot.at, SkipReason::Calendar));
    }
    let policy = &job.misfire;
    let late_by = (now - due).to_std().unwrap_or_default();
    if late_by <= policy.grace {
        return Some(Fire::Run(slot.at));
    }
    let runs = match policy.policy {
        MisfireKind::FireOnce => next_runnable_slot(job, slot.at, now).is_none(),
        MisfireKind::Skip => false,
        MisfireKind::CatchUp => late_by <= policy.catch_up_window,
    };
    Some(if runs {
        Fire::Run(slot.at)
    } else {
        Fire::Skipped(slot.at, SkipReason::Misfire)
    })
}

/// Where a job's schedule stands for the trigger: the last slot handled (fired or skipped; before
/// the first, where its slots are counted from) and the runs fired so far, for `max_runs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotCursor {
    pub last_slot: Timestamp,
    pub fired: u32,
}

/// The fires of a job due by `now` (fired `lead` ahead) from `cursor` on, at most `max` of them,
/// moving `cursor` past each: a pass of the trigger for the job. A paused job fires nothing. When
/// `max` cuts a backlog short, the rest is still due and the next pass goes on from the cursor.
pub fn due_fires(
    job: &JobDefinition,
    cursor: &mut SlotCursor,
    now: Timestamp,
    lead: Duration,
    max: usize,
) -> Vec<Fire> {
    let mut fires = vec![];
    while fires.len() < max && !job.paused {
        let Some(fire) = next_fire(job, cursor.last_slot, now, cursor.fired, lead) else {
            break;
        };
        cursor.last_slot = fire.slot();
        cursor.fired += u32::from(matches!(fire, Fire::Run(_)));
        fires.push(fire);
    }
    fires
}

/// When the trigger is to fire the job's next slot: its fire time, `lead` ahead. `None` when the
/// job is paused, has fired its `max_runs`, or has no slot left.
pub fn next_fire_due(job: &JobDefinition, cursor: SlotCursor, lead: Duration) -> Option<Timestamp> {
    if job.paused || job.max_runs.is_some_and(|max| cursor.fired >= max) {
        return None;
    }
    let next = job.next_slot(cursor.last_slot)?;
    Some(fire_time(job, next.at) - chrono::Duration::from_std(lead).unwrap_or_default())
}

/// The ledger event of a fire of the job's definition read at `definition_offset`: the run
/// scheduled (its id derived from the slot, so that firing again yields the same run), or the
/// slot recorded as skipped.
pub fn fire_event(
    job: &JobDefinition,
    definition_offset: i64,
    fire: Fire,
    now: Timestamp,
) -> RunEvent {
    let slot = fire.slot();
    let kind = match fire {
        Fire::Run(_) => RunEventKind::RunScheduled {
            trigger: TriggerKind::Schedule,
            definition_offset,
        },
        Fire::Skipped(_, reason) => RunEventKind::RunSkipped { reason },
    };
    RunEvent {
        job_id: job.id.clone(),
        run_id: RunId::derive(&job.id, slot, TriggerKind::Schedule),
        scheduled_for: slot,
        at: now,
        kind,
        shard: None,
    }
}

/// The first slot after `after` that is due by `now` and would run (no calendar or DST rule
/// skips it).
fn next_runnable_slot(job: &JobDefinition, after: Timestamp, now: Timestamp) -> Option<Timestamp> {
    job.slots_after(after)
        .take_while(|s| fire_time(job, s.at) <= now)
        .find(|s| job.runs_at(s))
        .map(|s| s.at)
}

/// When a slot fires: the slot plus a part of the job's jitter drawn from the slot's run id, so
/// that every trigger instance and every rebuild fires it at the same moment.
pub fn fire_time(job: &JobDefinition, slot: Timestamp) -> Timestamp {
    let Some(jitter) = job.jitter.filter(|j| !j.is_zero()) else {
        return slot;
    };
    let seed = RunId::derive(&job.id, slot, TriggerKind::Schedule).seed();
    let delay_ms = (jitter.as_millis() as f64 * unit_interval(seed)) as i64;
    slot + chrono::Duration::milliseconds(delay_ms)
}

/// When a run's task starts on its worker: a scheduled slot at its fire time (the slot plus the
/// job's jitter), a run triggered by hand or backfilled at once. A task dispatched before then is
/// held by the worker and started at this time by the worker's own clock.
pub fn start_at(definition: &JobDefinition, run: &RunState) -> Timestamp {
    match run.trigger {
        TriggerKind::Schedule => fire_time(definition, run.scheduled_for),
        _ => run.scheduled_for,
    }
}

/// Whether the job as now defined would still fire the run's slot: it is not paused, and for a
/// scheduled run the slot is one of its schedule's that no calendar excludes. A run fired ahead
/// of its slot from an earlier definition is cancelled before it starts when this no longer holds,
/// so a pause, a new schedule or a new calendar read before a slot's start is obeyed as if the
/// slot had been fired at its start.
fn still_fired_by(definition: &JobDefinition, run: &RunState) -> bool {
    if definition.paused {
        return false;
    }
    run.trigger != TriggerKind::Schedule
        || definition
            .next_slot(run.scheduled_for - chrono::Duration::milliseconds(1))
            .is_some_and(|slot| slot.at == run.scheduled_for && !slot.is_dropped())
            && definition.excluded_by(run.scheduled_for).is_none()
}

/// How long before a held run's start a change must be read to cancel it: room for the
/// cancellation and the workers' stop to travel (two sends and a fetch), so that a stop does not
/// reach a worker that has already started the run.
pub const STOP_MARGIN: chrono::Duration = chrono::Duration::milliseconds(500);

/// What the dispatcher knows of a run's job.
#[derive(Clone, Copy, Debug)]
pub enum JobView<'a> {
    /// The definition at `offset` on the jobs topic.
    Defined {
        definition: &'a JobDefinition,
        offset: i64,
    },
    /// A tombstone at `offset`.
    Deleted { offset: i64 },
    /// Nothing read yet for this job.
    Unknown,
}

impl<'a> JobView<'a> {
    /// The definition, if the job is defined.
    pub fn definition(&self) -> Option<&'a JobDefinition> {
        match self {
            JobView::Defined { definition, .. } => Some(definition),
            JobView::Deleted { .. } | JobView::Unknown => None,
        }
    }
}

/// One thing the dispatcher should do for a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Append this event for the run to the ledger.
    Record(RunEventKind),
    /// Record `RunDispatched` for the attempt, then hand its tasks to their pool: one task, or
    /// one per shard still to run. Never empty.
    Dispatch(Vec<TaskAssigned>),
    /// Record `RunCancelled` for the attempt; if it was dispatched, ask the workers to stop it.
    Cancel { attempt: u32 },
}

/// What taking a step sends, after its ledger record.
#[derive(Clone, Debug, PartialEq)]
pub enum FollowUp {
    /// Hand a task to its pool.
    Publish(Box<TaskAssigned>),
    /// Tell the workers to stop the run's attempt (`None`: whichever is current) and not to run
    /// it again should its task be redelivered.
    Stop { attempt: Option<u32> },
}

/// A step made concrete: the event it appends to the ledger, and what follows it, in the order
/// they must reach the broker (a worker must find the dispatch, the loss or the cancel on the
/// ledger before it can act on a task or a stop).
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    pub event: RunEvent,
    pub then: Vec<FollowUp>,
}

/// What taking `step` for `run` at `now` sends. An attempt recorded lost or timed out on a
/// worker's behalf is stopped, so that it neither runs on nor runs again; a cancelled run that
/// was on a worker is stopped; a dispatch publishes its tasks.
pub fn take_step(run: &RunState, step: Step, now: Timestamp) -> Taken {
    let event = |kind| RunEvent {
        job_id: run.job_id.clone(),
        run_id: run.run_id,
        scheduled_for: run.scheduled_for,
        at: now,
        kind,
        shard: None,
    };
    match step {
        Step::Record(kind) => {
            let stop = match kind {
                RunEventKind::RunLost { attempt } | RunEventKind::RunTimedOut { attempt, .. } => {
                    vec![FollowUp::Stop {
                        attempt: Some(attempt),
                    }]
                }
                _ => vec![],
            };
            Taken {
                event: event(kind),
                then: stop,
            }
        }
        Step::Cancel { attempt } => Taken {
            event: event(RunEventKind::RunCancelled { attempt }),
            then: match run.status {
                RunStatus::Dispatched | RunStatus::Started => {
                    vec![FollowUp::Stop { attempt: None }]
                }
                _ => vec![],
            },
        },
        Step::Dispatch(tasks) => Taken {
            event: event(RunEventKind::RunDispatched {
                attempt: run.attempt.max(1),
                pool: tasks.first().map_or(String::new(), |t| t.pool.clone()),
            }),
            then: tasks
                .into_iter()
                .map(|task| FollowUp::Publish(Box::new(task)))
                .collect(),
        },
    }
}

impl Step {
    /// The pool a dispatch hands its tasks to.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Step::Dispatch(tasks) => tasks.first().map(|t| t.pool.as_str()),
            _ => None,
        }
    }
}

/// What cancelling a run means now: a waiting or running run is cancelled; a run that is over is
/// left alone, and a failed attempt awaiting its retry decision gets that decision first.
pub fn cancel_step(run: &RunState) -> Option<Step> {
    use RunStatus::*;
    matches!(
        run.status,
        Scheduled | RetryScheduled | Dispatched | Started
    )
    .then_some(Step::Cancel {
        attempt: run.attempt,
    })
}

/// What the dispatcher records for a run whose current attempt was started by a worker that has
/// since died: the attempt is lost, and the retry policy decides what comes next. An attempt not
/// started yet is on no worker, and one already over has nothing to lose.
pub fn lost_step(run: &RunState) -> Option<Step> {
    (run.status == RunStatus::Started).then_some(Step::Record(RunEventKind::RunLost {
        attempt: run.attempt,
    }))
}

/// The dispatcher's next step for a run, or `None` when the run is waiting on someone else (a
/// worker, a retry's due time, or a job definition the dispatcher has not read yet).
///
/// After a failed, timed-out or lost attempt: another attempt is scheduled while the job's retry
/// policy allows one (due after the backoff, counted from the failure as recorded on the ledger,
/// so that the decision is the same whenever it is made), otherwise the run is abandoned.
///
/// A scheduled run of a job whose other runs are still active waits, is skipped or runs anyway,
/// as the job's overlap policy says; `runs_of_job` are the job's unfinished runs (this one may be
/// among them).
///
/// An attempt of a job with a timeout that has not reported by its deadline (dispatch + timeout +
/// `deadline_margin`) is recorded as timed out by the dispatcher: the backstop for a worker that
/// died or hung without a word.
pub fn next_step(
    run: &RunState,
    job: JobView<'_>,
    now: Timestamp,
    deadline_margin: Duration,
    runs_of_job: &[RunState],
) -> Option<Step> {
    let fired_from = run.definition_offset.unwrap_or(i64::MIN);
    // When the run starts on its worker (for a deleted job: its slot, jitter unknown).
    let starts = match job {
        JobView::Defined { definition, .. } => start_at(definition, run),
        _ => run.scheduled_for,
    };
    let dispatch = |definition: &JobDefinition, offset: i64| {
        let task = TaskAssigned {
            job_id: run.job_id.clone(),
            run_id: run.run_id,
            attempt: run.attempt.max(1),
            scheduled_for: run.scheduled_for,
            pool: definition.pool.clone(),
            task: definition.task.clone(),
            timeout: definition.timeout,
            definition_offset: offset,
            assigned_at: now,
            // A scheduled slot's first attempt starts at the slot; a retry, or a run triggered
            // by hand, as soon as it arrives.
            start_at: (run.trigger == TriggerKind::Schedule && run.attempt <= 1).then_some(starts),
            shard: None,
            concurrent_runs: definition.overlap == OverlapPolicy::Allow,
            signature: definition.signature.clone(),
        };
        if definition.shards <= 1 {
            return Step::Dispatch(vec![task]);
        }
        let shard = |index: u32| TaskAssigned {
            shard: Some(ShardAssignment {
                index,
                total: definition.shards,
                param: definition.shard_params.get(index as usize).cloned(),
            }),
            ..task.clone()
        };
        Step::Dispatch(
            run.shards_to_run(definition.shards)
                .into_iter()
                .map(shard)
                .collect(),
        )
    };
    let deleted = || {
        Step::Record(RunEventKind::RunSkipped {
            reason: SkipReason::JobDeleted,
        })
    };
    // A definition read after the run was fired, early enough before the run's start, fences it
    // as if it had been read before the fire. A run already dispatched is held by a worker, which
    // must get the stop before the start: read later than that, the change comes too late for
    // this run, as a change read after the fire did before runs were fired ahead.
    let not_started_yet = run.attempt <= 1
        && match run.status {
            RunStatus::Scheduled => now < starts,
            RunStatus::Dispatched => now + STOP_MARGIN < starts,
            _ => false,
        };
    match job {
        JobView::Defined { definition, offset } => {
            if superseded(run, definition, runs_of_job, now) && run.status != RunStatus::Scheduled {
                return cancel_step(run);
            }
            if offset > fired_from && not_started_yet && !still_fired_by(definition, run) {
                return cancel_step(run);
            }
        }
        JobView::Deleted { offset }
            if offset > fired_from && run.status == RunStatus::Dispatched && not_started_yet =>
        {
            return cancel_step(run);
        }
        _ => {}
    }
    match (run.status, job) {
        (RunStatus::Scheduled, JobView::Defined { definition, offset }) if offset >= fired_from => {
            match overlap_step(run, definition, runs_of_job, now) {
                None => Some(dispatch(definition, offset)),
                // Fired ahead into a job that other runs hold: the overlap policy is decided at
                // the run's start, when those runs may be over, exactly as if it had been fired
                // then. (`wake_at` brings the dispatcher back.)
                Some(_) if now < starts => None,
                Some(step) => step,
            }
        }
        (RunStatus::Scheduled, JobView::Deleted { offset }) if offset >= fired_from => {
            Some(deleted())
        }
        (
            RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost,
            JobView::Defined { definition, .. },
        ) => {
            let failed_at = run.finished_at.unwrap_or(run.updated_at);
            Some(Step::Record(
                // A refused attempt would be refused again.
                if run.attempt < definition.retry.max_attempts && run.refused.is_none() {
                    RunEventKind::RetryScheduled {
                        attempt: run.attempt + 1,
                        due_at: failed_at
                            + retry_delay(&definition.retry.backoff, run, run.attempt),
                    }
                } else {
                    RunEventKind::RunAbandoned {
                        attempt: run.attempt,
                    }
                },
            ))
        }
        (RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost, JobView::Deleted { .. }) => {
            Some(Step::Record(RunEventKind::RunAbandoned {
                attempt: run.attempt,
            }))
        }
        (RunStatus::RetryScheduled, JobView::Defined { definition, offset }) => run
            .retry_due_at
            .is_none_or(|due| due <= now)
            .then(|| dispatch(definition, offset)),
        (RunStatus::RetryScheduled, JobView::Deleted { .. }) => Some(deleted()),
        (RunStatus::Dispatched | RunStatus::Started, JobView::Defined { definition, .. }) => {
            let deadline = attempt_deadline(run, definition, deadline_margin)?;
            (deadline <= now).then(|| {
                Step::Record(RunEventKind::RunTimedOut {
                    attempt: run.attempt,
                    worker_id: run
                        .worker_id
                        .clone()
                        .unwrap_or_else(|| DEADLINE_REPORTER.to_string()),
                    output: TaskOutput::default(),
                })
            })
        }
        _ => None,
    }
}

/// The overlap policy's word on a scheduled run: `None` to dispatch it now, `Some(None)` to let it
/// wait, `Some(Some(skip))` to skip it.
fn overlap_step(
    run: &RunState,
    definition: &JobDefinition,
    runs_of_job: &[RunState],
    now: Timestamp,
) -> Option<Option<Step>> {
    let others = || {
        runs_of_job
            .iter()
            .filter(|r| r.run_id != run.run_id && !r.status.is_final())
    };
    // A run that has been dispatched and is not over (running, failed and awaiting its retry
    // decision, or waiting for a retry) holds the job.
    let holding = others().any(|r| r.status != RunStatus::Scheduled);
    let ahead = others()
        .filter(|r| {
            r.status == RunStatus::Scheduled
                && (r.scheduled_for, r.run_id) < (run.scheduled_for, run.run_id)
        })
        .count();
    let skip = Some(Step::Record(RunEventKind::RunSkipped {
        reason: SkipReason::Overlap,
    }));
    if superseded(run, definition, runs_of_job, now) {
        return Some(skip);
    }
    if definition.overlap == OverlapPolicy::Allow || (!holding && ahead == 0) {
        return None;
    }
    Some(match definition.overlap {
        OverlapPolicy::Allow => unreachable!("handled above"),
        // The active runs are cancelled in this same pass, before this run is looked at; it goes
        // once they are over.
        OverlapPolicy::Replace => None,
        OverlapPolicy::Forbid => skip,
        OverlapPolicy::Queue if ahead >= 1 => skip,
        OverlapPolicy::QueueAll if ahead >= MAX_QUEUED => skip,
        OverlapPolicy::Queue | OverlapPolicy::QueueAll => None,
    })
}

/// Under `replace`, a run is superseded (to be cancelled, or skipped if it never started) as soon
/// as a later run of the job is scheduled and due to start: a later run fired ahead replaces it
/// only at its own start.
fn superseded(
    run: &RunState,
    definition: &JobDefinition,
    runs_of_job: &[RunState],
    now: Timestamp,
) -> bool {
    definition.overlap == OverlapPolicy::Replace
        && !run.status.is_final()
        && runs_of_job.iter().any(|r| {
            r.status == RunStatus::Scheduled
                && (r.scheduled_for, r.run_id) > (run.scheduled_for, run.run_id)
                && start_at(definition, r) <= now
        })
}

/// When the dispatcher must look at a run again without any new event: the start of a run fired
/// ahead that waits for its start to be decided, a retry's due time, or the deadline of an attempt
/// that has not reported its outcome.
pub fn wake_at(
    run: &RunState,
    definition: Option<&JobDefinition>,
    margin: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    match run.status {
        RunStatus::Scheduled => Some(start_at(definition?, run)).filter(|start| *start > now),
        RunStatus::RetryScheduled => run.retry_due_at,
        RunStatus::Dispatched | RunStatus::Started => attempt_deadline(run, definition?, margin),
        _ => None,
    }
}

/// Whether anyone alive is on a run's attempt, as the workers' heartbeats tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attendance {
    /// The worker that started the attempt is alive, or, not started yet, a live worker holds its
    /// task (or the workers have not all been heard yet): its outcome will come, however late.
    Attended,
    /// Dispatched, and live workers serve its pool, but none says it holds the task. The task may
    /// be on its way (a worker reading a backlog), or may never reach a worker: a dispatcher that
    /// died between recording the dispatch and sending the task, a broker that lost the record.
    /// Or started, its worker live but no longer saying it holds the run: restarted under the
    /// same id.
    Unclaimed {
        /// When a worker last said it held a task of the run (of this attempt or an earlier one).
        last_held: Option<Timestamp>,
    },
    /// Nobody alive could report on it.
    Unattended,
}

/// [`next_step`] for a run whose attempt is `attendance`.
///
/// The deadline backstop times out only an attempt nobody attends. One a live worker attends
/// waits for its outcome: that worker enforces the task's timeout itself, and a task queued behind
/// others on a busy pool starts when its turn comes. Timing such attempts out only added retries
/// to the queues that made them late, which then made more late: the retry storm of the 10-minute
/// chaos runs.
///
/// An attempt whose task no live worker has held for `unclaimed_limit` since its start (or since
/// a worker last held it) is recorded lost, and retried as the job's policy says: without this, a
/// task that never reached the tasks topic left its run dispatched forever, and an attempt started
/// by a worker since restarted under the same id left its run started forever.
pub fn next_step_given(
    run: &RunState,
    job: JobView<'_>,
    now: Timestamp,
    deadline_margin: Duration,
    unclaimed_limit: Duration,
    runs_of_job: &[RunState],
    attendance: Attendance,
) -> Option<Step> {
    if let (Attendance::Unclaimed { last_held }, JobView::Defined { definition, .. }) =
        (attendance, job)
    {
        let overdue = claim_deadline(run, definition, unclaimed_limit, last_held)
            .is_some_and(|deadline| deadline <= now);
        if matches!(run.status, RunStatus::Dispatched | RunStatus::Started) && overdue {
            return Some(Step::Record(RunEventKind::RunLost {
                attempt: run.attempt,
            }));
        }
    }
    match next_step(run, job, now, deadline_margin, runs_of_job) {
        Some(Step::Record(RunEventKind::RunTimedOut { .. }))
            if attendance != Attendance::Unattended =>
        {
            None
        }
        step => step,
    }
}

/// What the dispatcher knows around a run when it decides the run's next step.
#[derive(Clone, Copy, Debug)]
pub struct Circumstances<'a> {
    pub job: JobView<'a>,
    /// Every run of the job, in slot order (overlap policies look at the others).
    pub runs_of_job: &'a [RunState],
    /// Someone asked for the run to be cancelled.
    pub cancel_requested: bool,
    /// A worker of the run's current attempt is lost.
    pub worker_lost: bool,
    /// Whether a live worker is on the run's attempt.
    pub attendance: Attendance,
    pub now: Timestamp,
    pub deadline_margin: Duration,
    pub unclaimed_limit: Duration,
}

/// Why the dispatcher takes a step: what it logs and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Because {
    CancelRequested,
    /// A worker of the attempt is lost: the attempt with it.
    WorkerLost,
    /// No live worker has held the attempt's task for the unclaimed limit.
    Unclaimed {
        last_held: Option<Timestamp>,
    },
    /// What the run's state and its job call for (a dispatch, a retry, a timeout, ...).
    Due,
}

/// The dispatcher's next step for a run, and why, or `None` while the run waits on someone
/// else. A requested cancel comes first (a cancelled run needs no retry); then the attempt of a
/// lost worker (its outcome will never come); then [`next_step_given`].
pub fn decide_step(run: &RunState, around: &Circumstances<'_>) -> Option<(Step, Because)> {
    if let Some(cancel) = around.cancel_requested.then(|| cancel_step(run)).flatten() {
        return Some((cancel, Because::CancelRequested));
    }
    if let Some(lost) = around.worker_lost.then(|| lost_step(run)).flatten() {
        return Some((lost, Because::WorkerLost));
    }
    let step = next_step_given(
        run,
        around.job,
        around.now,
        around.deadline_margin,
        around.unclaimed_limit,
        around.runs_of_job,
        around.attendance,
    )?;
    let because = match (around.attendance, &step) {
        (Attendance::Unclaimed { last_held }, Step::Record(RunEventKind::RunLost { .. })) => {
            Because::Unclaimed { last_held }
        }
        _ => Because::Due,
    };
    Some((step, because))
}

/// [`wake_at`], and for a dispatched attempt the time its task must have been claimed by (see
/// [`next_step_given`]). Past both, a run still waiting on a worker (attended, or its task held
/// for a place) is looked at again every `margin`, to act should its worker die or its task go
/// unclaimed.
pub fn wake_at_given(
    run: &RunState,
    definition: Option<&JobDefinition>,
    margin: Duration,
    unclaimed_limit: Duration,
    now: Timestamp,
    attendance: Attendance,
) -> Option<Timestamp> {
    let last_held = match attendance {
        Attendance::Unclaimed { last_held } => last_held,
        Attendance::Attended | Attendance::Unattended => None,
    };
    let claim_by = definition
        .filter(|_| matches!(run.status, RunStatus::Dispatched | RunStatus::Started))
        .and_then(|definition| claim_deadline(run, definition, unclaimed_limit, last_held));
    let wake = wake_at(run, definition, margin, now)
        .into_iter()
        .chain(claim_by)
        .min()?;
    let waiting_past_it =
        matches!(run.status, RunStatus::Dispatched | RunStatus::Started) && wake <= now;
    match waiting_past_it {
        true => Some(now + chrono::Duration::from_std(margin).ok()?),
        false => Some(wake),
    }
}

/// How long a dispatched attempt's task may go unheld by any worker before the dispatcher records
/// the attempt lost, unless it is configured otherwise: far longer than a worker takes to read a
/// task and announce it (a heartbeat interval), and than a rebalance takes to hand it over.
pub const DEFAULT_UNCLAIMED_LIMIT: Duration = Duration::from_secs(60);

/// When a dispatched attempt's task must have been held by a worker: `limit` after the attempt's
/// start, or after a worker last said it held it, whichever is later.
fn claim_deadline(
    run: &RunState,
    definition: &JobDefinition,
    limit: Duration,
    last_held: Option<Timestamp>,
) -> Option<Timestamp> {
    let start = attempt_start(run, definition)?;
    let since = last_held.map_or(start, |held| held.max(start));
    Some(since + chrono::Duration::from_std(limit).ok()?)
}

/// Who `RunTimedOut` names when the deadline backstop fires before any worker started the attempt.
pub const DEADLINE_REPORTER: &str = "dispatcher";

/// How long after its task timeout an attempt that never reported is declared timed out by the
/// dispatcher, unless it is configured otherwise: long enough for a worker that killed the task to
/// get its own `RunTimedOut` through.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// The backstop deadline of the current attempt: its start (the dispatch, or the start a task
/// dispatched ahead is held for) + task timeout + margin. Jobs without a timeout have none.
pub(crate) fn attempt_deadline(
    run: &RunState,
    definition: &JobDefinition,
    margin: Duration,
) -> Option<Timestamp> {
    let budget = chrono::Duration::from_std(definition.timeout? + margin).ok()?;
    Some(attempt_start(run, definition)? + budget)
}

/// When the current attempt is due to start: its dispatch, or the start a task dispatched ahead
/// is held for.
fn attempt_start(run: &RunState, definition: &JobDefinition) -> Option<Timestamp> {
    Some(run.dispatched_at?.max(start_at(definition, run)))
}

/// The delay before the attempt after `attempt`. The jitter is drawn from the run id and attempt,
/// not from a random source, so that a dispatcher deciding again after a crash picks the same time.
pub fn retry_delay(backoff: &Backoff, run: &RunState, attempt: u32) -> chrono::Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let base = (backoff.initial.as_secs_f64() * backoff.multiplier.powi(exponent))
        .min(backoff.max.as_secs_f64());
    let spread =
        backoff.jitter * (2.0 * unit_interval(run.run_id.seed() ^ u64::from(attempt)) - 1.0);
    let seconds = (base * (1.0 + spread)).max(0.0);
    chrono::Duration::milliseconds((seconds * 1000.0).round() as i64)
}

/// Maps a seed to [0, 1) with the SplitMix64 finaliser: evenly spread, and the same on every host.
fn unit_interval(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::calendar::{Calendar, CalendarSpec};
    use crate::job::MisfirePolicy;
    use crate::job::{JobSpec, RetryPolicy, ScheduleSpec, ShellTask, TaskSpec};
    use crate::run::tests::t;
    use crate::run::{apply, RunEvent, RunId, TriggerKind};
    use crate::schedule::{DstGap, Schedule};

    const LIMIT: Duration = Duration::from_secs(60);
    const MARGIN: Duration = Duration::from_secs(30);

    fn policy(policy: MisfireKind) -> MisfirePolicy {
        MisfirePolicy {
            policy,
            grace: Duration::from_secs(5),
            catch_up_window: Duration::from_secs(25),
        }
    }

    fn every_10s() -> Schedule {
        Schedule::every(Duration::from_secs(10)).unwrap()
    }

    /// Drives `next_fire` the way the trigger does, from `cursor` until nothing is due.
    fn fires(schedule: &Schedule, cursor: Timestamp, now: Timestamp) -> Vec<Fire> {
        fires_with(schedule, cursor, now, MisfireKind::FireOnce)
    }

    fn fires_with(
        schedule: &Schedule,
        cursor: Timestamp,
        now: Timestamp,
        kind: MisfireKind,
    ) -> Vec<Fire> {
        let mut job = definition();
        job.schedule = schedule.clone();
        job.misfire = policy(kind);
        fires_of(&job, cursor, now)
    }

    /// A pass of the trigger from `cursor`, with no bound on the backlog.
    fn fires_of(job: &JobDefinition, cursor: Timestamp, now: Timestamp) -> Vec<Fire> {
        let mut cursor = SlotCursor {
            last_slot: cursor,
            fired: 0,
        };
        due_fires(job, &mut cursor, now, Duration::ZERO, usize::MAX)
    }

    fn misfired(slot: Timestamp) -> Fire {
        Fire::Skipped(slot, SkipReason::Misfire)
    }

    fn slot(n: i64) -> Timestamp {
        // Slots of every_10s are multiples of 10s since the epoch; t(0) is one of them.
        t(n * 10)
    }

    #[test]
    fn given_a_slot_due_now_when_asked_then_it_runs() {
        assert_eq!(
            fires(&every_10s(), slot(0), slot(1)),
            vec![Fire::Run(slot(1))]
        );
    }

    #[test]
    fn given_a_slot_not_yet_due_when_asked_then_nothing_fires() {
        assert_eq!(
            fires(
                &every_10s(),
                slot(0),
                slot(1) - chrono::Duration::milliseconds(1)
            ),
            vec![]
        );
    }

    #[test]
    fn given_a_slot_late_within_grace_then_it_still_runs() {
        let now = slot(1) + chrono::Duration::seconds(4);
        assert_eq!(fires(&every_10s(), slot(0), now), vec![Fire::Run(slot(1))]);
    }

    #[test]
    fn given_three_missed_slots_then_the_older_misfire_and_the_latest_runs_once() {
        let now = slot(3) + chrono::Duration::seconds(7);
        assert_eq!(
            fires(&every_10s(), slot(0), now),
            vec![misfired(slot(1)), misfired(slot(2)), Fire::Run(slot(3))]
        );
    }

    #[test]
    fn given_missed_slots_and_one_on_time_then_only_the_on_time_slot_runs() {
        let now = slot(3) + chrono::Duration::seconds(1);
        assert_eq!(
            fires(&every_10s(), slot(0), now),
            vec![misfired(slot(1)), misfired(slot(2)), Fire::Run(slot(3))]
        );
    }

    #[test]
    fn given_skip_then_missed_slots_are_all_recorded_and_none_runs_late() {
        let now = slot(3) + chrono::Duration::seconds(7);
        assert_eq!(
            fires_with(&every_10s(), slot(0), now, MisfireKind::Skip),
            vec![misfired(slot(1)), misfired(slot(2)), misfired(slot(3))]
        );
    }

    #[test]
    fn given_skip_then_a_slot_within_grace_still_runs() {
        let now = slot(3) + chrono::Duration::seconds(2);
        assert_eq!(
            fires_with(&every_10s(), slot(1), now, MisfireKind::Skip),
            vec![misfired(slot(2)), Fire::Run(slot(3))]
        );
    }

    #[test]
    fn given_catch_up_then_every_missed_slot_within_the_window_runs_oldest_first() {
        // now is 57 s: slots 1-3 are 47, 37 and 27 s late, outside the 25 s window; 4 and 5 inside.
        let now = slot(5) + chrono::Duration::seconds(7);
        assert_eq!(
            fires_with(&every_10s(), slot(0), now, MisfireKind::CatchUp),
            vec![
                misfired(slot(1)),
                misfired(slot(2)),
                misfired(slot(3)),
                Fire::Run(slot(4)),
                Fire::Run(slot(5))
            ]
        );
    }

    #[test]
    fn given_any_policy_then_every_slot_gets_exactly_one_decision() {
        let now = slot(9) + chrono::Duration::seconds(3);
        for kind in [
            MisfireKind::FireOnce,
            MisfireKind::Skip,
            MisfireKind::CatchUp,
        ] {
            let decided: Vec<_> = fires_with(&every_10s(), slot(0), now, kind)
                .iter()
                .map(|f| f.slot())
                .collect();
            assert_eq!(decided, (1..=9).map(slot).collect::<Vec<_>>(), "{kind:?}");
        }
    }

    /// A daily 02:30 Berlin job, with all triggers down across the spring-forward night
    /// (2026-03-29 has no 02:30, so that day's slot is at 03:00 CEST, 01:00Z): the three missed
    /// days each get one decision, and fire_once runs only the latest.
    #[test]
    fn given_missed_days_across_a_dst_change_then_fire_once_runs_the_latest_day_once() {
        let schedule = Schedule::cron("0 30 2 * * *", "Europe/Berlin").unwrap();
        let cursor: Timestamp = "2026-03-27T01:30:00Z".parse().unwrap();
        let now: Timestamp = "2026-03-30T09:00:00Z".parse().unwrap();
        let decided = fires_with(&schedule, cursor, now, MisfireKind::FireOnce);
        assert_eq!(
            decided,
            vec![
                misfired("2026-03-28T01:30:00Z".parse().unwrap()),
                misfired("2026-03-29T01:00:00Z".parse().unwrap()),
                Fire::Run("2026-03-30T00:30:00Z".parse().unwrap()),
            ]
        );
    }

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn berlin_daily_at_0230(dst_gap: DstGap) -> JobDefinition {
        let mut job = definition();
        job.schedule = Schedule::cron_with("30 2 * * *", "Europe/Berlin", dst_gap).unwrap();
        job
    }

    /// Berlin springs forward on 2027-03-28 at 01:00Z: 02:30 does not exist that day.
    #[test]
    fn given_a_dst_gap_when_the_job_runs_after_gaps_then_the_slot_runs_at_the_end_of_the_gap() {
        let job = berlin_daily_at_0230(DstGap::RunAfter);
        let decided = fires_of(
            &job,
            utc("2027-03-27T12:00:00Z"),
            utc("2027-03-28T01:00:01Z"),
        );
        assert_eq!(decided, vec![Fire::Run(utc("2027-03-28T01:00:00Z"))]);
    }

    #[test]
    fn given_a_dst_gap_when_the_job_skips_gaps_then_the_slot_is_recorded_as_skipped() {
        let job = berlin_daily_at_0230(DstGap::Skip);
        let decided = fires_of(
            &job,
            utc("2027-03-27T12:00:00Z"),
            utc("2027-03-29T00:30:00Z"),
        );
        assert_eq!(
            decided,
            vec![
                Fire::Skipped(utc("2027-03-28T01:00:00Z"), SkipReason::DstGap),
                Fire::Run(utc("2027-03-29T00:30:00Z")),
            ]
        );
        assert_eq!(
            job.upcoming(utc("2027-03-27T12:00:00Z"), 1, 0),
            vec![utc("2027-03-29T00:30:00Z")],
            "a dropped slot is no fire time"
        );
    }

    /// Every missed slot runs, so that a test sees each slot's own decision.
    fn catching_up_a_week() -> MisfirePolicy {
        MisfirePolicy {
            catch_up_window: Duration::from_secs(7 * 86_400),
            ..policy(MisfireKind::CatchUp)
        }
    }

    fn weekend_calendar(timezone: &str) -> Calendar {
        CalendarSpec {
            name: "weekend".into(),
            timezone: Some(timezone.into()),
            weekdays: vec!["sat".into(), "sun".into()],
            ..CalendarSpec::default()
        }
        .validate()
        .unwrap()
    }

    /// 2026-11-27 is a Friday.
    #[test]
    fn given_a_calendar_when_a_slot_falls_on_an_excluded_day_then_it_is_recorded_as_skipped() {
        let mut job = definition();
        job.schedule = Schedule::cron("0 12 * * *", "UTC").unwrap();
        job.calendars = vec![weekend_calendar("UTC")];
        job.misfire = catching_up_a_week();
        let decided = fires_of(
            &job,
            utc("2026-11-27T00:00:00Z"),
            utc("2026-11-30T12:00:00Z"),
        );
        assert_eq!(
            decided,
            vec![
                Fire::Run(utc("2026-11-27T12:00:00Z")),
                Fire::Skipped(utc("2026-11-28T12:00:00Z"), SkipReason::Calendar),
                Fire::Skipped(utc("2026-11-29T12:00:00Z"), SkipReason::Calendar),
                Fire::Run(utc("2026-11-30T12:00:00Z")),
            ]
        );
        assert_eq!(
            job.upcoming(utc("2026-11-27T00:00:00Z"), 2, 0),
            vec![utc("2026-11-27T12:00:00Z"), utc("2026-11-30T12:00:00Z")]
        );
        // An every-second job skips whole excluded days when listing its fire times.
        job.schedule = Schedule::every(Duration::from_secs(1)).unwrap();
        assert_eq!(
            job.upcoming(utc("2026-11-28T08:00:00Z"), 1, 0),
            vec![utc("2026-11-30T00:00:00Z")]
        );
    }

    #[test]
    fn given_a_calendar_in_another_zone_then_its_days_are_local_to_that_zone() {
        let mut job = definition();
        // 23:00Z on Friday is already Saturday in Tokyo.
        job.schedule = Schedule::cron("0 23 * * *", "UTC").unwrap();
        job.calendars = vec![weekend_calendar("Asia/Tokyo")];
        let decided = fires_of(
            &job,
            utc("2026-11-27T00:00:00Z"),
            utc("2026-11-27T23:00:00Z"),
        );
        assert_eq!(
            decided,
            vec![Fire::Skipped(
                utc("2026-11-27T23:00:00Z"),
                SkipReason::Calendar
            )]
        );
    }

    #[test]
    fn given_missed_slots_when_the_latest_is_excluded_then_fire_once_runs_the_latest_runnable_one()
    {
        let mut job = definition();
        job.schedule = Schedule::cron("0 12 * * *", "UTC").unwrap();
        job.calendars = vec![weekend_calendar("UTC")];
        job.misfire = policy(MisfireKind::FireOnce);
        // Down from Thursday to Sunday evening: Friday is the latest slot that would run.
        let decided = fires_of(
            &job,
            utc("2026-11-26T00:00:00Z"),
            utc("2026-11-29T20:00:00Z"),
        );
        assert_eq!(
            decided,
            vec![
                misfired(utc("2026-11-26T12:00:00Z")),
                Fire::Run(utc("2026-11-27T12:00:00Z")),
                Fire::Skipped(utc("2026-11-28T12:00:00Z"), SkipReason::Calendar),
                Fire::Skipped(utc("2026-11-29T12:00:00Z"), SkipReason::Calendar),
            ]
        );
    }

    #[test]
    fn given_several_schedules_then_the_job_fires_at_each_and_a_shared_slot_once() {
        let mut job = definition();
        job.schedule = Schedule::cron("0 9 * * 1-5", "UTC").unwrap();
        job.more_schedules = vec![
            Schedule::cron("0 0 12 ? * SAT", "UTC").unwrap(),
            Schedule::every(Duration::from_secs(6 * 3600)).unwrap(),
        ];
        job.misfire = catching_up_a_week();
        let decided = fires_of(
            &job,
            utc("2026-11-27T08:00:00Z"),
            utc("2026-11-28T13:00:00Z"),
        );
        assert_eq!(
            decided,
            vec![
                Fire::Run(utc("2026-11-27T09:00:00Z")),
                Fire::Run(utc("2026-11-27T12:00:00Z")), // every 6h
                Fire::Run(utc("2026-11-27T18:00:00Z")),
                Fire::Run(utc("2026-11-28T00:00:00Z")),
                Fire::Run(utc("2026-11-28T06:00:00Z")),
                Fire::Run(utc("2026-11-28T12:00:00Z")), // Saturday noon and every 6h: one run
            ]
        );
        assert_eq!(job.to_spec().validate().unwrap(), job);
    }

    /// A bound with nanoseconds (as `Utc::now()` gives) just after a slot: the slot before the
    /// bound is not listed, and each listed slot comes once.
    #[test]
    fn given_a_start_finer_than_a_millisecond_then_slots_start_after_it_once_each() {
        let mut spec = definition().to_spec();
        spec.start_at = Some(slot(3) + chrono::Duration::nanoseconds(400_000));
        let job = spec.validate().unwrap();
        assert_eq!(job.start_at, Some(slot(3)), "bounds are millisecond times");
        assert_eq!(job.upcoming(slot(0), 3, 0), vec![slot(3), slot(4), slot(5)]);
    }

    #[test]
    fn given_max_runs_reached_then_no_fire_times_are_listed() {
        let mut job = definition();
        job.max_runs = Some(3);
        assert_eq!(job.upcoming(slot(0), 5, 1).len(), 2);
        assert_eq!(job.upcoming(slot(0), 5, 3), Vec::<Timestamp>::new());
    }

    #[test]
    fn given_the_clock_jumps_back_then_no_slot_fires_twice() {
        let schedule = every_10s();
        let cursor = slot(5);
        assert_eq!(fires(&schedule, cursor, slot(3)), vec![]);
    }

    #[test]
    fn given_a_one_shot_long_past_then_it_still_runs_once() {
        let schedule = Schedule::at(slot(1));
        assert_eq!(
            fires(&schedule, slot(0), slot(100)),
            vec![Fire::Run(slot(1))]
        );
        assert_eq!(fires(&schedule, slot(1), slot(100)), vec![]);
    }

    pub(crate) fn definition() -> JobDefinition {
        JobSpec {
            signature: None,
            id: "job-1".into(),
            description: None,
            schedule: ScheduleSpec {
                every: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            more_schedules: vec![],
            calendars: vec![],
            task: TaskSpec::Shell(ShellTask {
                env_from: Default::default(),
                command: vec!["true".into()],
                env: Default::default(),
                working_dir: None,
            }),
            pool: "batch".into(),
            timeout: Some(Duration::from_secs(3)),
            misfire: Default::default(),
            retry: RetryPolicy {
                max_attempts: 3,
                backoff: Backoff {
                    initial: Duration::from_secs(2),
                    max: Duration::from_secs(5),
                    multiplier: 3.0,
                    jitter: 0.0,
                },
            },
            overlap: OverlapPolicy::Allow,
            paused: false,
            start_at: None,
            end_at: None,
            max_runs: None,
            jitter: None,
            priority: 0,
            shards: None,
            shard_params: vec![],
        }
        .validate()
        .unwrap()
    }

    fn scheduled_run(definition_offset: i64) -> RunState {
        let job_id = definition().id;
        let run_id = RunId::derive(&job_id, slot(1), TriggerKind::Schedule);
        let kind = RunEventKind::RunScheduled {
            trigger: TriggerKind::Schedule,
            definition_offset,
        };
        apply(
            None,
            &RunEvent {
                job_id,
                run_id,
                scheduled_for: slot(1),
                at: slot(1),
                kind,
                shard: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn given_a_scheduled_run_and_its_definition_then_attempt_one_goes_to_the_jobs_pool() {
        let def = definition();
        let step = next_step(
            &scheduled_run(4),
            JobView::Defined {
                definition: &def,
                offset: 4,
            },
            slot(1),
            MARGIN,
            &[],
        );
        let Some(Step::Dispatch(tasks)) = step else {
            panic!("expected a dispatch, got {step:?}")
        };
        let [task] = tasks.as_slice() else {
            panic!("one task for a job without shards: {tasks:?}")
        };
        assert_eq!(
            (task.attempt, task.pool.as_str(), task.timeout),
            (1, "batch", Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn given_the_definition_is_older_than_the_run_then_the_dispatcher_waits() {
        let def = definition();
        let step = next_step(
            &scheduled_run(9),
            JobView::Defined {
                definition: &def,
                offset: 4,
            },
            slot(1),
            MARGIN,
            &[],
        );
        assert_eq!(step, None);
        assert_eq!(
            next_step(&scheduled_run(9), JobView::Unknown, slot(1), MARGIN, &[]),
            None
        );
    }

    #[test]
    fn given_the_job_was_deleted_then_the_run_is_skipped() {
        let step = next_step(
            &scheduled_run(4),
            JobView::Deleted { offset: 5 },
            slot(1),
            MARGIN,
            &[],
        );
        assert_eq!(
            step,
            Some(Step::Record(RunEventKind::RunSkipped {
                reason: SkipReason::JobDeleted
            }))
        );
    }

    /// Folds `kinds` onto the scheduled run, each event one second after the slot.
    fn after(kinds: Vec<RunEventKind>) -> RunState {
        let mut run = scheduled_run(4);
        for kind in kinds {
            let event = RunEvent {
                job_id: run.job_id.clone(),
                run_id: run.run_id,
                scheduled_for: run.scheduled_for,
                at: slot(1) + chrono::Duration::seconds(1),
                kind,
                shard: None,
            };
            run = apply(Some(&run), &event).unwrap();
        }
        run
    }

    fn failed_attempt(attempt: u32) -> Vec<RunEventKind> {
        vec![
            RunEventKind::RunDispatched {
                attempt,
                pool: "batch".into(),
            },
            RunEventKind::RunFailed {
                attempt,
                worker_id: "w".into(),
                error: "exit 1".into(),
                output: TaskOutput::default(),
                refused: None,
            },
        ]
    }

    fn retry(attempt: u32, due_at: Timestamp) -> RunEventKind {
        RunEventKind::RetryScheduled { attempt, due_at }
    }

    #[test]
    fn given_a_failed_first_attempt_then_the_second_is_due_after_the_initial_backoff() {
        let def = definition();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let run = after(failed_attempt(1));
        let failed_at = slot(1) + chrono::Duration::seconds(1);
        let step = next_step(&run, view, slot(5), MARGIN, &[]);
        assert_eq!(
            step,
            Some(Step::Record(retry(
                2,
                failed_at + chrono::Duration::seconds(2)
            )))
        );
    }

    /// Given a first attempt the worker's policy refused, when the retry policy allows more,
    /// then the run is abandoned at once: another attempt would be refused the same way.
    #[test]
    fn given_a_refused_attempt_then_the_run_is_abandoned_without_a_retry() {
        let def = definition();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let mut kinds = failed_attempt(1);
        if let Some(RunEventKind::RunFailed { refused, .. }) = kinds.last_mut() {
            *refused = Some("program".into());
        }
        let run = after(kinds);
        assert_eq!(run.refused.as_deref(), Some("program"));
        assert_eq!(
            next_step(&run, view, slot(5), MARGIN, &[]),
            Some(Step::Record(RunEventKind::RunAbandoned { attempt: 1 }))
        );
    }

    #[test]
    fn given_a_retry_scheduled_then_it_is_dispatched_only_once_due() {
        let def = definition();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let due = slot(2);
        let mut kinds = failed_attempt(1);
        kinds.push(retry(2, due));
        let run = after(kinds);
        assert_eq!(wake_at(&run, Some(&def), MARGIN, t(0)), Some(due));
        assert_eq!(
            next_step(
                &run,
                view,
                due - chrono::Duration::milliseconds(1),
                MARGIN,
                &[]
            ),
            None
        );
        let Some(Step::Dispatch(tasks)) = next_step(&run, view, due, MARGIN, &[]) else {
            panic!("no dispatch when due")
        };
        assert_eq!(tasks[0].attempt, 2);
    }

    #[test]
    fn given_backoff_then_delays_grow_by_the_multiplier_up_to_the_max() {
        let def = definition();
        let run = scheduled_run(4);
        let delays: Vec<i64> = (1..=4)
            .map(|a| retry_delay(&def.retry.backoff, &run, a).num_milliseconds())
            .collect();
        assert_eq!(
            delays,
            vec![2000, 5000, 5000, 5000],
            "2 s, then 6 s capped at 5 s"
        );
    }

    #[test]
    fn given_jitter_then_delays_spread_within_bounds_and_repeat_for_the_same_run() {
        let backoff = Backoff {
            jitter: 0.5,
            ..definition().retry.backoff
        };
        let run = scheduled_run(4);
        let first = retry_delay(&backoff, &run, 1);
        assert_eq!(
            first,
            retry_delay(&backoff, &run, 1),
            "the same run and attempt get the same delay"
        );
        let spread: Vec<i64> = (0..200)
            .map(|n| {
                let mut other = run.clone();
                other.run_id = RunId::derive(&run.job_id, slot(n), TriggerKind::Schedule);
                retry_delay(&backoff, &other, 1).num_milliseconds()
            })
            .collect();
        assert!(
            spread.iter().all(|ms| (1000..=3000).contains(ms)),
            "{spread:?}"
        );
        assert!(
            spread.iter().any(|ms| *ms < 1500) && spread.iter().any(|ms| *ms > 2500),
            "jitter does not spread"
        );
    }

    #[test]
    fn given_the_last_allowed_attempt_failed_then_the_run_is_abandoned() {
        let def = definition();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let mut kinds = failed_attempt(1);
        kinds.push(retry(2, slot(2)));
        kinds.extend(failed_attempt(2));
        kinds.push(retry(3, slot(3)));
        kinds.extend(failed_attempt(3));
        let run = after(kinds);
        assert_eq!(
            next_step(&run, view, slot(9), MARGIN, &[]),
            Some(Step::Record(RunEventKind::RunAbandoned { attempt: 3 }))
        );
    }

    #[test]
    fn given_a_timed_out_or_lost_attempt_then_it_is_retried_like_a_failure() {
        let def = definition();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        for outcome in [
            RunEventKind::RunTimedOut {
                attempt: 1,
                worker_id: "w".into(),
                output: TaskOutput::default(),
            },
            RunEventKind::RunLost { attempt: 1 },
        ] {
            let run = after(vec![
                RunEventKind::RunDispatched {
                    attempt: 1,
                    pool: "batch".into(),
                },
                outcome,
            ]);
            assert!(matches!(
                next_step(&run, view, slot(5), MARGIN, &[]),
                Some(Step::Record(RunEventKind::RetryScheduled {
                    attempt: 2,
                    ..
                }))
            ));
        }
    }

    #[test]
    fn given_a_dead_worker_then_only_an_attempt_it_started_is_lost() {
        let dispatched = RunEventKind::RunDispatched {
            attempt: 1,
            pool: "batch".into(),
        };
        let started = RunEventKind::RunStarted {
            attempt: 1,
            worker_id: "w".into(),
        };
        let succeeded = RunEventKind::RunSucceeded {
            attempt: 1,
            worker_id: "w".into(),
            output: TaskOutput::default(),
        };
        assert_eq!(lost_step(&after(vec![dispatched.clone()])), None);
        assert_eq!(
            lost_step(&after(vec![dispatched.clone(), started.clone()])),
            Some(Step::Record(RunEventKind::RunLost { attempt: 1 }))
        );
        assert_eq!(
            lost_step(&after(vec![dispatched, started, succeeded])),
            None
        );
    }

    #[test]
    fn given_a_sharded_job_then_a_dispatch_has_one_task_per_shard_left_with_its_param() {
        let mut spec = definition().to_spec();
        spec.shards = Some(3);
        spec.shard_params = vec!["eu".into(), "us".into(), "ap".into()];
        let def = spec.validate().unwrap();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let shards = |step: Option<Step>| match step {
            Some(Step::Dispatch(tasks)) => tasks
                .into_iter()
                .map(|t| {
                    let shard = t.shard.expect("a shard");
                    (shard.index, shard.total, shard.param.unwrap(), t.attempt)
                })
                .collect::<Vec<_>>(),
            other => panic!("expected a dispatch, got {other:?}"),
        };
        let run = scheduled_run(4);
        assert_eq!(
            shards(next_step(&run, view, slot(1), MARGIN, &[])),
            [
                (0, 3, "eu".to_string(), 1),
                (1, 3, "us".to_string(), 1),
                (2, 3, "ap".to_string(), 1)
            ]
        );
        // Shard 1 succeeded before shard 0 failed: the retry runs shards 0 and 2.
        let shard_event = |index, kind| RunEvent {
            job_id: run.job_id.clone(),
            run_id: run.run_id,
            scheduled_for: run.scheduled_for,
            at: slot(2),
            kind,
            shard: Some(crate::run::ShardOf { index, total: 3 }),
        };
        let mut state = apply(
            Some(&run),
            &RunEvent {
                shard: None,
                ..shard_event(
                    0,
                    RunEventKind::RunDispatched {
                        attempt: 1,
                        pool: "batch".into(),
                    },
                )
            },
        )
        .unwrap();
        for (index, kind) in [
            (
                1,
                RunEventKind::RunSucceeded {
                    attempt: 1,
                    worker_id: "w".into(),
                    output: TaskOutput::default(),
                },
            ),
            (
                0,
                RunEventKind::RunFailed {
                    attempt: 1,
                    worker_id: "w".into(),
                    error: "exit 1".into(),
                    output: TaskOutput::default(),
                    refused: None,
                },
            ),
        ] {
            state = apply(Some(&state), &shard_event(index, kind)).unwrap();
        }
        let retry = next_step(&state, view, slot(3), MARGIN, &[]).unwrap();
        let Step::Record(kind) = retry else {
            panic!("expected the retry decision, got {retry:?}")
        };
        state = apply(
            Some(&state),
            &RunEvent {
                shard: None,
                at: slot(30),
                ..shard_event(0, kind)
            },
        )
        .unwrap();
        let again: Vec<_> = shards(next_step(&state, view, slot(60), MARGIN, &[]))
            .into_iter()
            .map(|(index, _, _, attempt)| (index, attempt))
            .collect();
        assert_eq!(again, [(0, 2), (2, 2)]);
    }

    #[test]
    fn given_a_job_without_retries_then_a_failure_abandons_the_run() {
        let mut def = definition();
        def.retry = RetryPolicy::default();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let run = after(failed_attempt(1));
        assert_eq!(
            next_step(&run, view, slot(5), MARGIN, &[]),
            Some(Step::Record(RunEventKind::RunAbandoned { attempt: 1 }))
        );
    }

    #[test]
    fn given_an_attempt_silent_past_its_deadline_then_the_dispatcher_times_it_out() {
        let def = definition();
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let run = after(vec![RunEventKind::RunDispatched {
            attempt: 1,
            pool: "batch".into(),
        }]);
        // Dispatched at slot(1)+1s; timeout 3 s; margin 30 s.
        let deadline = slot(1) + chrono::Duration::seconds(34);
        assert_eq!(wake_at(&run, Some(&def), MARGIN, t(0)), Some(deadline));
        assert_eq!(
            next_step(
                &run,
                view,
                deadline - chrono::Duration::milliseconds(1),
                MARGIN,
                &[]
            ),
            None
        );
        let step = next_step(&run, view, deadline, MARGIN, &[]);
        let expected = RunEventKind::RunTimedOut {
            attempt: 1,
            worker_id: DEADLINE_REPORTER.into(),
            output: TaskOutput::default(),
        };
        assert_eq!(step, Some(Step::Record(expected)));
    }

    #[test]
    fn given_an_attempt_a_live_worker_attends_then_its_deadline_waits_and_is_looked_at_again() {
        let job = definition();
        let view = JobView::Defined {
            definition: &job,
            offset: 4,
        };
        let run = after(vec![RunEventKind::RunDispatched {
            attempt: 1,
            pool: "batch".into(),
        }]);
        // Given an attempt past its deadline (dispatched at slot(1)+1s; timeout 3 s; margin 30 s)
        let past = slot(1) + chrono::Duration::seconds(60);
        assert!(matches!(
            next_step(&run, view, past, MARGIN, &[]),
            Some(Step::Record(RunEventKind::RunTimedOut { .. }))
        ));
        // When a live worker attends it, then it waits, and is looked at again a margin later
        let given = |attendance| next_step_given(&run, view, past, MARGIN, LIMIT, &[], attendance);
        let wake = |attendance| wake_at_given(&run, Some(&job), MARGIN, LIMIT, past, attendance);
        assert_eq!(given(Attendance::Attended), None);
        assert_eq!(
            wake(Attendance::Attended),
            Some(past + chrono::Duration::from_std(MARGIN).unwrap())
        );
        // When nobody attends it, then the backstop times it out as before
        assert!(matches!(
            given(Attendance::Unattended),
            Some(Step::Record(RunEventKind::RunTimedOut { .. }))
        ));
    }

    /// A job without a timeout, so that no deadline comes before the unclaimed limit.
    fn untimed() -> JobDefinition {
        let mut job = definition();
        job.timeout = None;
        job
    }

    /// The scheduled run, dispatched (attempt 1) at slot(1)+1s.
    fn dispatched_once() -> RunState {
        after(vec![RunEventKind::RunDispatched {
            attempt: 1,
            pool: "batch".into(),
        }])
    }

    /// The scheduled run, dispatched and started on worker `w` (attempt 1) at slot(1)+1s.
    fn started_once() -> RunState {
        after(vec![
            RunEventKind::RunDispatched {
                attempt: 1,
                pool: "batch".into(),
            },
            RunEventKind::RunStarted {
                attempt: 1,
                worker_id: "w".into(),
            },
        ])
    }

    #[test]
    fn given_a_dispatched_task_no_worker_holds_then_it_is_lost_once_the_limit_has_passed() {
        let job = untimed();
        let view = view(&job, 4);
        // Given an attempt dispatched at slot(1)+1s, on a pool live workers serve, whose task no
        // worker has said it holds
        let run = dispatched_once();
        let dispatched = slot(1) + chrono::Duration::seconds(1);
        let limit = chrono::Duration::from_std(LIMIT).unwrap();
        let unclaimed = Attendance::Unclaimed { last_held: None };
        let given = |now| next_step_given(&run, view, now, MARGIN, LIMIT, &[], unclaimed);
        // When the limit has not passed, then it waits, and is looked at again when it has
        assert_eq!(
            given(dispatched + limit - chrono::Duration::seconds(1)),
            None
        );
        assert_eq!(
            wake_at_given(&run, Some(&job), MARGIN, LIMIT, dispatched, unclaimed),
            Some(dispatched + limit)
        );
        // When it has, then the attempt is recorded lost (and retried as the policy says)
        let lost = Some(Step::Record(RunEventKind::RunLost { attempt: 1 }));
        assert_eq!(given(dispatched + limit), lost);
        // With a timeout whose deadline passed first, it is lost all the same, not timed out
        let timed = definition();
        assert_eq!(
            next_step_given(
                &run,
                self::view(&timed, 4),
                dispatched + limit,
                MARGIN,
                LIMIT,
                &[],
                unclaimed
            ),
            lost
        );
    }

    #[test]
    fn given_a_dispatched_task_a_worker_held_lately_then_the_limit_counts_from_then() {
        let job = untimed();
        let view = view(&job, 4);
        let run = dispatched_once();
        let dispatched = slot(1) + chrono::Duration::seconds(1);
        let limit = chrono::Duration::from_std(LIMIT).unwrap();
        // Given a worker held the task until 50 s after the dispatch (it finished the task, or
        // died with it, and its outcome or its redelivery is still on the way)
        let held = dispatched + chrono::Duration::seconds(50);
        let unclaimed = Attendance::Unclaimed {
            last_held: Some(held),
        };
        let given = |now| next_step_given(&run, view, now, MARGIN, LIMIT, &[], unclaimed);
        // When the limit has passed since the dispatch but not since the hold, then it waits
        assert_eq!(
            given(dispatched + limit + chrono::Duration::seconds(1)),
            None
        );
        assert_eq!(
            wake_at_given(&run, Some(&job), MARGIN, LIMIT, dispatched, unclaimed),
            Some(held + limit)
        );
        // When it has passed since the hold too, then the attempt is lost
        assert_eq!(
            given(held + limit),
            Some(Step::Record(RunEventKind::RunLost { attempt: 1 }))
        );
        // And a hold from before the dispatch (an earlier attempt's) does not defer it
        let earlier = Attendance::Unclaimed {
            last_held: Some(dispatched - chrono::Duration::seconds(30)),
        };
        assert_eq!(
            next_step_given(&run, view, dispatched + limit, MARGIN, LIMIT, &[], earlier),
            Some(Step::Record(RunEventKind::RunLost { attempt: 1 }))
        );
    }

    #[test]
    fn given_a_held_attempt_then_it_waits_and_given_a_started_one_no_longer_held_then_it_is_lost() {
        let job = definition();
        let view = view(&job, 4);
        let dispatched = dispatched_once();
        let started = started_once();
        let late = slot(1) + chrono::Duration::from_std(LIMIT).unwrap() * 2;
        // Given a task a live worker holds, when the limit has long passed, then it waits
        assert_eq!(
            next_step_given(
                &dispatched,
                view,
                late,
                MARGIN,
                LIMIT,
                &[],
                Attendance::Attended
            ),
            None
        );
        // Given a started attempt whose live worker last listed it a limit ago (restarted under
        // the same id), then it is lost
        let held_until = late - chrono::Duration::from_std(LIMIT).unwrap();
        let unclaimed = Attendance::Unclaimed {
            last_held: Some(held_until),
        };
        assert_eq!(
            next_step_given(&started, view, late, MARGIN, LIMIT, &[], unclaimed),
            Some(Step::Record(RunEventKind::RunLost { attempt: 1 }))
        );
        // and not a moment before
        let sooner = late - chrono::Duration::seconds(1);
        assert_eq!(
            next_step_given(&started, view, sooner, MARGIN, LIMIT, &[], unclaimed),
            None
        );
    }

    #[test]
    fn given_a_job_without_timeout_then_an_attempt_has_no_deadline() {
        let mut def = definition();
        def.timeout = None;
        let view = JobView::Defined {
            definition: &def,
            offset: 4,
        };
        let run = after(vec![RunEventKind::RunDispatched {
            attempt: 1,
            pool: "batch".into(),
        }]);
        assert_eq!(wake_at(&run, Some(&def), MARGIN, t(0)), None);
        assert_eq!(next_step(&run, view, slot(1000), MARGIN, &[]), None);
    }

    /// A run of job-1 for slot n (seconds), folded from `kinds`.
    fn run_at(n: i64, kinds: Vec<RunEventKind>) -> RunState {
        let job_id = definition().id;
        let run_id = RunId::derive(&job_id, slot(n), TriggerKind::Schedule);
        let scheduled = RunEventKind::RunScheduled {
            trigger: TriggerKind::Schedule,
            definition_offset: 4,
        };
        let mut run: Option<RunState> = None;
        for kind in std::iter::once(scheduled).chain(kinds) {
            let event = RunEvent {
                job_id: job_id.clone(),
                run_id,
                scheduled_for: slot(n),
                at: slot(n),
                kind,
                shard: None,
            };
            run = Some(apply(run.as_ref(), &event).unwrap());
        }
        run.unwrap()
    }

    fn succeeded(n: i64) -> RunState {
        let done = RunEventKind::RunSucceeded {
            attempt: 1,
            worker_id: "w".into(),
            output: TaskOutput::default(),
        };
        run_at(
            n,
            vec![
                RunEventKind::RunDispatched {
                    attempt: 1,
                    pool: "batch".into(),
                },
                done,
            ],
        )
    }

    fn running(n: i64) -> RunState {
        run_at(
            n,
            vec![RunEventKind::RunDispatched {
                attempt: 1,
                pool: "batch".into(),
            }],
        )
    }

    fn with_overlap(policy: OverlapPolicy) -> JobDefinition {
        let mut def = definition();
        def.overlap = policy;
        def
    }

    fn decide(policy: OverlapPolicy, runs: &[RunState], which: usize) -> Option<Step> {
        decide_at(policy, runs, which, slot(9))
    }

    fn decide_at(
        policy: OverlapPolicy,
        runs: &[RunState],
        which: usize,
        now: Timestamp,
    ) -> Option<Step> {
        let def = with_overlap(policy);
        next_step(
            &runs[which],
            JobView::Defined {
                definition: &def,
                offset: 4,
            },
            now,
            MARGIN,
            runs,
        )
    }

    fn skipped() -> Option<Step> {
        Some(Step::Record(RunEventKind::RunSkipped {
            reason: SkipReason::Overlap,
        }))
    }

    #[test]
    fn given_allow_then_a_run_is_dispatched_beside_an_active_one() {
        let runs = [running(1), run_at(2, vec![])];
        assert!(matches!(
            decide(OverlapPolicy::Allow, &runs, 1),
            Some(Step::Dispatch(_))
        ));
    }

    #[test]
    fn given_forbid_then_a_run_due_while_another_is_active_is_skipped() {
        let runs = [running(1), run_at(2, vec![])];
        assert_eq!(decide(OverlapPolicy::Forbid, &runs, 1), skipped());
    }

    #[test]
    fn given_forbid_and_nothing_active_then_the_run_is_dispatched() {
        let finished = succeeded(1);
        let runs = [finished, run_at(2, vec![])];
        assert!(matches!(
            decide(OverlapPolicy::Forbid, &runs, 1),
            Some(Step::Dispatch(_))
        ));
    }

    #[test]
    fn given_a_run_waiting_for_its_retry_then_it_still_holds_the_job() {
        let mut kinds = failed_attempt(1);
        kinds.push(retry(2, slot(20)));
        let runs = [run_at(1, kinds), run_at(2, vec![])];
        assert_eq!(decide(OverlapPolicy::Forbid, &runs, 1), skipped());
    }

    #[test]
    fn given_queue_then_one_run_waits_and_the_next_is_skipped() {
        let runs = [running(1), run_at(2, vec![]), run_at(3, vec![])];
        assert_eq!(
            decide(OverlapPolicy::Queue, &runs, 1),
            None,
            "the first waits"
        );
        assert_eq!(
            decide(OverlapPolicy::Queue, &runs, 2),
            skipped(),
            "only one may wait"
        );
    }

    #[test]
    fn given_queue_then_the_waiting_run_goes_once_the_active_one_is_over() {
        let done = succeeded(1);
        let runs = [done, run_at(2, vec![])];
        assert!(matches!(
            decide(OverlapPolicy::Queue, &runs, 1),
            Some(Step::Dispatch(_))
        ));
    }

    #[test]
    fn given_queue_all_then_runs_wait_in_slot_order_up_to_the_limit() {
        let mut runs = vec![running(0)];
        runs.extend((1..=(MAX_QUEUED as i64 + 1)).map(|n| run_at(n, vec![])));
        assert_eq!(decide(OverlapPolicy::QueueAll, &runs, 1), None);
        assert_eq!(
            decide(OverlapPolicy::QueueAll, &runs, MAX_QUEUED),
            None,
            "the 100th waits"
        );
        // Decided at its start, once all of them are due.
        let last_due = slot(MAX_QUEUED as i64 + 1);
        assert_eq!(
            decide_at(OverlapPolicy::QueueAll, &runs, MAX_QUEUED + 1, last_due),
            skipped(),
            "the 101st is skipped"
        );
        // With nothing active, only the oldest waiting run may go; the others keep waiting.
        let waiting: Vec<RunState> = (1..=3).map(|n| run_at(n, vec![])).collect();
        assert!(matches!(
            decide(OverlapPolicy::QueueAll, &waiting, 0),
            Some(Step::Dispatch(_))
        ));
        assert_eq!(decide(OverlapPolicy::QueueAll, &waiting, 1), None);
    }

    #[test]
    fn given_replace_then_the_active_run_is_cancelled_and_the_new_one_dispatched_after() {
        let runs = [running(1), run_at(2, vec![])];
        assert_eq!(
            decide(OverlapPolicy::Replace, &runs, 0),
            Some(Step::Cancel { attempt: 1 })
        );
        assert_eq!(
            decide(OverlapPolicy::Replace, &runs, 1),
            None,
            "it waits for the cancel"
        );
        let cancelled = run_at(
            1,
            vec![
                RunEventKind::RunDispatched {
                    attempt: 1,
                    pool: "batch".into(),
                },
                RunEventKind::RunCancelled { attempt: 1 },
            ],
        );
        let runs = [cancelled, run_at(2, vec![])];
        assert!(matches!(
            decide(OverlapPolicy::Replace, &runs, 1),
            Some(Step::Dispatch(_))
        ));
    }

    #[test]
    fn given_replace_then_an_older_run_that_never_started_is_skipped() {
        let runs = [run_at(1, vec![]), run_at(2, vec![])];
        assert_eq!(decide(OverlapPolicy::Replace, &runs, 0), skipped());
    }

    #[test]
    fn given_a_cancel_request_then_only_waiting_or_running_runs_are_cancelled() {
        assert_eq!(
            cancel_step(&run_at(1, vec![])),
            Some(Step::Cancel { attempt: 0 })
        );
        assert_eq!(cancel_step(&running(1)), Some(Step::Cancel { attempt: 1 }));
        let done = succeeded(1);
        assert_eq!(cancel_step(&done), None);
    }

    #[test]
    fn given_start_and_end_then_only_slots_inside_the_window_fire() {
        let mut job = definition();
        job.misfire = policy(MisfireKind::CatchUp);
        job.start_at = Some(slot(3) - chrono::Duration::seconds(1));
        job.end_at = Some(slot(5));
        let fired = fires_of(&job, slot(0), slot(5));
        assert_eq!(
            fired,
            vec![Fire::Run(slot(3)), Fire::Run(slot(4)), Fire::Run(slot(5))]
        );
        assert_eq!(
            fires_of(&job, slot(5), slot(50)),
            vec![],
            "nothing after end_at"
        );
        assert_eq!(job.upcoming(slot(0), 5, 0), vec![slot(3), slot(4), slot(5)]);
    }

    #[test]
    fn given_max_runs_then_the_job_stops_after_that_many_runs() {
        let mut job = definition();
        job.misfire = policy(MisfireKind::CatchUp);
        job.max_runs = Some(2);
        let fired = fires_of(&job, slot(0), slot(3));
        assert_eq!(fired, vec![Fire::Run(slot(1)), Fire::Run(slot(2))]);
        assert_eq!(next_fire(&job, slot(2), slot(9), 2, Duration::ZERO), None);
    }

    #[test]
    fn given_jitter_then_each_slot_fires_later_by_a_fixed_amount_within_the_bound() {
        let mut job = definition();
        job.jitter = Some(Duration::from_secs(4));
        let delays: Vec<i64> = (1..=50)
            .map(|n| (fire_time(&job, slot(n)) - slot(n)).num_milliseconds())
            .collect();
        assert!(delays.iter().all(|ms| (0..4000).contains(ms)), "{delays:?}");
        assert!(
            delays.iter().any(|ms| *ms < 1000) && delays.iter().any(|ms| *ms > 3000),
            "not spread: {delays:?}"
        );
        assert_eq!(fire_time(&job, slot(7)), fire_time(&job, slot(7)));
        let due = fire_time(&job, slot(1));
        assert_eq!(
            next_fire(
                &job,
                slot(0),
                due - chrono::Duration::milliseconds(1),
                0,
                Duration::ZERO
            ),
            None
        );
        assert_eq!(
            next_fire(&job, slot(0), due, 0, Duration::ZERO),
            Some(Fire::Run(slot(1)))
        );
    }

    // Fire ahead, start on time: a slot is fired and dispatched a lead before it is due, held on
    // its worker, and started at its slot; what depends on the moment is still decided by it.

    const LEAD: Duration = Duration::from_secs(2);

    fn before(at: Timestamp, seconds: i64) -> Timestamp {
        at - chrono::Duration::seconds(seconds)
    }

    fn view(def: &JobDefinition, offset: i64) -> JobView<'_> {
        JobView::Defined {
            definition: def,
            offset,
        }
    }

    fn around<'a>(job: JobView<'a>, now: Timestamp, attendance: Attendance) -> Circumstances<'a> {
        Circumstances {
            job,
            runs_of_job: &[],
            cancel_requested: false,
            worker_lost: false,
            attendance,
            now,
            deadline_margin: MARGIN,
            unclaimed_limit: LIMIT,
        }
    }

    #[test]
    fn given_an_attempt_given_up_on_a_workers_behalf_then_it_is_stopped_after_the_record() {
        let now = slot(2);
        for kind in [
            RunEventKind::RunLost { attempt: 1 },
            RunEventKind::RunTimedOut {
                attempt: 1,
                worker_id: "dispatcher".into(),
                output: TaskOutput::default(),
            },
        ] {
            let taken = take_step(&started_once(), Step::Record(kind.clone()), now);
            assert_eq!(taken.event.kind, kind);
            assert_eq!(taken.event.at, now);
            assert_eq!(taken.then, vec![FollowUp::Stop { attempt: Some(1) }]);
        }
        // A decision about a run no worker has, such as abandoning it, stops nothing
        let abandoned = take_step(
            &started_once(),
            Step::Record(RunEventKind::RunAbandoned { attempt: 1 }),
            now,
        );
        assert_eq!(abandoned.then, vec![]);
    }

    #[test]
    fn given_a_cancel_then_only_a_run_on_a_worker_is_stopped() {
        let now = slot(2);
        let on_a_worker = take_step(&started_once(), Step::Cancel { attempt: 1 }, now);
        assert_eq!(
            on_a_worker.event.kind,
            RunEventKind::RunCancelled { attempt: 1 }
        );
        assert_eq!(on_a_worker.then, vec![FollowUp::Stop { attempt: None }]);
        let waiting = take_step(&scheduled_run(4), Step::Cancel { attempt: 0 }, now);
        assert_eq!(waiting.then, vec![]);
    }

    #[test]
    fn given_a_dispatch_then_the_record_names_the_pool_and_the_tasks_follow_it() {
        let run = scheduled_run(4);
        let Some(Step::Dispatch(tasks)) =
            next_step(&run, view(&definition(), 4), slot(1), MARGIN, &[])
        else {
            panic!("a scheduled run of a defined job is dispatched");
        };
        let taken = take_step(&run, Step::Dispatch(tasks.clone()), slot(1));
        assert_eq!(
            taken.event.kind,
            RunEventKind::RunDispatched {
                attempt: 1,
                pool: tasks[0].pool.clone(),
            }
        );
        let published: Vec<FollowUp> = tasks
            .into_iter()
            .map(|task| FollowUp::Publish(Box::new(task)))
            .collect();
        assert_eq!(taken.then, published);
    }

    #[test]
    fn given_a_cancel_and_a_lost_worker_then_the_cancel_comes_first() {
        let job = untimed();
        let now = slot(2);
        let both = Circumstances {
            cancel_requested: true,
            worker_lost: true,
            ..around(view(&job, 4), now, Attendance::Unattended)
        };
        assert_eq!(
            decide_step(&started_once(), &both),
            Some((Step::Cancel { attempt: 1 }, Because::CancelRequested))
        );
    }

    #[test]
    fn given_a_lost_worker_then_its_started_attempt_is_lost_before_anything_else_is_decided() {
        let job = definition();
        // Given a started attempt whose deadline has also passed
        let late = slot(1) + chrono::Duration::hours(1);
        let lost_worker = Circumstances {
            worker_lost: true,
            ..around(view(&job, 4), late, Attendance::Unattended)
        };
        // Then the attempt is lost with its worker, not timed out
        assert_eq!(
            decide_step(&started_once(), &lost_worker),
            Some((
                Step::Record(RunEventKind::RunLost { attempt: 1 }),
                Because::WorkerLost
            ))
        );
        // A dispatched attempt was on no worker: a lost worker changes nothing for it
        let waiting = decide_step(
            &dispatched_once(),
            &Circumstances {
                attendance: Attendance::Attended,
                ..lost_worker
            },
        );
        assert_eq!(waiting, None);
    }

    #[test]
    fn given_an_attempt_nobody_holds_past_the_limit_then_it_is_lost_as_unclaimed() {
        let job = untimed();
        let last_held = Some(slot(1));
        let unclaimed = Attendance::Unclaimed { last_held };
        let late = slot(1) + chrono::Duration::from_std(LIMIT).unwrap() * 2;
        assert_eq!(
            decide_step(&started_once(), &around(view(&job, 4), late, unclaimed)),
            Some((
                Step::Record(RunEventKind::RunLost { attempt: 1 }),
                Because::Unclaimed { last_held }
            ))
        );
        // Held by a live worker, the same attempt waits for its outcome
        assert_eq!(
            decide_step(
                &started_once(),
                &around(view(&job, 4), late, Attendance::Attended)
            ),
            None
        );
    }

    #[test]
    fn given_a_lead_then_a_slot_fires_that_much_before_it_is_due_and_not_earlier() {
        let job = definition();
        assert_eq!(next_fire(&job, slot(0), before(slot(1), 3), 0, LEAD), None);
        assert_eq!(
            next_fire(&job, slot(0), before(slot(1), 2), 0, LEAD),
            Some(Fire::Run(slot(1)))
        );
    }

    #[test]
    fn given_a_lead_then_lateness_for_the_misfire_policy_still_counts_from_the_slot() {
        let mut job = definition();
        job.misfire = policy(MisfireKind::Skip);
        // 5 s of grace: 4 s past the slot it runs, 6 s past it is missed, whatever the lead.
        let late = |seconds| slot(1) + chrono::Duration::seconds(seconds);
        assert_eq!(
            next_fire(&job, slot(0), late(4), 0, LEAD),
            Some(Fire::Run(slot(1)))
        );
        assert_eq!(
            next_fire(&job, slot(0), late(6), 0, LEAD),
            Some(misfired(slot(1)))
        );
    }

    #[test]
    fn given_a_run_fired_ahead_then_it_is_dispatched_at_once_to_start_at_its_slot() {
        let mut def = definition();
        def.jitter = Some(Duration::from_secs(4));
        let step = next_step(
            &scheduled_run(4),
            view(&def, 4),
            before(slot(1), 2),
            MARGIN,
            &[],
        );
        let Some(Step::Dispatch(tasks)) = step else {
            panic!("expected a dispatch, got {step:?}")
        };
        assert_eq!(tasks[0].start_at, Some(fire_time(&def, slot(1))));
        assert!(tasks[0].start_at > Some(slot(1)), "the jitter is kept");
    }

    #[test]
    fn given_a_retry_then_its_attempt_starts_as_soon_as_it_arrives() {
        let def = definition();
        let mut kinds = failed_attempt(1);
        kinds.push(retry(2, slot(2)));
        let step = next_step(&after(kinds), view(&def, 4), slot(3), MARGIN, &[]);
        let Some(Step::Dispatch(tasks)) = step else {
            panic!("expected a dispatch, got {step:?}")
        };
        assert_eq!((tasks[0].attempt, tasks[0].start_at), (2, None));
    }

    #[test]
    fn given_forbid_and_a_run_fired_ahead_while_another_runs_then_it_is_decided_at_its_start() {
        let def = with_overlap(OverlapPolicy::Forbid);
        let runs = [running(1), run_at(2, vec![])];
        // Before its start the run waits, and the dispatcher comes back at the start.
        let early = before(slot(2), 2);
        assert_eq!(
            next_step(&runs[1], view(&def, 4), early, MARGIN, &runs),
            None
        );
        assert_eq!(wake_at(&runs[1], Some(&def), MARGIN, early), Some(slot(2)));
        // At its start: skipped if the other still runs, dispatched if it is over by then.
        assert_eq!(
            next_step(&runs[1], view(&def, 4), slot(2), MARGIN, &runs),
            skipped()
        );
        let over = [succeeded(1), run_at(2, vec![])];
        assert!(matches!(
            next_step(&over[1], view(&def, 4), slot(2), MARGIN, &over),
            Some(Step::Dispatch(_))
        ));
    }

    #[test]
    fn given_forbid_and_nothing_running_then_a_run_fired_ahead_is_dispatched_ahead() {
        let def = with_overlap(OverlapPolicy::Forbid);
        let runs = [succeeded(1), run_at(2, vec![])];
        assert!(matches!(
            next_step(&runs[1], view(&def, 4), before(slot(2), 2), MARGIN, &runs),
            Some(Step::Dispatch(_))
        ));
    }

    #[test]
    fn given_replace_then_a_run_fired_ahead_replaces_the_running_one_only_at_its_start() {
        let def = with_overlap(OverlapPolicy::Replace);
        let runs = [running(1), run_at(2, vec![])];
        let early = before(slot(2), 2);
        assert_eq!(
            next_step(&runs[0], view(&def, 4), early, MARGIN, &runs),
            None
        );
        assert_eq!(
            next_step(&runs[0], view(&def, 4), slot(2), MARGIN, &runs),
            Some(Step::Cancel { attempt: 1 })
        );
    }

    fn dispatched_ahead() -> RunState {
        // scheduled_run is fired from offset 4 for slot(1); dispatched 2 s before it.
        after(vec![RunEventKind::RunDispatched {
            attempt: 1,
            pool: "batch".into(),
        }])
    }

    #[test]
    fn given_a_pause_read_before_the_start_then_the_run_fired_ahead_is_cancelled() {
        let mut paused = definition();
        paused.paused = true;
        let early = before(slot(1), 1);
        for run in [scheduled_run(4), dispatched_ahead()] {
            assert_eq!(
                next_step(&run, view(&paused, 5), early, MARGIN, &[]),
                Some(Step::Cancel {
                    attempt: run.attempt
                }),
                "{:?}",
                run.status
            );
        }
    }

    #[test]
    fn given_a_pause_read_too_close_to_the_start_then_the_dispatched_run_goes_on() {
        let mut paused = definition();
        paused.paused = true;
        let close = slot(1) - STOP_MARGIN + chrono::Duration::milliseconds(1);
        assert_eq!(
            next_step(&dispatched_ahead(), view(&paused, 5), close, MARGIN, &[]),
            None
        );
        // A run no worker holds yet is still stopped at once.
        assert_eq!(
            next_step(&scheduled_run(4), view(&paused, 5), close, MARGIN, &[]),
            Some(Step::Cancel { attempt: 0 })
        );
    }

    #[test]
    fn given_a_pause_read_after_the_start_then_the_run_goes_on() {
        let mut paused = definition();
        paused.paused = true;
        let late = slot(1) + chrono::Duration::milliseconds(1);
        assert_eq!(
            next_step(&dispatched_ahead(), view(&paused, 5), late, MARGIN, &[]),
            None
        );
    }

    #[test]
    fn given_a_new_schedule_without_the_slot_then_the_run_fired_ahead_is_cancelled() {
        let mut moved = definition();
        moved.schedule = Schedule::every(Duration::from_secs(7)).unwrap();
        assert_eq!(
            next_step(
                &dispatched_ahead(),
                view(&moved, 5),
                before(slot(1), 1),
                MARGIN,
                &[]
            ),
            Some(Step::Cancel { attempt: 1 })
        );
    }

    #[test]
    fn given_a_deletion_read_before_the_start_then_the_run_fired_ahead_is_cancelled() {
        let step = next_step(
            &dispatched_ahead(),
            JobView::Deleted { offset: 5 },
            before(slot(1), 1),
            MARGIN,
            &[],
        );
        assert_eq!(step, Some(Step::Cancel { attempt: 1 }));
    }

    #[test]
    fn given_an_edit_that_keeps_the_slot_then_the_run_fired_ahead_goes_on() {
        let mut edited = definition();
        edited.timeout = Some(Duration::from_secs(9));
        assert_eq!(
            next_step(
                &dispatched_ahead(),
                view(&edited, 5),
                before(slot(1), 1),
                MARGIN,
                &[]
            ),
            None
        );
    }

    #[test]
    fn given_a_task_dispatched_ahead_then_its_deadline_counts_from_its_start() {
        let def = definition();
        let run = dispatched_ahead();
        // Dispatched 1 s after slot(1) by `after`; make it 2 s before instead.
        let run = RunState {
            dispatched_at: Some(before(slot(1), 2)),
            ..run
        };
        let deadline =
            slot(1) + chrono::Duration::seconds(3) + chrono::Duration::from_std(MARGIN).unwrap();
        assert_eq!(
            wake_at(&run, Some(&def), MARGIN, before(slot(1), 2)),
            Some(deadline)
        );
    }

    #[test]
    fn given_a_backlog_longer_than_a_pass_then_the_pass_stops_at_its_bound_and_the_next_goes_on() {
        // Given a job every 10 s that runs late slots, handled up to slot 0, and now at slot 5
        let mut job = definition();
        job.misfire.grace = Duration::from_secs(3600);
        let mut cursor = SlotCursor {
            last_slot: slot(0),
            fired: 0,
        };
        // When a pass may fire two
        let first = due_fires(&job, &mut cursor, slot(5), Duration::ZERO, 2);
        // Then it fires slots 1 and 2, and the next pass goes on from slot 2
        assert_eq!(first, vec![Fire::Run(slot(1)), Fire::Run(slot(2))]);
        assert_eq!(
            cursor,
            SlotCursor {
                last_slot: slot(2),
                fired: 2
            }
        );
        let rest = due_fires(&job, &mut cursor, slot(5), Duration::ZERO, 10);
        assert_eq!(rest.first(), Some(&Fire::Run(slot(3))));
    }

    #[test]
    fn given_a_paused_job_then_nothing_fires_and_nothing_is_due() {
        let mut job = definition();
        job.paused = true;
        let mut cursor = SlotCursor {
            last_slot: slot(0),
            fired: 0,
        };
        assert_eq!(
            due_fires(&job, &mut cursor, slot(5), Duration::ZERO, 10),
            vec![]
        );
        assert_eq!(cursor.last_slot, slot(0), "the cursor stays");
        assert_eq!(next_fire_due(&job, cursor, Duration::ZERO), None);
    }

    #[test]
    fn given_max_runs_fired_then_no_next_fire_is_due() {
        let mut job = definition();
        job.max_runs = Some(3);
        let cursor = |fired| SlotCursor {
            last_slot: slot(4),
            fired,
        };
        assert_eq!(next_fire_due(&job, cursor(3), Duration::ZERO), None);
        // One run left: due at the next slot, fired the lead ahead.
        assert_eq!(
            next_fire_due(&job, cursor(2), Duration::from_secs(1)),
            Some(slot(5) - chrono::Duration::seconds(1))
        );
    }

    #[test]
    fn given_a_fire_then_its_event_names_the_slots_run_and_the_definition_read() {
        let job = definition();
        let now = slot(7);
        let run = fire_event(&job, 42, Fire::Run(slot(6)), now);
        assert_eq!(
            run.run_id,
            RunId::derive(&job.id, slot(6), TriggerKind::Schedule),
            "firing the slot again yields the same run"
        );
        assert_eq!(
            run.kind,
            RunEventKind::RunScheduled {
                trigger: TriggerKind::Schedule,
                definition_offset: 42
            }
        );
        assert_eq!((run.scheduled_for, run.at), (slot(6), now));
        let skipped = fire_event(&job, 42, Fire::Skipped(slot(6), SkipReason::Misfire), now);
        assert_eq!(
            skipped.kind,
            RunEventKind::RunSkipped {
                reason: SkipReason::Misfire
            }
        );
        assert_eq!(skipped.run_id, run.run_id);
    }
}

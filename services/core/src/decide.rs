//! Decisions: given state and the current time, what should be emitted next.
//!
//! These functions hold the business rules that [`crate::run::apply`] deliberately does not. They
//! are pure, so every policy is tested with given/when/then scenarios and a manual clock, and a
//! service that rebuilds its state and asks again gets the same answer (which is what makes
//! re-emitting after a crash harmless: same run ids, same attempts).

use std::time::Duration;

use crate::job::JobDefinition;
use crate::run::{RunEventKind, RunState, RunStatus, SkipReason};
use crate::schedule::Schedule;
use crate::task::TaskAssigned;
use crate::Timestamp;

/// How late a slot may fire and still count as on time. Later than this it is a misfire.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What the trigger does with one slot of a job's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fire {
    /// Emit `RunScheduled` for the slot.
    Run(Timestamp),
    /// Record `RunSkipped { reason: Misfire }` for the slot: it was missed and a later missed slot
    /// supersedes it (fire once: of a burst of missed slots only the latest one runs).
    Misfired(Timestamp),
}

impl Fire {
    pub fn slot(self) -> Timestamp {
        match self {
            Fire::Run(t) | Fire::Misfired(t) => t,
        }
    }
}

/// The next slot decision for a job whose schedule was last handled up to `cursor` (the last fired
/// or skipped slot, or the moment the definition was written), or `None` when the next slot is not
/// due yet. Call repeatedly, advancing `cursor` to the returned slot, to work through a backlog.
///
/// A slot late by no more than `grace` always runs. A later one runs only if it is the latest slot
/// due by `now`; otherwise it is recorded as misfired.
pub fn next_fire(
    schedule: &Schedule,
    cursor: Timestamp,
    now: Timestamp,
    grace: Duration,
) -> Option<Fire> {
    let slot = schedule.next_after(cursor)?;
    if slot > now {
        return None;
    }
    let late_by = (now - slot).to_std().unwrap_or_default();
    if late_by <= grace {
        return Some(Fire::Run(slot));
    }
    match schedule.next_after(slot) {
        Some(following) if following <= now => Some(Fire::Misfired(slot)),
        _ => Some(Fire::Run(slot)),
    }
}

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

/// One thing the dispatcher should do for a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Append this event for the run to the ledger.
    Record(RunEventKind),
    /// Record `RunDispatched` for the attempt, then hand the task to its pool.
    Dispatch(TaskAssigned),
}

/// The dispatcher's next step for a run, or `None` when the run is waiting on someone else
/// (a worker, or a job definition the dispatcher has not read yet).
pub fn next_step(run: &RunState, job: JobView<'_>, now: Timestamp) -> Option<Step> {
    let fired_from = run.definition_offset.unwrap_or(i64::MIN);
    match (run.status, job) {
        (RunStatus::Scheduled, JobView::Defined { definition, offset }) if offset >= fired_from => {
            Some(Step::Dispatch(TaskAssigned {
                job_id: run.job_id.clone(),
                run_id: run.run_id,
                attempt: 1,
                scheduled_for: run.scheduled_for,
                pool: definition.pool.clone(),
                task: definition.task.clone(),
                timeout: definition.timeout,
                definition_offset: offset,
                assigned_at: now,
            }))
        }
        (RunStatus::Scheduled, JobView::Deleted { offset }) if offset >= fired_from => {
            Some(Step::Record(RunEventKind::RunSkipped {
                reason: SkipReason::JobDeleted,
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobSpec, ScheduleSpec, ShellTask, TaskSpec};
    use crate::run::tests::t;
    use crate::run::{apply, RunEvent, RunId, TriggerKind};

    const GRACE: Duration = Duration::from_secs(5);

    fn every_10s() -> Schedule {
        Schedule::every(Duration::from_secs(10)).unwrap()
    }

    /// Drives `next_fire` the way the trigger does, from `cursor` until nothing is due.
    fn fires(schedule: &Schedule, mut cursor: Timestamp, now: Timestamp) -> Vec<Fire> {
        let mut out = vec![];
        while let Some(fire) = next_fire(schedule, cursor, now, GRACE) {
            out.push(fire);
            cursor = fire.slot();
        }
        out
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
            vec![
                Fire::Misfired(slot(1)),
                Fire::Misfired(slot(2)),
                Fire::Run(slot(3))
            ]
        );
    }

    #[test]
    fn given_missed_slots_and_one_on_time_then_only_the_on_time_slot_runs() {
        let now = slot(3) + chrono::Duration::seconds(1);
        assert_eq!(
            fires(&every_10s(), slot(0), now),
            vec![
                Fire::Misfired(slot(1)),
                Fire::Misfired(slot(2)),
                Fire::Run(slot(3))
            ]
        );
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

    fn definition() -> JobDefinition {
        JobSpec {
            id: "job-1".into(),
            description: None,
            schedule: ScheduleSpec {
                every: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            task: TaskSpec::Shell(ShellTask {
                command: vec!["true".into()],
                env: Default::default(),
                working_dir: None,
            }),
            pool: "batch".into(),
            timeout: Some(Duration::from_secs(3)),
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
        );
        let Some(Step::Dispatch(task)) = step else {
            panic!("expected a dispatch, got {step:?}")
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
        );
        assert_eq!(step, None);
        assert_eq!(
            next_step(&scheduled_run(9), JobView::Unknown, slot(1)),
            None
        );
    }

    #[test]
    fn given_the_job_was_deleted_then_the_run_is_skipped() {
        let step = next_step(&scheduled_run(4), JobView::Deleted { offset: 5 }, slot(1));
        assert_eq!(
            step,
            Some(Step::Record(RunEventKind::RunSkipped {
                reason: SkipReason::JobDeleted
            }))
        );
    }
}

//! The fire audit's rules: which slots of a job must have a decision on the ledger by when, and by
//! when the ledger owes word of a run that is not over.
//!
//! The trigger records a decision for every slot of an enabled job (`RunScheduled`, or
//! `RunSkipped` with its reason), and the dispatcher moves every run on until it is final. The
//! audit checks both from the outside, with the same schedule functions, so that a schedule that
//! silently stops (a trigger partition nobody serves, a hung dispatcher) is noticed within a grace
//! period instead of by the job's users.

use std::time::Duration;

use crate::decide::{attempt_deadline, fire_time, start_at};
use crate::job::{JobDefinition, OverlapPolicy};
use crate::run::{RunId, RunState, RunStatus, TriggerKind};
use crate::Timestamp;

/// Where a job's slots are counted from, for the trigger (which fires them) and the audit (which
/// checks them): after the last slot handled for the same schedule, so that a pause or any other
/// edit leaves the slots in between to the misfire policy; a new schedule, or a job never handled,
/// from when its definition was written.
pub fn slots_counted_from(
    last_handled: Option<(&str, Timestamp)>,
    schedule_key: &str,
    written_at: Timestamp,
) -> Timestamp {
    match last_handled {
        Some((schedule, last)) if schedule == schedule_key => last,
        Some((_, last)) => last.max(written_at),
        None => written_at,
    }
}

/// The slots a pass of the audit checks, and how far the job is checked after it.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotsToCheck {
    /// Slots whose decision was due by the pass's moment, each with the id of the run the
    /// trigger derives for it (a skipped slot's record carries the same id).
    pub owed: Vec<(Timestamp, RunId)>,
    /// The last slot the pass covers: the next pass starts after it.
    pub checked_through: Timestamp,
}

/// The slots of `job` after `after` whose decision was due by `until`: a slot's decision is due
/// `grace` after its fire time (the trigger records it ahead of that). At most `limit` slots, so a
/// long gap is worked off over several passes.
///
/// A paused job owes no decision for the slots that pass while it is paused (the trigger records
/// them when the job resumes, late by design), and a job that has fired its `max_runs` owes none
/// at all: the pass only moves past them.
pub fn slots_to_check(
    job: &JobDefinition,
    after: Timestamp,
    until: Timestamp,
    grace: Duration,
    scheduled_so_far: u32,
    limit: usize,
) -> SlotsToCheck {
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    let exhausted = job.max_runs.is_some_and(|max| scheduled_so_far >= max);
    let mut checked_through = after;
    let mut owed = vec![];
    for slot in job
        .slots_after(after)
        .take_while(|slot| fire_time(job, slot.at) + grace <= until)
        .take(limit)
    {
        checked_through = slot.at;
        if !job.paused && !exhausted {
            owed.push((
                slot.at,
                RunId::derive(&job.id, slot.at, TriggerKind::Schedule),
            ));
        }
    }
    SlotsToCheck {
        owed,
        checked_through,
    }
}

/// By when the ledger should have recorded the next step of a run that is not over, or `None`
/// while the run waits on something the ledger cannot see coming (a worker taking a task of a job
/// without a timeout, a queue behind the job's other runs).
///
/// - A scheduled run is dispatched or skipped at its start, unless its job queues runs.
/// - A failed, timed-out or lost attempt gets its retry or abandonment at once.
/// - A retry is dispatched when it is due.
/// - A dispatched or started attempt of a job with a timeout reports by its deadline, or the
///   dispatcher records it as timed out then (`deadline_margin` after its timeout: the
///   dispatcher's `--deadline-margin`).
///
/// A run of a deleted job (`definition` is `None`) that the dispatcher has to end is owed at once.
pub fn next_step_due(
    run: &RunState,
    definition: Option<&JobDefinition>,
    deadline_margin: Duration,
) -> Option<Timestamp> {
    use RunStatus::*;
    let changed = run.finished_at.unwrap_or(run.updated_at);
    let Some(definition) = definition else {
        return matches!(
            run.status,
            Scheduled | RetryScheduled | Failed | TimedOut | Lost
        )
        .then_some(run.updated_at);
    };
    match run.status {
        Scheduled => {
            let queues = matches!(
                definition.overlap,
                OverlapPolicy::Queue | OverlapPolicy::QueueAll
            );
            (!queues).then(|| start_at(definition, run))
        }
        Failed | TimedOut | Lost => Some(changed),
        RetryScheduled => Some(run.retry_due_at.unwrap_or(run.updated_at)),
        Dispatched | Started => attempt_deadline(run, definition, deadline_margin),
        Skipped | Succeeded | Cancelled | Abandoned => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::CalendarSpec;
    use crate::decide::tests::definition;
    use crate::run::tests::t;
    use crate::run::{apply, RunEvent, RunEventKind};
    use crate::schedule::{DstGap, Schedule};

    const GRACE: Duration = Duration::from_secs(30);
    const MARGIN: Duration = Duration::from_secs(2);

    fn slots(owed: &SlotsToCheck) -> Vec<Timestamp> {
        owed.owed.iter().map(|(slot, _)| *slot).collect()
    }

    #[test]
    fn given_the_same_schedule_then_slots_are_counted_from_the_last_one_handled() {
        assert_eq!(
            slots_counted_from(Some(("every 10s", t(50))), "every 10s", t(80)),
            t(50)
        );
    }

    #[test]
    fn given_a_new_schedule_then_slots_are_counted_from_when_it_was_written() {
        assert_eq!(
            slots_counted_from(Some(("every 10s", t(50))), "every 5s", t(80)),
            t(80)
        );
        assert_eq!(
            slots_counted_from(Some(("every 10s", t(90))), "every 5s", t(80)),
            t(90)
        );
        assert_eq!(slots_counted_from(None, "every 5s", t(80)), t(80));
    }

    #[test]
    fn given_slots_whose_grace_has_passed_then_each_is_owed_with_the_triggers_run_id() {
        let job = definition();
        // Slots every 10 s; at t(75) with 30 s of grace, those fired by t(45) are owed.
        let check = slots_to_check(&job, t(0), t(75), GRACE, 0, 100);
        assert_eq!(slots(&check), vec![t(10), t(20), t(30), t(40)]);
        assert_eq!(check.checked_through, t(40));
        assert_eq!(
            check.owed[0].1,
            RunId::derive(&job.id, t(10), TriggerKind::Schedule)
        );
    }

    #[test]
    fn given_a_slot_still_within_its_grace_then_it_is_not_owed_yet() {
        let check = slots_to_check(&definition(), t(40), t(75), GRACE, 0, 100);
        assert_eq!(check.owed, vec![]);
        assert_eq!(check.checked_through, t(40));
    }

    #[test]
    fn given_jitter_then_a_slot_is_owed_from_its_fire_time_not_its_slot() {
        let mut job = definition();
        job.jitter = Some(Duration::from_secs(9));
        let fire = fire_time(&job, t(10));
        assert!(fire > t(10), "the jitter delays the slot");
        let grace = chrono::Duration::from_std(GRACE).unwrap();
        let just_before = slots_to_check(
            &job,
            t(0),
            fire + grace - chrono::Duration::milliseconds(1),
            GRACE,
            0,
            1,
        );
        assert_eq!(just_before.owed, vec![]);
        let at = slots_to_check(&job, t(0), fire + grace, GRACE, 0, 1);
        assert_eq!(slots(&at), vec![t(10)]);
    }

    #[test]
    fn given_a_long_gap_then_a_pass_checks_at_most_the_limit_and_the_next_goes_on() {
        let job = definition();
        let first = slots_to_check(&job, t(0), t(1000), GRACE, 0, 3);
        assert_eq!(slots(&first), vec![t(10), t(20), t(30)]);
        let next = slots_to_check(&job, first.checked_through, t(1000), GRACE, 0, 3);
        assert_eq!(slots(&next), vec![t(40), t(50), t(60)]);
    }

    #[test]
    fn given_a_paused_job_then_its_slots_are_passed_without_being_owed() {
        let mut job = definition();
        job.paused = true;
        let check = slots_to_check(&job, t(0), t(75), GRACE, 0, 100);
        assert_eq!(check.owed, vec![]);
        assert_eq!(check.checked_through, t(40));
    }

    #[test]
    fn given_max_runs_reached_then_no_further_slot_is_owed() {
        let mut job = definition();
        job.max_runs = Some(2);
        assert_eq!(
            slots(&slots_to_check(&job, t(0), t(75), GRACE, 1, 100)).len(),
            4
        );
        let done = slots_to_check(&job, t(0), t(75), GRACE, 2, 100);
        assert_eq!(done.owed, vec![]);
        assert_eq!(done.checked_through, t(40));
    }

    #[test]
    fn given_a_calendar_then_the_excluded_slots_are_owed_too_as_the_trigger_records_their_skip() {
        let mut job = definition();
        let day = t(0).date_naive();
        job.calendars = vec![CalendarSpec {
            name: "closed".into(),
            dates: vec![day],
            ..Default::default()
        }
        .validate()
        .unwrap()];
        assert!(job.excluded_by(t(10)).is_some());
        assert_eq!(
            slots(&slots_to_check(&job, t(0), t(75), GRACE, 0, 100)).len(),
            4
        );
    }

    #[test]
    fn given_a_slot_that_dst_drops_then_it_is_owed_as_the_trigger_records_its_skip() {
        // 02:30 on 2026-03-08 does not exist in New York; `skip` drops that day's slot.
        let mut job = definition();
        job.schedule = Schedule::cron_with("30 2 * * *", "America/New_York", DstGap::Skip).unwrap();
        let before = chrono::DateTime::parse_from_rfc3339("2026-03-07T12:00:00Z")
            .unwrap()
            .to_utc();
        let after = chrono::DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
            .unwrap()
            .to_utc();
        let check = slots_to_check(&job, before, after, GRACE, 0, 100);
        let dropped: Vec<_> = job.slots_after(before).take(3).collect();
        assert!(dropped.iter().any(|s| s.is_dropped()), "{dropped:?}");
        assert_eq!(
            slots(&check),
            dropped.iter().map(|s| s.at).collect::<Vec<_>>()
        );
    }

    fn run_after(kinds: Vec<RunEventKind>) -> RunState {
        let job = definition();
        let run_id = RunId::derive(&job.id, t(10), TriggerKind::Schedule);
        let mut state = None;
        for (at, kind) in kinds.into_iter().enumerate() {
            let event = RunEvent {
                job_id: job.id.clone(),
                run_id,
                scheduled_for: t(10),
                at: t(10 + at as i64),
                kind,
                shard: None,
            };
            state = Some(apply(state.as_ref(), &event).unwrap());
        }
        state.unwrap()
    }

    fn scheduled() -> RunEventKind {
        RunEventKind::RunScheduled {
            trigger: TriggerKind::Schedule,
            definition_offset: 1,
        }
    }

    fn dispatched() -> RunEventKind {
        RunEventKind::RunDispatched {
            attempt: 1,
            pool: "batch".into(),
        }
    }

    fn failed() -> RunEventKind {
        RunEventKind::RunFailed {
            attempt: 1,
            worker_id: "w1".into(),
            error: "exit 1".into(),
            output: Default::default(),
            refused: None,
        }
    }

    #[test]
    fn given_a_scheduled_run_then_its_dispatch_is_owed_at_its_start() {
        let run = run_after(vec![scheduled()]);
        assert_eq!(
            next_step_due(&run, Some(&definition()), MARGIN),
            Some(t(10))
        );
    }

    #[test]
    fn given_a_job_that_queues_runs_then_a_scheduled_run_may_wait_unjudged() {
        let mut job = definition();
        job.overlap = OverlapPolicy::Queue;
        assert_eq!(
            next_step_due(&run_after(vec![scheduled()]), Some(&job), MARGIN),
            None
        );
    }

    #[test]
    fn given_a_dispatched_attempt_then_word_is_owed_by_its_deadline_and_not_without_a_timeout() {
        let mut job = definition();
        let run = run_after(vec![scheduled(), dispatched()]);
        // Dispatched at t(11), 3 s of timeout, 2 s of margin.
        assert_eq!(next_step_due(&run, Some(&job), MARGIN), Some(t(16)));
        job.timeout = None;
        assert_eq!(next_step_due(&run, Some(&job), MARGIN), None);
    }

    #[test]
    fn given_a_failed_attempt_then_its_retry_decision_is_owed_at_once() {
        let run = run_after(vec![scheduled(), dispatched(), failed()]);
        assert_eq!(
            next_step_due(&run, Some(&definition()), MARGIN),
            Some(t(12))
        );
    }

    #[test]
    fn given_a_retry_then_its_dispatch_is_owed_when_it_is_due() {
        let run = run_after(vec![
            scheduled(),
            dispatched(),
            failed(),
            RunEventKind::RetryScheduled {
                attempt: 2,
                due_at: t(40),
            },
        ]);
        assert_eq!(
            next_step_due(&run, Some(&definition()), MARGIN),
            Some(t(40))
        );
    }

    #[test]
    fn given_a_run_that_is_over_then_nothing_is_owed() {
        let run = run_after(vec![
            scheduled(),
            RunEventKind::RunSkipped {
                reason: crate::run::SkipReason::Overlap,
            },
        ]);
        assert_eq!(next_step_due(&run, Some(&definition()), MARGIN), None);
    }

    #[test]
    fn given_a_deleted_job_then_ending_its_waiting_run_is_owed_at_once() {
        let run = run_after(vec![scheduled()]);
        assert_eq!(next_step_due(&run, None, MARGIN), Some(t(10)));
        let running = run_after(vec![scheduled(), dispatched()]);
        assert_eq!(next_step_due(&running, None, MARGIN), None);
    }
}

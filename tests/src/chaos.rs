//! The fault-injection suite: the four service binaries (two dispatchers, two workers) on a broker
//! of their own, a steady load of jobs, and faults drawn from a seed: `kill -9` of a random
//! service instance, each restarted after a moment; SIGTERM of a worker or a dispatcher, restarted;
//! a worker stopped (SIGSTOP) past its session and resumed, as a network partition would cut it
//! off; a third worker or dispatcher joining and later leaving; and one broker restart half-way.
//! Then the ledger is checked: every due slot has exactly one scheduled run, every run is over, no
//! attempt has two recorded outcomes; the side effects are checked: each task appends a line to a
//! log when it starts and when it ends, and every due slot must have executed, none outside the
//! schedule, with each repeated execution put down to its cause; the fire audit's alerts are
//! checked against the ledger, none may be about a slot decided or a run moved on in time; and
//! each stateful service, rebuilt from scratch, has the state it had live.
//!
//! `scripts/chaos.sh` runs a long form with `kairos-chaos`; the test suite runs a short one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kairos_core::job::{
    Backoff, JobSpec, MisfireKind, MisfirePolicy, RetryPolicy, ScheduleSpec, ShellTask, TaskSpec,
};
use kairos_core::run::{apply, RunEvent, RunEventKind, RunId, RunState, TriggerKind};
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::codec::{Alert, AlertKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::fleet::{Broker, Instance};
use crate::{free_addr, read_state, state_difference, Stack};

/// What one chaos run does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Jobs firing every second, each with a short shell task.
    pub jobs: usize,
    /// How long the jobs fire and the faults go on.
    pub load: Duration,
    /// Pause between two kills, drawn from this range.
    pub pause: (Duration, Duration),
    pub partitions: i32,
    pub seed: u64,
    /// The broker binary (Nisshi).
    pub nisshi: PathBuf,
}

/// What a chaos run did and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub jobs: usize,
    pub load_secs: u64,
    pub cycles: usize,
    pub kills: BTreeMap<String, usize>,
    pub broker_restarts: usize,
    pub max_recovery_ms: u128,
    pub recoveries_ms: Vec<(String, u128)>,
    /// Instances not caught up within [`RECOVERY_LIMIT`] of a fault (or the harness's read of the
    /// ledger, not at its end in time), and when: the run goes on (its figures are still worth
    /// having), and fails.
    pub stalls: Vec<(String, Timestamp)>,
    pub ledger: LedgerCheck,
    pub effects: EffectsCheck,
    pub audit: AuditCheck,
    /// Graceful faults: SIGTERMs, partitions (SIGSTOP past the session), joins and leaves.
    pub graceful: BTreeMap<String, usize>,
    /// Service name and, when its rebuilt state differs from its live one, how.
    pub rebuilds: Vec<(String, Option<String>)>,
    pub elapsed_secs: u64,
    /// When each fault happened, to line lost work up with its cause.
    pub timeline: Vec<(String, Timestamp)>,
    /// Why the run could not finish (the harness failed or panicked), if it could not.
    pub error: Option<String>,
}

impl ChaosReport {
    /// Whether nothing was lost, duplicated or left unfinished, every due slot executed and none
    /// outside the schedule, and every rebuild matched.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.stalls.is_empty()
            && self.ledger.passed()
            && self.effects.passed()
            && self.audit.passed()
            && self.rebuilds.iter().all(|(_, diff)| diff.is_none())
    }
}

impl ChaosReport {
    /// The report of a run that could not finish.
    pub fn failed(seed: u64, error: String) -> Self {
        ChaosReport {
            seed,
            error: Some(error),
            ..ChaosReport::default()
        }
    }
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.ledger;
        writeln!(
            f,
            "chaos: seed {}, {} jobs, {} s of load, {} s in all",
            self.seed, self.jobs, self.load_secs, self.elapsed_secs
        )?;
        if let Some(error) = &self.error {
            writeln!(f, "  the run could not finish: {error}")?;
        }
        writeln!(
            f,
            "  cycles {}, kills {:?}, graceful faults {:?}, broker restarts {}",
            self.cycles, self.kills, self.graceful, self.broker_restarts
        )?;
        writeln!(
            f,
            "  max recovery {} ms (restart to caught up), not caught up within {} s: {:?}",
            self.max_recovery_ms,
            RECOVERY_LIMIT.as_secs(),
            self.stalls
        )?;
        writeln!(
            f,
            "  slots due {}, runs {}, attempts {}",
            l.slots_due, l.runs, l.attempts
        )?;
        writeln!(
            f,
            "  lost slots {}, slots outside the schedule {}, unfinished runs {}",
            l.missing_slots.len(),
            l.unexpected_slots.len(),
            l.unfinished.len()
        )?;
        writeln!(
            f,
            "  slots with two runs {}, attempts with two recorded outcomes {}",
            l.slots_with_two_runs.len(),
            l.attempts_with_two_outcomes.len()
        )?;
        writeln!(f, "  repeated RunScheduled records (recognised by run id) {}, repeated outcome records (fenced) {}", l.repeated_scheduled_records, l.repeated_outcome_records)?;
        writeln!(
            f,
            "  attempts lost with their worker {}, retries {}",
            l.lost_attempts, l.retries
        )?;
        writeln!(
            f,
            "  outcomes recorded without effect {:?}",
            l.unaccepted_outcomes
        )?;
        let e = &self.effects;
        writeln!(
            f,
            "  side effects: executions {}, due slots not executed {}, executions outside the schedule {}, slots executed more than once {}",
            e.executions,
            e.slots_not_executed.len(),
            e.outside_schedule,
            e.slots_executed_more_than_once
        )?;
        writeln!(
            f,
            "  repeated executions by cause: attempt retried after one lost or timed out {}, attempt re-run after it was cut off running {}, after it finished but before its outcome was recorded {}, after its outcome was recorded {}",
            e.retried_after_lost, e.reruns_cut_off, e.reruns_after_finish, e.reruns_after_outcome.len()
        )?;
        for r in e.reruns_after_outcome.iter().take(20) {
            writeln!(f, "  re-run after its outcome: {r}")?;
        }
        writeln!(
            f,
            "  repeated executions by fault: {:?}, without a fault of the first execution's worker or of the broker {}",
            e.repeats_after_a_fault,
            e.repeats_without_a_fault.len()
        )?;
        for r in e.repeats_without_a_fault.iter().take(20) {
            writeln!(f, "  repeated without a fault: {r}")?;
        }
        let a = &self.audit;
        writeln!(
            f,
            "  fire audit (grace {} s): slots checked {}, slot_missed {}, run_stuck {}, false alarms {}",
            AUDIT_GRACE.as_secs(),
            a.slots_checked,
            a.slot_missed,
            a.run_stuck.len(),
            a.false_alarms.len()
        )?;
        for alarm in a.false_alarms.iter().chain(&a.run_stuck).take(20) {
            writeln!(f, "  audit: {alarm}")?;
        }
        let named = [
            ("lost", &l.missing_slots),
            ("unexpected", &l.unexpected_slots),
            ("doubled", &l.slots_with_two_runs),
        ];
        for (what, slots) in named {
            for (job, slot) in slots.iter().take(10) {
                writeln!(f, "  {what} slot: {job} at {slot}")?;
            }
        }
        for (run, status) in l.unfinished.iter().take(10) {
            writeln!(f, "  unfinished run: {run} ({status})")?;
        }
        for (what, at) in &self.timeline {
            writeln!(f, "  {at} {what}")?;
        }
        for (service, difference) in &self.rebuilds {
            match difference {
                None => writeln!(f, "  rebuild of {service}: same state")?,
                Some(difference) => writeln!(f, "  rebuild of {service}: DIFFERS\n{difference}")?,
            }
        }
        write!(f, "  {}", if self.passed() { "PASSED" } else { "FAILED" })
    }
}

/// What the ledger says after the faults.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LedgerCheck {
    pub slots_due: usize,
    pub runs: usize,
    pub attempts: usize,
    /// Due slots with no run scheduled and no misfire recorded: lost fires.
    pub missing_slots: Vec<(String, Timestamp)>,
    /// Scheduled slots that the job's schedule does not have.
    pub unexpected_slots: Vec<(String, Timestamp)>,
    /// Slots with more than one distinct run.
    pub slots_with_two_runs: Vec<(String, Timestamp)>,
    /// Runs not over.
    pub unfinished: Vec<(RunId, String)>,
    /// (run, attempt) with more than one outcome the fold accepted.
    pub attempts_with_two_outcomes: Vec<(RunId, u32)>,
    pub repeated_scheduled_records: usize,
    pub repeated_outcome_records: usize,
    /// Outcome records the fold did not accept, by event type: re-executions of a redelivered
    /// task, and the real outcomes of attempts already recorded as lost.
    pub unaccepted_outcomes: BTreeMap<String, usize>,
    pub lost_attempts: usize,
    pub retries: usize,
}

impl LedgerCheck {
    pub fn passed(&self) -> bool {
        self.slots_due > 0
            && self.missing_slots.is_empty()
            && self.unexpected_slots.is_empty()
            && self.slots_with_two_runs.is_empty()
            && self.unfinished.is_empty()
            && self.attempts_with_two_outcomes.is_empty()
    }
}

/// What the tasks' side-effect log says: how often each due slot's task actually ran.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EffectsCheck {
    /// Task executions (start lines).
    pub executions: usize,
    /// Due slots whose task never started.
    pub slots_not_executed: Vec<(String, Timestamp)>,
    /// Executions of runs that are no due slot's.
    pub outside_schedule: usize,
    pub slots_executed_more_than_once: usize,
    /// Repeated executions, each put down to one cause: a new attempt after the one before was
    /// recorded as lost or timed out (it was running when its worker died, or was cut off) ...
    pub retried_after_lost: usize,
    /// ... the same attempt again, the first execution having no end line (cut off while running)
    pub reruns_cut_off: usize,
    /// ... the same attempt again after it had ended, its outcome not yet on the ledger when the
    /// re-run began (its worker died or lost the partition in between) ...
    pub reruns_after_finish: usize,
    /// ... and the same attempt again although the ledger already had its outcome: what the
    /// worker's ledger check is there to prevent.
    pub reruns_after_outcome: Vec<Rerun>,
    /// Repeated executions put down to a fault between the execution before and the repeat:
    /// its worker killed (`kill -9`) or cut off past its session (SIGSTOP), or the broker
    /// restarted. Per fault kind.
    pub repeats_after_a_fault: BTreeMap<String, usize>,
    /// The same, each with the fault it is put down to.
    pub each_repeat_after_a_fault: Vec<Rerun>,
    /// Repeated executions with no such fault: what graceful stops, joins and rebalances must
    /// never cause.
    pub repeats_without_a_fault: Vec<Rerun>,
}

/// An attempt executed again: when it first started and ended, when the ledger had its outcome,
/// and when it started again.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rerun {
    pub run_id: RunId,
    /// The attempt of the first execution, and the one of the execution again (the same, or a
    /// retry of it).
    pub first_attempt: u32,
    pub attempt: u32,
    pub first_started: Timestamp,
    pub first_ended: Option<Timestamp>,
    /// When the ledger first had the first execution's attempt over (its outcome, or its loss or
    /// timeout recorded by the dispatcher).
    pub outcome_at: Option<Timestamp>,
    /// What that record was (`RunSucceeded`, `RunLost`, `RunTimedOut`, …).
    pub outcome: Option<&'static str>,
    pub started_again: Timestamp,
    /// The workers of the two executions, as the tasks' environment named them.
    pub first_worker: String,
    pub again_worker: String,
    /// The fault the repeat is put down to; for a repeat with none, the last fault of the run
    /// before it, if any.
    pub fault_before: Option<(String, Timestamp)>,
}

impl std::fmt::Display for Rerun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ended = self
            .first_ended
            .map_or("never".to_string(), |t| t.to_string());
        let outcome = match (self.outcome, self.outcome_at) {
            (Some(kind), Some(at)) => format!("{kind} at {at}"),
            _ => "none".to_string(),
        };
        let fault = self
            .fault_before
            .as_ref()
            .map_or("none".to_string(), |(what, at)| format!("{what} at {at}"));
        write!(
            f,
            "{} attempt {}: started {} on {}, ended {ended}, over on the ledger {outcome}; attempt {} started {} on {}; last fault before: {fault}",
            self.run_id, self.first_attempt, self.first_started, self.first_worker, self.attempt, self.started_again, self.again_worker
        )
    }
}

impl EffectsCheck {
    pub fn passed(&self) -> bool {
        self.executions > 0 && self.slots_not_executed.is_empty() && self.outside_schedule == 0
    }
}

/// The fire audit's grace in the chaos fleet: shorter than its default so that it judges most of
/// a short run, longer than any recovery the faults cause.
pub const AUDIT_GRACE: Duration = Duration::from_secs(30);

/// What the fire audit raised during the run, against what the ledger shows.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AuditCheck {
    /// Due slots the audit had checked when the load was over.
    pub slots_checked: usize,
    pub slot_missed: usize,
    /// The `run_stuck` alerts, as raised.
    pub run_stuck: Vec<String>,
    /// Alerts the ledger proves wrong: a slot alerted as missed that was decided within the
    /// grace, a run alerted as stuck in a state it left before the grace was over.
    pub false_alarms: Vec<String>,
}

impl AuditCheck {
    pub fn passed(&self) -> bool {
        self.false_alarms.is_empty()
    }
}

/// Checks the audit's alerts against the ledger.
pub fn check_audit(alerts: &[Alert], ledger: &[RunEvent], jobs: &[JobDefinition]) -> AuditCheck {
    let grace = chrono::Duration::from_std(AUDIT_GRACE).unwrap_or_default();
    let due = due_slots(jobs);
    let mut check = AuditCheck::default();
    for alert in alerts {
        let Some(run) = alert.run_id else { continue };
        let events: Vec<&RunEvent> = ledger.iter().filter(|e| e.run_id == run).collect();
        match alert.kind {
            AlertKind::SlotMissed => {
                check.slot_missed += 1;
                let decided = events.iter().find(|e| {
                    matches!(
                        e.kind,
                        RunEventKind::RunScheduled { .. } | RunEventKind::RunSkipped { .. }
                    )
                });
                if let (Some(decided), Some((job, slot))) = (decided, due.get(&run)) {
                    if decided.at <= *slot + grace {
                        check.false_alarms.push(format!(
                            "slot_missed for {job} at {slot}, decided at {}",
                            decided.at
                        ));
                    }
                }
            }
            AlertKind::RunStuck => {
                check.run_stuck.push(alert.message.clone());
                if let Some(stayed) = time_in_alerted_state(&events, &alert.message) {
                    if stayed < grace {
                        check.false_alarms.push(format!(
                            "run_stuck in a state left after {} ms: {}",
                            stayed.num_milliseconds(),
                            alert.message
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    check
}

/// How long a run stayed in the state a `run_stuck` alert names ("is <status> (attempt <n>)"),
/// from the event that brought it there to the next one that changed it; `None` if it never
/// left it.
fn time_in_alerted_state(events: &[&RunEvent], message: &str) -> Option<chrono::Duration> {
    let rest = &message[message.find(" is ")? + 4..];
    let (status, rest) = rest.split_once(" (attempt ")?;
    let attempt: u32 = rest.split(')').next()?.parse().ok()?;
    let mut state: Option<RunState> = None;
    let mut entered = None;
    for event in events {
        let Ok(next) = apply(state.as_ref(), event) else {
            continue;
        };
        let alerted = next.status.as_str() == status && next.attempt == attempt;
        match (entered, alerted) {
            (None, true) => entered = Some(event.at),
            (Some(since), false) => return Some(event.at - since),
            _ => {}
        }
        state = Some(next);
    }
    None
}

/// Every slot of the jobs, by the id of the run the trigger derives for it.
fn due_slots(jobs: &[JobDefinition]) -> BTreeMap<RunId, (String, Timestamp)> {
    jobs.iter()
        .flat_map(|job| {
            let from = job.start_at.unwrap_or_default() - chrono::Duration::milliseconds(1);
            job.slots_after(from).map(move |slot| {
                let run = RunId::derive(&job.id, slot.at, TriggerKind::Schedule);
                (run, (job.id.to_string(), slot.at))
            })
        })
        .collect()
}

/// How many due slots the aggregator's audit has checked, by the API.
async fn audited_slots(api: &str, jobs: &[JobDefinition]) -> usize {
    let mut checked = 0;
    for job in jobs {
        let audit = crate::get_json(&format!("{api}/api/v1/jobs/{}/audit", job.id)).await;
        let through: Option<Timestamp> =
            audit.and_then(|a| serde_json::from_value(a["checked_through"].clone()).ok());
        if let Some(through) = through {
            let from = job.start_at.unwrap_or_default() - chrono::Duration::milliseconds(1);
            checked += job
                .slots_after(from)
                .take_while(|s| s.at <= through)
                .count();
        }
    }
    checked
}

/// SIGTERM, and a clean exit expected: one that does not come within a minute (the instance is
/// then killed) is a stall of the run, which goes on, its figures still worth having.
async fn stop_gracefully(report: &mut ChaosReport, instance: &mut Instance) {
    if let Err(error) = instance.stop().await {
        report.stalls.push((error.to_string(), chrono::Utc::now()));
        report
            .timeline
            .push((error.to_string(), chrono::Utc::now()));
    }
}

/// The shell script of a chaos task: a line in `log` as it starts, `sleep`, and a line as it ends,
/// each with the run, the attempt and the time in nanoseconds.
fn effect_script(log: &std::path::Path, sleep: &str) -> String {
    let line = |what: &str| {
        format!(
            "echo \"{what} $KAIROS_RUN_ID $KAIROS_ATTEMPT $(date +%s%N) $KAIROS_WORKER_ID\" >> '{}'",
            log.display()
        )
    };
    format!("{}; sleep {sleep}; {}", line("start"), line("end"))
}

fn from_nanos(nanos: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_nanos(nanos)
}

/// An execution: its start and (if it ended) end, in nanoseconds, and its worker.
type Execution = (i64, Option<i64>, String);
/// The executions of one attempt, in time order.
type Executions = Vec<Execution>;

/// How early, before the execution it cut short, a fault may be put on the timeline: the
/// timeline is written just before the fault is done.
const FAULT_SLACK: chrono::Duration = chrono::Duration::seconds(1);

/// The fault on the timeline, between `from` (less the slack) and `to`, that explains an
/// execution of `worker` being repeated: the worker killed or cut off, or the broker restarted.
fn fault_of<'t>(
    timeline: &'t [(String, Timestamp)],
    worker: &str,
    from: Timestamp,
    to: Timestamp,
) -> Option<(&'static str, &'t (String, Timestamp))> {
    timeline
        .iter()
        .filter(|(_, at)| *at >= from - FAULT_SLACK && *at <= to)
        .find_map(|entry| {
            let what = &entry.0;
            let names = |prefix: &str| {
                what.strip_prefix(prefix)
                    .and_then(|rest| rest.split_whitespace().next())
                    == Some(worker)
            };
            let kind = if what == "broker restart" {
                "broker restart"
            } else if names("kill -9 ") {
                "its worker killed (kill -9)"
            } else if names("SIGSTOP ") {
                "its worker cut off past its session (SIGSTOP)"
            } else {
                return None;
            };
            Some((kind, entry))
        })
}

/// Checks the side-effect log against the due slots and the ledger, and puts every repeated
/// execution down to a fault of the `timeline`, or to none.
pub fn check_effects(
    log: &str,
    ledger: &[RunEvent],
    jobs: &[JobDefinition],
    timeline: &[(String, Timestamp)],
) -> EffectsCheck {
    let mut check = EffectsCheck::default();
    let due = due_slots(jobs);
    // When the ledger first had each attempt's outcome (the fold's first accepted one), and
    // which attempts ended lost or timed out.
    let mut states: BTreeMap<RunId, RunState> = BTreeMap::new();
    let mut outcome_at: BTreeMap<(RunId, u32), (Timestamp, &'static str)> = BTreeMap::new();
    let mut given_up: BTreeSet<(RunId, u32)> = BTreeSet::new();
    for event in ledger {
        let Ok(next) = apply(states.get(&event.run_id), event) else {
            continue;
        };
        if let Some(attempt) = event.kind.attempt() {
            if next.status.is_outcome() && event.shard.is_none() {
                outcome_at
                    .entry((event.run_id, attempt))
                    .or_insert((event.at, event.kind.name()));
            }
            if matches!(
                event.kind,
                RunEventKind::RunLost { .. } | RunEventKind::RunTimedOut { .. }
            ) {
                given_up.insert((event.run_id, attempt));
            }
        }
        states.insert(event.run_id, next);
    }
    // Per run and attempt, its executions in time order.
    let mut runs: BTreeMap<RunId, BTreeMap<u32, Executions>> = BTreeMap::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (what, run, attempt, nanos, worker) = match fields[..] {
            [what, run, attempt, nanos, worker] => (what, run, attempt, nanos, worker),
            [what, run, attempt, nanos] => (what, run, attempt, nanos, ""),
            _ => continue,
        };
        let (Some(run), Ok(attempt), Ok(nanos)) = (
            RunId::parse(run),
            attempt.parse::<u32>(),
            nanos.parse::<i64>(),
        ) else {
            continue;
        };
        let executions = runs.entry(run).or_default().entry(attempt).or_default();
        match what {
            "start" => executions.push((nanos, None, worker.to_string())),
            // The end of the last execution of the attempt that started before it.
            _ => {
                if let Some(open) = executions
                    .iter_mut()
                    .rev()
                    .find(|(start, end, _)| end.is_none() && *start <= nanos)
                {
                    open.1 = Some(nanos);
                }
            }
        }
    }
    for (run, attempts) in &runs {
        let executions: usize = attempts.values().map(Vec::len).sum();
        check.executions += executions;
        if !due.contains_key(run) {
            check.outside_schedule += executions;
            continue;
        }
        if executions > 1 {
            check.slots_executed_more_than_once += 1;
        }
        for (attempt, runs_of_attempt) in attempts {
            if *attempt > 1 && given_up.contains(&(*run, attempt - 1)) {
                check.retried_after_lost += 1;
            }
            for pair in runs_of_attempt.windows(2) {
                let (first, again) = (&pair[0], &pair[1]);
                let over = outcome_at.get(&(*run, *attempt)).copied();
                let outcome = over.map(|(at, _)| at.timestamp_nanos_opt().unwrap_or(i64::MAX));
                if outcome.is_some_and(|at| at < again.0) {
                    check.reruns_after_outcome.push(Rerun {
                        run_id: *run,
                        first_attempt: *attempt,
                        attempt: *attempt,
                        first_started: from_nanos(first.0),
                        first_ended: first.1.map(from_nanos),
                        outcome_at: over.map(|(at, _)| at),
                        outcome: over.map(|(_, kind)| kind),
                        started_again: from_nanos(again.0),
                        first_worker: first.2.clone(),
                        again_worker: again.2.clone(),
                        fault_before: None,
                    });
                } else if first.1.is_some() {
                    check.reruns_after_finish += 1;
                } else {
                    check.reruns_cut_off += 1;
                }
            }
        }
        // Every execution of the run after its first, across attempts, against the one before.
        let mut in_order: Vec<(u32, &Execution)> = attempts
            .iter()
            .flat_map(|(attempt, executions)| executions.iter().map(move |e| (*attempt, e)))
            .collect();
        in_order.sort_by_key(|(_, (start, _, _))| *start);
        for pair in in_order.windows(2) {
            let ((first_attempt, first), (attempt, again)) = (pair[0], pair[1]);
            let (from, to) = (from_nanos(first.0), from_nanos(again.0));
            let rerun = |fault_before| Rerun {
                run_id: *run,
                first_attempt,
                attempt,
                first_started: from,
                first_ended: first.1.map(from_nanos),
                outcome_at: outcome_at.get(&(*run, first_attempt)).map(|(at, _)| *at),
                outcome: outcome_at
                    .get(&(*run, first_attempt))
                    .map(|(_, kind)| *kind),
                started_again: to,
                first_worker: first.2.clone(),
                again_worker: again.2.clone(),
                fault_before,
            };
            match fault_of(timeline, &first.2, from, to) {
                Some((kind, fault)) => {
                    *check
                        .repeats_after_a_fault
                        .entry(kind.to_string())
                        .or_default() += 1;
                    check
                        .each_repeat_after_a_fault
                        .push(rerun(Some(fault.clone())));
                }
                None => check.repeats_without_a_fault.push(rerun(
                    timeline.iter().rev().find(|(_, at)| *at <= to).cloned(),
                )),
            }
        }
    }
    check.slots_not_executed = due
        .iter()
        .filter(|(run, _)| !runs.contains_key(run))
        .map(|(_, slot)| slot.clone())
        .collect();
    check
}

/// Checks a ledger (in per-partition order) against the scheduled jobs' definitions.
pub fn check_ledger(ledger: &[RunEvent], jobs: &[JobDefinition]) -> LedgerCheck {
    let mut check = LedgerCheck::default();
    let mut due: BTreeSet<(String, Timestamp)> = BTreeSet::new();
    for job in jobs {
        let from = job.start_at.unwrap_or_default() - chrono::Duration::milliseconds(1);
        due.extend(
            job.slots_after(from)
                .map(|slot| (job.id.to_string(), slot.at)),
        );
    }
    check.slots_due = due.len();

    let mut scheduled: BTreeMap<(String, Timestamp), BTreeSet<RunId>> = BTreeMap::new();
    let mut states: BTreeMap<RunId, RunState> = BTreeMap::new();
    let mut outcomes: BTreeMap<(RunId, u32, Option<u32>), usize> = BTreeMap::new();
    let mut accepted: BTreeMap<(RunId, u32, Option<u32>), usize> = BTreeMap::new();
    for event in ledger {
        let slot = (event.job_id.to_string(), event.scheduled_for);
        match &event.kind {
            RunEventKind::RunScheduled {
                trigger: TriggerKind::Schedule,
                ..
            }
            | RunEventKind::RunSkipped { .. } => {
                let runs = scheduled.entry(slot).or_default();
                if !runs.insert(event.run_id) {
                    check.repeated_scheduled_records += 1;
                }
            }
            _ => {}
        }
        let outcome = matches!(
            event.kind,
            RunEventKind::RunSucceeded { .. }
                | RunEventKind::RunFailed { .. }
                | RunEventKind::RunTimedOut { .. }
                | RunEventKind::RunCancelled { .. }
                | RunEventKind::RunLost { .. }
        );
        let key = (
            event.run_id,
            event.kind.attempt().unwrap_or(0),
            event.shard.map(|s| s.index),
        );
        if outcome {
            *outcomes.entry(key).or_default() += 1;
        }
        let folded = apply(states.get(&event.run_id), event);
        if outcome && folded.is_err() {
            *check
                .unaccepted_outcomes
                .entry(event.kind.name().to_string())
                .or_default() += 1;
        }
        if let Ok(next) = folded {
            if outcome {
                *accepted.entry(key).or_default() += 1;
            }
            match event.kind {
                RunEventKind::RunLost { .. } => check.lost_attempts += 1,
                RunEventKind::RetryScheduled { .. } => check.retries += 1,
                _ => {}
            }
            states.insert(event.run_id, next);
        }
    }
    for (slot, runs) in &scheduled {
        if !due.contains(slot) {
            check.unexpected_slots.push(slot.clone());
        }
        if runs.len() > 1 {
            check.slots_with_two_runs.push(slot.clone());
        }
    }
    check.missing_slots = due
        .into_iter()
        .filter(|slot| !scheduled.contains_key(slot))
        .collect();
    check.runs = states.len();
    check.unfinished = states
        .values()
        .filter(|run| !run.status.is_final())
        .map(|run| (run.run_id, run.status.as_str().to_string()))
        .collect();
    check.attempts = accepted.len();
    check.attempts_with_two_outcomes = accepted
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((run, attempt, _), _)| (*run, *attempt))
        .collect();
    check.repeated_outcome_records = outcomes.values().map(|n| n.saturating_sub(1)).sum();
    check
}

/// The jobs of the load: every second from `start` to `end`, a short shell task, caught up after
/// any outage, retried generously so that lost attempts end in success.
fn load_jobs(
    count: usize,
    start: Timestamp,
    end: Timestamp,
    effects: &std::path::Path,
) -> Vec<JobDefinition> {
    (0..count)
        .map(|n| {
            let spec = JobSpec {
                signature: None,
                id: format!("chaos-{n:03}"),
                description: None,
                schedule: ScheduleSpec {
                    every: Some(Duration::from_secs(1)),
                    ..ScheduleSpec::default()
                },
                more_schedules: vec![],
                calendars: vec![],
                task: TaskSpec::Shell(ShellTask {
                    env_from: Default::default(),
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        effect_script(effects, &format!("0.{}", n % 5)),
                    ],
                    env: BTreeMap::new(),
                    working_dir: None,
                }),
                pool: "default".into(),
                timeout: Some(Duration::from_secs(20)),
                misfire: MisfirePolicy {
                    policy: MisfireKind::CatchUp,
                    grace: Duration::from_secs(1),
                    catch_up_window: Duration::from_secs(3600),
                },
                retry: RetryPolicy {
                    max_attempts: 20,
                    backoff: Backoff {
                        initial: Duration::from_millis(200),
                        max: Duration::from_secs(2),
                        multiplier: 2.0,
                        jitter: 0.0,
                    },
                },
                overlap: Default::default(),
                paused: false,
                start_at: Some(start),
                end_at: Some(end),
                max_runs: None,
                jitter: None,
                priority: 0,
                shards: None,
                shard_params: vec![],
            };
            spec.validate().expect("chaos job is valid")
        })
        .collect()
}

/// Runs the chaos scenario and reports what the ledger and the rebuilds show.
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let began = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let broker_dir = tempfile::tempdir()?;
    let mut broker = Broker::start(&config.nisshi, broker_dir.path()).await?;
    let stack = Stack::on(broker.address(), config.partitions).await;
    let api_addr = free_addr();
    let http = format!("--http-addr={api_addr}");
    let audit_grace = format!("--audit-grace={}s", AUDIT_GRACE.as_secs());
    let dispatcher = |name: &str| {
        Instance::new(
            &stack,
            name,
            "kairos-dispatcher",
            &["--deadline-margin=5s"],
            true,
        )
    };
    let worker = |name: &str| {
        let id = format!("--worker-id={name}");
        let args = [
            id.as_str(),
            "--heartbeat-interval=300ms",
            "--max-concurrent=8",
            "--drain-timeout=2s",
        ];
        Instance::new(&stack, name, "kairos-worker", &args, false)
    };
    let mut fleet = vec![
        Instance::new(&stack, "trigger", "kairos-trigger", &[], true),
        dispatcher("dispatcher-a"),
        dispatcher("dispatcher-b"),
        worker("worker-a"),
        worker("worker-b"),
        Instance::new(
            &stack,
            "aggregator",
            "kairos-aggregator",
            &[&http, &audit_grace],
            true,
        ),
    ];
    for instance in &mut fleet {
        instance.start(&stack);
    }
    for instance in &fleet {
        instance.wait_caught_up(Duration::from_secs(60)).await;
    }
    // Instances that join the fleet for a while and leave it gracefully.
    let mut joiners = [worker("worker-c"), dispatcher("dispatcher-c")];

    // A job's schedule starts when its definition is written: the first slot must come after.
    let now = chrono::Utc::now();
    let start = kairos_core::from_millis((now.timestamp_millis() / 1000 + 3) * 1000).unwrap_or(now);
    let end = start + chrono::Duration::from_std(config.load)?;
    let effects = stack.data_dir("effects.log");
    let jobs = load_jobs(config.jobs, start, end, &effects);
    stack.apply_jobs(&jobs).await;
    anyhow::ensure!(
        chrono::Utc::now() < start,
        "writing {} jobs took until after their first slot",
        jobs.len()
    );

    let mut report = ChaosReport {
        seed: config.seed,
        jobs: config.jobs,
        load_secs: config.load.as_secs(),
        ..ChaosReport::default()
    };
    let faults_until = Instant::now() + config.load;
    let broker_restart_at = Instant::now() + config.load / 2;
    while Instant::now() < faults_until {
        let (low, high) = config.pause;
        let pause = rng.random_range(low..=high);
        // The pause is the scenario (load runs undisturbed this long), not a wait for an event.
        tokio::time::sleep(pause).await;
        report.cycles += 1;
        if report.broker_restarts == 0 && Instant::now() >= broker_restart_at {
            report
                .timeline
                .push(("broker restart".into(), chrono::Utc::now()));
            broker.restart().await?;
            report.broker_restarts += 1;
            let restarted = Instant::now();
            for instance in &fleet {
                recover(&mut report, instance).await;
            }
            report
                .recoveries_ms
                .push(("broker".into(), restarted.elapsed().as_millis()));
            continue;
        }
        let fault = rng.random_range(0..20);
        if fault < 10 {
            let victim = rng.random_range(0..fleet.len());
            let instance = &mut fleet[victim];
            report
                .timeline
                .push((format!("kill -9 {}", instance.name), chrono::Utc::now()));
            instance.kill9().await;
            *report.kills.entry(instance.name.clone()).or_default() += 1;
            let down = Duration::from_millis(rng.random_range(0..2000));
            tokio::time::sleep(down).await;
            instance.start(&stack);
            let restarted = Instant::now();
            recover(&mut report, instance).await;
            report
                .recoveries_ms
                .push((instance.name.clone(), restarted.elapsed().as_millis()));
        } else if fault < 14 {
            // A rolling restart: a worker or a dispatcher stopped with SIGTERM, started again.
            let victim = [1, 2, 3, 4][rng.random_range(0..4)];
            let instance = &mut fleet[victim];
            let what = format!("SIGTERM {}", instance.name);
            report.timeline.push((what.clone(), chrono::Utc::now()));
            stop_gracefully(&mut report, instance).await;
            *report.graceful.entry(what).or_default() += 1;
            instance.start(&stack);
            recover(&mut report, instance).await;
        } else if fault < 17 {
            // A worker cut off from the broker past its session, then back: it is resumed once
            // its group has expelled it.
            let victim = [3, 4][rng.random_range(0..2)];
            let instance = &fleet[victim];
            let what = format!("SIGSTOP {} past its session", instance.name);
            report.timeline.push((what.clone(), chrono::Utc::now()));
            let group = stack.kafka.topics().group("workers-default");
            let members = group_members(&stack, &group).await;
            instance.signal(nix::sys::signal::Signal::SIGSTOP);
            let expelled = crate::poll_until(Duration::from_secs(30), || async {
                let now = group_members(&stack, &group).await;
                (now.is_some() && now < members).then_some(())
            })
            .await;
            if expelled.is_none() {
                report.timeline.push((
                    format!(
                        "{} not seen expelled from {group} within 30 s",
                        instance.name
                    ),
                    chrono::Utc::now(),
                ));
            }
            instance.signal(nix::sys::signal::Signal::SIGCONT);
            *report.graceful.entry(what).or_default() += 1;
            recover(&mut report, instance).await;
        } else {
            // A third worker or dispatcher joins the fleet, or the one that joined leaves it.
            let joiner = &mut joiners[rng.random_range(0..2)];
            let leaves = joiner.pid().is_some();
            let what = format!(
                "{} {}",
                joiner.name,
                if leaves { "leaves" } else { "joins" }
            );
            // On the timeline as it begins, like every fault.
            report.timeline.push((what.clone(), chrono::Utc::now()));
            if leaves {
                stop_gracefully(&mut report, joiner).await;
            } else {
                joiner.start(&stack);
                recover(&mut report, joiner).await;
            }
            *report.graceful.entry(what).or_default() += 1;
        }
    }
    for joiner in &mut joiners {
        stop_gracefully(&mut report, joiner).await;
    }
    report.max_recovery_ms = report
        .recoveries_ms
        .iter()
        .map(|(_, ms)| *ms)
        .max()
        .unwrap_or(0);

    // The faults are over: every due slot must come to a run that is over.
    let mut ledger = stack.tail(&stack.kafka.topics().runs());
    report.ledger = wait_for_settled(&mut ledger, &jobs, end).await;
    if !tokio::task::block_in_place(|| ledger.catch_up(LEDGER_READ_LIMIT)) {
        report.stalls.push((
            format!(
                "the ledger, not read to its end within {} s",
                LEDGER_READ_LIMIT.as_secs()
            ),
            chrono::Utc::now(),
        ));
    }
    let events = ledger.run_events();
    let log = std::fs::read_to_string(&effects).unwrap_or_default();
    report.effects = check_effects(&log, &events, &jobs, &report.timeline);
    report.audit = check_audit(&stack.alerts(), &events, &jobs);
    report.audit.slots_checked = audited_slots(&format!("http://{api_addr}"), &jobs).await;

    // Rebuilds: one dispatcher takes every partition first, so that its live state covers them all.
    stop_gracefully(&mut report, &mut fleet[2]).await;
    recover(&mut report, &fleet[1]).await;
    for index in [0, 1, 5] {
        let difference = rebuild(&stack, &mut fleet[index]).await?;
        report
            .rebuilds
            .push((fleet[index].name.clone(), difference));
    }
    for instance in &mut fleet {
        stop_gracefully(&mut report, instance).await;
    }
    report.elapsed_secs = began.elapsed().as_secs();
    Ok(report)
}

/// How many members the consumer group has, as the broker describes it.
async fn group_members(stack: &Stack, group: &str) -> Option<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let config = stack.kafka.client_config();
    let group = group.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().ok()?;
        let groups = consumer
            .fetch_group_list(Some(&group), Duration::from_secs(5))
            .ok()?;
        groups.groups().first().map(|g| g.members().len())
    })
    .await
    .ok()
    .flatten()
}

/// Waits (bounded) until the load's last slot has passed and every run in the ledger is over,
/// then checks the ledger. A minute after the last slot, runs that are over but slots still
/// missing mean lost fires: waiting longer would not bring them.
async fn wait_for_settled(
    ledger: &mut crate::TopicTail,
    jobs: &[JobDefinition],
    end: Timestamp,
) -> LedgerCheck {
    let give_up = Instant::now() + Duration::from_secs(240);
    loop {
        // Read what is new since the last look (a long run's ledger is large, and the broker
        // is busy); a slow read is looked at again on the next turn.
        tokio::task::block_in_place(|| ledger.catch_up(LEDGER_READ_LIMIT));
        let check = check_ledger(&ledger.run_events(), jobs);
        let now = chrono::Utc::now();
        let over = now > end + chrono::Duration::seconds(2);
        let stuck = now > end + chrono::Duration::seconds(60) && check.unfinished.is_empty();
        if (over && check.passed()) || stuck || Instant::now() > give_up {
            return check;
        }
        tokio::time::sleep(crate::POLL * 5).await;
    }
}

/// How long one read of the ledger's new records may take.
const LEDGER_READ_LIMIT: Duration = Duration::from_secs(60);

/// How long an instance may take to catch up after a fault before the run counts it stalled.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

/// Waits for the instance to catch up after a fault; if it does not within [`RECOVERY_LIMIT`],
/// notes the stall and goes on.
async fn recover(report: &mut ChaosReport, instance: &Instance) {
    if !instance.caught_up_within(RECOVERY_LIMIT).await {
        let stall = format!(
            "{} not caught up within {} s",
            instance.name,
            RECOVERY_LIMIT.as_secs()
        );
        report.timeline.push((stall.clone(), chrono::Utc::now()));
        report
            .stalls
            .push((instance.name.clone(), chrono::Utc::now()));
    }
}

/// Stops the service cleanly, reads its state, starts it again from an empty store, lets it catch
/// up, stops it, and compares.
async fn rebuild(stack: &Stack, instance: &mut Instance) -> anyhow::Result<Option<String>> {
    let dir = instance.data_dir.clone().expect("a stateful service");
    instance.stop().await?;
    let live = read_state(&dir);
    std::fs::remove_dir_all(&dir)?;
    instance.start(stack);
    if !instance.caught_up_within(RECOVERY_LIMIT).await {
        return Ok(Some(format!(
            "the rebuild did not catch up within {} s",
            RECOVERY_LIMIT.as_secs()
        )));
    }
    instance.stop().await?;
    let rebuilt = read_state(&dir);
    instance.start(stack);
    instance.wait_caught_up(RECOVERY_LIMIT).await;
    Ok(state_difference(live, rebuilt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::run::TaskOutput;

    fn at(secs: i64) -> Timestamp {
        kairos_core::from_millis(1_800_000_000_000 + secs * 1000).unwrap()
    }

    fn event(job: &JobDefinition, slot: Timestamp, kind: RunEventKind) -> RunEvent {
        RunEvent {
            job_id: job.id.clone(),
            run_id: RunId::derive(&job.id, slot, TriggerKind::Schedule),
            scheduled_for: slot,
            at: slot,
            kind,
            shard: None,
        }
    }

    fn ran(job: &JobDefinition, slot: Timestamp) -> Vec<RunEvent> {
        let succeeded = RunEventKind::RunSucceeded {
            attempt: 1,
            worker_id: "w".into(),
            output: TaskOutput::default(),
        };
        vec![
            event(
                job,
                slot,
                RunEventKind::RunScheduled {
                    trigger: TriggerKind::Schedule,
                    definition_offset: 0,
                },
            ),
            event(
                job,
                slot,
                RunEventKind::RunDispatched {
                    attempt: 1,
                    pool: "default".into(),
                },
            ),
            event(job, slot, succeeded),
        ]
    }

    /// Given a ledger where slot 0 was decided in time, slot 1 late and slot 2 never, and a run
    /// that left the scheduled state within a second, when the audit alerted all four, then only
    /// the alerts about slot 0 and about that run are false alarms.
    #[test]
    fn audit_alerts_about_what_the_ledger_had_in_time_are_false_alarms() {
        let jobs = load_jobs(1, at(0), at(100), std::path::Path::new("/dev/null"));
        let job = &jobs[0];
        let mut ledger = ran(job, at(0));
        let mut late = ran(job, at(1));
        for event in &mut late {
            // Past slot 1's 30 s of grace.
            event.at = at(32);
        }
        ledger.extend(late);
        let run = |secs| RunId::derive(&job.id, at(secs), TriggerKind::Schedule);
        let missed = |secs| {
            Alert::slot_missed(
                job.id.clone(),
                run(secs),
                at(secs),
                at(secs + 30),
                at(secs + 35),
            )
        };
        let stuck = Alert::run_stuck(job.id.clone(), run(0), "scheduled", 0, at(30), at(35));
        let check = check_audit(&[missed(0), missed(1), missed(2), stuck], &ledger, &jobs);
        assert_eq!(check.slot_missed, 3);
        assert_eq!(check.run_stuck.len(), 1);
        assert_eq!(check.false_alarms.len(), 2, "{:?}", check.false_alarms);
        assert!(
            check.false_alarms[0].contains("slot_missed"),
            "{:?}",
            check.false_alarms
        );
        assert!(
            check.false_alarms[1].contains("run_stuck"),
            "{:?}",
            check.false_alarms
        );
        assert!(!check.passed());
    }

    /// Given a ledger where every slot ran once, when the side-effect log shows an attempt run
    /// again after its outcome, one cut off (its worker killed) and run again, one run again after
    /// it ended but before its outcome, and a run outside the schedule, then each is counted under
    /// its cause, only the kill explains a repeat, and a slot with no execution is named.
    #[test]
    fn side_effects_are_counted_per_slot_and_repeats_by_cause() {
        let jobs = load_jobs(1, at(0), at(2), std::path::Path::new("/dev/null"));
        let job = &jobs[0];
        let ledger: Vec<RunEvent> = (0..=2).flat_map(|s| ran(job, at(s))).collect();
        let run = |secs| RunId::derive(&job.id, at(secs), TriggerKind::Schedule);
        let line = |what: &str, secs: i64, ms: i64| {
            let nanos = (at(secs) + chrono::Duration::milliseconds(ms))
                .timestamp_nanos_opt()
                .unwrap();
            // Slot 1 runs on the worker that is killed.
            let worker = if secs == 1 { "worker-b" } else { "worker-a" };
            format!("{what} {} 1 {nanos} {worker}\n", run(secs))
        };
        let timeline = [
            (
                "kill -9 worker-b".to_string(),
                at(1) - chrono::Duration::milliseconds(400),
            ),
            ("SIGTERM worker-a".to_string(), at(0)),
        ];
        let slot_2 = [
            line("start", 2, -900),
            line("end", 2, -800),
            line("start", 2, -500),
            line("end", 2, -400),
        ]
        .concat();
        let rest = [
            // Slot 0: run again a second after its outcome was recorded.
            line("start", 0, -500),
            line("end", 0, -100),
            line("start", 0, 1000),
            // Slot 1: cut off while running, run again before any outcome.
            line("start", 1, -500),
            line("start", 1, -200),
            line("end", 1, -100),
            // A run the schedule does not have.
            line("start", 9, 0),
        ]
        .concat();
        let check = check_effects(&(rest.clone() + &slot_2), &ledger, &jobs, &timeline);
        assert_eq!(check.executions, 7);
        assert_eq!(check.outside_schedule, 1);
        assert_eq!(check.slots_executed_more_than_once, 3);
        let rerun = &check.reruns_after_outcome[..];
        assert_eq!(rerun.len(), 1);
        assert_eq!((rerun[0].run_id, rerun[0].attempt), (run(0), 1));
        assert_eq!(rerun[0].outcome_at, Some(at(0)));
        assert_eq!((check.reruns_cut_off, check.reruns_after_finish), (1, 1));
        assert_eq!(
            check.repeats_after_a_fault,
            BTreeMap::from([("its worker killed (kill -9)".to_string(), 1)])
        );
        let listed: Vec<_> = check
            .each_repeat_after_a_fault
            .iter()
            .map(|r| r.fault_before.as_ref().map(|(what, _)| what.as_str()))
            .collect();
        assert_eq!(listed.len(), 1, "each repeat after a fault is listed");
        assert!(
            listed[0].is_some_and(|what| what.starts_with("kill -9 ")),
            "with the fault it is put down to: {listed:?}"
        );
        let graceful: Vec<_> = check
            .repeats_without_a_fault
            .iter()
            .map(|r| (r.run_id, r.first_worker.as_str()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            graceful,
            BTreeSet::from([(run(0), "worker-a"), (run(2), "worker-a")])
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert!(check.slots_not_executed.is_empty());
        assert!(
            !check.passed(),
            "an execution outside the schedule fails the run"
        );

        let check = check_effects(&rest, &ledger, &jobs, &timeline);
        assert_eq!(check.slots_not_executed, [(job.id.to_string(), at(2))]);
    }

    #[test]
    fn a_complete_ledger_passes_and_each_defect_is_named() {
        let jobs = load_jobs(1, at(0), at(2), std::path::Path::new("/dev/null"));
        let job = &jobs[0];
        let mut ledger: Vec<RunEvent> = (0..=2).flat_map(|s| ran(job, at(s))).collect();
        let check = check_ledger(&ledger, &jobs);
        assert!(check.passed(), "{check:?}");
        assert_eq!((check.slots_due, check.runs, check.attempts), (3, 3, 3));

        // A repeated RunScheduled and a repeated outcome are recognised, not failures.
        ledger.push(ran(job, at(1)).remove(0));
        ledger.push(ran(job, at(1)).remove(2));
        let check = check_ledger(&ledger, &jobs);
        assert!(check.passed(), "{check:?}");
        assert_eq!(
            (
                check.repeated_scheduled_records,
                check.repeated_outcome_records
            ),
            (1, 1)
        );

        // A lost fire, an unfinished run and a fire outside the schedule each fail the check.
        let without_slot_2: Vec<RunEvent> = ledger
            .iter()
            .filter(|e| e.scheduled_for != at(2))
            .cloned()
            .collect();
        let check = check_ledger(&without_slot_2, &jobs);
        assert_eq!(check.missing_slots, [(job.id.to_string(), at(2))]);
        assert!(!check.passed());
        let mut unfinished = without_slot_2.clone();
        unfinished.extend(ran(job, at(2)).into_iter().take(2));
        let check = check_ledger(&unfinished, &jobs);
        assert_eq!(check.unfinished.len(), 1);
        assert!(!check.passed());
        let mut outside = ledger.clone();
        outside.extend(ran(job, at(9)));
        assert_eq!(
            check_ledger(&outside, &jobs).unexpected_slots,
            [(job.id.to_string(), at(9))]
        );
    }
}

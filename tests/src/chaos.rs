//! The fault-injection suite: the four service binaries (two dispatchers, two workers) on a broker
//! of their own, a steady load of jobs, and `kill -9` of a random service instance again and
//! again, each restarted after a moment, with one broker restart half-way. Then the ledger is
//! checked: every due slot has exactly one scheduled run, every run is over, no attempt has two
//! recorded outcomes; and each stateful service, rebuilt from scratch, has the state it had live.
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
    pub ledger: LedgerCheck,
    /// Service name and, when its rebuilt state differs from its live one, how.
    pub rebuilds: Vec<(String, Option<String>)>,
    pub elapsed_secs: u64,
    /// When each fault happened, to line lost work up with its cause.
    pub timeline: Vec<(String, Timestamp)>,
}

impl ChaosReport {
    /// Whether nothing was lost, duplicated or left unfinished, and every rebuild matched.
    pub fn passed(&self) -> bool {
        self.ledger.passed() && self.rebuilds.iter().all(|(_, diff)| diff.is_none())
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
        writeln!(
            f,
            "  cycles {}, kills {:?}, broker restarts {}",
            self.cycles, self.kills, self.broker_restarts
        )?;
        writeln!(
            f,
            "  max recovery {} ms (restart to caught up)",
            self.max_recovery_ms
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
fn load_jobs(count: usize, start: Timestamp, end: Timestamp) -> Vec<JobDefinition> {
    (0..count)
        .map(|n| {
            let spec = JobSpec {
                id: format!("chaos-{n:03}"),
                description: None,
                schedule: ScheduleSpec {
                    every: Some(Duration::from_secs(1)),
                    ..ScheduleSpec::default()
                },
                more_schedules: vec![],
                calendars: vec![],
                task: TaskSpec::Shell(ShellTask {
                    command: vec!["sh".into(), "-c".into(), format!("sleep 0.{}", n % 5)],
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
    let beat = "--heartbeat-interval=300ms";
    let http = format!("--http-addr={}", free_addr());
    let mut fleet = vec![
        Instance::new(&stack, "trigger", "kairos-trigger", &[], true),
        Instance::new(
            &stack,
            "dispatcher-a",
            "kairos-dispatcher",
            &["--deadline-margin=5s"],
            true,
        ),
        Instance::new(
            &stack,
            "dispatcher-b",
            "kairos-dispatcher",
            &["--deadline-margin=5s"],
            true,
        ),
        Instance::new(
            &stack,
            "worker-a",
            "kairos-worker",
            &[
                "--worker-id=worker-a",
                beat,
                "--max-concurrent=8",
                "--drain-timeout=2s",
            ],
            false,
        ),
        Instance::new(
            &stack,
            "worker-b",
            "kairos-worker",
            &[
                "--worker-id=worker-b",
                beat,
                "--max-concurrent=8",
                "--drain-timeout=2s",
            ],
            false,
        ),
        Instance::new(&stack, "aggregator", "kairos-aggregator", &[&http], true),
    ];
    for instance in &mut fleet {
        instance.start(&stack);
    }
    for instance in &fleet {
        instance.wait_caught_up(Duration::from_secs(60)).await;
    }

    // A job's schedule starts when its definition is written: the first slot must come after.
    let now = chrono::Utc::now();
    let start = kairos_core::from_millis((now.timestamp_millis() / 1000 + 3) * 1000).unwrap_or(now);
    let end = start + chrono::Duration::from_std(config.load)?;
    let jobs = load_jobs(config.jobs, start, end);
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
                instance.wait_caught_up(Duration::from_secs(120)).await;
            }
            report
                .recoveries_ms
                .push(("broker".into(), restarted.elapsed().as_millis()));
            continue;
        }
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
        instance.wait_caught_up(Duration::from_secs(120)).await;
        report
            .recoveries_ms
            .push((instance.name.clone(), restarted.elapsed().as_millis()));
    }
    report.max_recovery_ms = report
        .recoveries_ms
        .iter()
        .map(|(_, ms)| *ms)
        .max()
        .unwrap_or(0);

    // The faults are over: every due slot must come to a run that is over.
    let settled = wait_for_settled(&stack, &jobs, end).await;
    report.ledger = settled;

    // Rebuilds: one dispatcher takes every partition first, so that its live state covers them all.
    fleet[2].stop().await?;
    fleet[1].wait_caught_up(Duration::from_secs(60)).await;
    for index in [0, 1, 5] {
        let difference = rebuild(&stack, &mut fleet[index]).await?;
        report
            .rebuilds
            .push((fleet[index].name.clone(), difference));
    }
    for instance in &mut fleet {
        instance.stop().await?;
    }
    report.elapsed_secs = began.elapsed().as_secs();
    Ok(report)
}

/// Waits (bounded) until the load's last slot has passed and every run in the ledger is over,
/// then checks the ledger. A minute after the last slot, runs that are over but slots still
/// missing mean lost fires: waiting longer would not bring them.
async fn wait_for_settled(stack: &Stack, jobs: &[JobDefinition], end: Timestamp) -> LedgerCheck {
    let give_up = Instant::now() + Duration::from_secs(240);
    loop {
        let check = check_ledger(&stack.ledger(), jobs);
        let now = chrono::Utc::now();
        let over = now > end + chrono::Duration::seconds(2);
        let stuck = now > end + chrono::Duration::seconds(60) && check.unfinished.is_empty();
        if (over && check.passed()) || stuck || Instant::now() > give_up {
            return check;
        }
        tokio::time::sleep(crate::POLL * 5).await;
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
    instance.wait_caught_up(Duration::from_secs(120)).await;
    instance.stop().await?;
    let rebuilt = read_state(&dir);
    instance.start(stack);
    instance.wait_caught_up(Duration::from_secs(120)).await;
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

    #[test]
    fn a_complete_ledger_passes_and_each_defect_is_named() {
        let jobs = load_jobs(1, at(0), at(2));
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

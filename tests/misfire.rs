//! Missed slots follow each job's misfire policy: all services are stopped for several slots,
//! restarted, and every missed slot gets exactly one decision on the ledger, as the policy says.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_core::job::{MisfireKind, MisfirePolicy};
use kairos_core::run::{RunEvent, RunEventKind, SkipReason};
use kairos_core::Timestamp;
use kairos_tests::{shell_job, stop_all, wait_for, Stack};

const GRACE: Duration = Duration::from_millis(500);
const OUTAGE: Duration = Duration::from_secs(5);

/// A trigger decision about one slot: ran, or recorded as misfired.
#[derive(Debug)]
struct Decision {
    slot: Timestamp,
    decided_at: Timestamp,
    ran: bool,
}

impl Decision {
    fn late(&self) -> bool {
        (self.decided_at - self.slot).to_std().unwrap_or_default() > GRACE
    }
}

fn decisions(ledger: &[RunEvent], job: &str) -> Vec<Decision> {
    let mut by_slot = BTreeMap::new();
    for event in ledger.iter().filter(|e| e.job_id.as_str() == job) {
        let ran = match event.kind {
            RunEventKind::RunScheduled { .. } => true,
            RunEventKind::RunSkipped {
                reason: SkipReason::Misfire,
            } => false,
            _ => continue,
        };
        let previous = by_slot.insert(
            event.scheduled_for,
            Decision {
                slot: event.scheduled_for,
                decided_at: event.at,
                ran,
            },
        );
        assert!(
            previous.is_none(),
            "{job}: slot {} was decided twice",
            event.scheduled_for
        );
    }
    by_slot.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_slots_follow_each_jobs_misfire_policy_after_an_outage() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;
    let jobs = [
        ("once", MisfireKind::FireOnce),
        ("skip", MisfireKind::Skip),
        ("catch", MisfireKind::CatchUp),
    ];
    for (id, policy) in jobs {
        let mut job = shell_job(id, "1s", "true");
        job.misfire = MisfirePolicy {
            policy,
            grace: GRACE,
            catch_up_window: Duration::from_secs(3600),
        };
        stack.apply_job(job).await;
    }
    wait_for(
        "every job to fire twice before the outage",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            jobs.iter()
                .all(|(id, _)| decisions(&ledger, id).len() >= 2)
                .then_some(())
        },
    )
    .await;

    stop_all(services).await;
    // The outage under test: nobody owns the jobs while several slots come due.
    tokio::time::sleep_until(tokio::time::Instant::now() + OUTAGE).await;
    let restarted_at = chrono::Utc::now();
    let services = stack.start_pipeline().await;

    let ledger = wait_for(
        "an on-time slot of every job after the restart",
        Duration::from_secs(60),
        || async {
            let ledger = stack.ledger();
            let resumed = jobs.iter().all(|(id, _)| {
                decisions(&ledger, id)
                    .iter()
                    .any(|d| d.slot > restarted_at && !d.late() && d.ran)
            });
            resumed.then_some(ledger)
        },
    )
    .await;

    for (id, policy) in jobs {
        let decided = decisions(&ledger, id);
        for pair in decided.windows(2) {
            assert_eq!(
                pair[1].slot - pair[0].slot,
                chrono::Duration::seconds(1),
                "{id}: a slot has no decision"
            );
        }
        let late: Vec<&Decision> = decided.iter().filter(|d| d.late()).collect();
        assert!(
            late.len() >= 3,
            "{id}: only {} slots were missed: {decided:?}",
            late.len()
        );
        match policy {
            MisfireKind::Skip => assert!(
                late.iter().all(|d| !d.ran),
                "{id}: a missed slot ran: {late:?}"
            ),
            MisfireKind::CatchUp => assert!(
                late.iter().all(|d| d.ran),
                "{id}: a missed slot was skipped: {late:?}"
            ),
            MisfireKind::FireOnce => {
                // The first pass after the restart decides the whole backlog at one instant: one
                // run, for its latest slot, and every older slot recorded as misfired. (The same
                // pass fires the next slot ahead, on time: not one of the backlog.)
                let pass_at = late[0].decided_at;
                let pass: Vec<&Decision> = decided
                    .iter()
                    .filter(|d| d.decided_at == pass_at && d.slot <= pass_at)
                    .collect();
                let (last, older) = pass.split_last().unwrap();
                assert!(
                    last.ran,
                    "{id}: the latest missed slot did not run: {pass:?}"
                );
                assert!(
                    older.iter().all(|d| !d.ran),
                    "{id}: an older missed slot ran: {pass:?}"
                );
            }
        }
    }
    stop_all(services).await;
}

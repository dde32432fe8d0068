//! Handing a revoked partition's attempts to its next owner.
//!
//! A rebalance moves partitions, not running attempts: the partition's next owner is given again
//! every task past its committed offset, including those this worker still has. So before the
//! group may give the partition to another worker (the revocation's callback, which the whole
//! group waits for), this worker settles every attempt it has taken from it:
//! - one it has not taken up (held for its start, or for the ledger) is released: it never runs
//!   here, and the next owner runs it;
//! - one it has taken up (waiting for a concurrency place, or running) is announced: its
//!   `RunStarted`, and any outcome already sent, are on the ledger when the callback returns.
//!   The next owner reads the ledger for every redelivered task, and leaves such an attempt to
//!   this worker (or skips it, if it is over). Handing over a backlog waiting for places instead
//!   would have every rebalance throw it away and fetch it again.
//!
//! A lost assignment (this worker was expelled, and another may run the attempts already) has
//! nothing announced, and its attempts waiting for a place are released too.
//!
//! Only an attempt begun by a worker that dies, or is cut off from its group, before it
//! reports can therefore run again elsewhere.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_core::{TaskAssigned, Timestamp};
use tokio_util::sync::CancellationToken;

/// This worker's hold on an attempt it has taken off a lane's queue. Exactly one of the
/// execution (which takes it up, begins it, or skips it) and a revocation of its partition
/// (which releases it) settles each step first.
pub(crate) struct Claim {
    state: AtomicU8,
    /// Cancelled when the claim is released: the execution stops waiting.
    pub(crate) released: CancellationToken,
    partition: i32,
    task: TaskAssigned,
    /// When it was taken up here.
    taken_at: Mutex<Option<Timestamp>>,
    /// Its `RunStarted` has been sent.
    start_sent: AtomicBool,
}

impl Claim {
    const HELD: u8 = 0;
    /// Taken up: waiting for a concurrency place, to run here.
    const TAKEN: u8 = 1;
    const BEGUN: u8 = 2;
    const RELEASED: u8 = 3;
    const ENDED: u8 = 4;

    fn new(partition: i32, task: TaskAssigned) -> Self {
        Claim {
            state: AtomicU8::new(Self::HELD),
            released: CancellationToken::new(),
            partition,
            task,
            taken_at: Mutex::new(None),
            start_sent: AtomicBool::new(false),
        }
    }

    fn settle(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called once the attempt is to run here, before it waits for a place: false if it was
    /// released.
    pub(crate) fn take_up(&self, at: Timestamp) -> bool {
        // Set first, so that a revocation that sees the claim taken up knows when.
        *self.taken_at.lock().expect("claim lock") = Some(at);
        self.settle(Self::HELD, Self::TAKEN)
    }

    /// Called right before the attempt runs: false if it was released (a lost assignment).
    pub(crate) fn begin(&self) -> bool {
        self.settle(Self::TAKEN, Self::BEGUN)
    }

    /// Called when the attempt is not run here (another worker ran it or runs it, or it was
    /// cancelled): false if it was released, and the partition's next owner decides.
    pub(crate) fn skip(&self) -> bool {
        self.settle(Self::HELD, Self::ENDED)
            || self.settle(Self::TAKEN, Self::ENDED)
            || self.settle(Self::BEGUN, Self::ENDED)
    }

    /// Called once a taken-up attempt is over here: reported, or handed back unreported.
    pub(crate) fn end(&self) {
        self.state.store(Self::ENDED, Ordering::Release);
    }

    /// Called before the attempt's `RunStarted` is sent.
    pub(crate) fn start_sent(&self) {
        self.start_sent.store(true, Ordering::Release);
    }

    /// Whether its `RunStarted` has been sent: by its execution, or at a handover while it
    /// waited for a place.
    pub(crate) fn was_start_sent(&self) -> bool {
        self.start_sent.load(Ordering::Acquire)
    }

    /// Releases the claim if it was not taken up, or with `waiting_too` (a lost assignment, a
    /// stop) if it was not begun: true if it is released (now or before), and the attempt never
    /// runs here.
    pub(crate) fn release(&self, waiting_too: bool) -> bool {
        if self.settle(Self::HELD, Self::RELEASED)
            || (waiting_too && self.settle(Self::TAKEN, Self::RELEASED))
        {
            self.released.cancel();
        }
        self.state.load(Ordering::Acquire) == Self::RELEASED
    }

    fn is_settled(&self) -> bool {
        matches!(
            self.state.load(Ordering::Acquire),
            Self::RELEASED | Self::ENDED
        )
    }

    /// Taken up here, and its start not yet sent: when it was taken up.
    fn unannounced_start(&self) -> Option<Timestamp> {
        let taken = matches!(
            self.state.load(Ordering::Acquire),
            Self::TAKEN | Self::BEGUN
        );
        if !taken || self.start_sent.load(Ordering::Acquire) {
            return None;
        }
        *self.taken_at.lock().expect("claim lock")
    }
}

/// The claims of the partitions this worker owns.
#[derive(Default)]
pub(crate) struct Claims {
    inner: Mutex<Owned>,
}

#[derive(Default)]
struct Owned {
    partitions: HashSet<i32>,
    claims: Vec<Arc<Claim>>,
}

/// What a revocation did with the claims of its partitions.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HandedOver {
    pub(crate) released: usize,
    /// Begun attempts whose start was not yet sent: (task, when it began).
    pub(crate) to_announce: Vec<(TaskAssigned, Timestamp)>,
}

impl Claims {
    /// The group has given this worker these partitions.
    pub(crate) fn assigned(&self, partitions: &[i32]) {
        let mut owned = self.inner.lock().expect("claims lock");
        owned.partitions.extend(partitions.iter().copied());
    }

    /// A claim on an attempt of `partition`; released at once if the partition is no longer
    /// this worker's (its revocation came before the loop heard of it).
    pub(crate) fn take(&self, partition: i32, task: TaskAssigned) -> Arc<Claim> {
        let claim = Arc::new(Claim::new(partition, task));
        let mut owned = self.inner.lock().expect("claims lock");
        owned.claims.retain(|c| !c.is_settled());
        if owned.partitions.contains(&partition) {
            owned.claims.push(Arc::clone(&claim));
        } else {
            claim.release(false);
        }
        claim
    }

    /// The partitions are revoked: their claims not taken up are released, and the taken-up ones
    /// whose start is not yet sent are returned, to be announced. Lost partitions (this worker
    /// was expelled, and another may already run their attempts) have their claims not begun
    /// released, and nothing announced.
    pub(crate) fn revoke(&self, partitions: &[i32], lost: bool) -> HandedOver {
        let mut owned = self.inner.lock().expect("claims lock");
        let mut handed = HandedOver::default();
        for partition in partitions {
            owned.partitions.remove(partition);
        }
        for claim in owned
            .claims
            .iter()
            .filter(|c| partitions.contains(&c.partition))
        {
            if claim.release(lost) {
                handed.released += 1;
            } else if let Some(began) = claim.unannounced_start().filter(|_| !lost) {
                claim.start_sent();
                handed.to_announce.push((claim.task.clone(), began));
            }
        }
        owned.claims.retain(|c| !c.is_settled());
        handed
    }

    /// The runs of the attempts this worker holds (held for their start, waiting for a place, or
    /// running), as its heartbeats announce them.
    pub(crate) fn in_flight(&self) -> Vec<kairos_core::run::RunId> {
        let owned = self.inner.lock().expect("claims lock");
        let runs: std::collections::BTreeSet<_> = owned
            .claims
            .iter()
            .filter(|c| !c.is_settled())
            .map(|c| c.task.run_id)
            .collect();
        runs.into_iter().collect()
    }

    /// The loop has heard of the partitions' revocation: a claim taken after the callback (the
    /// loop had not heard yet) is released at once, and nothing else changes.
    pub(crate) fn forget(&self, partitions: &[i32]) {
        let mut owned = self.inner.lock().expect("claims lock");
        for partition in partitions {
            owned.partitions.remove(partition);
        }
    }
}

/// How long a revocation may take to have its announcements acknowledged; the group waits.
pub(crate) const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn task(attempt: u32) -> TaskAssigned {
        let mut task = crate::tests::task();
        task.attempt = attempt;
        task
    }

    fn at(secs: i64) -> Timestamp {
        kairos_core::from_millis(1_800_000_000_000 + secs * 1000).unwrap()
    }

    /// Given claims on a partition that is revoked, when one was held, one taken up (waiting for
    /// a place), one begun and one begun with its start sent, then the held one is released (and
    /// its execution told), the taken-up and begun ones are announced with when they were taken
    /// up, and the other is left as it is.
    #[test]
    fn a_revocation_releases_what_was_not_taken_up_and_announces_what_was() {
        let claims = Claims::default();
        claims.assigned(&[0, 1]);
        let held = claims.take(0, task(1));
        let waiting = claims.take(0, task(2));
        assert!(waiting.take_up(at(4)));
        let begun = claims.take(0, task(3));
        assert!(begun.take_up(at(5)) && begun.begin());
        let reported = claims.take(0, task(4));
        assert!(reported.take_up(at(6)) && reported.begin());
        reported.start_sent();
        let elsewhere = claims.take(1, task(5));

        let handed = claims.revoke(&[0], false);

        assert_eq!(handed.released, 1);
        assert!(held.released.is_cancelled());
        assert!(!held.take_up(at(7)), "a released claim is never taken up");
        assert_eq!(handed.to_announce, vec![(task(2), at(4)), (task(3), at(5))]);
        assert!(waiting.begin(), "an announced attempt runs here");
        assert!(!elsewhere.released.is_cancelled());
        // Announced once: a second revocation adds nothing.
        assert_eq!(claims.revoke(&[0], false), HandedOver::default());
    }

    /// Given a lost assignment, when one attempt was begun and one waited for a place, then
    /// nothing is announced and the waiting one is released; and an attempt taken once the
    /// partition is gone (the loop had not heard yet) is released at once.
    #[test]
    fn a_lost_assignment_announces_nothing_and_releases_what_has_not_begun() {
        let claims = Claims::default();
        claims.assigned(&[0]);
        let begun = claims.take(0, task(1));
        assert!(begun.take_up(at(1)) && begun.begin());
        let waiting = claims.take(0, task(2));
        assert!(waiting.take_up(at(1)));
        let handed = claims.revoke(&[0], true);
        assert_eq!(handed.released, 1);
        assert!(handed.to_announce.is_empty());
        assert!(waiting.released.is_cancelled() && !waiting.begin());
        let late = claims.take(0, task(3));
        assert!(late.release(false) && !late.take_up(at(2)));
        // A skipped claim is settled and never released.
        claims.assigned(&[0]);
        let skipped = claims.take(0, task(4));
        assert!(skipped.skip());
        assert!(!skipped.release(true));
    }
}

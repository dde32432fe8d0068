//! Handing a revoked partition's attempts to its next owner.
//!
//! A rebalance moves partitions, not running attempts: the partition's next owner is given again
//! every task past its committed offset, including those this worker still has. So before the
//! group may give the partition to another worker (the revocation's callback, which the whole
//! group waits for), this worker settles every attempt it has taken from it:
//! - one it has not begun (held for its start, waiting for a place, or for the ledger) is
//!   released: it never runs here, and the next owner runs it;
//! - one it has begun is announced: its `RunStarted`, and any outcome already sent, are on the
//!   ledger when the callback returns. The next owner reads the ledger for every redelivered
//!   task, and leaves such an attempt to this worker (or skips it, if it is over).
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
/// execution (which begins it, or skips it) and a revocation of its partition (which releases
/// it) settles it first.
pub(crate) struct Claim {
    state: AtomicU8,
    /// Cancelled when the claim is released: the execution stops waiting.
    pub(crate) released: CancellationToken,
    partition: i32,
    task: TaskAssigned,
    /// When it began here.
    began: Mutex<Option<Timestamp>>,
    /// Its `RunStarted` has been sent.
    start_sent: AtomicBool,
}

impl Claim {
    const HELD: u8 = 0;
    const BEGUN: u8 = 1;
    const RELEASED: u8 = 2;
    const ENDED: u8 = 3;

    fn new(partition: i32, task: TaskAssigned) -> Self {
        Claim {
            state: AtomicU8::new(Self::HELD),
            released: CancellationToken::new(),
            partition,
            task,
            began: Mutex::new(None),
            start_sent: AtomicBool::new(false),
        }
    }

    fn settle(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called right before the attempt runs: false if it was released.
    pub(crate) fn begin(&self, at: Timestamp) -> bool {
        // Set first, so that a revocation that sees the claim begun knows when.
        *self.began.lock().expect("claim lock") = Some(at);
        self.settle(Self::HELD, Self::BEGUN)
    }

    /// Called when the attempt is not run here (another worker ran it or runs it): false if it
    /// was released, and the partition's next owner decides.
    pub(crate) fn skip(&self) -> bool {
        self.settle(Self::HELD, Self::ENDED)
    }

    /// Called once a begun attempt is over here: reported, or handed back unreported.
    pub(crate) fn end(&self) {
        self.state.store(Self::ENDED, Ordering::Release);
    }

    /// Called before the attempt's `RunStarted` is sent.
    pub(crate) fn start_sent(&self) {
        self.start_sent.store(true, Ordering::Release);
    }

    /// Releases the claim if it was not begun: true if it is released (now or before), and the
    /// attempt never runs here.
    pub(crate) fn release(&self) -> bool {
        if self.settle(Self::HELD, Self::RELEASED) {
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

    /// Begun here, and its start not yet sent: when it began.
    fn unannounced_start(&self) -> Option<Timestamp> {
        let begun = self.state.load(Ordering::Acquire) == Self::BEGUN;
        if !begun || self.start_sent.load(Ordering::Acquire) {
            return None;
        }
        *self.began.lock().expect("claim lock")
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
            claim.release();
        }
        claim
    }

    /// The partitions are revoked: their claims not begun are released, and the begun ones whose
    /// start is not yet sent are returned, to be announced. Lost partitions (this worker was
    /// expelled, and another may already run their attempts) have nothing announced.
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
            if claim.release() {
                handed.released += 1;
            } else if let Some(began) = claim.unannounced_start().filter(|_| !lost) {
                claim.start_sent();
                handed.to_announce.push((claim.task.clone(), began));
            }
        }
        owned.claims.retain(|c| !c.is_settled());
        handed
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

    /// Given claims on a partition that is revoked, when one was held, one begun and one begun
    /// with its start sent, then the held one is released (and its execution told), the begun
    /// one is announced with its start, and the other is left as it is.
    #[test]
    fn a_revocation_releases_what_has_not_begun_and_announces_what_has() {
        let claims = Claims::default();
        claims.assigned(&[0, 1]);
        let held = claims.take(0, task(1));
        let begun = claims.take(0, task(2));
        assert!(begun.begin(at(5)));
        let reported = claims.take(0, task(3));
        assert!(reported.begin(at(6)));
        reported.start_sent();
        let elsewhere = claims.take(1, task(4));

        let handed = claims.revoke(&[0], false);

        assert_eq!(handed.released, 1);
        assert!(held.released.is_cancelled());
        assert!(!held.begin(at(7)), "a released claim never begins");
        assert_eq!(handed.to_announce, vec![(task(2), at(5))]);
        assert!(!elsewhere.released.is_cancelled());
        // Announced once: a second revocation (the loop's, after the callback's) adds nothing.
        assert_eq!(claims.revoke(&[0], false), HandedOver::default());
    }

    /// Given a partition already revoked, when an attempt of it is taken (the loop had not heard
    /// yet), then the claim is released at once; and after a lost assignment nothing is
    /// announced.
    #[test]
    fn claims_on_a_partition_no_longer_owned_are_released_and_lost_ones_not_announced() {
        let claims = Claims::default();
        claims.assigned(&[0]);
        let begun = claims.take(0, task(1));
        assert!(begun.begin(at(1)));
        let handed = claims.revoke(&[0], true);
        assert_eq!(handed, HandedOver::default());
        let late = claims.take(0, task(2));
        assert!(late.release() && !late.begin(at(2)));
        // A skipped claim is settled and never released.
        claims.assigned(&[0]);
        let skipped = claims.take(0, task(3));
        assert!(skipped.skip());
        assert!(!skipped.release());
    }
}

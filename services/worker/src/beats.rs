//! This worker's regular heartbeats, sent from a task of their own.
//!
//! The dispatchers judge a worker by its beats, and record the attempts of a silent one lost: the
//! beats must stop when the worker cannot attend its attempts (killed, frozen, cut off from the
//! broker), and only then. The worker's loop waits on the broker during every rebalance (the
//! revocation's handover waits up to five seconds for its announcements, an assignment reads
//! watermarks) while the executions go on running and reporting; beats sent by the loop stopped
//! with it, and in the chaos runs live workers were recorded lost, their attempts retried and
//! run twice. A loop stuck for far longer than any such wait does stop the beats, so that what it
//! has queued is retried elsewhere rather than waited for forever.
//!
//! The beater also tells how long the worker was silent: the gap between two of its beats is
//! what a dispatcher saw. Past the silence limit the worker's attempts may have been recorded
//! lost, past the group session its partitions given to another worker; the executions learn it
//! through [`Membership`] before they start anything, the loop through the `silences` channel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kairos_runtime::codec::{self, WorkerHeartbeat};
use kairos_runtime::kafka::Producer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::handover::Claims;
use crate::Membership;

/// Heartbeats sent and not yet acknowledged past which the next is left out.
const MAX_BEATS_IN_FLIGHT: usize = 8;

/// How long the worker's loop may go without turning before the beats stop: far longer than a
/// rebalance holds it (a handover waits five seconds at most, a watermark read ten).
pub(crate) const LOOP_STALL_LIMIT: Duration = Duration::from_secs(60);

/// What a heartbeat says of this worker besides its attempts.
#[derive(Clone, Debug)]
pub(crate) struct Announcement {
    pub(crate) worker_id: String,
    pub(crate) pool: String,
    pub(crate) capacity: u32,
    pub(crate) task_types: Vec<String>,
    pub(crate) interval: Duration,
}

impl Announcement {
    /// This worker's heartbeat now, with the runs of the attempts it holds.
    pub(crate) fn beat(&self, claims: &Claims, stopping: bool) -> anyhow::Result<Vec<u8>> {
        let heartbeat = WorkerHeartbeat {
            worker_id: self.worker_id.clone(),
            pool: self.pool.clone(),
            capacity: self.capacity,
            task_types: self.task_types.clone(),
            in_flight: claims.in_flight(),
            interval: self.interval,
            stopping,
            at: kairos_runtime::now(),
        };
        Ok(codec::encode_heartbeat(&heartbeat)?)
    }
}

/// A silence of this worker, as its beater measured it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Silence {
    pub(crate) lasted: Duration,
    /// Long enough for the group to have expelled this worker (nearly its session: see
    /// [`kairos_runtime::KafkaArgs::expulsion_after`]). Taken as expelled: a silence judged too
    /// short ran attempts on partitions the group had already given to another worker.
    pub(crate) expelled: bool,
}

/// When the worker's loop last turned, for the beater to tell a stuck loop.
#[derive(Debug)]
pub(crate) struct LoopClock(Mutex<Instant>);

impl LoopClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(LoopClock(Mutex::new(Instant::now())))
    }

    pub(crate) fn turned(&self) {
        *self.0.lock().expect("loop clock") = Instant::now();
    }

    fn stalled_for(&self) -> Duration {
        self.0.lock().expect("loop clock").elapsed()
    }
}

/// Sends the regular beats, until stopped; the first and the last beat are the worker's own.
pub(crate) struct Beater {
    pub(crate) producer: Producer,
    pub(crate) topic: String,
    pub(crate) announcement: Announcement,
    pub(crate) claims: Arc<Claims>,
    pub(crate) membership: watch::Sender<Membership>,
    pub(crate) silences: mpsc::UnboundedSender<Silence>,
    /// How long the worker may be silent before a dispatcher may call it lost.
    pub(crate) silence_limit: Duration,
    /// How long the worker may be silent before its group may have expelled it (see
    /// [`kairos_runtime::KafkaArgs::expulsion_after`]).
    pub(crate) expulsion_after: Duration,
    pub(crate) loop_clock: Arc<LoopClock>,
    /// [`LOOP_STALL_LIMIT`].
    pub(crate) stall_limit: Duration,
}

impl Beater {
    /// Beats every interval until `stop`, then waits for the beats still on their way, so that a
    /// goodbye sent next lands after them (the compacted topic keeps it).
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.announcement.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now, and the worker has just sent its first beat.
        tick.tick().await;
        let mut last_beat = Instant::now();
        let mut beating: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut stalled = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let stall = self.loop_clock.stalled_for();
            if stall > self.stall_limit {
                if !stalled {
                    tracing::error!(?stall, "The worker's loop is stuck; no more heartbeats until it turns, so that its queued attempts are retried elsewhere.");
                }
                stalled = true;
                continue;
            }
            stalled = false;
            self.heard(last_beat.elapsed());
            last_beat = Instant::now();
            // A broker slow to acknowledge must not thin out the beats (readers keep each worker's
            // newest by time, so order does not matter); only while many are on their way (a
            // broker outage) is one left out.
            beating.retain(|beat| !beat.is_finished());
            if beating.len() >= MAX_BEATS_IN_FLIGHT {
                tracing::debug!("Heartbeats are not acknowledged; skipping this one.");
                continue;
            }
            let bytes = match self.announcement.beat(&self.claims, false) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(%error, "Encoding a heartbeat failed.");
                    continue;
                }
            };
            let (producer, topic, key) = (
                self.producer.clone(),
                self.topic.clone(),
                self.announcement.worker_id.clone(),
            );
            beating.push(tokio::spawn(async move {
                if let Err(error) = producer.send(&topic, &key, Some(&bytes)).await {
                    tracing::debug!(%error, "Sending a heartbeat failed; the next one goes on time.");
                }
            }));
        }
        for beat in beating {
            let _ = beat.await;
        }
    }

    /// The worker beats again after `silent`: past the silence limit the executions and the loop
    /// hear of it (the executions first, in the same change that says the worker beats again).
    fn heard(&self, silent: Duration) {
        let silence = (silent > self.silence_limit).then_some(Silence {
            lasted: silent,
            expelled: silent > self.expulsion_after,
        });
        self.membership.send_modify(|m| {
            m.last_beat = Instant::now();
            m.expelled |= silence.is_some_and(|s| s.expelled);
            m.silences += u64::from(silence.is_some());
        });
        if let Some(silence) = silence {
            let _ = self.silences.send(silence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(50);
    const STALL_LIMIT: Duration = Duration::from_millis(600);

    /// A beater whose producer has no broker to reach: what is observed is what it tells the
    /// executions and the loop.
    fn beater() -> (
        Beater,
        watch::Receiver<Membership>,
        mpsc::UnboundedReceiver<Silence>,
        Arc<LoopClock>,
    ) {
        let kafka = kairos_runtime::KafkaArgs::new("127.0.0.1:1", "t");
        let membership = watch::Sender::new(Membership {
            expelled: false,
            last_beat: Instant::now(),
            silences: 0,
        });
        let (silences_tx, silences) = mpsc::unbounded_channel();
        let loop_clock = LoopClock::new();
        let beater = Beater {
            producer: kafka.heartbeat_producer(Duration::from_secs(1)).unwrap(),
            topic: "t.heartbeats".into(),
            announcement: Announcement {
                worker_id: "w".into(),
                pool: "default".into(),
                capacity: 1,
                task_types: vec!["shell".into()],
                interval: INTERVAL,
            },
            claims: Arc::new(Claims::default()),
            membership: membership.clone(),
            silences: silences_tx,
            silence_limit: INTERVAL * 3,
            expulsion_after: Duration::from_secs(30),
            loop_clock: Arc::clone(&loop_clock),
            stall_limit: STALL_LIMIT,
        };
        (beater, membership.subscribe(), silences, loop_clock)
    }

    /// Given a worker whose loop does not turn (a rebalance holds it), when less than the stall
    /// limit has passed, then the beats go on; past it they stop; and when the loop turns again,
    /// the next beat tells the loop how long the worker was silent (not past its session, so not
    /// expelled).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beats_go_on_while_the_loop_waits_and_stop_while_it_is_stuck() {
        let (beater, mut membership, mut silences, loop_clock) = beater();
        let stop = CancellationToken::new();
        let task = tokio::spawn(beater.run(stop.clone()));
        let held = Instant::now();
        loop_clock.turned();

        // Beats go on while the loop is held: several within the stall limit.
        let mut beats = 0;
        while held.elapsed() < STALL_LIMIT / 2 {
            tokio::time::timeout(INTERVAL * 4, membership.changed())
                .await
                .expect("a beat within four intervals while the loop is held")
                .unwrap();
            beats += 1;
        }
        assert!(beats >= 3, "only {beats} beats while the loop was held");

        // Past the stall limit, none.
        let stuck = tokio::time::timeout(STALL_LIMIT * 3, async {
            loop {
                let quiet = tokio::time::timeout(INTERVAL * 4, membership.changed()).await;
                if quiet.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            stuck.is_ok(),
            "the beats never stopped while the loop was stuck"
        );
        let silent_from = membership.borrow_and_update().last_beat;
        assert!(
            silent_from.duration_since(held) >= STALL_LIMIT / 2,
            "the beats stopped before the stall limit"
        );
        tokio::time::timeout(INTERVAL * 4, membership.changed())
            .await
            .expect_err("a beat while the loop was stuck");

        // The loop turns: the next beat comes, with the silence.
        loop_clock.turned();
        let silence = tokio::time::timeout(INTERVAL * 10, silences.recv())
            .await
            .expect("the silence told within ten intervals")
            .unwrap();
        assert!(silence.lasted >= INTERVAL * 4, "{silence:?}");
        assert!(!silence.expelled && !membership.borrow().expelled);
        assert!(
            membership.borrow().silences >= 1,
            "the executions hear of the silence"
        );
        assert!(membership.borrow().last_beat > silent_from);
        stop.cancel();
        task.await.unwrap();
    }
}

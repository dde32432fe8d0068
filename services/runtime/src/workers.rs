//! Which workers are alive: the latest heartbeat of each worker and what its silence means.
//!
//! The dispatcher reads it to record the attempts of a dead worker as lost, the aggregator to show
//! the worker registry and to notice pools nobody serves, a worker to know whether the worker
//! that started a redelivered attempt is still at it; all must judge a worker the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use kairos_core::decide::Attendance;
use kairos_core::run::{RunId, RunState, RunStatus};
use kairos_core::Timestamp;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::Offset;

use crate::codec::{self, WorkerHeartbeat};
use crate::kafka::{
    broadcast_consumer, check_co_partitioning, KafkaArgs, CONSUME_RETRY_BACKOFF, WATERMARK_TIMEOUT,
};

/// Heartbeats a worker may miss before it counts as lost.
pub const MISSED_BEATS: u32 = 3;

/// Heartbeats a worker may miss before it counts as lost even when no other worker's beat shows
/// that heartbeats are flowing (a lone worker).
pub const MISSED_BEATS_ALONE: u32 = 15;

/// The workers' heartbeat interval when none is known yet (the worker's default).
pub const DEFAULT_HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What a worker's latest heartbeat says about it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// Silent for more than [`MISSED_BEATS`] of its own heartbeat intervals.
    Lost,
    /// Said goodbye: it drained, and handed back whatever it did not finish.
    Stopped,
}

impl Liveness {
    /// What the beat alone says; [`Registry::liveness`] judges silence with the care it needs.
    fn of(beat: &WorkerHeartbeat, now: Timestamp) -> Self {
        let silent_for = (now - beat.at).to_std().unwrap_or_default();
        if beat.stopping {
            Liveness::Stopped
        } else if silent_for > beat.interval * MISSED_BEATS {
            Liveness::Lost
        } else {
            Liveness::Live
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Live => "live",
            Liveness::Lost => "lost",
            Liveness::Stopped => "stopped",
        }
    }
}

/// The newest heartbeat of every worker seen.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    latest: BTreeMap<String, WorkerHeartbeat>,
    /// The newest beat of any worker: how far the heartbeats read so far reach.
    newest: Option<Timestamp>,
    /// When the reader last failed to read heartbeats (the broker was unreachable).
    deaf_at: Option<Timestamp>,
    /// When each worker last said it held a task of each run, for the runs held lately (see
    /// [`HELD_MEMORY`]).
    last_held: HashMap<RunId, Vec<Hold>>,
    /// The runs each worker's latest beat lists, as a set: attendance asks of every run a
    /// dispatcher reconciles, and a worker may list thousands.
    listed: HashMap<String, HashSet<RunId>>,
    /// When `last_held` was last rid of what it no longer needs to remember.
    last_pruned: Option<Timestamp>,
}

/// A worker's latest beat listing a run.
#[derive(Clone, Debug)]
struct Hold {
    worker: String,
    at: Timestamp,
}

/// How long the registry remembers that a worker held a run's task: longer than any dispatcher's
/// unclaimed limit.
pub const HELD_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);

impl Registry {
    /// Keeps `beat` unless a newer one of its worker is known (heartbeats of one worker share a
    /// partition, but a compacted topic read again may interleave with live ones).
    pub fn record(&mut self, beat: WorkerHeartbeat) {
        self.newest = self.newest.max(Some(beat.at));
        for run in &beat.in_flight {
            let holds = self.last_held.entry(*run).or_default();
            match holds.iter_mut().find(|hold| hold.worker == beat.worker_id) {
                Some(hold) => hold.at = hold.at.max(beat.at),
                None => holds.push(Hold {
                    worker: beat.worker_id.clone(),
                    at: beat.at,
                }),
            }
        }
        self.forget_old_holds(beat.at);
        if self
            .latest
            .get(&beat.worker_id)
            .is_none_or(|known| known.at <= beat.at)
        {
            let runs = beat.in_flight.iter().copied().collect();
            self.listed.insert(beat.worker_id.clone(), runs);
            self.latest.insert(beat.worker_id.clone(), beat);
        }
    }

    /// Forgets holds older than [`HELD_MEMORY`], once per such period: the compacted topic read
    /// from its start, and every run ever held, would otherwise all be kept.
    fn forget_old_holds(&mut self, now: Timestamp) {
        let Ok(memory) = chrono::Duration::from_std(HELD_MEMORY) else {
            return;
        };
        if self.last_pruned.is_some_and(|pruned| now - pruned < memory) {
            return;
        }
        self.last_pruned = Some(now);
        self.last_held.retain(|_, holds| {
            holds.retain(|hold| now - hold.at < memory);
            !holds.is_empty()
        });
    }

    /// [`Registry::record`]s a beat read at `now`. A beat older than a worker may be silent when it
    /// is read shows the reader behind (its task starved of CPU, or the beats held up on their
    /// way), and a reader behind reads the partitions in no particular order: it may have one
    /// worker's latest beat and not yet another's. Until it has been current for a while, its
    /// silence is its own, as after a broker outage (in the chaos runs, dispatchers busy with a
    /// burst of records took a live worker for lost, its whole backlog with it).
    pub fn hear(&mut self, beat: WorkerHeartbeat, now: Timestamp) {
        let age = (now - beat.at).to_std().unwrap_or_default();
        let behind = age > beat.interval * MISSED_BEATS;
        self.record(beat);
        if behind {
            self.deaf(now);
        }
    }

    /// Notes that reading heartbeats failed at `now`: silence heard through a broken connection
    /// says nothing about the workers.
    pub fn deaf(&mut self, now: Timestamp) {
        self.deaf_at = Some(now);
    }

    /// The worker's liveness; `None` for a worker never heard of.
    ///
    /// Silence is judged with care, since calling a live worker lost retries its work. A worker
    /// counts as lost only once the reader has heard for as long as the worker may stay silent
    /// (after a broker outage, every worker gets the time to beat again), and only when other
    /// workers' beats show that the heartbeats reaching the reader are not merely late — or,
    /// with no other worker to tell, after [`MISSED_BEATS_ALONE`] intervals.
    pub fn liveness(&self, worker_id: &str, now: Timestamp) -> Option<Liveness> {
        Some(self.judge(self.latest.get(worker_id)?, now))
    }

    /// [`Registry::liveness`] of a worker's latest beat.
    fn judge(&self, beat: &WorkerHeartbeat, now: Timestamp) -> Liveness {
        let liveness = Liveness::of(beat, now);
        if liveness != Liveness::Lost {
            return liveness;
        }
        let longer_than = |from: Timestamp, to: Timestamp, beats: u32| {
            (to - from).to_std().unwrap_or_default() > beat.interval * beats
        };
        let heard_since_deaf = self
            .deaf_at
            .is_none_or(|deaf| longer_than(deaf, now, MISSED_BEATS));
        let others_beat_since = self
            .newest
            .is_some_and(|newest| longer_than(beat.at, newest, MISSED_BEATS));
        let lost = heard_since_deaf
            && (others_beat_since || longer_than(beat.at, now, MISSED_BEATS_ALONE));
        if lost {
            Liveness::Lost
        } else {
            Liveness::Live
        }
    }

    /// Whether some live worker (judged as [`Registry::liveness`] does) serves `pool` and accepts
    /// tasks of `task_type` (of any type when `None`).
    pub fn serves(&self, pool: &str, task_type: Option<&str>, now: Timestamp) -> bool {
        self.latest.values().any(|beat| {
            beat.pool == pool
                && task_type.is_none_or(|kind| beat.task_types.iter().any(|t| t == kind))
                && self.judge(beat, now) == Liveness::Live
        })
    }

    /// Whether the registry may not know every live worker yet: it is still reading the old
    /// beats, or it could not read for a while (the broker was unreachable), and the workers have
    /// not yet had the time to be heard since.
    pub fn still_listening(&self, now: Timestamp) -> bool {
        let interval = self
            .latest
            .values()
            .map(|beat| beat.interval)
            .max()
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        self.deaf_at.is_some_and(|deaf| {
            (now - deaf).to_std().unwrap_or_default() <= interval * MISSED_BEATS
        })
    }

    /// Every worker's latest beat, and its liveness as [`Registry::liveness`] judges it: what the
    /// registry shows, alerts on and counts must be what the dispatchers act on.
    pub fn workers(&self, now: Timestamp) -> impl Iterator<Item = (&WorkerHeartbeat, Liveness)> {
        self.latest
            .values()
            .map(move |beat| (beat, self.judge(beat, now)))
    }

    /// Whether a live worker is on the run's attempt: the worker that started it (every shard's,
    /// for a sharded run) is alive and still lists the run among its runs in flight, or, not
    /// started yet, a live worker holds its task. Judged
    /// with the care [`Registry::liveness`] takes: a worker whose beats are late while nobody
    /// else's flow, or not yet heard of while the registry is still listening (a dispatcher that
    /// has just started), attends. A task nobody holds while live workers serve `pool` and
    /// `task_type` is [`Attendance::Unclaimed`].
    pub fn attendance(
        &self,
        run: &RunState,
        pool: &str,
        task_type: &str,
        now: Timestamp,
    ) -> Attendance {
        match run.status {
            RunStatus::Started => {
                let workers = run.workers();
                let alive = !workers.is_empty()
                    && workers
                        .iter()
                        .all(|worker| match self.liveness(worker, now) {
                            Some(liveness) => liveness == Liveness::Live,
                            None => self.still_listening(now),
                        });
                // A worker restarted under the same id is live, but holds nothing of what it
                // ran before: the attempts its last life started are unclaimed.
                let held = self.still_listening(now)
                    || workers.iter().all(|worker| self.lists(worker, run.run_id));
                match (alive, held) {
                    (true, true) => Attendance::Attended,
                    // Only its own workers' holds count: the partition's next owner lists the
                    // run too while it leaves the attempt to them, and would keep it waiting.
                    (true, false) => self.unclaimed(run.run_id, Some(&workers)),
                    (false, _) => Attendance::Unattended,
                }
            }
            RunStatus::Dispatched if self.holds(run.run_id, now) || self.still_listening(now) => {
                Attendance::Attended
            }
            RunStatus::Dispatched if self.serves(pool, Some(task_type), now) => {
                self.unclaimed(run.run_id, None)
            }
            _ => Attendance::Unattended,
        }
    }

    /// Whether a live worker says, in its latest beat, that it holds a task of `run`.
    fn holds(&self, run: RunId, now: Timestamp) -> bool {
        self.listed.iter().any(|(worker, runs)| {
            runs.contains(&run) && self.liveness(worker, now) == Some(Liveness::Live)
        })
    }

    /// Whether `worker`'s latest beat lists `run` among its runs in flight.
    fn lists(&self, worker: &str, run: RunId) -> bool {
        self.listed
            .get(worker)
            .is_some_and(|runs| runs.contains(&run))
    }

    /// Nobody holds the run's task: since when one of `by` (any worker when `None`) last held it,
    /// as far as the registry remembers.
    fn unclaimed(&self, run: RunId, by: Option<&[&str]>) -> Attendance {
        let last_held = self
            .last_held
            .get(&run)
            .into_iter()
            .flatten()
            .filter(|hold| by.is_none_or(|workers| workers.contains(&hold.worker.as_str())))
            .map(|hold| hold.at)
            .max();
        Attendance::Unclaimed { last_held }
    }
}

/// Every worker's latest heartbeat, followed from the beginning of the compacted heartbeats topic
/// (every reader needs every worker's beats: a run on any partition may have been started by any
/// worker), on a task of its own: a service busy with its records (a dispatcher catching up a
/// partition it was just given) must not stop hearing the workers, or their silence is its own.
pub struct Heartbeats {
    registry: Arc<RwLock<Registry>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Heartbeats {
    /// Starts following the heartbeats topic; refuses to start, naming it, when it is missing.
    pub fn follow(args: &KafkaArgs) -> anyhow::Result<Self> {
        let mut follower = HeartbeatFollower::start(args)?;
        let registry = follower.shared();
        let reader = tokio::spawn(async move {
            loop {
                if !follower.read().await {
                    tokio::time::sleep(CONSUME_RETRY_BACKOFF).await;
                }
            }
        });
        Ok(Heartbeats { registry, reader })
    }

    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().expect("registry lock")
    }

    /// The registry, for readers on other tasks.
    pub fn shared(&self) -> Arc<RwLock<Registry>> {
        Arc::clone(&self.registry)
    }

    /// An error once the reader has stopped (it only stops by panicking): a registry no longer
    /// read would soon call every worker lost, so the service stops instead.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.reader.is_finished() {
            false => Ok(()),
            true => Err(anyhow::anyhow!("the heartbeat reader stopped")),
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads heartbeats into a registry, one at a time; [`Heartbeats`] runs one on a task of its own.
struct HeartbeatFollower {
    consumer: StreamConsumer,
    /// Partitions not yet read up to their end as it was at start: until they are, the registry
    /// holds old beats and must not call anyone lost.
    behind: BTreeMap<i32, i64>,
    registry: Arc<RwLock<Registry>>,
}

impl HeartbeatFollower {
    /// Starts reading every partition of the heartbeats topic. Until the old beats are read,
    /// every worker looks silent, so the registry starts deaf.
    fn start(args: &KafkaArgs) -> anyhow::Result<Self> {
        let topic = args.topics().heartbeats();
        // Keyed by worker, with a partition count of its own.
        let partitions = check_co_partitioning(args, std::slice::from_ref(&topic))?;
        let consumer = broadcast_consumer(args, &topic, partitions, Offset::Beginning)?;
        let mut behind = BTreeMap::new();
        for partition in 0..partitions {
            let (_, high) = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
            })?;
            if high > 0 {
                behind.insert(partition, high);
            }
        }
        let mut registry = Registry::default();
        registry.deaf(crate::now());
        Ok(HeartbeatFollower {
            consumer,
            behind,
            registry: Arc::new(RwLock::new(registry)),
        })
    }

    /// Reads the next heartbeat into the registry (one that does not decode is the
    /// aggregator's to dead-letter; here it is skipped). Cancel-safe. A failed read, or one of the
    /// old beats replayed at start, leaves the registry deaf for a while. False when the read
    /// failed: a broker in trouble answers at once, again and again, so the caller waits a moment.
    async fn read(&mut self) -> bool {
        let read = self.consumer.recv().await.map(|m| {
            (
                m.partition(),
                m.offset(),
                m.payload().map(codec::decode_heartbeat),
            )
        });
        let now = crate::now();
        let mut registry = self.registry.write().expect("registry lock");
        match read {
            Ok((partition, offset, beat)) => {
                if let Some(Ok(beat)) = beat {
                    registry.hear(beat, now);
                }
                if self
                    .behind
                    .get(&partition)
                    .is_some_and(|end| offset + 1 >= *end)
                {
                    self.behind.remove(&partition);
                }
                if !self.behind.is_empty() {
                    registry.deaf(now);
                }
                true
            }
            Err(error) => {
                tracing::debug!(%error, "Reading heartbeats failed.");
                registry.deaf(now);
                false
            }
        }
    }

    fn shared(&self) -> Arc<RwLock<Registry>> {
        Arc::clone(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn beat(worker: &str, pool: &str, at_ms: i64, stopping: bool) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: worker.into(),
            pool: pool.into(),
            capacity: 1,
            task_types: vec!["shell".into()],
            in_flight: vec![],
            interval: Duration::from_secs(1),
            stopping,
            at: kairos_core::from_millis(at_ms).unwrap(),
        }
    }

    fn at(ms: i64) -> Timestamp {
        kairos_core::from_millis(ms).unwrap()
    }

    #[test]
    fn a_worker_is_lost_after_three_silent_intervals_and_stopped_when_it_says_so() {
        let mut registry = Registry::default();
        registry.record(beat("w", "p", 10_000, false));
        registry.record(beat("other", "p", 13_500, false));
        assert_eq!(registry.liveness("w", at(13_000)), Some(Liveness::Live));
        assert_eq!(registry.liveness("w", at(13_001)), Some(Liveness::Lost));
        assert_eq!(registry.liveness("unknown", at(13_001)), None);
        registry.record(beat("w", "p", 14_000, true));
        assert_eq!(registry.liveness("w", at(99_000)), Some(Liveness::Stopped));
    }

    #[test]
    fn late_heartbeats_lose_no_worker_until_others_show_they_flow_or_a_long_silence() {
        let mut registry = Registry::default();
        registry.record(beat("w", "p", 10_000, false));
        registry.record(beat("other", "p", 10_200, false));
        // Nobody's beats have arrived for 4 s: the reader is behind, not the workers dead.
        assert_eq!(registry.liveness("w", at(14_000)), Some(Liveness::Live));
        registry.record(beat("other", "p", 13_100, false));
        assert_eq!(registry.liveness("w", at(14_000)), Some(Liveness::Lost));
        // A lone worker is lost after fifteen silent intervals.
        let mut alone = Registry::default();
        alone.record(beat("w", "p", 10_000, false));
        assert_eq!(alone.liveness("w", at(25_000)), Some(Liveness::Live));
        assert_eq!(alone.liveness("w", at(25_001)), Some(Liveness::Lost));
    }

    #[test]
    fn silence_heard_while_the_broker_was_unreachable_loses_no_worker() {
        let mut registry = Registry::default();
        registry.record(beat("w", "p", 10_000, false));
        registry.record(beat("other", "p", 16_000, false));
        registry.deaf(at(12_000));
        assert_eq!(registry.liveness("w", at(14_000)), Some(Liveness::Live));
        assert_eq!(registry.liveness("w", at(15_000)), Some(Liveness::Live));
        assert_eq!(registry.liveness("w", at(15_001)), Some(Liveness::Lost));
    }

    #[test]
    fn an_older_beat_read_late_does_not_replace_a_newer_one() {
        let mut registry = Registry::default();
        registry.record(beat("w", "p", 20_000, true));
        registry.record(beat("w", "p", 10_000, false));
        assert_eq!(registry.liveness("w", at(20_500)), Some(Liveness::Stopped));
    }

    #[test]
    fn a_pool_is_served_only_by_live_workers_of_that_pool_and_task_type() {
        let mut registry = Registry::default();
        registry.record(beat("a", "gpu", 10_000, false));
        registry.record(beat("b", "cpu", 10_000, true));
        assert!(registry.serves("gpu", Some("shell"), at(10_500)));
        assert!(registry.serves("gpu", None, at(10_500)));
        assert!(!registry.serves("gpu", Some("http"), at(10_500)));
        assert!(!registry.serves("cpu", Some("shell"), at(10_500)));
        assert!(!registry.serves("cpu", None, at(10_500)));
        // Alone, "a" is lost only after fifteen silent intervals, as `liveness` judges.
        assert!(registry.serves("gpu", Some("shell"), at(25_000)));
        assert!(!registry.serves("gpu", Some("shell"), at(25_001)));
    }

    fn run(status: RunStatus, worker: Option<&str>) -> RunState {
        let job_id = kairos_core::JobId::parse("job").unwrap();
        let scheduled_for = at(9_000);
        RunState {
            run_id: kairos_core::run::RunId::derive(
                &job_id,
                scheduled_for,
                kairos_core::run::TriggerKind::Schedule,
            ),
            job_id,
            scheduled_for,
            trigger: kairos_core::run::TriggerKind::Schedule,
            definition_offset: None,
            status,
            attempt: 1,
            pool: Some("p".into()),
            worker_id: worker.map(str::to_string),
            skip_reason: None,
            error: None,
            refused: None,
            output: None,
            retry_due_at: None,
            dispatched_at: Some(scheduled_for),
            shards: None,
            created_at: scheduled_for,
            started_at: None,
            finished_at: None,
            updated_at: scheduled_for,
        }
    }

    /// The run [`judged`] looks at dispatched, and a beat of `worker` saying it holds its task.
    fn holding(worker: &str, at_ms: i64) -> WorkerHeartbeat {
        let mut beat = beat(worker, "p", at_ms, false);
        beat.in_flight = vec![run(RunStatus::Dispatched, None).run_id];
        beat
    }

    /// How the registry judges, at `now`, an attempt `w` started and one waiting for pool `p`.
    fn judged(registry: &Registry, now: Timestamp) -> (Attendance, Attendance) {
        let started = run(RunStatus::Started, Some("w"));
        let dispatched = run(RunStatus::Dispatched, None);
        (
            registry.attendance(&started, "p", "shell", now),
            registry.attendance(&dispatched, "p", "shell", now),
        )
    }

    /// Given a lone worker whose beats are late (a rebalance held them, or the broker is slow)
    /// and nobody else's flowing, when the attempts it holds and those waiting for its pool are
    /// judged, then they are attended: late beats are not a dead worker. (Before, a dispatched
    /// attempt was judged by the worker's bare silence and timed out while the worker had it
    /// queued, which ran it after the ledger had given it up.)
    #[test]
    fn a_lone_worker_with_late_beats_attends_its_attempts_until_it_counts_as_lost() {
        use Attendance::{Attended, Unattended};
        let mut registry = Registry::default();
        registry.record(holding("w", 10_000));
        for at_ms in [14_000, 25_000] {
            assert_eq!(judged(&registry, at(at_ms)), (Attended, Attended));
        }
        assert_eq!(judged(&registry, at(25_001)), (Unattended, Unattended));
        // With another worker's beats flowing, its silence is its own.
        registry.record(beat("other", "q", 13_500, false));
        assert_eq!(judged(&registry, at(14_000)).0, Unattended);
    }

    /// Given a registry still reading the old beats (a dispatcher just started), when an attempt
    /// started by a worker it has not heard of yet, or waiting for a pool it knows no worker of,
    /// is judged, then it is attended until the workers have had the time to be heard; a worker
    /// still unheard of then attends nothing.
    #[test]
    fn a_registry_still_listening_takes_no_unheard_worker_for_absent() {
        use Attendance::{Attended, Unattended};
        let mut registry = Registry::default();
        registry.deaf(at(10_000));
        let listening = at(10_000 + 3 * 2_000);
        let heard = at(10_001 + 3 * 2_000);
        assert!(registry.still_listening(listening));
        assert_eq!(judged(&registry, listening), (Attended, Attended));
        assert!(!registry.still_listening(heard));
        assert_eq!(judged(&registry, heard), (Unattended, Unattended));
        // A finished run is attended by nobody, listening or not.
        let over = run(RunStatus::Succeeded, None);
        assert_eq!(
            registry.attendance(&over, "p", "shell", listening),
            Unattended
        );
    }

    /// Given live workers serving the pool, when a dispatched attempt's task is in none of their
    /// latest beats, then it is unclaimed, with the time a worker last held it; while one holds
    /// it, it is attended; with nobody serving the pool, nobody attends it.
    #[test]
    fn a_dispatched_task_no_live_worker_holds_is_unclaimed_since_it_was_last_held() {
        use Attendance::{Attended, Unattended, Unclaimed};
        let mut registry = Registry::default();
        registry.record(beat("w", "p", 10_000, false));
        assert_eq!(
            judged(&registry, at(10_500)).1,
            Unclaimed { last_held: None }
        );
        registry.record(holding("w", 11_000));
        assert_eq!(judged(&registry, at(11_500)).1, Attended);
        // It ran and ended (or was handed back): the next beat no longer lists it.
        registry.record(beat("w", "p", 12_000, false));
        assert_eq!(
            judged(&registry, at(12_500)).1,
            Unclaimed {
                last_held: Some(at(11_000))
            }
        );
        // A worker that holds it but is lost does not attend it.
        let mut lost_holder = Registry::default();
        lost_holder.record(holding("gone", 10_000));
        lost_holder.record(beat("w", "p", 20_000, false));
        assert_eq!(
            judged(&lost_holder, at(20_500)).1,
            Unclaimed {
                last_held: Some(at(10_000))
            }
        );
        // Nobody serves the pool: the task waits on the topic for a worker, unattended.
        let mut elsewhere = Registry::default();
        elsewhere.record(beat("w", "q", 10_000, false));
        assert_eq!(judged(&elsewhere, at(10_500)).1, Unattended);
    }

    /// Given a reader that reads another worker's fresh beat, when the next beat it reads is
    /// older than the loss threshold (it was behind), then nobody is lost until it has heard
    /// for that long again: the silent worker's newer beats may be still unread.
    #[test]
    fn a_reader_reading_old_beats_takes_nobody_for_lost_until_it_is_current() {
        let mut registry = Registry::default();
        registry.hear(beat("w", "p", 10_000, false), at(10_100));
        registry.hear(beat("other", "p", 13_500, false), at(13_600));
        assert_eq!(registry.liveness("w", at(13_600)), Some(Liveness::Lost));
        // The same, but the reader reads a beat 4 s old first: it is behind.
        let mut behind = Registry::default();
        behind.hear(beat("w", "p", 10_000, false), at(14_000));
        behind.hear(beat("other", "p", 13_500, false), at(14_000));
        assert_eq!(behind.liveness("w", at(14_000)), Some(Liveness::Live));
        assert_eq!(behind.liveness("w", at(17_000)), Some(Liveness::Live));
        assert_eq!(behind.liveness("w", at(17_001)), Some(Liveness::Lost));
    }

    /// Given a worker killed and restarted under the same id (live again, holding nothing of its
    /// last life), when an attempt its last life started is judged, then it is unclaimed since
    /// that life last listed it, not attended: in a chaos run 2,915 such attempts waited to the
    /// end, the dispatcher and the partition's new owner both leaving them to the new life.
    #[test]
    fn a_started_attempt_its_live_worker_no_longer_lists_is_unclaimed() {
        use Attendance::{Attended, Unclaimed};
        let mut registry = Registry::default();
        registry.record(holding("w", 10_000));
        assert_eq!(judged(&registry, at(10_500)).0, Attended);
        registry.record(beat("w", "p", 11_000, false));
        assert_eq!(
            judged(&registry, at(11_500)).0,
            Unclaimed {
                last_held: Some(at(10_000))
            }
        );
    }

    /// Given an attempt started by a worker since restarted under the same id, when the
    /// partition's next owner holds the redelivered task (it leaves the attempt to its starter,
    /// alive) and lists the run in every beat, then the attempt is still unclaimed since its
    /// starter last listed it: in a chaos run 2,253 runs stayed started to the end, the new
    /// owner's holds pushing the limit back for ever while it waited on the starter.
    #[test]
    fn another_workers_hold_does_not_keep_a_started_attempt_claimed() {
        use Attendance::Unclaimed;
        let mut registry = Registry::default();
        registry.record(holding("w", 10_000));
        registry.record(beat("w", "p", 11_000, false));
        for at_ms in [11_000, 70_000, 130_000] {
            registry.record(holding("next-owner", at_ms));
            registry.record(beat("w", "p", at_ms, false));
            assert_eq!(
                judged(&registry, at(at_ms + 500)).0,
                Unclaimed {
                    last_held: Some(at(10_000))
                }
            );
        }
        // A dispatched attempt counts any worker's hold.
        assert_eq!(
            judged(&registry, at(130_500)).1,
            Attendance::Attended,
            "a live worker holds the dispatched task"
        );
    }
}

//! A run-ledger record as every writer appends it: the trigger, the dispatcher, the workers, and
//! runs requested through kairosctl or the API. Keyed by job, the event Avro-encoded, with its
//! CloudEvents headers: one place, so that no writer's records differ from another's. And the
//! tail of one ledger partition read back, for a worker that must know whether a redelivered
//! attempt is already over. Must not decide anything: the event is decided before it gets here.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kairos_core::run::{RunEvent, RunEventKind, RunId};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::cloudevents::{self, Headers};
use crate::codec::{self, CodecError};
use crate::kafka::KafkaArgs;

/// One ledger event, ready to send to the runs topic.
#[derive(Clone, Debug)]
pub struct LedgerRecord {
    /// The job id: one job's events share a partition.
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

impl LedgerRecord {
    /// The record of `event` as `service` (`trigger`, `dispatcher`, `worker`, `operator`)
    /// writes it.
    pub fn of(event: &RunEvent, service: &str) -> Result<Self, CodecError> {
        Ok(LedgerRecord {
            key: event.job_id.to_string(),
            payload: codec::encode_run_event(event)?,
            headers: cloudevents::run_event(event, service),
        })
    }
}

/// The header of a task record that holds the ledger offset (the runs topic, the task's own
/// partition) of the `RunDispatched` that dispatched it: where a worker to which the task is
/// redelivered starts reading the ledger to learn whether the attempt is already over.
pub const DISPATCHED_AT_HEADER: &str = "kairos_dispatched_offset";

/// An attempt as the ledger's outcome events name it: the run, the attempt, and the shard (`None`
/// for the whole attempt).
pub type AttemptKey = (RunId, u32, Option<u32>);

/// What the tail of a ledger partition says about attempts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attempts {
    /// Over: an outcome reported by a worker, or recorded for it (lost, timed out, cancelled).
    pub over: HashSet<AttemptKey>,
    /// The worker that said it started each attempt (one that ran past its
    /// `--report-start-after`).
    pub started_by: HashMap<AttemptKey, String>,
    /// Where the read ended: a later read for news goes on from here.
    pub read_to: i64,
}

impl Attempts {
    /// Whether the attempt (or its shard) is over; an event about the whole attempt counts for
    /// each of its shards.
    pub fn is_over(&self, (run, attempt, shard): AttemptKey) -> bool {
        self.over.contains(&(run, attempt, shard)) || self.over.contains(&(run, attempt, None))
    }

    /// The worker that said it started the attempt (or its shard).
    pub fn started_by(&self, (run, attempt, shard): AttemptKey) -> Option<&str> {
        self.started_by
            .get(&(run, attempt, shard))
            .or_else(|| self.started_by.get(&(run, attempt, None)))
            .map(String::as_str)
    }

    pub fn extend(&mut self, other: Attempts) {
        self.over.extend(other.over);
        self.started_by.extend(other.started_by);
        self.read_to = self.read_to.max(other.read_to);
    }
}

/// Reads one partition of the runs topic from `from` up to its end as it is when the read begins,
/// and returns what it records of attempts. Only the tail after a dispatch is read, never the
/// whole ledger. Fails if the end is not reached within `within`.
pub async fn read_attempts(
    args: &KafkaArgs,
    partition: i32,
    from: i64,
    within: Duration,
) -> anyhow::Result<Attempts> {
    let topic = args.topics().runs();
    let mut config = args.client_config();
    // Positions are the reader's own: nothing is ever committed for this group.
    config
        .set("group.id", format!("{}-ledger-reader", args.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let (_, end) = consumer.fetch_watermarks(&topic, partition, within)?;
        let mut attempts = Attempts {
            read_to: from.max(end),
            ..Attempts::default()
        };
        if from >= end {
            return Ok(attempts);
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, partition, Offset::Offset(from))?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + within;
        let mut next = from;
        while next < end {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("read {topic}/{partition} up to {next} of {end} in {within:?}");
            }
            let Some(read) = consumer.poll(left.min(Duration::from_millis(500))) else {
                continue;
            };
            let message = read?;
            next = message.offset() + 1;
            // A record that does not decode is the aggregator's to dead-letter.
            let Some(Ok(event)) = message.payload().map(codec::decode_run_event) else {
                continue;
            };
            use RunEventKind::*;
            let shard = event.shard.map(|s| s.index);
            match event.kind {
                RunSucceeded { attempt, .. }
                | RunFailed { attempt, .. }
                | RunTimedOut { attempt, .. }
                | RunCancelled { attempt }
                | RunLost { attempt } => {
                    attempts.over.insert((event.run_id, attempt, shard));
                }
                RunStarted {
                    attempt, worker_id, ..
                } => {
                    attempts
                        .started_by
                        .insert((event.run_id, attempt, shard), worker_id);
                }
                _ => {}
            }
        }
        Ok(attempts)
    })
    .await?
}

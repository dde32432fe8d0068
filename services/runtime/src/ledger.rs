//! A run-ledger record as every writer appends it: the trigger, the dispatcher, the workers, and
//! runs requested through kairosctl or the API. Keyed by job, the event Avro-encoded, with its
//! CloudEvents headers: one place, so that no writer's records differ from another's. And the
//! tail of one ledger partition read back, for a worker that must know whether a redelivered
//! attempt is already over. Must not decide anything: the event is decided before it gets here.

use std::collections::HashSet;
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

/// Reads one partition of the runs topic from `from` up to its end as it is when the read begins,
/// and returns the attempts it records as over: an outcome reported by a worker, or recorded for
/// it (lost, timed out, cancelled). Only the tail after a dispatch is read, never the whole
/// ledger. Fails if the end is not reached within `within`.
pub async fn attempts_over(
    args: &KafkaArgs,
    partition: i32,
    from: i64,
    within: Duration,
) -> anyhow::Result<HashSet<AttemptKey>> {
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
        let mut over = HashSet::new();
        if from >= end {
            return Ok(over);
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
            if let RunSucceeded { attempt, .. }
            | RunFailed { attempt, .. }
            | RunTimedOut { attempt, .. }
            | RunCancelled { attempt }
            | RunLost { attempt } = event.kind
            {
                over.insert((event.run_id, attempt, event.shard.map(|s| s.index)));
            }
        }
        Ok(over)
    })
    .await?
}

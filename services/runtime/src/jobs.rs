//! Writing jobs, manual runs and cancel requests: the one path `kairosctl` and the aggregator's
//! REST API share.
//! Writes go to Kafka, never around it; the read models follow from the topics. Every write
//! carries its author (the API's token name, or the CLI's user) in the [`AUTHOR_HEADER`] record
//! header, so that "who changed this job?" has an answer on the topic itself.

use ed25519_dalek::SigningKey;
use kairos_core::run::{RunEvent, RunEventKind, RunId, TriggerKind};
use kairos_core::secrets::credentials_in_clear;
use kairos_core::signing::sign;
use kairos_core::{JobDefinition, JobId, Timestamp};

use crate::codec;
use crate::kafka::{task_topic_config, Delivered, Producer, TopicAdmin};
use crate::ledger::LedgerRecord;
use crate::KafkaArgs;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("topic {0} does not exist; run `kairosctl topics apply` first")]
    NoJobsTopic(String),
    #[error("the broker cannot be reached: {0}")]
    Broker(String),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("{} holds a credential in clear, which would be kept on the jobs topic and shown by the API; name a secret instead (task.shell.env_from, task.http.headers_from) that the workers look up when the task runs", .0.join(", "))]
    CredentialInClear(Vec<String>),
}

/// The record header that names who made a change: `api:<token name>`, `cli:<user>@<host>`.
pub const AUTHOR_HEADER: &str = "kairos_author";

/// The headers of a record `author` wrote.
fn authored(author: &str) -> [(&'static str, String); 1] {
    [(AUTHOR_HEADER, author.to_string())]
}

/// A job written to the jobs topic.
pub struct Written {
    pub delivered: Delivered,
    /// Whether the job's pool is new and its task topic was created for it.
    pub created_pool_topic: Option<String>,
}

/// Refuses a definition that holds a credential in clear (see [`credentials_in_clear`]).
pub fn refuse_credentials_in_clear(job: &JobDefinition) -> Result<(), WriteError> {
    let in_clear = credentials_in_clear(&job.task);
    match in_clear.is_empty() {
        true => Ok(()),
        false => Err(WriteError::CredentialInClear(in_clear)),
    }
}

/// Puts a validated definition on the jobs topic, signed with `key` if there is one (else as it
/// comes, signed or not), creating its pool's task topic first if the pool is new (workers of a
/// new pool need a topic to subscribe to). A definition with a credential in clear is refused.
pub async fn put_job(
    admin: &TopicAdmin,
    producer: &Producer,
    job: &JobDefinition,
    key: Option<&SigningKey>,
    author: &str,
) -> Result<Written, WriteError> {
    refuse_credentials_in_clear(job)?;
    let signed;
    let job = match key {
        Some(key) => {
            signed = JobDefinition {
                signature: Some(sign(key, job.id.as_str(), &job.pool, &job.task)),
                ..job.clone()
            };
            &signed
        }
        None => job,
    };
    let topics = admin.kafka().topics();
    let counts = admin
        .partition_counts()
        .await
        .map_err(|e| WriteError::Broker(format!("{e:#}")))?;
    let partitions = *counts
        .get(&topics.jobs())
        .ok_or_else(|| WriteError::NoJobsTopic(topics.jobs()))?;
    let pool_topic = topics.tasks(&job.pool);
    let created = admin
        .ensure_topic(&pool_topic, partitions, &task_topic_config())
        .await
        .map_err(|e| WriteError::Broker(format!("{e:#}")))?;
    let bytes = codec::encode_job(job)?;
    let delivered = producer
        .send_with_headers(
            &topics.jobs(),
            job.id.as_str(),
            Some(&bytes),
            &authored(author),
        )
        .await
        .map_err(|e| WriteError::Broker(e.to_string()))?;
    Ok(Written {
        delivered,
        created_pool_topic: created.then_some(pool_topic),
    })
}

/// Deletes a job: a tombstone on the jobs topic.
pub async fn delete_job(
    kafka: &KafkaArgs,
    producer: &Producer,
    id: &JobId,
    author: &str,
) -> Result<Delivered, WriteError> {
    producer
        .send_with_headers(&kafka.topics().jobs(), id.as_str(), None, &authored(author))
        .await
        .map_err(|e| WriteError::Broker(e.to_string()))
}

/// The `RunScheduled` of a run asked for by hand (`manual`) or by a backfill, for `slot`. Its run
/// id is derived from (job, slot, kind): asking twice for the same slot is one run.
pub fn requested_run(
    job: &JobDefinition,
    definition_offset: i64,
    slot: Timestamp,
    kind: TriggerKind,
) -> RunEvent {
    // The ledger carries milliseconds; the run id must be derived from what it will carry.
    let slot = kairos_core::from_millis(kairos_core::to_millis(slot)).unwrap_or(slot);
    RunEvent {
        job_id: job.id.clone(),
        run_id: RunId::derive(&job.id, slot, kind),
        scheduled_for: slot,
        at: crate::now(),
        kind: RunEventKind::RunScheduled {
            trigger: kind,
            definition_offset,
        },
        shard: None,
    }
}

/// Appends a requested run to the ledger, with who asked for it.
pub async fn schedule_run(
    kafka: &KafkaArgs,
    producer: &Producer,
    event: &RunEvent,
    author: &str,
) -> Result<Delivered, WriteError> {
    let mut record = LedgerRecord::of(event, "operator")?;
    record.headers.extend(authored(author));
    producer
        .append(&kafka.topics().runs(), &record)
        .await
        .map_err(|e| WriteError::Broker(e.to_string()))
}

/// Asks every worker and the dispatcher to stop a run: a cancel request on the control topic,
/// keyed by job so that it lands in the partition of the job's runs.
pub async fn request_cancel(
    kafka: &KafkaArgs,
    producer: &Producer,
    request: &kairos_core::CancelRequest,
    author: &str,
) -> Result<Delivered, WriteError> {
    let bytes = codec::encode_cancel(request)?;
    producer
        .send_with_headers(
            &kafka.topics().control(),
            request.job_id.as_str(),
            Some(&bytes),
            &authored(author),
        )
        .await
        .map_err(|e| WriteError::Broker(e.to_string()))
}

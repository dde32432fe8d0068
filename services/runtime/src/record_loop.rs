//! The record loop of every service that keeps state folded from its topics (the trigger, the
//! dispatcher and the aggregator), written once.
//!
//! The loop decodes each record or dead-letters it, folds a poll's records into one store write
//! together with their positions, lets the group commit past them, tells the service which
//! partitions have caught up and which keys the records touched, runs each fold in a span, and
//! wakes the service for its own timers. A service says only what is its own: what a record
//! changes ([`StatefulService::fold`]), what it sends for a poll, and what it decides once a
//! partition is live.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use kairos_core::run::RunEvent;
use kairos_core::{CancelRequest, JobDefinition};
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use crate::codec::{self, CodecError, DeadLetter, TriggerState, WorkerHeartbeat};
use crate::deadletter::{reason_label, DeadLetters};
use crate::kafka::{Input, PartitionedConsumer};
use crate::record_key;
use crate::store::{Batch, Store};
use crate::telemetry::Health;
use crate::Topics;

/// The topics a stateful service reads, by what their records are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    Jobs,
    Runs,
    Control,
    TriggerState,
    Heartbeats,
    DeadLetters,
}

/// How a service treats the records of one of its input topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Folded into the store with their positions; a record that does not decode is dead-lettered.
    Owned,
    /// Folded as `Owned`, but a record that does not decode is only logged: the topic's owner
    /// dead-letters it, so that one bad record makes one dead letter (the trigger's, for job
    /// definitions). Dead letters themselves are read this way: one that does not decode is never
    /// dead-lettered again, which could loop.
    Shared,
    /// Kept in memory and read again from the start after every restart (the aggregator's
    /// registry, from the compacted heartbeats topic): positions are not stored, and a record
    /// that does not decode is dead-lettered again each time, with the same source offset.
    InMemory,
}

/// A record decoded, with what the loop knows of it.
pub struct Record<'a> {
    pub message: &'a OwnedMessage,
    pub value: Decoded,
    /// Whether the partition had caught up before this record: history replayed by a rebuild is
    /// folded, but neither counted nor alerted again.
    pub live: bool,
}

/// What a record says, once decoded and checked against its key.
#[derive(Debug)]
pub enum Decoded {
    /// A job definition, its id the record's key (validated by the codec).
    Definition(Box<JobDefinition>),
    /// A job's tombstone.
    JobDeleted(String),
    Event(RunEvent),
    /// A cancel request (or a dispatcher's fence), its job id the record's key.
    Cancel(CancelRequest),
    /// The last slot a trigger handled for a job.
    Cursor(TriggerState),
    /// A job's cursor forgotten (the job was deleted).
    CursorDeleted(String),
    Heartbeat(WorkerHeartbeat),
    DeadLetter(DeadLetter),
}

/// Why a record could not be decoded, as it is dead-lettered.
#[derive(Debug, PartialEq)]
pub struct Invalid {
    /// A bounded reason, for the dead-letter counter.
    pub label: &'static str,
    pub reason: String,
}

impl From<CodecError> for Invalid {
    fn from(error: CodecError) -> Self {
        Invalid {
            label: reason_label(&error),
            reason: error.to_string(),
        }
    }
}

fn invalid(reason: String) -> Invalid {
    Invalid {
        label: "invalid",
        reason,
    }
}

/// Decodes a record of a topic of `kind`: `Ok(None)` for a tombstone that means nothing there.
pub fn decode(kind: InputKind, message: &OwnedMessage) -> Result<Option<Decoded>, Invalid> {
    let key = record_key(message);
    let Some(payload) = message.payload() else {
        return Ok(match kind {
            InputKind::Jobs => {
                Some(Decoded::JobDeleted(key.ok_or_else(|| {
                    invalid("record has no UTF-8 job id key".into())
                })?))
            }
            InputKind::TriggerState => key.map(Decoded::CursorDeleted),
            _ => None,
        });
    };
    Ok(Some(match kind {
        InputKind::Jobs => {
            let key = key.ok_or_else(|| invalid("record has no UTF-8 job id key".into()))?;
            let definition = codec::decode_job(payload)?;
            if definition.id.as_str() != key {
                return Err(invalid(format!(
                    "key {key:?} does not match the definition's id {:?}",
                    definition.id.as_str()
                )));
            }
            Decoded::Definition(Box::new(definition))
        }
        InputKind::Runs => Decoded::Event(codec::decode_run_event(payload)?),
        InputKind::Control => {
            let request = codec::decode_cancel(payload)?;
            if key.as_deref() != Some(request.job_id.as_str()) {
                return Err(invalid(format!(
                    "key does not match the request's job id {:?}",
                    request.job_id.as_str()
                )));
            }
            Decoded::Cancel(request)
        }
        InputKind::TriggerState => Decoded::Cursor(codec::decode_trigger_state(payload)?),
        InputKind::Heartbeats => Decoded::Heartbeat(codec::decode_heartbeat(payload)?),
        InputKind::DeadLetters => Decoded::DeadLetter(codec::decode_dead_letter(payload)?),
    }))
}

/// What folding a record did.
#[derive(Debug, PartialEq)]
pub enum Folded {
    /// It changed what is kept for this key (a job id): once the batch is written, the service
    /// looks at the key again if its partition is live ([`StatefulService::touched`]).
    Touched(String),
    /// Nothing to look at again.
    Unchanged,
}

/// The partitions that have caught up (owned, and rebuilt from the topics): where a service may
/// decide and send.
pub struct Live {
    partitions: BTreeSet<i32>,
    /// Whether this instance has been assigned its share and has caught up on all of it.
    pub ready: bool,
}

impl Live {
    pub fn of(consumer: &PartitionedConsumer) -> Self {
        Live {
            partitions: consumer
                .owned()
                .filter(|p| consumer.is_caught_up(*p))
                .collect(),
            ready: consumer.ready(),
        }
    }

    pub fn contains(&self, partition: i32) -> bool {
        self.partitions.contains(&partition)
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.iter().copied()
    }
}

/// A service whose state is the fold of its topics, run by [`run`].
pub trait StatefulService: Send {
    /// What wakes the service besides its records: its timers, ticks and finished sends.
    type Wake: Send;

    /// Whether the service's own wake-ups come before its records when both are ready. A busy
    /// input is always ready, and would otherwise starve timers that must not wait on it.
    const WAKE_FIRST: bool;

    /// How the service treats the records of a topic of `kind` (all `Owned` unless it says).
    fn reads(&self, _kind: InputKind) -> Reading {
        Reading::Owned
    }

    /// Folds one record into `batch` (the loop adds its position).
    fn fold(&mut self, record: Record<'_>, batch: &mut Batch) -> anyhow::Result<Folded>;

    /// Sends what a poll's folded records call for, before their batch is written with their
    /// positions: a crash in between repeats the sends rather than losing them.
    fn send_folded(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// A partition's state is complete: the service decides on all of it.
    fn caught_up(
        &mut self,
        _partition: i32,
        _live: &Live,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Records of a live partition touched `key`: the service decides on it again.
    fn touched(
        &mut self,
        _partition: i32,
        _key: &str,
        _live: &Live,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// These partitions are no longer this instance's: forget what is held in memory for them.
    fn revoked(&mut self, _partitions: &[i32]) {}

    /// Resolves when the service's own wake-up comes; cancel-safe, as it races the records.
    fn woken(&mut self) -> impl Future<Output = anyhow::Result<Self::Wake>> + Send;

    /// Acts on a wake-up.
    fn wake(
        &mut self,
        wake: Self::Wake,
        live: &Live,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// After every turn of the loop.
    fn after_turn(&mut self, _live: &Live) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// On shutdown: waits for what the service has in flight.
    fn stop(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// Sleeps until `due` (a service's next timer), or a second when there is none: at most a
/// second, so that a timer set or moved meanwhile, or a jump of the clock, is seen within one.
pub async fn sleep_until(due: Option<kairos_core::Timestamp>) {
    const AT_MOST: std::time::Duration = std::time::Duration::from_secs(1);
    let wait = due.map_or(AT_MOST, |due| {
        (due - crate::now())
            .to_std()
            .unwrap_or_default()
            .min(AT_MOST)
    });
    tokio::time::sleep(wait).await;
}

/// What the loop reads and where it reports.
pub struct LoopParts<'a> {
    pub name: &'static str,
    pub topics: &'a Topics,
    pub consumer: &'a mut PartitionedConsumer,
    pub store: &'a Store,
    pub deadletters: &'a DeadLetters,
    pub health: &'a Health,
}

/// Runs `service` on its records and wake-ups until `shutdown` is cancelled.
pub async fn run<S: StatefulService>(
    service: &mut S,
    mut parts: LoopParts<'_>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let kinds = input_kinds(parts.topics);
    loop {
        let store = parts.store;
        let turn = if S::WAKE_FIRST {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => Turn::Stop,
                wake = service.woken() => Turn::Wake(wake?),
                input = parts.consumer.next(Some(store)) => Turn::Input(input),
            }
        } else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => Turn::Stop,
                input = parts.consumer.next(Some(store)) => Turn::Input(input),
                wake = service.woken() => Turn::Wake(wake?),
            }
        };
        // Which partitions are live changes only with the consumer's input: one look per turn.
        let live = match turn {
            Turn::Stop => return service.stop().await,
            Turn::Wake(wake) => {
                let live = Live::of(parts.consumer);
                service.wake(wake, &live).await?;
                live
            }
            Turn::Input(input) => handle(service, &mut parts, &kinds, input).await?,
        };
        service.after_turn(&live).await?;
        parts.health.set_caught_up(live.ready);
    }
}

/// What a turn of the loop got first.
enum Turn<W> {
    Stop,
    Wake(W),
    Input(Input),
}

/// The kind of each topic a stateful service may read, by name.
fn input_kinds(topics: &Topics) -> HashMap<String, InputKind> {
    HashMap::from([
        (topics.jobs(), InputKind::Jobs),
        (topics.runs(), InputKind::Runs),
        (topics.control(), InputKind::Control),
        (topics.trigger_state(), InputKind::TriggerState),
        (topics.heartbeats(), InputKind::Heartbeats),
        (topics.deadletter(), InputKind::DeadLetters),
    ])
}

async fn handle<S: StatefulService>(
    service: &mut S,
    parts: &mut LoopParts<'_>,
    kinds: &HashMap<String, InputKind>,
    input: Input,
) -> anyhow::Result<Live> {
    match input {
        Input::Assigned(partitions) => {
            let live = Live::of(parts.consumer);
            for partition in partitions {
                if live.contains(partition) {
                    service.caught_up(partition, &live).await?;
                }
            }
            Ok(live)
        }
        Input::Revoked(partitions) => {
            service.revoked(&partitions);
            Ok(Live::of(parts.consumer))
        }
        Input::Records(messages) => {
            // One write for all the records, then each key they touched decided on once.
            let mut batch = Batch::new();
            let mut touched = BTreeSet::new();
            for message in &messages {
                let kind = kinds.get(message.topic()).copied();
                let Some(kind) = kind else {
                    tracing::error!(
                        topic = message.topic(),
                        "A record of a topic the service does not read; skipped."
                    );
                    continue;
                };
                let reading = service.reads(kind);
                let span = tracing::info_span!(
                    "fold",
                    service = parts.name,
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    job_id = record_key(message).unwrap_or_default(),
                );
                let folded = match decode(kind, message) {
                    Ok(Some(value)) => {
                        let record = Record {
                            message,
                            value,
                            live: parts.consumer.is_caught_up(message.partition()),
                        };
                        span.in_scope(|| service.fold(record, &mut batch))?
                    }
                    Ok(None) => Folded::Unchanged,
                    Err(Invalid { label, reason }) => {
                        if reading == Reading::Shared {
                            tracing::warn!(parent: &span, reason, "A record that does not decode; skipped (its topic's owner dead-letters it).");
                        } else {
                            parts.deadletters.send(message, label, &reason).await?;
                        }
                        Folded::Unchanged
                    }
                };
                if reading != Reading::InMemory {
                    batch.consumed(message.topic(), message.partition(), message.offset());
                }
                if let Folded::Touched(key) = folded {
                    touched.insert((message.partition(), key));
                }
            }
            service.send_folded().await?;
            parts.store.write(batch)?;
            let caught_up = parts.consumer.applied(&messages);
            let live = Live::of(parts.consumer);
            for &partition in &caught_up {
                service.caught_up(partition, &live).await?;
            }
            for (partition, key) in touched {
                if live.contains(partition) && !caught_up.contains(&partition) {
                    service.touched(partition, &key, &live).await?;
                }
            }
            Ok(live)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::job::JobSpec;
    use rdkafka::Timestamp as KafkaTime;

    fn message(topic: &str, key: Option<&str>, payload: Option<Vec<u8>>) -> OwnedMessage {
        let key = key.map(|k| k.as_bytes().to_vec());
        OwnedMessage::new(
            payload,
            key,
            topic.into(),
            KafkaTime::NotAvailable,
            0,
            7,
            None,
        )
    }

    fn definition(id: &str) -> Vec<u8> {
        let spec: JobSpec = serde_json::from_str(&format!(
            r#"{{"id": "{id}", "schedule": {{"every": "1s"}}, "task": {{"shell": {{"command": ["true"]}}}}}}"#
        ))
        .unwrap();
        codec::encode_job(&spec.validate().unwrap()).unwrap()
    }

    #[test]
    fn a_definition_is_decoded_when_its_key_is_its_id() {
        // Given a definition keyed by its own id
        let record = message("jobs", Some("nightly"), Some(definition("nightly")));
        // When it is decoded
        let decoded = decode(InputKind::Jobs, &record).unwrap();
        // Then it is the definition
        assert!(matches!(decoded, Some(Decoded::Definition(d)) if d.id.as_str() == "nightly"));
    }

    #[test]
    fn a_definition_under_another_key_is_invalid() {
        let record = message("jobs", Some("other"), Some(definition("nightly")));
        let error = decode(InputKind::Jobs, &record).unwrap_err();
        assert_eq!(error.label, "invalid");
        assert!(error.reason.contains("does not match"), "{}", error.reason);
    }

    #[test]
    fn a_job_record_without_a_key_is_invalid_even_as_a_tombstone() {
        for payload in [None, Some(definition("nightly"))] {
            let error = decode(InputKind::Jobs, &message("jobs", None, payload)).unwrap_err();
            assert!(
                error.reason.contains("no UTF-8 job id key"),
                "{}",
                error.reason
            );
        }
    }

    #[test]
    fn tombstones_delete_jobs_and_cursors_and_mean_nothing_elsewhere() {
        let deleted = decode(InputKind::Jobs, &message("jobs", Some("a"), None)).unwrap();
        assert!(matches!(deleted, Some(Decoded::JobDeleted(job)) if job == "a"));
        let forgotten = decode(InputKind::TriggerState, &message("ts", Some("a"), None)).unwrap();
        assert!(matches!(forgotten, Some(Decoded::CursorDeleted(job)) if job == "a"));
        for kind in [InputKind::Runs, InputKind::Control, InputKind::Heartbeats] {
            assert!(decode(kind, &message("t", Some("a"), None))
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn garbage_is_invalid_with_the_codecs_reason() {
        let garbage = Some(b"not avro at all".to_vec());
        for kind in [InputKind::Runs, InputKind::Control, InputKind::TriggerState] {
            let error = decode(kind, &message("t", Some("a"), garbage.clone())).unwrap_err();
            assert_eq!(error.label, "not_avro", "{kind:?}");
        }
    }

    #[test]
    fn a_cancel_request_under_another_jobs_key_is_invalid() {
        let job_id = kairos_core::JobId::parse("j").unwrap();
        let request = CancelRequest {
            run_id: kairos_core::run::RunId::derive(
                &job_id,
                kairos_core::from_millis(1_800_000_000_000).unwrap(),
                kairos_core::run::TriggerKind::Schedule,
            ),
            job_id,
            reason: None,
            attempt: None,
            at: kairos_core::from_millis(1_800_000_000_000).unwrap(),
        };
        let bytes = codec::encode_cancel(&request).unwrap();
        let error = decode(
            InputKind::Control,
            &message("c", Some("k"), Some(bytes.clone())),
        );
        assert!(error.unwrap_err().reason.contains("does not match"));
        let ok = decode(InputKind::Control, &message("c", Some("j"), Some(bytes))).unwrap();
        assert!(matches!(ok, Some(Decoded::Cancel(r)) if r == request));
    }
}

//! Records a service cannot use go to the dead-letter topic with the reason and their origin, and
//! the service goes on: the content of a message never stops or crashes a service.

use rdkafka::message::{Message, OwnedMessage};

use crate::codec::{encode_dead_letter, CodecError, DeadLetter};
use crate::kafka::{topic_kind, ReliableProducer, SendError};

/// Produces dead letters for one service.
#[derive(Clone)]
pub struct DeadLetters {
    producer: ReliableProducer,
    topic: String,
    service: &'static str,
}

/// A bounded label for the dead-letter counter.
pub fn reason_label(error: &CodecError) -> &'static str {
    match error {
        CodecError::NotSingleObject => "not_avro",
        CodecError::UnknownSchema(..) => "unknown_schema",
        CodecError::Avro(_) | CodecError::Field { .. } => "malformed",
        CodecError::Invalid(_) => "invalid",
        CodecError::TooLarge(_) => "too_large",
    }
}

impl DeadLetters {
    pub fn new(producer: ReliableProducer, topic: String, service: &'static str) -> Self {
        DeadLetters {
            producer,
            topic,
            service,
        }
    }

    /// Decodes a record's value with `decode`; a value that does not decode is dead-lettered with
    /// the reason, and `None` returned so the caller goes on to the next record. A record without
    /// a value is `None` too: callers for which a tombstone means something look first.
    pub async fn decode<T>(
        &self,
        message: &OwnedMessage,
        decode: impl FnOnce(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Option<T>, SendError> {
        let Some(payload) = message.payload() else {
            return Ok(None);
        };
        match decode(payload) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                self.send(message, reason_label(&error), &error.to_string())
                    .await?;
                Ok(None)
            }
        }
    }

    /// Dead-letters `message`; `label` is a bounded reason for metrics, `reason` the full text.
    pub async fn send(
        &self,
        message: &OwnedMessage,
        label: &'static str,
        reason: &str,
    ) -> Result<(), SendError> {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "Dead-lettering a record."
        );
        let letter = DeadLetter {
            source_topic: message.topic().to_string(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            service: self.service.to_string(),
            reason: reason.to_string(),
            payload: message.payload().map(<[u8]>::to_vec),
            at: crate::now(),
        };
        // A dead letter is built from plain fields and capped payload, so encoding cannot fail
        // unless the schema itself is broken, which the codec tests rule out.
        let bytes = encode_dead_letter(&letter).unwrap_or_default();
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        self.producer.send(&self.topic, &key, Some(&bytes)).await?;
        metrics::counter!(
            crate::metrics_names::DEADLETTERED,
            "service" => self.service, "topic" => topic_kind(message.topic()), "reason" => label
        )
        .increment(1);
        Ok(())
    }
}

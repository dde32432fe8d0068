//! Kairos's shared runtime: everything the four services and `kairosctl` do the same way.
//!
//! Kafka client setup ([`kafka`]), the Avro edge ([`codec`]), local state ([`store`]), dead
//! letters ([`deadletter`]), telemetry ([`telemetry`]), worker liveness ([`workers`]) and the start and stop every service
//! shares ([`service`]). Domain rules live in `kairos-core`;
//! nothing here decides what a job or a run should do.

pub mod cloudevents;
pub mod codec;
pub mod deadletter;
pub mod jobs;
pub mod kafka;
pub mod keys;
pub mod ledger;
pub mod metrics_names;
pub mod record_loop;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod workers;

pub use kafka::{KafkaArgs, PartitionedConsumer, Producer, Topics};
pub use service::{open_store, ServiceArgs, ServiceParts, ServiceSpec, StoreArgs};
pub use store::{Batch, Store};

/// Reads the key of a record as a job id string; Kairos keys are UTF-8 job ids.
pub fn record_key(message: &rdkafka::message::OwnedMessage) -> Option<String> {
    use rdkafka::Message;
    message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_string)
}

/// This machine's host name (`HOSTNAME`, else `/etc/hostname`), if it has one: part of a
/// worker's default id and of the CLI's default author.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The value of the record's header `name`, as UTF-8 text.
pub fn record_header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers as _, Message};
    let header = message.headers()?.iter().find(|h| h.key == name)?;
    std::str::from_utf8(header.value?).ok().map(str::to_string)
}

/// The record's timestamp (create or log-append time), if the broker or producer set one.
pub fn record_time(message: &rdkafka::message::OwnedMessage) -> Option<kairos_core::Timestamp> {
    use rdkafka::Message;
    message
        .timestamp()
        .to_millis()
        .and_then(kairos_core::from_millis)
}

/// The current time at the millisecond precision the wire formats carry. Every event a service
/// stamps uses it: a service that folds its own event must fold exactly what the ledger will hold,
/// or its state would differ from a rebuild's.
pub fn now() -> kairos_core::Timestamp {
    let now = chrono::Utc::now();
    kairos_core::from_millis(now.timestamp_millis()).unwrap_or(now)
}

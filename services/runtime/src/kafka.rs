//! Kafka client setup shared by every service: one config builder, a producer that waits for the
//! broker's acknowledgement, and a consumer whose positions live in the service's RocksDB.
//!
//! Positions: a state service (trigger, dispatcher, aggregator) writes the offset of each record it
//! applied in the same RocksDB batch as the state change, and on assignment starts each partition
//! from that stored position (or from the beginning, when the store is new: that is the rebuild).
//! The group's committed offsets are still stored and committed, for lag monitoring. A worker has no
//! such state and uses the group's committed offsets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::ledger::LedgerRecord;
use crate::metrics_names as m;
use crate::store::Store;

/// Properties Kairos's correctness depends on; `-X` cannot override them.
const CONSUMER_INVARIANTS: [(&str, &str); 2] = [
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "false"),
];
const PRODUCER_INVARIANTS: [(&str, &str); 3] = [
    ("enable.idempotence", "true"),
    ("partitioner", "murmur2_random"),
    ("acks", "all"),
];

/// The consumer session, in milliseconds (see [`KafkaArgs::session_timeout`]).
const DEFAULT_SESSION_TIMEOUT_MS: &str = "6000";
/// How often the consumer's own thread beats to its group, in milliseconds.
const DEFAULT_GROUP_HEARTBEAT_INTERVAL_MS: &str = "1000";
/// How long the consumer waits after an error before asking again (librdkafka reconnects itself).
pub const CONSUME_RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// How often metadata is read while waiting for new topics to appear.
const METADATA_POLL: Duration = Duration::from_millis(100);
/// The most records one [`Input::Records`] holds: enough to fold a fetch's worth at a time,
/// few enough that timers and heartbeats wait little behind them.
pub const MAX_RECORDS_PER_INPUT: usize = 500;

/// Broker connection settings every binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Bootstrap brokers, host:port[,host:port...].
    #[arg(long, env = "KAIROS_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Prefix of every Kairos topic name, so several installations can share a cluster.
    #[arg(long, env = "KAIROS_TOPIC_PREFIX", default_value = "kairos")]
    pub topic_prefix: String,
    /// Any librdkafka property, e.g. `-X security.protocol=SASL_SSL` (repeatable; the environment
    /// variable takes a comma-separated list).
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", env = "KAIROS_KAFKA_PROPERTIES", hide_env_values = true,
          value_delimiter = ',', value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

impl KafkaArgs {
    /// Settings for a broker at `brokers` with the default prefix and no extra properties.
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaArgs {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            properties: vec![],
        }
    }

    pub fn topics(&self) -> Topics {
        Topics::new(&self.topic_prefix)
    }

    /// The base client config: brokers, then every `-X` property.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    pub fn producer(&self) -> Result<Producer, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            // Records wait up to 25 ms to share a request: the broker's cost is per request,
            // and slots are fired a lead ahead (`--fire-ahead`), so the wait is not between a
            // slot and its task's start (see the README's tuning table for the figures).
            .set("linger.ms", "25")
            .set("message.timeout.ms", "30000")
            .set("max.in.flight.requests.per.connection", "5");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        for (key, value) in PRODUCER_INVARIANTS {
            config.set(key, value);
        }
        Producer::create(config)
    }

    /// The producer of a worker's regular heartbeats. A connection of its own, so that a beat
    /// never waits behind the outcomes and handovers queued on the main producer (the broker
    /// answers a connection's requests one at a time), sent at once (no linger), and given up
    /// once older than `stale_after`: a beat that late would only say the worker was alive then,
    /// and the next one is fresh. Not idempotent: a lost or repeated beat is harmless, readers
    /// keep each worker's newest by time.
    pub fn heartbeat_producer(&self, stale_after: Duration) -> Result<Producer, KafkaError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        let timeout_ms = stale_after.as_millis().max(1000);
        config
            .set("linger.ms", "0")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("enable.idempotence", "false")
            .set("partitioner", "murmur2_random")
            .set("acks", "all");
        Producer::create(config)
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            // The least Apache Kafka accepts by default (group.min.session.timeout.ms): a member
            // killed without leaving holds its partitions this long. librdkafka heartbeats from a
            // thread of its own, so a busy service loop does not count as silence.
            .set("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS)
            .set("heartbeat.interval.ms", DEFAULT_GROUP_HEARTBEAT_INTERVAL_MS)
            .set("fetch.wait.max.ms", "50")
            // How often the consumer lag metric is refreshed.
            .set("statistics.interval.ms", "5000");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        for (key, value) in CONSUMER_INVARIANTS {
            config.set(key, value);
        }
        config
    }

    /// How long the group waits for a silent member before it expels it and moves its
    /// partitions: the default, or the `session.timeout.ms` given with `-X`.
    pub fn session_timeout(&self) -> Duration {
        self.duration_property("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS)
    }

    /// How long a member may be silent before its group may have expelled it: the session less
    /// two of the consumer's group heartbeat intervals, since the session runs from the member's
    /// last group heartbeat, which the consumer's own thread sent up to an interval (and its
    /// scheduling) before the member fell silent.
    pub fn expulsion_after(&self) -> Duration {
        let interval =
            self.duration_property("heartbeat.interval.ms", DEFAULT_GROUP_HEARTBEAT_INTERVAL_MS);
        self.session_timeout().saturating_sub(interval * 2)
    }

    /// A property given with `-X` (the last one given wins), in milliseconds, or `default`.
    fn duration_property(&self, key: &str, default: &str) -> Duration {
        let ms = self
            .properties
            .iter()
            .rev()
            .find(|(given, _)| given == key)
            .map_or(default, |(_, value)| value.as_str());
        Duration::from_millis(ms.parse().unwrap_or_else(|_| default.parse().unwrap_or(0)))
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.client_config().create()
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((key.trim().to_string(), value.to_string()))
}

/// The names of Kairos's topics under one prefix.
#[derive(Clone, Debug)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Topics {
            prefix: prefix.to_string(),
        }
    }
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{}", self.prefix, suffix)
    }
    pub fn jobs(&self) -> String {
        self.name("jobs")
    }
    pub fn runs(&self) -> String {
        self.name("runs")
    }
    pub fn trigger_state(&self) -> String {
        self.name("trigger-state")
    }
    pub fn tasks(&self, pool: &str) -> String {
        self.name(&format!("tasks.{pool}"))
    }
    pub fn heartbeats(&self) -> String {
        self.name("heartbeats")
    }
    pub fn alerts(&self) -> String {
        self.name("alerts")
    }
    pub fn control(&self) -> String {
        self.name("control")
    }
    pub fn deadletter(&self) -> String {
        self.name("deadletter")
    }
    pub fn job_status(&self) -> String {
        self.name("job-status")
    }
    /// Consumer group of a service, e.g. `kairos-dispatcher`.
    pub fn group(&self, service: &str) -> String {
        format!("{}-{}", self.prefix, service)
    }

    /// The group a service consumes in and the topics it reads there: the one description the
    /// services and `kairosctl replay` share.
    pub fn consumes(&self, service: &ServiceKind) -> (String, Vec<String>) {
        match service {
            ServiceKind::Trigger => (
                self.group("trigger"),
                vec![self.jobs(), self.trigger_state()],
            ),
            ServiceKind::Dispatcher => (
                self.group("dispatcher"),
                vec![self.jobs(), self.runs(), self.control()],
            ),
            ServiceKind::Worker { pool } => (
                self.group(&format!("workers-{pool}")),
                vec![self.tasks(pool)],
            ),
            ServiceKind::Aggregator => (
                self.group("aggregator"),
                vec![
                    self.jobs(),
                    self.runs(),
                    self.heartbeats(),
                    self.deadletter(),
                ],
            ),
        }
    }
}

/// The four services, as far as their consumer groups are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    Trigger,
    Dispatcher,
    /// The workers of one pool share a group.
    Worker {
        pool: String,
    },
    Aggregator,
}

impl ServiceKind {
    /// Whether the service keeps local state (a RocksDB store) that it rebuilds from its inputs.
    pub fn has_store(&self) -> bool {
        !matches!(self, ServiceKind::Worker { .. })
    }
}

/// A producer whose sends complete when the broker has acknowledged the record.
///
/// An idempotent producer can fail for good (librdkafka's "fatal error": its sequence numbers
/// out of step with the broker's, e.g. around a broker restart), after which every send fails at
/// once. Such a producer is replaced by a new one from the same configuration, shared by every
/// clone, so that a service does not retry a dead producer for ever.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<std::sync::RwLock<FutureProducer>>,
    config: Arc<ClientConfig>,
}

/// Where an acknowledged record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

impl Producer {
    fn create(config: ClientConfig) -> Result<Producer, KafkaError> {
        let inner = config.create()?;
        Ok(Producer {
            inner: Arc::new(std::sync::RwLock::new(inner)),
            config: Arc::new(config),
        })
    }

    /// The current librdkafka producer.
    fn current(&self) -> FutureProducer {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces `failed` with a new producer if it has failed for good. Records it held
    /// unacknowledged fail; their senders retry them on the new one.
    fn renew_if_fatal(&self, failed: &FutureProducer) {
        use rdkafka::producer::Producer as _;
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another sender may have replaced it already.
        if current.client().fatal_error().is_some() {
            match self.config.create() {
                Ok(renewed) => {
                    tracing::error!(
                        ?code,
                        reason,
                        "The producer failed for good; replaced by a new one."
                    );
                    metrics::counter!(m::PRODUCERS_RENEWED).increment(1);
                    *current = renewed;
                }
                Err(error) => {
                    tracing::error!(?code, reason, %error, "The producer failed for good and no new one could be made.");
                }
            }
        }
    }

    /// Sends one keyed record (a `None` payload is a tombstone) and waits for the acknowledgement.
    /// Retries while the local queue is full; any other error is the caller's to classify.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<Delivered, KafkaError> {
        self.send_with_headers(topic, key, payload, &[]).await
    }

    /// [`Producer::send`] with record headers (the CloudEvents attributes of a ledger event).
    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, String)],
    ) -> Result<Delivered, KafkaError> {
        let record = future_record(topic, key, payload, headers);
        let producer = self.current();
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _)) => {
                self.renew_if_fatal(&producer);
                Err(error)
            }
        }
    }

    /// Appends a run-ledger record to `topic` (the runs topic), headers and all.
    pub async fn append(
        &self,
        topic: &str,
        record: &LedgerRecord,
    ) -> Result<Delivered, KafkaError> {
        self.send_with_headers(topic, &record.key, Some(&record.payload), &record.headers)
            .await
    }

    /// Waits until every queued record is acknowledged (used on shutdown).
    pub fn flush(&self) {
        let _ = rdkafka::producer::Producer::flush(&self.current(), Duration::from_secs(10));
    }
}

/// A keyed record with its headers, as the producer takes it.
fn future_record<'a>(
    topic: &'a str,
    key: &'a str,
    payload: Option<&'a [u8]>,
    headers: &[(&str, String)],
) -> FutureRecord<'a, str, [u8]> {
    let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if !headers.is_empty() {
        let owned = headers
            .iter()
            .fold(OwnedHeaders::new(), |all, (name, value)| {
                all.insert(Header {
                    key: name,
                    value: Some(value.as_str()),
                })
            });
        record = record.headers(owned);
    }
    record
}

/// Why a record could not be sent by a [`ReliableProducer`].
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("shutdown was requested before the broker acknowledged the record")]
    Shutdown,
    #[error("the broker refused the record: {0}")]
    Refused(KafkaError),
}

/// A producer for services: it keeps retrying (with backoff) through broker outages until the
/// record is acknowledged, so a service waits for the broker instead of exiting. Only a record the
/// broker can never take, or shutdown, ends the wait.
#[derive(Clone)]
pub struct ReliableProducer {
    producer: Producer,
    shutdown: tokio_util::sync::CancellationToken,
    /// The service it sends for, in metrics.
    service: &'static str,
}

impl ReliableProducer {
    pub fn new(
        producer: Producer,
        shutdown: tokio_util::sync::CancellationToken,
        service: &'static str,
    ) -> Self {
        ReliableProducer {
            producer,
            shutdown,
            service,
        }
    }

    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<Delivered, SendError> {
        self.send_with_headers(topic, key, payload, &[]).await
    }

    /// [`Producer::append`], retried through outages like every send of this producer.
    pub async fn append(&self, topic: &str, record: &LedgerRecord) -> Result<Delivered, SendError> {
        self.send_with_headers(topic, &record.key, Some(&record.payload), &record.headers)
            .await
    }

    /// [`ReliableProducer::send`] with record headers.
    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, String)],
    ) -> Result<Delivered, SendError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .producer
                .send_with_headers(topic, key, payload, headers)
                .await
            {
                Ok(delivered) => return Ok(delivered),
                Err(error) if is_permanent(&error) => return Err(SendError::Refused(error)),
                Err(error) => {
                    tracing::warn!(%error, topic, "Producing failed; retrying.");
                    metrics::counter!(m::PRODUCE_RETRIES, "service" => self.service, "topic" => topic_kind(topic))
                        .increment(1);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(SendError::Shutdown),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    pub fn flush(&self) {
        self.producer.flush();
    }

    /// Appends run-ledger records and blocks the thread until every record this producer has
    /// queued, these and any sent before, is acknowledged, or `timeout` has passed: one try,
    /// bounded, for code that cannot await (a rebalance callback). Returns how many of `records`
    /// were acknowledged.
    pub fn append_blocking(
        &self,
        topic: &str,
        records: &[LedgerRecord],
        timeout: Duration,
    ) -> usize {
        use futures::FutureExt as _;
        let producer = self.producer.current();
        let deliveries: Vec<_> = records
            .iter()
            .filter_map(|record| {
                let queued = producer.send_result(future_record(
                    topic,
                    &record.key,
                    Some(&record.payload),
                    &record.headers,
                ));
                queued
                    .map_err(|(error, _)| tracing::warn!(%error, "Queueing a record failed."))
                    .ok()
            })
            .collect();
        if let Err(error) = rdkafka::producer::Producer::flush(&producer, timeout) {
            tracing::warn!(%error, "Not every record was acknowledged in time.");
        }
        self.producer.renew_if_fatal(&producer);
        deliveries
            .into_iter()
            .map(|delivery| matches!(delivery.now_or_never(), Some(Ok(Ok(_)))))
            .filter(|acknowledged| *acknowledged)
            .count()
    }
}

/// Errors no retry can fix: the record itself is unacceptable to the broker.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}

/// The topic without the installation prefix, so that metric label sets stay bounded.
pub fn topic_kind(topic: &str) -> String {
    topic
        .split_once('.')
        .map_or(topic, |(_, rest)| rest)
        .to_string()
}

/// A service loop's result, with a send interrupted by shutdown counted as a clean stop.
pub fn clean_exit(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(error) if matches!(error.downcast_ref::<SendError>(), Some(SendError::Shutdown)) => {
            Ok(())
        }
        other => other,
    }
}

/// A change of the partitions this instance owns, as seen by the service loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalanced {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// Sets each assigned partition's start position from the store, commits on revoke, and tells
/// the service loop what changed.
pub struct KairosContext {
    store: Option<Store>,
    events: mpsc::UnboundedSender<Rebalanced>,
    /// The service it consumes for, in metrics.
    service: &'static str,
    on_revoke: Arc<std::sync::OnceLock<RevokeHook>>,
}

/// Called with the partition numbers being revoked, and whether they were lost (this member was
/// expelled, so another may own them already), before the revocation's commit and before the
/// group may give them to another member: what it writes and stores there is what the next owner
/// starts from. It runs on the consumer's thread and may block, briefly: the whole group waits.
pub type RevokeHook = Box<dyn Fn(&[i32], bool) + Send + Sync>;

impl ClientContext for KairosContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => tracing::error!(facility = fac, "{log_message}"),
            Warning => tracing::warn!(facility = fac, "{log_message}"),
            _ => tracing::debug!(facility = fac, "{log_message}"),
        }
    }

    /// Exports the lag librdkafka measures (every `statistics.interval.ms`): per topic, the records
    /// past the last offset this instance has applied, over the partitions it owns.
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            let lag: i64 = stats
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag_stored >= 0)
                .map(|p| p.consumer_lag_stored)
                .sum();
            metrics::gauge!(m::CONSUMER_LAG, "service" => self.service, "topic" => topic_kind(topic))
                .set(lag as f64);
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for KairosContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = partitions_of(tpl);
                if let Some(store) = &self.store {
                    for (topic, partition) in &partitions {
                        let offset = match store.next_offset(topic, *partition) {
                            Ok(Some(next)) => Offset::Offset(next),
                            Ok(None) => Offset::Beginning,
                            Err(error) => {
                                tracing::error!(%error, topic, partition, "Reading the stored position failed; rebuilding the partition.");
                                Offset::Beginning
                            }
                        };
                        let _ = tpl.set_partition_offset(topic, *partition, offset);
                    }
                }
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "Assigning partitions failed.");
                }
                tracing::info!(?partitions, "Partitions assigned.");
                let _ = self.events.send(Rebalanced::Assigned(partitions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = partitions_of(tpl);
                if let Some(hook) = self.on_revoke.get() {
                    let numbers = partition_numbers(&partitions);
                    let lost = consumer.assignment_lost();
                    blocking(|| hook(&numbers, lost));
                }
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(%error, "Nothing committed on revoke.");
                }
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "Unassigning partitions failed.");
                }
                tracing::info!(?partitions, "Partitions revoked.");
                let _ = self.events.send(Rebalanced::Revoked(partitions));
            }
            other => tracing::error!(error = ?other, "Rebalance failed."),
        }
    }
}

/// Runs `work`, which blocks, without stalling the other tasks of a multi-thread runtime's worker.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// What the service loop receives next.
#[derive(Debug)]
pub enum Input {
    /// The records already fetched, in the order read (at least one, at most
    /// [`MAX_RECORDS_PER_INPUT`]): a service folds them into one store write, sends what they
    /// call for together, and reconciles what they touched once.
    Records(Vec<OwnedMessage>),
    /// These partition numbers are now owned; their state is being rebuilt from the topics.
    Assigned(Vec<i32>),
    /// These partition numbers are no longer owned.
    Revoked(Vec<i32>),
}

/// A consumer-group member over a set of co-partitioned topics.
pub struct PartitionedConsumer {
    consumer: Arc<StreamConsumer<KairosContext>>,
    rebalances: mpsc::UnboundedReceiver<Rebalanced>,
    on_revoke: Arc<std::sync::OnceLock<RevokeHook>>,
    /// High watermarks to reach, per topic partition, before a partition counts as caught up.
    targets: HashMap<(String, i32), i64>,
    /// Partitions being rebuilt: when the rebuild began and how many records it has applied.
    rebuilding: HashMap<i32, (std::time::Instant, u64)>,
    owned: HashSet<i32>,
    assigned_once: bool,
    service: &'static str,
}

impl PartitionedConsumer {
    /// Joins `group` on `topics` for `service`. With a store, positions come from the store (see
    /// module docs).
    pub fn new(
        service: &'static str,
        args: &KafkaArgs,
        group: &str,
        topics: &[String],
        store: Option<Store>,
    ) -> Result<Self, KafkaError> {
        let (events, rebalances) = mpsc::unbounded_channel();
        let on_revoke = Arc::new(std::sync::OnceLock::new());
        let consumer: StreamConsumer<KairosContext> = args
            .consumer_config(group)
            .create_with_context(KairosContext {
                store,
                events,
                service,
                on_revoke: Arc::clone(&on_revoke),
            })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        Ok(PartitionedConsumer {
            consumer: Arc::new(consumer),
            rebalances,
            on_revoke,
            targets: HashMap::new(),
            rebuilding: HashMap::new(),
            owned: HashSet::new(),
            assigned_once: false,
            service,
        })
    }

    /// The next records or ownership change. Ownership changes are delivered first, so no record
    /// of a newly assigned partition is seen before its `Assigned`. Once a record has come, the
    /// records already fetched behind it come with it, without waiting for more. Consumer errors
    /// (a broker outage) are logged and waited out. Cancel-safe: nothing is awaited once a
    /// record has been taken.
    pub async fn next(&mut self, store: Option<&Store>) -> Input {
        loop {
            tokio::select! {
                biased;
                Some(change) = self.rebalances.recv() => return self.on_rebalance(change, store),
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let message = message.detach();
                        if self.owned.contains(&message.partition()) {
                            return Input::Records(self.fetched_behind(message));
                        }
                    }
                    // librdkafka reconnects by itself; an outage must not stop the service.
                    Err(error) => {
                        tracing::warn!(%error, "Consuming failed; retrying.");
                        tokio::time::sleep(CONSUME_RETRY_BACKOFF).await;
                    }
                },
            }
        }
    }

    /// `first` and the records of owned partitions already fetched after it, until none is
    /// ready, an ownership change is waiting (it must come before any record it concerns), a
    /// record completes its partition's catch-up (the records after it are live, which a service
    /// can tell only once it has applied that one), or the input is full.
    fn fetched_behind(&self, first: OwnedMessage) -> Vec<OwnedMessage> {
        use futures::FutureExt as _;
        use futures::StreamExt as _;
        let mut done = self.reaches_target(&first);
        let mut records = vec![first];
        let mut stream = self.consumer.stream();
        while !done && records.len() < MAX_RECORDS_PER_INPUT && self.rebalances.is_empty() {
            match stream.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    if self.owned.contains(&message.partition()) {
                        let message = message.detach();
                        done = self.reaches_target(&message);
                        records.push(message);
                    }
                }
                // An error is met again, and waited out, by the next call.
                _ => break,
            }
        }
        records
    }

    /// Whether the record is the last one its topic partition has to catch up on.
    fn reaches_target(&self, message: &OwnedMessage) -> bool {
        let key = (message.topic().to_string(), message.partition());
        self.targets
            .get(&key)
            .is_some_and(|target| message.offset() + 1 >= *target)
    }

    fn on_rebalance(&mut self, change: Rebalanced, store: Option<&Store>) -> Input {
        match change {
            Rebalanced::Assigned(partitions) => {
                self.assigned_once = true;
                // Without a store there is no state to rebuild, so nothing to catch up on.
                for (topic, partition) in partitions.iter().filter(|_| store.is_some()) {
                    // Unknown, the partition is taken for caught up: its records are applied as
                    // they come.
                    let high = self.high_watermark(topic, *partition).unwrap_or(0);
                    let position = store
                        .and_then(|s| s.next_offset(topic, *partition).ok().flatten())
                        .unwrap_or(0);
                    if high > position {
                        self.targets.insert((topic.clone(), *partition), high);
                    }
                }
                let numbers = partition_numbers(&partitions);
                let started = std::time::Instant::now();
                for (_, partition) in self.targets.keys() {
                    self.rebuilding.entry(*partition).or_insert((started, 0));
                }
                self.owned.extend(numbers.iter().copied());
                Input::Assigned(numbers)
            }
            Rebalanced::Revoked(partitions) => {
                let numbers = partition_numbers(&partitions);
                for n in &numbers {
                    self.owned.remove(n);
                }
                self.targets.retain(|(_, p), _| !numbers.contains(p));
                self.rebuilding.retain(|p, _| !numbers.contains(p));
                Input::Revoked(numbers)
            }
        }
    }

    /// The partition's high watermark, `None` (and a warning) if the broker did not say: the
    /// caller decides what an unknown end means. Blocks the calling worker thread for the
    /// metadata round trip (rare: once per partition per rebalance) rather than awaiting, so that
    /// `next` stays cancel-safe in a `select!`.
    ///
    /// # Panics
    /// On a current-thread tokio runtime; every Kairos service runs on the multi-thread one.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let result = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
        });
        match result {
            Ok((_, high)) => Some(high),
            Err(error) => {
                tracing::warn!(%error, topic, partition, "Fetching the high watermark failed.");
                None
            }
        }
    }

    /// Has `hook` called on every revocation (see [`RevokeHook`]); a second hook is refused.
    pub fn on_revoke(&self, hook: RevokeHook) -> anyhow::Result<()> {
        self.on_revoke
            .set(hook)
            .map_err(|_| anyhow::anyhow!("a revoke hook is already set"))
    }

    /// A reader of partitions' high watermarks over this member's connection, for a task off the
    /// record loop.
    pub fn watermark_reader(&self) -> WatermarkReader {
        WatermarkReader {
            consumer: self.consumer.clone(),
        }
    }

    /// Marks the records as applied (their state is durable and their effects acknowledged): the
    /// group may commit past them. Returns the partitions whose catch-up these records completed.
    pub fn applied(&mut self, messages: &[OwnedMessage]) -> Vec<i32> {
        let mut next_offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for message in messages {
            let next = next_offsets
                .entry((message.topic(), message.partition()))
                .or_default();
            *next = (*next).max(message.offset() + 1);
            if let Some((_, records)) = self.rebuilding.get_mut(&message.partition()) {
                *records += 1;
            }
        }
        let mut caught_up = vec![];
        for ((topic, partition), next) in next_offsets {
            self.store_position(topic, partition, next);
            let key = (topic.to_string(), partition);
            if self.targets.get(&key).is_some_and(|target| next >= *target) {
                self.targets.remove(&key);
                if !self.targets.keys().any(|(_, p)| *p == partition) {
                    self.rebuilt(partition);
                    caught_up.push(partition);
                }
            }
        }
        caught_up
    }

    fn rebuilt(&mut self, partition: i32) {
        if let Some((started, records)) = self.rebuilding.remove(&partition) {
            metrics::histogram!(m::REBUILD_DURATION, "service" => self.service)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(m::REBUILD_RECORDS, "service" => self.service).increment(records);
            tracing::info!(
                partition,
                records,
                seconds = started.elapsed().as_secs_f64(),
                "Partition rebuilt."
            );
        }
    }

    /// Lets the group commit up to (not including) `next_offset` of a partition.
    pub fn store_position(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, partition, Offset::Offset(next_offset))
            .is_ok()
        {
            if let Err(error) = self.consumer.store_offsets(&tpl) {
                tracing::debug!(%error, topic, partition, "Storing the group offset failed.");
            }
        }
    }

    /// Partition numbers owned and no longer rebuilding.
    pub fn is_caught_up(&self, partition: i32) -> bool {
        self.owned.contains(&partition) && !self.targets.keys().any(|(_, p)| *p == partition)
    }

    /// Whether this member has been assigned its share and has caught up on all of it.
    pub fn ready(&self) -> bool {
        self.assigned_once && self.targets.is_empty()
    }

    pub fn owned(&self) -> impl Iterator<Item = i32> + '_ {
        self.owned.iter().copied()
    }

    /// Commits stored offsets; called on shutdown.
    pub fn commit(&self) {
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "Nothing committed on shutdown.");
        }
    }
}

/// How long a high watermark may take to read before the read fails.
pub(crate) const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads partitions' high watermarks as the broker tells them now, on the blocking pool, so that a
/// broker that does not answer delays only the caller.
#[derive(Clone)]
pub struct WatermarkReader {
    consumer: Arc<StreamConsumer<KairosContext>>,
}

impl WatermarkReader {
    pub async fn high(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        let (consumer, topic) = (self.consumer.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
                .map(|(_, high)| high)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// A consumer that reads every partition of `topic` from `from` on, outside any group: each
/// instance sees every record (broadcast commands from the end on, compacted views from the
/// beginning).
pub fn broadcast_consumer(
    args: &KafkaArgs,
    topic: &str,
    partitions: i32,
    from: Offset,
) -> Result<StreamConsumer, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("{}-broadcast", args.topic_prefix))
        .set("fetch.wait.max.ms", "50");
    for (key, value) in &args.properties {
        config.set(key, value);
    }
    // Positions are the reader's own: nothing is ever committed for this group.
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer: StreamConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, from)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

fn partition_numbers(partitions: &[(String, i32)]) -> Vec<i32> {
    let mut numbers: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

// ---------------------------------------------------------------------------------------------
// Topics as data, co-partitioning.

/// `topics/topics.yaml`, as shipped with this build.
pub const DEFAULT_TOPIC_SET: &str = include_str!("../../../topics/topics.yaml");

/// The topic set of an installation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSet {
    pub partitions: i32,
    pub replication_factor: i32,
    pub topics: Vec<TopicDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDef {
    pub name: String,
    #[serde(default)]
    pub co_partitioned: bool,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl TopicSet {
    pub fn parse(yaml: &str) -> Result<Self, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    pub fn shipped() -> Self {
        Self::parse(DEFAULT_TOPIC_SET).expect("topics/topics.yaml shipped with this build is valid")
    }

    /// The configuration the set gives the topic `suffix` (e.g. `runs`); empty if none.
    pub fn config_of(&self, suffix: &str) -> BTreeMap<String, String> {
        self.topics
            .iter()
            .find(|t| t.name == suffix)
            .map(|t| t.config.clone())
            .unwrap_or_default()
    }

    /// The partition count of the topic `suffix`, e.g. a new pool's `tasks.<pool>`.
    pub fn partitions_for(&self, def: &TopicDef) -> i32 {
        if def.co_partitioned {
            self.partitions
        } else {
            self.partitions.min(3)
        }
    }
}

/// Topic configuration for a pool's task topic, from the shipped topic set's `tasks.default`.
pub fn task_topic_config() -> BTreeMap<String, String> {
    TopicSet::shipped().config_of("tasks.default")
}

/// What `topics apply` did.
#[derive(Debug, Default, PartialEq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    /// Differences between the cluster and the topic set, which apply never fixes by itself.
    pub drift: Vec<String>,
}

/// Creates the topics of `set` that are missing under `args`'s prefix; reports partition drift of
/// existing ones. Never deletes or alters.
pub async fn apply_topics(args: &KafkaArgs, set: &TopicSet) -> anyhow::Result<ApplyReport> {
    let topics = args.topics();
    let admin = TopicAdmin::new(args)?;
    let existing = admin.partition_counts().await?;
    let mut report = ApplyReport::default();
    let mut to_create = vec![];
    for def in &set.topics {
        let name = topics.name(&def.name);
        let want = set.partitions_for(def);
        match existing.get(&name) {
            Some(have) if *have == want => report.unchanged.push(name),
            Some(have) => {
                report.drift.push(format!(
                    "{name}: has {have} partitions, the topic set says {want}"
                ));
                report.unchanged.push(name);
            }
            None => to_create.push((name, want, def)),
        }
    }
    if !to_create.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|(name, partitions, def)| {
                def.config.iter().fold(
                    NewTopic::new(
                        name,
                        *partitions,
                        TopicReplication::Fixed(set.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(name) => report.created.push(name),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.unchanged.push(name),
                Err((name, code)) => anyhow::bail!("creating topic {name} failed: {code}"),
            }
        }
        admin.wait_for_topics(&report.created).await?;
    }
    Ok(report)
}

/// The cluster's metadata and topic creation for a running service: one admin client and one
/// metadata client for its life, and every metadata round trip on the blocking pool, so that
/// neither a service loop nor an API request blocks the async runtime while the broker answers.
#[derive(Clone)]
pub struct TopicAdmin {
    args: KafkaArgs,
    admin: Arc<AdminClient<DefaultClientContext>>,
    metadata: Arc<BaseConsumer>,
}

impl TopicAdmin {
    pub fn new(args: &KafkaArgs) -> Result<Self, KafkaError> {
        Ok(TopicAdmin {
            args: args.clone(),
            admin: Arc::new(args.admin()?),
            metadata: Arc::new(args.client_config().create()?),
        })
    }

    pub fn kafka(&self) -> &KafkaArgs {
        &self.args
    }

    /// The cluster's metadata, of one topic or of all, read on the blocking pool.
    async fn metadata(&self, topic: Option<&str>) -> anyhow::Result<Metadata> {
        let client = self.metadata.clone();
        let topic = topic.map(str::to_string);
        Ok(tokio::task::spawn_blocking(move || {
            client.fetch_metadata(topic.as_deref(), METADATA_TIMEOUT)
        })
        .await??)
    }

    /// Partition count of every topic in the cluster.
    pub async fn partition_counts(&self) -> anyhow::Result<HashMap<String, i32>> {
        Ok(counts_in(&self.metadata(None).await?))
    }

    /// How many replicas `topic` has (those of its first partition); 1 if it does not exist.
    async fn replication_of(&self, topic: &str) -> anyhow::Result<i32> {
        Ok(self
            .metadata(Some(topic))
            .await?
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().first())
            .map(|p| i32::try_from(p.replicas().len()).unwrap_or(1).max(1))
            .next()
            .unwrap_or(1))
    }

    /// Creates one topic with `partitions` partitions unless it exists (used for new pools' task
    /// topics); whether it created it.
    pub async fn ensure_topic(
        &self,
        name: &str,
        partitions: i32,
        config: &BTreeMap<String, String>,
    ) -> anyhow::Result<bool> {
        if self.partition_counts().await?.contains_key(name) {
            return Ok(false);
        }
        // As replicated as the ledger, so a new pool's tasks are as safe as its runs.
        let replication = self.replication_of(&self.args.topics().runs()).await?;
        let topic = config.iter().fold(
            NewTopic::new(name, partitions, TopicReplication::Fixed(replication)),
            |t, (k, v)| t.set(k, v),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in self.admin.create_topics([&topic], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("creating topic {name} failed: {code}"),
            }
        }
        self.wait_for_topics(&[name.to_string()]).await?;
        Ok(true)
    }

    /// Waits until metadata shows the topics, so that the caller can produce to them at once.
    async fn wait_for_topics(&self, names: &[String]) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let counts = self.partition_counts().await?;
            if names.iter().all(|n| counts.get(n).is_some_and(|c| *c > 0)) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "topics {names:?} did not appear in metadata within 30 s"
            );
            tokio::time::sleep(METADATA_POLL).await;
        }
    }
}

/// Partition count of every topic in the cluster, read once at start or by a command.
pub fn partition_counts(args: &KafkaArgs) -> Result<HashMap<String, i32>, KafkaError> {
    let client: BaseConsumer = args.client_config().create()?;
    Ok(counts_in(&client.fetch_metadata(None, METADATA_TIMEOUT)?))
}

/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn counts_in(metadata: &Metadata) -> HashMap<String, i32> {
    metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            (
                t.name().to_string(),
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
            )
        })
        .collect()
}

/// Why a service refuses to start on these topics.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoPartitionError {
    #[error("topic {0} does not exist; create the topic set with `kairosctl topics apply`")]
    Missing(String),
    #[error("topics are not co-partitioned: {0}; every topic keyed by job_id needs the same partition count, or one job's records would land in different partitions")]
    Mismatch(String),
}

/// Checks that `topics` exist and have one partition count; returns it.
pub fn check_co_partitioning(args: &KafkaArgs, topics: &[String]) -> anyhow::Result<i32> {
    let counts = partition_counts(args)?;
    let mut seen = Vec::new();
    for topic in topics {
        let count = *counts
            .get(topic)
            .ok_or_else(|| CoPartitionError::Missing(topic.clone()))?;
        seen.push((topic.as_str(), count));
    }
    let first = seen.first().map_or(0, |(_, c)| *c);
    if seen.iter().any(|(_, c)| *c != first) {
        let listing: Vec<String> = seen
            .iter()
            .map(|(t, c)| format!("{t} has {c} partitions"))
            .collect();
        return Err(CoPartitionError::Mismatch(listing.join(", ")).into());
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Given the default session (6 s) and group heartbeat (1 s), a silence of 4 s may already
    /// have expelled a member; given a session and heartbeat set with `-X`, those count.
    #[test]
    fn a_member_may_be_expelled_two_group_heartbeats_before_its_session_ends() {
        let mut args = KafkaArgs::new("127.0.0.1:9092", "kairos");
        assert_eq!(args.expulsion_after(), Duration::from_secs(4));
        args.properties = vec![
            ("session.timeout.ms".into(), "45000".into()),
            ("heartbeat.interval.ms".into(), "3000".into()),
        ];
        assert_eq!(args.session_timeout(), Duration::from_secs(45));
        assert_eq!(args.expulsion_after(), Duration::from_secs(39));
    }

    #[test]
    fn the_shipped_topic_set_is_valid_and_co_partitions_the_job_keyed_topics() {
        let set = TopicSet::shipped();
        let co: Vec<&str> = set
            .topics
            .iter()
            .filter(|t| t.co_partitioned)
            .map(|t| t.name.as_str())
            .collect();
        for name in ["jobs", "runs", "trigger-state", "tasks.default"] {
            assert!(co.contains(&name), "{name} must be co-partitioned");
        }
        assert_eq!(set.config_of("jobs")["cleanup.policy"], "compact");
        assert!(set.config_of("no-such-topic").is_empty());
    }

    #[test]
    fn properties_parse_as_key_value() {
        assert_eq!(
            parse_property("security.protocol=SSL"),
            Ok(("security.protocol".into(), "SSL".into()))
        );
        assert!(parse_property("nonsense").is_err());
    }
}

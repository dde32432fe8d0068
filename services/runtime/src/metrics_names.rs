//! The metrics every service exports through the shared runtime, in one place so dashboards can be
//! checked against the code.
//!
//! They are the same family in each service, so the service is a `service` label rather than part
//! of the name: one dashboard panel shows all four services' lag, stores and rebuilds.

/// Produce attempts that failed and are retried (broker down or slow), by `service` and `topic`.
pub const PRODUCE_RETRIES: &str = "kairos_produce_retries_total";
/// Producers replaced after failing for good (librdkafka's fatal idempotence errors).
pub const PRODUCERS_RENEWED: &str = "kairos_producers_renewed_total";
/// Records sent to the dead-letter topic, by `service`, source `topic` and `reason`.
pub const DEADLETTERED: &str = "kairos_deadlettered_records_total";
/// Records on the broker not yet applied by this instance, by `service` and `topic`.
pub const CONSUMER_LAG: &str = "kairos_consumer_lag_records";
/// On-disk size of the service's RocksDB store, by `service`.
pub const STORE_SIZE: &str = "kairos_store_size_bytes";
/// Time from a partition's assignment to its state being caught up, by `service`.
pub const REBUILD_DURATION: &str = "kairos_rebuild_duration_seconds";
/// Records applied while rebuilding partitions, by `service`.
pub const REBUILD_RECORDS: &str = "kairos_rebuild_records_total";

/// Registers the service's shared metrics at zero, so that a dashboard shows a flat line, not
/// "no data", before the first event.
pub fn register(service: &'static str) {
    metrics::counter!(PRODUCE_RETRIES, "service" => service).absolute(0);
    metrics::counter!(DEADLETTERED, "service" => service).absolute(0);
    metrics::counter!(REBUILD_RECORDS, "service" => service).absolute(0);
}

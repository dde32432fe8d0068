//! `kairosctl replay`: make a stopped service read its inputs again from a point, and rebuild its
//! state from there.
//!
//! A stateful service resumes from the positions in its store, not from its group's offsets, so a
//! replay does both: it drops the store (seeding a fresh one with the replay's start positions,
//! unless that is the beginning) and commits the same positions for the group, where the workers
//! (which keep no store) resume and where lag is measured. The service must be stopped: a running
//! member would commit its own positions over the replay's.
//!
//! A start time is found by a binary search over record timestamps in each partition, not by the
//! broker's ListOffsets-by-time, which some Kafka-compatible brokers answer wrongly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kairos_core::Timestamp;
use kairos_runtime::kafka::ServiceKind;
use kairos_runtime::{Batch, KafkaArgs, Store};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the replay starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum From {
    Earliest,
    Offset(i64),
    Time(Timestamp),
}

/// What a replay did, per topic partition: the offset the service reads from next.
pub(crate) struct Reset {
    pub(crate) group: String,
    pub(crate) positions: BTreeMap<(String, i32), i64>,
    pub(crate) dropped_store: bool,
}

impl Reset {
    pub(crate) fn to_json(&self) -> Value {
        let positions: Vec<Value> = self
            .positions
            .iter()
            .map(|((topic, partition), offset)| {
                json!({"topic": topic, "partition": partition, "offset": offset})
            })
            .collect();
        json!({"group": self.group, "dropped_store": self.dropped_store, "positions": positions})
    }
}

/// Resets `service`'s group and local state in `data_dir` to read from `from`.
pub(crate) fn reset(
    kafka: &KafkaArgs,
    service: &ServiceKind,
    from: From,
    data_dir: Option<&Path>,
) -> anyhow::Result<Reset> {
    let (group, inputs) = kafka.topics().consumes(service);
    if service.has_store() && data_dir.is_none() {
        bail!("a replay of a service with local state needs its --data-dir, which it drops");
    }
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a consumer for the group")?;
    let groups = consumer
        .fetch_group_list(Some(&group), TIMEOUT)
        .context("asking the broker about the group")?;
    if let Some(members) = groups
        .groups()
        .iter()
        .map(|g| g.members().len())
        .find(|n| *n > 0)
    {
        bail!(
            "group {group} has {members} live member(s): stop every instance of the service before replaying it"
        );
    }
    let metadata = consumer
        .fetch_metadata(None, TIMEOUT)
        .context("reading the topics' metadata")?;
    let mut positions = BTreeMap::new();
    for topic in &inputs {
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .with_context(|| format!("topic {topic} does not exist"))?;
        for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, TIMEOUT)
                .with_context(|| format!("reading the offsets of {topic}[{partition}]"))?;
            let start = match from {
                From::Earliest => low,
                From::Offset(offset) => offset.clamp(low, high),
                From::Time(at) => first_at_or_after(kafka, topic, partition, low, high, at)?,
            };
            positions.insert((topic.clone(), partition), start);
        }
    }
    commit_as_member(kafka, &group, &inputs, &positions)?;
    let mut dropped_store = false;
    if let Some(dir) = data_dir.filter(|_| service.has_store()) {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("dropping the store in {}", dir.display()))?;
            dropped_store = true;
        }
        // Without positions a fresh store reads from the beginning, which is what --to-earliest
        // asks; any other start is written into the new store, where the service resumes.
        if !matches!(from, From::Earliest) {
            seed(dir, &positions)?;
        }
    }
    Ok(Reset {
        group,
        positions,
        dropped_store,
    })
}

/// Commits `positions` for `group` as a member of it: some brokers refuse a commit from outside
/// the group, even an empty one. Joins, waits for the assignment (all partitions, being alone),
/// commits, and leaves.
fn commit_as_member(
    kafka: &KafkaArgs,
    group: &str,
    inputs: &[String],
    positions: &BTreeMap<(String, i32), i64>,
) -> anyhow::Result<()> {
    let member: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()?;
    let topics: Vec<&str> = inputs.iter().map(String::as_str).collect();
    member.subscribe(&topics)?;
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while member.assignment().map_or(true, |a| a.count() == 0) {
        if Instant::now() > deadline {
            bail!("joining group {group} took over {JOIN_TIMEOUT:?}; is an instance of the service still running?");
        }
        // Polling drives the join; a record it returns is not consumed (nothing is committed
        // but the replay's positions).
        let _ = member.poll(Duration::from_millis(200));
    }
    let mut commit = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        commit.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    member
        .commit(&commit, CommitMode::Sync)
        .with_context(|| format!("committing the replay's offsets for group {group}"))?;
    member.unsubscribe();
    Ok(())
}

/// A fresh store holding only the positions to resume from.
fn seed(dir: &Path, positions: &BTreeMap<(String, i32), i64>) -> anyhow::Result<()> {
    let store = kairos_runtime::open_store(dir)?;
    let mut batch = Batch::new();
    for ((topic, partition), next) in positions {
        // A store records the last offset it consumed; `next - 1` makes it resume at `next`.
        batch.consumed(topic, *partition, next - 1);
    }
    store.write(batch)?;
    drop::<Store>(store);
    Ok(())
}

/// The first offset in `[low, high)` whose record is at or after `at` (`high` if none), by binary
/// search over the records' timestamps, which grow with the offsets of a partition.
fn first_at_or_after(
    kafka: &KafkaArgs,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
    at: Timestamp,
) -> anyhow::Result<i64> {
    let reader: BaseConsumer = kafka
        .client_config()
        .set("group.id", "kairosctl-replay-search")
        .set("enable.auto.commit", "false")
        .create()?;
    let target = at.timestamp_millis();
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (offset, time) = record_time_at(&reader, topic, partition, mid)?;
        match time {
            Some(time) if time < target => lo = offset + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The offset and timestamp of the first record at or after `offset` (compaction can leave gaps).
fn record_time_at(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<(i64, Option<i64>)> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    reader.assign(&tpl)?;
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some(message) = reader.poll(Duration::from_millis(200)) {
            let message =
                message.with_context(|| format!("reading {topic}[{partition}]@{offset}"))?;
            return Ok((message.offset(), message.timestamp().to_millis()));
        }
    }
    bail!("no record came back from {topic}[{partition}] at offset {offset} within {TIMEOUT:?}")
}

/// Waits for the service at `ops` (its --metrics-addr) to start and catch up, showing how much of
/// the replayed input it has applied.
pub(crate) async fn watch(ops: &str, service: &str, quiet: bool) -> anyhow::Result<Duration> {
    let base = if ops.starts_with("http") {
        ops.trim_end_matches('/').to_string()
    } else {
        format!("http://{ops}")
    };
    let client = reqwest::Client::new();
    let started = Instant::now();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_message(format!("waiting for the {service} to start at {base}"));
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut most_lag = 0u64;
    loop {
        let state: Option<Value> = match client.get(format!("{base}/debug/state")).send().await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        if let Some(state) = state {
            if state["caught_up"] == true {
                bar.finish_and_clear();
                return Ok(started.elapsed());
            }
            let lag = lag_of(&client, &base).await.unwrap_or(0);
            if lag > most_lag {
                most_lag = lag;
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} rebuilding [{bar:40}] {pos}/{len} records ({eta} left)",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_length(most_lag);
            }
            if most_lag > 0 {
                bar.set_position(most_lag - lag.min(most_lag));
            } else {
                bar.set_message(format!("the {service} is rebuilding"));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The records the service still has to apply, summed over its inputs, from its metrics.
async fn lag_of(client: &reqwest::Client, base: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let lag: f64 = text
        .lines()
        .filter(|l| l.starts_with(kairos_runtime::metrics_names::CONSUMER_LAG))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    Some(lag.max(0.0) as u64)
}

//! `kairosctl tail`: follows the run ledger, the alerts or the dead letters live and prints each
//! record decoded, like `kcat -C` with the schema. It reads as the workers read broadcast
//! commands, every partition outside any group, so it moves no service's offsets; a record it
//! cannot decode is printed as such, never fatal.

use anyhow::Context as _;
use kairos_runtime::codec;
use kairos_runtime::kafka::{broadcast_consumer, partition_counts};
use kairos_runtime::KafkaArgs;
use rdkafka::message::Message as _;
use rdkafka::Offset;
use serde_json::{json, Value};

/// Which topic to follow.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Stream {
    /// The run ledger: every decision about every run.
    Runs,
    /// The alerts the aggregator raises.
    Alerts,
    /// Records a service could not decode or validate, with the reason.
    Deadletter,
}

#[derive(clap::Args)]
pub(crate) struct TailArgs {
    stream: Stream,
    /// Only records about this job (the record key).
    #[arg(long)]
    job: Option<String>,
    /// Start from the oldest record the topic holds, not from now.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<usize>,
}

/// Follows the topic until `--limit` records were printed, or forever.
pub(crate) async fn tail(kafka: &KafkaArgs, args: TailArgs, as_json: bool) -> anyhow::Result<()> {
    let topics = kafka.topics();
    let topic = match args.stream {
        Stream::Runs => topics.runs(),
        Stream::Alerts => topics.alerts(),
        Stream::Deadletter => topics.deadletter(),
    };
    let partitions = partition_counts(kafka)
        .context("reading the topics' partitions (is --brokers right?)")?
        .get(&topic)
        .copied()
        .filter(|n| *n > 0)
        .with_context(|| format!("topic {topic} does not exist (kairosctl topics apply)"))?;
    let start = if args.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let consumer = broadcast_consumer(kafka, &topic, partitions, start)?;
    let mut printed = 0;
    while args.limit.is_none_or(|limit| printed < limit) {
        let message = consumer
            .recv()
            .await
            .with_context(|| format!("reading {topic}"))?;
        let key = message.key().map(String::from_utf8_lossy);
        if args
            .job
            .as_deref()
            .is_some_and(|job| key.as_deref() != Some(job))
        {
            continue;
        }
        let mut record = render(args.stream, message.payload());
        record["partition"] = json!(message.partition());
        record["offset"] = json!(message.offset());
        if as_json {
            println!("{record}");
        } else {
            println!("{}", line(args.stream, &record));
        }
        printed += 1;
    }
    Ok(())
}

/// A record as JSON: its fields decoded, or why it could not be.
fn render(stream: Stream, payload: Option<&[u8]>) -> Value {
    let Some(payload) = payload else {
        return json!({"tombstone": true});
    };
    let decoded = match stream {
        Stream::Runs => codec::decode_run_event(payload).map(|e| {
            let facts = e.kind.facts();
            json!({
                "type": e.kind.name(),
                "job_id": e.job_id,
                "run_id": e.run_id,
                "scheduled_for": e.scheduled_for,
                "at": e.at,
                "attempt": e.kind.attempt(),
                "shard": e.shard.map(|s| s.index),
                "detail": facts.summary(),
                "facts": facts,
            })
        }),
        Stream::Alerts => codec::decode_alert(payload).map(|a| {
            json!({
                "kind": a.kind.as_str(),
                "job_id": a.job_id,
                "run_id": a.run_id,
                "worker_id": a.worker_id,
                "pool": a.pool,
                "message": a.message,
                "at": a.at,
            })
        }),
        Stream::Deadletter => codec::decode_dead_letter(payload).map(|d| {
            json!({
                "source_topic": d.source_topic,
                "source_partition": d.source_partition,
                "source_offset": d.source_offset,
                "service": d.service,
                "reason": d.reason,
                "payload_bytes": d.payload.map(|p| p.len()),
                "at": d.at,
            })
        }),
    };
    decoded.unwrap_or_else(|error| json!({"undecodable": error.to_string()}))
}

/// A record in one line of text.
fn line(stream: Stream, record: &Value) -> String {
    let text = |key: &str| match &record[key] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(error) = record["undecodable"].as_str() {
        return format!(
            "undecodable record at {}/{}: {error}",
            text("partition"),
            text("offset")
        );
    }
    match stream {
        Stream::Runs => format!(
            "{}  {}  {:<14} run {} attempt {}  {}",
            text("at"),
            text("job_id"),
            text("type"),
            text("run_id"),
            text("attempt"),
            text("detail")
        ),
        Stream::Alerts => format!("{}  {:<20} {}", text("at"), text("kind"), text("message")),
        Stream::Deadletter => format!(
            "{}  {} from {}/{}@{}: {}",
            text("at"),
            text("service"),
            text("source_topic"),
            text("source_partition"),
            text("source_offset"),
            text("reason")
        ),
    }
}

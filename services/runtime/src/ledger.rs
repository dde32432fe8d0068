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
use crate::kafka::{Delivered, KafkaArgs, ReliableProducer};
use crate::Topics;

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

/// The run ledger as one writer appends to it: the runs topic, the writer named on every record,
/// and a producer that waits out broker outages. Every service appends through it.
#[derive(Clone)]
pub struct Ledger {
    producer: ReliableProducer,
    topic: String,
    writer: &'static str,
}

impl Ledger {
    /// The ledger of `topics` as `writer` (`trigger`, `dispatcher`, `worker`) appends to it.
    pub fn new(producer: ReliableProducer, topics: &Topics, writer: &'static str) -> Self {
        Ledger {
            producer,
            topic: topics.runs(),
            writer,
        }
    }

    /// The runs topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The record of `event` as this writer appends it, for a caller that sends it with others.
    pub fn record(&self, event: &RunEvent) -> Result<LedgerRecord, CodecError> {
        LedgerRecord::of(event, self.writer)
    }

    /// Appends `event`, once the broker has acknowledged it (retried through outages).
    pub async fn append(&self, event: &RunEvent) -> anyhow::Result<Delivered> {
        let record = self.record(event)?;
        Ok(self.producer.append(&self.topic, &record).await?)
    }

    /// Appends `events` and blocks the thread until they (and every record queued before them)
    /// are acknowledged or `timeout` has passed, for code that cannot await (a rebalance
    /// callback). Returns how many were acknowledged; one that does not encode is not sent.
    pub fn append_blocking(&self, events: &[RunEvent], timeout: Duration) -> usize {
        let records: Vec<LedgerRecord> = events
            .iter()
            .filter_map(|event| {
                self.record(event)
                    .map_err(|error| tracing::error!(%error, run_id = %event.run_id, "Encoding a run event failed."))
                    .ok()
            })
            .collect();
        self.producer
            .append_blocking(&self.topic, &records, timeout)
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

/// How many facts a [`LedgerReader`] keeps of one partition's tail before it forgets those
/// that no read waiting asks for.
const TAIL_LIMIT: usize = 20_000;

/// A reader of the runs topic's partitions for one worker, living as long as the worker: one
/// connection, on a thread of its own, so that a read creates no client and never waits on the
/// caller's loop. Reads asked for together are served together (one fetch round for all their
/// partitions), and what a partition's tail says is kept, so that the next read of it (a later
/// batch of redelivered tasks, a recheck) goes on from where the last one ended instead of
/// reading the tail again.
#[derive(Clone)]
pub struct LedgerReader {
    requests: std::sync::mpsc::Sender<ReadRequest>,
}

struct ReadRequest {
    partition: i32,
    from: i64,
    reply: tokio::sync::oneshot::Sender<Result<Attempts, String>>,
}

impl LedgerReader {
    /// Starts the reader's thread. Each read fails if the end it aims for is not reached within
    /// `within`. The thread ends when the last clone of the reader is dropped.
    pub fn start(args: &KafkaArgs, within: Duration) -> anyhow::Result<Self> {
        let topic = args.topics().runs();
        let mut config = args.client_config();
        // Positions are the reader's own: nothing is ever committed for this group.
        config
            .set("group.id", format!("{}-ledger-reader", args.topic_prefix))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = config.create()?;
        let (requests, incoming) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ledger-reader".into())
            .spawn(move || {
                TailCache::default().serve(&consumer, &topic, &incoming, within);
            })?;
        Ok(LedgerReader { requests })
    }

    /// What the tail of `partition` from `from` up to its end (as it is when the read begins)
    /// records of attempts. Only the tail is read, never the whole ledger.
    pub async fn read_attempts(&self, partition: i32, from: i64) -> anyhow::Result<Attempts> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests
            .send(ReadRequest {
                partition,
                from,
                reply,
            })
            .map_err(|_| anyhow::anyhow!("the ledger reader has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the ledger reader has stopped"))?
            .map_err(|error| anyhow::anyhow!(error))
    }
}

/// What one ledger record says of an attempt.
#[derive(Clone, Debug)]
enum Fact {
    Over(AttemptKey),
    StartedBy(AttemptKey, String),
}

/// What a partition's tail says from `from` on, each fact with its offset, read up to `read_to`.
#[derive(Default)]
struct Tail {
    from: i64,
    read_to: i64,
    facts: std::collections::VecDeque<(i64, Fact)>,
}

impl Tail {
    /// What the tail records of attempts from `from` on: an answer costs what the reader asked
    /// for, not all the tail kept.
    fn answer(&self, from: i64) -> Attempts {
        let mut attempts = Attempts {
            read_to: self.read_to,
            ..Attempts::default()
        };
        let first = self.facts.partition_point(|(offset, _)| *offset < from);
        for (_, fact) in self.facts.range(first..) {
            attempts.take(fact.clone());
        }
        attempts
    }

    /// Forgets the facts before `from`.
    fn trim(&mut self, from: i64) {
        while self.facts.front().is_some_and(|(offset, _)| *offset < from) {
            self.facts.pop_front();
        }
        self.from = self.from.max(from);
    }
}

/// Per partition, the tail read last.
#[derive(Default)]
struct TailCache {
    tails: HashMap<i32, Tail>,
}

impl TailCache {
    /// Answers requests until every sender is gone: all the requests waiting are served by one
    /// read of their partitions, each from where its kept tail ends, or from the earliest
    /// position asked for where that lies before the kept tail.
    fn serve(
        &mut self,
        consumer: &BaseConsumer,
        topic: &str,
        incoming: &std::sync::mpsc::Receiver<ReadRequest>,
        within: Duration,
    ) {
        while let Ok(first) = incoming.recv() {
            let requests: Vec<ReadRequest> =
                std::iter::once(first).chain(incoming.try_iter()).collect();
            let mut asked: HashMap<i32, i64> = HashMap::new();
            for request in &requests {
                let earliest = asked.entry(request.partition).or_insert(request.from);
                *earliest = (*earliest).min(request.from);
            }
            // Per partition, where the read starts, and whether the kept tail goes on.
            let plan: HashMap<i32, (i64, bool)> = asked
                .iter()
                .map(|(&partition, &from)| match self.tails.get(&partition) {
                    Some(tail) if from >= tail.from => (partition, (tail.read_to, true)),
                    _ => (partition, (from, false)),
                })
                .collect();
            let starts = plan.iter().map(|(&p, &(start, _))| (p, start)).collect();
            let read = read_tails(consumer, topic, &starts, within).map(|news| {
                for (partition, (read_to, facts)) in news {
                    let tail = self.tails.entry(partition).or_default();
                    if !plan[&partition].1 {
                        *tail = Tail {
                            from: asked[&partition],
                            ..Tail::default()
                        };
                    }
                    tail.facts.extend(facts);
                    tail.read_to = tail.read_to.max(read_to);
                    if tail.facts.len() > TAIL_LIMIT {
                        tail.trim(asked[&partition]);
                    }
                }
            });
            for request in requests {
                let answer = match &read {
                    Ok(()) => Ok(self
                        .tails
                        .get(&request.partition)
                        .map(|tail| tail.answer(request.from))
                        .unwrap_or_default()),
                    Err(error) => Err(error.clone()),
                };
                let _ = request.reply.send(answer);
            }
        }
    }
}

/// The end read to, and the facts read with their offsets, of one partition's tail.
type TailRead = (i64, Vec<(i64, Fact)>);

/// Reads each partition of `from` from its position up to its end as it is when the read begins,
/// all at once, and returns what each tail records of attempts.
fn read_tails(
    consumer: &BaseConsumer,
    topic: &str,
    from: &HashMap<i32, i64>,
    within: Duration,
) -> Result<HashMap<i32, TailRead>, String> {
    let deadline = Instant::now() + within;
    let mut tails: HashMap<i32, TailRead> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    let mut left: HashMap<i32, (i64, i64)> = HashMap::new();
    for (&partition, &start) in from {
        let (_, end) = consumer
            .fetch_watermarks(topic, partition, within)
            .map_err(|error| format!("reading the end of {topic}/{partition}: {error}"))?;
        tails.insert(partition, (start.max(end), Vec::new()));
        if start < end {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(|error| error.to_string())?;
            left.insert(partition, (start, end));
        }
    }
    if left.is_empty() {
        return Ok(tails);
    }
    consumer
        .assign(&assignment)
        .map_err(|error| error.to_string())?;
    while !left.is_empty() {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            let _ = consumer.unassign();
            return Err(format!(
                "reading {topic} partitions {:?} to their ends took longer than {within:?}",
                left.keys().collect::<Vec<_>>()
            ));
        }
        let Some(read) = consumer.poll(wait.min(Duration::from_millis(500))) else {
            continue;
        };
        let message = read.map_err(|error| error.to_string())?;
        let partition = message.partition();
        // A record of an earlier assignment still in the queue is not this read's.
        let Some((next, end)) = left.get_mut(&partition) else {
            continue;
        };
        if message.offset() < *next {
            continue;
        }
        *next = message.offset() + 1;
        if *next >= *end {
            left.remove(&partition);
        }
        // A record that does not decode is the aggregator's to dead-letter.
        let Some(Ok(event)) = message.payload().map(codec::decode_run_event) else {
            continue;
        };
        if let (Some((_, facts)), Some(fact)) = (tails.get_mut(&partition), Fact::of(event)) {
            facts.push((message.offset(), fact));
        }
    }
    let _ = consumer.unassign();
    Ok(tails)
}

impl Fact {
    /// What a ledger event says of an attempt, if anything.
    fn of(event: RunEvent) -> Option<Fact> {
        use RunEventKind::*;
        let shard = event.shard.map(|s| s.index);
        match event.kind {
            RunSucceeded { attempt, .. }
            | RunFailed { attempt, .. }
            | RunTimedOut { attempt, .. }
            | RunCancelled { attempt }
            | RunLost { attempt } => Some(Fact::Over((event.run_id, attempt, shard))),
            RunStarted {
                attempt, worker_id, ..
            } => Some(Fact::StartedBy((event.run_id, attempt, shard), worker_id)),
            _ => None,
        }
    }
}

impl Attempts {
    fn take(&mut self, fact: Fact) {
        match fact {
            Fact::Over(key) => {
                self.over.insert(key);
            }
            Fact::StartedBy(key, worker) => {
                self.started_by.insert(key, worker);
            }
        }
    }
}

//! The benchmark harness: the service binaries on a broker of the harness's own, measured side by
//! side with that broker's raw capacity in the same run.
//!
//! Five scenarios, each on a fresh topic prefix:
//! 1. ceiling: raw produce→consume messages/s on a topic set up like the run ledger;
//! 2. throughput: `RunScheduled` appended at rising rates, until the pipeline (dispatcher, worker,
//!    aggregator) no longer keeps up; runs/s to a recorded `RunSucceeded` for no-op tasks;
//! 3. precision: one-off jobs due at a steady rate; lateness to `RunScheduled` and to task start;
//! 4. scale: a trigger rebuilding from a jobs topic holding a million definitions: time, peak RSS,
//!    and the lateness of the fires that follow;
//! 5. recovery: each service killed with `kill -9` under a steady load of jobs and restarted;
//!    time until it has caught up.
//!
//! Figures are written, never asserted: `scripts/bench.sh` runs the full form, the test suite a
//! smoke form so that the harness cannot rot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use kairos_core::job::JobSpec;
use kairos_core::run::{RunEvent, RunEventKind, RunId, TriggerKind};
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::codec;
use kairos_runtime::kafka::{broadcast_consumer, partition_counts, Producer, TopicAdmin};
use kairos_runtime::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::Offset;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Broker, Instance};
use crate::{free_addr, Stack};

/// The task type of the benchmark's jobs, served by `kairos-noop-worker`.
pub const NOOP_HANDLER: &str = "noop";

/// How often the harness looks again at what it waits for (the ledger it reads, a service's
/// health): neither has an event to await. Every such wait also has a deadline.
const POLL: Duration = Duration::from_millis(100);

/// How often a paced producer looks at the clock to send what has come due.
const PACE_TICK: Duration = Duration::from_millis(10);

/// Records in flight at once when the harness produces job definitions.
const PRODUCE_WINDOW: usize = 10_000;

/// A scenario of the harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Ceiling,
    Throughput,
    Precision,
    Scale,
    Recovery,
}

/// What one benchmark run measures, and how much of it.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub scenarios: Vec<Scenario>,
    /// The broker binary (Nisshi).
    pub nisshi: PathBuf,
    pub partitions: i32,
    /// Messages produced and consumed to measure the broker's ceiling.
    pub ceiling_messages: usize,
    /// Jobs whose runs the throughput scenario schedules.
    pub throughput_jobs: usize,
    /// Offered loads, in runs/s, tried in turn until the pipeline saturates.
    pub throughput_rates: Vec<u32>,
    /// How long each offered load lasts.
    pub throughput_step: Duration,
    /// Fires per second of the precision scenario, each rate measured in turn...
    pub precision_rates: Vec<u32>,
    /// ...for this long.
    pub precision_span: Duration,
    /// Job definitions on the jobs topic for the scale scenario.
    pub scale_jobs: usize,
    /// Jobs of the recovery scenario.
    pub recovery_jobs: usize,
    /// Whether this is the test suite's smoke form (figures mean nothing).
    pub smoke: bool,
}

impl BenchConfig {
    /// The full form, with the sizes the issue's goals are stated at.
    pub fn full(nisshi: PathBuf) -> Self {
        BenchConfig {
            scenarios: vec![
                Scenario::Ceiling,
                Scenario::Throughput,
                Scenario::Precision,
                Scenario::Recovery,
                Scenario::Scale,
            ],
            nisshi,
            partitions: kairos_runtime::kafka::TopicSet::shipped().partitions,
            ceiling_messages: 200_000,
            throughput_jobs: 1000,
            throughput_rates: vec![100, 200, 400, 800, 1600, 3200],
            throughput_step: Duration::from_secs(15),
            precision_rates: vec![1000, 200],
            precision_span: Duration::from_secs(10),
            scale_jobs: 1_000_000,
            recovery_jobs: 100_000,
            smoke: false,
        }
    }

    /// A form small enough for the test suite: every scenario, a few seconds each.
    pub fn smoke(nisshi: PathBuf) -> Self {
        BenchConfig {
            ceiling_messages: 2000,
            throughput_jobs: 20,
            throughput_rates: vec![20, 40],
            throughput_step: Duration::from_secs(2),
            precision_rates: vec![50],
            precision_span: Duration::from_secs(2),
            scale_jobs: 2000,
            recovery_jobs: 200,
            smoke: true,
            ..BenchConfig::full(nisshi)
        }
    }
}

/// Every figure of one run, with what it ran on.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub started_at: Timestamp,
    pub machine: Machine,
    pub commit: String,
    pub broker: String,
    /// The build profile of the service binaries.
    pub binaries: String,
    pub partitions: i32,
    pub smoke: bool,
    pub elapsed_secs: u64,
    pub ceiling: Option<Ceiling>,
    pub throughput: Option<Throughput>,
    pub precision: Vec<Precision>,
    pub scale: Option<Scale>,
    pub recovery: Option<Recovery>,
    /// The peer measured in the same run (`scripts/bench/peer.sh`: BullMQ on Redis), as its JSON.
    pub peer: Option<serde_json::Value>,
    /// What went wrong: a scenario that could not run, a service that did not stop cleanly.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = proc_field(&meminfo, "MemTotal:").unwrap_or(0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: (memory_kib as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// A `Key:   123 kB` line of a /proc file, as a number.
fn proc_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Percentiles of a set of durations, in milliseconds (nearest rank).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Distribution {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Distribution {
    pub fn of(mut samples_ms: Vec<f64>) -> Distribution {
        if samples_ms.is_empty() {
            return Distribution::default();
        }
        samples_ms.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let index = ((q * samples_ms.len() as f64).ceil() as usize).clamp(1, samples_ms.len());
            samples_ms[index - 1]
        };
        Distribution {
            count: samples_ms.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: samples_ms[samples_ms.len() - 1],
        }
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} / p99 {:.1} / max {:.1} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

fn millis_between(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Watching the ledger.

/// A ledger record as the harness saw it.
#[derive(Clone, Debug)]
struct Tapped {
    event: RunEvent,
    /// The record's timestamp: when the producing service handed it to its producer.
    produced: Timestamp,
    /// When the harness's reader received it: the latest the append can have happened.
    seen: Timestamp,
}

/// Reads the run ledger of a stack from its beginning, in the background, for as long as it lives.
struct Tap {
    records: Arc<Mutex<Vec<Tapped>>>,
    stop: CancellationToken,
}

impl Tap {
    /// Reads the stack's run ledger.
    fn start(stack: &Stack) -> anyhow::Result<Tap> {
        Tap::start_on(stack, &stack.kafka.topics().runs())
    }

    /// Reads `topic`, whose records are ledger events.
    fn start_on(stack: &Stack, topic: &str) -> anyhow::Result<Tap> {
        let consumer =
            broadcast_consumer(&stack.kafka, topic, stack.partitions, Offset::Beginning)?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (sink, stopped) = (records.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stopped.cancelled() => return,
                    message = consumer.recv() => message,
                };
                let seen = chrono::Utc::now();
                let Ok(message) = message else { continue };
                let Some(Ok(event)) = message.payload().map(codec::decode_run_event) else {
                    continue;
                };
                let produced = message
                    .timestamp()
                    .to_millis()
                    .and_then(kairos_core::from_millis)
                    .unwrap_or(seen);
                let tapped = Tapped {
                    event,
                    produced,
                    seen,
                };
                sink.lock().expect("tap lock").push(tapped);
            }
        });
        Ok(Tap { records, stop })
    }

    /// How many records have been read so far: where a later `watch` can start.
    fn position(&self) -> usize {
        self.records.lock().expect("tap lock").len()
    }

    /// Hands the records read from `from` on to `take`, batch by batch, until it says it has seen
    /// enough or `deadline` passes.
    async fn watch(&self, from: usize, deadline: Instant, mut take: impl FnMut(&[Tapped]) -> bool) {
        let mut cursor = from;
        while Instant::now() < deadline {
            let records: Vec<Tapped> = {
                let records = self.records.lock().expect("tap lock");
                let new = records[cursor.min(records.len())..].to_vec();
                cursor = records.len();
                new
            };
            if take(&records) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Records appended so far to every topic of a stack: the messages the pipeline has moved.
async fn appended(kafka: &KafkaArgs) -> anyhow::Result<i64> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let prefix = format!("{}.", kafka.topic_prefix);
        let consumer: BaseConsumer = kafka.client_config().create()?;
        let mut total = 0;
        for (topic, partitions) in partition_counts(&kafka)? {
            if !topic.starts_with(&prefix) {
                continue;
            }
            for partition in 0..partitions {
                let (low, high) =
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                total += high - low;
            }
        }
        Ok(total)
    })
    .await?
}

// ---------------------------------------------------------------------------------------------
// Jobs and runs the harness produces.

/// A one-off job at `at` whose task does nothing, so that what is measured is Kairos's own cost.
fn noop_job(id: String, at: Timestamp) -> JobDefinition {
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "id": id,
        "schedule": {"at": at},
        "task": {"handler": {"name": NOOP_HANDLER}},
        "timeout": "60s",
    }))
    .expect("a benchmark job spec");
    spec.validate().expect("benchmark job is valid")
}

/// `count` one-off no-op jobs named `<prefix>-<n>`, the n-th due at `first + n * spacing`.
fn spread_jobs(
    prefix: &str,
    count: usize,
    first: Timestamp,
    spacing: Duration,
) -> impl Iterator<Item = JobDefinition> + '_ {
    let spacing = chrono::Duration::from_std(spacing).unwrap_or_default();
    (0..count).map(move |n| noop_job(format!("{prefix}-{n:07}"), first + spacing * n as i32))
}

/// Produces keyed records with up to [`PRODUCE_WINDOW`] in flight; returns when all are acknowledged.
async fn produce_all(
    kafka: &KafkaArgs,
    topic: &str,
    records: impl Iterator<Item = (String, Vec<u8>)>,
) -> anyhow::Result<usize> {
    let producer = kafka.producer()?;
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    for (key, payload) in records {
        if in_flight.len() >= PRODUCE_WINDOW {
            in_flight.next().await.transpose()?;
        }
        let (producer, topic) = (producer.clone(), topic.to_string());
        in_flight.push(async move { producer.send(&topic, &key, Some(&payload)).await });
        sent += 1;
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    Ok(sent)
}

/// Produces `count` records at `rate` a second, each made by `make(n)` when its time comes, with
/// no wait for one acknowledgement before the next send; returns when all are acknowledged.
async fn produce_paced(
    producer: &Producer,
    topic: &str,
    rate: u32,
    count: usize,
    mut make: impl FnMut(usize) -> anyhow::Result<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let mut in_flight = FuturesUnordered::new();
    let rate = rate.max(1);
    let mut ticks = tokio::time::interval(PACE_TICK.min(Duration::from_secs(1) / rate));
    let began = Instant::now();
    let mut sent = 0;
    while sent < count {
        ticks.tick().await;
        let due = ((began.elapsed().as_secs_f64() * f64::from(rate)) as usize).min(count);
        while sent < due {
            let (key, payload) = make(sent)?;
            let (producer, topic) = (producer.clone(), topic.to_string());
            in_flight.push(async move { producer.send(&topic, &key, Some(&payload)).await });
            sent += 1;
        }
        while let Some(Some(result)) = in_flight.next().now_or_never() {
            result?;
        }
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    Ok(())
}

async fn put_jobs(
    stack: &Stack,
    jobs: impl Iterator<Item = JobDefinition>,
) -> anyhow::Result<usize> {
    let records = jobs.map(|job| {
        let bytes = codec::encode_job(&job).expect("encoding a benchmark job");
        (job.id.to_string(), bytes)
    });
    produce_all(&stack.kafka, &stack.kafka.topics().jobs(), records).await
}

/// The service instances of a full pipeline; `trigger` only when the scenario fires by schedule.
fn pipeline(stack: &Stack, trigger: bool) -> Vec<Instance> {
    let mut fleet = vec![];
    if trigger {
        fleet.push(Instance::new(stack, "trigger", "kairos-trigger", &[], true));
    }
    let http = format!("--http-addr={}", free_addr());
    fleet.extend([
        Instance::new(stack, "dispatcher", "kairos-dispatcher", &[], true),
        Instance::new(
            stack,
            "worker",
            "kairos-noop-worker",
            &["--worker-id=bench-worker", "--max-concurrent=64"],
            false,
        ),
        Instance::new(stack, "aggregator", "kairos-aggregator", &[&http], true),
    ]);
    fleet
}

async fn start_all(stack: &Stack, fleet: &mut [Instance]) {
    for instance in fleet.iter_mut() {
        instance.start(stack);
    }
    for instance in fleet.iter() {
        instance.wait_caught_up(Duration::from_secs(300)).await;
    }
}

/// Stops every instance; one that does not stop cleanly is a problem of the run, noted in its
/// report, not a reason to lose the figures measured.
async fn stop_all(fleet: &mut [Instance], problems: &mut Vec<String>) {
    for instance in fleet.iter_mut() {
        if let Err(error) = instance.stop().await {
            problems.push(format!("{error:#}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The broker's ceiling.

#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    pub messages: usize,
    pub payload_bytes: usize,
    /// From the first send until every record was acknowledged.
    pub produce_per_sec: f64,
    /// From the first send until a consumer had received every record.
    pub messages_per_sec: f64,
    /// Single records sent at this rate (per second)...
    pub latency_rate: u32,
    /// ...from the send to a consumer reading them.
    pub latency: Distribution,
}

/// Raw rdkafka produce→consume on a topic configured like the run ledger, with Kairos's producer
/// settings and records the size of a ledger event.
async fn ceiling(broker: &str, config: &BenchConfig) -> anyhow::Result<Ceiling> {
    let stack = Stack::on(broker.to_string(), config.partitions).await;
    let topic = stack.kafka.topics().name("bench-ceiling");
    let runs_config = kairos_runtime::kafka::TopicSet::shipped().config_of("runs");
    TopicAdmin::new(&stack.kafka)?
        .ensure_topic(&topic, config.partitions, &runs_config)
        .await?;
    let payload_bytes = ledger_record(&manual_run(&sample_job(0), 0))?.1.len();

    let total = config.ceiling_messages;
    let consumer = broadcast_consumer(&stack.kafka, &topic, config.partitions, Offset::Beginning)?;
    let began = Instant::now();
    let received = tokio::spawn(async move {
        let mut count = 0;
        while count < total {
            if consumer.recv().await.is_ok() {
                count += 1;
            }
        }
        began.elapsed()
    });
    let records =
        (0..total).map(|n| ledger_record(&manual_run(&sample_job(n), n)).expect("encoding"));
    produce_all(&stack.kafka, &topic, records).await?;
    let produced = began.elapsed();
    let consumed = tokio::time::timeout(Duration::from_secs(600), received).await??;
    Ok(Ceiling {
        messages: total,
        payload_bytes,
        produce_per_sec: total as f64 / produced.as_secs_f64(),
        messages_per_sec: total as f64 / consumed.as_secs_f64(),
        latency_rate: LATENCY_PROBE_RATE,
        latency: broker_latency(&stack, config).await?,
    })
}

/// Records a second sent one by one to measure the broker's own produce→consume latency.
const LATENCY_PROBE_RATE: u32 = 200;

/// The broker's produce→consume latency of single records at [`LATENCY_PROBE_RATE`]: the floor
/// under any lateness Kairos can show on it.
async fn broker_latency(stack: &Stack, config: &BenchConfig) -> anyhow::Result<Distribution> {
    let topic = stack.kafka.topics().name("bench-latency");
    TopicAdmin::new(&stack.kafka)?
        .ensure_topic(&topic, config.partitions, &BTreeMap::new())
        .await?;
    let tap = Tap::start_on(stack, &topic)?;
    let count = (LATENCY_PROBE_RATE * 5) as usize;
    // One record first, so that the reader's connection and first fetch are not measured.
    let warm_up = manual_run(&sample_job(0), 0);
    let (key, payload) = ledger_record(&warm_up)?;
    let producer = stack.kafka.producer()?;
    producer.send(&topic, &key, Some(&payload)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    tap.watch(0, deadline, |records| !records.is_empty()).await;
    anyhow::ensure!(tap.position() > 0, "the warm-up record was not read back");
    let from = tap.position();
    produce_paced(&producer, &topic, LATENCY_PROBE_RATE, count, |n| {
        ledger_record(&manual_run(&sample_job(n), n + 1))
    })
    .await?;
    let mut samples = Vec::with_capacity(count);
    tap.watch(from, Instant::now() + Duration::from_secs(30), |records| {
        samples.extend(records.iter().map(|r| millis_between(r.event.at, r.seen)));
        samples.len() >= count
    })
    .await;
    Ok(Distribution::of(samples))
}

/// A manual `RunScheduled` of `job`, decided now, for a slot of its own (the `n`-th), so that
/// every run id is new. The kind of record the ledger carries most.
fn manual_run(job: &kairos_core::JobId, n: usize) -> RunEvent {
    let slot = kairos_core::from_millis(1_800_000_000_000 + n as i64).expect("a timestamp");
    RunEvent {
        run_id: RunId::derive(job, slot, TriggerKind::Manual),
        job_id: job.clone(),
        scheduled_for: slot,
        at: chrono::Utc::now(),
        kind: RunEventKind::RunScheduled {
            trigger: TriggerKind::Manual,
            definition_offset: 0,
        },
        shard: None,
    }
}

/// One of a thousand job ids, for records that need a realistic spread of keys.
fn sample_job(n: usize) -> kairos_core::JobId {
    kairos_core::JobId::parse(&format!("job-{:04}", n % 1000)).expect("a valid job id")
}

/// A record of a ledger event, keyed by its job.
fn ledger_record(event: &RunEvent) -> anyhow::Result<(String, Vec<u8>)> {
    Ok((event.job_id.to_string(), codec::encode_run_event(event)?))
}

// ---------------------------------------------------------------------------------------------
// 2. Throughput.

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub jobs: usize,
    pub levels: Vec<Level>,
    /// The best completed rate of any level.
    pub peak_runs_per_sec: f64,
    pub peak_messages_per_sec: f64,
    /// Pipeline messages/s at the peak over the broker's ceiling in this run.
    pub peak_ratio_to_ceiling: Option<f64>,
}

/// One offered load.
#[derive(Clone, Debug, Serialize)]
pub struct Level {
    pub offered_per_sec: u32,
    pub runs: usize,
    pub completed: usize,
    /// From the first `RunScheduled` sent until the last `RunSucceeded` was read.
    pub elapsed_secs: f64,
    pub runs_per_sec: f64,
    /// Records appended to the stack's topics (ledger, tasks, heartbeats, ...) per second.
    pub messages_per_sec: f64,
    /// From `RunScheduled` to its `RunSucceeded` read back from the ledger.
    pub latency: Distribution,
    pub saturated: bool,
    /// Records appended per completed run (the harness's own `RunScheduled` included).
    pub records_per_run: f64,
    /// CPU time (user + system) per completed run, in ms, by process: each service and the
    /// broker, until the aggregator has counted every run.
    pub cpu_ms_per_run: BTreeMap<String, f64>,
    /// From the last `RunSucceeded` read until the aggregator had counted every run of the level
    /// (`None`: not within the wait): how far its view lags behind the ledger.
    pub aggregator_behind_secs: Option<f64>,
}

/// CPU time (user + system) a process has used so far, in ms, from `/proc/<pid>/stat`.
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime are fields 14 and 15; counted from after the command name, which is in
    // parentheses and may hold spaces, they are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Linux reports them in USER_HZ, 100 on every architecture Kairos builds for.
    Some(ticks * 10.0)
}

/// The CPU time of named processes, read at the start of a measurement.
struct CpuMeter(Vec<(String, u32, f64)>);

impl CpuMeter {
    fn start(processes: &[(String, u32)]) -> CpuMeter {
        CpuMeter(
            processes
                .iter()
                .filter_map(|(name, pid)| Some((name.clone(), *pid, cpu_ms(*pid)?)))
                .collect(),
        )
    }

    /// CPU ms each process used since the start, per `runs`.
    fn per_run(&self, runs: usize) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter_map(|(name, pid, before)| {
                let used = cpu_ms(*pid)? - before;
                Some((name.clone(), used / runs.max(1) as f64))
            })
            .collect()
    }
}

async fn throughput(
    broker: &Broker,
    config: &BenchConfig,
    problems: &mut Vec<String>,
    ceiling: Option<&Ceiling>,
) -> anyhow::Result<Throughput> {
    let stack = Stack::on(broker.address(), config.partitions).await;
    let far = kairos_core::from_millis(4_102_444_800_000).expect("2100-01-01");
    let jobs: Vec<JobDefinition> =
        spread_jobs("tp", config.throughput_jobs, far, Duration::ZERO).collect();
    put_jobs(&stack, jobs.iter().cloned()).await?;
    let mut fleet = pipeline(&stack, false);
    start_all(&stack, &mut fleet).await;
    let tap = Tap::start(&stack)?;
    let processes: Vec<(String, u32)> = fleet
        .iter()
        .filter_map(|i| Some((i.name.clone(), i.pid()?)))
        .chain(broker.pid().map(|pid| ("broker".to_string(), pid)))
        .collect();
    let mut levels = vec![];
    let mut sequence = 0;
    let mut succeeded = 0;
    for &rate in &config.throughput_rates {
        let cpu = CpuMeter::start(&processes);
        let mut level = offer(
            &stack,
            &tap,
            &jobs,
            rate,
            config.throughput_step,
            &mut sequence,
        )
        .await?;
        succeeded += level.completed;
        if let Some(aggregator) = fleet.iter().find(|i| i.name == "aggregator") {
            level.aggregator_behind_secs =
                aggregator_counted(aggregator, succeeded, Duration::from_secs(300)).await;
        }
        level.cpu_ms_per_run = cpu.per_run(level.completed);
        tracing::info!(?level, "Throughput level done.");
        let saturated = level.saturated;
        levels.push(level);
        if saturated {
            break;
        }
    }
    stop_all(&mut fleet, problems).await;
    let peak = levels
        .iter()
        .max_by(|a, b| a.runs_per_sec.total_cmp(&b.runs_per_sec));
    let peak_messages_per_sec = peak.map_or(0.0, |l| l.messages_per_sec);
    Ok(Throughput {
        jobs: jobs.len(),
        peak_runs_per_sec: peak.map_or(0.0, |l| l.runs_per_sec),
        peak_messages_per_sec,
        peak_ratio_to_ceiling: ceiling.map(|c| peak_messages_per_sec / c.messages_per_sec),
        levels,
    })
}

/// Appends `RunScheduled` at `rate` for `step`, spread over the jobs, and waits (bounded) until
/// every run has succeeded.
async fn offer(
    stack: &Stack,
    tap: &Tap,
    jobs: &[JobDefinition],
    rate: u32,
    step: Duration,
    sequence: &mut usize,
) -> anyhow::Result<Level> {
    let total = (f64::from(rate) * step.as_secs_f64()).round() as usize;
    let from = tap.position();
    let appended_before = appended(&stack.kafka).await?;
    let mut scheduled_at: HashMap<RunId, Timestamp> = HashMap::with_capacity(total);
    let began = Instant::now();
    let topic = stack.kafka.topics().runs();
    produce_paced(&stack.kafka.producer()?, &topic, rate, total, |_| {
        let event = manual_run(&jobs[*sequence % jobs.len()].id, *sequence);
        *sequence += 1;
        scheduled_at.insert(event.run_id, event.at);
        ledger_record(&event)
    })
    .await?;

    let give_up = Instant::now() + step * 2 + Duration::from_secs(30);
    let mut latencies = Vec::with_capacity(total);
    let mut last_done = began;
    tap.watch(from, give_up, |records| {
        for record in records {
            if let RunEventKind::RunSucceeded { .. } = record.event.kind {
                if let Some(at) = scheduled_at.remove(&record.event.run_id) {
                    latencies.push(millis_between(at, record.seen));
                    last_done = Instant::now();
                }
            }
        }
        latencies.len() >= total
    })
    .await;
    let elapsed = last_done.duration_since(began).as_secs_f64().max(1e-3);
    let messages = appended(&stack.kafka).await? - appended_before;
    let completed = latencies.len();
    let runs_per_sec = completed as f64 / elapsed;
    Ok(Level {
        offered_per_sec: rate,
        runs: total,
        completed,
        elapsed_secs: elapsed,
        runs_per_sec,
        messages_per_sec: messages as f64 / elapsed,
        latency: Distribution::of(latencies),
        saturated: completed < total || runs_per_sec < 0.9 * f64::from(rate),
        records_per_run: messages as f64 / completed.max(1) as f64,
        cpu_ms_per_run: BTreeMap::new(),
        aggregator_behind_secs: None,
    })
}

/// Waits (at most `wait`) until the aggregator has counted `succeeded` runs in all; the seconds
/// it took.
async fn aggregator_counted(
    aggregator: &Instance,
    succeeded: usize,
    wait: Duration,
) -> Option<f64> {
    let began = Instant::now();
    let series = r#"kairos_aggregator_runs_total{outcome="succeeded"}"#;
    crate::poll_until(wait, || async {
        let metrics = crate::scrape(aggregator.metrics_addr).await;
        let counted = crate::metric_value(&metrics, series).unwrap_or(0.0);
        (counted >= succeeded as f64).then(|| began.elapsed().as_secs_f64())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. Firing precision.

#[derive(Clone, Debug, Serialize)]
pub struct Precision {
    pub jobs: usize,
    pub fires_per_sec: u32,
    /// Slot to the `RunScheduled` record's timestamp (handed to the producer).
    pub to_scheduled_produced: Distribution,
    /// Slot to the `RunScheduled` being read back from the broker (appended by then).
    pub to_scheduled_visible: Distribution,
    /// Slot to `RunStarted` on the worker (the task's start).
    pub to_task_start: Distribution,
    /// Slots that were not fired, or not started, by the end of the wait.
    pub not_fired: usize,
    pub not_started: usize,
}

/// Fire-time lateness of `(scheduled, started)` records against their slots.
struct Lateness {
    produced: Vec<f64>,
    visible: Vec<f64>,
    /// Per run, the start its outcome records, or else its `RunStarted` (from workers that
    /// report every start, as before `--report-start-after`).
    started: HashMap<RunId, f64>,
}

impl Lateness {
    fn new() -> Self {
        Lateness {
            produced: vec![],
            visible: vec![],
            started: HashMap::new(),
        }
    }

    /// Counts the records whose slots are in `window`.
    fn add(&mut self, records: &[Tapped], window: (Timestamp, Timestamp)) {
        for record in records {
            let slot = record.event.scheduled_for;
            if slot < window.0 || slot > window.1 {
                continue;
            }
            match record.event.kind {
                RunEventKind::RunScheduled { .. } => {
                    self.produced.push(millis_between(slot, record.produced));
                    self.visible.push(millis_between(slot, record.seen));
                }
                RunEventKind::RunStarted { attempt: 1, .. } if record.event.shard.is_none() => {
                    let began = millis_between(slot, record.event.at);
                    self.started.entry(record.event.run_id).or_insert(began);
                }
                // A short task reports no `RunStarted`; its outcome records when it began.
                RunEventKind::RunSucceeded {
                    attempt: 1,
                    ref output,
                    ..
                }
                | RunEventKind::RunFailed {
                    attempt: 1,
                    ref output,
                    ..
                } if record.event.shard.is_none() => {
                    if let Some(began) = output.started_at {
                        let began = millis_between(slot, began);
                        self.started.insert(record.event.run_id, began);
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads the ledger from its start until `enough` says so, or a minute after the last slot
    /// of `window`, counting the fires of the window's slots.
    async fn watch(
        tap: &Tap,
        window: (Timestamp, Timestamp),
        enough: impl Fn(&Lateness) -> bool,
    ) -> Lateness {
        let mut lateness = Lateness::new();
        let until_last = (window.1 - chrono::Utc::now()).to_std().unwrap_or_default();
        let deadline = Instant::now() + until_last + Duration::from_secs(60);
        tap.watch(0, deadline, |records| {
            lateness.add(records, window);
            enough(&lateness)
        })
        .await;
        lateness
    }
}

async fn precision(
    broker: &str,
    config: &BenchConfig,
    rate: u32,
    problems: &mut Vec<String>,
) -> anyhow::Result<Precision> {
    let stack = Stack::on(broker.to_string(), config.partitions).await;
    let mut fleet = pipeline(&stack, true);
    start_all(&stack, &mut fleet).await;
    let tap = Tap::start(&stack)?;
    let rate = rate.max(1);
    let count = (f64::from(rate) * config.precision_span.as_secs_f64()) as usize;
    let spacing = Duration::from_secs(1) / rate;
    let lead = Duration::from_secs(5) + Duration::from_micros(500) * count as u32;
    let first = whole_millis(chrono::Utc::now() + chrono::Duration::from_std(lead)?);
    let last = first + chrono::Duration::from_std(spacing * count.saturating_sub(1) as u32)?;
    put_jobs(&stack, spread_jobs("fire", count, first, spacing)).await?;
    anyhow::ensure!(
        chrono::Utc::now() < first,
        "putting {count} jobs took until after the first was due"
    );
    let lateness = Lateness::watch(&tap, (first, last), |l| {
        l.visible.len() >= count && l.started.len() >= count
    })
    .await;
    stop_all(&mut fleet, problems).await;
    Ok(Precision {
        jobs: count,
        fires_per_sec: rate,
        not_fired: count.saturating_sub(lateness.visible.len()),
        not_started: count.saturating_sub(lateness.started.len()),
        to_scheduled_produced: Distribution::of(lateness.produced),
        to_scheduled_visible: Distribution::of(lateness.visible),
        to_task_start: Distribution::of(lateness.started.into_values().collect()),
    })
}

/// A timestamp as the ledger carries it (milliseconds), so that slots compare equal.
fn whole_millis(t: Timestamp) -> Timestamp {
    kairos_core::from_millis(t.timestamp_millis()).unwrap_or(t)
}

// ---------------------------------------------------------------------------------------------
// 4. Scale: a trigger rebuilding from a million definitions.

#[derive(Clone, Debug, Serialize)]
pub struct Scale {
    pub jobs: usize,
    /// Producing the definitions onto the jobs topic.
    pub produce_secs: f64,
    /// From the trigger's start on an empty store until it has caught up.
    pub rebuild_secs: f64,
    pub peak_rss_mib: f64,
    pub store_mib: f64,
    /// Fires per second after the rebuild.
    pub fires_per_sec: f64,
    /// How long before the first slot the trigger had caught up (negative: after it).
    pub caught_up_before_first_slot_secs: f64,
    pub to_scheduled_produced: Distribution,
    pub to_scheduled_visible: Distribution,
    /// Slots of the watched window not fired by the end of the wait.
    pub not_fired: usize,
}

/// Slots of the scale scenario's jobs: a million over an hour.
const SCALE_SPACING: Duration = Duration::from_micros(3600);
/// How long the fires after the rebuild are watched.
const SCALE_WATCH: Duration = Duration::from_secs(20);

async fn scale(
    broker: &str,
    config: &BenchConfig,
    problems: &mut Vec<String>,
) -> anyhow::Result<Scale> {
    let stack = Stack::on(broker.to_string(), config.partitions).await;
    let count = config.scale_jobs;
    // Long enough to produce the definitions and rebuild before the first comes due.
    let lead = Duration::from_secs(5) + Duration::from_micros(200) * count as u32;
    let first = whole_millis(chrono::Utc::now() + chrono::Duration::from_std(lead)?);
    let began = Instant::now();
    put_jobs(&stack, spread_jobs("scale", count, first, SCALE_SPACING)).await?;
    let produce_secs = began.elapsed().as_secs_f64();

    let tap = Tap::start(&stack)?;
    let mut trigger = Instance::new(&stack, "trigger", "kairos-trigger", &[], true);
    trigger.start(&stack);
    let started = Instant::now();
    let pid = trigger
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the trigger did not start"))?;
    while !trigger.caught_up().await {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the trigger did not rebuild within 30 minutes"
        );
        tokio::time::sleep(POLL).await;
    }
    let rebuild_secs = started.elapsed().as_secs_f64();
    let caught_up_at = chrono::Utc::now();

    let watch = SCALE_WATCH.min(SCALE_SPACING * count as u32);
    let last = first + chrono::Duration::from_std(watch)?;
    let expected = spread_count(first, last, SCALE_SPACING, count);
    let lateness = Lateness::watch(&tap, (first, last), |l| l.visible.len() >= expected).await;
    let peak_rss_mib = peak_rss_kib(pid) as f64 / 1024.0;
    stop_all(std::slice::from_mut(&mut trigger), problems).await;
    let store_mib = trigger.data_dir.as_deref().map_or(0, dir_bytes) as f64 / (1024.0 * 1024.0);
    Ok(Scale {
        jobs: count,
        produce_secs,
        rebuild_secs,
        peak_rss_mib,
        store_mib,
        fires_per_sec: 1.0 / SCALE_SPACING.as_secs_f64(),
        caught_up_before_first_slot_secs: millis_between(caught_up_at, first) / 1000.0,
        not_fired: expected.saturating_sub(lateness.visible.len()),
        to_scheduled_produced: Distribution::of(lateness.produced),
        to_scheduled_visible: Distribution::of(lateness.visible),
    })
}

/// How many of `count` slots spaced `spacing` from `first` fall at or before `last`.
fn spread_count(first: Timestamp, last: Timestamp, spacing: Duration, count: usize) -> usize {
    let span = (last - first).to_std().unwrap_or_default();
    ((span.as_nanos() / spacing.as_nanos().max(1)) as usize + 1).min(count)
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| proc_field(&status, "VmHWM:"))
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// 5. Recovery.

#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    pub jobs: usize,
    /// Until the whole pipeline had first caught up, definitions already on the topic.
    pub first_start_secs: f64,
    /// Per service: from its restart after `kill -9` until it has caught up.
    pub restart_to_caught_up_secs: BTreeMap<String, f64>,
}

async fn recovery(
    broker: &str,
    config: &BenchConfig,
    problems: &mut Vec<String>,
) -> anyhow::Result<Recovery> {
    let stack = Stack::on(broker.to_string(), config.partitions).await;
    let count = config.recovery_jobs;
    // The jobs fire over an hour, starting once the pipeline is up, so that each service is
    // killed while runs flow through it.
    let spacing = Duration::from_secs(3600) / count.max(1) as u32;
    let lead = Duration::from_secs(10) + Duration::from_micros(300) * count as u32;
    let first = whole_millis(chrono::Utc::now() + chrono::Duration::from_std(lead)?);
    put_jobs(&stack, spread_jobs("rec", count, first, spacing)).await?;
    let mut fleet = pipeline(&stack, true);
    let began = Instant::now();
    start_all(&stack, &mut fleet).await;
    let first_start_secs = began.elapsed().as_secs_f64();
    let tap = Tap::start(&stack)?;
    // Wait for the load: the first run has succeeded.
    let give_up = Instant::now() + lead + Duration::from_secs(120);
    tap.watch(0, give_up, |records| {
        records
            .iter()
            .any(|r| matches!(r.event.kind, RunEventKind::RunSucceeded { .. }))
    })
    .await;
    let mut restart_to_caught_up_secs = BTreeMap::new();
    for instance in fleet.iter_mut() {
        instance.kill9().await;
        instance.start(&stack);
        let restarted = Instant::now();
        instance.wait_caught_up(Duration::from_secs(600)).await;
        restart_to_caught_up_secs.insert(instance.name.clone(), restarted.elapsed().as_secs_f64());
    }
    stop_all(&mut fleet, problems).await;
    Ok(Recovery {
        jobs: count,
        first_start_secs,
        restart_to_caught_up_secs,
    })
}

// ---------------------------------------------------------------------------------------------
// The run and its report.

/// Runs the configured scenarios on a broker of the harness's own.
pub async fn run(
    config: BenchConfig,
    commit: String,
    binaries: String,
) -> anyhow::Result<BenchReport> {
    let began = Instant::now();
    let broker_dir = tempfile::tempdir()?;
    let broker = Broker::start(&config.nisshi, broker_dir.path()).await?;
    let address = broker.address();
    let mut report = BenchReport {
        started_at: chrono::Utc::now(),
        machine: Machine::read(),
        commit,
        broker: broker_version(&config.nisshi),
        binaries,
        partitions: config.partitions,
        smoke: config.smoke,
        elapsed_secs: 0,
        ceiling: None,
        throughput: None,
        precision: vec![],
        scale: None,
        recovery: None,
        peer: None,
        problems: vec![],
    };
    let wanted: HashSet<Scenario> = config.scenarios.iter().copied().collect();
    let problems = &mut report.problems;
    if wanted.contains(&Scenario::Ceiling) {
        report.ceiling = noted(problems, "ceiling", ceiling(&address, &config).await);
        tracing::info!(ceiling = ?report.ceiling, "Broker ceiling measured.");
    }
    if wanted.contains(&Scenario::Throughput) {
        let measured = throughput(&broker, &config, problems, report.ceiling.as_ref()).await;
        report.throughput = noted(problems, "throughput", measured);
    }
    if wanted.contains(&Scenario::Precision) {
        for &rate in &config.precision_rates {
            let measured = precision(&address, &config, rate, problems).await;
            tracing::info!(?measured, "Firing precision measured.");
            report
                .precision
                .extend(noted(problems, "precision", measured));
        }
    }
    if wanted.contains(&Scenario::Recovery) {
        let measured = recovery(&address, &config, problems).await;
        report.recovery = noted(problems, "recovery", measured);
        tracing::info!(recovery = ?report.recovery, "Recovery measured.");
    }
    if wanted.contains(&Scenario::Scale) {
        let measured = scale(&address, &config, problems).await;
        report.scale = noted(problems, "scale", measured);
    }
    report.elapsed_secs = began.elapsed().as_secs();
    Ok(report)
}

/// The figures of a scenario, or `None` with why it could not run noted.
fn noted<T>(problems: &mut Vec<String>, scenario: &str, measured: anyhow::Result<T>) -> Option<T> {
    measured
        .map_err(|error| problems.push(format!("{scenario}: {error:#}")))
        .ok()
}

fn broker_version(nisshi: &Path) -> String {
    let version = std::process::Command::new(nisshi)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{version} (SQLite storage engine, one broker)")
}

/// The peer's figures, as `scripts/bench/bullmq/peer.mjs` writes them.
struct Peer<'a>(&'a serde_json::Value);

impl Peer<'_> {
    fn name(&self) -> &str {
        self.0["peer"].as_str().unwrap_or("peer")
    }

    fn best_runs_per_sec(&self) -> Option<f64> {
        self.0["throughput"]["best_runs_per_sec"].as_f64()
    }

    fn saturated(&self) -> bool {
        !self.0["throughput"]["saturated_at_per_sec"].is_null()
    }

    /// p50 and p99 of lateness to task start at `rate` fires/s, in ms.
    fn lateness(&self, rate: u32) -> Option<(f64, f64)> {
        let level = self.0["precision"]
            .as_array()?
            .iter()
            .find(|p| p["fires_per_sec"].as_u64() == Some(u64::from(rate)))?;
        let start = &level["to_task_start"];
        Some((start["p50"].as_f64()?, start["p99"].as_f64()?))
    }
}

impl BenchReport {
    /// The figures as a Markdown section: what ran where, then each figure beside its goal.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        md.push_str(&format!(
            "Run {} on commit `{}`{}: {} ({} cores, {} GiB, Linux {}); broker {}; {} binaries; \
             {} partitions per topic; {} s in all.\n\n",
            self.started_at.format("%Y-%m-%d %H:%M UTC"),
            self.commit,
            if self.smoke {
                " (smoke form: sizes too small to mean anything)"
            } else {
                ""
            },
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kernel,
            self.broker,
            self.binaries,
            self.partitions,
            self.elapsed_secs,
        ));
        md.push_str("| what | measured | goal |\n|---|---|---|\n");
        let mut row = |what: String, measured: String, goal: &str| {
            md.push_str(&format!("| {what} | {measured} | {goal} |\n"));
        };
        if let Some(c) = &self.ceiling {
            row(
                format!(
                    "Broker ceiling: rdkafka produce→consume, {} records of {} B",
                    c.messages, c.payload_bytes
                ),
                format!(
                    "{:.0} msg/s (produce alone {:.0} msg/s)",
                    c.messages_per_sec, c.produce_per_sec
                ),
                "",
            );
            row(
                format!(
                    "Broker latency: one record at a time, {} records/s, send → read back",
                    c.latency_rate
                ),
                c.latency.to_string(),
                "",
            );
        }
        if let Some(t) = &self.throughput {
            row(
                format!(
                    "Throughput: peak runs/s, `RunScheduled` → `RunSucceeded`, no-op tasks, {} jobs",
                    t.jobs
                ),
                format!("{:.0} runs/s", t.peak_runs_per_sec),
                "",
            );
            if let Some(peak) = t
                .levels
                .iter()
                .max_by(|a, b| a.runs_per_sec.total_cmp(&b.runs_per_sec))
            {
                let kairos: f64 = peak
                    .cpu_ms_per_run
                    .iter()
                    .filter(|(name, _)| *name != "broker")
                    .map(|(_, ms)| ms)
                    .sum();
                let each: Vec<String> = peak
                    .cpu_ms_per_run
                    .iter()
                    .map(|(name, ms)| format!("{name} {ms:.2}"))
                    .collect();
                row(
                    format!(
                        "CPU per run at the peak ({} offered/s), ms; records per run",
                        peak.offered_per_sec
                    ),
                    format!(
                        "Kairos {kairos:.2} ({}); {:.1} records",
                        each.join(", "),
                        peak.records_per_run
                    ),
                    "Kairos ≤ 0.5 ms",
                );
            }
            row(
                "Pipeline messages/s at the peak, against the ceiling".into(),
                format!(
                    "{:.0} msg/s{}",
                    t.peak_messages_per_sec,
                    t.peak_ratio_to_ceiling
                        .map(|r| format!(" ({:.0}%)", r * 100.0))
                        .unwrap_or_default()
                ),
                "≥ 50% of the ceiling",
            );
        }
        let peer = self.peer.as_ref().map(Peer);
        if let (Some(t), Some(peer)) = (&self.throughput, &peer) {
            if let Some(best) = peer.best_runs_per_sec() {
                row(
                    format!("Peer, same run: {} peak runs/s, no-op jobs", peer.name()),
                    format!(
                        "{best:.0} runs/s{}; Kairos ÷ peer = {:.2}{}",
                        if peer.saturated() {
                            ""
                        } else {
                            " (not saturated: a lower bound)"
                        },
                        t.peak_runs_per_sec / best,
                        peer.0["redis_cpu_ms_per_job"]
                            .as_f64()
                            .map(|ms| format!("; Redis CPU {ms:.2} ms per job"))
                            .unwrap_or_default()
                    ),
                    "ratio ≥ 0.5",
                );
            }
        }
        for p in &self.precision {
            let what = format!("{} one-off jobs, {} fires/s", p.jobs, p.fires_per_sec);
            row(
                format!("`RunScheduled` appended (read back) after the slot (negative: ahead of it), {what}"),
                p.to_scheduled_visible.to_string(),
                "",
            );
            row(
                format!("Lateness to task start on the worker, {what}"),
                format!("{}{}", p.to_task_start, missing(p.not_fired, p.not_started)),
                "p99 ≤ 10 ms",
            );
            if let Some((p50, p99)) = peer
                .as_ref()
                .and_then(|peer| peer.lateness(p.fires_per_sec))
            {
                let ratio = p.to_task_start.p99_ms / p99;
                row(
                    format!(
                        "Peer, same run: {} lateness to task start, {} fires/s",
                        peer.as_ref().map_or("peer", |peer| peer.name()),
                        p.fires_per_sec
                    ),
                    format!("p50 {p50:.1} / p99 {p99:.1} ms; Kairos ÷ peer p99 = {ratio:.2}"),
                    "ratio ≤ 0.1",
                );
            }
        }
        if let Some(s) = &self.scale {
            row(
                format!("{} job definitions: trigger rebuild from empty", s.jobs),
                format!(
                    "{:.1} s (producing them: {:.1} s)",
                    s.rebuild_secs, s.produce_secs
                ),
                "≤ 60 s",
            );
            row(
                format!("{} job definitions: trigger peak RSS", s.jobs),
                format!(
                    "{:.0} MiB (RocksDB on disk {:.0} MiB)",
                    s.peak_rss_mib, s.store_mib
                ),
                "≤ 1 GiB",
            );
            row(
                format!(
                    "{} job definitions: lateness of the fires after the rebuild ({:.0} fires/s, \
                     caught up {:.1} s before the first)",
                    s.jobs, s.fires_per_sec, s.caught_up_before_first_slot_secs
                ),
                format!(
                    "{} (read back){}",
                    s.to_scheduled_visible,
                    missing(s.not_fired, 0)
                ),
                "",
            );
        }
        if let Some(r) = &self.recovery {
            for (service, secs) in &r.restart_to_caught_up_secs {
                row(
                    format!(
                        "{} jobs: {service} restarted after `kill -9`, until caught up",
                        r.jobs
                    ),
                    format!("{secs:.1} s"),
                    "≤ 10 s",
                );
            }
        }
        if let Some(t) = &self.throughput {
            md.push_str("\nThroughput by offered load:\n\n");
            md.push_str("| offered runs/s | completed | runs/s | pipeline msg/s | latency | saturated | aggregator behind |\n|---|---|---|---|---|---|---|\n");
            for l in &t.levels {
                md.push_str(&format!(
                    "| {} | {}/{} | {:.0} | {:.0} | {} | {} | {} |\n",
                    l.offered_per_sec,
                    l.completed,
                    l.runs,
                    l.runs_per_sec,
                    l.messages_per_sec,
                    l.latency,
                    if l.saturated { "yes" } else { "no" },
                    l.aggregator_behind_secs
                        .map_or("over 300 s".to_string(), |s| format!("{s:.1} s")),
                ));
            }
        }
        for problem in &self.problems {
            md.push_str(&format!("\nProblem: {problem}\n"));
        }
        md
    }
}

fn missing(not_fired: usize, not_started: usize) -> String {
    if not_fired + not_started == 0 {
        String::new()
    } else {
        format!(" ({not_fired} not fired, {not_started} not started in time)")
    }
}

/// Replaces the text between `<!-- bench:begin -->` and `<!-- bench:end -->` with `section`.
pub fn replace_section(document: &str, section: &str) -> Option<String> {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let start = document.find(BEGIN)? + BEGIN.len();
    let end = document[start..].find(END)? + start;
    Some(format!(
        "{}\n{}\n{}",
        &document[..start],
        section.trim_end(),
        &document[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d = Distribution::of((1..=100).map(f64::from).rev().collect());
        assert_eq!(
            (d.count, d.p50_ms, d.p99_ms, d.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        assert_eq!(Distribution::of(vec![]), Distribution::default());
        assert_eq!(Distribution::of(vec![7.0]).p99_ms, 7.0);
    }

    #[test]
    fn spread_slots_are_counted_inclusively() {
        let first = kairos_core::from_millis(1_000).unwrap();
        let last = kairos_core::from_millis(2_000).unwrap();
        let spacing = Duration::from_millis(100);
        assert_eq!(spread_count(first, last, spacing, 1000), 11);
        assert_eq!(spread_count(first, last, spacing, 5), 5);
        let jobs: Vec<_> = spread_jobs("x", 3, first, spacing).collect();
        assert_eq!(
            jobs[2].schedule,
            kairos_core::schedule::Schedule::At {
                at: kairos_core::from_millis(1_200).unwrap()
            }
        );
    }

    #[test]
    fn the_readme_section_is_replaced_between_its_markers() {
        let doc = "intro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nrest\n";
        assert_eq!(
            replace_section(doc, "new table\n").unwrap(),
            "intro\n<!-- bench:begin -->\nnew table\n<!-- bench:end -->\nrest\n"
        );
        assert_eq!(replace_section("no markers", "x"), None);
    }
}

//! Integration test harness: a real broker (started by `scripts/test.sh`, address in
//! `KAIROS_TEST_BROKERS`), real services run in-process, a unique topic prefix per test, and
//! bounded waits that fail with a message saying what did not arrive. [`chaos`] is the
//! fault-injection suite.

pub mod bench;
pub mod chaos;
pub mod fleet;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kairos_core::job::JobSpec;
use kairos_core::run::RunEvent;
use kairos_runtime::codec;
use kairos_runtime::kafka::{apply_topics, Delivered, TopicSet};
use kairos_runtime::{KafkaArgs, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A path in the repository, from the test's working tree: `CARGO_MANIFEST_DIR` as cargo sets it
/// when it runs the test, not as it was when the test was compiled (a build cache shared by two
/// checkouts can hold a binary compiled in the other one).
pub fn repo_path(relative: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
        .join(relative)
}

/// The broker the suite runs against.
pub fn brokers() -> String {
    std::env::var("KAIROS_TEST_BROKERS").expect(
        "KAIROS_TEST_BROKERS is not set: run the suite with scripts/test.sh, which starts a broker",
    )
}

/// A free TCP port on 127.0.0.1, for a service to bind a moment later.
///
/// Not one the kernel picks (`bind(0)`): those come from the ephemeral range, which the many
/// outgoing connections of the services and clients also draw from, so one of them could take
/// the port before the service binds it (a service that cannot bind its port stops, and a test
/// would then wait for it in vain). These come from below that range (Linux's default starts at
/// 32768), each process from its own starting point and never the same one twice.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..COUNT {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port in 127.0.0.1:{FIRST}..{}", FIRST + COUNT)
}

/// Sends the in-process services' logs to the test's captured output, so a failing test shows
/// what the services did (libtest prints captured output of failed tests only; the runtime's
/// worker threads inherit the capture of the test thread that built them).
fn capture_service_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    // Several tests in one binary each try; the first one installs it, for all.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// How often `wait_for` looks again: Kafka topics and HTTP state have no event to await here.
const POLL: Duration = Duration::from_millis(200);

/// Polls `check` until it returns `Some`, or fails the test after `timeout` saying `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until(timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`, or gives `None` after `timeout`: for a harness that
/// reports a wait that ran out rather than failing on it.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One test's installation: its own topic prefix and data directories.
pub struct Stack {
    pub kafka: KafkaArgs,
    pub partitions: i32,
    dir: tempfile::TempDir,
}

impl Stack {
    /// Creates the topic set under a fresh prefix on the suite's broker.
    pub async fn new(partitions: i32) -> Stack {
        Stack::on(brokers(), partitions).await
    }

    /// Creates the topic set under a fresh prefix on `brokers`.
    pub async fn on(brokers: String, partitions: i32) -> Stack {
        capture_service_logs();
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let kafka = KafkaArgs::new(brokers, prefix);
        let mut set = TopicSet::shipped();
        set.partitions = partitions;
        apply_topics(&kafka, &set)
            .await
            .expect("creating the test topics");
        let mut dir = tempfile::tempdir().expect("temp dir");
        // KAIROS_TEST_KEEP_DIRS=1 keeps the stores, side-effect logs and process logs of every
        // stack after the test, to look into a failure.
        if std::env::var_os("KAIROS_TEST_KEEP_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!(
                "stack {} kept in {}",
                kafka.topic_prefix,
                dir.path().display()
            );
        }
        Stack {
            kafka,
            partitions,
            dir,
        }
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn trigger(&self, data: &str) -> Service {
        self.trigger_with(data, |_| {})
    }

    /// A trigger whose configuration `adjust` changes first.
    pub fn trigger_with(
        &self,
        data: &str,
        adjust: impl FnOnce(&mut kairos_trigger::Config),
    ) -> Service {
        let mut config =
            kairos_trigger::Config::new(self.kafka.clone(), self.data_dir(data), free_addr());
        adjust(&mut config);
        Service::spawn(
            "trigger",
            Some(self.data_dir(data)),
            config.service.metrics_addr,
            None,
            |stop| kairos_trigger::run(config, stop),
        )
    }

    pub fn dispatcher(&self, data: &str) -> Service {
        self.dispatcher_with(data, |_| {})
    }

    /// A dispatcher whose configuration `adjust` changes first.
    pub fn dispatcher_with(
        &self,
        data: &str,
        adjust: impl FnOnce(&mut kairos_dispatcher::Config),
    ) -> Service {
        let mut config =
            kairos_dispatcher::Config::new(self.kafka.clone(), self.data_dir(data), free_addr());
        adjust(&mut config);
        Service::spawn(
            "dispatcher",
            Some(self.data_dir(data)),
            config.service.metrics_addr,
            None,
            |stop| kairos_dispatcher::run(config, stop),
        )
    }

    /// A dispatcher that declares silent attempts timed out `margin` after their task timeout.
    pub fn dispatcher_with_margin(&self, data: &str, margin: Duration) -> Service {
        self.dispatcher_with(data, |config| config.deadline_margin = margin)
    }

    pub fn worker(&self, worker_id: &str) -> Service {
        self.worker_in("default", worker_id)
    }

    /// A worker of `pool`.
    pub fn worker_in(&self, pool: &str, worker_id: &str) -> Service {
        self.worker_with(worker_id, |config| config.pool = pool.to_string())
    }

    /// A worker (of the default pool unless `adjust` says otherwise).
    pub fn worker_with(
        &self,
        worker_id: &str,
        adjust: impl FnOnce(&mut kairos_worker::Config),
    ) -> Service {
        let config = self.worker_config(worker_id, adjust);
        Service::spawn("worker", None, config.service.metrics_addr, None, |stop| {
            kairos_worker::run(config, stop)
        })
    }

    /// A worker of `pool` that also runs the custom task types of `handlers`.
    pub fn worker_with_handlers(
        &self,
        pool: &str,
        worker_id: &str,
        handlers: kairos_worker::Handlers,
    ) -> Service {
        let config = self.worker_config(worker_id, |config| config.pool = pool.to_string());
        Service::spawn("worker", None, config.service.metrics_addr, None, |stop| {
            kairos_worker::run_with_handlers(config, handlers, stop)
        })
    }

    /// A test worker's configuration: beating every 300 ms, draining for at most 5 s, under the
    /// test suite's policy.
    fn worker_config(
        &self,
        worker_id: &str,
        adjust: impl FnOnce(&mut kairos_worker::Config),
    ) -> kairos_worker::Config {
        let mut config = kairos_worker::Config::new(self.kafka.clone(), free_addr());
        config.heartbeat_interval = TEST_HEARTBEAT;
        // Tests stop workers in the middle of long tasks; they hand them back soon.
        config.drain_timeout = Duration::from_secs(5);
        config.worker_id = Some(worker_id.to_string());
        // The ledger sequences the tests assert include every start; `short_tasks.rs` covers
        // the default, which reports a short task's start on its outcome alone.
        config.report_start_after = Duration::ZERO;
        config.policy = Some(TEST_WORKER_POLICY.into());
        // The suite's jobs are unsigned; `tests/security.rs` tests signed ones.
        config.allow_unsigned = true;
        adjust(&mut config);
        config
    }

    /// The `kairos-worker` binary as a process of its own, to be killed as production kills it.
    pub fn worker_process(&self, worker_id: &str) -> Process {
        let beat = format!("{}ms", TEST_HEARTBEAT.as_millis());
        let metrics = free_addr().to_string();
        self.process(
            worker_id,
            "kairos-worker",
            &[
                "--worker-id",
                worker_id,
                "--heartbeat-interval",
                &beat,
                "--metrics-addr",
                &metrics,
            ],
        )
    }

    /// Runs a service binary built by `scripts/test.sh` against this stack; its log goes to
    /// `<name>.log` in the stack's directory, appended to across restarts.
    pub fn process(&self, name: &str, binary: &str, args: &[&str]) -> Process {
        let dir = std::env::var("KAIROS_TEST_BIN_DIR")
            .expect("KAIROS_TEST_BIN_DIR is not set: run scripts/test.sh");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("creating the process log");
        let child = tokio::process::Command::new(format!("{dir}/{binary}"))
            .args(args)
            .env("KAIROS_BROKERS", &self.kafka.brokers)
            .env("KAIROS_TOPIC_PREFIX", &self.kafka.topic_prefix)
            // Read by workers only.
            .env("KAIROS_WORKER_POLICY", TEST_WORKER_POLICY)
            .env("KAIROS_ALLOW_UNSIGNED", "true")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Process {
            name: name.to_string(),
            child,
        }
    }

    /// A service binary as a process of its own, on a fresh metrics address (returned) and, for
    /// the services with a store, a data directory named `name`; `extra` are further arguments.
    pub fn service_process(
        &self,
        name: &str,
        binary: &str,
        extra: &[&str],
    ) -> (Process, SocketAddr) {
        let metrics = free_addr();
        let metrics_arg = metrics.to_string();
        let data = self.data_dir(name).to_string_lossy().into_owned();
        let mut args = vec!["--metrics-addr", metrics_arg.as_str()];
        if binary != "kairos-worker" {
            args.extend(["--data-dir", data.as_str()]);
        }
        args.extend_from_slice(extra);
        (self.process(name, binary, &args), metrics)
    }

    pub fn aggregator(&self, data: &str) -> Service {
        self.aggregator_with(data, |_| {})
    }

    /// An aggregator whose configuration `adjust` changes first.
    pub fn aggregator_with(
        &self,
        data: &str,
        adjust: impl FnOnce(&mut kairos_aggregator::Config),
    ) -> Service {
        let mut config = kairos_aggregator::Config::new(
            self.kafka.clone(),
            self.data_dir(data),
            free_addr(),
            free_addr(),
        );
        adjust(&mut config);
        let http = config.http_addr;
        Service::spawn(
            "aggregator",
            Some(self.data_dir(data)),
            config.service.metrics_addr,
            Some(http),
            |stop| kairos_aggregator::run(config, stop),
        )
    }

    /// The four services of the default pool (worker `w1`), started and caught up.
    pub async fn start_pipeline(&self) -> Vec<Service> {
        let services = vec![
            self.trigger("trigger"),
            self.dispatcher("dispatcher"),
            self.worker("w1"),
            self.aggregator("aggregator"),
        ];
        wait_caught_up(&services).await;
        services
    }

    /// Puts a job definition on the jobs topic, as `kairosctl job apply` does.
    pub async fn apply_job(&self, spec: JobSpec) -> Delivered {
        let definition = spec.validate().expect("test job is valid");
        let bytes = codec::encode_job(&definition).expect("encoding the job");
        self.produce(
            &self.kafka.topics().jobs(),
            definition.id.as_str(),
            Some(&bytes),
        )
        .await
    }

    /// Puts many job definitions through one producer, as `kairosctl job apply` does a file.
    pub async fn apply_jobs(&self, definitions: &[kairos_core::JobDefinition]) {
        let producer = self.kafka.producer().expect("producer");
        let topic = self.kafka.topics().jobs();
        let sends = definitions.iter().map(|definition| {
            let bytes = codec::encode_job(definition).expect("encoding the job");
            let (producer, topic) = (&producer, &topic);
            async move {
                producer
                    .send(topic, definition.id.as_str(), Some(&bytes))
                    .await
            }
        });
        futures::future::try_join_all(sends)
            .await
            .expect("producing the jobs");
    }

    /// Produces raw bytes (or a tombstone); returns where the record landed.
    /// Appends `event` to the run ledger as `service` would (a dispatcher's decision, a worker's
    /// report), for a test that needs the ledger to say what no service said.
    pub async fn append_to_ledger(&self, event: &RunEvent, service: &str) -> Delivered {
        let record = kairos_runtime::ledger::LedgerRecord::of(event, service).expect("encodes");
        self.produce(
            &self.kafka.topics().runs(),
            &record.key,
            Some(&record.payload),
        )
        .await
    }

    pub async fn produce(&self, topic: &str, key: &str, payload: Option<&[u8]>) -> Delivered {
        let producer = self.kafka.producer().expect("producer");
        producer
            .send(topic, key, payload)
            .await
            .expect("producing a test record")
    }

    /// Every record of `topic`, from the beginning up to its current end, with partition and offset.
    pub fn read_all(&self, topic: &str) -> Vec<(i32, i64, Option<Vec<u8>>)> {
        self.read_records(topic)
            .into_iter()
            .map(|r| (r.partition, r.offset, r.payload))
            .collect()
    }

    /// Every record of `topic`, with its headers too.
    pub fn read_records(&self, topic: &str) -> Vec<Record> {
        let mut tail = self.tail(topic);
        assert!(
            tail.catch_up(Duration::from_secs(30)),
            "reading {topic} to its end took over 30 s"
        );
        tail.records
    }

    /// A reader of `topic` from its beginning that keeps what it has read, so that reading it
    /// again reads only what is new.
    pub fn tail(&self, topic: &str) -> TopicTail {
        let consumer: BaseConsumer = self
            .kafka
            .client_config()
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let partitions = self.partitions_of(topic);
        let mut tpl = TopicPartitionList::new();
        for partition in 0..partitions {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        TopicTail {
            consumer,
            topic: topic.to_string(),
            partitions,
            next: BTreeMap::new(),
            records: vec![],
        }
    }

    fn partitions_of(&self, topic: &str) -> i32 {
        *kairos_runtime::kafka::partition_counts(&self.kafka)
            .expect("metadata")
            .get(topic)
            .unwrap_or(&0)
    }

    /// Runs the `kairosctl` binary built by `scripts/test.sh` against this stack.
    pub fn kairosctl(&self, api: &str, args: &[&str]) -> std::process::Output {
        let dir = std::env::var("KAIROS_TEST_BIN_DIR")
            .expect("KAIROS_TEST_BIN_DIR is not set: run scripts/test.sh");
        std::process::Command::new(format!("{dir}/kairosctl"))
            .args(args)
            .env("KAIROS_BROKERS", &self.kafka.brokers)
            .env("KAIROS_TOPIC_PREFIX", &self.kafka.topic_prefix)
            .env("KAIROS_API", api)
            .output()
            .expect("running kairosctl")
    }

    /// The alerts raised so far.
    pub fn alerts(&self) -> Vec<codec::Alert> {
        self.read_all(&self.kafka.topics().alerts())
            .into_iter()
            .filter_map(|(_, _, payload)| codec::decode_alert(&payload?).ok())
            .collect()
    }

    /// The ledger events of one job, in ledger order.
    pub fn job_ledger(&self, job: &str) -> Vec<RunEvent> {
        events_of(&self.ledger(), job)
            .into_iter()
            .cloned()
            .collect()
    }

    /// The run ledger as decoded events, in per-partition order.
    pub fn ledger(&self) -> Vec<RunEvent> {
        let mut tail = self.tail(&self.kafka.topics().runs());
        assert!(
            tail.catch_up(Duration::from_secs(30)),
            "reading the ledger to its end took over 30 s"
        );
        tail.run_events()
    }
}

/// A topic read from its beginning, record by record as they come (see [`Stack::tail`]).
pub struct TopicTail {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
    /// Per partition, the offset of the next record to read.
    next: BTreeMap<i32, i64>,
    /// Every record read so far, in the order read (each partition's in offset order).
    pub records: Vec<Record>,
}

impl TopicTail {
    /// Reads on to the topic's end as it is now; false if that takes longer than `within` (or
    /// the end cannot be learnt), keeping what was read.
    pub fn catch_up(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut ends = BTreeMap::new();
        for partition in 0..self.partitions {
            match self
                .consumer
                .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
            {
                Ok((low, high)) => {
                    // Records before the low watermark are gone (retention): none to wait for.
                    let next = self.next.entry(partition).or_insert(low);
                    *next = (*next).max(low);
                    ends.insert(partition, high);
                }
                Err(_) => return false,
            }
        }
        let behind = |next: &BTreeMap<i32, i64>| {
            ends.iter()
                .any(|(partition, end)| next.get(partition).copied().unwrap_or(0) < *end)
        };
        while behind(&self.next) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            if let Some(Ok(message)) = self.consumer.poll(Duration::from_millis(200)) {
                let headers = message.headers().map_or(vec![], |headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                });
                self.next.insert(message.partition(), message.offset() + 1);
                self.records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        true
    }

    /// The run events read so far (the topic being a runs topic), in the order read.
    pub fn run_events(&self) -> Vec<RunEvent> {
        self.records
            .iter()
            .filter_map(|r| codec::decode_run_event(r.payload.as_deref()?).ok())
            .collect()
    }
}

/// A record read back from a topic.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The value of the header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How often test workers beat: a worker is lost after three silent intervals.
pub const TEST_HEARTBEAT: Duration = Duration::from_millis(300);

/// A service binary running as a child process.
pub struct Process {
    pub name: String,
    child: tokio::process::Child,
}

impl Process {
    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `kill -9`: no drain, no goodbye, no group leave.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("killing the process");
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the process is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit on its own and returns its status.
    pub async fn exit(self, within: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        self.exit_or_kill(within)
            .await
            .unwrap_or_else(|| panic!("{name} kept running for {within:?}"))
    }

    /// Waits for the process to exit on its own; if it is still running after `within`, prints
    /// the stacks of its threads (where it hangs, when gdb is installed) and kills it
    /// (`kill -9`), and returns `None`.
    pub async fn exit_or_kill(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Some(status.expect("waiting for the process")),
            Err(_) => {
                if let Some(pid) = self.child.id() {
                    let stacks = tokio::process::Command::new("gdb")
                        .args([
                            "-p",
                            &pid.to_string(),
                            "-batch",
                            "-ex",
                            "thread apply all bt",
                        ])
                        .output()
                        .await;
                    if let Ok(stacks) = stacks {
                        eprintln!(
                            "--- {} still running after {within:?}; its threads ---\n{}",
                            self.name,
                            String::from_utf8_lossy(&stacks.stdout)
                        );
                    }
                }
                self.child.kill().await.expect("killing the process");
                None
            }
        }
    }
}

/// Waits until the worker has skipped at least `at_least` tasks of pool `default` for `reason`
/// (`already_over`, `running_elsewhere`), as its metrics count them.
pub async fn wait_skipped(
    what: &str,
    within: Duration,
    worker: &Service,
    reason: &str,
    at_least: usize,
) {
    let series =
        format!(r#"kairos_worker_tasks_skipped_total{{pool="default",reason="{reason}"}}"#);
    wait_for(what, within, || async {
        let metrics = scrape(worker.metrics_addr).await;
        metric_value(&metrics, &series)
            .filter(|n| *n >= at_least as f64)
            .map(|_| ())
    })
    .await;
}

/// A service running in-process.
pub struct Service {
    pub name: &'static str,
    pub data_dir: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    fn spawn<Fut>(
        name: &'static str,
        data_dir: Option<PathBuf>,
        metrics_addr: SocketAddr,
        http_addr: Option<SocketAddr>,
        run: impl FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> Fut,
    ) -> Service
    where
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone().cancelled_owned()));
        Service {
            name,
            data_dir,
            metrics_addr,
            http_addr,
            stop,
            task,
        }
    }

    /// Ends the service abruptly, as a crash would: no clean stop, no goodbye.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops the service and returns how its `run` ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 30 s", self.name))
            .expect("service task panicked")
    }

    /// Waits for the service's `run` to return on its own (e.g. refusing to start).
    pub async fn exit(self, within: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(within, self.task)
            .await
            .unwrap_or_else(|_| panic!("{} kept running for {within:?}", self.name))
            .expect("service task panicked")
    }

    /// `/debug/state` of the running service.
    pub async fn state(&self) -> Option<serde_json::Value> {
        get_json(&format!("http://{}/debug/state", self.metrics_addr)).await
    }

    /// Waits until the service has caught up with all its partitions.
    pub async fn caught_up(&self) {
        wait_for(
            &format!("{} to catch up", self.name),
            Duration::from_secs(60),
            || async {
                self.state()
                    .await
                    .filter(|s| s["caught_up"] == true)
                    .map(|_| ())
            },
        )
        .await;
    }

    /// Stops the service, then reads its store offline: the state digest and every state entry.
    pub async fn stop_and_read_state(self) -> StoreState {
        let dir = self.data_dir.clone().expect("a service with a store");
        self.stop().await.expect("service stopped cleanly");
        read_state(&dir)
    }
}

/// Waits until every service has caught up with its partitions.
pub async fn wait_caught_up(services: &[Service]) {
    for service in services {
        service.caught_up().await;
    }
}

/// Stops every service, failing the test if one did not stop cleanly.
pub async fn stop_all(services: impl IntoIterator<Item = Service>) {
    for service in services {
        let name = service.name;
        service
            .stop()
            .await
            .unwrap_or_else(|e| panic!("{name} did not stop cleanly: {e:#}"));
    }
}

/// A stopped service's state: its digest and every entry but its progress (positions, cursors).
pub type StoreState = (String, BTreeMap<String, serde_json::Value>);

/// Reads the store of a stopped service.
pub fn read_state(dir: &std::path::Path) -> StoreState {
    let store = Store::open(dir).expect("opening the stopped service's store");
    let entries = store
        .scan::<serde_json::Value>("")
        .expect("reading the store")
        .into_iter()
        .filter(|(key, _)| !kairos_runtime::store::is_progress(key.as_bytes()))
        .collect();
    (store.digest().expect("digest"), entries)
}

/// Fails, naming the entries that differ, unless two stores hold the same state.
pub fn assert_same_state(what: &str, live: StoreState, rebuilt: StoreState) {
    if let Some(difference) = state_difference(live, rebuilt) {
        panic!("{what}: {difference}");
    }
}

/// `None` when two stores hold the same state, else which entries differ.
pub fn state_difference(
    (live_digest, live): StoreState,
    (rebuilt_digest, rebuilt): StoreState,
) -> Option<String> {
    if live_digest == rebuilt_digest {
        return None;
    }
    let keys: std::collections::BTreeSet<&String> = live.keys().chain(rebuilt.keys()).collect();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| live.get(*k) != rebuilt.get(*k))
        .take(5)
        .map(|k| {
            format!(
                "{k}:\n  live:    {:?}\n  rebuilt: {:?}",
                live.get(k),
                rebuilt.get(k)
            )
        })
        .collect();
    Some(format!(
        "rebuilt state differs from the live one ({live_digest} vs {rebuilt_digest}):\n{}",
        differing.join("\n")
    ))
}

/// Waits until the process whose pid a task wrote to `pid_file` has ended (gone, or a zombie
/// waiting for whoever reaps it): how a test sees that killing a task killed its children too.
pub async fn wait_process_gone(pid_file: &std::path::Path, what: &str) {
    let pid = wait_for(
        &format!("{} to exist", pid_file.display()),
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(pid_file)
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
        },
    )
    .await;
    wait_for(what, Duration::from_secs(10), || async {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                    == Some("Z")
            }
        };
        gone.then_some(())
    })
    .await;
}

/// GET a JSON document; `None` when unreachable or not 2xx.
pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The Prometheus text a service exports at `addr`.
pub async fn scrape(addr: SocketAddr) -> String {
    let url = format!("http://{addr}/metrics");
    let response = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    response.text().await.expect("a metrics body")
}

/// The value of one series (`name{labels}` exactly as exported) in Prometheus text.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// The ledger events of one job, in ledger order.
pub fn events_of<'a>(ledger: &'a [RunEvent], job: &str) -> Vec<&'a RunEvent> {
    ledger.iter().filter(|e| e.job_id.as_str() == job).collect()
}

/// Events as `Name(attempt)`, to assert a run's story in one line.
pub fn names(events: &[&RunEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let attempt = e.kind.attempt().map(|a| format!("({a})"));
            format!("{}{}", e.kind.name(), attempt.unwrap_or_default())
        })
        .collect()
}

/// Retries without jitter, the delay doubling from `initial` (up to 10 s), so that tests can
/// predict every due time.
pub fn exact_retries(max_attempts: u32, initial: Duration) -> kairos_core::job::RetryPolicy {
    kairos_core::job::RetryPolicy {
        max_attempts,
        backoff: kairos_core::job::Backoff {
            initial,
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.0,
        },
    }
}

/// A shell job that fires once, `in_secs` seconds from now.
/// The policy of the test suite's workers: shell scripts, and calls to local servers.
pub const TEST_WORKER_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/worker-policy.yaml");

pub fn one_shot_job(id: &str, script: &str, in_secs: i64) -> JobSpec {
    let mut job = shell_job(id, "1s", script);
    let at = chrono::Utc::now() + chrono::Duration::seconds(in_secs);
    job.schedule = serde_json::from_value(serde_json::json!({ "at": at })).expect("an at schedule");
    job
}

/// A shell job every `every`, parsed from YAML as a user would write it.
pub fn shell_job(id: &str, every: &str, script: &str) -> JobSpec {
    let yaml = format!("id: {id}\nschedule:\n  every: {every}\ntask:\n  shell:\n    command: [\"sh\", \"-c\", {script:?}]\ntimeout: 10s\n");
    let value: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("test job YAML");
    serde_json::from_value(value).expect("test job spec")
}

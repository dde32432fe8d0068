//! The start and stop every Kairos service shares, so that each service crate holds only what is
//! its own: what it consumes, what it keeps, and what it decides.
//!
//! Start: the shutdown token, a producer that waits out broker outages, the consumer-group member,
//! dead letters, and the ops HTTP server (`/metrics`, `/healthz`, `/debug/state`). Stop: commit
//! stored offsets, flush the producer, stop the HTTP servers, and count a send interrupted by
//! shutdown as a clean stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::deadletter::DeadLetters;
use crate::kafka::{clean_exit, KafkaArgs, PartitionedConsumer, ReliableProducer};
use crate::record_loop::{self, LoopParts, StatefulService};
use crate::store::Store;
use crate::telemetry::{self, Health, TelemetryArgs};

/// What every service binary takes: its broker connection, where it serves its metrics and
/// health, and its logging and tracing. Each service's `Config` flattens it and sets its own
/// default metrics address (`#[command(mut_arg("metrics_addr", ...))]`).
#[derive(clap::Args, Clone, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Where `/metrics`, `/healthz` and `/debug/state` are served.
    #[arg(long, env = "KAIROS_METRICS_ADDR", default_value = "127.0.0.1:9400")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl ServiceArgs {
    /// A broker and a metrics address, with default telemetry, as tests and embedders need.
    pub fn new(kafka: KafkaArgs, metrics_addr: SocketAddr) -> Self {
        ServiceArgs {
            kafka,
            metrics_addr,
            telemetry: TelemetryArgs::default(),
        }
    }
}

/// Where a stateful service (trigger, dispatcher, aggregator) keeps its store. Each sets its own
/// default directory (`#[command(mut_arg("data_dir", ...))]`).
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// RocksDB directory (a cache: delete it and the service rebuilds it from the topics).
    #[arg(long, env = "KAIROS_DATA_DIR", default_value = ".kairos/data")]
    pub data_dir: PathBuf,
}

impl StoreArgs {
    /// Creates the data directory if needed and opens the store in it.
    pub fn open(&self) -> anyhow::Result<Store> {
        open_store(&self.data_dir)
    }
}

/// What a service consumes and where it reports.
pub struct ServiceSpec<'a> {
    /// The service's name in dead letters and logs, e.g. `trigger`.
    pub name: &'static str,
    pub args: &'a ServiceArgs,
    /// The consumer group, e.g. `kairos-trigger`.
    pub group: String,
    pub inputs: &'a [String],
    /// The service's state; positions are resumed from it (see [`PartitionedConsumer`]).
    pub store: Option<Store>,
}

/// The shared parts of a running service.
pub struct ServiceParts {
    pub name: &'static str,
    pub topics: crate::Topics,
    pub shutdown: CancellationToken,
    pub producer: ReliableProducer,
    pub consumer: PartitionedConsumer,
    pub deadletters: DeadLetters,
    pub health: Arc<Health>,
    pub ops: Ops,
}

/// The HTTP servers of a service, stopped by [`Ops::finish`].
pub struct Ops {
    shutdown: CancellationToken,
    servers: Vec<JoinHandle<()>>,
}

/// Creates the data directory if needed and opens the store in it.
pub fn open_store(dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Store::open(dir).with_context(|| format!("opening the store in {}", dir.display()))
}

impl ServiceParts {
    pub async fn start(
        spec: ServiceSpec<'_>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Self> {
        let shutdown = telemetry::shutdown_token(shutdown);
        let producer =
            ReliableProducer::new(spec.args.kafka.producer()?, shutdown.clone(), spec.name);
        let consumer = PartitionedConsumer::new(
            spec.name,
            &spec.args.kafka,
            &spec.group,
            spec.inputs,
            spec.store.clone(),
        )?;
        let deadletters = DeadLetters::new(
            producer.clone(),
            spec.args.kafka.topics().deadletter(),
            spec.name,
        );
        let health = Arc::new(Health::default());
        let mut ops = Ops {
            shutdown: shutdown.clone(),
            servers: vec![],
        };
        ops.serve(
            spec.args.metrics_addr,
            telemetry::ops_router(spec.name, health.clone(), spec.store),
            None,
        )
        .await?;
        // After the ops router, which installs the recorder.
        crate::metrics_names::register(spec.name);
        tracing::info!(service = spec.name, inputs = ?spec.inputs, group = spec.group, "Service started.");
        Ok(ServiceParts {
            name: spec.name,
            topics: spec.args.kafka.topics(),
            shutdown,
            producer,
            consumer,
            deadletters,
            health,
            ops,
        })
    }

    /// The run ledger, appended to as this service.
    pub fn ledger(&self) -> crate::ledger::Ledger {
        crate::ledger::Ledger::new(self.producer.clone(), &self.topics, self.name)
    }

    /// Runs a stateful service on its records and wake-ups ([`record_loop`]) until the shutdown,
    /// then stops it.
    pub async fn run<S: StatefulService>(
        mut self,
        service: &mut S,
        store: &Store,
    ) -> anyhow::Result<()> {
        let loop_parts = LoopParts {
            name: self.name,
            topics: &self.topics,
            consumer: &mut self.consumer,
            store,
            deadletters: &self.deadletters,
            health: &self.health,
        };
        let result = record_loop::run(service, loop_parts, self.shutdown.clone()).await;
        self.ops
            .finish(&self.consumer, &self.producer, result)
            .await
    }
}

impl Ops {
    /// Serves another router (the aggregator's API) until the service stops, over TLS when
    /// `tls` names a certificate and key.
    pub async fn serve(
        &mut self,
        addr: SocketAddr,
        router: axum::Router,
        tls: Option<&telemetry::TlsFiles>,
    ) -> anyhow::Result<()> {
        let stopped = self.shutdown.clone().cancelled_owned();
        self.servers.push(match tls {
            Some(tls) => telemetry::serve_tls(addr, router, stopped, tls).await?,
            None => telemetry::serve(addr, router, stopped).await?,
        });
        Ok(())
    }

    /// Stops the service after its loop returned `result`.
    pub async fn finish(
        self,
        consumer: &PartitionedConsumer,
        producer: &ReliableProducer,
        result: anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        consumer.commit();
        producer.flush();
        self.shutdown.cancel();
        for server in self.servers {
            let _ = server.await;
        }
        clean_exit(result)
    }
}

//! Logs, metrics and the small operations HTTP server every service runs.
//!
//! The ops server serves `/metrics` (Prometheus text), `/healthz` and `/debug/state` (whether the
//! service has caught up with its partitions, and the digest of its state, which is how tests and
//! operators check that a rebuild reproduced the live state).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::Store;

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging and tracing settings every service takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TelemetryArgs {
    /// `json` writes one JSON object per line, with the job_id and run_id of per-run lines as
    /// fields.
    #[arg(long, env = "KAIROS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export trace spans over OTLP/HTTP to this collector (e.g. http://otel-collector:4318);
    /// none are exported without it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<url::Url>,
}

/// Flushes exported spans when dropped; hold it until the service has stopped.
pub struct TracingGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("Flushing trace spans failed: {error}");
            }
        }
    }
}

/// Installs the tracing subscriber (`RUST_LOG` filters, default `info`), and the OTLP exporter
/// when an endpoint is configured. Safe to call twice (the second call installs nothing).
pub fn init_tracing(args: &TelemetryArgs, service: &'static str) -> TracingGuard {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let provider =
        args.otlp_endpoint
            .as_ref()
            .and_then(|endpoint| match otlp_provider(endpoint, service) {
                Ok(provider) => Some(provider),
                Err(error) => {
                    eprintln!("Cannot export traces to {endpoint}: {error}; going on without.");
                    None
                }
            });
    let otlp = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otlp)
        .try_init();
    TracingGuard { provider }
}

fn otlp_provider(
    endpoint: &url::Url,
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let traces = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Buckets for every `_seconds` histogram: from a millisecond (firing lateness) to minutes (runs).
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

/// The process-wide Prometheus recorder (installed once; services run in-process in tests).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What `/healthz` and `/debug/state` report.
#[derive(Default)]
pub struct Health {
    caught_up: AtomicBool,
}

impl Health {
    pub fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, Ordering::Relaxed);
    }
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct OpsState {
    service: &'static str,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    store: Option<Store>,
}

/// `/metrics`, `/healthz` and `/debug/state`.
pub fn ops_router(service: &'static str, health: Arc<Health>, store: Option<Store>) -> Router {
    let state = OpsState {
        service,
        metrics: metrics_handle(),
        health,
        store,
    };
    Router::new()
        .route("/metrics", get(render_metrics))
        .route(
            "/healthz",
            get(|State(s): State<OpsState>| async move {
                Json(serde_json::json!({"status": "ok", "caught_up": s.health.caught_up()}))
            }),
        )
        .route("/debug/state", get(debug_state))
        .with_state(state)
}

/// The metrics, with the store's size read at the moment of the scrape.
async fn render_metrics(State(s): State<OpsState>) -> String {
    if let Some(store) = &s.store {
        metrics::gauge!(crate::metrics_names::STORE_SIZE, "service" => s.service)
            .set(store.size_bytes() as f64);
    }
    s.metrics.render()
}

async fn debug_state(
    State(s): State<OpsState>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let digest = match &s.store {
        Some(store) => Some(
            store
                .digest()
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        ),
        None => None,
    };
    let size = s.store.as_ref().map(Store::size_bytes);
    Ok(Json(
        serde_json::json!({"caught_up": s.health.caught_up(), "digest": digest, "store_bytes": size}),
    ))
}

/// Binds `addr` and serves `router` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let upkeep = metrics_handle();
    Ok(tokio::spawn(async move {
        let upkeep_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "HTTP server failed.");
        }
        upkeep_task.abort();
    }))
}

/// The certificate chain and private key (PEM files) a server presents.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Serves `router` over TLS on `addr` until `shutdown` resolves, then lets requests in flight
/// finish for up to 5 s. A certificate or key that does not load, or an address that cannot be
/// listened on, is an error now, not in the spawned server.
pub async fn serve_tls(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    tls: &TlsFiles,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot load the TLS certificate {} and key {}: {e}",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let server = axum_server::from_tcp_rustls(listener, config)
        .map_err(|e| anyhow::anyhow!("cannot serve TLS on {addr}: {e}"))?
        .handle(handle);
    Ok(tokio::spawn(async move {
        if let Err(error) = server.serve(router.into_make_service()).await {
            tracing::error!(%error, "HTTPS server failed.");
        }
    }))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("Shutdown requested.");
}

/// Turns the shutdown future a service is given into a token that its tasks can share.
pub fn shutdown_token(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    token
}

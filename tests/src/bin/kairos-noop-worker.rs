//! A worker whose `noop` task type returns at once: what the benchmark harness runs, so that its
//! figures are Kairos's own cost and not a task's. Takes the flags of `kairos-worker`.

use clap::Parser;
use kairos_tests::bench::NOOP_HANDLER;
use kairos_worker::{Handlers, TaskContext};

async fn noop(_task: TaskContext) -> Result<String, String> {
    Ok(String::new())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kairos_worker::Config::parse();
    let _tracing =
        kairos_runtime::telemetry::init_tracing(&config.service.telemetry, "kairos-noop-worker");
    let handlers = Handlers::new().register(NOOP_HANDLER, noop);
    let shutdown = kairos_runtime::telemetry::shutdown_signal();
    kairos_worker::run_with_handlers(config, handlers, shutdown).await
}

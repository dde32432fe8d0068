//! A worker for pool `rust` that runs the `word-count` task type, written in Rust.
//!
//! Build and start it next to the demo stack (it takes the same flags as `kairos-worker`):
//!
//! ```sh
//! cargo run -p kairos-example-handler -- --pool rust --brokers 127.0.0.1:19092
//! kairosctl job apply -f examples/custom-handler/word-count.yaml
//! ```

use clap::Parser;
use kairos_worker::{Handlers, TaskContext};

/// Counts the words of `params.text`; fails, with a message the run history shows, without it.
async fn word_count(task: TaskContext) -> Result<String, String> {
    let text = task.params["text"]
        .as_str()
        .ok_or("params.text must be a string")?;
    let words = text.split_whitespace().count();
    Ok(format!(
        "{words} words (run {}, attempt {})",
        task.run_id, task.attempt
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kairos_worker::Config::parse();
    let _tracing =
        kairos_runtime::telemetry::init_tracing(&config.service.telemetry, "word-count-worker");
    let handlers = Handlers::new().register("word-count", word_count);
    let shutdown = kairos_runtime::telemetry::shutdown_signal();
    kairos_worker::run_with_handlers(config, handlers, shutdown).await
}

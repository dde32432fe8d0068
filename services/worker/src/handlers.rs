//! Custom task types in Rust: a worker built from this crate registers handlers by name, and jobs
//! name them with `task: {handler: {name, params}}`.
//!
//! ```no_run
//! use kairos_worker::{Handlers, TaskContext};
//!
//! # async fn start(config: kairos_worker::Config) -> anyhow::Result<()> {
//! let handlers = Handlers::new().register("greet", |task: TaskContext| async move {
//!     let name = task.params["name"].as_str().unwrap_or("world").to_string();
//!     Ok(format!("hello, {name}"))
//! });
//! kairos_worker::run_with_handlers(config, handlers, kairos_runtime::telemetry::shutdown_signal())
//!     .await
//! # }
//! ```
//!
//! A handler's `Ok` text becomes the attempt's output, its `Err` text the failure; a panic fails
//! the attempt instead of the worker. The worker enforces the job's timeout and cancellation by
//! dropping the handler's future; a handler that blocks a thread should watch
//! [`TaskContext::cancel`] instead.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kairos_core::run::RunId;
use kairos_core::{JobId, ShardAssignment, Timestamp};
use tokio_util::sync::CancellationToken;

/// What a handler is told about the attempt it runs.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub job_id: JobId,
    /// With `attempt`, the attempt's idempotency key.
    pub run_id: RunId,
    pub attempt: u32,
    pub scheduled_for: Timestamp,
    /// The job's `task.handler.params`.
    pub params: serde_json::Value,
    /// For a sharded job: which shard this attempt runs, and its parameter.
    pub shard: Option<ShardAssignment>,
    /// Fired when the attempt is cancelled, times out, or is handed back.
    pub cancel: CancellationToken,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type HandlerFn = Arc<dyn Fn(TaskContext) -> HandlerFuture + Send + Sync>;

/// The handlers a worker serves, by name.
#[derive(Clone, Default)]
pub struct Handlers {
    by_name: BTreeMap<String, HandlerFn>,
}

impl Handlers {
    pub fn new() -> Self {
        Handlers::default()
    }

    /// Registers `handler` under `name`, replacing any earlier one.
    ///
    /// # Panics
    /// If `name` could not be named by a job (see [`kairos_core::HandlerTask::valid_name`]): a
    /// programming error, caught at start-up.
    pub fn register<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        assert!(
            kairos_core::HandlerTask::valid_name(name),
            "{name:?} is not a handler name: use 1-64 characters from a-z 0-9 . _ - (not shell or http)"
        );
        let handler: HandlerFn = Arc::new(move |task| Box::pin(handler(task)));
        self.by_name.insert(name.to_string(), handler);
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<HandlerFn> {
        self.by_name.get(name).cloned()
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

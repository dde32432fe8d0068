//! Kairos's pure domain: what a job is, when it fires, what happens to a run, and what to do next.
//!
//! Everything here is deterministic and free of I/O: no Kafka, no RocksDB, no tokio, and no reading
//! of the wall clock (time is always passed in). The services convert these types to and from Avro
//! at their edges and decide what to emit by calling the pure functions in [`decide`].

pub mod audit;
pub mod calendar;
pub mod decide;
pub mod history;
pub mod job;
pub mod outcomes;
pub mod run;
pub mod schedule;
pub mod secrets;
pub mod signing;
pub mod task;
pub mod views;

pub use job::{HandlerTask, HttpTask, JobDefinition, JobId, ShellTask, TaskSpec, ValidationError};
pub use run::{
    apply, RunEvent, RunEventKind, RunId, RunState, RunStatus, SkipReason, TaskOutput,
    TransitionError, TriggerKind,
};
pub use schedule::{Dialect, DstGap, Schedule, ScheduleError, Slot};
pub use task::{CancelRequest, ShardAssignment, TaskAssigned};

/// Time is milliseconds-precise UTC everywhere in Kairos; Avro carries it as `timestamp-millis`.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Converts a timestamp to the Unix milliseconds that the wire formats carry.
pub fn to_millis(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// Converts Unix milliseconds from the wire back to a timestamp; `None` when out of chrono's range.
pub fn from_millis(ms: i64) -> Option<Timestamp> {
    chrono::DateTime::from_timestamp_millis(ms)
}

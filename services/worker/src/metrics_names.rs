//! Every metric the worker exports, in one place so dashboards can be checked against the code.

pub(crate) const TASKS: &str = "kairos_worker_tasks_total";
pub(crate) const DURATION: &str = "kairos_worker_task_duration_seconds";
pub(crate) const IN_FLIGHT: &str = "kairos_worker_in_flight_tasks";
pub(crate) const QUEUED: &str = "kairos_worker_queued_tasks";

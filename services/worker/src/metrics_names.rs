//! Every metric the worker exports, in one place so dashboards can be checked against the code.

pub(crate) const TASKS: &str = "kairos_worker_tasks_total";
pub(crate) const DURATION: &str = "kairos_worker_task_duration_seconds";
pub(crate) const IN_FLIGHT: &str = "kairos_worker_in_flight_tasks";
pub(crate) const QUEUED: &str = "kairos_worker_queued_tasks";
/// From a task's start time (its slot plus jitter) to its actual start, by `pool`.
pub(crate) const START_LATENESS: &str = "kairos_worker_start_lateness_seconds";
/// How long before its start time a task reached the worker, by `pool`: the margin the trigger's
/// `--fire-ahead` leaves over the pipeline's latency.
pub(crate) const TASK_LEAD: &str = "kairos_worker_task_lead_seconds";
/// Tasks that reached the worker after their start time, by `pool`.
pub(crate) const ARRIVED_LATE: &str = "kairos_worker_tasks_arrived_late_total";
/// Tasks left unrun, by `pool` and `reason`: `stopped` (cancelled or fenced), `already_over`
/// (redelivered, and the ledger records their attempt as over) or `running_elsewhere`
/// (redelivered while another worker ran the attempt, and left to it until it was over).
pub(crate) const SKIPPED: &str = "kairos_worker_tasks_skipped_total";
/// Tasks the worker's policy refused, by `pool` and `rule` (`task_type`, `program`, `shell`,
/// `env`, `http_scheme`, `http_host`, `http_address`).
pub(crate) const REFUSED: &str = "kairos_worker_tasks_refused_total";
/// Times this worker's loop went silent for longer than the dispatcher waits before calling it
/// lost (three heartbeat intervals), by `pool`: the process was stopped, suspended or cut off,
/// or its loop stalled. Each one makes the worker check the tasks it reads next against the
/// ledger, and may cost its attempts a retry elsewhere.
pub(crate) const SILENCES: &str = "kairos_worker_silences_total";
/// How many tasks this worker runs at once (`--max-concurrent`), by `pool`.
pub(crate) const CAPACITY: &str = "kairos_worker_capacity_tasks";

/// Sets the gauges a worker has from its start, so a dashboard can divide by capacity at once.
pub(crate) fn register(pool: &str, capacity: usize) {
    metrics::gauge!(CAPACITY, "pool" => pool.to_string()).set(capacity as f64);
    metrics::gauge!(IN_FLIGHT, "pool" => pool.to_string()).set(0.0);
    metrics::gauge!(QUEUED, "pool" => pool.to_string()).set(0.0);
    metrics::counter!(ARRIVED_LATE, "pool" => pool.to_string()).absolute(0);
    metrics::counter!(SILENCES, "pool" => pool.to_string()).absolute(0);
}

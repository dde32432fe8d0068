//! Every metric the aggregator exports, in one place so dashboards can be checked against the code.
//!
//! The ledger metrics count what happens now: events applied while a partition rebuilds are
//! history, and are not counted again.

use kairos_core::run::SkipReason;
use kairos_runtime::codec::AlertKind;

/// Runs that ended, by `outcome` (succeeded, abandoned, cancelled, skipped).
pub(crate) const RUNS: &str = "kairos_aggregator_runs_total";
/// From a run's start to its end, by `outcome`.
pub(crate) const RUN_DURATION: &str = "kairos_aggregator_run_duration_seconds";
/// Slots skipped, by `reason` (misfire, overlap, job_deleted, calendar, dst_gap).
pub(crate) const SKIPS: &str = "kairos_aggregator_skips_total";
/// Retries scheduled after a failed, timed-out or lost attempt.
pub(crate) const RETRIES: &str = "kairos_aggregator_retries_total";
/// Attempts that ran past their timeout.
pub(crate) const TIMEOUTS: &str = "kairos_aggregator_timeouts_total";
/// Ledger events that changed nothing (duplicates, stale attempts), by whether that is `expected`.
pub(crate) const UNAPPLIED_EVENTS: &str = "kairos_aggregator_unapplied_events_total";
/// Alerts raised, by `kind`.
pub(crate) const ALERTS: &str = "kairos_aggregator_alerts_total";
/// Webhook deliveries, by `outcome` (delivered, retried, failed, dropped).
pub(crate) const WEBHOOK_DELIVERIES: &str = "kairos_aggregator_webhook_deliveries_total";
/// Live workers, by `pool`.
pub(crate) const LIVE_WORKERS: &str = "kairos_aggregator_live_workers";

/// Registers the counters at zero for every label value they can take that is known up front.
pub(crate) fn register() {
    for reason in SkipReason::ALL {
        metrics::counter!(SKIPS, "reason" => reason.as_str()).absolute(0);
    }
    for kind in AlertKind::ALL {
        metrics::counter!(ALERTS, "kind" => kind.as_str()).absolute(0);
    }
    for outcome in ["delivered", "retried", "failed", "dropped"] {
        metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).absolute(0);
    }
    for expected in ["true", "false"] {
        metrics::counter!(UNAPPLIED_EVENTS, "expected" => expected).absolute(0);
    }
    metrics::counter!(RETRIES).absolute(0);
    metrics::counter!(TIMEOUTS).absolute(0);
}

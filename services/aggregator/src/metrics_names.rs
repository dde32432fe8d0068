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
/// What the fire audit found, by `kind` (slot_missed, run_stuck).
pub(crate) const AUDIT_FINDINGS: &str = "kairos_aggregator_audit_findings_total";
/// Slots the fire audit checked for a decision on the ledger.
pub(crate) const AUDIT_SLOTS_CHECKED: &str = "kairos_aggregator_audit_slots_checked_total";
/// How far behind now the fire audit has judged, on its furthest-behind partition: grows when the
/// aggregator lags the ledger or the broker does not answer.
pub(crate) const AUDIT_BEHIND: &str = "kairos_aggregator_audit_behind_seconds";
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
    for kind in [AlertKind::SlotMissed, AlertKind::RunStuck] {
        metrics::counter!(AUDIT_FINDINGS, "kind" => kind.as_str()).absolute(0);
    }
    metrics::counter!(AUDIT_SLOTS_CHECKED).absolute(0);
    metrics::counter!(RETRIES).absolute(0);
    metrics::counter!(TIMEOUTS).absolute(0);
}

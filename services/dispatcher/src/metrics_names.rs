//! Every metric the dispatcher exports, in one place so dashboards can be checked against the code.

pub(crate) const DISPATCHES: &str = "kairos_dispatcher_dispatches_total";
pub(crate) const IGNORED_EVENTS: &str = "kairos_dispatcher_ignored_events_total";
pub(crate) const IN_FLIGHT: &str = "kairos_dispatcher_in_flight_attempts";
pub(crate) const WAITING: &str = "kairos_dispatcher_waiting_runs";
pub(crate) const UNCLAIMED: &str = "kairos_dispatcher_unclaimed_attempts_total";

/// Registers the counters whose labels are known up front at zero.
pub(crate) fn register() {
    for expected in ["true", "false"] {
        metrics::counter!(IGNORED_EVENTS, "expected" => expected).absolute(0);
    }
}

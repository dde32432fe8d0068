//! Every metric the dispatcher exports, in one place so dashboards can be checked against the code.

pub(crate) const DISPATCHES: &str = "kairos_dispatcher_dispatches_total";
pub(crate) const IGNORED_EVENTS: &str = "kairos_dispatcher_ignored_events_total";
pub(crate) const IN_FLIGHT: &str = "kairos_dispatcher_in_flight_attempts";
pub(crate) const WAITING: &str = "kairos_dispatcher_waiting_runs";

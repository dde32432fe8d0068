//! Every metric the aggregator exports, in one place so dashboards can be checked against the code.

pub(crate) const RUNS: &str = "kairos_aggregator_runs_total";
pub(crate) const RUN_DURATION: &str = "kairos_aggregator_run_duration_seconds";
pub(crate) const UNAPPLIED_EVENTS: &str = "kairos_aggregator_unapplied_events_total";
pub(crate) const ALERTS: &str = "kairos_aggregator_alerts_total";

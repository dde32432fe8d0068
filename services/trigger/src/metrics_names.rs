//! Every metric the trigger exports, in one place so dashboards can be checked against the code.

use kairos_core::SkipReason;

pub(crate) const FIRES: &str = "kairos_trigger_fires_total";
pub(crate) const SKIPS: &str = "kairos_trigger_skips_total";
pub(crate) const LATENESS: &str = "kairos_trigger_fire_lateness_seconds";
pub(crate) const REBUILDS: &str = "kairos_trigger_partition_rebuilds_total";

/// Registers the counters at zero, so that a dashboard shows a flat line before the first fire.
pub(crate) fn register() {
    metrics::counter!(FIRES).absolute(0);
    for reason in [
        SkipReason::Misfire,
        SkipReason::Calendar,
        SkipReason::DstGap,
    ] {
        metrics::counter!(SKIPS, "reason" => reason.as_str()).absolute(0);
    }
    metrics::counter!(REBUILDS).absolute(0);
}

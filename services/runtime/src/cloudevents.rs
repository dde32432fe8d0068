//! CloudEvents binary-mode headers on the run ledger and the alerts, so that generic routers and
//! sinks (Knative, Kafka Connect, Benthos, Vector ...) can route and filter Kairos's records by
//! type, source and subject without decoding Avro or knowing Kairos.
//!
//! The record value stays the Avro single-object encoding; the headers only describe it. An
//! event's `ce_id` is derived from what it records, so an event re-sent after a crash carries the
//! same id and a consumer that deduplicates on (`ce_source`, `ce_id`) sees it once. Must not
//! decide anything: it describes events others decided.

use kairos_core::run::RunEvent;

use crate::codec::Alert;

/// The headers of one record: (name, value) pairs, as Kafka carries them.
pub type Headers = Vec<(&'static str, String)>;

const SPEC_VERSION: &str = "1.0";
const CONTENT_TYPE: &str = "application/avro";

/// The headers of a ledger event written by `service` (`trigger`, `dispatcher`, `worker`,
/// `operator` for runs requested through kairosctl or the API); writers get them with the rest
/// of the record from [`crate::ledger::LedgerRecord`].
pub(crate) fn run_event(event: &RunEvent, service: &str) -> Headers {
    let shard = event
        .shard
        .map_or(String::new(), |s| format!("/{}", s.index));
    let attempt = event.kind.attempt().unwrap_or_default();
    vec![
        ("ce_specversion", SPEC_VERSION.to_string()),
        ("ce_type", format!("io.kairos.run.{}", event.kind.name())),
        ("ce_source", format!("/kairos/{service}")),
        (
            "ce_id",
            format!("{}/{}/{attempt}{shard}", event.run_id, event.kind.name()),
        ),
        ("ce_time", rfc3339(event.at)),
        ("ce_subject", event.job_id.to_string()),
        ("content-type", CONTENT_TYPE.to_string()),
    ]
}

/// The headers of an alert (the aggregator raises every alert).
pub fn alert(alert: &Alert) -> Headers {
    vec![
        ("ce_specversion", SPEC_VERSION.to_string()),
        (
            "ce_type",
            format!("io.kairos.alert.{}", alert.kind.as_str()),
        ),
        ("ce_source", "/kairos/aggregator".to_string()),
        ("ce_id", alert.alert_id.to_string()),
        ("ce_time", rfc3339(alert.at)),
        ("ce_subject", alert.key().to_string()),
        ("content-type", CONTENT_TYPE.to_string()),
    ]
}

fn rfc3339(t: kairos_core::Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::run::{RunEventKind, RunId, TriggerKind};
    use kairos_core::JobId;

    #[test]
    fn a_ledger_event_is_described_for_routers_and_an_event_sent_again_keeps_its_id() {
        let job = JobId::parse("nightly").unwrap();
        let slot = "2027-01-01T02:30:00Z".parse().unwrap();
        let event = RunEvent {
            job_id: job.clone(),
            run_id: RunId::derive(&job, slot, TriggerKind::Schedule),
            scheduled_for: slot,
            at: "2027-01-01T02:30:00.125Z".parse().unwrap(),
            kind: RunEventKind::RunStarted {
                attempt: 2,
                worker_id: "w1".into(),
            },
            shard: None,
        };
        let headers = run_event(&event, "worker");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_type"), Some("io.kairos.run.RunStarted"));
        assert_eq!(get("ce_source"), Some("/kairos/worker"));
        assert_eq!(get("ce_time"), Some("2027-01-01T02:30:00.125Z"));
        assert_eq!(get("ce_subject"), Some("nightly"));
        assert_eq!(get("content-type"), Some("application/avro"));
        let mut later = event.clone();
        later.at = "2027-01-01T02:31:00Z".parse().unwrap();
        assert_eq!(
            run_event(&later, "worker")[3],
            headers[3],
            "the same event, sent again"
        );
        assert_eq!(
            get("ce_id"),
            Some(format!("{}/RunStarted/2", event.run_id).as_str())
        );
    }
}

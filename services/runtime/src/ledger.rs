//! A run-ledger record as every writer appends it: the trigger, the dispatcher, the workers, and
//! runs requested through kairosctl or the API. Keyed by job, the event Avro-encoded, with its
//! CloudEvents headers: one place, so that no writer's records differ from another's.
//! Must not decide anything: the event is decided before it gets here.

use kairos_core::run::RunEvent;

use crate::cloudevents::{self, Headers};
use crate::codec::{self, CodecError};

/// One ledger event, ready to send to the runs topic.
#[derive(Clone, Debug)]
pub struct LedgerRecord {
    /// The job id: one job's events share a partition.
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

impl LedgerRecord {
    /// The record of `event` as `service` (`trigger`, `dispatcher`, `worker`, `operator`)
    /// writes it.
    pub fn of(event: &RunEvent, service: &str) -> Result<Self, CodecError> {
        Ok(LedgerRecord {
            key: event.job_id.to_string(),
            payload: codec::encode_run_event(event)?,
            headers: cloudevents::run_event(event, service),
        })
    }
}

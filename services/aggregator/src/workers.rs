//! The worker registry: the latest heartbeat of every worker, and whether it is live, lost or
//! stopped. A live view kept in memory and read again from the compacted heartbeats topic when the
//! aggregator starts, so it is not part of the state a rebuild must reproduce.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use kairos_core::views::WorkerView;
use kairos_core::Timestamp;
use kairos_runtime::codec::WorkerHeartbeat;
use kairos_runtime::workers::Registry;

#[derive(Clone, Default)]
pub(crate) struct Workers {
    registry: Arc<RwLock<Registry>>,
}

impl Workers {
    /// Records a beat read now (see [`Registry::hear`]).
    pub(crate) fn record(&self, beat: WorkerHeartbeat) {
        self.registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .hear(beat, kairos_runtime::now());
    }

    pub(crate) fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn view(&self, now: Timestamp) -> Vec<WorkerView> {
        self.registry()
            .workers(now)
            .map(|(beat, liveness)| WorkerView {
                worker_id: beat.worker_id.clone(),
                pool: beat.pool.clone(),
                status: liveness.as_str().to_string(),
                capacity: beat.capacity,
                task_types: beat.task_types.clone(),
                in_flight: beat.in_flight.iter().map(ToString::to_string).collect(),
                heartbeat_interval_ms: u64::try_from(beat.interval.as_millis()).unwrap_or(u64::MAX),
                last_seen: beat.at,
            })
            .collect()
    }
}

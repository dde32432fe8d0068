//! A run and its history as the API serves them and `kairosctl` reads them: the public JSON of a
//! run ([`RunView`]), apart from how services store its state ([`RunState`]), and each ledger
//! event with what it did to the run, its facts typed from the event to the words that explain it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::JobId;
use crate::run::{RunId, RunState, RunStatus, ShardProgress, SkipReason, TaskOutput, TriggerKind};
use crate::Timestamp;

/// A run as the API serves it (`GET /api/v1/runs`, `/api/v1/jobs/{id}/runs`, and with its history
/// `/api/v1/runs/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    #[schema(value_type = String)]
    pub job_id: JobId,
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    #[schema(value_type = String, format = DateTime)]
    pub scheduled_for: Timestamp,
    pub trigger: TriggerKind,
    /// Offset of the job definition on the jobs topic that this run was fired from.
    pub definition_offset: Option<i64>,
    pub status: RunStatus,
    /// The current attempt; 0 until the first dispatch.
    pub attempt: u32,
    pub pool: Option<String>,
    pub worker_id: Option<String>,
    pub skip_reason: Option<SkipReason>,
    pub error: Option<String>,
    /// The rule of a worker's policy that refused the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub output: Option<TaskOutput>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub retry_due_at: Option<Timestamp>,
    /// When the current attempt was dispatched.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub dispatched_at: Option<Timestamp>,
    /// A sharded run's shards, once a worker has reported on one: `total`, `succeeded` (shard
    /// indexes) and `running` (`[[index, worker], ...]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub shards: Option<ShardProgress>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<RunState> for RunView {
    fn from(state: RunState) -> Self {
        // Every field named: a field added to the state is a decision about the API.
        let RunState {
            job_id,
            run_id,
            scheduled_for,
            trigger,
            definition_offset,
            status,
            attempt,
            pool,
            worker_id,
            skip_reason,
            error,
            refused,
            output,
            retry_due_at,
            dispatched_at,
            shards,
            created_at,
            started_at,
            finished_at,
            updated_at,
        } = state;
        RunView {
            job_id,
            run_id,
            scheduled_for,
            trigger,
            definition_offset,
            status,
            attempt,
            pool,
            worker_id,
            skip_reason,
            error,
            refused,
            output,
            retry_due_at,
            dispatched_at,
            shards,
            created_at,
            started_at,
            finished_at,
            updated_at,
        }
    }
}

/// A run with its history (`GET /api/v1/runs/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    pub history: Vec<HistoryEntry>,
    /// Why no live worker will take the dispatched run; absent when it is not waiting on one, or
    /// a live worker serves its pool and it is queued there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_worker: Option<String>,
}

/// A page of runs, newest slot first (`GET /api/v1/runs`, `/api/v1/jobs/{id}/runs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunsPage {
    /// The job, for a job's runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub runs: Vec<RunView>,
    /// Where the next page starts, when there may be one.
    pub next_cursor: Option<String>,
}

/// What a ledger event says beyond its type and attempt. Each event sets the facts it has: a
/// scheduled run its trigger, a skip its reason, a dispatch its pool, a start or timeout its
/// worker, a success its exit code, a failure its error, a retry when it is due.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<SkipReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Process exit code (shell) or response status (http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub due_at: Option<Timestamp>,
}

impl EventFacts {
    /// The facts in a word or a line, as the API's `detail` field has always given them.
    pub fn summary(&self) -> Option<String> {
        if let Some(trigger) = self.trigger {
            return Some(trigger.as_str().to_string());
        }
        if let Some(reason) = self.skip_reason {
            return Some(reason.as_str().to_string());
        }
        if let Some(due_at) = self.due_at {
            return Some(due_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        self.pool
            .clone()
            .or_else(|| self.worker_id.clone())
            .or_else(|| self.exit_code.map(|code| code.to_string()))
            .or_else(|| self.error.clone())
    }
}

/// One ledger event of a run, and what it did to the run: an entry of `GET /api/v1/runs/{id}`'s
/// `history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    /// The event's type, e.g. `RunDispatched`.
    pub event: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub attempt: Option<u32>,
    /// The event's offset on the ledger.
    pub offset: i64,
    /// `applied`, or why it changed nothing (a duplicate, a stale attempt, ...).
    pub effect: String,
    /// The facts in a word or a line ([`EventFacts::summary`]).
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub facts: EventFacts,
}

impl HistoryEntry {
    /// The entry in words, for a person reading why a run did what it did.
    pub fn explain(&self) -> String {
        let facts = &self.facts;
        let attempt = self.attempt.unwrap_or_default();
        // An entry stored before facts were kept has only its summary.
        let said = |fact: &Option<String>| {
            fact.clone()
                .or_else(|| self.detail.clone())
                .unwrap_or_else(|| "?".into())
        };
        let words = match self.event.as_str() {
            "RunScheduled" => match facts.trigger {
                Some(TriggerKind::Manual) => "triggered by hand".to_string(),
                Some(TriggerKind::Backfill) => "scheduled by a backfill".to_string(),
                _ => "fired on schedule".to_string(),
            },
            "RunSkipped" => match facts.skip_reason {
                Some(SkipReason::Misfire) => {
                    "skipped: the slot was missed while no trigger owned the job (misfire policy)"
                        .to_string()
                }
                Some(SkipReason::Overlap) => {
                    "skipped: another run of the job was active (overlap policy)".to_string()
                }
                Some(SkipReason::JobDeleted) => "skipped: the job was deleted".to_string(),
                Some(SkipReason::Calendar) => {
                    "skipped: a calendar of the job excludes that day".to_string()
                }
                Some(SkipReason::DstGap) => {
                    "skipped: the local time did not exist (DST gap) and the job skips such slots"
                        .to_string()
                }
                None => "skipped".to_string(),
            },
            "RunDispatched" => {
                format!("attempt {attempt} dispatched to pool {}", said(&facts.pool))
            }
            "RunStarted" => format!(
                "attempt {attempt} started on worker {}",
                said(&facts.worker_id)
            ),
            "RunSucceeded" => match facts
                .exit_code
                .map(|c| c.to_string())
                .or(self.detail.clone())
            {
                Some(code) => format!("attempt {attempt} succeeded (exit {code})"),
                None => format!("attempt {attempt} succeeded"),
            },
            "RunFailed" => format!("attempt {attempt} failed: {}", said(&facts.error)),
            "RunTimedOut" => format!(
                "attempt {attempt} timed out (reported by {})",
                said(&facts.worker_id)
            ),
            "RunLost" => format!("attempt {attempt} lost with its worker"),
            "RunCancelled" => format!("cancelled (attempt {attempt})"),
            "RetryScheduled" => match facts.due_at {
                Some(due) => {
                    let wait = (due - self.at).to_std().unwrap_or_default();
                    format!(
                        "retry: attempt {attempt} due in {:.1} s",
                        wait.as_secs_f64()
                    )
                }
                None => format!("retry: attempt {attempt} scheduled"),
            },
            "RunAbandoned" => {
                format!("abandoned after {attempt} attempts (retry policy exhausted)")
            }
            other => other.to_string(),
        };
        match self.effect.as_str() {
            "applied" => words,
            effect => format!("{words} [no effect: {effect}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::tests::t;
    use crate::run::{RunEventKind, TaskOutput};

    fn entry(kind: &RunEventKind, effect: &str) -> HistoryEntry {
        let facts = kind.facts();
        HistoryEntry {
            event: kind.name().to_string(),
            at: t(10),
            attempt: kind.attempt(),
            offset: 3,
            effect: effect.to_string(),
            detail: facts.summary(),
            facts,
        }
    }

    #[test]
    fn given_a_retry_then_it_is_explained_by_how_long_it_waits() {
        let retry = RunEventKind::RetryScheduled {
            attempt: 2,
            due_at: t(12) + chrono::Duration::milliseconds(500),
        };
        assert_eq!(
            entry(&retry, "applied").explain(),
            "retry: attempt 2 due in 2.5 s"
        );
    }

    #[test]
    fn given_events_then_their_facts_are_explained_and_summarised_as_the_api_always_did() {
        let dispatched = entry(
            &RunEventKind::RunDispatched {
                attempt: 1,
                pool: "batch".into(),
            },
            "applied",
        );
        assert_eq!(dispatched.detail.as_deref(), Some("batch"));
        assert_eq!(dispatched.explain(), "attempt 1 dispatched to pool batch");
        let skipped = entry(
            &RunEventKind::RunSkipped {
                reason: SkipReason::Calendar,
            },
            "applied",
        );
        assert_eq!(skipped.detail.as_deref(), Some("calendar"));
        assert!(skipped.explain().contains("calendar"));
        let succeeded = entry(
            &RunEventKind::RunSucceeded {
                attempt: 1,
                worker_id: "w1".into(),
                output: TaskOutput {
                    exit_code: Some(0),
                    ..Default::default()
                },
            },
            "applied",
        );
        assert_eq!(succeeded.detail.as_deref(), Some("0"));
        assert_eq!(succeeded.explain(), "attempt 1 succeeded (exit 0)");
    }

    #[test]
    fn given_an_event_without_effect_then_the_explanation_says_why() {
        let lost = entry(&RunEventKind::RunLost { attempt: 1 }, "duplicate");
        assert_eq!(lost.detail, None);
        assert_eq!(
            lost.explain(),
            "attempt 1 lost with its worker [no effect: duplicate]"
        );
    }

    #[test]
    fn given_an_entry_stored_before_facts_were_kept_then_it_still_reads() {
        // An entry written by an earlier release: no `facts`.
        let old: HistoryEntry = serde_json::from_str(
            r#"{"event":"RunFailed","at":"2027-01-15T08:00:00Z","attempt":1,"offset":4,"effect":"applied","detail":"exit 3"}"#,
        )
        .unwrap();
        assert_eq!(old.facts, EventFacts::default());
        assert_eq!(old.explain(), "attempt 1 failed: exit 3");
    }
}

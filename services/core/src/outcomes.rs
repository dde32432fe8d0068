//! What a job's finished runs say about the job: whether it is failing, and when that is worth an
//! alert. The aggregator keeps the counts and raises the alerts; the rule is here.

use crate::run::RunStatus;

/// How a finished run changes its job's streak of failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streak {
    /// A success ends any streak.
    Ended,
    /// An abandoned run (out of retries, or refused) extends it. `alert` is true when the streak
    /// has just reached the threshold: one `job_failing` alert per streak, not one per failure.
    Extended { failures_in_a_row: u32, alert: bool },
}

/// The job's streak after a run ended with `status`, given `failures_in_a_row` before it and
/// alerting at `alert_at` failures in a row; `None` for an outcome that says nothing about
/// whether the job works (a skipped or cancelled run) or a run not over yet.
pub fn streak_after(failures_in_a_row: u32, status: RunStatus, alert_at: u32) -> Option<Streak> {
    match status {
        RunStatus::Succeeded => Some(Streak::Ended),
        RunStatus::Abandoned => {
            let failures_in_a_row = failures_in_a_row.saturating_add(1);
            Some(Streak::Extended {
                failures_in_a_row,
                alert: failures_in_a_row == alert_at,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_failures_in_a_row_when_a_run_succeeds_then_the_streak_ends() {
        assert_eq!(
            streak_after(5, RunStatus::Succeeded, 3),
            Some(Streak::Ended)
        );
    }

    #[test]
    fn given_a_threshold_of_three_then_only_the_third_failure_in_a_row_alerts() {
        let alerts: Vec<bool> = (0..5)
            .map(
                |before| match streak_after(before, RunStatus::Abandoned, 3) {
                    Some(Streak::Extended {
                        failures_in_a_row,
                        alert,
                    }) => {
                        assert_eq!(failures_in_a_row, before + 1);
                        alert
                    }
                    other => panic!("an abandoned run extends the streak, got {other:?}"),
                },
            )
            .collect();
        assert_eq!(alerts, [false, false, true, false, false]);
    }

    #[test]
    fn given_a_skipped_or_cancelled_run_then_the_streak_is_left_alone() {
        for status in [RunStatus::Skipped, RunStatus::Cancelled, RunStatus::Started] {
            assert_eq!(streak_after(2, status, 3), None, "{status:?}");
        }
    }
}

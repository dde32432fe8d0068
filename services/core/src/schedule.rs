//! When a job fires: cron expressions in an IANA time zone, fixed intervals, and one-shot times.
//!
//! A schedule answers one question — "what is the first slot strictly after `t`?" — and every
//! other timing decision (misfires, catch-up, rebuilds) is built on it, so the answer must be a
//! pure function of the schedule and `t`. Must not read the clock.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DurationRound, TimeZone, Utc};
use chrono_tz::Tz;

use crate::Timestamp;

/// A parsed, validated schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A cron expression (6 or 7 fields with seconds; a classic 5-field expression gets `0`
    /// seconds) evaluated in `timezone`, so `0 0 9 * * *` means 09:00 local across DST changes.
    Cron {
        expr: String,
        timezone: Tz,
        parsed: Box<cron::Schedule>,
    },
    /// Every `interval`, on slots aligned to the Unix epoch so that every replica and every
    /// rebuild computes the same slots.
    Every { interval: Duration },
    /// Once, at `at`.
    At { at: Timestamp },
}

impl PartialEq for Schedule {
    /// Two cron schedules are equal when written the same in the same zone; the parsed form is
    /// derived from those two and carries no identity of its own.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Schedule::Cron {
                    expr: a,
                    timezone: za,
                    ..
                },
                Schedule::Cron {
                    expr: b,
                    timezone: zb,
                    ..
                },
            ) => a == b && za == zb,
            (Schedule::Every { interval: a }, Schedule::Every { interval: b }) => a == b,
            (Schedule::At { at: a }, Schedule::At { at: b }) => a == b,
            _ => false,
        }
    }
}

/// Why a schedule was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {reason}")]
    InvalidCron { expr: String, reason: String },
    #[error(
        "unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\" or \"UTC\")"
    )]
    UnknownTimeZone(String),
    #[error("interval must be at least 1ms and a whole number of milliseconds, got {0:?}")]
    InvalidInterval(Duration),
}

impl Schedule {
    /// Parses a cron expression in the named IANA time zone.
    pub fn cron(expr: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let timezone = parse_timezone(timezone)?;
        let normalised = normalise_cron(expr);
        let parsed =
            cron::Schedule::from_str(&normalised).map_err(|e| ScheduleError::InvalidCron {
                expr: expr.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Schedule::Cron {
            expr: expr.trim().to_string(),
            timezone,
            parsed: Box::new(parsed),
        })
    }

    /// A fixed interval; sub-millisecond parts are rejected because slots are millisecond times.
    pub fn every(interval: Duration) -> Result<Self, ScheduleError> {
        if interval.as_millis() == 0 || !interval.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(ScheduleError::InvalidInterval(interval));
        }
        Ok(Schedule::Every { interval })
    }

    /// A one-shot time, truncated to the millisecond the wire formats carry.
    pub fn at(at: Timestamp) -> Self {
        let at = at
            .duration_trunc(chrono::Duration::milliseconds(1))
            .unwrap_or(at);
        Schedule::At { at }
    }

    /// The first slot strictly after `after`, or `None` when the schedule has no more slots.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Cron {
                timezone, parsed, ..
            } => {
                let local = timezone.from_utc_datetime(&after.naive_utc());
                parsed.after(&local).next().map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every { interval } => {
                let step = i64::try_from(interval.as_millis()).ok()?;
                let ms = after.timestamp_millis();
                let next = ms.div_euclid(step).checked_add(1)?.checked_mul(step)?;
                crate::from_millis(next)
            }
            Schedule::At { at } => (*at > after).then_some(*at),
        }
    }

    /// A canonical description: equal for equal schedules, different when the slots differ.
    pub fn key(&self) -> String {
        match self {
            Schedule::Cron { expr, timezone, .. } => format!("cron {expr} {}", timezone.name()),
            Schedule::Every { interval } => format!("every {}ms", interval.as_millis()),
            Schedule::At { at } => format!("at {}", at.timestamp_millis()),
        }
    }

    /// The next `count` slots after `after`.
    pub fn upcoming(&self, after: Timestamp, count: usize) -> Vec<Timestamp> {
        std::iter::successors(self.next_after(after), |t| self.next_after(*t))
            .take(count)
            .collect()
    }
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name.trim()).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))
}

/// The `cron` crate wants seconds first; operators often write classic 5-field expressions.
fn normalise_cron(expr: &str) -> String {
    let expr = expr.trim();
    if expr.split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn every_slots_align_to_the_epoch() {
        let s = Schedule::every(Duration::from_secs(2)).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:01.500Z")),
            Some(utc("2026-01-01T00:00:02Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:02Z")),
            Some(utc("2026-01-01T00:00:04Z"))
        );
    }

    #[test]
    fn five_field_cron_gets_zero_seconds() {
        let s = Schedule::cron("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:15:00Z"))
        );
    }

    #[test]
    fn bad_cron_and_unknown_zone_are_clear_errors() {
        let err = Schedule::cron("61 * * * * *", "UTC").unwrap_err();
        assert!(matches!(err, ScheduleError::InvalidCron { .. }), "{err}");
        let err = Schedule::cron("0 * * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(err, ScheduleError::UnknownTimeZone("Mars/Olympus".into()));
        assert!(err.to_string().contains("Mars/Olympus"));
    }

    #[test]
    fn one_shot_fires_once() {
        let s = Schedule::at(utc("2026-03-01T12:00:00Z"));
        assert_eq!(
            s.next_after(utc("2026-03-01T11:00:00Z")),
            Some(utc("2026-03-01T12:00:00Z"))
        );
        assert_eq!(s.next_after(utc("2026-03-01T12:00:00Z")), None);
    }

    /// Europe/Berlin springs forward on 2026-03-29 (02:00 → 03:00): 02:30 does not exist that day,
    /// so a daily 02:30 job skips it, and 09:00 local is 08:00Z before and 07:00Z after.
    #[test]
    fn cron_follows_local_time_across_spring_forward() {
        let s = Schedule::cron("0 0 9 * * *", "Europe/Berlin").unwrap();
        let slots = s.upcoming(utc("2026-03-27T12:00:00Z"), 3);
        assert_eq!(
            slots,
            vec![
                utc("2026-03-28T08:00:00Z"),
                utc("2026-03-29T07:00:00Z"),
                utc("2026-03-30T07:00:00Z")
            ]
        );
        let s = Schedule::cron("0 30 2 * * *", "Europe/Berlin").unwrap();
        let slots = s.upcoming(utc("2026-03-28T12:00:00Z"), 2);
        assert_eq!(
            slots,
            vec![utc("2026-03-30T00:30:00Z"), utc("2026-03-31T00:30:00Z")]
        );
    }

    /// On 2026-10-25 Berlin falls back (03:00 → 02:00): 02:30 local happens twice; a daily job at
    /// 02:30 must still fire once that day, and slots stay strictly increasing.
    #[test]
    fn cron_fires_once_in_the_repeated_hour_of_fall_back() {
        let s = Schedule::cron("0 30 2 * * *", "Europe/Berlin").unwrap();
        let slots = s.upcoming(utc("2026-10-24T12:00:00Z"), 3);
        let on_the_day: Vec<_> = slots
            .iter()
            .filter(|t| {
                t.with_timezone(&chrono_tz::Europe::Berlin).date_naive()
                    == NaiveDate::from_ymd_opt(2026, 10, 25).unwrap()
            })
            .collect();
        assert_eq!(on_the_day.len(), 1, "slots: {slots:?}");
        assert!(slots.windows(2).all(|w| w[0] < w[1]));
    }

    proptest! {
        /// For any supported schedule and instant, the next slot is strictly later, and asking
        /// again from just before that slot gives the same slot (no slot is skipped or invented).
        #[test]
        fn next_after_is_strictly_later_and_stable(
            start_ms in 1_600_000_000_000i64..1_900_000_000_000i64,
            which in 0usize..4,
            step_ms in 1u64..10_000_000,
        ) {
            let schedule = match which {
                0 => Schedule::cron("0 30 2 * * *", "Europe/Berlin").unwrap(),
                1 => Schedule::cron("*/7 * * * * *", "America/New_York").unwrap(),
                2 => Schedule::cron("0 0 */3 * * *", "Australia/Lord_Howe").unwrap(),
                _ => Schedule::every(Duration::from_millis(step_ms)).unwrap(),
            };
            let start = Utc.timestamp_millis_opt(start_ms).unwrap();
            let next = schedule.next_after(start).unwrap();
            prop_assert!(next > start);
            let just_before = next - chrono::Duration::milliseconds(1);
            prop_assert_eq!(schedule.next_after(just_before.max(start)), Some(next));
        }
    }
}

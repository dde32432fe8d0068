//! Calendars: days on which a job does not run, as data (like Quartz's HolidayCalendar and
//! Temporal's schedule excludes).
//!
//! A calendar names whole local days — single dates, inclusive date ranges and weekdays — in its
//! own IANA time zone, so "no runs on 25 December in New York" holds for a job whose schedule is
//! written in UTC. A slot on an excluded day is not run; the trigger records it as skipped with
//! the reason `calendar`, so the gap in the job's history explains itself. Must not read the clock.

use chrono::{Datelike, NaiveDate, TimeZone, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::schedule::{parse_timezone, ScheduleError};
use crate::Timestamp;

/// Most exclusions (dates, ranges and weekdays together) one calendar may hold; a calendar is
/// copied into every definition that uses it.
pub const MAX_EXCLUSIONS: usize = 1000;

/// A calendar as written in a job file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    pub name: String,
    /// The zone whose local days the exclusions name; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Single days, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dates: Vec<NaiveDate>,
    /// Inclusive ranges of days.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<DateRange>,
    /// Weekdays by name: `mon`, `tuesday`, `Sat` ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weekdays: Vec<String>,
}

/// From `from` to `to`, both days included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// A validated calendar.
#[derive(Clone, Debug, PartialEq)]
pub struct Calendar {
    pub name: String,
    pub timezone: Tz,
    pub dates: Vec<NaiveDate>,
    pub ranges: Vec<DateRange>,
    pub weekdays: Vec<Weekday>,
}

/// Why a calendar was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CalendarError {
    #[error("calendar name {0:?} is not valid: use 1-100 characters from a-z A-Z 0-9 . _ -")]
    InvalidName(String),
    #[error("calendar {name:?}: {source}")]
    Zone { name: String, source: ScheduleError },
    #[error("calendar {name:?}: range {from} to {to} ends before it starts")]
    EmptyRange {
        name: String,
        from: NaiveDate,
        to: NaiveDate,
    },
    #[error("calendar {name:?}: {weekday:?} is not a weekday (use mon, tue, ... or monday, ...)")]
    InvalidWeekday { name: String, weekday: String },
    #[error("calendar {name:?} excludes nothing: give dates, ranges or weekdays")]
    Empty { name: String },
    #[error("calendar {name:?} has {count} exclusions; the limit is {MAX_EXCLUSIONS}")]
    TooLarge { name: String, count: usize },
    #[error("calendar {0:?} is listed twice")]
    Duplicate(String),
}

impl CalendarSpec {
    pub fn validate(&self) -> Result<Calendar, CalendarError> {
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.name.is_empty() || self.name.len() > 100 || !self.name.chars().all(name_ok) {
            return Err(CalendarError::InvalidName(self.name.clone()));
        }
        let name = || self.name.clone();
        if let Some(range) = self.ranges.iter().find(|r| r.to < r.from) {
            return Err(CalendarError::EmptyRange {
                name: name(),
                from: range.from,
                to: range.to,
            });
        }
        let calendar = self.read()?;
        let count = self.dates.len() + self.ranges.len() + self.weekdays.len();
        if count == 0 {
            return Err(CalendarError::Empty { name: name() });
        }
        if count > MAX_EXCLUSIONS {
            return Err(CalendarError::TooLarge {
                name: name(),
                count,
            });
        }
        Ok(calendar)
    }

    /// The calendar this spec writes down, with no rule checked: its zone and weekdays read.
    /// What [`CalendarSpec::validate`] checks besides, and what a store reads back.
    pub(crate) fn read(&self) -> Result<Calendar, CalendarError> {
        let name = || self.name.clone();
        let timezone =
            parse_timezone(self.timezone.as_deref().unwrap_or("UTC")).map_err(|source| {
                CalendarError::Zone {
                    name: name(),
                    source,
                }
            })?;
        let weekdays = self
            .weekdays
            .iter()
            .map(|w| {
                w.trim()
                    .parse::<Weekday>()
                    .map_err(|_| CalendarError::InvalidWeekday {
                        name: name(),
                        weekday: w.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Calendar {
            name: self.name.clone(),
            timezone,
            dates: self.dates.clone(),
            ranges: self.ranges.clone(),
            weekdays,
        })
    }
}

impl Calendar {
    /// Whether the local day (in the calendar's zone) of `slot` is excluded.
    pub fn excludes(&self, slot: Timestamp) -> bool {
        let day = slot.with_timezone(&self.timezone).date_naive();
        self.weekdays.contains(&day.weekday())
            || self.dates.contains(&day)
            || self.ranges.iter().any(|r| (r.from..=r.to).contains(&day))
    }

    /// The last millisecond of the local day (in the calendar's zone) that `t` falls on.
    pub fn end_of_day(&self, t: Timestamp) -> Timestamp {
        let next_day = t.with_timezone(&self.timezone).date_naive().succ_opt();
        let midnight = next_day.and_then(|d| d.and_hms_opt(0, 0, 0));
        // A day that starts in a DST gap starts at the gap's end; `earliest` skips past none.
        let start = midnight.and_then(|m| {
            self.timezone
                .from_local_datetime(&m)
                .earliest()
                .or_else(|| {
                    self.timezone
                        .from_local_datetime(&(m + chrono::Duration::hours(1)))
                        .earliest()
                })
        });
        start.map_or(t, |s| {
            s.with_timezone(&chrono::Utc) - chrono::Duration::milliseconds(1)
        })
    }

    /// The job file form that validates back to this calendar.
    pub fn to_spec(&self) -> CalendarSpec {
        CalendarSpec {
            name: self.name.clone(),
            timezone: Some(self.timezone.name().to_string()),
            dates: self.dates.clone(),
            ranges: self.ranges.clone(),
            weekdays: self
                .weekdays
                .iter()
                .map(|w| weekday_name(*w).to_string())
                .collect(),
        }
    }
}

/// The short lower-case name a weekday is written with in job files and on the wire.
pub fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn given(spec: CalendarSpec) -> Calendar {
        spec.validate().unwrap()
    }

    fn named(name: &str) -> CalendarSpec {
        CalendarSpec {
            name: name.into(),
            ..CalendarSpec::default()
        }
    }

    #[test]
    fn a_date_excludes_that_local_day_in_the_calendars_zone() {
        let christmas = given(CalendarSpec {
            timezone: Some("America/New_York".into()),
            dates: vec![date("2026-12-25")],
            ..named("holidays-us")
        });
        // 25 December 03:00Z is still the 24th in New York.
        assert!(!christmas.excludes(utc("2026-12-25T03:00:00Z")));
        assert!(christmas.excludes(utc("2026-12-25T06:00:00Z")));
        assert!(christmas.excludes(utc("2026-12-26T04:59:59Z")));
        assert!(!christmas.excludes(utc("2026-12-26T05:00:00Z")));
        assert_eq!(
            christmas.end_of_day(utc("2026-12-25T12:00:00Z")),
            utc("2026-12-26T04:59:59.999Z")
        );
    }

    #[test]
    fn a_range_excludes_both_ends_and_everything_between() {
        let freeze = given(CalendarSpec {
            ranges: vec![DateRange {
                from: date("2026-12-20"),
                to: date("2027-01-02"),
            }],
            ..named("change-freeze")
        });
        assert!(!freeze.excludes(utc("2026-12-19T23:59:59Z")));
        assert!(freeze.excludes(utc("2026-12-20T00:00:00Z")));
        assert!(freeze.excludes(utc("2026-12-31T12:00:00Z")));
        assert!(freeze.excludes(utc("2027-01-02T23:59:59Z")));
        assert!(!freeze.excludes(utc("2027-01-03T00:00:00Z")));
    }

    #[test]
    fn weekdays_exclude_every_such_day() {
        let weekend = given(CalendarSpec {
            timezone: Some("Australia/Sydney".into()),
            weekdays: vec!["sat".into(), "Sunday".into()],
            ..named("weekend")
        });
        // Friday 2026-11-27 14:00Z is Saturday 01:00 in Sydney.
        assert!(weekend.excludes(utc("2026-11-27T14:00:00Z")));
        assert!(!weekend.excludes(utc("2026-11-27T12:00:00Z")));
        assert!(!weekend.excludes(utc("2026-11-29T13:00:00Z")));
        assert_eq!(weekend.to_spec().weekdays, vec!["sat", "sun"]);
    }

    #[test]
    fn bad_calendars_are_clear_errors() {
        let err = |spec: CalendarSpec| spec.validate().unwrap_err().to_string();
        assert!(err(named("x")).contains("excludes nothing"));
        assert!(err(CalendarSpec {
            weekdays: vec!["someday".into()],
            ..named("x")
        })
        .contains("\"someday\" is not a weekday"));
        assert!(err(CalendarSpec {
            timezone: Some("Nowhere/X".into()),
            weekdays: vec!["mon".into()],
            ..named("x")
        })
        .contains("unknown time zone"));
        assert!(err(CalendarSpec {
            ranges: vec![DateRange {
                from: date("2027-01-02"),
                to: date("2027-01-01")
            }],
            ..named("x")
        })
        .contains("ends before it starts"));
        assert!(err(CalendarSpec {
            weekdays: vec!["mon".into()],
            ..named("a b")
        })
        .contains("not valid"));
    }
}

//! When a job fires: cron expressions in two dialects in an IANA time zone, fixed intervals, and
//! one-shot times, with an explicit policy for daylight-saving transitions.
//!
//! A schedule answers one question — "what is the first slot strictly after `t`?" — and every
//! other timing decision (misfires, catch-up, rebuilds) is built on it, so the answer must be a
//! pure function of the schedule and `t`. Must not read the clock.
//!
//! Cron expressions are matched by the `croner` crate against wall-clock (civil) time; turning a
//! wall-clock time into an instant is Kairos's own policy ([`DstGap`] and the rules on
//! [`CronSchedule`]), so that it is the same whichever crate matches the fields.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DurationRound, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Which cron syntax an expression is written in, chosen by its number of fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// 5 fields, as crontab(5) defines them: minute hour day-of-month month day-of-week, with
    /// day-of-week 0-7 (0 and 7 are Sunday), and a day that matches day-of-month *or*
    /// day-of-week when both are restricted. Also the `@daily`-style nicknames.
    Crontab,
    /// 6 or 7 fields, as Quartz (and XXL-JOB, ElasticJob, PowerJob) reads them: second minute hour
    /// day-of-month month day-of-week [year], with day-of-week 1-7 (1 is Sunday), `?`, `L`, `W`,
    /// `#`; a day must match both day fields when both are restricted.
    Quartz,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Crontab => "crontab",
            Dialect::Quartz => "quartz",
        }
    }

    fn field_names(self) -> &'static [&'static str] {
        match self {
            Dialect::Crontab => &["minute", "hour", "day-of-month", "month", "day-of-week"],
            Dialect::Quartz => &[
                "second",
                "minute",
                "hour",
                "day-of-month",
                "month",
                "day-of-week",
                "year",
            ],
        }
    }

    fn hour_field(self) -> usize {
        match self {
            Dialect::Crontab => 1,
            Dialect::Quartz => 2,
        }
    }

    fn day_of_month_field(self) -> usize {
        self.hour_field() + 1
    }

    fn parser(self) -> CronParser {
        // `0/10`-style steps are accepted in both dialects: Quartz defines them, and Kairos
        // accepted them in 5-field expressions before the dialects were told apart.
        match self {
            Dialect::Crontab => CronParser::builder()
                .seconds(Seconds::Disallowed)
                .year(Year::Disallowed)
                .sloppy_ranges(true)
                .build(),
            Dialect::Quartz => CronParser::builder()
                .seconds(Seconds::Required)
                .year(Year::Optional)
                .alternative_weekdays(true)
                .dom_and_dow(true)
                .sloppy_ranges(true)
                .build(),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a cron slot whose wall-clock time does not exist (the hour skipped when clocks spring
/// forward) does. Only schedules with a fixed hour field have such slots: a schedule whose hour
/// is a wildcard or a step follows elapsed time, and the skipped hour simply never comes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DstGap {
    /// Run at the first instant after the gap (cronie and croniter do the same).
    #[default]
    RunAfter,
    /// Do not run that day; the slot is recorded as skipped (`dst_gap`).
    Skip,
}

impl DstGap {
    pub fn as_str(self) -> &'static str {
        match self {
            DstGap::RunAfter => "run_after",
            DstGap::Skip => "skip",
        }
    }

    pub fn is_default(&self) -> bool {
        *self == DstGap::RunAfter
    }
}

impl FromStr for DstGap {
    type Err = String;

    /// The policy by the name job files, the wire and `--dst-gap` give it.
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "run_after" => Ok(DstGap::RunAfter),
            "skip" => Ok(DstGap::Skip),
            other => Err(format!(
                "{other:?} is not a DST gap policy: use run_after or skip"
            )),
        }
    }
}

/// How a daylight-saving transition changed a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DstAdjustment {
    /// The wall-clock time `wall` does not exist that day; the slot runs at the end of the gap.
    MovedOutOfGap { wall: NaiveDateTime },
    /// The wall-clock time `wall` does not exist that day and the job skips such slots: the slot
    /// (at the end of the gap) is recorded as skipped, not run.
    DroppedInGap { wall: NaiveDateTime },
}

impl DstAdjustment {
    /// A line for `schedule next` and the API.
    pub fn describe(&self) -> String {
        match self {
            DstAdjustment::MovedOutOfGap { wall } => format!(
                "{} does not exist (DST gap): runs at the end of the gap",
                wall.format("%H:%M:%S")
            ),
            DstAdjustment::DroppedInGap { wall } => format!(
                "{} does not exist (DST gap): skipped (dst_gap: skip)",
                wall.format("%H:%M:%S")
            ),
        }
    }
}

/// One slot of a schedule: when, and whether a DST rule moved or dropped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub at: Timestamp,
    pub dst: Option<DstAdjustment>,
}

impl Slot {
    fn regular(at: Timestamp) -> Self {
        Slot { at, dst: None }
    }

    /// A slot the job's DST policy drops: recorded, never run.
    pub fn is_dropped(&self) -> bool {
        matches!(self.dst, Some(DstAdjustment::DroppedInGap { .. }))
    }
}

/// A parsed cron expression in a time zone.
///
/// Wall-clock times become instants by these rules:
/// - a time that exists once is that instant;
/// - a time that occurs twice (clocks fall back) is one slot, at its first occurrence, unless
///   the hour field is a wildcard or a step: then the schedule follows elapsed time and both
///   occurrences are slots (`*/15 * * * *` runs every 15 minutes through the repeated hour);
/// - a time that does not exist (clocks spring forward) follows [`DstGap`], unless the hour field
///   is a wildcard or a step: then elapsed time goes on and the skipped times are no slots.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expr: String,
    dialect: Dialect,
    timezone: Tz,
    dst_gap: DstGap,
    /// Compiled when first evaluated: a definition read back from a store is read far more often
    /// for what it says than for when it fires (the dispatcher never asks). `None` only if this
    /// release cannot compile an expression an earlier one accepted.
    pattern: OnceLock<Option<croner::Cron>>,
    follows_elapsed_time: bool,
    /// The day-of-month field is `LW`, which croner 4 words as the last day of the month.
    last_weekday_of_month: bool,
}

impl CronSchedule {
    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    pub fn dst_gap(&self) -> DstGap {
        self.dst_gap
    }

    /// The expression in plain English, e.g. "At 12:00, on Monday, Tuesday, ...". Built on
    /// demand: it costs as much as parsing, and only the CLI, the API and the status page ask.
    pub fn describe(&self) -> String {
        let Some(pattern) = self.pattern() else {
            return format!("{} (not readable by this release)", self.expr);
        };
        let description = pattern.describe();
        let description = description.trim_end_matches('.');
        if self.last_weekday_of_month {
            description.replace("the last day of", "the last weekday of")
        } else {
            description.to_string()
        }
    }

    /// The schedule with its pattern not compiled yet: reads the nickname, the dialect (from the
    /// number of fields) and the fields the DST rules look at.
    fn uncompiled(expr: String, timezone: Tz, dst_gap: DstGap) -> Result<Self, String> {
        let expanded = expand_nickname(&expr)?;
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let dialect = match fields.len() {
            5 => Dialect::Crontab,
            6 | 7 => Dialect::Quartz,
            n => return Err(format!("it has {n} fields; give {FIELD_COUNTS}")),
        };
        let hour = fields[dialect.hour_field()];
        Ok(CronSchedule {
            follows_elapsed_time: hour.contains('*') || hour.contains('/'),
            last_weekday_of_month: fields[dialect.day_of_month_field()].eq_ignore_ascii_case("LW"),
            expr,
            dialect,
            timezone,
            dst_gap,
            pattern: OnceLock::new(),
        })
    }

    /// The expression compiled as its dialect reads it.
    fn compile(&self) -> Result<croner::Cron, String> {
        let expanded = expand_nickname(&self.expr)?;
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let text = match self.dialect {
            Dialect::Crontab => as_vixie_cron_reads_it(&fields),
            Dialect::Quartz => expanded.clone(),
        };
        self.dialect
            .parser()
            .parse(&text)
            .map_err(|e| diagnose(self.dialect, &self.expr, &fields, &e.to_string()))
    }

    fn pattern(&self) -> Option<&croner::Cron> {
        self.pattern.get_or_init(|| self.compile().ok()).as_ref()
    }

    fn next_after(&self, after: Timestamp) -> Option<Slot> {
        let pattern = self.pattern()?;
        let tz = self.timezone;
        let local = after.with_timezone(&tz);
        // Whole seconds: cron has no finer field, and a candidate at or before `after` is
        // filtered out below anyway.
        let wall = local.naive_local().with_nanosecond(0)?;
        let offset_now = local.offset().fix().local_minus_utc();
        // Inside the first pass of a repeated hour, the second pass of earlier wall-clock times
        // is still ahead: start the search that much earlier.
        let rewind = match tz.from_local_datetime(&wall) {
            LocalResult::Ambiguous(first, second)
                if first.offset().fix().local_minus_utc() == offset_now =>
            {
                first.offset().fix().local_minus_utc() - second.offset().fix().local_minus_utc()
            }
            _ => 0,
        };
        let mut cursor = wall - chrono::Duration::seconds(i64::from(rewind.max(0)));
        let mut best: Option<Slot> = None;
        // The earliest instant that a wall-clock time at or after `wall` can be, with the
        // offsets in force at `after` and at the slot found so far.
        let earliest_instant = |wall: NaiveDateTime, found: &Slot| {
            let offset_found = found.at.with_timezone(&tz).offset().fix().local_minus_utc();
            let widest = offset_now.max(offset_found);
            Utc.from_utc_datetime(&wall) - chrono::Duration::seconds(i64::from(widest))
        };
        loop {
            let Ok(candidate) = pattern.find_next_occurrence(&cursor, false) else {
                return best;
            };
            if let Some(found) = best {
                let earliest = earliest_instant(candidate, &found);
                if earliest > found.at || (earliest == found.at && found.dst.is_none()) {
                    return best;
                }
            }
            for slot in self.slots_at(candidate).into_iter().flatten() {
                let better = best.is_none_or(|b| {
                    slot.at < b.at || (slot.at == b.at && slot.dst.is_none() && b.dst.is_some())
                });
                if slot.at > after && better {
                    best = Some(slot);
                }
            }
            // The common case, settled without searching for another candidate: a regular slot
            // that no later wall-clock time (a second on, at least) can come before.
            if let Some(found) = best.filter(|b| b.dst.is_none()) {
                let next_second = candidate + chrono::Duration::seconds(1);
                if earliest_instant(next_second, &found) > found.at {
                    return best;
                }
            }
            cursor = candidate;
        }
    }

    /// The slots that the wall-clock time `wall` stands for (none, one, or two).
    fn slots_at(&self, wall: NaiveDateTime) -> [Option<Slot>; 2] {
        let utc = |t: chrono::DateTime<Tz>| t.with_timezone(&Utc);
        match self.timezone.from_local_datetime(&wall) {
            LocalResult::Single(t) => [Some(Slot::regular(utc(t))), None],
            LocalResult::Ambiguous(first, second) if self.follows_elapsed_time => [
                Some(Slot::regular(utc(first))),
                Some(Slot::regular(utc(second))),
            ],
            LocalResult::Ambiguous(first, _) => [Some(Slot::regular(utc(first))), None],
            LocalResult::None if self.follows_elapsed_time => [None, None],
            LocalResult::None => {
                let dst = match self.dst_gap {
                    DstGap::RunAfter => DstAdjustment::MovedOutOfGap { wall },
                    DstGap::Skip => DstAdjustment::DroppedInGap { wall },
                };
                let at = end_of_gap(self.timezone, wall);
                [at.map(|at| Slot { at, dst: Some(dst) }), None]
            }
        }
    }
}

/// The first instant after the DST gap that the wall-clock time `wall` falls into.
fn end_of_gap(tz: Tz, wall: NaiveDateTime) -> Option<Timestamp> {
    let exists = |t: NaiveDateTime| tz.from_local_datetime(&t).earliest();
    // Find a wall-clock time past the gap, then the first second of it that exists.
    let mut step = chrono::Duration::minutes(1);
    let mut past = wall + step;
    while exists(past).is_none() {
        step = step * 2;
        if step > chrono::Duration::days(3) {
            return None;
        }
        past = wall + step;
    }
    let (mut missing, mut present) = (wall, past);
    while present - missing > chrono::Duration::seconds(1) {
        let middle = missing + (present - missing) / 2;
        let middle = middle.with_nanosecond(0).unwrap_or(middle);
        if middle == missing {
            break;
        }
        if exists(middle).is_some() {
            present = middle;
        } else {
            missing = middle;
        }
    }
    exists(present).map(|t| t.with_timezone(&Utc))
}

/// A parsed, validated schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A cron expression in one of two dialects, evaluated in its time zone, so that
    /// `0 9 * * *` means 09:00 local across DST changes.
    Cron(Box<CronSchedule>),
    /// Every `interval`, on slots aligned to the Unix epoch so that every replica and every
    /// rebuild computes the same slots.
    Every { interval: Duration },
    /// Once, at `at`.
    At { at: Timestamp },
}

impl PartialEq for Schedule {
    /// Two cron schedules are equal when written the same in the same zone with the same DST
    /// policy; the parsed form is derived from those and carries no identity of its own.
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
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

/// How the parts of an expression are named in errors.
const FIELD_COUNTS: &str = "5 fields for crontab (minute hour day-of-month month day-of-week) or \
     6-7 for Quartz (second minute hour day-of-month month day-of-week [year])";

const SUNDAY_HINT: &str = "in 5-field crontab syntax 0 is Sunday; in 6-field Quartz syntax \
     Sunday is 1 or SUN (1-7 = SUN-SAT)";

impl Schedule {
    /// Parses a cron expression in the named IANA time zone, running slots in a DST gap after it.
    pub fn cron(expr: &str, timezone: &str) -> Result<Self, ScheduleError> {
        Self::cron_with(expr, timezone, DstGap::default())
    }

    /// Parses a cron expression (its dialect chosen by its field count) in the named IANA time
    /// zone, with the given policy for slots in a DST gap.
    pub fn cron_with(expr: &str, timezone: &str, dst_gap: DstGap) -> Result<Self, ScheduleError> {
        let timezone = parse_timezone(timezone)?;
        let expr = expr.trim().to_string();
        let invalid = |reason: String| ScheduleError::InvalidCron {
            expr: expr.clone(),
            reason,
        };
        let cron = CronSchedule::uncompiled(expr.clone(), timezone, dst_gap).map_err(invalid)?;
        let pattern = cron.compile().map_err(invalid)?;
        // A pattern no date satisfies (30 February) would make every lookup search for years.
        let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH.naive_utc();
        if pattern.find_next_occurrence(&epoch, true).is_err() {
            return Err(invalid(format!(
                "no date matches it ({} syntax); check the day-of-month, month and year fields",
                cron.dialect
            )));
        }
        cron.pattern.get_or_init(|| Some(pattern));
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// A cron schedule read back from a store, which holds only schedules [`Schedule::cron_with`]
    /// accepted: no rule is checked again, and the pattern is compiled when first evaluated.
    /// Fails on what this release cannot read (a time zone or nickname it does not know, a
    /// number of fields it has no dialect for).
    pub(crate) fn cron_stored(
        expr: &str,
        timezone: &str,
        dst_gap: DstGap,
    ) -> Result<Self, ScheduleError> {
        let timezone = parse_timezone(timezone)?;
        let expr = expr.trim().to_string();
        CronSchedule::uncompiled(expr.clone(), timezone, dst_gap)
            .map(|cron| Schedule::Cron(Box::new(cron)))
            .map_err(|reason| ScheduleError::InvalidCron { expr, reason })
    }

    /// Why this release cannot evaluate a schedule read back from a store: its cron pattern no
    /// longer compiles. `None` for every schedule this release validated.
    pub fn unreadable(&self) -> Option<String> {
        match self {
            Schedule::Cron(cron) if cron.pattern().is_none() => cron.compile().err(),
            _ => None,
        }
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
    /// Includes a slot the DST policy drops ([`Slot::is_dropped`]), so that it can be recorded.
    pub fn next_slot_after(&self, after: Timestamp) -> Option<Slot> {
        match self {
            Schedule::Cron(cron) => cron.next_after(after),
            Schedule::Every { interval } => {
                let step = i64::try_from(interval.as_millis()).ok()?;
                let ms = after.timestamp_millis();
                let next = ms.div_euclid(step).checked_add(1)?.checked_mul(step)?;
                crate::from_millis(next).map(Slot::regular)
            }
            Schedule::At { at } => (*at > after).then_some(Slot::regular(*at)),
        }
    }

    /// The time of the first slot strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.next_slot_after(after).map(|slot| slot.at)
    }

    /// A canonical description: equal for equal schedules, different when the slots differ.
    /// Unchanged for schedules written before DST policies existed, so their trigger state holds.
    pub fn key(&self) -> String {
        match self {
            Schedule::Cron(cron) => {
                let mut key = format!("cron {} {}", cron.expr, cron.timezone.name());
                if !cron.dst_gap.is_default() {
                    key.push_str(" dst_gap=");
                    key.push_str(cron.dst_gap.as_str());
                }
                key
            }
            Schedule::Every { interval } => format!("every {}ms", interval.as_millis()),
            Schedule::At { at } => format!("at {}", at.timestamp_millis()),
        }
    }

    /// The schedule in plain English with its dialect, as the CLI, the API and the status page
    /// show it: `At 12:00, on Monday, ... (crontab, Europe/Berlin)`.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Cron(cron) => {
                let policy = if cron.dst_gap.is_default() {
                    ""
                } else {
                    ", DST gap: skip"
                };
                format!(
                    "{} ({}, {}{policy})",
                    cron.describe(),
                    cron.dialect,
                    cron.timezone.name()
                )
            }
            Schedule::Every { interval } => format!(
                "Every {}",
                humantime_serde::re::humantime::format_duration(*interval)
            ),
            Schedule::At { at } => format!(
                "Once, at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        }
    }

    /// Every slot after `after`, in order, dropped ones included.
    pub fn slots_after(&self, after: Timestamp) -> impl Iterator<Item = Slot> + '_ {
        std::iter::successors(self.next_slot_after(after), |s| self.next_slot_after(s.at))
    }

    /// The times of the next `count` slots after `after`.
    pub fn upcoming(&self, after: Timestamp, count: usize) -> Vec<Timestamp> {
        self.slots_after(after).take(count).map(|s| s.at).collect()
    }
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name.trim()).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))
}

/// crontab(5)'s nicknames as the 5-field expressions they stand for. Expanded here, although
/// croner knows most of them, because the dialect and the DST rules read the fields.
fn expand_nickname(expr: &str) -> Result<String, String> {
    if !expr.starts_with('@') {
        return Ok(expr.to_string());
    }
    let fields = match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => return Err("@reboot has no meaning for a scheduler that is always running; give a time".into()),
        _ => {
            return Err(
                "unknown nickname; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly".into(),
            )
        }
    };
    Ok(fields.to_string())
}

/// A 5-field expression rewritten so that croner reads it as Vixie cron (and cronie) do:
/// - a day field that begins with `*` (as `*/2` does) leaves the days to the other field: the
///   day-of-month/day-of-week OR applies only when neither begins with `*` (croner's `+` makes
///   the two fields AND);
/// - `a/k` in day-of-week steps through the week 0-6 (`1/3` is Monday and Thursday, `7/5` is
///   Sunday and Friday, 7 being Sunday), not through 0-7, where 7 would add a second Sunday.
fn as_vixie_cron_reads_it(fields: &[&str]) -> String {
    let (day_of_month, day_of_week) = (fields[2], fields[4]);
    let stepped = day_of_week
        .split(',')
        .map(|part| match part.split_once('/') {
            Some((start, step)) => match start.parse::<u32>() {
                Ok(7) => format!("0-6/{step}"),
                Ok(start) if start < 7 => format!("{start}-6/{step}"),
                _ => part.to_string(),
            },
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let unrestricted = |field: &str| field.starts_with('*') || field.starts_with('?');
    let day_of_week = if unrestricted(day_of_month) || unrestricted(day_of_week) {
        format!("+{stepped}")
    } else {
        stepped
    };
    [fields[0], fields[1], day_of_month, fields[3], &day_of_week].join(" ")
}

/// Says which field of a rejected expression is wrong and where it starts, with a hint where the
/// two dialects differ. The parser's own message names no field, so each field is tried alone in
/// an otherwise all-wildcard expression.
fn diagnose(dialect: Dialect, expr: &str, fields: &[&str], parser_message: &str) -> String {
    let names = dialect.field_names();
    let wildcard = |i: usize| match (dialect, i) {
        (Dialect::Quartz, 0) => "0",
        _ => "*",
    };
    let culprit = (0..fields.len()).find(|&i| {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { fields[i] } else { wildcard(j) })
            .collect();
        dialect.parser().parse(&probe.join(" ")).is_err()
    });
    let Some(i) = culprit else {
        return format!("{parser_message} ({dialect} syntax: {FIELD_COUNTS})");
    };
    // Where each field starts; `expr` is what was parsed unless it was a nickname, and a
    // nickname's expansion is always valid.
    let starts: Vec<usize> = expr
        .char_indices()
        .filter(|&(at, c)| {
            !c.is_whitespace() && (at == 0 || expr[..at].ends_with(char::is_whitespace))
        })
        .map(|(at, _)| at)
        .collect();
    let column = starts
        .get(i)
        .map_or(String::new(), |c| format!(" at column {}", c + 1));
    let mut message = format!(
        "field {} ({}) {:?}{column} is not valid in {dialect} syntax: {parser_message}",
        i + 1,
        names[i],
        fields[i],
    );
    let is_day_of_week = names[i] == "day-of-week";
    let names_sunday_as_zero = fields[i]
        .split([',', '-', '/', '#'])
        .any(|part| part == "0" || part.starts_with("0L"));
    if dialect == Dialect::Quartz && is_day_of_week && names_sunday_as_zero {
        message.push_str(&format!(" (hint: {SUNDAY_HINT})"));
    } else if dialect == Dialect::Crontab && fields[i].contains('#') && is_day_of_week {
        message.push_str(" (hint: `n#k` counts weekdays 0-7 in crontab syntax)");
    }
    message
}

#[cfg(test)]
mod tests;

//! Given/when/then tests of the two cron dialects and of each DST rule in three zones.

use super::*;
use chrono::{Datelike, TimeZone, Weekday};
use proptest::prelude::*;

fn utc(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn given(expr: &str, timezone: &str) -> Schedule {
    Schedule::cron(expr, timezone).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

fn given_skipping_gaps(expr: &str, timezone: &str) -> Schedule {
    Schedule::cron_with(expr, timezone, DstGap::Skip).unwrap()
}

/// When asking for `count` slots after `from`, then these (time, how DST changed it).
fn slots(schedule: &Schedule, from: &str, count: usize) -> Vec<(Timestamp, Option<DstAdjustment>)> {
    schedule
        .slots_after(utc(from))
        .take(count)
        .map(|s| (s.at, s.dst))
        .collect()
}

fn regular(times: &[&str]) -> Vec<(Timestamp, Option<DstAdjustment>)> {
    times.iter().map(|t| (utc(t), None)).collect()
}

fn wall(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
}

/// A slot at `at` that stands for the non-existent local time `wall_time`, run at the gap's end.
fn moved(at: &str, wall_time: &str) -> (Timestamp, Option<DstAdjustment>) {
    (
        utc(at),
        Some(DstAdjustment::MovedOutOfGap {
            wall: wall(wall_time),
        }),
    )
}

/// The same, for a job that skips such slots.
fn dropped(at: &str, wall_time: &str) -> (Timestamp, Option<DstAdjustment>) {
    (
        utc(at),
        Some(DstAdjustment::DroppedInGap {
            wall: wall(wall_time),
        }),
    )
}

fn weekdays(schedule: &Schedule, from: &str, count: usize) -> Vec<Weekday> {
    schedule
        .upcoming(utc(from), count)
        .iter()
        .map(|t| t.weekday())
        .collect()
}

// --- The expressions the issue found wrong -------------------------------------------------

#[test]
fn crontab_weekdays_are_monday_to_friday() {
    let s = given("0 12 * * 1-5", "UTC");
    use Weekday::*;
    assert_eq!(
        weekdays(&s, "2026-11-27T13:00:00Z", 5),
        vec![Mon, Tue, Wed, Thu, Fri]
    );
    assert_eq!(
        s.next_after(utc("2026-11-27T00:00:00Z")),
        Some(utc("2026-11-27T12:00:00Z"))
    );
}

#[test]
fn crontab_sunday_is_0_and_7() {
    for expr in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "@weekly"] {
        let s = given(expr, "UTC");
        assert_eq!(
            weekdays(&s, "2026-11-27T00:00:00Z", 3),
            vec![Weekday::Sun; 3],
            "{expr}"
        );
    }
}

#[test]
fn crontab_day_of_month_or_day_of_week_when_both_are_restricted() {
    // POSIX: the 1st of each month and every Monday.
    let s = given("0 0 1 * 1", "UTC");
    assert_eq!(
        s.upcoming(utc("2026-11-27T00:00:00Z"), 3),
        vec![
            utc("2026-11-30T00:00:00Z"), // Monday
            utc("2026-12-01T00:00:00Z"), // the 1st
            utc("2026-12-07T00:00:00Z"), // Monday
        ]
    );
}

#[test]
fn quartz_last_day_nth_weekday_and_nearest_weekday() {
    let from = "2026-11-27T00:00:00Z";
    let last_day = given("0 0 12 L * ?", "UTC");
    assert_eq!(
        last_day.upcoming(utc(from), 3),
        vec![
            utc("2026-11-30T12:00:00Z"),
            utc("2026-12-31T12:00:00Z"),
            utc("2027-01-31T12:00:00Z")
        ]
    );
    // 6 is Friday in Quartz.
    let third_friday = given("0 0 12 ? * 6#3", "UTC");
    assert_eq!(
        third_friday.upcoming(utc(from), 3),
        vec![
            utc("2026-12-18T12:00:00Z"),
            utc("2027-01-15T12:00:00Z"),
            utc("2027-02-19T12:00:00Z")
        ]
    );
    // 15 May 2027 is a Saturday: the nearest weekday is Friday the 14th.
    let nearest = given("0 0 12 15W * ?", "UTC");
    assert_eq!(
        nearest.next_after(utc("2027-05-01T00:00:00Z")),
        Some(utc("2027-05-14T12:00:00Z"))
    );
    // Last weekday: 31 January 2027 is a Sunday.
    let last_weekday = given("0 0 12 LW * ?", "UTC");
    assert_eq!(
        last_weekday.next_after(utc("2027-01-01T00:00:00Z")),
        Some(utc("2027-01-29T12:00:00Z"))
    );
    // Last Friday of the month.
    let last_friday = given("0 0 12 ? * 6L", "UTC");
    assert_eq!(
        last_friday.next_after(utc("2026-12-01T00:00:00Z")),
        Some(utc("2026-12-25T12:00:00Z"))
    );
}

#[test]
fn quartz_sunday_is_1_and_the_year_field_is_optional() {
    let s = given("0 0 12 ? * 1", "UTC");
    assert_eq!(
        weekdays(&s, "2026-11-27T00:00:00Z", 2),
        vec![Weekday::Sun; 2]
    );
    let s = given("0 0 12 1 1 ? 2028", "UTC");
    assert_eq!(
        s.upcoming(utc("2026-11-27T00:00:00Z"), 2),
        vec![utc("2028-01-01T12:00:00Z")]
    );
}

#[test]
fn quartz_steps_and_seconds() {
    let s = given("15 0/20 * * * ?", "UTC");
    assert_eq!(
        s.upcoming(utc("2026-11-27T00:00:00Z"), 3),
        vec![
            utc("2026-11-27T00:00:15Z"),
            utc("2026-11-27T00:20:15Z"),
            utc("2026-11-27T00:40:15Z")
        ]
    );
}

#[test]
fn nicknames_stand_for_crontab_expressions() {
    let from = "2026-11-27T10:30:00Z";
    for (nickname, expr) in [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ] {
        let a = given(nickname, "Europe/Berlin");
        let b = given(expr, "Europe/Berlin");
        assert_eq!(
            a.upcoming(utc(from), 5),
            b.upcoming(utc(from), 5),
            "{nickname}"
        );
        let Schedule::Cron(cron) = a else {
            unreachable!()
        };
        assert_eq!(cron.dialect(), Dialect::Crontab);
    }
}

#[test]
fn the_dialect_is_chosen_by_the_field_count_and_described() {
    let crontab = given("0 12 * * 1-5", "Europe/Berlin");
    assert_eq!(
        crontab.describe(),
        "At 12:00, on Monday, Tuesday, Wednesday, Thursday, and Friday (crontab, Europe/Berlin)"
    );
    let quartz = given("0 0 12 ? * 6#3", "UTC");
    assert_eq!(
        quartz.describe(),
        "At 12:00, on the 3rd Friday of the month (quartz, UTC)"
    );
    let last_weekday = given("0 0 18 LW * ?", "Europe/Berlin");
    assert_eq!(
        last_weekday.describe(),
        "At 18:00, on the last weekday of the month (quartz, Europe/Berlin)"
    );
    let skip = given_skipping_gaps("30 2 * * *", "UTC");
    assert_eq!(skip.describe(), "At 02:30 (crontab, UTC, DST gap: skip)");
}

// --- Clear errors ------------------------------------------------------------------------------

fn error(expr: &str) -> String {
    Schedule::cron(expr, "UTC").unwrap_err().to_string()
}

#[test]
fn a_quartz_sunday_written_as_0_gets_the_dialect_hint() {
    let message = error("0 0 12 ? * 0");
    assert!(
        message.contains("field 6 (day-of-week) \"0\" at column 12"),
        "{message}"
    );
    assert!(
        message.contains("in 5-field crontab syntax 0 is Sunday"),
        "{message}"
    );
    assert!(
        message.contains("Quartz syntax Sunday is 1 or SUN"),
        "{message}"
    );
}

#[test]
fn errors_name_the_field_and_where_it_starts() {
    let message = error("0 25 * * *");
    assert!(
        message.contains("field 2 (hour) \"25\" at column 3"),
        "{message}"
    );
    assert!(message.contains("crontab syntax"), "{message}");
    let message = error("61 * * * * *");
    assert!(message.contains("field 1 (second) \"61\""), "{message}");
    let message = error("* * *");
    assert!(message.contains("it has 3 fields"), "{message}");
    assert!(message.contains("5 fields for crontab"), "{message}");
    let message = error("0 0 30 2 *");
    assert!(message.contains("no date matches it"), "{message}");
    assert!(error("@reboot").contains("@reboot"));
    assert!(error("@often").contains("unknown nickname"));
}

#[test]
fn unknown_zone_is_a_clear_error() {
    let err = Schedule::cron("0 * * * * *", "Mars/Olympus").unwrap_err();
    assert_eq!(err, ScheduleError::UnknownTimeZone("Mars/Olympus".into()));
    assert!(err.to_string().contains("Mars/Olympus"));
}

// --- DST: the hour clocks spring forward over --------------------------------------------------

/// Europe/Berlin springs forward on 2027-03-28 at 01:00Z (02:00 → 03:00 local).
#[test]
fn berlin_gap_a_fixed_time_runs_at_the_end_of_the_gap() {
    let s = given("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        slots(&s, "2027-03-27T12:00:00Z", 2),
        vec![
            moved("2027-03-28T01:00:00Z", "2027-03-28 02:30"),
            (utc("2027-03-29T00:30:00Z"), None),
        ]
    );
}

#[test]
fn berlin_gap_a_job_may_skip_it_and_the_slot_is_kept_as_dropped() {
    let s = given_skipping_gaps("30 2 * * *", "Europe/Berlin");
    let got = slots(&s, "2027-03-27T12:00:00Z", 2);
    assert_eq!(got[0], dropped("2027-03-28T01:00:00Z", "2027-03-28 02:30"));
    assert_eq!(got[1], (utc("2027-03-29T00:30:00Z"), None));
}

#[test]
fn berlin_gap_a_wildcard_hour_follows_elapsed_time() {
    let s = given("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        slots(&s, "2027-03-28T00:00:00Z", 3),
        regular(&[
            "2027-03-28T00:30:00Z",
            "2027-03-28T01:00:00Z",
            "2027-03-28T01:30:00Z"
        ])
    );
}

#[test]
fn gap_times_of_a_fixed_hour_and_a_real_slot_at_its_end_are_one_run() {
    // 02:00 and 02:30 do not exist; 03:00 does, and is the end of the gap.
    let s = given("0,30 2,3 * * *", "Europe/Berlin");
    assert_eq!(
        slots(&s, "2027-03-28T00:00:00Z", 2),
        regular(&["2027-03-28T01:00:00Z", "2027-03-28T01:30:00Z"])
    );
    let s = given_skipping_gaps("0 2,3 * * *", "Europe/Berlin");
    assert_eq!(
        slots(&s, "2027-03-28T00:00:00Z", 1),
        regular(&["2027-03-28T01:00:00Z"])
    );
}

/// Australia/Sydney springs forward on 2027-10-03 at 16:00Z the day before (02:00 → 03:00).
#[test]
fn sydney_gap_a_fixed_time_runs_at_the_end_of_the_gap() {
    let s = given("30 2 * * *", "Australia/Sydney");
    assert_eq!(
        slots(&s, "2027-10-02T00:00:00Z", 2),
        vec![
            moved("2027-10-02T16:00:00Z", "2027-10-03 02:30"),
            (utc("2027-10-03T15:30:00Z"), None),
        ]
    );
}

#[test]
fn sydney_gap_a_job_may_skip_it_and_a_wildcard_hour_follows_elapsed_time() {
    let s = given_skipping_gaps("30 2 * * *", "Australia/Sydney");
    assert_eq!(
        slots(&s, "2027-10-02T00:00:00Z", 1),
        vec![dropped("2027-10-02T16:00:00Z", "2027-10-03 02:30")]
    );
    let s = given("*/30 * * * *", "Australia/Sydney");
    assert_eq!(
        slots(&s, "2027-10-02T15:00:00Z", 3),
        regular(&[
            "2027-10-02T15:30:00Z",
            "2027-10-02T16:00:00Z",
            "2027-10-02T16:30:00Z"
        ])
    );
}

/// Australia/Lord_Howe moves by 30 minutes: on 2027-10-03 02:00 (+10:30) becomes 02:30 (+11).
#[test]
fn lord_howe_half_hour_gap() {
    let s = given("15 2 * * *", "Australia/Lord_Howe");
    assert_eq!(
        slots(&s, "2027-10-02T00:00:00Z", 2),
        vec![
            moved("2027-10-02T15:30:00Z", "2027-10-03 02:15"),
            (utc("2027-10-03T15:15:00Z"), None),
        ]
    );
    let s = given_skipping_gaps("15 2 * * *", "Australia/Lord_Howe");
    assert!(slots(&s, "2027-10-02T00:00:00Z", 1)[0]
        .1
        .is_some_and(|d| matches!(d, DstAdjustment::DroppedInGap { .. })));
    let s = given("*/15 * * * *", "Australia/Lord_Howe");
    assert_eq!(
        slots(&s, "2027-10-02T15:15:00Z", 2),
        regular(&["2027-10-02T15:30:00Z", "2027-10-02T15:45:00Z"])
    );
}

// --- DST: the hour clocks fall back over -------------------------------------------------------

/// Europe/Berlin falls back on 2027-10-31 at 01:00Z (03:00 → 02:00): 02:00-03:00 happens twice.
#[test]
fn berlin_overlap_a_fixed_time_runs_once_at_its_first_occurrence() {
    let s = given("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        slots(&s, "2027-10-30T12:00:00Z", 2),
        regular(&["2027-10-31T00:30:00Z", "2027-11-01T01:30:00Z"])
    );
    // Asked from inside the second pass, the repeated time is not run again.
    assert_eq!(
        s.next_after(utc("2027-10-31T01:10:00Z")),
        Some(utc("2027-11-01T01:30:00Z"))
    );
}

#[test]
fn berlin_overlap_a_wildcard_hour_runs_through_both_passes() {
    let s = given("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        slots(&s, "2027-10-31T00:00:00Z", 4),
        regular(&[
            "2027-10-31T00:30:00Z", // 02:30 CEST
            "2027-10-31T01:00:00Z", // 02:00 CET
            "2027-10-31T01:30:00Z", // 02:30 CET
            "2027-10-31T02:00:00Z", // 03:00 CET
        ])
    );
    let hourly = given("@hourly", "Europe/Berlin");
    assert_eq!(
        hourly.upcoming(utc("2027-10-30T23:30:00Z"), 3),
        vec![
            utc("2027-10-31T00:00:00Z"),
            utc("2027-10-31T01:00:00Z"),
            utc("2027-10-31T02:00:00Z")
        ]
    );
}

/// Australia/Sydney falls back on 2027-04-04 at 16:00Z the day before (03:00 → 02:00).
#[test]
fn sydney_overlap_a_fixed_time_runs_once() {
    let s = given("30 2 * * *", "Australia/Sydney");
    assert_eq!(
        slots(&s, "2027-04-03T00:00:00Z", 2),
        regular(&["2027-04-03T15:30:00Z", "2027-04-04T16:30:00Z"])
    );
}

#[test]
fn sydney_overlap_a_wildcard_hour_runs_through_both_passes() {
    let s = given("*/30 * * * *", "Australia/Sydney");
    assert_eq!(
        slots(&s, "2027-04-03T15:00:00Z", 4),
        regular(&[
            "2027-04-03T15:30:00Z", // 02:30 AEDT
            "2027-04-03T16:00:00Z", // 02:00 AEST
            "2027-04-03T16:30:00Z", // 02:30 AEST
            "2027-04-03T17:00:00Z", // 03:00 AEST
        ])
    );
}

/// Australia/Lord_Howe falls back 30 minutes on 2027-04-04 at 15:00Z the day before
/// (02:00 +11 → 01:30 +10:30).
#[test]
fn lord_howe_half_hour_overlap() {
    let s = given("45 1 * * *", "Australia/Lord_Howe");
    assert_eq!(
        slots(&s, "2027-04-03T00:00:00Z", 2),
        regular(&["2027-04-03T14:45:00Z", "2027-04-04T15:15:00Z"])
    );
    let s = given("*/15 * * * *", "Australia/Lord_Howe");
    assert_eq!(
        slots(&s, "2027-04-03T14:40:00Z", 4),
        regular(&[
            "2027-04-03T14:45:00Z", // 01:45 +11
            "2027-04-03T15:00:00Z", // 01:30 +10:30
            "2027-04-03T15:15:00Z", // 01:45 +10:30
            "2027-04-03T15:30:00Z", // 02:00 +10:30
        ])
    );
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
fn one_shot_fires_once() {
    let s = Schedule::at(utc("2026-03-01T12:00:00Z"));
    assert_eq!(
        s.next_after(utc("2026-03-01T11:00:00Z")),
        Some(utc("2026-03-01T12:00:00Z"))
    );
    assert_eq!(s.next_after(utc("2026-03-01T12:00:00Z")), None);
}

#[test]
fn sub_second_starts_do_not_skip_or_repeat_a_slot() {
    let s = given("* * * * * ?", "UTC");
    assert_eq!(
        s.next_after(utc("2026-01-01T00:00:00.500Z")),
        Some(utc("2026-01-01T00:00:01Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-01-01T00:00:01Z")),
        Some(utc("2026-01-01T00:00:02Z"))
    );
}

#[test]
fn the_key_is_unchanged_for_the_default_dst_policy() {
    assert_eq!(
        given("0 0 3 * * *", "Europe/Berlin").key(),
        "cron 0 0 3 * * * Europe/Berlin"
    );
    assert_eq!(
        given_skipping_gaps("0 3 * * *", "Europe/Berlin").key(),
        "cron 0 3 * * * Europe/Berlin dst_gap=skip"
    );
}

proptest! {
    /// For any schedule and instant, the next slot is strictly later, and asking again from just
    /// before that slot gives the same slot (no slot is skipped or invented).
    #[test]
    fn next_after_is_strictly_later_and_stable(
        start_ms in 1_600_000_000_000i64..1_900_000_000_000i64,
        which in 0usize..6,
        step_ms in 1u64..10_000_000,
    ) {
        let schedule = match which {
            0 => given("0 30 2 * * *", "Europe/Berlin"),
            1 => given("*/7 * * * * *", "America/New_York"),
            2 => given("0 0 */3 * * *", "Australia/Lord_Howe"),
            3 => given("*/20 1-3 * * *", "Australia/Lord_Howe"),
            4 => given_skipping_gaps("30 2 * * 0", "Europe/Berlin"),
            _ => Schedule::every(Duration::from_millis(step_ms)).unwrap(),
        };
        let start = Utc.timestamp_millis_opt(start_ms).unwrap();
        let next = schedule.next_after(start).unwrap();
        prop_assert!(next > start);
        let just_before = next - chrono::Duration::milliseconds(1);
        prop_assert_eq!(schedule.next_after(just_before.max(start)), Some(next));
    }
}

#[test]
fn a_stored_cron_schedule_compiles_its_pattern_only_when_first_evaluated() {
    // Given a schedule read back from a store
    let stored = Schedule::cron_stored("30 9 * * MON-FRI", "Europe/Berlin", DstGap::Skip).unwrap();
    let Schedule::Cron(cron) = &stored else {
        panic!("not a cron schedule: {stored:?}");
    };
    assert!(cron.pattern.get().is_none(), "compiled on reading");
    // When it is evaluated
    let slots_of_stored = slots(&stored, "2026-03-27T00:00:00Z", 3);
    // Then it compiles once, and fires as the schedule it was validated as
    assert!(cron.pattern.get().is_some_and(Option::is_some));
    let validated = given_skipping_gaps("30 9 * * MON-FRI", "Europe/Berlin");
    assert_eq!(stored, validated);
    assert_eq!(
        slots_of_stored,
        slots(&validated, "2026-03-27T00:00:00Z", 3)
    );
    assert_eq!(stored.describe(), validated.describe());
}

#[test]
fn a_stored_cron_schedule_is_not_checked_against_the_rules_again() {
    // Given an expression no date matches, which validation refuses
    assert!(Schedule::cron("0 0 30 2 *", "UTC").is_err());
    // When a store holds it anyway (accepted under earlier rules), then it reads back
    let stored = Schedule::cron_stored("0 0 30 2 *", "UTC", DstGap::default()).unwrap();
    assert_eq!(stored.key(), "cron 0 0 30 2 * UTC");
    assert_eq!(stored.unreadable(), None);
    // A pattern this release cannot compile says why when it is evaluated, and has no slots
    let uncompilable = Schedule::cron_stored("99 * * * *", "UTC", DstGap::default()).unwrap();
    let reason = uncompilable
        .unreadable()
        .expect("the pattern does not compile");
    assert!(reason.contains("minute"), "{reason}");
    assert_eq!(uncompilable.next_after(utc("2026-01-01T00:00:00Z")), None);
    // An unknown zone is not a rule but something this release cannot represent
    let err = Schedule::cron_stored("0 0 * * *", "Mars/Olympus", DstGap::default()).unwrap_err();
    assert!(err.to_string().contains("Mars/Olympus"), "{err}");
}

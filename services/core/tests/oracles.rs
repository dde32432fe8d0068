//! Kairos's cron schedules checked against independent implementations: thousands of random
//! 5-field crontab expressions against croniter (Python), and Quartz expressions with `L`, `W`,
//! `#`, `?` and years against Quartz's own `CronExpression` (Java), each over the next 50 fire
//! times in zones with and without daylight saving time.
//!
//! A divergence fails the test unless it is a deliberate policy listed, with its reason, in
//! `tests/oracles/divergences.json`. The generator is seeded, so a failure reproduces.
//!
//! Needs `KAIROS_TEST_PYTHON` (a Python with croniter) and `KAIROS_TEST_QUARTZ_CLASSPATH` (the
//! Quartz jar), which `scripts/test.sh` installs and sets.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use chrono::{Datelike, Duration, LocalResult, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use kairos_core::Schedule;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Timestamp = chrono::DateTime<Utc>;

const SLOTS: usize = 50;
const CRONTAB_CASES: usize = 3000;
const QUARTZ_CASES: usize = 1500;

const DST_ZONES: [&str; 8] = [
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Santiago",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Havana",
];
const FIXED_ZONES: [&str; 3] = ["UTC", "Asia/Kolkata", "Asia/Tokyo"];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct Case {
    expr: String,
    zone: &'static str,
    from: Timestamp,
}

/// The oracle's answer: fire times, or an error (the expression is rejected or never fires).
type Answer = Result<Vec<Timestamp>, String>;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test.sh, which installs the oracles")
    })
}

/// `tests/oracles`, found from the manifest directory cargo gives the running test (not the one
/// compiled in: a shared build cache can hold a binary built in another checkout).
fn oracle_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        )
        .join("../../tests/oracles")
}

/// Feeds every case to an oracle process at once and reads one answer line per case.
fn ask(mut command: Command, input: String, parse: impl Fn(&str) -> Answer) -> Vec<Answer> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the oracle starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("the oracle answers");
    writer.join().unwrap().expect("the oracle reads its input");
    assert!(
        output.status.success(),
        "the oracle failed: {:?}",
        output.status
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(parse)
        .collect()
}

fn croniter(cases: &[Case]) -> Vec<Answer> {
    let input: String = cases
        .iter()
        .map(|c| {
            serde_json::json!({"expr": c.expr, "tz": c.zone, "from": c.from.to_rfc3339(), "count": SLOTS})
                .to_string()
                + "\n"
        })
        .collect();
    let mut command = Command::new(env("KAIROS_TEST_PYTHON"));
    command.arg(oracle_dir().join("croniter_next.py"));
    ask(command, input, |line| {
        let answer: serde_json::Value = serde_json::from_str(line).expect("a JSON answer");
        match answer.get("times") {
            Some(times) => Ok(serde_json::from_value(times.clone()).expect("times")),
            None => Err(answer["error"].to_string()),
        }
    })
}

fn quartz(cases: &[Case]) -> Vec<Answer> {
    let input: String = cases
        .iter()
        .map(|c| format!("{}\t{}\t{}\t{SLOTS}\n", c.expr, c.zone, c.from.to_rfc3339()))
        .collect();
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(env("KAIROS_TEST_QUARTZ_CLASSPATH"))
        .arg(oracle_dir().join("QuartzNext.java"));
    ask(command, input, |line| {
        let mut parts = line.split('\t');
        match parts.next() {
            Some("OK") => Ok(parts.map(|t| t.parse().expect("an instant")).collect()),
            _ => Err(line.to_string()),
        }
    })
}

// --- Generating expressions ------------------------------------------------------------------

fn value(rng: &mut StdRng, lo: u32, hi: u32, names: Option<(&[&str], u32)>) -> String {
    let n = rng.random_range(lo..=hi);
    match names {
        Some((names, first)) if rng.random_bool(0.3) && n >= first => {
            names[((n - first) as usize) % names.len()].to_string()
        }
        _ => n.to_string(),
    }
}

/// One field: wildcard, step, value, range, stepped range or list.
fn field(rng: &mut StdRng, lo: u32, hi: u32, names: Option<(&[&str], u32)>) -> String {
    let span = hi - lo;
    match rng.random_range(0..12) {
        0..=3 => "*".into(),
        4 => format!("*/{}", rng.random_range(2..=span.max(2))),
        5 | 6 => value(rng, lo, hi, names),
        7 => {
            let a = rng.random_range(lo..hi);
            format!("{a}-{}", rng.random_range(a + 1..=hi))
        }
        8 => {
            let a = rng.random_range(lo..hi);
            let b = rng.random_range(a + 1..=hi);
            format!("{a}-{b}/{}", rng.random_range(2..=(b - a).max(2)))
        }
        9 => format!(
            "{}/{}",
            rng.random_range(lo..=hi),
            rng.random_range(2..=span.max(2))
        ),
        _ => {
            let count = rng.random_range(2..=4);
            let items: BTreeSet<u32> = (0..count).map(|_| rng.random_range(lo..=hi)).collect();
            items
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}

fn crontab_expr(rng: &mut StdRng) -> String {
    let hour = if rng.random_bool(0.3) {
        // Early-morning hours, where DST changes happen.
        rng.random_range(0..=3).to_string()
    } else {
        field(rng, 0, 23, None)
    };
    [
        field(rng, 0, 59, None),
        hour,
        field(rng, 1, 31, None),
        field(rng, 1, 12, Some((&MONTHS, 1))),
        field(rng, 0, 7, Some((&DAYS, 0))),
    ]
    .join(" ")
}

fn quartz_expr(rng: &mut StdRng) -> String {
    let second = if rng.random_bool(0.7) {
        "0".into()
    } else {
        field(rng, 0, 59, None)
    };
    let (day_of_month, day_of_week) = if rng.random_bool(0.5) {
        let dom = match rng.random_range(0..6) {
            0 => "L".into(),
            1 => "LW".into(),
            2 => format!("{}W", rng.random_range(1..=31)),
            _ => field(rng, 1, 31, None),
        };
        (dom, "?".to_string())
    } else {
        let dow = match rng.random_range(0..6) {
            0 => format!(
                "{}#{}",
                value(rng, 1, 7, Some((&DAYS, 1))),
                rng.random_range(1..=5)
            ),
            1 => format!("{}L", rng.random_range(1..=7)),
            _ => field(rng, 1, 7, Some((&DAYS, 1))),
        };
        ("?".to_string(), dow)
    };
    let mut fields = vec![
        second,
        field(rng, 0, 59, None),
        field(rng, 0, 23, None),
        day_of_month,
        field(rng, 1, 12, Some((&MONTHS, 1))),
        day_of_week,
    ];
    if rng.random_bool(0.2) {
        fields.push(match rng.random_range(0..3) {
            0 => "*".into(),
            1 => rng.random_range(2026..=2031).to_string(),
            _ => format!("2026-{}", rng.random_range(2027..=2035)),
        });
    }
    fields.join(" ")
}

/// The UTC offset of `zone` at `t`, in seconds.
fn offset(zone: Tz, t: Timestamp) -> i32 {
    zone.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

/// Whether `zone` changes its offset within `hours` of `t`.
fn near_transition(zone: Tz, t: Timestamp, hours: i64) -> bool {
    let around = Duration::hours(hours);
    offset(zone, t - around) != offset(zone, t + around)
        || offset(zone, t - around) != offset(zone, t)
}

/// A start time: anywhere in 2026-2029, or within a few hours before one of the zone's DST changes.
fn start(rng: &mut StdRng, zone: Tz) -> Timestamp {
    let anywhere = Utc
        .timestamp_opt(rng.random_range(1_767_225_600..1_893_456_000), 0)
        .unwrap();
    if rng.random_bool(0.5) {
        let mut t = anywhere;
        let first = offset(zone, t);
        for _ in 0..(400 * 24) {
            t += Duration::hours(1);
            if offset(zone, t) != first {
                return t - Duration::minutes(rng.random_range(1..=360));
            }
        }
    }
    anywhere
}

fn cases(
    rng: &mut StdRng,
    count: usize,
    zones: &[&'static str],
    expr: fn(&mut StdRng) -> String,
) -> Vec<Case> {
    (0..count)
        .map(|_| {
            let zone = zones[rng.random_range(0..zones.len())];
            let from = start(rng, zone.parse().unwrap());
            Case {
                expr: expr(rng),
                zone,
                from,
            }
        })
        .collect()
}

// --- Comparing -------------------------------------------------------------------------------

/// The deliberate divergences, by rule id, with their reasons.
fn fixture() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(oracle_dir().join("divergences.json")).expect("fixture");
    let rules: Vec<serde_json::Value> = serde_json::from_str(&text).expect("fixture is JSON");
    rules
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

struct Tally {
    oracle: &'static str,
    agreed: usize,
    both_rejected: usize,
    crossing_dst: usize,
    by_rule: BTreeMap<&'static str, usize>,
    unexplained: Vec<String>,
}

/// Compares Kairos's slots with the oracle's up to the earlier of the two last times (each list
/// is cut at 50 slots), explaining each difference by a rule or recording it as unexplained.
fn compare(
    oracle: &'static str,
    cases: &[Case],
    answers: &[Answer],
    explain: impl Fn(&Case, Timestamp, bool) -> Option<&'static str>,
) -> Tally {
    assert_eq!(cases.len(), answers.len(), "{oracle} answered every case");
    let mut tally = Tally {
        oracle,
        agreed: 0,
        both_rejected: 0,
        crossing_dst: 0,
        by_rule: BTreeMap::new(),
        unexplained: vec![],
    };
    for (case, answer) in cases.iter().zip(answers) {
        let ours = Schedule::cron(&case.expr, case.zone).map(|s| s.upcoming(case.from, SLOTS));
        let (ours, theirs) = match (ours, answer) {
            (Ok(ours), Ok(theirs)) => (ours, theirs),
            // Kairos rejects an expression that no date matches; an oracle may accept it and
            // find no time: both mean the job never fires.
            (Err(_), Err(_)) | (Err(_), Ok(_))
                if answer.as_ref().is_ok_and(Vec::is_empty) || answer.is_err() =>
            {
                tally.both_rejected += 1;
                continue;
            }
            (ours, theirs) => {
                tally.unexplained.push(format!(
                    "{:?} in {} from {}: Kairos {:?}, {oracle} {:?}",
                    case.expr,
                    case.zone,
                    case.from,
                    ours.map(|t| t.len()).map_err(|e| e.to_string()),
                    theirs.as_ref().map(Vec::len)
                ));
                continue;
            }
        };
        let zone: Tz = case.zone.parse().unwrap();
        if let Some(last) = ours.last() {
            if offset(zone, case.from) != offset(zone, *last) || near_transition(zone, case.from, 6)
            {
                tally.crossing_dst += 1;
            }
        }
        let horizon = match (ours.last(), theirs.last()) {
            (Some(a), Some(b)) if ours.len() == SLOTS && theirs.len() == SLOTS => *a.min(b),
            (Some(a), _) if ours.len() == SLOTS => *a,
            (_, Some(b)) if theirs.len() == SLOTS => *b,
            _ => Timestamp::MAX_UTC,
        };
        let ours: BTreeSet<_> = ours.into_iter().filter(|t| *t <= horizon).collect();
        let theirs: BTreeSet<_> = theirs.iter().copied().filter(|t| *t <= horizon).collect();
        if ours == theirs {
            tally.agreed += 1;
            continue;
        }
        let differences = theirs
            .difference(&ours)
            .map(|t| (*t, true))
            .chain(ours.difference(&theirs).map(|t| (*t, false)));
        let mut rules = BTreeSet::new();
        for (t, only_theirs) in differences {
            let rule = if t.year() >= 2100 {
                Some("time_zone_table_ends_in_2099")
            } else {
                explain(case, t, only_theirs)
            };
            match rule {
                Some(rule) => {
                    rules.insert(rule);
                }
                None => {
                    tally.unexplained.push(format!(
                        "{:?} in {} from {}: {t} only in {}",
                        case.expr,
                        case.zone,
                        case.from,
                        if only_theirs { oracle } else { "Kairos" }
                    ));
                    break;
                }
            }
        }
        for rule in rules {
            *tally.by_rule.entry(rule).or_default() += 1;
        }
    }
    tally
}

fn report(tally: &Tally, total: usize, fixture: &BTreeMap<String, String>) {
    println!(
        "{}: {total} expressions, {} agree on all 50 slots, {} rejected by both, {} cross a DST change",
        tally.oracle, tally.agreed, tally.both_rejected, tally.crossing_dst
    );
    for (rule, count) in &tally.by_rule {
        let reason = fixture.get(*rule).unwrap_or_else(|| {
            panic!("rule {rule} is not listed in tests/oracles/divergences.json")
        });
        println!("  {count} differ by the deliberate rule {rule}: {reason}");
    }
    assert!(
        tally.unexplained.is_empty(),
        "{} expressions differ from {} without a listed reason; the first ones:\n{}",
        tally.unexplained.len(),
        tally.oracle,
        tally
            .unexplained
            .iter()
            .take(100)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        tally.agreed >= total / 2,
        "only {} of {total} expressions agree with {}",
        tally.agreed,
        tally.oracle
    );
    assert!(
        tally.crossing_dst >= total / 5,
        "only {} of {total} cases cross a DST change; the comparison would not test the DST rules",
        tally.crossing_dst
    );
}

/// The hour field of an expression, by dialect.
fn hour_field(expr: &str) -> &str {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() == 5 {
        fields[1]
    } else {
        fields[2]
    }
}

/// A time that is the second occurrence of a wall-clock time the clocks fell back over.
fn is_second_occurrence(zone: Tz, t: Timestamp) -> bool {
    let wall = t.with_timezone(&zone).naive_local();
    matches!(zone.from_local_datetime(&wall), LocalResult::Ambiguous(first, _) if first.with_timezone(&Utc) != t)
}

/// The first instant after clocks sprang forward.
fn is_end_of_gap(zone: Tz, t: Timestamp) -> bool {
    offset(zone, t - Duration::seconds(1)) < offset(zone, t)
}

#[test]
fn crontab_expressions_agree_with_croniter() {
    let mut rng = StdRng::seed_from_u64(0x6b61_6972_6f73);
    let mut zones = DST_ZONES.to_vec();
    zones.extend(FIXED_ZONES);
    let cases = cases(&mut rng, CRONTAB_CASES, &zones, crontab_expr);
    let answers = croniter(&cases);
    let tally = compare("croniter", &cases, &answers, |case, t, only_croniter| {
        let zone: Tz = case.zone.parse().unwrap();
        let hour = hour_field(&case.expr);
        let fixed_hour = !hour.contains('*') && !hour.contains('/');
        if only_croniter && fixed_hour && is_second_occurrence(zone, t) {
            return Some("croniter_repeats_fixed_time_in_repeated_hour");
        }
        (only_croniter && !fixed_hour && is_end_of_gap(zone, t))
            .then_some("croniter_moves_gap_time_of_elapsed_hour")
    });
    report(&tally, cases.len(), &fixture());
}

#[test]
fn quartz_expressions_agree_with_quartz() {
    let mut rng = StdRng::seed_from_u64(0x7175_6172_747a);
    let mut zones = FIXED_ZONES.to_vec();
    zones.extend(DST_ZONES);
    let cases = cases(&mut rng, QUARTZ_CASES, &zones, quartz_expr);
    let answers = quartz(&cases);
    let tally = compare("Quartz", &cases, &answers, |case, t, only_quartz| {
        let zone: Tz = case.zone.parse().unwrap();
        if near_transition(zone, t, 26) {
            return Some("quartz_dst_transitions");
        }
        let day_of_month = case.expr.split_whitespace().nth(3).unwrap_or_default();
        let nearest_to = day_of_month
            .strip_suffix('W')
            .and_then(|n| n.parse::<u32>().ok());
        let local = t.with_timezone(&zone).date_naive();
        let month_length = (28..=31)
            .rev()
            .find(|d| local.with_day(*d).is_some())
            .unwrap_or(28);
        (only_quartz && nearest_to.is_some_and(|n| n > month_length))
            .then_some("quartz_nearest_weekday_past_month_end")
    });
    report(&tally, cases.len(), &fixture());
}

//! Schedules end to end: a slot that a calendar excludes is recorded on the ledger as skipped
//! (`calendar`) and never runs, a job with several schedules fires at each of their slots once,
//! and the API shows what a schedule means.

use std::collections::BTreeSet;
use std::time::Duration;

use kairos_core::calendar::{CalendarSpec, DateRange};
use kairos_core::job::ScheduleSpec;
use kairos_core::run::{RunEventKind, SkipReason, TriggerKind};
use kairos_core::Timestamp;
use kairos_tests::{events_of, get_json, shell_job, stop_all, wait_for, Stack};

/// A calendar that excludes today and tomorrow (UTC), so that a test running across midnight
/// still sees only excluded slots.
fn today_and_tomorrow() -> CalendarSpec {
    let today = chrono::Utc::now().date_naive();
    CalendarSpec {
        name: "freeze".into(),
        ranges: vec![DateRange {
            from: today,
            to: today.succ_opt().unwrap(),
        }],
        ..CalendarSpec::default()
    }
}

/// The slots of a job's ledger that were scheduled by its schedule, and those skipped, by reason.
fn decided(stack: &Stack, job: &str) -> (Vec<Timestamp>, Vec<(Timestamp, SkipReason)>) {
    let ledger = stack.ledger();
    let mut ran = vec![];
    let mut skipped = vec![];
    for event in events_of(&ledger, job) {
        match event.kind {
            RunEventKind::RunScheduled {
                trigger: TriggerKind::Schedule,
                ..
            } => ran.push(event.scheduled_for),
            RunEventKind::RunSkipped { reason } => skipped.push((event.scheduled_for, reason)),
            _ => {}
        }
    }
    (ran, skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calendar_excluded_slots_are_recorded_as_skipped_and_several_schedules_fire_once_each() {
    let stack = Stack::new(3).await;
    let services = stack.start_pipeline().await;

    let mut frozen = shell_job("frozen", "1s", "echo should-not-run");
    frozen.calendars = vec![today_and_tomorrow()];
    stack.apply_job(frozen).await;

    // Every 2 s and every 3 s: slots at multiples of 2 and 3 s, a multiple of 6 s being one run.
    let mut twice = shell_job("two-schedules", "2s", "true");
    twice.more_schedules = vec![ScheduleSpec {
        every: Some(Duration::from_secs(3)),
        ..ScheduleSpec::default()
    }];
    // A calendar that excludes another day does not get in the way.
    twice.calendars = vec![CalendarSpec {
        name: "long-ago".into(),
        dates: vec!["2001-01-01".parse().unwrap()],
        ..CalendarSpec::default()
    }];
    stack.apply_job(twice).await;

    let skipped = wait_for(
        "five slots of the frozen job recorded as skipped by its calendar",
        Duration::from_secs(60),
        || async {
            let (ran, skipped) = decided(&stack, "frozen");
            assert!(
                ran.is_empty(),
                "a calendar-excluded slot was scheduled: {ran:?}"
            );
            (skipped.len() >= 5).then_some(skipped)
        },
    )
    .await;
    assert!(
        skipped
            .iter()
            .all(|(_, reason)| *reason == SkipReason::Calendar),
        "{skipped:?}"
    );
    let slots: BTreeSet<_> = skipped.iter().map(|(slot, _)| *slot).collect();
    assert_eq!(
        slots.len(),
        skipped.len(),
        "a slot was decided twice: {skipped:?}"
    );

    let ran = wait_for(
        "the two-schedule job to fire over 12 seconds",
        Duration::from_secs(60),
        || async {
            let (ran, _) = decided(&stack, "two-schedules");
            let first = *ran.first()?;
            (*ran.last()? - first >= chrono::Duration::seconds(12)).then_some(ran)
        },
    )
    .await;
    let unique: BTreeSet<_> = ran.iter().copied().collect();
    assert_eq!(unique.len(), ran.len(), "a slot fired twice: {ran:?}");
    let (first, last) = (ran[0], *ran.last().unwrap());
    let expected: BTreeSet<Timestamp> = (first.timestamp()..=last.timestamp())
        .filter(|s| s % 2 == 0 || s % 3 == 0)
        .map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap())
        .collect();
    assert_eq!(unique, expected, "slots of either schedule, each once");

    // The API says what the schedule means and lists no fire time on an excluded day.
    let api = services[3].http_addr.unwrap();
    let url = format!("http://{api}/api/v1/jobs/frozen");
    let frozen = wait_for(
        "the aggregator to know the frozen job",
        Duration::from_secs(30),
        || get_json(&url),
    )
    .await;
    assert_eq!(
        frozen["schedule_description"], "Every 1s; except on days in freeze",
        "{frozen}"
    );
    let tomorrow_end = chrono::Utc::now().date_naive().succ_opt().unwrap();
    let next = frozen["next_fire_times"].as_array().unwrap();
    assert_eq!(next.len(), 5, "{frozen}");
    for t in next {
        let t: Timestamp = t.as_str().unwrap().parse().unwrap();
        assert!(t.date_naive() > tomorrow_end, "{t} is on an excluded day");
    }
    stop_all(services).await;
}

/// `kairosctl schedule next`, as an operator runs it: the dialect, the meaning, and every slot a
/// DST rule moved or dropped marked; a Quartz Sunday written as 0 gets the dialect hint.
#[test]
fn schedule_next_shows_the_dialect_the_meaning_and_what_dst_does() {
    let bin = std::env::var("KAIROS_TEST_BIN_DIR")
        .expect("KAIROS_TEST_BIN_DIR is not set: run scripts/test.sh");
    let kairosctl = |args: &[&str]| {
        std::process::Command::new(format!("{bin}/kairosctl"))
            .args(args)
            .output()
            .expect("kairosctl runs")
    };
    let next = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--json",
            "schedule",
            "next",
            "30 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--from",
            "2027-03-27T12:00:00Z",
            "--count",
            "2",
        ];
        args.extend_from_slice(extra);
        let out = kairosctl(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };

    // Europe/Berlin springs forward on 2027-03-28: 02:30 does not exist that day.
    let moved = next(&[]);
    assert_eq!(moved["dialect"], "crontab");
    assert_eq!(moved["description"], "At 02:30 (crontab, Europe/Berlin)");
    assert_eq!(moved["slots"][0]["at"], "2027-03-28T01:00:00Z");
    assert_eq!(moved["slots"][0]["runs"], true);
    assert!(
        moved["slots"][0]["dst"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{moved}"
    );
    assert_eq!(moved["slots"][1]["dst"], serde_json::Value::Null);

    let skipped = next(&["--dst-gap", "skip"]);
    assert_eq!(skipped["slots"][0]["runs"], false);
    assert_eq!(
        skipped["next_fire_times"],
        serde_json::json!(["2027-03-29T00:30:00Z"])
    );

    let out = kairosctl(&["schedule", "next", "0 0 12 ? * 0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("field 6 (day-of-week)"), "{stderr}");
    assert!(
        stderr.contains("in 5-field crontab syntax 0 is Sunday"),
        "{stderr}"
    );
}

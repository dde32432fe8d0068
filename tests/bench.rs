//! The benchmark harness's smoke form, run by `scripts/test.sh` so that the harness cannot rot.
//! Its figures are not judged (performance is never a timed assertion here); what is checked is
//! that every scenario ran to the end and saw all the work it offered done.

use kairos_tests::bench::{self, BenchConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_benchmark_harness_runs_every_scenario_and_sees_all_its_work_done() {
    let nisshi = std::env::var("KAIROS_NISSHI").unwrap_or_else(|_| "nisshi".into());
    let config = BenchConfig::smoke(nisshi.into());
    let report = bench::run(config.clone(), "test".into(), "debug".into())
        .await
        .expect("the smoke benchmark");
    let markdown = report.to_markdown();
    println!("{markdown}");

    let ceiling = report.ceiling.as_ref().expect("the ceiling was measured");
    assert_eq!(ceiling.messages, config.ceiling_messages);
    assert!(ceiling.messages_per_sec > 0.0);

    let throughput = report.throughput.as_ref().expect("throughput was measured");
    let first = &throughput.levels[0];
    assert_eq!(
        first.completed, first.runs,
        "every run offered at the lowest load must succeed: {first:?}"
    );
    assert!(
        first.messages_per_sec > first.runs_per_sec,
        "each run moves several messages"
    );

    let precision = report.precision.first().expect("precision was measured");
    assert_eq!(
        (precision.not_fired, precision.not_started),
        (0, 0),
        "{precision:?}"
    );
    assert_eq!(precision.to_task_start.count, precision.jobs);

    let scale = report.scale.as_ref().expect("scale was measured");
    assert_eq!(scale.jobs, config.scale_jobs);
    assert!(scale.peak_rss_mib > 0.0, "the trigger's peak RSS was read");
    assert_eq!(
        scale.not_fired, 0,
        "every slot after the rebuild must fire: {scale:?}"
    );

    let recovery = report.recovery.as_ref().expect("recovery was measured");
    let restarted: Vec<&str> = recovery
        .restart_to_caught_up_secs
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(restarted, ["aggregator", "dispatcher", "trigger", "worker"]);

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    for row in [
        "Broker ceiling",
        "Throughput",
        "task start",
        "peak RSS",
        "kill -9",
    ] {
        assert!(
            markdown.contains(row),
            "the table lacks {row:?}:\n{markdown}"
        );
    }
}

//! The short form of the fault-injection suite, run by `scripts/test.sh`: 40 s of load
//! with a fault every few seconds (a service instance killed or stopped, a worker cut off, one
//! joining or leaving) and the broker restarted once; nothing may be lost, duplicated, left
//! unfinished, left unexecuted, executed outside the schedule, or rebuilt differently.
//! `scripts/chaos.sh` runs the long form.

use std::time::Duration;

use kairos_tests::chaos::{self, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_services_and_restarting_the_broker_loses_and_duplicates_nothing() {
    let seed = rand::random();
    println!("chaos seed {seed}");
    let config = ChaosConfig {
        jobs: 6,
        load: Duration::from_secs(40),
        pause: (Duration::from_secs(1), Duration::from_secs(3)),
        partitions: 4,
        seed,
        nisshi: std::env::var("KAIROS_NISSHI")
            .unwrap_or_else(|_| "nisshi".into())
            .into(),
    };
    let report = chaos::run(config)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the chaos run failed: {e:#}"));
    println!("{report}");
    assert!(report.passed(), "seed {seed}:\n{report}");
    assert_eq!(report.broker_restarts, 1);
    let faults = report.kills.values().sum::<usize>() + report.graceful.values().sum::<usize>();
    assert!(faults >= 3, "too few faults to mean anything: {report}");
}

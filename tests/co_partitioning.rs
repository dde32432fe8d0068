//! Services refuse to start on topics that are not co-partitioned, naming the topics.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_runtime::kafka::TopicAdmin;
use kairos_runtime::KafkaArgs;
use kairos_tests::{brokers, free_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_refuses_mismatched_partition_counts_and_names_the_topics() {
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let kafka = KafkaArgs::new(brokers(), &prefix);
    let topics = kafka.topics();
    let admin = TopicAdmin::new(&kafka).unwrap();
    for (name, partitions) in [
        (topics.jobs(), 3),
        (topics.runs(), 2),
        (topics.trigger_state(), 3),
        (topics.tasks("default"), 3),
        (topics.control(), 3),
    ] {
        admin
            .ensure_topic(&name, partitions, &BTreeMap::new())
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let within = Duration::from_secs(30);
    let pending = std::future::pending::<()>;
    let results = [
        (
            "trigger",
            tokio::time::timeout(
                within,
                kairos_trigger::run(
                    kairos_trigger::Config::new(kafka.clone(), dir.path().join("t"), free_addr()),
                    pending(),
                ),
            )
            .await,
        ),
        (
            "dispatcher",
            tokio::time::timeout(
                within,
                kairos_dispatcher::run(
                    kairos_dispatcher::Config::new(
                        kafka.clone(),
                        dir.path().join("d"),
                        free_addr(),
                    ),
                    pending(),
                ),
            )
            .await,
        ),
        (
            "worker",
            tokio::time::timeout(
                within,
                kairos_worker::run(
                    kairos_worker::Config {
                        allow_unsigned: true,
                        ..kairos_worker::Config::new(kafka.clone(), free_addr())
                    },
                    pending(),
                ),
            )
            .await,
        ),
        (
            "aggregator",
            tokio::time::timeout(
                within,
                kairos_aggregator::run(
                    kairos_aggregator::Config::new(
                        kafka.clone(),
                        dir.path().join("a"),
                        free_addr(),
                        free_addr(),
                    ),
                    pending(),
                ),
            )
            .await,
        ),
    ];
    for (service, result) in results {
        let error = result
            .unwrap_or_else(|_| panic!("{service} started on mismatched topics"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not co-partitioned"), "{service}: {error}");
        assert!(
            error.contains(&format!("{} has 2 partitions", topics.runs())),
            "{service}: {error}"
        );
        assert!(error.contains(" has 3 partitions"), "{service}: {error}");
    }

    // A missing topic is named, with the command that creates it.
    let empty = KafkaArgs::new(brokers(), format!("t{}", uuid::Uuid::new_v4().simple()));
    let config = kairos_trigger::Config::new(empty.clone(), dir.path().join("t2"), free_addr());
    let error = kairos_trigger::run(config, pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&empty.topics().jobs()) && error.contains("kairosctl topics apply"),
        "{error}"
    );
}

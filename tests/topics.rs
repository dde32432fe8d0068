//! `topics apply` creates what is missing, changes nothing the second time, and reports drift.

use std::collections::BTreeMap;

use kairos_runtime::kafka::{apply_topics, partition_counts, TopicAdmin, TopicSet};
use kairos_runtime::KafkaArgs;
use kairos_tests::brokers;

#[tokio::test(flavor = "multi_thread")]
async fn applying_the_topic_set_is_idempotent_and_reports_drift() {
    let kafka = KafkaArgs::new(brokers(), format!("t{}", uuid::Uuid::new_v4().simple()));
    let topics = kafka.topics();
    // An existing installation whose ledger has the wrong partition count.
    TopicAdmin::new(&kafka)
        .unwrap()
        .ensure_topic(&topics.runs(), 2, &BTreeMap::new())
        .await
        .unwrap();
    let mut set = TopicSet::shipped();
    set.partitions = 3;

    let first = apply_topics(&kafka, &set).await.unwrap();
    assert_eq!(first.created.len(), set.topics.len() - 1, "{first:?}");
    assert_eq!(
        first.drift,
        [format!(
            "{}: has 2 partitions, the topic set says 3",
            topics.runs()
        )]
    );
    let counts = partition_counts(&kafka).unwrap();
    assert_eq!(counts[&topics.jobs()], 3);
    assert_eq!(
        counts[&topics.runs()],
        2,
        "apply never alters an existing topic"
    );

    let second = apply_topics(&kafka, &set).await.unwrap();
    assert!(second.created.is_empty(), "{second:?}");
    assert_eq!(second.unchanged.len(), set.topics.len());
    assert_eq!(second.drift, first.drift);
}

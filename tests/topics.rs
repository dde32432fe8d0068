//! `topics apply` creates what is missing, changes nothing the second time, and reports drift. A
//! topic deleted and created again under a running producer does not stop it.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_runtime::kafka::{
    apply_topics, partition_counts, ReliableProducer, TopicAdmin, TopicSet,
};
use kairos_runtime::KafkaArgs;
use kairos_tests::{brokers, wait_for};

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

/// An idempotent producer whose sequence numbers the broker no longer knows fails for good
/// (librdkafka's fatal error), and every later send fails at once: a service retrying it would
/// look alive and send nothing. Deleting a topic and creating it again under a running producer
/// does that on a real broker. Given a producer that has written to a topic, when the topic is
/// created again and the producer sends to it, then the record is delivered by a new producer.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_whose_topic_was_created_again_is_replaced_and_delivers() {
    let kafka = KafkaArgs::new(brokers(), format!("t{}", uuid::Uuid::new_v4().simple()));
    let admin = TopicAdmin::new(&kafka).unwrap();
    let topic = kafka.topics().control();
    admin
        .ensure_topic(&topic, 1, &BTreeMap::new())
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let producer = ReliableProducer::new(kafka.producer().unwrap(), shutdown.clone(), "test");
    for n in 0..3 {
        producer.send(&topic, "job", Some(&[n])).await.unwrap();
    }

    let deleted = kafka
        .admin()
        .unwrap()
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    wait_for("the topic to be gone", Duration::from_secs(30), || async {
        let counts = admin.partition_counts().await.ok()?;
        (!counts.contains_key(&topic)).then_some(())
    })
    .await;
    assert!(admin
        .ensure_topic(&topic, 1, &BTreeMap::new())
        .await
        .unwrap());

    let delivered = tokio::time::timeout(
        Duration::from_secs(60),
        producer.send(&topic, "job", Some(b"after")),
    )
    .await
    .expect("the record is delivered within a minute, not retried on a dead producer")
    .unwrap();
    assert_eq!(
        delivered.offset, 0,
        "the first record of the topic created again"
    );
    shutdown.cancel();
}

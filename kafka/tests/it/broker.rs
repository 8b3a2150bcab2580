//! Publishing, sources and the salt topic against Tansu, and faults against librdkafka's
//! mock cluster.

use std::time::Duration;

use bytes::Bytes;
use gallop_broker::{LogRange, OutboundMessage, PublishError, Publisher, SaltStore, Source, SourceEvent};
use gallop_config::KafkaConfig;
use gallop_kafka::{KafkaBroker, KafkaSource};
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    config::ClientConfig,
    mocking::MockCluster,
};
use time::macros::date;

fn bootstrap() -> String {
    std::env::var("TEST_GALLOP_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A config with topics of its own, and a guard deleting them.
fn unique() -> (KafkaConfig, Cleanup) {
    let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let config = KafkaConfig {
        bootstrap_servers: bootstrap(),
        topic: format!("gallop-broker-test-{tag}"),
        salt_topic: format!("gallop-broker-test-salts-{tag}"),
        consumer_group: format!("gallop-broker-test-{tag}"),
        ..KafkaConfig::default()
    };
    let cleanup = Cleanup {
        servers: config.bootstrap_servers.clone(),
        topics: vec![config.topic.clone(), config.salt_topic.clone()],
    };
    (config, cleanup)
}

struct Cleanup {
    servers: String,
    topics: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (servers, topics) = (self.servers.clone(), std::mem::take(&mut self.topics));
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            let config = KafkaConfig { bootstrap_servers: servers, ..KafkaConfig::default() };
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let _ = rt.block_on(gallop_kafka::delete_topics(&config, &names));
        })
        .join();
    }
}

async fn connect(config: &KafkaConfig, partitions: u32) -> KafkaBroker {
    KafkaBroker::connect(config, partitions, Duration::from_secs(4)).await.unwrap_or_else(|e| {
        panic!("a Kafka broker must run at {} (scripts/services.sh starts Tansu): {e}", config.bootstrap_servers)
    })
}

fn message(partition: u32, id: &str, payload: &str) -> OutboundMessage {
    OutboundMessage { partition, id: id.to_owned(), payload: Bytes::from(payload.to_owned()), events: 1 }
}

async fn next_message(source: &mut KafkaSource) -> gallop_broker::Delivery {
    let event = tokio::time::timeout(Duration::from_secs(20), source.next()).await.expect("a delivery within 20 s");
    match event {
        Some(SourceEvent::Message(delivery)) => delivery,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn publishes_to_partitions_and_reads_back_in_order_from_where_it_is_resumed() {
    let (config, _cleanup) = unique();
    let broker = connect(&config, 3).await;
    assert_eq!(broker.partitions(), 3);
    let mut positions = Vec::new();
    for i in 0..4 {
        let position = broker.publish(message(1, &format!("m-{i}"), &format!("payload {i}\n"))).await.expect("stored");
        assert!(!position.duplicate);
        positions.push(position.offset);
    }
    assert_eq!(positions, vec![1, 2, 3, 4], "positions are offsets + 1 from 1");
    broker.publish(message(2, "other", "x\n")).await.expect("stored");
    let err = broker.publish(message(3, "m", "x")).await.expect_err("partition 3 of 3");
    assert!(matches!(err, PublishError::NoSuchPartition { partition: 3, partitions: 3 }), "{err}");

    let mut source = KafkaSource::open(&config, 3, &[1, 2]).await.expect("source");
    assert_eq!(source.log_range(1).await.expect("range"), LogRange { first: 1, next: 5 });
    assert_eq!(source.log_range(0).await.err().map(|e| e.to_string().contains("not one of")), Some(true));
    source.resume(1, 3).await.expect("resume");
    let third = next_message(&mut source).await;
    assert_eq!((third.partition, third.position, third.id.as_deref()), (1, 3, Some("m-2")));
    assert_eq!(&third.payload[..], b"payload 2\n");
    assert!(third.timestamp_ms > 1_700_000_000_000, "broker timestamps: {}", third.timestamp_ms);
    assert_eq!(next_message(&mut source).await.position, 4);
    // Resuming again goes back: nothing of before the resume comes after it.
    source.resume(1, 2).await.expect("resume");
    assert_eq!(next_message(&mut source).await.position, 2);
    third.ack.ack().await.expect("committed to the group");
    assert!(source.dedup_window().is_some(), "Kafka keeps republished messages: the runtime needs a window");
    assert_eq!(source.position_at(1, 0).await.expect("lookup"), Some(1));
    drop(third);
    source.close().await;
}

#[tokio::test]
async fn a_deleted_and_recreated_topic_shows_in_the_log_range() {
    let (config, _cleanup) = unique();
    let broker = connect(&config, 1).await;
    for i in 0..3 {
        broker.publish(message(0, &format!("m-{i}"), "x\n")).await.expect("stored");
    }
    let source = KafkaSource::open(&config, 1, &[0]).await.expect("source");
    assert_eq!(source.log_range(0).await.expect("range"), LogRange { first: 1, next: 4 });
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &config.bootstrap_servers).create().expect("admin");
    admin.delete_topics(&[&config.topic], &AdminOptions::new()).await.expect("deleted");
    drop(broker);
    let _broker = connect(&config, 1).await;
    let range = source.log_range(0).await.expect("range");
    assert_eq!(range.next, 1, "the recreated topic starts again: {range:?}");
    source.close().await;
}

#[tokio::test]
async fn a_topic_with_too_few_partitions_is_named_when_it_may_not_be_grown() {
    let (mut config, _cleanup) = unique();
    connect(&config, 2).await;
    config.create_topics = false;
    let err = KafkaBroker::connect(&config, 4, Duration::from_secs(4)).await.expect_err("2 partitions of 4");
    let text = err.to_string();
    assert!(
        text.contains(&config.topic) && text.contains("2 partitions") && text.contains("kafka.create_topics"),
        "{text}"
    );
}

#[tokio::test]
async fn salt_store_agrees_across_gateways() {
    let (config, _cleanup) = unique();
    let broker = connect(&config, 1).await;
    let a = broker.salt_store().await.expect("salt topic");
    let other = connect(&config, 1).await;
    let b = other.salt_store().await.expect("salt topic");
    let day = date!(2026 - 11 - 23);
    let (sa, sb) = tokio::join!(a.salt_for(day), b.salt_for(day));
    let (sa, sb) = (sa.expect("salt"), sb.expect("salt"));
    assert_eq!(sa, sb, "racing gateways agree on one salt");
    assert_eq!(a.salt_for(day).await.expect("salt"), sa, "and keep it");
    let next = b.salt_for(date!(2026 - 11 - 24)).await.expect("salt");
    assert_ne!(next, sa);
    assert_eq!(a.salt_for(date!(2026 - 11 - 24)).await.expect("salt"), next);
}

/// librdkafka's mock cluster: one broker taken down and brought back. The mock does not
/// implement the admin API, so the topic is made through the mock and not by Gallop.
#[test]
fn publishes_fail_while_the_broker_is_down_and_succeed_once_it_is_back() {
    // The cluster outlives the runtime, whose tasks and threads still hold clients of it.
    let cluster = MockCluster::new(1).expect("mock cluster");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    cluster.create_topic("mock-events", 2, 1).expect("topic");
    let config = KafkaConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        topic: "mock-events".to_owned(),
        create_topics: false,
        ..KafkaConfig::default()
    };
    runtime.block_on(async {
        let broker = KafkaBroker::connect(&config, 2, Duration::from_secs(4)).await.expect("connect to the mock");
        let settle = broker.publish_settles_within().expect("Kafka settles each message within a bound");
        assert_eq!(settle, Duration::from_secs(3), "3/4 of the publish timeout");
        broker.publish(message(0, "before", "x\n")).await.expect("stored");

        cluster.broker_down(-1).expect("down");
        let started = std::time::Instant::now();
        let err = broker.publish(message(0, "during", "x\n")).await.expect_err("the broker is down");
        assert!(started.elapsed() <= settle, "settled within its bound: {:?}", started.elapsed());
        assert!(matches!(err, PublishError::Timeout { .. } | PublishError::NotConnected(_)), "{err}");
        let not_ready = async {
            while broker.is_ready() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), not_ready).await.expect("/ready goes false");

        cluster.broker_up(-1).expect("up");
        let recovered = async {
            loop {
                if broker.publish(message(0, "after", "x\n")).await.is_ok() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), recovered).await.expect("publishing again without a restart");
        let ready = async {
            while !broker.is_ready() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready).await.expect("/ready comes back");
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// Transient produce errors are retried inside librdkafka; the idempotent producer stores
/// the message once.
#[test]
fn transient_produce_errors_are_retried_and_stored_once() {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        types::RDKafkaApiKey,
        types::RDKafkaRespErr,
    };
    let cluster = MockCluster::new(1).expect("mock cluster");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    cluster.create_topic("mock-retries", 1, 1).expect("topic");
    let config = KafkaConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        topic: "mock-retries".to_owned(),
        create_topics: false,
        ..KafkaConfig::default()
    };
    runtime.block_on(async {
        let broker = KafkaBroker::connect(&config, 1, Duration::from_secs(4)).await.expect("connect to the mock");
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ],
        );
        let position = broker.publish(message(0, "once", "x\n")).await.expect("stored after retries");
        assert_eq!(position.offset, 1);
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &config.bootstrap_servers).create().expect("consumer");
        let (low, high) = consumer.fetch_watermarks("mock-retries", 0, Duration::from_secs(5)).expect("watermarks");
        assert_eq!(high - low, 1, "one copy stored");
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
}

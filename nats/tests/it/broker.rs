//! Stream setup, deduplicated publishing and the shared salt store.

use std::time::Duration;

use bytes::Bytes;
use gallop_broker::{OutboundMessage, PublishError, Publisher, SaltStore};
use gallop_config::{NatsConfig, StorageKind};
use gallop_nats::NatsBroker;

use crate::nats_url;
use time::macros::date;

/// A config with unique names, and a guard deleting its stream and bucket.
fn unique() -> (NatsConfig, Cleanup) {
    let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let config = NatsConfig {
        url: nats_url(),
        stream: format!("GALLOP_BROKER_TEST_{tag}"),
        subject_prefix: format!("gallop-broker-test-{tag}"),
        salt_bucket: format!("gallop_broker_test_{tag}"),
        storage: StorageKind::Memory,
        duplicate_window: Duration::from_secs(60),
        ..NatsConfig::default()
    };
    let cleanup = Cleanup(vec![config.stream.clone(), format!("KV_{}", config.salt_bucket)]);
    (config, cleanup)
}

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let streams = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(client);
                    for s in streams {
                        let _ = js.delete_stream(&s).await;
                    }
                }
            });
        })
        .join();
    }
}

async fn connect(config: &NatsConfig, partitions: u32) -> NatsBroker {
    NatsBroker::connect(config, partitions, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("NATS JetStream must run at {} (scripts/services.sh starts it): {e}", config.url))
}

fn message(partition: u32, id: &str, payload: &'static [u8]) -> OutboundMessage {
    OutboundMessage { partition, id: id.to_owned(), payload: Bytes::from_static(payload), events: 1 }
}

#[tokio::test]
async fn creates_the_stream_from_config_and_updates_it() {
    let (config, _cleanup) = unique();
    let broker = connect(&config, 3).await;
    let mut stream = broker.jetstream().get_stream(&config.stream).await.expect("stream exists");
    let info = stream.info().await.expect("info").clone();
    let mut subjects = info.config.subjects.clone();
    subjects.sort();
    let prefix = &config.subject_prefix;
    assert_eq!(
        subjects,
        vec![format!("{prefix}.events.0"), format!("{prefix}.events.1"), format!("{prefix}.events.2")]
    );
    assert_eq!(info.config.duplicate_window, Duration::from_secs(60));
    assert_eq!(info.config.max_age, config.max_age);
    assert_eq!(info.config.storage, async_nats::jetstream::stream::StorageType::Memory);
    assert_eq!(broker.partitions(), 3);

    // Starting again with more partitions updates the stream in place.
    let broker = connect(&config, 5).await;
    let info = broker.jetstream().get_stream(&config.stream).await.expect("stream").get_info().await.expect("info");
    assert_eq!(info.config.subjects.len(), 5);
    assert_eq!(broker.subject(4), Some(format!("{prefix}.events.4").as_str()));
}

#[tokio::test]
async fn a_republished_message_id_is_stored_once() {
    let (config, _cleanup) = unique();
    let broker = connect(&config, 2).await;
    let first = broker.publish(message(1, "m-1", b"{\"v\":1}\n")).await.expect("stored");
    let again = broker.publish(message(1, "m-1", b"{\"v\":1}\n")).await.expect("acknowledged");
    let other = broker.publish(message(0, "m-2", b"{\"v\":1}\n")).await.expect("stored");
    assert!(!first.duplicate);
    assert!(again.duplicate, "same Nats-Msg-Id inside the window");
    assert_eq!(again.offset, first.offset);
    assert_eq!((other.offset, other.partition), (first.offset + 1, 0));
    let info = broker.jetstream().get_stream(&config.stream).await.expect("stream").get_info().await.expect("info");
    assert_eq!(info.state.messages, 2);
}

#[tokio::test]
async fn refuses_unknown_partitions_and_oversized_messages() {
    let (config, _cleanup) = unique();
    let broker = connect(&config, 2).await;
    let err = broker.publish(message(2, "m", b"x")).await.expect_err("partition 2 of 2");
    assert!(matches!(err, PublishError::NoSuchPartition { partition: 2, partitions: 2 }), "{err}");
    let huge = OutboundMessage { partition: 0, id: "big".into(), payload: Bytes::from(vec![b'x'; 2 << 20]), events: 1 };
    let err = broker.publish(huge).await.expect_err("larger than max_payload");
    assert!(matches!(err, PublishError::TooLarge { .. }), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn salt_store_agrees_across_gateways_and_forgets_old_days() {
    let (config, _cleanup) = unique();
    let broker = connect(&config, 1).await;
    let a = broker.salt_store(&config).await.expect("bucket");
    let other_connection = connect(&config, 1).await;
    let b = other_connection.salt_store(&config).await.expect("bucket");
    let day = date!(2026 - 11 - 23);
    let (sa, sb) = tokio::join!(a.salt_for(day), b.salt_for(day));
    assert_eq!(sa.expect("salt"), sb.expect("salt"), "racing gateways agree on one salt");
    let next = a.salt_for(date!(2026 - 11 - 24)).await.expect("salt");
    assert_ne!(next, a.salt_for(day).await.expect("salt"));

    a.forget_before(date!(2026 - 11 - 24)).await.expect("purge");
    let kv = broker.jetstream().get_key_value(&config.salt_bucket).await.expect("bucket");
    assert_eq!(kv.get("day-2026-11-23").await.expect("get"), None, "yesterday's salt is destroyed");
    assert!(kv.get("day-2026-11-24").await.expect("get").is_some(), "today's salt stays");
}

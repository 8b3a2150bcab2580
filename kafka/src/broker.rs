//! [`KafkaBroker`]: the events topic's producer (idempotent, `acks=all`), publishing each
//! message to its partition with its id in a header, and the broker's reachability probe.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt};
use gallop_broker::{OutboundMessage, Position, PublishError, Publisher};
use gallop_config::KafkaConfig;
use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
    util::Timeout,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    client::{blocking, client_config, create, ensure_events_topic, lookup_client, KafkaSetupError},
    salt::KafkaSaltStore,
};

/// The header holding a message's id.
pub const MESSAGE_ID_HEADER: &str = "Gallop-Msg-Id";
/// The header holding how many events a message carries.
const EVENTS_HEADER: &str = "Gallop-Events";
/// How much later than `message.timeout.ms` librdkafka may report a message timed out: it
/// scans for expired messages about once a second (measured against librdkafka's mock
/// cluster with its broker down: 1.5 s timeout, reported after 2.9 s).
pub(crate) const TIMEOUT_SCAN_SLACK: Duration = Duration::from_millis(1500);
/// How often the broker's reachability is probed (drives `/ready`).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A Kafka-backed [`Publisher`]: idempotent producer, `acks=all`, one topic partition per
/// Gallop partition.
#[derive(Clone)]
pub struct KafkaBroker {
    producer: Arc<ProducerSlot>,
    config: KafkaConfig,
    partitions: u32,
    /// How long a publish can take to settle, librdkafka's timeout scan included.
    settle_bound: Duration,
    ready: Arc<AtomicBool>,
    /// The reachability probe, stopped with the last clone.
    _probe: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker").field("topic", &self.config.topic).field("partitions", &self.partitions).finish()
    }
}

/// The producer in use, replaced by a new one when librdkafka declares it dead: an
/// idempotent producer that hits a fatal error (fenced, sequence out of order — seen against
/// Tansu after a broker outage) refuses every later message until it is recreated.
struct ProducerSlot {
    settings: ClientConfig,
    current: std::sync::RwLock<(u64, FutureProducer)>,
}

impl ProducerSlot {
    /// The producer and its generation.
    fn get(&self) -> (u64, FutureProducer) {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces generation `dead` by a new producer (once, however many callers saw it die).
    fn replace(&self, dead: u64, reason: &str) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.0 != dead {
            return;
        }
        match self.settings.create() {
            Ok(fresh) => {
                warn!(generation = dead + 1, %reason, "the Kafka producer failed for good; a new one takes over");
                *current = (dead + 1, fresh);
            }
            Err(e) => warn!(error = %e, %reason, "the Kafka producer failed for good and cannot be recreated yet"),
        }
    }
}

/// Aborts a background task when the last handle goes.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl KafkaBroker {
    /// Makes sure the events topic exists with `partitions` partitions and starts the
    /// producer. Each message is settled within 3/4 of `publish_timeout`: librdkafka's
    /// `message.timeout.ms` is that less 1.5 s (librdkafka looks for
    /// timed-out messages about once a second). So the outcome is known before the request
    /// that waits for it answers, and a request answered 503 is not published behind the
    /// client's back.
    pub async fn connect(
        config: &KafkaConfig,
        partitions: u32,
        publish_timeout: Duration,
    ) -> Result<Self, KafkaSetupError> {
        ensure_events_topic(config, partitions).await?;
        let settle_bound = publish_timeout * 3 / 4;
        let timeout_ms =
            settle_bound.saturating_sub(TIMEOUT_SCAN_SLACK).max(Duration::from_millis(100)).as_millis().to_string();
        let mut client = client_config(config, &[("compression.type", "lz4"), ("linger.ms", "1")]);
        client.set("enable.idempotence", "true").set("acks", "all").set("message.timeout.ms", &timeout_ms);
        let producer = ProducerSlot {
            current: std::sync::RwLock::new((0, create(&client, "producer", config)?)),
            settings: client,
        };
        let ready = Arc::new(AtomicBool::new(true));
        let probe = tokio::spawn(probe(Arc::new(lookup_client(config)?), config.topic.clone(), Arc::clone(&ready)));
        info!(topic = %config.topic, partitions, "Kafka producer ready");
        Ok(Self {
            producer: Arc::new(producer),
            config: config.clone(),
            partitions,
            settle_bound,
            ready,
            _probe: Arc::new(AbortOnDrop(probe)),
        })
    }

    /// The events topic.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// Opens (creating if needed) the salt topic named in the config.
    pub async fn salt_store(&self) -> Result<KafkaSaltStore, KafkaSetupError> {
        KafkaSaltStore::open(&self.config).await
    }
}

/// Keeps `ready` true while the broker answers a metadata request for `topic` (from a
/// consumer-type client, which does not make the broker create a missing topic).
async fn probe(lookup: Arc<BaseConsumer>, topic: String, ready: Arc<AtomicBool>) {
    loop {
        let client = Arc::clone(&lookup);
        let name = topic.clone();
        let ok = blocking(move || client.fetch_metadata(Some(&name), PROBE_EVERY)).await.is_ok_and(|metadata| {
            metadata.is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic && t.error().is_none()))
        });
        if ready.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                info!(%topic, "Kafka reachable again");
            } else {
                warn!(%topic, "Kafka unreachable");
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

impl Publisher for KafkaBroker {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn publish_settles_within(&self) -> Option<Duration> {
        Some(self.settle_bound)
    }

    fn publish(&self, message: OutboundMessage) -> BoxFuture<'static, Result<Position, PublishError>> {
        let slot = Arc::clone(&self.producer);
        let (generation, producer) = slot.get();
        let topic = self.config.topic.clone();
        let partitions = self.partitions;
        async move {
            if message.partition >= partitions {
                return Err(PublishError::NoSuchPartition { partition: message.partition, partitions });
            }
            let events = message.events.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: MESSAGE_ID_HEADER, value: Some(message.id.as_str()) })
                .insert(Header { key: EVENTS_HEADER, value: Some(events.as_str()) });
            let record = FutureRecord::<(), [u8]>::to(&topic)
                .partition(i32::try_from(message.partition).unwrap_or(i32::MAX))
                .payload(&message.payload[..])
                .headers(headers);
            // A full local queue fails at once (the caller retries within its deadline);
            // once queued, librdkafka settles the message within message.timeout.ms.
            match producer.send(record, Timeout::After(Duration::ZERO)).await {
                Ok(delivery) => Ok(Position {
                    partition: message.partition,
                    offset: u64::try_from(delivery.offset).unwrap_or(0) + 1,
                    duplicate: false,
                }),
                Err((e, _)) => {
                    let dead =
                        producer.client().fatal_error().map(|(code, reason)| format!("{code:?}: {reason}")).or_else(
                            || {
                                matches!(
                                    e.rdkafka_error_code(),
                                    Some(
                                        RDKafkaErrorCode::Fatal
                                            | RDKafkaErrorCode::ProducerFenced
                                            | RDKafkaErrorCode::InvalidProducerEpoch
                                            | RDKafkaErrorCode::OutOfOrderSequenceNumber
                                            | RDKafkaErrorCode::UnknownProducerId
                                            | RDKafkaErrorCode::InvalidProducerIdMapping
                                    )
                                )
                                .then(|| e.to_string())
                            },
                        );
                    if let Some(reason) = dead {
                        slot.replace(generation, &reason);
                        // The message was not stored; the next attempt goes to the new producer.
                        return Err(PublishError::NotConnected(format!("message {}: {e}", message.id)));
                    }
                    Err(publish_error(&message.id, &e))
                }
            }
        }
        .boxed()
    }
}

pub(crate) fn publish_error(id: &str, error: &KafkaError) -> PublishError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => PublishError::Timeout { id: id.to_owned() },
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            PublishError::TooLarge { id: id.to_owned(), bytes: 0 }
        }
        Some(
            RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::QueueFull,
        ) => PublishError::NotConnected(format!("message {id}: {error}")),
        _ => PublishError::Rejected { id: id.to_owned(), reason: error.to_string() },
    }
}

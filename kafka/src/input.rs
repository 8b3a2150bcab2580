//! The public input on Kafka: the input topic read by a consumer group that every gateway
//! joins (so they split the partitions), and the dead-letter topic.
//!
//! Kafka commits a position per partition, so messages acknowledged out of order are
//! committed only up to the first one still in progress ([`CommitTracker`]). After a crash
//! or a rebalance the uncommitted rest is read again; the events made from it carry the
//! same ids and the processor drops the copies (`kafka.dedup_window`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt};
use gallop_config::{InputConfig, KafkaConfig};
use rdkafka::{
    client::ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer},
    message::{Header, Message as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    Offset, TopicPartitionList,
};
use tracing::info;

use gallop_broker::{
    Ack, AckError, Acknowledge, DeadLetter, DeadLetters, InputError, InputMessage, InputPublisher, InputSource,
    PublishError,
};

use crate::{
    broker::publish_error,
    client::{client_config, create, ensure_topic, KafkaSetupError},
};

/// How long a dead letter may take to be acknowledged.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Per partition: offsets delivered and not yet acknowledged, and offsets acknowledged
/// ahead of an earlier one still in progress. Pure bookkeeping; no I/O.
#[derive(Debug, Default)]
pub(crate) struct CommitTracker {
    partitions: BTreeMap<i32, (BTreeSet<i64>, BTreeSet<i64>)>,
}

impl CommitTracker {
    /// `offset` of `partition` was handed out.
    pub(crate) fn delivered(&mut self, partition: i32, offset: i64) {
        self.partitions.entry(partition).or_default().0.insert(offset);
    }

    /// `offset` of `partition` is done; returns the offset to commit (one past the last
    /// offset below which everything is done) when that moved.
    pub(crate) fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let (pending, finished) = self.partitions.get_mut(&partition)?;
        if !pending.remove(&offset) {
            return None;
        }
        finished.insert(offset);
        let first_pending = pending.first().copied();
        let below: Vec<i64> = finished.iter().copied().take_while(|&o| first_pending.is_none_or(|p| o < p)).collect();
        let last = *below.last()?;
        for o in below {
            finished.remove(&o);
        }
        Some(last + 1)
    }

    /// Forgets a partition (revoked in a rebalance).
    pub(crate) fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

/// Forgets the offsets of partitions revoked in a rebalance: their acknowledgements would
/// commit for a partition another gateway now reads.
struct InputContext {
    tracker: Arc<Mutex<CommitTracker>>,
}

impl ClientContext for InputContext {}

impl ConsumerContext for InputContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(list), Ok(mut tracker)) = (rebalance, self.tracker.lock()) {
            for element in list.elements() {
                tracker.forget(element.partition());
            }
        }
    }
}

/// Reads the input topic as a member of `input.kafka_group`.
pub struct KafkaInput {
    consumer: Arc<StreamConsumer<InputContext>>,
    tracker: Arc<Mutex<CommitTracker>>,
    topic: String,
}

impl KafkaInput {
    /// Makes the input and dead-letter topics exist (`broker.partitions` partitions each)
    /// and joins the consumer group.
    pub async fn open(
        kafka: &KafkaConfig,
        partitions: u32,
        input: &InputConfig,
    ) -> Result<(Self, KafkaDeadLetters), KafkaSetupError> {
        let dead = Self::create_topics(kafka, partitions, input).await?;
        let settings = client_config(
            kafka,
            &[
                ("group.id", input.kafka_group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("allow.auto.create.topics", "false"),
            ],
        );
        let tracker = Arc::new(Mutex::new(CommitTracker::default()));
        let context = InputContext { tracker: Arc::clone(&tracker) };
        let consumer: StreamConsumer<InputContext> =
            settings.create_with_context(context).map_err(|e| KafkaSetupError::Client {
                client: "consumer",
                servers: kafka.bootstrap_servers.clone(),
                reason: e.to_string(),
            })?;
        consumer.subscribe(&[&input.kafka_topic]).map_err(|e| KafkaSetupError::Topic {
            topic: input.kafka_topic.clone(),
            servers: kafka.bootstrap_servers.clone(),
            reason: format!("cannot subscribe: {e}"),
        })?;
        info!(topic = %input.kafka_topic, group = %input.kafka_group, dead = %input.kafka_dead_topic,
            "reading the Kafka input topic");
        let input = Self { consumer: Arc::new(consumer), tracker, topic: input.kafka_topic.clone() };
        Ok((input, dead))
    }

    /// Makes the input and dead-letter topics exist; returns the dead letters' producer.
    /// Publishers (`gallop publish`) call this alone, without consuming.
    pub async fn create_topics(
        kafka: &KafkaConfig,
        partitions: u32,
        input: &InputConfig,
    ) -> Result<KafkaDeadLetters, KafkaSetupError> {
        let retention = kafka.retention.as_millis().to_string();
        ensure_topic(kafka, &input.kafka_topic, partitions, &[("retention.ms", retention)]).await?;
        let dead_retention = input.dead_retention.as_millis().to_string();
        ensure_topic(kafka, &input.kafka_dead_topic, partitions, &[("retention.ms", dead_retention)]).await?;
        let mut settings = client_config(kafka, &[("linger.ms", "5")]);
        settings.set("enable.idempotence", "true").set("acks", "all");
        Ok(KafkaDeadLetters { producer: create(&settings, "producer", kafka)?, topic: input.kafka_dead_topic.clone() })
    }
}

impl InputSource for KafkaInput {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<InputMessage, InputError>>> {
        async move {
            let message = match self.consumer.recv().await {
                Ok(message) => message.detach(),
                Err(e) => return Some(Err(InputError { input: self.describe(), reason: e.to_string() })),
            };
            let (partition, offset) = (message.partition(), message.offset());
            if let Ok(mut tracker) = self.tracker.lock() {
                tracker.delivered(partition, offset);
            }
            Some(Ok(InputMessage {
                payload: bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                origin: format!("{}:{partition}:{offset}", self.topic),
                source: self.topic.clone(),
                delivered: 1,
                ack: Ack::new(InputAck {
                    consumer: Arc::clone(&self.consumer),
                    tracker: Arc::clone(&self.tracker),
                    topic: self.topic.clone(),
                    partition,
                    offset,
                }),
            }))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("Kafka topic {}", self.topic)
    }
}

/// Marks one input message done and commits its partition as far as everything is done.
struct InputAck {
    consumer: Arc<StreamConsumer<InputContext>>,
    tracker: Arc<Mutex<CommitTracker>>,
    topic: String,
    partition: i32,
    offset: i64,
}

impl Acknowledge for InputAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), AckError>> {
        async move {
            let fail = |reason: String| AckError {
                partition: u32::try_from(self.partition).unwrap_or(0),
                position: u64::try_from(self.offset).unwrap_or(0) + 1,
                reason,
            };
            let commit = self
                .tracker
                .lock()
                .map_err(|_| fail("commit tracker poisoned".to_owned()))?
                .done(self.partition, self.offset);
            let Some(next) = commit else { return Ok(()) };
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&self.topic, self.partition, Offset::Offset(next))
                .map_err(|e| fail(e.to_string()))?;
            // Asynchronous: a lost commit only means some messages are read again, and their
            // events are dropped downstream as copies.
            self.consumer.commit(&list, CommitMode::Async).map_err(|e| fail(e.to_string()))
        }
        .boxed()
    }
}

/// Publishes dead letters to the dead-letter topic.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters for KafkaDeadLetters {
    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), PublishError>> {
        async move {
            let headers = letter.headers();
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (key, value) in &headers {
                owned = owned.insert(Header { key, value: Some(value.as_str()) });
            }
            let record =
                FutureRecord::<str, [u8]>::to(&self.topic).key(letter.origin).payload(letter.payload).headers(owned);
            match self.producer.send(record, Timeout::After(DEAD_LETTER_TIMEOUT)).await {
                Ok(_) => Ok(()),
                Err((e, _)) => Err(PublishError::Rejected {
                    id: format!("dead letter of {}", letter.origin),
                    reason: e.to_string(),
                }),
            }
        }
        .boxed()
    }
}

/// Publishes messages to the input topic, as an application would (`gallop publish`).
#[derive(Clone)]
pub struct KafkaInputPublisher {
    producer: FutureProducer,
    topic: String,
}

impl KafkaInputPublisher {
    /// Makes the input and dead-letter topics exist and starts a producer.
    pub async fn open(kafka: &KafkaConfig, partitions: u32, input: &InputConfig) -> Result<Self, KafkaSetupError> {
        KafkaInput::create_topics(kafka, partitions, input).await?;
        let mut settings = client_config(kafka, &[("linger.ms", "5"), ("compression.type", "lz4")]);
        settings.set("enable.idempotence", "true").set("acks", "all");
        Ok(Self { producer: create(&settings, "producer", kafka)?, topic: input.kafka_topic.clone() })
    }

    /// The input topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl InputPublisher for KafkaInputPublisher {
    /// Publishes `payload` (the producer spreads messages over the partitions) and waits
    /// for the acknowledgement.
    fn send(&self, payload: bytes::Bytes) -> BoxFuture<'static, Result<(), PublishError>> {
        let (producer, topic) = (self.producer.clone(), self.topic.clone());
        async move {
            let record = FutureRecord::<(), [u8]>::to(&topic).payload(&payload[..]);
            // The broker's error named by the topic (the message has no id of its own).
            producer
                .send(record, Timeout::After(DEAD_LETTER_TIMEOUT))
                .await
                .map(|_| ())
                .map_err(|(e, _)| publish_error(&format!("to {topic}"), &e))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("Kafka topic {}", self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::CommitTracker;

    #[test]
    fn commits_only_what_is_done_without_a_hole() {
        let mut tracker = CommitTracker::default();
        for offset in 10..15 {
            tracker.delivered(0, offset);
        }
        tracker.delivered(1, 3);
        assert_eq!(tracker.done(0, 12), None, "10 and 11 still in progress");
        assert_eq!(tracker.done(0, 10), Some(11));
        assert_eq!(tracker.done(0, 11), Some(13), "12 was done already");
        assert_eq!(tracker.done(1, 3), Some(4), "partitions are separate");
        assert_eq!(tracker.done(0, 11), None, "an offset acknowledged twice changes nothing");
        assert_eq!(tracker.done(0, 14), None);
        assert_eq!(tracker.done(0, 13), Some(15));
        assert_eq!(tracker.done(2, 0), None, "an offset never delivered");
        tracker.delivered(0, 20);
        tracker.forget(0);
        assert_eq!(tracker.done(0, 20), None, "a revoked partition is forgotten");
    }
}

//! NATS JetStream consumption: one durable pull consumer per owned partition, merged into one
//! bounded channel of [`Delivery`]s.
//!
//! Consumers use `AckPolicy::All`: acknowledging a message acknowledges every earlier message
//! of its partition, so the processor acks once per partition and flush. Messages are
//! redelivered after `ack_wait` if not acknowledged (a crash, a slow ClickHouse); the caller
//! recognises redeliveries by their position. The channel's bound is the backpressure: when
//! the processor stops taking deliveries, the pull tasks stop pulling.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use bytes::Bytes;
use futures::StreamExt;
use gallop_config::ConsumerConfig;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

use crate::nats::{NatsBroker, NatsError};

/// One message read from a partition.
#[derive(Debug)]
pub struct Delivery {
    /// Partition the message was published to.
    pub partition: u32,
    /// Stream sequence: increases along a partition.
    pub position: u64,
    /// The message body (NDJSON event records).
    pub payload: Bytes,
    /// How many times the broker has delivered it (1 the first time).
    pub delivered: i64,
    /// Messages of the partition still waiting behind this one: the consumer lag.
    pub pending: u64,
    /// Acknowledges this message and every earlier one of its partition.
    pub acker: Acker,
}

/// Acknowledges a message and, with `AckPolicy::All`, everything before it in its partition.
pub struct Acker(jetstream::Message);

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acker")
    }
}

/// An acknowledgement the server did not confirm.
#[derive(Debug, thiserror::Error)]
#[error("cannot acknowledge message {position} of partition {partition}: {reason}")]
pub struct AckError {
    /// Partition.
    pub partition: u32,
    /// Stream sequence.
    pub position: u64,
    /// Client error text.
    pub reason: String,
}

impl Acker {
    /// Acknowledges and waits for the server's confirmation.
    pub async fn ack(&self, partition: u32, position: u64) -> Result<(), AckError> {
        self.0.double_ack().await.map_err(|e| AckError { partition, position, reason: e.to_string() })
    }
}

/// Reads the owned partitions of the events stream.
#[derive(Debug)]
pub struct NatsConsumer {
    deliveries: mpsc::Receiver<Delivery>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl NatsConsumer {
    /// Creates (or finds) the durable consumer of each of `partitions` on `broker`'s
    /// stream and starts pulling. Pulls restart by themselves after a broker outage.
    pub async fn open(broker: &NatsBroker, partitions: &[u32], config: &ConsumerConfig) -> Result<Self, NatsError> {
        let stream = broker
            .jetstream()
            .get_stream(broker.stream())
            .await
            .map_err(|e| NatsError::Stream { stream: broker.stream().to_owned(), reason: e.to_string() })?;
        // Room for a few pulls per partition; beyond it the pull tasks wait.
        let capacity = (config.fetch_batch * 2).max(64);
        let (sender, deliveries) = mpsc::channel(capacity);
        let mut tasks = Vec::new();
        for &partition in partitions {
            let subject = broker.subject(partition).ok_or_else(|| NatsError::Stream {
                stream: broker.stream().to_owned(),
                reason: format!("partition {partition} is not one of the stream's partitions"),
            })?;
            let name = format!("{}-{partition}", config.durable_prefix);
            let consumer_config = pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject.to_owned(),
                ack_policy: AckPolicy::All,
                deliver_policy: DeliverPolicy::All,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                description: Some(format!("Gallop processor, partition {partition}")),
                ..Default::default()
            };
            let consumer =
                stream.get_or_create_consumer(&name, consumer_config).await.map_err(|e| NatsError::Stream {
                    stream: broker.stream().to_owned(),
                    reason: format!("cannot create durable consumer {name}: {e}"),
                })?;
            tasks.push(tokio::spawn(pull_forever(consumer, partition, config.fetch_batch, sender.clone())));
        }
        Ok(Self { deliveries, tasks })
    }

    /// The next delivery from any owned partition; `None` once every pull task ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }
}

async fn pull_forever(
    consumer: jetstream::consumer::PullConsumer,
    partition: u32,
    batch: usize,
    sender: mpsc::Sender<Delivery>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let messages =
            consumer.stream().max_messages_per_batch(batch).heartbeat(Duration::from_secs(5)).messages().await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                warn!(partition, error = %e, "cannot pull; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        while let Some(next) = messages.next().await {
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    // Missed heartbeats and disconnects end this pull; a new one starts.
                    warn!(partition, error = %e, "pull interrupted; restarting it");
                    break;
                }
            };
            backoff = Duration::from_millis(100);
            let (position, delivered, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.delivered, info.pending),
                Err(e) => {
                    warn!(partition, error = %e, "message without JetStream metadata; skipped");
                    continue;
                }
            };
            let payload = message.message.payload.clone();
            let delivery = Delivery { partition, position, payload, delivered, pending, acker: Acker(message) };
            if sender.send(delivery).await.is_err() {
                debug!(partition, "consumer closed; pull task ends");
                return;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

//! NATS JetStream consumption: one durable pull consumer per owned partition, merged into one
//! bounded channel of [`Delivery`]s.
//!
//! Delivery is in stream order per partition, which the exactly-once scheme relies on (a
//! stored position P must mean "everything up to P is in"). JetStream redelivers unacked
//! messages out of order, so a consumer is (re)created at start *after the position the
//! caller stored* (`DeliverPolicy::ByStartSequence`), never resuming a broker-side ack floor;
//! and a pull that sees a gap in the consumer sequence (a batch lost with a connection)
//! recreates the consumer after the last message it forwarded. Acknowledgements
//! (`AckPolicy::All`) then only release retention and stop redelivery. The channel's bound is
//! the backpressure: when the processor stops taking deliveries, the pull tasks stop pulling.

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
    /// (Re)creates the durable consumer of each of `partitions` on `broker`'s stream so that
    /// it delivers, in order, the messages after `after[partition]` (all when absent), and
    /// starts pulling. Pulls restart by themselves after a broker outage. A partition must
    /// have one owner: opening recreates its consumer.
    pub async fn open(
        broker: &NatsBroker,
        partitions: &[u32],
        after: &std::collections::BTreeMap<u32, u64>,
        config: &ConsumerConfig,
    ) -> Result<Self, NatsError> {
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
            let source = Source {
                stream: stream.clone(),
                name,
                subject: subject.to_owned(),
                partition,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                batch: config.fetch_batch,
                max_bytes: config.fetch_max_bytes,
            };
            let start = after.get(&partition).copied().unwrap_or(0);
            let consumer = source
                .recreate(start)
                .await
                .map_err(|reason| NatsError::Stream { stream: broker.stream().to_owned(), reason })?;
            tasks.push(tokio::spawn(pull_forever(source, consumer, start, sender.clone())));
        }
        Ok(Self { deliveries, tasks })
    }

    /// The next delivery from any owned partition; `None` once every pull task ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }
}

/// Where one partition's deliveries come from.
struct Source {
    stream: jetstream::stream::Stream,
    name: String,
    subject: String,
    partition: u32,
    ack_wait: Duration,
    max_ack_pending: i64,
    batch: usize,
    max_bytes: usize,
}

impl Source {
    /// Deletes the durable consumer (if any) and creates it anew, delivering the messages
    /// after stream sequence `after`.
    async fn recreate(&self, after: u64) -> Result<jetstream::consumer::PullConsumer, String> {
        // Not found is fine; any other failure shows up in the create below.
        let _ = self.stream.delete_consumer(&self.name).await;
        let config = pull::Config {
            durable_name: Some(self.name.clone()),
            filter_subject: self.subject.clone(),
            ack_policy: AckPolicy::All,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            description: Some(format!("Gallop processor, partition {}", self.partition)),
            ..Default::default()
        };
        self.stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("cannot create durable consumer {}: {e}", self.name))
    }
}

async fn pull_forever(
    source: Source,
    mut consumer: jetstream::consumer::PullConsumer,
    mut forwarded: u64,
    sender: mpsc::Sender<Delivery>,
) {
    let partition = source.partition;
    let mut backoff = Duration::from_millis(100);
    // The consumer was just created (`open` recreates it), so its deliveries are numbered
    // from 1 and even the first one is checked: deliveries lost before it must not be
    // skipped over, or acknowledging a later message would acknowledge them too.
    let mut sequence = DeliverySequence::fresh();
    loop {
        let messages = consumer
            .stream()
            .max_messages_per_batch(source.batch)
            .max_bytes_per_batch(source.max_bytes)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                warn!(partition, error = %e, "cannot pull; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut gap = false;
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
            let (position, consumer_sequence, delivered, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.consumer_sequence, info.delivered, info.pending),
                Err(e) => {
                    warn!(partition, error = %e, "message without JetStream metadata; skipped");
                    continue;
                }
            };
            if !sequence.follows(consumer_sequence) {
                // Deliveries went missing (a batch lost with a connection): start over right
                // after what was forwarded, so the order stays intact.
                warn!(partition, forwarded, consumer_sequence, "gap in deliveries; recreating the consumer");
                gap = true;
                break;
            }
            let payload = message.message.payload.clone();
            let delivery = Delivery { partition, position, payload, delivered, pending, acker: Acker(message) };
            forwarded = forwarded.max(position);
            if sender.send(delivery).await.is_err() {
                debug!(partition, "consumer closed; pull task ends");
                return;
            }
        }
        if gap {
            drop(messages);
            match source.recreate(forwarded).await {
                Ok(fresh) => {
                    consumer = fresh;
                    sequence = DeliverySequence::fresh();
                }
                Err(reason) => warn!(partition, %reason, "cannot recreate the consumer; retrying"),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The consumer sequence numbers of one durable consumer's deliveries, which must go up by
/// one: a skip means deliveries went missing on the way (a pull's batch lost with its
/// subscription or dropped by the client while the processor applied backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeliverySequence {
    last: u64,
}

impl DeliverySequence {
    /// For a consumer just created: its first delivery is number 1.
    fn fresh() -> Self {
        Self { last: 0 }
    }

    /// Whether delivery number `sequence` comes right after the last one; if so it becomes
    /// the last one.
    fn follows(&mut self, sequence: u64) -> bool {
        if sequence == self.last + 1 {
            self.last = sequence;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeliverySequence;

    #[test]
    fn deliveries_must_come_one_after_another_from_the_first() {
        let mut sequence = DeliverySequence::fresh();
        assert!(sequence.follows(1));
        assert!(sequence.follows(2));
        assert!(!sequence.follows(4), "3 went missing");
        assert!(!sequence.follows(2), "a repeat is no successor either");
        // A new consumer whose first deliveries were lost: the first one seen is 3.
        assert!(!DeliverySequence::fresh().follows(3));
    }
}

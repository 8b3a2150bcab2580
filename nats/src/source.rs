//! [`NatsSource`]: JetStream consumption, one durable pull consumer per owned partition,
//! merged into one bounded channel of [`SourceEvent`]s.
//!
//! Delivery is in stream order per partition, which the exactly-once scheme relies on (a
//! stored position P must mean "everything of the partition up to P is in"). JetStream
//! redelivers unacked messages out of order, so a partition's consumer is (re)created by
//! [`Source::resume`] at the position the runtime names (`DeliverPolicy::ByStartSequence`),
//! never resuming a broker-side ack floor. A pull that sees a gap in the consumer sequence
//! (deliveries lost with a connection, or dropped while the processor applied
//! backpressure) stops and reports [`SourceEvent::Gap`]; the runtime resumes the partition
//! after the last message it took. Acknowledgements (`AckPolicy::All`) only release
//! retention and stop redelivery. The channel's bound is the backpressure: when the
//! runtime stops taking events, the pull tasks stop pulling.
//!
//! Positions are stream sequences, shared by all partitions, so a partition that is idle
//! while others move on would keep an old stored position that retention later passes. When
//! a partition has been idle for a while, its task checks that nothing of it is left to
//! deliver up to the stream's last sequence L and reports [`SourceEvent::CaughtUp`] with L.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use futures::{
    future::{BoxFuture, FutureExt},
    StreamExt,
};
use gallop_config::ConsumerConfig;
use gallop_support::Backoff;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

use gallop_broker::{Ack, AckError, Acknowledge, Delivery, LogRange, Source, SourceError, SourceEvent};

use crate::broker::{NatsBroker, NatsError};

/// How long a pull waits for a message before the partition counts as idle.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// Least time between two caught-up checks of one partition.
const CAUGHT_UP_EVERY: Duration = Duration::from_secs(5);

/// An event tagged with the resume generation of its partition's pull task.
type Tagged = (u32, u64, SourceEvent);

/// Reads the owned partitions of the events stream.
pub struct NatsSource {
    broker: NatsBroker,
    stream: jetstream::stream::Stream,
    owned: Vec<u32>,
    settings: Settings,
    sender: mpsc::Sender<Tagged>,
    events: mpsc::Receiver<Tagged>,
    /// The current pull task and its generation, per resumed partition.
    tasks: BTreeMap<u32, (u64, JoinHandle<()>)>,
    generation: u64,
    lag: Arc<Mutex<BTreeMap<u32, u64>>>,
}

impl std::fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource").field("stream", &self.broker.stream()).field("owned", &self.owned).finish()
    }
}

impl Drop for NatsSource {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// What each pull task needs from the consumer config.
#[derive(Debug, Clone)]
struct Settings {
    durable_prefix: String,
    ack_wait: Duration,
    max_ack_pending: i64,
    batch: usize,
    max_bytes: usize,
}

impl NatsSource {
    /// A source reading `partitions` of `broker`'s stream. Nothing is delivered until a
    /// partition is resumed; a partition must have one owner, since resuming recreates its
    /// durable consumer.
    pub async fn open(broker: &NatsBroker, partitions: &[u32], config: &ConsumerConfig) -> Result<Self, NatsError> {
        let stream = broker
            .jetstream()
            .get_stream(broker.stream())
            .await
            .map_err(|e| NatsError::Stream { stream: broker.stream().to_owned(), reason: e.to_string() })?;
        for &partition in partitions {
            if broker.subject(partition).is_none() {
                return Err(NatsError::Stream {
                    stream: broker.stream().to_owned(),
                    reason: format!("partition {partition} is not one of the stream's partitions"),
                });
            }
        }
        // Room for a few pulls; beyond it the pull tasks wait.
        let (sender, events) = mpsc::channel((config.fetch_batch * 2).max(64));
        Ok(Self {
            broker: broker.clone(),
            stream,
            owned: partitions.to_vec(),
            settings: Settings {
                durable_prefix: config.durable_prefix.clone(),
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                batch: config.fetch_batch,
                max_bytes: config.fetch_max_bytes,
            },
            sender,
            events,
            tasks: BTreeMap::new(),
            generation: 0,
            lag: Arc::default(),
        })
    }

    fn error(&self, operation: &'static str, partition: u32, reason: impl ToString) -> SourceError {
        SourceError::Broker { broker: self.describe(), operation, partition, reason: reason.to_string() }
    }

    fn subject(&self, partition: u32) -> Result<String, SourceError> {
        if !self.owned.contains(&partition) {
            return Err(SourceError::NotOwned { partition, owned: self.owned.clone() });
        }
        self.broker
            .subject(partition)
            .map(str::to_owned)
            .ok_or_else(|| SourceError::NotOwned { partition, owned: self.owned.clone() })
    }
}

impl Source for NatsSource {
    fn partitions(&self) -> &[u32] {
        &self.owned
    }

    fn log_range(&self, partition: u32) -> BoxFuture<'_, Result<LogRange, SourceError>> {
        async move {
            self.subject(partition)?;
            let info = self.stream.get_info().await.map_err(|e| self.error("stream info", partition, e))?;
            // The stream's sequence is shared by all partitions and retention removes the
            // oldest messages first, whichever partition they belong to.
            let next = info.state.last_sequence + 1;
            Ok(LogRange { first: info.state.first_sequence.clamp(1, next), next })
        }
        .boxed()
    }

    fn holds(&self, partition: u32, position: u64) -> BoxFuture<'_, Result<bool, SourceError>> {
        async move {
            let subject = self.subject(partition)?;
            match self.stream.get_raw_message(position).await {
                Ok(message) => Ok(message.subject.as_str() == subject),
                Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(false),
                Err(e) => Err(self.error("message lookup", partition, e)),
            }
        }
        .boxed()
    }

    fn position_at(&self, partition: u32, _timestamp_ms: i64) -> BoxFuture<'_, Result<Option<u64>, SourceError>> {
        let error = self.error("position lookup", partition, "not needed: JetStream deduplicates message ids itself");
        futures::future::ready(Err(error)).boxed()
    }

    fn resume(&mut self, partition: u32, from: u64) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let subject = self.subject(partition)?;
            if let Some((_, task)) = self.tasks.remove(&partition) {
                task.abort();
            }
            let puller = Puller {
                stream: self.stream.clone(),
                name: format!("{}-{partition}", self.settings.durable_prefix),
                subject,
                partition,
                settings: self.settings.clone(),
            };
            let consumer =
                puller.recreate(from.max(1)).await.map_err(|reason| self.error("resume", partition, reason))?;
            self.generation += 1;
            let generation = self.generation;
            let task = tokio::spawn(puller.pull(consumer, generation, self.sender.clone(), Arc::clone(&self.lag)));
            self.tasks.insert(partition, (generation, task));
            Ok(())
        }
        .boxed()
    }

    fn add(&mut self, partition: u32) -> Result<(), SourceError> {
        if self.broker.subject(partition).is_none() {
            return Err(self.error("add", partition, "not one of the stream's partitions"));
        }
        if !self.owned.contains(&partition) {
            self.owned.push(partition);
        }
        Ok(())
    }

    fn remove(&mut self, partition: u32) {
        if let Some((_, task)) = self.tasks.remove(&partition) {
            task.abort();
        }
        self.owned.retain(|&p| p != partition);
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).remove(&partition);
    }

    fn next(&mut self) -> BoxFuture<'_, Option<SourceEvent>> {
        async move {
            loop {
                // The source keeps a sender, so the channel only ends with the source.
                let (partition, generation, event) = self.events.recv().await?;
                // Deliveries of a pull task replaced by a later resume are stale.
                if self.tasks.get(&partition).is_some_and(|(current, _)| *current == generation) {
                    return Some(event);
                }
            }
        }
        .boxed()
    }

    fn lag(&self) -> Vec<(u32, u64)> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(&p, &n)| (p, n)).collect()
    }

    fn is_ready(&self) -> bool {
        self.broker.client().connection_state() == async_nats::connection::State::Connected
    }

    fn dedup_window(&self) -> Option<Duration> {
        None
    }

    fn describe(&self) -> String {
        format!("NATS stream {}", self.broker.stream())
    }
}

/// One partition's durable consumer and its pulls.
struct Puller {
    stream: jetstream::stream::Stream,
    name: String,
    subject: String,
    partition: u32,
    settings: Settings,
}

impl Puller {
    /// Deletes the durable consumer (if any) and creates it anew, delivering from stream
    /// sequence `from`.
    async fn recreate(&self, from: u64) -> Result<jetstream::consumer::PullConsumer, String> {
        // Not found is fine; any other failure shows up in the create below.
        let _ = self.stream.delete_consumer(&self.name).await;
        let config = pull::Config {
            durable_name: Some(self.name.clone()),
            filter_subject: self.subject.clone(),
            ack_policy: AckPolicy::All,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
            ack_wait: self.settings.ack_wait,
            max_ack_pending: self.settings.max_ack_pending,
            description: Some(format!("Gallop processor, partition {}", self.partition)),
            ..Default::default()
        };
        self.stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("cannot create durable consumer {}: {e}", self.name))
    }

    /// Pulls until the runtime goes away or a gap ends the consumer's usefulness.
    async fn pull(
        self,
        consumer: jetstream::consumer::PullConsumer,
        generation: u64,
        sender: mpsc::Sender<Tagged>,
        lag: Arc<Mutex<BTreeMap<u32, u64>>>,
    ) {
        let partition = self.partition;
        let send = |event: SourceEvent| sender.send((partition, generation, event));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // The consumer was just created, so its deliveries are numbered from 1 and even the
        // first one is checked: deliveries lost before it must not be skipped over, or
        // acknowledging a later message would acknowledge them too.
        let mut sequence = DeliverySequence::fresh();
        let mut caught_up = CaughtUpCheck::default();
        loop {
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.settings.batch)
                .max_bytes_per_batch(self.settings.max_bytes)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(e) => {
                    warn!(partition, error = %e, "cannot pull; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            loop {
                let next = match tokio::time::timeout(IDLE_AFTER, messages.next()).await {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(_idle) => {
                        if let Some(position) = caught_up.check(&self.stream, &consumer, &sequence).await {
                            if send(SourceEvent::CaughtUp { partition, position }).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                let message = match next {
                    Ok(message) => message,
                    Err(e) => {
                        // Missed heartbeats and disconnects end this pull; a new one starts.
                        warn!(partition, error = %e, "pull interrupted; restarting it");
                        break;
                    }
                };
                backoff.reset();
                let Ok(info) = message.info() else {
                    warn!(partition, "message without JetStream metadata; skipped");
                    continue;
                };
                let (position, consumer_sequence, delivered, pending) =
                    (info.stream_sequence, info.consumer_sequence, info.delivered, info.pending);
                let timestamp_ms = i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                if !sequence.follows(consumer_sequence) {
                    // Deliveries went missing: the runtime resumes after what it took, so
                    // the order stays intact.
                    let reason = format!("delivery {consumer_sequence} follows {}", sequence.last);
                    let _ = send(SourceEvent::Gap { partition, reason }).await;
                    return;
                }
                lag.lock().unwrap_or_else(|p| p.into_inner()).insert(partition, pending);
                let id = message
                    .message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned());
                let delivery = Delivery {
                    partition,
                    position,
                    payload: message.message.payload.clone(),
                    id,
                    timestamp_ms,
                    delivered: u32::try_from(delivered).unwrap_or(u32::MAX),
                    ack: Ack::new(NatsAck { message, partition, position }),
                };
                if send(SourceEvent::Message(delivery)).await.is_err() {
                    debug!(partition, "source closed; pull task ends");
                    return;
                }
            }
            backoff.wait().await;
        }
    }
}

/// When an idle partition last checked whether it is caught up, and up to where.
#[derive(Default)]
struct CaughtUpCheck {
    last_check: Option<tokio::time::Instant>,
    reported: u64,
}

impl CaughtUpCheck {
    /// The stream's last sequence when nothing of the partition is left to deliver up to
    /// it and every delivery made was received; `None` when that is not sure, not new, or
    /// checked too recently.
    async fn check(
        &mut self,
        stream: &jetstream::stream::Stream,
        consumer: &jetstream::consumer::PullConsumer,
        sequence: &DeliverySequence,
    ) -> Option<u64> {
        if self.last_check.is_some_and(|at| at.elapsed() < CAUGHT_UP_EVERY) {
            return None;
        }
        self.last_check = Some(tokio::time::Instant::now());
        // The stream's last sequence first: every message up to it existed before the
        // consumer's state below was read.
        let last = stream.get_info().await.ok()?.state.last_sequence;
        let info = consumer.get_info().await.ok()?;
        let all_received = info.delivered.consumer_sequence == sequence.last;
        if info.num_pending == 0 && all_received && last > self.reported {
            self.reported = last;
            Some(last)
        } else {
            None
        }
    }
}

/// Acknowledges a message and, with `AckPolicy::All`, everything before it in its partition.
struct NatsAck {
    message: jetstream::Message,
    partition: u32,
    position: u64,
}

impl Acknowledge for NatsAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), AckError>> {
        async move {
            self.message.double_ack().await.map_err(|e| AckError {
                partition: self.partition,
                position: self.position,
                reason: e.to_string(),
            })
        }
        .boxed()
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

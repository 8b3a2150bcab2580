//! [`KafkaSource`]: the owned partitions of the events topic, assigned (no group
//! membership, no rebalances) and positioned where the runtime says: the positions stored
//! in ClickHouse are the truth, not the group's offsets. Offsets are committed to
//! `kafka.consumer_group` after each landed write, only so that Kafka's tools show the lag.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use gallop_config::KafkaConfig;
use gallop_support::Backoff;
use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Headers, Message},
    Offset, TopicPartitionList,
};
use tokio::task::JoinHandle;
use tracing::warn;

use gallop_broker::{Ack, AckError, Acknowledge, Delivery, LogRange, Source, SourceError, SourceEvent};

use crate::{
    broker::MESSAGE_ID_HEADER,
    client::{blocking, client_config, create, KafkaSetupError, REQUEST_TIMEOUT},
    group::{GroupContext, KafkaGroup},
};

/// How often the partitions' end offsets are read for the lag figures and `/ready`.
const WATERMARKS_EVERY: Duration = Duration::from_secs(2);

/// Per partition: the next offset to be delivered and the log's end offset.
type Offsets = Arc<Mutex<BTreeMap<u32, (i64, i64)>>>;

/// Reads owned partitions of the events topic.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    /// Settings of a short-lived client for offset lookups.
    lookup: ClientConfig,
    topic: String,
    owned: Vec<u32>,
    assigned: BTreeSet<u32>,
    offsets: Offsets,
    ready: Arc<AtomicBool>,
    dedup_window: Duration,
    /// Events decided but not yet handed out (one gap per partition after an
    /// out-of-range error, whose partition librdkafka does not name).
    queued: VecDeque<SourceEvent>,
    last_error_log: Option<Instant>,
    /// Waits between receives that failed (the broker away), reset by the next message.
    receive_backoff: Backoff,
    watermarks: JoinHandle<()>,
    /// Held by every blocking librdkafka call under way.
    calls: Arc<()>,
    /// Where acknowledged positions are committed.
    committer: Committer,
    /// The partitions whose end offsets are watched (the owned ones).
    watched: Arc<Mutex<Vec<u32>>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("topic", &self.topic).field("owned", &self.owned).finish()
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.watermarks.abort();
    }
}

impl KafkaSource {
    /// A source reading `partitions` of `config.topic`, a topic of `total` partitions
    /// (`broker.partitions`), which is created or grown as the gateway does it when
    /// `kafka.create_topics`. Nothing is delivered until a partition is resumed.
    pub async fn open(config: &KafkaConfig, total: u32, partitions: &[u32]) -> Result<Self, KafkaSetupError> {
        let want = partitions.iter().max().map_or(total, |p| p + 1).max(total);
        crate::client::ensure_events_topic(config, want).await?;
        let mut client = client_config(config, &[("fetch.wait.max.ms", "100")]);
        client
            .set("group.id", &config.consumer_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A position outside the log is the runtime's to judge, never reset silently.
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false");
        let consumer: StreamConsumer = create(&client, "consumer", config)?;
        let consumer = Arc::new(consumer);
        let offsets = Offsets::default();
        let ready = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(());
        let watched = Arc::new(Mutex::new(partitions.to_vec()));
        let watermarks = tokio::spawn(watch_watermarks(
            Arc::clone(&calls),
            Arc::clone(&consumer),
            config.topic.clone(),
            Arc::clone(&watched),
            Arc::clone(&offsets),
            Arc::clone(&ready),
        ));
        let mut lookup = client_config(config, &[]);
        lookup
            .set("group.id", &config.consumer_group)
            .set("allow.auto.create.topics", "false")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "error");
        Ok(Self {
            lookup,
            topic: config.topic.clone(),
            owned: partitions.to_vec(),
            assigned: BTreeSet::new(),
            offsets,
            ready,
            dedup_window: config.dedup_window,
            queued: VecDeque::new(),
            last_error_log: None,
            receive_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            watermarks,
            calls,
            committer: Committer::Own(Arc::clone(&consumer)),
            watched,
            consumer,
        })
    }

    /// Commits acknowledged positions through `group`'s member instead of this source's
    /// own client: the broker refuses commits from outside a group that has members.
    pub fn commit_through(mut self, group: &KafkaGroup) -> Self {
        self.committer = Committer::Group(group.consumer());
        self
    }

    /// Stops the source and waits until no librdkafka call of it is under way, so that its
    /// client is gone when this returns (librdkafka 2.12 can crash in a client whose topic
    /// is deleted under it).
    pub async fn close(self) {
        self.watermarks.abort();
        while Arc::strong_count(&self.calls) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn error(&self, operation: &'static str, partition: u32, reason: impl ToString) -> SourceError {
        SourceError::Broker { broker: self.describe(), operation, partition, reason: reason.to_string() }
    }

    fn check(&self, partition: u32) -> Result<(), SourceError> {
        if self.owned.contains(&partition) {
            Ok(())
        } else {
            Err(SourceError::NotOwned { partition, owned: self.owned.clone() })
        }
    }

    fn one(&self, partition: u32, offset: Offset) -> Result<TopicPartitionList, SourceError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition as i32, offset)
            .map_err(|e| self.error("partition list", partition, e))?;
        Ok(list)
    }

    /// Logs a consumer error at most every few seconds (librdkafka repeats them while a
    /// broker is away).
    fn log_error(&mut self, error: &KafkaError) {
        if self.last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
            self.last_error_log = Some(Instant::now());
            warn!(topic = %self.topic, error = %error, "Kafka consumer error; librdkafka retries");
        }
    }
}

impl Source for KafkaSource {
    fn partitions(&self) -> &[u32] {
        &self.owned
    }

    fn log_range(&self, partition: u32) -> BoxFuture<'_, Result<LogRange, SourceError>> {
        async move {
            self.check(partition)?;
            let (consumer, topic) = (Arc::clone(&self.consumer), self.topic.clone());
            let (low, high) =
                tracked(&self.calls, move || consumer.fetch_watermarks(&topic, partition as i32, REQUEST_TIMEOUT))
                    .await
                    .map_err(|e| self.error("watermarks", partition, e))?
                    .map_err(|e| self.error("watermarks", partition, e))?;
            let next = u64::try_from(high).unwrap_or(0) + 1;
            Ok(LogRange { first: (u64::try_from(low).unwrap_or(0) + 1).min(next), next })
        }
        .boxed()
    }

    fn holds(&self, partition: u32, position: u64) -> BoxFuture<'_, Result<bool, SourceError>> {
        async move {
            let Some(offset) = position.checked_sub(1) else { return Ok(false) };
            let list = self.one(partition, Offset::Offset(offset as i64))?;
            let lookup = self.lookup.clone();
            tracked(&self.calls, move || {
                let consumer: BaseConsumer = lookup.create()?;
                consumer.assign(&list)?;
                let deadline = Instant::now() + REQUEST_TIMEOUT;
                while Instant::now() < deadline {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(message)) => return Ok(message.offset() == offset as i64),
                        // Out of range (auto.offset.reset = error): not held.
                        Some(Err(_)) => return Ok(false),
                        None => {}
                    }
                }
                Ok(false)
            })
            .await
            .map_err(|e| self.error("message lookup", partition, e))?
            .map_err(|e: KafkaError| self.error("message lookup", partition, e))
        }
        .boxed()
    }

    fn position_at(&self, partition: u32, timestamp_ms: i64) -> BoxFuture<'_, Result<Option<u64>, SourceError>> {
        async move {
            let query = self.one(partition, Offset::Offset(timestamp_ms))?;
            // A client of its own: librdkafka 2.12 crashed (in its metadata cache) answering
            // this on the consuming client while it fetched from Tansu.
            let lookup = self.lookup.clone();
            let found = tracked(&self.calls, move || {
                let consumer: BaseConsumer = lookup.create()?;
                consumer.offsets_for_times(query, REQUEST_TIMEOUT)
            })
            .await
            .map_err(|e| self.error("offsets for times", partition, e))?
            .map_err(|e| self.error("offsets for times", partition, e))?;
            let offset = found.elements().first().map(|e| e.offset());
            Ok(match offset {
                Some(Offset::Offset(o)) if o >= 0 => Some(o as u64 + 1),
                Some(Offset::Beginning) => Some(1),
                _ => None,
            })
        }
        .boxed()
    }

    fn resume(&mut self, partition: u32, from: u64) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            self.check(partition)?;
            let offset = i64::try_from(from.max(1) - 1).unwrap_or(i64::MAX);
            // Unassigning drops what librdkafka fetched ahead for the partition, so nothing
            // from before the resume is handed out after it.
            if self.assigned.remove(&partition) {
                let list = self.one(partition, Offset::Invalid)?;
                self.consumer.incremental_unassign(&list).map_err(|e| self.error("unassign", partition, e))?;
            }
            let list = self.one(partition, Offset::Offset(offset))?;
            self.consumer.incremental_assign(&list).map_err(|e| self.error("assign", partition, e))?;
            self.assigned.insert(partition);
            self.offsets.lock().unwrap_or_else(|p| p.into_inner()).entry(partition).or_insert((offset, offset)).0 =
                offset;
            Ok(())
        }
        .boxed()
    }

    fn add(&mut self, partition: u32) -> Result<(), SourceError> {
        if !self.owned.contains(&partition) {
            self.owned.push(partition);
            self.watched.lock().unwrap_or_else(|p| p.into_inner()).push(partition);
        }
        Ok(())
    }

    fn remove(&mut self, partition: u32) {
        if self.assigned.remove(&partition) {
            if let Ok(list) = self.one(partition, Offset::Invalid) {
                if let Err(e) = self.consumer.incremental_unassign(&list) {
                    warn!(partition, error = %e, "unassigning a handed-over partition failed");
                }
            }
        }
        self.owned.retain(|&p| p != partition);
        self.watched.lock().unwrap_or_else(|p| p.into_inner()).retain(|&p| p != partition);
        self.offsets.lock().unwrap_or_else(|p| p.into_inner()).remove(&partition);
    }

    fn next(&mut self) -> BoxFuture<'_, Option<SourceEvent>> {
        async move {
            loop {
                if let Some(event) = self.queued.pop_front() {
                    return Some(event);
                }
                // recv is cancel-safe: a message is taken from librdkafka's queue only in
                // the poll that returns it.
                let message = match self.consumer.recv().await {
                    Ok(message) => {
                        self.receive_backoff.reset();
                        message
                    }
                    Err(e)
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
                        ) =>
                    {
                        // librdkafka does not say which partition: every assigned one is
                        // checked against the log again and resumed where it stands.
                        warn!(topic = %self.topic, error = %e, "a position is outside the log");
                        let reason = format!("the broker refused a fetch: {e}");
                        for &partition in &self.assigned {
                            self.queued.push_back(SourceEvent::Gap { partition, reason: reason.clone() });
                        }
                        self.assigned.clear();
                        let _ = self.consumer.incremental_unassign(&self.consumer.assignment().unwrap_or_default());
                        continue;
                    }
                    Err(e) => {
                        self.log_error(&e);
                        self.receive_backoff.wait().await;
                        continue;
                    }
                };
                let partition = u32::try_from(message.partition()).unwrap_or(u32::MAX);
                if !self.assigned.contains(&partition) {
                    continue;
                }
                let offset = message.offset();
                if let Some(entry) = self.offsets.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&partition) {
                    entry.0 = offset + 1;
                }
                let id = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == MESSAGE_ID_HEADER)
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_owned)
                });
                let position = u64::try_from(offset).unwrap_or(0) + 1;
                let ack = KafkaAck { consumer: self.committer.clone(), topic: self.topic.clone(), partition, position };
                return Some(SourceEvent::Message(Delivery {
                    partition,
                    position,
                    payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                    id,
                    timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                    delivered: 1,
                    ack: Ack::new(ack),
                }));
            }
        }
        .boxed()
    }

    fn lag(&self) -> Vec<(u32, u64)> {
        let offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        offsets.iter().map(|(&p, &(next, end))| (p, u64::try_from(end - next).unwrap_or(0))).collect()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn dedup_window(&self) -> Option<Duration> {
        Some(self.dedup_window)
    }

    fn describe(&self) -> String {
        format!("Kafka topic {}", self.topic)
    }
}

/// A blocking librdkafka call off the async threads, counted in `calls` while it runs (so
/// that [`KafkaSource::close`] can wait for it).
async fn tracked<T: Send + 'static>(calls: &Arc<()>, call: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let guard = Arc::clone(calls);
    blocking(move || {
        let _guard = guard;
        call()
    })
    .await
}

/// Reads the end offset of every owned partition now and then: the lag, and whether the
/// broker answers.
async fn watch_watermarks(
    calls: Arc<()>,
    consumer: Arc<StreamConsumer>,
    topic: String,
    partitions: Arc<Mutex<Vec<u32>>>,
    offsets: Offsets,
    ready: Arc<AtomicBool>,
) {
    loop {
        let mut answered = true;
        let now: Vec<u32> = partitions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for partition in now {
            let (consumer, name) = (Arc::clone(&consumer), topic.clone());
            match tracked(&calls, move || consumer.fetch_watermarks(&name, partition as i32, WATERMARKS_EVERY)).await {
                Ok(Ok((_, high))) => {
                    offsets.lock().unwrap_or_else(|p| p.into_inner()).entry(partition).or_insert((high, high)).1 = high;
                }
                _ => answered = false,
            }
        }
        ready.store(answered, Ordering::Relaxed);
        tokio::time::sleep(WATERMARKS_EVERY).await;
    }
}

/// The client positions are committed through: the source's own, or the group member's
/// where processors share the partitions through the group.
#[derive(Clone)]
enum Committer {
    Own(Arc<StreamConsumer>),
    Group(Arc<BaseConsumer<GroupContext>>),
}

impl Committer {
    fn commit(&self, list: &TopicPartitionList) -> Result<(), KafkaError> {
        match self {
            Self::Own(consumer) => consumer.commit(list, CommitMode::Sync),
            Self::Group(consumer) => consumer.commit(list, CommitMode::Sync),
        }
    }
}

/// Commits a position to the consumer group, for the lag Kafka's tools show.
struct KafkaAck {
    consumer: Committer,
    topic: String,
    partition: u32,
    position: u64,
}

impl Acknowledge for KafkaAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), AckError>> {
        async move {
            let fail = |reason: String| AckError { partition: self.partition, position: self.position, reason };
            let mut list = TopicPartitionList::new();
            // The committed offset is the next one to read: the offset after this message's.
            list.add_partition_offset(&self.topic, self.partition as i32, Offset::Offset(self.position as i64))
                .map_err(|e| fail(e.to_string()))?;
            let consumer = self.consumer.clone();
            // Synchronous, so the commit is confirmed (and not lost at shutdown).
            blocking(move || consumer.commit(&list)).await.map_err(fail)?.map_err(|e| fail(e.to_string()))
        }
        .boxed()
    }
}

//! [`MemoryBroker`]: an in-process broker, and [`MemorySource`], its consuming side.
//!
//! Each partition is an in-memory log. Positions start at 1 and grow by one per stored
//! message, per partition (as Kafka offsets do) or, with
//! [`with_stream_sequence`](MemoryBroker::with_stream_sequence), over all partitions (as a
//! JetStream stream's sequence does). A message id already stored is acknowledged as a
//! duplicate without storing it again, unless [`without_dedup`](MemoryBroker::without_dedup)
//! turns that off (Kafka has no such window).
//!
//! It exists for tests of the pieces around a broker: [`MemoryFaults`] stalls deliveries or
//! acknowledgements (a process killed at that step), loses deliveries, and the log can be
//! truncated (retention) or recreated, so the runtime's exactly-once rules can be checked
//! deterministically.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures::future::{self, BoxFuture, FutureExt};
use tokio::sync::Notify;

use crate::{
    publisher::{OutboundMessage, Position, PublishError, Publisher},
    source::{Ack, AckError, Acknowledge, Delivery, LogRange, Source, SourceError, SourceEvent},
};

/// A message stored by [`MemoryBroker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in its partition, from 1.
    pub offset: u64,
    /// The publisher's message id.
    pub id: String,
    /// The payload as published.
    pub payload: Bytes,
    /// When it was stored, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

#[derive(Debug, Default)]
struct PartitionLog {
    /// Messages still held, oldest first.
    log: Vec<StoredMessage>,
    ids: HashSet<String>,
    /// Highest position acknowledged.
    acked: u64,
}

#[derive(Debug)]
struct State {
    partitions: Vec<PartitionLog>,
    /// The next position of a stream-wide sequence, or of each partition.
    next: Vec<u64>,
    /// Lowest position still held (stream-wide sequence: the same for all partitions).
    first: Vec<u64>,
}

/// Faults a test switches on to stop the consuming side at a chosen step.
#[derive(Debug, Default)]
pub struct MemoryFaults {
    /// Deliveries handed out so far, by every source of this broker.
    delivered: AtomicUsize,
    /// After this many deliveries, `next` never completes (0: no limit).
    stall_after_deliveries: AtomicUsize,
    /// Acknowledgements never complete (and record nothing).
    stall_acks: AtomicBool,
    /// Acknowledgements that completed.
    acks: AtomicUsize,
    /// Set when a stall was reached.
    stalled: AtomicBool,
    /// Partitions whose next delivery goes missing on the way.
    lose_next: Mutex<HashSet<u32>>,
    /// Bumped to make every source deliver again what is not acknowledged.
    redeliveries: AtomicU64,
    /// `log_range` reports the end one short, as Tansu 0.6 sometimes does.
    end_one_short: AtomicBool,
    stalled_notify: Notify,
}

impl MemoryFaults {
    /// Stalls every `next` after `n` deliveries in all (`0` lifts the limit).
    pub fn stall_after_deliveries(&self, n: usize) {
        self.stall_after_deliveries.store(n, Ordering::SeqCst);
    }

    /// Makes every acknowledgement hang (`true`) or complete (`false`).
    pub fn stall_acks(&self, stall: bool) {
        self.stall_acks.store(stall, Ordering::SeqCst);
    }

    /// The next delivery of `partition` is lost on the way; the source reports a gap.
    pub fn lose_next_delivery(&self, partition: u32) {
        lock(&self.lose_next).insert(partition);
    }

    /// Every source delivers again, after what it already delivered, the messages not yet
    /// acknowledged, as JetStream does once `ack_wait` has passed.
    pub fn redeliver_unacknowledged(&self) {
        self.redeliveries.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes `log_range` report the log's end one position short (`true`), as Tansu 0.6's
    /// end offsets sometimes are.
    pub fn report_end_one_short(&self, short: bool) {
        self.end_one_short.store(short, Ordering::SeqCst);
    }

    /// Deliveries handed out so far.
    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
    }

    /// Acknowledgements completed so far.
    pub fn acks(&self) -> usize {
        self.acks.load(Ordering::SeqCst)
    }

    /// Waits until a delivery or an acknowledgement has stalled.
    pub async fn stalled(&self) {
        loop {
            let notified = self.stalled_notify.notified();
            if self.stalled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Clears every fault and the stall flag (counters stay).
    pub fn clear(&self) {
        self.stall_after_deliveries.store(0, Ordering::SeqCst);
        self.stall_acks.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
        self.end_one_short.store(false, Ordering::SeqCst);
        lock(&self.lose_next).clear();
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.stalled_notify.notify_waiters();
    }
}

/// An in-process, partitioned message log.
#[derive(Debug)]
pub struct MemoryBroker {
    state: Mutex<State>,
    stream_sequence: bool,
    deduplicate: bool,
    available: AtomicBool,
    published: Notify,
    faults: MemoryFaults,
    clock_ms: AtomicU64,
}

impl MemoryBroker {
    /// A broker with `partitions` empty partitions (at least one), positions per partition,
    /// storing a message id once.
    pub fn new(partitions: u32) -> Self {
        let n = partitions.max(1) as usize;
        Self {
            state: Mutex::new(State {
                partitions: (0..n).map(|_| PartitionLog::default()).collect(),
                next: vec![1; n],
                first: vec![1; n],
            }),
            stream_sequence: false,
            deduplicate: true,
            available: AtomicBool::new(true),
            published: Notify::new(),
            faults: MemoryFaults::default(),
            clock_ms: AtomicU64::new(0),
        }
    }

    /// Positions from one sequence over all partitions, as in a JetStream stream.
    pub fn with_stream_sequence(mut self) -> Self {
        self.stream_sequence = true;
        self
    }

    /// Stores every publish, even of an id already stored, as a Kafka topic does.
    pub fn without_dedup(mut self) -> Self {
        self.deduplicate = false;
        self
    }

    /// Messages held in `partition`, oldest first.
    pub fn messages(&self, partition: u32) -> Vec<StoredMessage> {
        self.lock().partitions.get(partition as usize).map(|p| p.log.clone()).unwrap_or_default()
    }

    /// The highest position acknowledged in `partition`.
    pub fn acked(&self, partition: u32) -> u64 {
        self.lock().partitions.get(partition as usize).map_or(0, |p| p.acked)
    }

    /// Makes the broker refuse (`false`) or accept (`true`) publishes, to exercise
    /// failure handling in callers.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// The fault switches of the consuming side.
    pub fn faults(&self) -> &MemoryFaults {
        &self.faults
    }

    /// Stamps messages published from now on with `timestamp_ms` (0: the wall clock).
    pub fn set_clock_ms(&self, timestamp_ms: u64) {
        self.clock_ms.store(timestamp_ms, Ordering::SeqCst);
    }

    /// Removes every message below position `before` of every partition, as retention
    /// does (with a stream sequence, `before` is a stream position).
    pub fn remove_before(&self, before: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        for (partition, first) in state.partitions.iter_mut().zip(state.first.iter_mut()) {
            partition.log.retain(|m| m.offset >= before);
            *first = (*first).max(before);
        }
        if self.stream_sequence {
            let next = state.next[0];
            state.first.iter_mut().for_each(|f| *f = (*f).min(next));
        } else {
            for (first, next) in state.first.iter_mut().zip(&state.next) {
                *first = (*first).min(*next);
            }
        }
    }

    /// Deletes every message and starts the positions at 1 again, as deleting and
    /// recreating a stream or topic does.
    pub fn recreate(&self) {
        let mut state = self.lock();
        let n = state.partitions.len();
        *state = State {
            partitions: (0..n).map(|_| PartitionLog::default()).collect(),
            next: vec![1; n],
            first: vec![1; n],
        };
    }

    /// A consuming side reading `partitions` (all when empty); nothing is delivered until
    /// [`Source::resume`]. With `dedup_window`, the source tells the runtime to keep a
    /// window of message ids (as for Kafka).
    pub fn source(self: &Arc<Self>, partitions: &[u32], dedup_window: Option<Duration>) -> MemorySource {
        let owned = if partitions.is_empty() { (0..self.partitions()).collect() } else { partitions.to_vec() };
        MemorySource {
            broker: Arc::clone(self),
            owned,
            cursors: BTreeMap::new(),
            turn: 0,
            dedup_window,
            redeliveries: self.faults.redeliveries.load(Ordering::SeqCst),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn now_ms(&self) -> i64 {
        match self.clock_ms.load(Ordering::SeqCst) {
            0 => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            fixed => fixed as i64,
        }
    }

    fn range(&self, state: &State, partition: usize) -> LogRange {
        let next = if self.stream_sequence { state.next[0] } else { state.next[partition] };
        LogRange { first: state.first[partition].min(next), next }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation under these locks is a push, an insert or a whole-value store, so a
    // panic while holding one cannot leave the state half-written.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Publisher for MemoryBroker {
    fn partitions(&self) -> u32 {
        // The constructor makes at most u32::MAX partitions.
        self.lock().partitions.len() as u32
    }

    fn is_ready(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    fn publish(&self, message: OutboundMessage) -> BoxFuture<'static, Result<Position, PublishError>> {
        let now = self.now_ms();
        let result = if !self.is_ready() {
            Err(PublishError::NotConnected("in-process broker marked unavailable".to_owned()))
        } else {
            let mut state = self.lock();
            let partitions = state.partitions.len() as u32;
            let index = message.partition as usize;
            if index >= state.partitions.len() {
                Err(PublishError::NoSuchPartition { partition: message.partition, partitions })
            } else if self.deduplicate && state.partitions[index].ids.contains(&message.id) {
                let log = &state.partitions[index].log;
                let offset = log.iter().rev().find(|m| m.id == message.id).map_or(0, |m| m.offset);
                Ok(Position { partition: message.partition, offset, duplicate: true })
            } else {
                let counter = if self.stream_sequence { 0 } else { index };
                let offset = state.next[counter];
                state.next[counter] += 1;
                let partition = &mut state.partitions[index];
                partition.ids.insert(message.id.clone());
                partition.log.push(StoredMessage {
                    offset,
                    id: message.id,
                    payload: message.payload,
                    timestamp_ms: now,
                });
                Ok(Position { partition: message.partition, offset, duplicate: false })
            }
        };
        if result.is_ok() {
            self.published.notify_waiters();
        }
        future::ready(result).boxed()
    }
}

/// The consuming side of a [`MemoryBroker`].
#[derive(Debug)]
pub struct MemorySource {
    broker: Arc<MemoryBroker>,
    owned: Vec<u32>,
    /// Next position to deliver, per resumed partition.
    cursors: BTreeMap<u32, u64>,
    turn: usize,
    dedup_window: Option<Duration>,
    /// The broker's redelivery count this source has acted on.
    redeliveries: u64,
}

impl MemorySource {
    fn check(&self, partition: u32) -> Result<(), SourceError> {
        if self.owned.contains(&partition) {
            Ok(())
        } else {
            Err(SourceError::NotOwned { partition, owned: self.owned.clone() })
        }
    }

    /// The next event if one is ready now.
    fn poll_once(&mut self) -> Option<SourceEvent> {
        let faults = &self.broker.faults;
        let limit = faults.stall_after_deliveries.load(Ordering::SeqCst);
        let resumed: Vec<u32> = self.cursors.keys().copied().collect();
        if resumed.is_empty() {
            return None;
        }
        let state = self.broker.lock();
        let redeliveries = faults.redeliveries.load(Ordering::SeqCst);
        if redeliveries != self.redeliveries {
            self.redeliveries = redeliveries;
            for (&partition, cursor) in &mut self.cursors {
                *cursor = (*cursor).min(state.partitions[partition as usize].acked + 1);
            }
        }
        for step in 0..resumed.len() {
            let partition = resumed[(self.turn + step) % resumed.len()];
            let cursor = self.cursors[&partition];
            let range = self.broker.range(&state, partition as usize);
            if cursor < range.first {
                self.cursors.remove(&partition);
                return Some(SourceEvent::Gap {
                    partition,
                    reason: format!("position {cursor} was removed; the log starts at {}", range.first),
                });
            }
            let log = &state.partitions[partition as usize].log;
            let Some(message) = log.iter().find(|m| m.offset >= cursor) else {
                let last = range.next.saturating_sub(1);
                if self.broker.stream_sequence && last >= cursor {
                    self.cursors.insert(partition, range.next);
                    return Some(SourceEvent::CaughtUp { partition, position: last });
                }
                continue;
            };
            if limit > 0 && faults.delivered.load(Ordering::SeqCst) >= limit {
                faults.stall();
                return None;
            }
            self.turn = (self.turn + step + 1) % resumed.len();
            if lock(&faults.lose_next).remove(&partition) {
                self.cursors.remove(&partition);
                return Some(SourceEvent::Gap { partition, reason: "a delivery went missing".to_owned() });
            }
            self.cursors.insert(partition, message.offset + 1);
            faults.delivered.fetch_add(1, Ordering::SeqCst);
            let ack = MemoryAck { broker: Arc::clone(&self.broker), partition, position: message.offset };
            return Some(SourceEvent::Message(Delivery {
                partition,
                position: message.offset,
                payload: message.payload.clone(),
                id: Some(message.id.clone()),
                timestamp_ms: message.timestamp_ms,
                delivered: 1,
                ack: Ack::new(ack),
            }));
        }
        None
    }
}

impl Source for MemorySource {
    fn partitions(&self) -> &[u32] {
        &self.owned
    }

    fn log_range(&self, partition: u32) -> BoxFuture<'_, Result<LogRange, SourceError>> {
        let result = self.check(partition).map(|()| {
            let mut range = self.broker.range(&self.broker.lock(), partition as usize);
            if self.broker.faults.end_one_short.load(Ordering::SeqCst) && range.next > range.first {
                range.next -= 1;
            }
            range
        });
        future::ready(result).boxed()
    }

    fn holds(&self, partition: u32, position: u64) -> BoxFuture<'_, Result<bool, SourceError>> {
        let result = self
            .check(partition)
            .map(|()| self.broker.lock().partitions[partition as usize].log.iter().any(|m| m.offset == position));
        future::ready(result).boxed()
    }

    fn position_at(&self, partition: u32, timestamp_ms: i64) -> BoxFuture<'_, Result<Option<u64>, SourceError>> {
        let result = self.check(partition).map(|()| {
            let state = self.broker.lock();
            state.partitions[partition as usize].log.iter().find(|m| m.timestamp_ms >= timestamp_ms).map(|m| m.offset)
        });
        future::ready(result).boxed()
    }

    fn resume(&mut self, partition: u32, from: u64) -> BoxFuture<'_, Result<(), SourceError>> {
        let result = self.check(partition).map(|()| {
            self.cursors.insert(partition, from.max(1));
        });
        future::ready(result).boxed()
    }

    fn add(&mut self, partition: u32) -> Result<(), SourceError> {
        if partition >= self.broker.partitions() {
            return Err(SourceError::NotOwned { partition, owned: self.owned.clone() });
        }
        if !self.owned.contains(&partition) {
            self.owned.push(partition);
        }
        Ok(())
    }

    fn remove(&mut self, partition: u32) {
        self.owned.retain(|&p| p != partition);
        self.cursors.remove(&partition);
    }

    fn next(&mut self) -> BoxFuture<'_, Option<SourceEvent>> {
        async move {
            let broker = Arc::clone(&self.broker);
            loop {
                let published = broker.published.notified();
                if let Some(event) = self.poll_once() {
                    return Some(event);
                }
                if broker.faults.stalled.load(Ordering::SeqCst) {
                    // A stalled source never delivers again: the process "died" here.
                    future::pending::<()>().await;
                }
                published.await;
            }
        }
        .boxed()
    }

    fn lag(&self) -> Vec<(u32, u64)> {
        let state = self.broker.lock();
        self.cursors
            .iter()
            .map(|(&p, &cursor)| {
                let held = state.partitions[p as usize].log.iter().filter(|m| m.offset >= cursor).count();
                (p, held as u64)
            })
            .collect()
    }

    fn is_ready(&self) -> bool {
        self.broker.is_ready()
    }

    fn dedup_window(&self) -> Option<Duration> {
        self.dedup_window
    }

    fn describe(&self) -> String {
        "in-process broker".to_owned()
    }
}

struct MemoryAck {
    broker: Arc<MemoryBroker>,
    partition: u32,
    position: u64,
}

impl Acknowledge for MemoryAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), AckError>> {
        async move {
            let faults = &self.broker.faults;
            if faults.stall_acks.load(Ordering::SeqCst) {
                faults.stall();
                future::pending::<()>().await;
            }
            let mut state = self.broker.lock();
            let partition = state.partitions.get_mut(self.partition as usize).ok_or_else(|| AckError {
                partition: self.partition,
                position: self.position,
                reason: "no such partition".to_owned(),
            })?;
            partition.acked = partition.acked.max(self.position);
            faults.acks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: u32, id: &str) -> OutboundMessage {
        OutboundMessage { partition, id: id.into(), payload: Bytes::from_static(b"x\n"), events: 1 }
    }

    #[tokio::test]
    async fn stores_in_order_and_deduplicates() {
        let broker = MemoryBroker::new(2);
        assert_eq!(broker.publish(msg(1, "a")).await.map(|p| p.offset).ok(), Some(1));
        assert_eq!(broker.publish(msg(1, "b")).await.map(|p| p.offset).ok(), Some(2));
        let again = broker.publish(msg(1, "a")).await.expect("duplicate is acknowledged");
        assert_eq!((again.offset, again.duplicate), (1, true));
        assert_eq!(broker.messages(1).len(), 2);
        assert!(broker.messages(0).is_empty());
    }

    #[tokio::test]
    async fn without_dedup_stores_every_copy() {
        let broker = MemoryBroker::new(1).without_dedup();
        broker.publish(msg(0, "a")).await.expect("stored");
        let again = broker.publish(msg(0, "a")).await.expect("stored again");
        assert_eq!((again.offset, again.duplicate), (2, false));
    }

    #[tokio::test]
    async fn refuses_bad_partition_and_when_unavailable() {
        let broker = MemoryBroker::new(2);
        assert!(matches!(broker.publish(msg(2, "a")).await, Err(PublishError::NoSuchPartition { .. })));
        broker.set_available(false);
        assert!(!broker.is_ready());
        assert!(matches!(broker.publish(msg(0, "a")).await, Err(PublishError::NotConnected(_))));
        assert!(broker.messages(0).is_empty());
    }

    async fn next_message(source: &mut MemorySource) -> (u32, u64) {
        match source.next().await {
            Some(SourceEvent::Message(d)) => (d.partition, d.position),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn source_delivers_in_order_from_where_it_is_resumed() {
        let broker = Arc::new(MemoryBroker::new(2));
        for id in ["a", "b", "c"] {
            broker.publish(msg(0, id)).await.expect("stored");
        }
        let mut source = broker.source(&[0], None);
        source.resume(0, 2).await.expect("resume");
        assert_eq!(next_message(&mut source).await, (0, 2));
        assert_eq!(next_message(&mut source).await, (0, 3));
        assert_eq!(source.log_range(0).await.expect("range"), LogRange { first: 1, next: 4 });
        assert!(source.resume(1, 1).await.is_err(), "partition 1 is not owned");
    }

    #[tokio::test]
    async fn stream_sequence_reports_caught_up_partitions_and_retention() {
        let broker = Arc::new(MemoryBroker::new(2).with_stream_sequence());
        broker.publish(msg(0, "a")).await.expect("stored");
        broker.publish(msg(1, "b")).await.expect("stored");
        broker.publish(msg(1, "c")).await.expect("stored");
        let mut source = broker.source(&[0], None);
        source.resume(0, 1).await.expect("resume");
        assert_eq!(next_message(&mut source).await, (0, 1));
        assert!(matches!(source.next().await, Some(SourceEvent::CaughtUp { partition: 0, position: 3 })));
        broker.remove_before(3);
        assert_eq!(source.log_range(0).await.expect("range"), LogRange { first: 3, next: 4 });
        broker.recreate();
        assert_eq!(source.log_range(0).await.expect("range"), LogRange { first: 1, next: 1 });
    }

    #[tokio::test]
    async fn a_lost_delivery_is_reported_as_a_gap() {
        let broker = Arc::new(MemoryBroker::new(1));
        broker.publish(msg(0, "a")).await.expect("stored");
        broker.publish(msg(0, "b")).await.expect("stored");
        let mut source = broker.source(&[], None);
        source.resume(0, 1).await.expect("resume");
        broker.faults().lose_next_delivery(0);
        assert!(matches!(source.next().await, Some(SourceEvent::Gap { partition: 0, .. })));
        source.resume(0, 1).await.expect("resume");
        assert_eq!(next_message(&mut source).await, (0, 1));
    }

    #[tokio::test]
    async fn acknowledgements_are_recorded_and_can_stall() {
        let broker = Arc::new(MemoryBroker::new(1));
        broker.publish(msg(0, "a")).await.expect("stored");
        let mut source = broker.source(&[], None);
        source.resume(0, 1).await.expect("resume");
        let Some(SourceEvent::Message(delivery)) = source.next().await else { panic!("a message") };
        broker.faults().stall_acks(true);
        let stalled = tokio::time::timeout(Duration::from_millis(50), delivery.ack.ack()).await;
        assert!(stalled.is_err(), "a stalled ack never completes");
        assert_eq!(broker.acked(0), 0);
        broker.faults().clear();
        delivery.ack.ack().await.expect("ack");
        assert_eq!(broker.acked(0), 1);
    }
}

//! Micro-batching: events bound for one partition, from one request or from concurrent
//! requests, share one broker message.
//!
//! Each partition has a task that takes submissions from a channel, closes a message when
//! it reaches `max_events` or `max_bytes` or when its first submission has waited
//! `linger`, and publishes it without waiting for earlier messages' acknowledgements (up
//! to `max_in_flight` messages over all partitions). Every submission in a message gets
//! that message's outcome. A submission is never split across messages, so a request's
//! events for one partition are stored together or not at all.
//!
//! A submission whose events all carry client ids is published as a message of its own,
//! with a message id derived from those ids: a client retrying a request that got a 503
//! (or whose answer was lost) produces the same message id, and the broker stores it once
//! inside its duplicate window.
//!
//! A failed publish is retried with the same message id (the broker stores it once) until
//! the earliest deadline of the submissions inside it; after that it is abandoned and never
//! sent again, so a request answered 503 is not published later behind its back. Once a
//! message was sent, its submitters wait for the broker's answer (up to the broker's own
//! acknowledgement timeout, `ingest.ack_timeout` on NATS) however late it comes: the
//! outcome they report is the real one, or "unknown" (`PublishError::Timeout`), never a
//! "not stored" that the broker later contradicts.
//!
//! The batcher also watches the broker: a message waiting longer than `stall_after` while
//! no answer at all arrives means a stalled broker, and an "out of storage" answer means a
//! full one; [`Batcher::trouble`] says so, for `/ready`.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use gallop_broker::{OutboundMessage, PublishError, Publisher};
use gallop_config::BatchingConfig;
use gallop_support::Backoff;
use tokio::{
    sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore},
    task::{JoinHandle, JoinSet},
    time::{sleep_until, timeout_at, Instant},
};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, outbound::Outbound};

/// Submissions a partition's channel holds before submitters wait.
const CHANNEL_CAPACITY: usize = 4096;
/// Extra time a submitter waits past the longest a publish may take for its verdict.
const VERDICT_GRACE: Duration = Duration::from_millis(250);

/// Events of one request for one partition.
struct Submission {
    body: Outbound,
    /// Message id derived from client event ids; such a submission is never coalesced.
    dedup_id: Option<String>,
    deadline: Instant,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// The per-partition batching tasks.
pub(crate) struct Batcher {
    senders: Vec<mpsc::Sender<Submission>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    closing: CancellationToken,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("partitions", &self.senders.len()).finish()
    }
}

struct Shared {
    publisher: Arc<dyn Publisher>,
    config: BatchingConfig,
    waits: BrokerWaits,
    metrics: Metrics,
    in_flight: Arc<Semaphore>,
    run_id: String,
    health: BrokerHealth,
}

/// How long the gateway waits on the broker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BrokerWaits {
    /// Longest a sent message waits for its acknowledgement (the broker client's own
    /// timeout; the batcher's bound only guards against a client that never answers).
    pub(crate) ack_timeout: Duration,
    /// A message waiting this long with no broker answer meanwhile means a stalled broker.
    pub(crate) stall_after: Duration,
}

/// What the publishes tell about the broker.
#[derive(Default)]
struct BrokerHealth {
    /// Start of every publish awaiting the broker's answer, by a sequence number.
    waiting: Mutex<BTreeMap<u64, Instant>>,
    next: AtomicU64,
    /// When the broker last answered anything (an ack or an error).
    last_answer: Mutex<Option<Instant>>,
    /// When the broker last said it is out of storage, and what it said.
    last_full: Mutex<Option<(Instant, String)>>,
}

impl BrokerHealth {
    fn started(&self) -> u64 {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiting).insert(ticket, Instant::now());
        ticket
    }

    fn answered(&self, ticket: u64, result: &Result<(), PublishError>) {
        lock(&self.waiting).remove(&ticket);
        let now = Instant::now();
        match result {
            Err(PublishError::Timeout { .. }) => {}
            Err(PublishError::StorageFull { reason, .. }) => {
                *lock(&self.last_answer) = Some(now);
                *lock(&self.last_full) = Some((now, reason.clone()));
            }
            _ => *lock(&self.last_answer) = Some(now),
        }
    }

    fn trouble(&self, stall_after: Duration) -> Option<String> {
        let now = Instant::now();
        if let Some((at, reason)) = lock(&self.last_full).as_ref() {
            if now.duration_since(*at) < stall_after {
                return Some(format!("broker out of storage: {reason}"));
            }
        }
        let oldest = lock(&self.waiting).values().next().copied()?;
        let quiet_since = lock(&self.last_answer).map_or(oldest, |at| at.max(oldest));
        let waited = now.duration_since(oldest);
        (waited >= stall_after && now.duration_since(quiet_since) >= stall_after).then(|| {
            format!("broker stalled: a message has waited {waited:.1?} for its acknowledgement (ingest.stall_after)")
        })
    }
}

impl Shared {
    /// The longest one publish attempt may take once started: the broker client's own
    /// acknowledgement timeout (NATS) or twice the library's settling bound (Kafka), plus a
    /// grace; the bound only guards against a client that never answers.
    fn attempt_bound(&self) -> Duration {
        self.publisher.publish_settles_within().map_or(self.waits.ack_timeout, |bound| bound * 2) + VERDICT_GRACE
    }
}

/// Locks `mutex`, also after a panic elsewhere (the data is plain bookkeeping).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batcher {
    /// Starts one task per partition of `publisher`. `run_id` prefixes message ids and
    /// must be unique per gateway process.
    pub(crate) fn start(
        publisher: Arc<dyn Publisher>,
        config: BatchingConfig,
        waits: BrokerWaits,
        metrics: Metrics,
        run_id: String,
    ) -> Self {
        let shared = Arc::new(Shared {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            publisher: publisher.clone(),
            config,
            waits,
            metrics,
            run_id,
            health: BrokerHealth::default(),
        });
        let closing = CancellationToken::new();
        let (senders, tasks) = (0..publisher.partitions())
            .map(|partition| {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                let task = tokio::spawn(run_partition(partition, rx, shared.clone(), closing.clone()));
                (tx, task)
            })
            .unzip();
        Self { senders, tasks: std::sync::Mutex::new(tasks), closing, shared }
    }

    /// Why the broker cannot take events now, judged by the publishes: stalled (a message
    /// waited `stall_after` with no answer from the broker meanwhile) or out of storage
    /// (in the last `stall_after`).
    pub(crate) fn trouble(&self) -> Option<String> {
        self.shared.health.trouble(self.shared.waits.stall_after)
    }

    /// Hands `body` to `partition`'s next message and
    /// waits for that message's outcome. It is sent only before `deadline`; once sent, its
    /// acknowledgement is awaited (up to the broker's acknowledgement timeout) even past
    /// `deadline`, so an error other than `Timeout` always means "not stored".
    pub(crate) async fn submit(
        &self,
        partition: u32,
        body: Outbound,
        dedup_id: Option<String>,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let sender = self
            .senders
            .get(partition as usize)
            .ok_or(PublishError::NoSuchPartition { partition, partitions: self.senders.len() as u32 })?;
        let (done, verdict) = oneshot::channel();
        let submission = Submission { body, dedup_id, deadline, done };
        match timeout_at(deadline, sender.send(submission)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(PublishError::NotConnected("gateway is shutting down".to_owned())),
            Err(_) => return Err(PublishError::NotSent(format!("queued for partition {partition}"))),
        }
        // The publish task answers every submission: not sent by the deadline, or the
        // outcome of the send. This bound only guards against a task that died.
        let longest = deadline + self.shared.attempt_bound() + VERDICT_GRACE;
        match timeout_at(longest, verdict).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::NotConnected("gateway is shutting down".to_owned())),
            Err(_) => Err(PublishError::Timeout { id: format!("(batch for partition {partition})") }),
        }
    }

    /// Stops taking submissions once the queues are empty, and waits until every message
    /// already formed has been acknowledged or abandoned.
    pub(crate) async fn close(&self) {
        self.closing.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// A message being filled.
struct Batch {
    dedup_id: Option<String>,
    body: Option<Outbound>,
    deadline: Instant,
    waiters: Vec<oneshot::Sender<Result<(), PublishError>>>,
}

impl Batch {
    fn new(first: Submission) -> Self {
        let mut batch =
            Self { dedup_id: first.dedup_id.clone(), body: None, deadline: first.deadline, waiters: Vec::new() };
        batch.add(first);
        batch
    }

    fn add(&mut self, s: Submission) {
        match &mut self.body {
            Some(body) => body.append(s.body),
            None => self.body = Some(s.body),
        }
        self.deadline = self.deadline.min(s.deadline);
        self.waiters.push(s.done);
    }

    fn events(&self) -> u32 {
        self.body.as_ref().map_or(0, Outbound::events)
    }

    fn fits(&self, s: &Submission, config: &BatchingConfig) -> bool {
        self.dedup_id.is_none()
            && s.dedup_id.is_none()
            && self.body.as_ref().map_or(s.body.size(), |b| b.size_with(&s.body)) <= config.max_bytes
            && (self.events() + s.body.events()) as usize <= config.max_events
    }

    fn is_full(&self, config: &BatchingConfig) -> bool {
        self.dedup_id.is_some()
            || self.body.as_ref().map_or(0, Outbound::size) >= config.max_bytes
            || self.events() as usize >= config.max_events
    }
}

async fn run_partition(
    partition: u32,
    mut rx: mpsc::Receiver<Submission>,
    shared: Arc<Shared>,
    closing: CancellationToken,
) {
    let mut publishes = JoinSet::new();
    let mut carry: Option<Submission> = None;
    let mut sequence: u64 = 0;
    loop {
        let first = match carry.take() {
            Some(s) => s,
            None => tokio::select! {
                s = rx.recv() => match s { Some(s) => s, None => break },
                // Closing: take what is queued, then stop.
                () = closing.cancelled() => match rx.try_recv() { Ok(s) => s, Err(_) => break },
                Some(_) = publishes.join_next(), if !publishes.is_empty() => continue,
            },
        };
        let linger_end = Instant::now() + shared.config.linger;
        let mut batch = Batch::new(first);
        while !batch.is_full(&shared.config) {
            let next = match rx.try_recv() {
                Ok(s) => s,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if closing.is_cancelled() {
                        break;
                    }
                    tokio::select! {
                        s = rx.recv() => match s { Some(s) => s, None => break },
                        () = sleep_until(linger_end) => break,
                    }
                }
            };
            if batch.fits(&next, &shared.config) {
                batch.add(next);
            } else {
                carry = Some(next);
                break;
            }
        }
        // Bounds messages awaiting acknowledgement; waiting here backs up the channel and
        // so the requests (which get a 503 at their deadline).
        let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
            break;
        };
        let id = match batch.dedup_id.take() {
            Some(id) => id,
            None => {
                sequence += 1;
                format!("{}-{partition}-{sequence}", shared.run_id)
            }
        };
        publishes.spawn(publish(shared.clone(), partition, id, batch, permit));
    }
    while publishes.join_next().await.is_some() {}
}

async fn publish(shared: Arc<Shared>, partition: u32, id: String, batch: Batch, _permit: OwnedSemaphorePermit) {
    let metrics = &shared.metrics;
    let events = batch.events();
    let payload = match batch.body.map(Outbound::into_payload).transpose() {
        Ok(payload) => payload.unwrap_or_default(),
        Err(e) => {
            // A bug of this gateway, never the client's: answered as not stored (503).
            tracing::error!(message_id = %id, events, error = %e, "a block this gateway wrote does not read back; message not sent");
            metrics.publish_failures.with_label_values(&["not_sent"]).inc();
            for waiter in batch.waiters {
                let _ = waiter.send(Err(PublishError::NotSent(format!("{id}: {e}"))));
            }
            return;
        }
    };
    let message = OutboundMessage { partition, id: id.clone(), payload: Bytes::from(payload), events };
    metrics.publishes_in_flight.inc();
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    let settles_within = shared.publisher.publish_settles_within();
    let result = loop {
        // A message is started only before the requests' deadline; once started, its
        // outcome is awaited (the answer is the real one, or "unknown" after a timeout).
        let attempt = match settles_within {
            // A publish the client library settles by itself cannot be taken back once
            // started: start one only if its outcome comes before the requests' deadline.
            Some(bound) if Instant::now() + bound > batch.deadline => {
                break Err(PublishError::NotSent(format!("{id}: too close to the deadline to start")))
            }
            None if Instant::now() >= batch.deadline => {
                break Err(PublishError::NotSent(format!("{id}: the requests' deadline passed")))
            }
            _ => {
                let attempt = tokio::time::timeout(shared.attempt_bound(), shared.publisher.publish(message.clone()));
                watched(&shared, attempt).await
            }
        };
        let retry_by = Instant::now() + backoff.current() + settles_within.unwrap_or_default();
        match attempt {
            Ok(Ok(_position)) => break Ok(()),
            // A full broker stays full for longer than a request waits: answer at once.
            Ok(Err(e))
                if e.is_retryable() && !matches!(e, PublishError::StorageFull { .. }) && retry_by < batch.deadline =>
            {
                metrics.publish_retries.inc();
                tracing::debug!(message_id = %id, error = %e, "publish failed; retrying");
                backoff.wait().await;
            }
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(PublishError::Timeout { id: id.clone() }),
        }
    };
    metrics.publishes_in_flight.dec();
    match &result {
        Ok(()) => {
            metrics.publish_duration.observe(started.elapsed().as_secs_f64());
            metrics.message_events.observe(f64::from(events));
            metrics.published_bytes.inc_by(message.payload.len() as u64);
        }
        Err(e) => {
            tracing::warn!(message_id = %id, events, error = %e, "giving up on broker message");
            metrics.publish_failures.with_label_values(&[failure_kind(e)]).inc();
        }
    }
    for waiter in batch.waiters {
        let _ = waiter.send(result.clone());
    }
}

/// Runs one publish attempt while the broker health bookkeeping knows it is waiting.
async fn watched<T>(
    shared: &Shared,
    attempt: impl std::future::Future<Output = Result<Result<T, PublishError>, tokio::time::error::Elapsed>>,
) -> Result<Result<T, PublishError>, tokio::time::error::Elapsed> {
    let ticket = shared.health.started();
    let outcome = attempt.await;
    let summary = match &outcome {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.clone()),
        Err(_) => Err(PublishError::Timeout { id: String::new() }),
    };
    shared.health.answered(ticket, &summary);
    outcome
}

fn failure_kind(e: &PublishError) -> &'static str {
    match e {
        PublishError::NotSent(_) => "not_sent",
        PublishError::StorageFull { .. } => "storage_full",
        PublishError::NotConnected(_) => "not_connected",
        PublishError::Timeout { .. } => "timeout",
        PublishError::NoSuchPartition { .. } => "no_such_partition",
        PublishError::TooLarge { .. } => "too_large",
        PublishError::Rejected { .. } => "rejected",
    }
}

#[cfg(test)]
mod tests {
    use gallop_broker::MemoryBroker;

    use super::*;

    const WAITS: BrokerWaits = BrokerWaits { ack_timeout: Duration::from_secs(5), stall_after: Duration::from_secs(2) };

    fn config(max_events: usize, linger_ms: u64) -> BatchingConfig {
        BatchingConfig {
            max_events,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(linger_ms),
            max_in_flight: 16,
            format: gallop_config::MessageEncoding::Ndjson,
        }
    }

    /// One NDJSON line as a submission's body.
    fn ndjson(line: Vec<u8>) -> Outbound {
        Outbound::Ndjson { bytes: line, events: 1 }
    }

    #[tokio::test]
    async fn concurrent_submissions_share_messages() {
        let broker = Arc::new(MemoryBroker::new(2));
        let batcher = Arc::new(Batcher::start(broker.clone(), config(100, 20), WAITS, Metrics::new(), "t".into()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let submits = (0..10).map(|i| {
            let batcher = batcher.clone();
            async move { batcher.submit(1, ndjson(format!("{{\"e\":{i}}}\n").into_bytes()), None, deadline).await }
        });
        for result in futures::future::join_all(submits).await {
            result.expect("acknowledged");
        }
        let messages = broker.messages(1);
        let total: usize =
            messages.iter().map(|m| m.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()).sum();
        assert_eq!(total, 10);
        assert!(messages.len() < 10, "{} messages for 10 concurrent events", messages.len());
        batcher.close().await;
    }

    #[tokio::test]
    async fn max_events_closes_a_message() {
        let broker = Arc::new(MemoryBroker::new(1));
        let batcher = Arc::new(Batcher::start(broker.clone(), config(3, 200), WAITS, Metrics::new(), "t".into()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let submits = (0..7).map(|_| batcher.submit(0, ndjson(b"{}\n".to_vec()), None, deadline));
        for result in futures::future::join_all(submits).await {
            result.expect("acknowledged");
        }
        let sizes: Vec<usize> = broker.messages(0).iter().map(|m| m.payload.len() / 3).collect();
        assert!(sizes.iter().all(|s| *s <= 3), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 7);
        batcher.close().await;
    }

    #[tokio::test]
    async fn submissions_with_a_dedup_id_travel_alone_and_are_stored_once() {
        let broker = Arc::new(MemoryBroker::new(1));
        let batcher = Arc::new(Batcher::start(broker.clone(), config(100, 20), WAITS, Metrics::new(), "t".into()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let (a, b, c) = tokio::join!(
            batcher.submit(0, ndjson(b"{\"a\":1}\n".to_vec()), Some("c-1".into()), deadline),
            batcher.submit(0, ndjson(b"{\"b\":1}\n".to_vec()), None, deadline),
            batcher.submit(0, ndjson(b"{\"a\":1}\n".to_vec()), Some("c-1".into()), deadline),
        );
        a.expect("a");
        b.expect("b");
        c.expect("retry");
        let ids: Vec<String> = broker.messages(0).into_iter().map(|m| m.id).collect();
        assert_eq!(ids.iter().filter(|id| *id == "c-1").count(), 1, "{ids:?}");
        assert_eq!(ids.len(), 2, "{ids:?}");
        batcher.close().await;
    }

    #[tokio::test]
    async fn unavailable_broker_fails_at_the_deadline_and_nothing_is_stored_later() {
        let broker = Arc::new(MemoryBroker::new(1));
        broker.set_available(false);
        let metrics = Metrics::new();
        let batcher = Batcher::start(broker.clone(), config(10, 1), WAITS, metrics.clone(), "t".into());
        let started = Instant::now();
        let result =
            batcher.submit(0, ndjson(b"{}\n".to_vec()), None, Instant::now() + Duration::from_millis(300)).await;
        assert!(matches!(result, Err(PublishError::NotConnected(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(metrics.publish_retries.get() > 0);
        broker.set_available(true);
        batcher.close().await;
        assert!(broker.messages(0).is_empty(), "an abandoned message must not be published later");
    }

    /// A publisher whose library settles each message within `bound` and takes `delay`.
    struct Settling {
        inner: MemoryBroker,
        bound: Duration,
        delay: Duration,
    }

    impl Publisher for Settling {
        fn partitions(&self) -> u32 {
            self.inner.partitions()
        }

        fn is_ready(&self) -> bool {
            true
        }

        fn publish_settles_within(&self) -> Option<Duration> {
            Some(self.bound)
        }

        fn publish(
            &self,
            message: OutboundMessage,
        ) -> futures::future::BoxFuture<'static, Result<gallop_broker::Position, PublishError>> {
            use futures::FutureExt;
            let stored = self.inner.publish(message);
            let delay = self.delay;
            async move {
                tokio::time::sleep(delay).await;
                stored.await
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn a_self_settling_publish_is_not_started_when_it_would_outlive_the_deadline() {
        let broker = Arc::new(Settling {
            inner: MemoryBroker::new(1),
            bound: Duration::from_secs(3),
            delay: Duration::from_millis(10),
        });
        let batcher = Batcher::start(broker.clone(), config(10, 1), WAITS, Metrics::new(), "t".into());
        let result = batcher.submit(0, ndjson(b"{}\n".to_vec()), None, Instant::now() + Duration::from_secs(1)).await;
        assert!(matches!(result, Err(PublishError::NotSent(_))), "{result:?}");
        batcher.close().await;
        assert!(broker.inner.messages(0).is_empty(), "nothing was handed to the library");
    }

    #[tokio::test]
    async fn a_self_settling_publish_is_awaited_to_its_outcome() {
        let broker = Arc::new(Settling {
            inner: MemoryBroker::new(1),
            bound: Duration::from_millis(300),
            delay: Duration::from_millis(200),
        });
        let batcher = Batcher::start(broker.clone(), config(10, 1), WAITS, Metrics::new(), "t".into());
        let result = batcher.submit(0, ndjson(b"{}\n".to_vec()), None, Instant::now() + Duration::from_secs(1)).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(broker.inner.messages(0).len(), 1);
        batcher.close().await;
    }
}

//! A runtime over the in-process broker and the memory store, the events it was given, and
//! the truth they add up to.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use gallop_broker::{Membership, MemoryBroker, MemorySource, OutboundMessage, Publisher};
use gallop_config::{ProcessorConfig, TimeConfig};
use gallop_event::{encode_into, EventRecord};
use gallop_pipeline::{run, Cell, Flush, Health, MemoryStore, Ownership, ProcessMetrics, RunError, RunOptions, Store};
use gallop_processor::Processor;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::{sync::oneshot, task::JoinHandle};

/// (site, minute, dimension, value).
pub(crate) type Key = (String, i64, String, String);

/// How long any wait on the runtime may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) struct Harness {
    pub(crate) broker: Arc<MemoryBroker>,
    pub(crate) store: Arc<MemoryStore>,
    /// Every distinct message published: (partition, position, payload), in order.
    pub(crate) published: Vec<(u32, u64, Bytes)>,
    pub(crate) dedup_window: Option<Duration>,
    pub(crate) accept_log_gaps: bool,
    rng: StdRng,
    next_id: u64,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Harness {
    pub(crate) fn new(broker: MemoryBroker, seed: u64) -> Self {
        Self {
            broker: Arc::new(broker),
            store: Arc::new(MemoryStore::new()),
            published: Vec::new(),
            dedup_window: None,
            accept_log_gaps: false,
            rng: StdRng::seed_from_u64(seed),
            next_id: 0,
        }
    }

    fn partitions(&self) -> u32 {
        self.broker.partitions()
    }

    /// One message of `events` generated events for `partition`: (message id, payload).
    fn message(&mut self, partition: u32, events: usize) -> (String, Bytes) {
        let now = now_ms();
        let mut payload = Vec::new();
        for _ in 0..events {
            self.next_id += 1;
            let mut record = EventRecord::new();
            record.site = ["a.test", "b.test"][self.rng.random_range(0..2)].to_owned();
            record.id = format!("e{}", self.next_id);
            record.ts = now - self.rng.random_range(0..30 * 60_000);
            record.name = ["pageview", "pageview", "signup"][self.rng.random_range(0..3)].to_owned();
            record.host = record.site.clone();
            record.path = format!("/p{}", self.rng.random_range(0..40));
            // A visitor's events all travel in one partition, as the gateway partitions by
            // (site, visitor): visits are folded per partition in order.
            record.visitor = self.rng.random_range(0..500) * u64::from(self.partitions()) + u64::from(partition);
            if record.name == "signup" {
                record.value = Some(f64::from(self.rng.random_range(1..100u32)) * 0.5);
            }
            encode_into(&record, &mut payload);
        }
        (format!("m{}", self.next_id), Bytes::from(payload))
    }

    /// Publishes `messages` messages of 1 to 20 events to random partitions.
    pub(crate) async fn publish(&mut self, messages: usize) {
        for _ in 0..messages {
            let partition = self.rng.random_range(0..self.partitions());
            self.publish_to(partition).await;
        }
    }

    /// Publishes one message to `partition`; returns its id and payload (to publish again).
    pub(crate) async fn publish_to(&mut self, partition: u32) -> (String, Bytes) {
        let events = self.rng.random_range(1..=20);
        let (id, payload) = self.message(partition, events);
        let position = self.send(partition, &id, payload.clone()).await;
        self.published.push((partition, position, payload.clone()));
        (id, payload)
    }

    /// Publishes a copy of an earlier message that counts again (the broker stamped it past
    /// the dedup window): part of the truth, as a message of its own.
    pub(crate) async fn publish_copy(&mut self, partition: u32, id: &str, payload: Bytes) {
        let position = self.send(partition, id, payload.clone()).await;
        self.published.push((partition, position, payload));
    }

    /// Publishes a copy of an earlier message, as a retrying publisher does; returns where
    /// the broker put it.
    pub(crate) async fn send(&self, partition: u32, id: &str, payload: Bytes) -> u64 {
        let message = OutboundMessage { partition, id: id.to_owned(), payload, events: 1 };
        self.broker.publish(message).await.expect("the in-process broker stores it").offset
    }

    pub(crate) fn options(&self) -> RunOptions {
        RunOptions {
            flush_interval: Duration::from_millis(20),
            accept_log_gaps: self.accept_log_gaps,
            shutdown_timeout: Duration::from_secs(5),
            dedup_max_ids: 10_000,
            ownership: None,
        }
    }

    /// Starts a runtime (a fresh process) on every partition.
    pub(crate) fn start(&self) -> Running {
        let processor = Processor::new(&processor_config(), &TimeConfig::default()).expect("valid processor config");
        self.start_on(self.broker.source(&[], self.dedup_window), processor, self.options())
    }

    /// Starts a runtime that runs what `membership` assigns it, and follows it.
    pub(crate) fn start_member(&self, membership: Arc<dyn Membership>) -> Running {
        let assignment = membership.watch().borrow().clone();
        let processor = Processor::new(&processor_config(), &TimeConfig::default()).expect("valid processor config");
        let source = self.broker.source(&assignment.partitions(), self.dedup_window);
        let ownership = Ownership { membership, generations: assignment.owned };
        self.start_on(source, processor, RunOptions { ownership: Some(ownership), ..self.options() })
    }

    fn start_on(&self, source: MemorySource, processor: Processor, options: RunOptions) -> Running {
        let metrics = ProcessMetrics::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(run(
            source,
            processor,
            Arc::clone(&self.store),
            options,
            metrics.clone(),
            Arc::new(Health::default()),
            async move {
                let _ = stopped.await;
            },
        ));
        Running { handle, stop: Some(stop), metrics }
    }

    /// Waits until the store holds a mark at or past every message in the broker's log
    /// (copies included) and the broker had all of them acknowledged.
    pub(crate) async fn wait_until_stored(&self) {
        let wanted: BTreeMap<u32, u64> =
            (0..self.partitions()).filter_map(|p| self.broker.messages(p).last().map(|m| (p, m.offset))).collect();
        let done = || {
            let marks = self.store.marks();
            wanted
                .iter()
                .all(|(p, &last)| marks.get(p).is_some_and(|m| m.position >= last) && self.broker.acked(*p) >= last)
        };
        let wait = async {
            while !done() {
                // Acknowledgements follow a landed write; look again shortly.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!(
                "not everything stored within {PATIENCE:?}: want {wanted:?}, marks {:?}, acked {:?}",
                self.store.marks(),
                (0..self.partitions()).map(|p| self.broker.acked(p)).collect::<Vec<_>>()
            );
        }
    }

    /// The cells every published message adds up to, folded by one processor that never
    /// crashed.
    pub(crate) async fn truth(&self) -> BTreeMap<Key, Cell> {
        let mut processor =
            Processor::new(&processor_config(), &TimeConfig::default()).expect("valid processor config");
        let now = now_ms();
        for (partition, position, payload) in &self.published {
            processor.process_message(*partition, *position, payload, now).expect("room in the processor");
        }
        let truth = Arc::new(MemoryStore::new());
        let flush = Flush {
            delta: processor.flush(now),
            marks: BTreeMap::new(),
            claims: BTreeMap::new(),
            fence: None,
            now: now / 1000,
            group: 0,
        };
        Arc::clone(&truth).write(flush).await.expect("memory store");
        truth.cells()
    }

    /// Asserts that the store holds exactly the truth: every cell's events, values and
    /// visitors, nothing missing, nothing counted twice.
    pub(crate) async fn assert_store_is_the_truth(&self) {
        let truth = self.truth().await;
        let stored = self.store.cells();
        let mut differences = Vec::new();
        for (key, want) in &truth {
            match stored.get(key) {
                Some(got)
                    if got.events == want.events
                        && got.value_count == want.value_count
                        && got.value_sum == want.value_sum
                        && got.visitors.estimate() == want.visitors.estimate() => {}
                got => {
                    differences.push(format!("{key:?}: want {} events, got {:?}", want.events, got.map(|c| c.events)))
                }
            }
        }
        differences.extend(stored.keys().filter(|k| !truth.contains_key(*k)).map(|k| format!("{k:?}: unexpected")));
        assert_eq!(self.store.misplaced(), [], "(group, partition) written to another group than the partition's");
        let total: u64 = truth.values().filter(|c| c.events > 0).map(|c| c.events).sum();
        assert!(total > 0, "the truth is not empty");
        assert!(
            differences.is_empty(),
            "{} of {} cells differ:\n{}",
            differences.len(),
            truth.len(),
            differences.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Small flushes, so a run has many.
pub(crate) fn processor_config() -> ProcessorConfig {
    ProcessorConfig {
        flush_interval: Duration::from_millis(50),
        flush_keys: 300,
        max_live_keys: 100_000,
        ..ProcessorConfig::default()
    }
}

/// A runtime task.
pub(crate) struct Running {
    handle: JoinHandle<Result<(), RunError>>,
    stop: Option<oneshot::Sender<()>>,
    pub(crate) metrics: ProcessMetrics,
}

impl Running {
    /// Kills it where it stands, as SIGKILL does: nothing more is written or acknowledged.
    pub(crate) async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    /// Sends the shutdown signal and waits for the result.
    pub(crate) async fn stop(mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.finished().await
    }

    /// Waits for the runtime to end by itself.
    pub(crate) async fn finished(self) -> Result<(), RunError> {
        match tokio::time::timeout(PATIENCE, self.handle).await {
            Ok(joined) => joined.expect("the runtime task does not panic"),
            Err(_) => panic!("the runtime did not end within {PATIENCE:?}"),
        }
    }

    /// The value of a metric line (name with labels), 0 when absent.
    pub(crate) fn metric(&self, name: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

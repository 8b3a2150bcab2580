//! [`run`]: the consume → fold → write → acknowledge loop.
//!
//! Deliveries are folded into the [`Processor`]; when a flush is due, its delta and the
//! marks of the partitions it accounts for go to one background write. A write that lands
//! acknowledges, per partition, the newest message it holds (the acknowledgement covers the
//! ones before). While a write is in flight, intake goes on until the processor reaches
//! `processor.max_live_keys`, then pauses: memory stays bounded and nothing is acknowledged
//! that is not stored.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use gallop_broker::{Ack, Assignment, Delivery, Fenced, LogRange, Membership, Source, SourceError, SourceEvent};
use gallop_config::Config;
use gallop_processor::{Delta, Processor, ProcessorError};
use gallop_support::Backoff;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::{
    dedup::DedupWindow,
    folds::Folds,
    log_range::{check, LogGap},
    mark::{Claim, Mark},
    metrics::ProcessMetrics,
    status::{Health, OwnershipStatus},
    store::{Flush, Store, WriteFence, WriteReport},
};

/// How often the loop looks at timers, paused partitions and gauges when nothing arrives.
const TICK: Duration = Duration::from_millis(100);

/// The runtime's settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Partitions whose position moved without adding keys (late or invalid records,
    /// duplicates, an idle partition caught up) are written and acknowledged at least this
    /// often.
    pub flush_interval: Duration,
    /// Go on past a stored position outside the log (logged at ERROR, counted) instead of
    /// stopping.
    pub accept_log_gaps: bool,
    /// Longest time shutdown waits for the last flush to land.
    pub shutdown_timeout: Duration,
    /// Most message ids a partition's dedup window holds (when the source asks for one).
    pub dedup_max_ids: usize,
    /// Where processors share the partitions: who this one is and how it is fenced.
    pub ownership: Option<Ownership>,
}

/// This processor's place among those sharing the partitions.
///
/// The runtime runs the partitions of the membership's assignment and follows it: a
/// partition that leaves is written (everything folded so far, one write, fenced), forgotten
/// and handed over; a partition that joins is read back from the store (mark, open visits,
/// watermark) once no other processor's insert is under way, and resumed — the other
/// partitions go on meanwhile. A partition lost with something unwritten (the fence refuses
/// the write), or claimed again under a new generation, stops the runtime with
/// [`RunError::Fenced`]: what it held in memory is mixed with the other partitions' and is
/// dropped, unacknowledged, for a fresh start from the store. A partition lost while
/// nothing of it was unwritten leaves like any other (its hand-over is then a no-op).
#[derive(Clone)]
pub struct Ownership {
    /// The membership: its assignment, its fence (asked before every write attempt and
    /// before acknowledging), and where partitions are handed over.
    pub membership: Arc<dyn Membership>,
    /// The generation of the claim on each partition run, as the assignment said at start.
    pub generations: BTreeMap<u32, u64>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("member", &self.membership.member())
            .field("generations", &self.generations)
            .finish_non_exhaustive()
    }
}

impl RunOptions {
    /// The options `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            flush_interval: config.processor.flush_interval,
            accept_log_gaps: config.consumer.accept_log_gaps,
            shutdown_timeout: config.consumer.shutdown_timeout,
            dedup_max_ids: config.consumer.dedup_max_ids,
            ownership: None,
        }
    }
}

/// Why the runtime stopped other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The stored positions could not be read at start.
    #[error("reading the stored positions: {0}")]
    Positions(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker failed at start or on resuming a partition.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A stored position is outside the log and gaps are not accepted.
    #[error(transparent)]
    LogGap(#[from] LogGap),
    /// The source stopped delivering altogether.
    #[error("{0} stopped delivering")]
    SourceEnded(String),
    /// The store rejected a flush; nothing of it was acknowledged.
    #[error("the store rejected a flush; nothing of it was acknowledged, so the broker will deliver it again: {0}")]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A write task panicked.
    #[error("a write task panicked: {0}")]
    WriteTask(String),
    /// The last flush did not land within `consumer.shutdown_timeout`.
    #[error(
        "the store did not take the last flush within consumer.shutdown_timeout ({0:?}); nothing unwritten was \
         acknowledged, so the broker will deliver it again"
    )]
    ShutdownTimeout(Duration),
    /// This processor no longer owns a partition it runs (its claim lapsed or was taken):
    /// nothing more was written or acknowledged for it.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The processor refused a message although it had room (a bug).
    #[error("the processor refused a message it had room for: {0}")]
    Processor(#[from] ProcessorError),
}

/// Consumes `source` into `processor` and writes flushes to `store` until `shutdown`
/// resolves; then flushes what is in memory, acknowledges it and returns.
///
/// At start it reads the stored marks of the source's partitions, checks each against the
/// log's range, and resumes each partition after its mark (further back where a dedup
/// window must be rebuilt). `metrics` and `health` are kept current for `/metrics` and
/// `/ready`.
pub async fn run<S: Source, T: Store>(
    source: S,
    processor: Processor,
    store: Arc<T>,
    options: RunOptions,
    metrics: ProcessMetrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // Watched from before the start: a change while the partitions are read back is
    // followed on the first turn of the loop (the runtime compares, so no change is none).
    let mut assignments = options.ownership.as_ref().map(|o| o.membership.watch());
    if let Some(assignments) = assignments.as_mut() {
        assignments.mark_changed();
    }
    tokio::pin!(shutdown);
    // Reading back may wait for the store (a shard with no replica up to date): a shutdown
    // meanwhile stops it, with nothing taken and nothing to write.
    let mut runtime = tokio::select! {
        biased;
        () = &mut shutdown => {
            info!("shut down while reading the stored positions back");
            return Ok(());
        }
        started = Runtime::start(source, processor, store, options, metrics, health) => started?,
    };
    let mut in_flight: Option<InFlight<T::Error>> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = Instant::now();
    loop {
        let can_take = !runtime.folds.is_full();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Polled only while a write is in flight (the guard after the comma).
            done = async { in_flight.as_mut().expect("guarded by is_some").await }, if in_flight.is_some() => {
                in_flight = None;
                runtime.landed(done).await?;
            }
            // Polled only where partitions are shared, and before the source: under a
            // backlog a change would otherwise wait until the source runs dry (and a Kafka
            // revocation waits for this runtime). A closed channel: the membership is gone.
            changed = async { assignments.as_mut().expect("guarded by is_some").changed().await }, if assignments.is_some() => {
                match changed {
                    Ok(()) => {
                        let assignment = assignments.as_mut().map(|a| a.borrow_and_update().clone()).unwrap_or_default();
                        if let Some(task) = in_flight.take() {
                            runtime.landed(task.await).await?;
                        }
                        runtime.reassign(assignment).await?;
                        last_flush = Instant::now();
                    }
                    Err(_) => assignments = None,
                }
            }
            event = runtime.source.next(), if can_take => {
                let event = event.ok_or_else(|| RunError::SourceEnded(runtime.source.describe()))?;
                runtime.take(event).await?;
            }
            _ = tick.tick() => {}
        }
        runtime.resume_paused().await?;
        runtime.observe();
        let marks_due = runtime.has_unwritten_positions() && last_flush.elapsed() >= runtime.options.flush_interval;
        if in_flight.is_none() && (runtime.folds.should_flush(now_ms()) || marks_due) {
            in_flight = Some(runtime.start_write());
            last_flush = Instant::now();
        }
    }

    info!("shutting down: flushing what is in memory");
    let grace = runtime.options.shutdown_timeout;
    let drain = async {
        if let Some(task) = in_flight.take() {
            runtime.landed(task.await).await?;
        }
        if runtime.folds.live_keys() > 0 || runtime.has_unwritten_positions() {
            let task = runtime.start_write();
            runtime.landed(task.await).await?;
        }
        Ok::<(), RunError>(())
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(result) => result?,
        Err(_) => return Err(RunError::ShutdownTimeout(grace)),
    }
    info!("processor stopped");
    Ok(())
}

/// An acknowledgement waiting for the write that holds its message.
type PendingAck = (u32, u64, Ack);

/// What one group's write ends with: its result, and the acknowledgements and marks waiting
/// for it.
type GroupWritten<E> = (Result<WriteReport, E>, Vec<PendingAck>, BTreeMap<u32, Mark>);

/// What a background write ends with: each group's outcome, and when it started.
type Written<E> = (Vec<GroupWritten<E>>, Instant);

/// A write in the background. Dropping it (the runtime killed mid-flight) aborts the write
/// as a process's death would; awaiting it gives its outcome.
struct InFlight<E>(JoinHandle<Written<E>>);

impl<E> Drop for InFlight<E> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<E> Future for InFlight<E> {
    type Output = Result<Written<E>, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Where one owned partition stands.
struct Partition {
    /// Newest mark known stored.
    durable: Mark,
    /// Incarnation of the log being read.
    epoch: u32,
    /// Newest position folded in (stored, in memory, or skipped as a duplicate).
    seen: u64,
    /// Broker time of the message at `seen`.
    seen_time_ms: i64,
    /// Newest position acknowledged.
    acked: u64,
    /// The newest delivery folded in since the last write started, to acknowledge once
    /// that write lands.
    unacked: Option<(u64, Ack)>,
    /// `seen` moved since the last write started.
    dirty: bool,
    /// Recent message ids, where the broker keeps duplicates.
    dedup: Option<DedupWindow>,
    /// Not delivering: waiting to be resumed (after a gap), and when to try next.
    paused: Option<(Instant, Backoff)>,
}

struct Runtime<S, T> {
    source: S,
    folds: Folds,
    store: Arc<T>,
    options: RunOptions,
    metrics: ProcessMetrics,
    health: Arc<Health>,
    partitions: BTreeMap<u32, Partition>,
    retries_seen: u64,
}

impl<S: Source, T: Store> Runtime<S, T> {
    /// Reads the stored marks, checks them against the log and resumes every partition.
    async fn start(
        source: S,
        processor: Processor,
        store: Arc<T>,
        options: RunOptions,
        metrics: ProcessMetrics,
        health: Arc<Health>,
    ) -> Result<Self, RunError> {
        // Per-partition gauges of an earlier runtime of this process must not linger.
        for gauge in [&metrics.lag, &metrics.lag_seconds, &metrics.watermark] {
            gauge.reset();
        }
        // A setting: set once, not on every turn of the loop.
        let folds = Folds::new(processor, store.groups());
        metrics.live_keys_limit.set(i64::try_from(folds.max_live_keys()).unwrap_or(i64::MAX));
        let owned = source.partitions().to_vec();
        let mut runtime =
            Self { source, folds, store, options, metrics, health, partitions: BTreeMap::new(), retries_seen: 0 };
        runtime.open(&owned).await?;
        Ok(runtime)
    }

    /// Reads `partitions`' marks, open visits and watermarks back from the store, checks
    /// each mark against the log and resumes each partition after it (further back where a
    /// dedup window must be rebuilt).
    async fn open(&mut self, owned: &[u32]) -> Result<(), RunError> {
        let Self { source, folds, store, options, metrics, partitions, .. } = self;
        if options.ownership.is_some() && !owned.is_empty() {
            // A previous owner's insert still under way would land after the marks are read.
            store.settle_others().await.map_err(|e| RunError::Positions(Box::new(e)))?;
        }
        let stored = store.positions(owned).await.map_err(|e| RunError::Positions(Box::new(e)))?;
        let open = store
            .open_sessions(owned, folds.session_horizon_ms())
            .await
            .map_err(|e| RunError::Positions(Box::new(e)))?;
        info!(?owned, sessions = open.sessions.len(), watermarks = ?open.watermarks, "open visits read back");
        folds.restore(open, |partition| store.group_of(partition));
        let name = source.describe();
        let window = source.dedup_window();
        // Each partition's log range (and where a dedup window is rebuilt, where to rewind
        // to) is a broker round trip or two: asked for all partitions at once, since the
        // partitions taken over wait for the slowest (Kafka: 0.1-0.2 s each one by one).
        let reader: &S = source;
        let accept_log_gaps = options.accept_log_gaps;
        let lookups = futures::future::join_all(owned.iter().map(|&partition| {
            let (name, stored) = (&name, &stored);
            async move {
                let mark = stored.get(&partition).copied();
                let range = log_range(reader, partition, mark.map(|m| m.position)).await?;
                let (resume, gap) = check(name, partition, mark, range, accept_log_gaps)?;
                let after = resume.after;
                let mut from = after.position + 1;
                if let Some(window) = window.filter(|_| !resume.reset && after.time_ms > 0) {
                    // Rebuild the dedup window from the messages before the stored position.
                    let since = after.time_ms.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
                    if let Some(rewind) = reader.position_at(partition, since).await? {
                        from = from.min(rewind.max(range.first));
                    }
                }
                Ok::<_, RunError>((partition, range, resume, gap, from))
            }
        }))
        .await;
        for lookup in lookups {
            let (partition, range, resume, gap, from) = lookup?;
            if let Some(gap) = gap {
                report_gap(metrics, &gap);
            }
            let after = resume.after;
            source.resume(partition, from).await?;
            info!(partition, stored = ?stored.get(&partition), from, first = range.first, next = range.next, "resuming");
            partitions.insert(
                partition,
                Partition {
                    durable: after,
                    epoch: after.epoch,
                    seen: after.position,
                    seen_time_ms: after.time_ms,
                    acked: after.position,
                    unacked: None,
                    dirty: resume.reset,
                    dedup: window.map(|w| DedupWindow::new(w, options.dedup_max_ids)),
                    paused: None,
                },
            );
        }
        Ok(())
    }

    /// Follows a new assignment: partitions that left are written, forgotten and handed
    /// over; partitions that joined are read back and resumed. A partition claimed again
    /// under a new generation was lost in between: [`RunError::Fenced`].
    async fn reassign(&mut self, assignment: Assignment) -> Result<(), RunError> {
        let Some(ownership) = self.options.ownership.clone() else { return Ok(()) };
        let member = ownership.membership.member().to_owned();
        for (&partition, generation) in &ownership.generations {
            if assignment.owned.get(&partition).is_some_and(|now| now != generation) {
                let reason = format!("claimed again under generation {generation} → a new one: lost in between");
                return Err(RunError::Fenced(Fenced { member, partition, reason }));
            }
        }
        let leaving: Vec<u32> =
            ownership.generations.keys().filter(|p| !assignment.owned.contains_key(p)).copied().collect();
        let joining: Vec<u32> =
            assignment.owned.keys().filter(|p| !ownership.generations.contains_key(p)).copied().collect();
        if leaving.is_empty() && joining.is_empty() {
            return Ok(());
        }
        info!(?leaving, ?joining, "assignment changed");
        if !leaving.is_empty() {
            // The rows mix every partition: everything folded so far is written, fenced.
            if self.folds.live_keys() > 0 || self.has_unwritten_positions() {
                let task = self.start_write();
                self.landed(task.await).await?;
            }
            self.folds.release(&leaving);
            for &partition in &leaving {
                self.source.remove(partition);
                self.partitions.remove(&partition);
                let label = partition.to_string();
                for gauge in [&self.metrics.lag, &self.metrics.lag_seconds, &self.metrics.watermark] {
                    let _ = gauge.remove_label_values(&[&label]);
                }
            }
            ownership.membership.hand_over(leaving.clone()).await;
            info!(partitions = ?leaving, "partitions written and handed over");
        }
        for &partition in &joining {
            self.source.add(partition)?;
        }
        self.open(&joining).await?;
        if let Some(current) = self.options.ownership.as_mut() {
            current.generations.retain(|p, _| !leaving.contains(p));
            current.generations.extend(joining.iter().filter_map(|p| assignment.owned.get(p).map(|&g| (*p, g))));
        }
        Ok(())
    }

    async fn take(&mut self, event: SourceEvent) -> Result<(), RunError> {
        match event {
            SourceEvent::Message(delivery) => self.message(delivery).await,
            SourceEvent::Gap { partition, reason } => {
                warn!(partition, %reason, "deliveries stopped following on; resuming after the last position taken");
                if let Some(part) = self.partitions.get_mut(&partition) {
                    part.paused =
                        Some((Instant::now(), Backoff::new(Duration::from_millis(100), Duration::from_secs(5))));
                }
                Ok(())
            }
            SourceEvent::CaughtUp { partition, position } => {
                if let Some(part) = self.partitions.get_mut(&partition) {
                    if position > part.seen && part.paused.is_none() {
                        part.seen = position;
                        part.dirty = true;
                    }
                }
                Ok(())
            }
        }
    }

    async fn message(&mut self, delivery: Delivery) -> Result<(), RunError> {
        let Delivery { partition, position, payload, id, timestamp_ms, delivered, ack } = delivery;
        let Some(part) = self.partitions.get_mut(&partition) else {
            warn!(partition, position, "a delivery of a partition this processor does not own; ignored");
            return Ok(());
        };
        if part.paused.is_some() {
            return Ok(());
        }
        if position <= part.seen {
            self.metrics.messages.with_label_values(&["redelivered"]).inc();
            if let (Some(window), Some(id)) = (part.dedup.as_mut(), id.as_deref()) {
                window.seen_before(id, timestamp_ms);
            }
            // Already stored: acknowledge so it stops coming back. Only in memory: leave
            // it; the acknowledgement after the next write covers it.
            if position <= part.durable.position && position > part.acked {
                match ack.ack().await {
                    Ok(()) => part.acked = position,
                    Err(e) => warn!(error = %e, "acknowledging a redelivery failed; it will come again and be skipped"),
                }
            }
            return Ok(());
        }
        let duplicate = match (part.dedup.as_mut(), id.as_deref()) {
            (Some(window), Some(id)) => window.seen_before(id, timestamp_ms),
            _ => false,
        };
        if duplicate {
            self.metrics.messages.with_label_values(&["duplicate"]).inc();
            info!(
                partition,
                position,
                id = id.as_deref().unwrap_or_default(),
                "message id seen before inside the dedup window; skipped"
            );
        } else {
            if delivered > 1 {
                info!(partition, position, delivered, "processing a redelivered message not yet stored");
            }
            // The broker's stamp, not the clock: the same on every replay, and never before the
            // gateway accepted the events.
            let arrival_ms = if timestamp_ms > 0 { timestamp_ms } else { now_ms() };
            let group = self.store.group_of(partition);
            let report = self.folds.process_message(group, partition, position, &payload, arrival_ms)?;
            for record in &report.invalid {
                warn!(partition, position, index = record.index, reason = record.reason, detail = %record.detail,
                    "unusable record skipped");
                self.metrics.invalid.with_label_values(&[record.reason]).inc();
            }
            self.metrics.messages.with_label_values(&["processed"]).inc();
            self.metrics.events.with_label_values(&["counted"]).inc_by(report.counted as u64);
            self.metrics.events.with_label_values(&["late"]).inc_by(report.late as u64);
            self.metrics.events.with_label_values(&["future"]).inc_by(report.future as u64);
        }
        part.seen = position;
        part.seen_time_ms = timestamp_ms;
        part.unacked = Some((position, ack));
        part.dirty = true;
        Ok(())
    }

    /// Resumes partitions paused by a gap whose next try is due: after the last position
    /// taken, once that position is checked against the log.
    async fn resume_paused(&mut self) -> Result<(), RunError> {
        let now = Instant::now();
        let due: Vec<u32> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.paused.is_some_and(|(at, _)| at <= now))
            .map(|(&p, _)| p)
            .collect();
        for partition in due {
            let Some(part) = self.partitions.get(&partition) else { continue };
            let seen = Mark { epoch: part.epoch, position: part.seen, time_ms: part.seen_time_ms };
            let outcome = self.try_resume(partition, seen).await;
            let Some(part) = self.partitions.get_mut(&partition) else { continue };
            match outcome {
                Ok((after, gap)) => {
                    if let Some(gap) = gap {
                        report_gap(&self.metrics, &gap);
                        part.epoch = after.epoch;
                        part.seen = after.position;
                        part.seen_time_ms = 0;
                        part.dirty = true;
                    }
                    part.paused = None;
                    info!(partition, from = after.position + 1, "partition resumed");
                }
                Err(RunError::Source(e)) => {
                    if let Some((at, backoff)) = part.paused.as_mut() {
                        *at = Instant::now() + backoff.next_wait();
                    }
                    warn!(partition, error = %e, "cannot resume the partition yet; retrying");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Checks `seen` against the log and resumes `partition` after it (or past an accepted
    /// gap); returns where it resumed and the gap, if one was accepted.
    async fn try_resume(&mut self, partition: u32, seen: Mark) -> Result<(Mark, Option<LogGap>), RunError> {
        let range = log_range(&self.source, partition, Some(seen.position)).await?;
        let (resume, gap) = check(&self.source.describe(), partition, Some(seen), range, self.options.accept_log_gaps)?;
        self.source.resume(partition, resume.after.position + 1).await?;
        Ok((resume.after, gap))
    }

    /// Whether some partition's position moved since the last write started.
    fn has_unwritten_positions(&self) -> bool {
        self.partitions.values().any(|p| p.dirty || p.unacked.is_some())
    }

    /// Takes the deltas and the moved positions and writes them in the background: one
    /// write per group of partitions the store keeps apart (see [`Folds`]), side by side.
    fn start_write(&mut self) -> InFlight<T::Error> {
        let now = now_ms();
        let deltas = self.folds.flush(now);
        let groups = deltas.len();
        let mut writes: Vec<(Delta, BTreeMap<u32, Mark>, Vec<PendingAck>)> =
            deltas.into_iter().map(|delta| (delta, BTreeMap::new(), Vec::new())).collect();
        for (&partition, part) in &mut self.partitions {
            let group = self.store.group_of(partition).min(groups - 1);
            if std::mem::take(&mut part.dirty) {
                let mark = Mark { epoch: part.epoch, position: part.seen, time_ms: part.seen_time_ms };
                writes[group].1.insert(partition, mark);
            }
            if let Some((position, ack)) = part.unacked.take() {
                writes[group].2.push((partition, position, ack));
            }
        }
        let flushes: Vec<(Flush, Vec<PendingAck>)> = writes
            .into_iter()
            .enumerate()
            // With groups, one with nothing new is not written; alone, the flush always is.
            .filter(|(_, (delta, marks, acks))| {
                groups == 1 || !(delta.is_empty() && delta.sessions.is_empty() && marks.is_empty() && acks.is_empty())
            })
            .map(|(group, (delta, marks, acks))| (self.flush_of(group, delta, marks, now), acks))
            .collect();
        let store = Arc::clone(&self.store);
        let started = Instant::now();
        InFlight(tokio::spawn(async move {
            let outcomes = futures::future::join_all(flushes.into_iter().map(|(flush, acks)| {
                let store = Arc::clone(&store);
                let marks = flush.marks.clone();
                async move { (store.write(flush).await, acks, marks) }
            }))
            .await;
            (outcomes, started)
        }))
    }

    /// The flush of `group`: its delta, its partitions' marks, and where partitions are
    /// shared, their claims and the fence of every partition of the group.
    fn flush_of(&self, group: usize, delta: Delta, marks: BTreeMap<u32, Mark>, now: i64) -> Flush {
        let (claims, fence) = match &self.options.ownership {
            Some(ownership) => {
                let claims = marks
                    .keys()
                    .map(|&partition| {
                        let claim = Claim {
                            member: Arc::from(ownership.membership.member()),
                            generation: ownership.generations.get(&partition).copied().unwrap_or(0),
                            after: self.partitions.get(&partition).map_or(0, |p| p.durable.position),
                        };
                        (partition, claim)
                    })
                    .collect();
                // The rows mix every partition of the group folded in: all must still be ours.
                let groups = self.folds.len();
                let partitions = self
                    .partitions
                    .keys()
                    .copied()
                    .filter(|&p| self.store.group_of(p).min(groups - 1) == group)
                    .collect();
                let budget = ownership.membership.write_budget();
                let fence: Arc<dyn gallop_broker::Fence> = Arc::new(MembershipFence(Arc::clone(&ownership.membership)));
                (claims, Some(WriteFence::new(fence, partitions, budget)))
            }
            None => (BTreeMap::new(), None),
        };
        Flush { delta, marks, claims, fence, now: now / 1000, group }
    }

    /// Books a finished write: each group that landed makes its marks durable and sends
    /// the acknowledgements waiting for it; a rejection (once the landed groups are booked)
    /// stops the runtime.
    async fn landed(&mut self, done: Result<Written<T::Error>, tokio::task::JoinError>) -> Result<(), RunError> {
        let (outcomes, started) = done.map_err(|e| RunError::WriteTask(e.to_string()))?;
        let mut failure = None;
        let mut due: Vec<PendingAck> = Vec::new();
        for (result, acks, marks) in outcomes {
            let report = match result {
                Ok(report) => report,
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            self.metrics.flushes.inc();
            self.metrics.flush_rows.inc_by(report.rows as u64);
            self.metrics.flush_bytes.inc_by(report.bytes as u64);
            for (partition, mark) in marks {
                if let Some(part) = self.partitions.get_mut(&partition) {
                    part.durable = part.durable.max(mark);
                }
            }
            due.extend(acks);
        }
        if let Some(e) = failure {
            if T::is_fenced(&e) {
                warn!(error = %e, "a write was not attempted: this processor's claim no longer holds long enough");
                let member =
                    self.options.ownership.as_ref().map_or_else(String::new, |o| o.membership.member().to_owned());
                let partition = self.partitions.keys().next().copied().unwrap_or(0);
                return Err(RunError::Fenced(Fenced { member, partition, reason: e.to_string() }));
            }
            self.fenced()?;
            error!(error = %e, "the store rejected a flush; stopping without acknowledging it");
            return Err(RunError::Rejected(Box::new(e)));
        }
        // A partition lost while the write was under way: the next owner acknowledges.
        self.fenced()?;
        self.metrics.flush_duration.observe(started.elapsed().as_secs_f64());
        // All partitions at once: one broker round trip for the flush, not one per partition.
        due.retain(|(partition, position, _)| self.partitions.get(partition).is_some_and(|p| *position > p.acked));
        let results = futures::future::join_all(due.iter().map(|(_, _, ack)| ack.ack())).await;
        for ((partition, position, _), result) in due.iter().zip(results) {
            match result {
                Ok(()) => {
                    if let Some(part) = self.partitions.get_mut(partition) {
                        part.acked = part.acked.max(*position);
                    }
                }
                // Stored already; a redelivery will be recognised and skipped.
                Err(e) => warn!(error = %e, "acknowledgement failed after a landed write"),
            }
        }
        Ok(())
    }

    /// `Err` once this processor no longer owns one of its partitions.
    fn fenced(&self) -> Result<(), RunError> {
        let Some(ownership) = &self.options.ownership else { return Ok(()) };
        let partitions: Vec<u32> = self.partitions.keys().copied().collect();
        ownership.membership.check(&partitions, Duration::ZERO).map_err(|fenced| {
            warn!(error = %fenced, "a partition was lost: nothing more is written or acknowledged for this assignment");
            RunError::Fenced(fenced)
        })
    }

    /// Brings gauges and `/ready` up to date.
    fn observe(&mut self) {
        let metrics = &self.metrics;
        metrics.live_keys.set(self.folds.live_keys() as i64);
        metrics.sessions_open.set(i64::try_from(self.folds.open_sessions()).unwrap_or(i64::MAX));
        let evicted = self.folds.sessions_evicted();
        metrics.sessions_evicted.inc_by(evicted.saturating_sub(metrics.sessions_evicted.get()));
        let retries = self.store.retries();
        metrics.insert_retries.inc_by(retries.saturating_sub(self.retries_seen));
        self.retries_seen = self.retries_seen.max(retries);
        let now = now_ms();
        let lag = self.source.lag();
        for (partition, behind) in &lag {
            let label = partition.to_string();
            metrics.lag.with_label_values(&[&label]).set(i64::try_from(*behind).unwrap_or(i64::MAX));
            let newest = self.partitions.get(partition).map_or(0, |p| p.seen_time_ms);
            metrics.lag_seconds.with_label_values(&[&label]).set(lag_seconds(*behind, newest, now));
        }
        metrics.pending.set(i64::try_from(lag.iter().map(|(_, n)| n).sum::<u64>()).unwrap_or(i64::MAX));
        let mut oldest = None::<i64>;
        for &partition in self.partitions.keys() {
            if let Some(watermark) = self.folds.watermark(self.store.group_of(partition), partition) {
                metrics.watermark.with_label_values(&[&partition.to_string()]).set(watermark.div_euclid(1000));
                oldest = Some(oldest.map_or(watermark, |o| o.min(watermark)));
            }
        }
        if let Some(watermark) = oldest {
            metrics.watermark_lag.set((now - watermark) / 1000);
        }
        let mut ids = 0;
        for window in self.partitions.values_mut().filter_map(|p| p.dedup.as_mut()) {
            ids += window.len();
            metrics.dedup_evicted.inc_by(window.take_evicted_early());
        }
        metrics.dedup_ids.set(ids as i64);
        if let Some(ownership) = &self.options.ownership {
            let membership = &ownership.membership;
            let assignment = membership.watch().borrow().clone();
            metrics.partitions_owned.set(self.partitions.len() as i64);
            // -1: the broker does not tell (Tansu 0.6 describes no consumer group).
            metrics.partitions_unowned.set(assignment.unowned.map_or(-1, i64::from));
            metrics.partition_members.set(assignment.members.map_or(-1, i64::from));
            for (reason, &count) in &assignment.handovers {
                let counter = metrics.partition_handovers.with_label_values(&[reason]);
                counter.inc_by(count.saturating_sub(counter.get()));
            }
            self.health.set_ownership(OwnershipStatus {
                member: membership.member().to_owned(),
                owned: self.partitions.keys().copied().collect(),
                members: assignment.members,
                unowned: assignment.unowned,
                trouble: membership.trouble(),
            });
        }
        let (broker_up, store_up) = (self.source.is_ready(), self.store.is_healthy());
        metrics.broker_up.set(i64::from(broker_up));
        metrics.store_up.set(i64::from(store_up));
        self.health.set(broker_up, store_up);
    }
}

/// A membership as the fence of a write.
#[derive(Debug)]
struct MembershipFence(Arc<dyn Membership>);

impl gallop_broker::Fence for MembershipFence {
    fn check(&self, partitions: &[u32], budget: Duration) -> Result<(), Fenced> {
        self.0.check(partitions, budget)
    }
}

/// The range of `partition`'s log. When it seems to end just before `stored` (a recreated
/// log), the source is asked whether the stored message is there after all: some brokers
/// report an end one short (Tansu 0.6), and a stale end is no reason to stop.
async fn log_range<S: Source>(source: &S, partition: u32, stored: Option<u64>) -> Result<LogRange, RunError> {
    let mut range = source.log_range(partition).await?;
    if let Some(stored) = stored.filter(|&p| may_be_held_past_the_end(p, range)) {
        if source.holds(partition, stored).await? {
            warn!(partition, stored, next = range.next, "the broker reports the log's end before a message it holds");
            range.next = stored + 1;
        }
    }
    Ok(range)
}

/// Whether the message at `stored`, past the end `range` reports, may be in the log after
/// all: only the one at the reported end itself (an end reported one short). Further out the
/// log was recreated, and asking would only wait out the broker's answer (librdkafka on
/// Tansu: its 10 s lookup timeout per partition, 80 s for a processor of 8 partitions).
fn may_be_held_past_the_end(stored: u64, range: LogRange) -> bool {
    stored > 0 && stored == range.next
}

/// Logs an accepted gap at ERROR and counts it.
fn report_gap(metrics: &ProcessMetrics, gap: &LogGap) {
    error!(
        partition = gap.partition,
        stored = gap.stored,
        first = gap.range.first,
        next = gap.range.next,
        kind = gap.kind.label(),
        skipped = gap.skipped(),
        "{gap} — going on because consumer.accept_log_gaps = true"
    );
    metrics.log_gaps.with_label_values(&[gap.kind.label()]).inc();
    metrics.log_gap_positions.with_label_values(&[gap.kind.label()]).inc_by(gap.skipped());
}

/// Seconds a partition is behind: none when nothing waits; else the age of the newest
/// message folded in (broker time), or 0 while none is known yet (a fresh log).
fn lag_seconds(behind: u64, newest_ms: i64, now_ms: i64) -> i64 {
    if behind == 0 || newest_ms <= 0 {
        0
    } else {
        (now_ms - newest_ms).max(0) / 1000
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::{lag_seconds, may_be_held_past_the_end, LogRange};

    #[test]
    fn only_a_stored_position_at_the_reported_end_is_looked_up() {
        let range = LogRange { first: 1, next: 5 };
        // (stored, ask the broker)
        for (stored, ask) in [(0, false), (3, false), (4, false), (5, true), (6, false), (10, false)] {
            assert_eq!(may_be_held_past_the_end(stored, range), ask, "stored {stored} of {range:?}");
        }
    }

    #[test]
    fn lag_in_seconds() {
        let now = 1_795_428_000_000;
        for (behind, newest, want) in [
            (0, now - 90_000, 0),  // caught up: not behind, however old the last message
            (5, now - 90_000, 90), // waiting: the age of the newest message processed
            (5, now - 999, 0),     // under a second
            (5, 0, 0),             // nothing known yet
            (5, now + 5_000, 0),   // a broker clock ahead of ours
        ] {
            assert_eq!(lag_seconds(behind, newest, now), want, "behind {behind}, newest {newest}");
        }
    }
}

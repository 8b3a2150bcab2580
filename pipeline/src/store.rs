//! Where flushes go: the [`Store`] trait, and [`MemoryStore`] for tests.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use futures::future::{self, BoxFuture, FutureExt};
use gallop_broker::{Fence, Fenced};
use gallop_processor::{sketch::UniqHll12, Delta, OpenSessions, SessionState};
use tokio::sync::Notify;

use crate::mark::{Claim, Mark};

/// One flush: the aggregates since the last one and the positions they account for.
#[derive(Debug, Clone)]
pub struct Flush {
    /// Rows and leaderboards.
    pub delta: Delta,
    /// Per partition, where the partition stands once this flush is stored.
    pub marks: BTreeMap<u32, Mark>,
    /// Per partition of `marks`, who writes it and what it continues (empty where
    /// partitions are not shared).
    pub claims: BTreeMap<u32, Claim>,
    /// Checked before every write attempt: a store makes no attempt once it fails.
    pub fence: Option<WriteFence>,
    /// Wall-clock seconds at the flush.
    pub now: i64,
    /// The place it goes to ([`Store::group_of`] of its partitions); 0 where there is one.
    pub group: usize,
}

/// The ownership check a store makes before each attempt to write a flush: the member must
/// still own every partition the flush touches, for longer than an attempt can take.
#[derive(Debug, Clone)]
pub struct WriteFence {
    fence: Arc<dyn Fence>,
    partitions: Vec<u32>,
    budget: Duration,
}

impl WriteFence {
    /// Checks `partitions` against `fence` with `budget` to spare.
    pub fn new(fence: Arc<dyn Fence>, partitions: Vec<u32>, budget: Duration) -> Self {
        Self { fence, partitions, budget }
    }

    /// `Ok` while an attempt started now ends before any other member may start these
    /// partitions.
    pub fn check(&self) -> Result<(), Fenced> {
        self.fence.check(&self.partitions, self.budget)
    }
}

/// What a landed write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteReport {
    /// Rows written (0 when an earlier attempt had landed).
    pub rows: usize,
    /// Bytes written.
    pub bytes: usize,
}

/// Durable storage of flushes and the positions they account for.
///
/// A write stores the delta and its marks atomically (all or nothing) and retries transient
/// failures itself until it lands, never storing twice; it fails only when retrying cannot
/// help (a rejection), and the runtime then stops without acknowledging.
pub trait Store: Send + Sync + 'static {
    /// Why a store operation failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The newest stored mark of each of `partitions` (absent: nothing stored).
    fn positions(&self, partitions: &[u32]) -> BoxFuture<'_, Result<BTreeMap<u32, Mark>, Self::Error>>;

    /// What the last stored flushes of `partitions` left for a restart: watermarks and
    /// the stored versions of visits whose last event is no older than the oldest
    /// watermark less `horizon_ms` (see [`gallop_processor::OpenSessions`]).
    fn open_sessions(&self, partitions: &[u32], horizon_ms: i64) -> BoxFuture<'_, Result<OpenSessions, Self::Error>>;

    /// Stores `flush`, waiting until it landed.
    fn write(self: Arc<Self>, flush: Flush) -> BoxFuture<'static, Result<WriteReport, Self::Error>>;

    /// Waits until no write that another writer (another processor) had under way is
    /// still running, so that what is read next includes it: a processor about to read a
    /// partition another one wrote calls this first. Where writes cannot outlive their
    /// writer, there is nothing to wait for.
    fn settle_others(&self) -> BoxFuture<'_, Result<(), Self::Error>> {
        future::ready(Ok(())).boxed()
    }

    /// How many places the store writes partitions to, each written on its own (the shards
    /// of a ClickHouse cluster); 1 where everything goes to one place.
    fn groups(&self) -> usize {
        1
    }

    /// The place (`0..groups()`) `partition`'s rows and marks are written to: a flush holds
    /// one write per place, each with only that place's partitions.
    fn group_of(&self, _partition: u32) -> usize {
        0
    }

    /// Whether `error` is a write not attempted because the flush's fence refused it.
    fn is_fenced(error: &Self::Error) -> bool;

    /// False while writes are failing and being retried (drives `/ready`).
    fn is_healthy(&self) -> bool;

    /// Failed write attempts so far (each one retried).
    fn retries(&self) -> u64;
}

/// One (site, minute, dimension, value) cell as [`MemoryStore`] holds it: every flush
/// merged in, as ClickHouse merges partial states.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    /// Events.
    pub events: u64,
    /// Sum of values.
    pub value_sum: f64,
    /// Events with a value.
    pub value_count: u64,
    /// Visitors.
    pub visitors: UniqHll12,
}

/// Faults a test switches on to stop a write at a chosen step.
#[derive(Debug, Default)]
pub struct MemoryStoreFaults {
    /// Writes hang before storing anything.
    stall_before_landing: AtomicBool,
    /// Writes store, then hang (the answer never comes back).
    stall_after_landing: AtomicBool,
    /// Writes are rejected (a schema mismatch, say).
    reject: AtomicBool,
    stalled: AtomicBool,
    notify: Notify,
}

impl MemoryStoreFaults {
    /// Writes hang before anything is stored (a process killed during the write).
    pub fn stall_before_landing(&self, on: bool) {
        self.stall_before_landing.store(on, Ordering::SeqCst);
    }

    /// Writes store, then hang (a process killed after the write, before the ack).
    pub fn stall_after_landing(&self, on: bool) {
        self.stall_after_landing.store(on, Ordering::SeqCst);
    }

    /// Writes are rejected.
    pub fn reject(&self, on: bool) {
        self.reject.store(on, Ordering::SeqCst);
    }

    /// Waits until a write has stalled.
    pub async fn stalled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.stalled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Clears every fault and the stall flag.
    pub fn clear(&self) {
        for flag in [&self.stall_before_landing, &self.stall_after_landing, &self.reject, &self.stalled] {
            flag.store(false, Ordering::SeqCst);
        }
    }

    async fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        future::pending::<()>().await;
    }
}

#[derive(Debug, Default)]
struct Stored {
    cells: BTreeMap<(String, i64, String, String), Cell>,
    marks: BTreeMap<u32, Mark>,
    /// Every stored version of every visit, as ClickHouse keeps them.
    sessions: Vec<SessionState>,
    watermarks: BTreeMap<u32, i64>,
}

/// A store in memory that merges flushes as ClickHouse would; for tests of the runtime.
#[derive(Debug, Default)]
pub struct MemoryStore {
    stored: Mutex<Stored>,
    writes: AtomicUsize,
    landed: Notify,
    faults: MemoryStoreFaults,
    retries: AtomicU64,
    /// Places partitions are kept apart in (`partition % groups`), as a cluster's shards.
    groups: usize,
    /// What went to another place than its partition's: (flush group, partition).
    misplaced: Mutex<Vec<(usize, u32)>>,
}

/// The store's error: a rejected write, or one its fence refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejected {
    /// Rejected (the test switched it on).
    #[error("memory store rejected the write")]
    Write,
    /// Not attempted: the flush's fence refused it.
    #[error("memory store did not write: {0}")]
    Fenced(Fenced),
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self { groups: 1, ..Self::default() }
    }

    /// An empty store keeping partition `p` apart in group `p % groups`, as a ClickHouse
    /// cluster keeps it on its shard; every write must hold only its group's partitions
    /// (see [`misplaced`](Self::misplaced)).
    pub fn with_groups(groups: usize) -> Self {
        Self { groups: groups.max(1), ..Self::default() }
    }

    /// Every (flush group, partition) written to a group that is not the partition's: a
    /// mark, a watermark or a visit. Empty where the runtime keeps groups apart.
    pub fn misplaced(&self) -> Vec<(usize, u32)> {
        self.misplaced.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The fault switches.
    pub fn faults(&self) -> &MemoryStoreFaults {
        &self.faults
    }

    /// Every cell stored so far.
    pub fn cells(&self) -> BTreeMap<(String, i64, String, String), Cell> {
        self.lock().cells.clone()
    }

    /// The newest mark of every partition.
    pub fn marks(&self) -> BTreeMap<u32, Mark> {
        self.lock().marks.clone()
    }

    /// Writes that landed.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// Waits until `n` writes have landed in all.
    pub async fn wait_for_writes(&self, n: usize) {
        loop {
            let notified = self.landed.notified();
            if self.writes() >= n {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stored> {
        // Each write merges under the lock in one go; a panic cannot leave it half-merged
        // in a way later reads would mind (tests only).
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn land(&self, flush: &Flush) {
        let partitions = flush
            .marks
            .keys()
            .chain(flush.delta.watermarks.keys())
            .copied()
            .chain(flush.delta.sessions.visits().iter().map(|v| v.partition));
        let wrong: Vec<(usize, u32)> =
            partitions.filter(|&p| self.group_of(p) != flush.group).map(|p| (flush.group, p)).collect();
        if let Ok(mut misplaced) = self.misplaced.lock() {
            misplaced.extend(wrong);
        }
        let mut stored = self.lock();
        for row in &flush.delta.rows {
            let key = (row.site.clone(), row.bucket, row.dimension.clone(), row.value.clone());
            let cell = stored.cells.entry(key).or_default();
            cell.events = cell.events.wrapping_add(row.events);
            cell.value_sum += row.value_sum;
            cell.value_count = cell.value_count.wrapping_add(row.value_count);
            cell.visitors.merge(&row.visitors);
        }
        stored.sessions.extend(flush.delta.sessions.to_states());
        for (&partition, &watermark) in &flush.delta.watermarks {
            let newest = stored.watermarks.entry(partition).or_insert(watermark);
            *newest = (*newest).max(watermark);
        }
        for (&partition, &mark) in &flush.marks {
            let newest = stored.marks.entry(partition).or_insert(mark);
            *newest = (*newest).max(mark);
        }
        drop(stored);
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.landed.notify_waiters();
    }
}

impl Store for MemoryStore {
    type Error = Rejected;

    fn positions(&self, partitions: &[u32]) -> BoxFuture<'_, Result<BTreeMap<u32, Mark>, Rejected>> {
        let marks = self.lock().marks.iter().filter(|(p, _)| partitions.contains(p)).map(|(&p, &m)| (p, m)).collect();
        future::ready(Ok(marks)).boxed()
    }

    fn open_sessions(&self, partitions: &[u32], horizon_ms: i64) -> BoxFuture<'_, Result<OpenSessions, Rejected>> {
        let stored = self.lock();
        let watermarks: BTreeMap<u32, i64> =
            stored.watermarks.iter().filter(|(p, _)| partitions.contains(p)).map(|(&p, &w)| (p, w)).collect();
        let since = watermarks.values().min().map_or(i64::MAX, |w| w.saturating_sub(horizon_ms));
        let sessions = stored
            .sessions
            .iter()
            .filter(|s| partitions.contains(&s.partition) && s.last_ts >= since)
            .cloned()
            .collect();
        future::ready(Ok(OpenSessions { watermarks, sessions })).boxed()
    }

    fn write(self: Arc<Self>, flush: Flush) -> BoxFuture<'static, Result<WriteReport, Rejected>> {
        async move {
            if self.faults.reject.load(Ordering::SeqCst) {
                return Err(Rejected::Write);
            }
            if let Some(fenced) = flush.fence.as_ref().and_then(|f| f.check().err()) {
                return Err(Rejected::Fenced(fenced));
            }
            if self.faults.stall_before_landing.load(Ordering::SeqCst) {
                self.faults.stall().await;
            }
            self.land(&flush);
            if self.faults.stall_after_landing.load(Ordering::SeqCst) {
                self.faults.stall().await;
            }
            Ok(WriteReport { rows: flush.delta.rows.len() + flush.marks.len(), bytes: 0 })
        }
        .boxed()
    }

    fn is_fenced(error: &Rejected) -> bool {
        matches!(error, Rejected::Fenced(_))
    }

    fn groups(&self) -> usize {
        self.groups.max(1)
    }

    fn group_of(&self, partition: u32) -> usize {
        partition as usize % self.groups.max(1)
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn retries(&self) -> u64 {
        self.retries.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use gallop_processor::RollupRow;

    use super::*;

    fn flush(events: u64, marks: &[(u32, u64)]) -> Flush {
        let row = RollupRow {
            site: "s".into(),
            bucket: 60,
            dimension: "total".into(),
            value: String::new(),
            events,
            visitors: UniqHll12::new(),
            value_sum: 0.0,
            value_count: 0,
        };
        Flush {
            delta: Delta { rows: vec![row], ..Delta::default() },
            marks: marks.iter().map(|&(p, position)| (p, Mark::at(position))).collect(),
            claims: BTreeMap::new(),
            fence: None,
            now: 0,
            group: 0,
        }
    }

    #[tokio::test]
    async fn merges_cells_and_keeps_the_newest_marks() {
        let store = Arc::new(MemoryStore::new());
        Arc::clone(&store).write(flush(2, &[(0, 5), (1, 3)])).await.expect("write");
        Arc::clone(&store).write(flush(3, &[(0, 9)])).await.expect("write");
        let cells = store.cells();
        assert_eq!(cells.values().map(|c| c.events).sum::<u64>(), 5);
        assert_eq!(store.positions(&[0, 1]).await.expect("positions"), store.marks());
        assert_eq!(store.marks()[&0], Mark::at(9));
        assert_eq!(store.positions(&[1]).await.expect("positions").len(), 1);
    }

    #[tokio::test]
    async fn faults_stall_or_reject_writes() {
        let store = Arc::new(MemoryStore::new());
        store.faults().reject(true);
        assert!(Arc::clone(&store).write(flush(1, &[(0, 1)])).await.is_err());
        store.faults().clear();
        store.faults().stall_after_landing(true);
        let write = tokio::spawn(Arc::clone(&store).write(flush(1, &[(0, 1)])));
        store.faults().stalled().await;
        assert_eq!(store.writes(), 1, "landed before stalling");
        write.abort();
    }
}

//! The flush writer: one delta → one insert, retried with exponential backoff and jitter
//! until it lands. Before each retry it settles whether the previous attempt landed after
//! all: it waits until the server no longer runs that attempt's query id, then looks for the
//! attempt's position markers. An insert whose answer was lost is therefore not repeated.
//!
//! A writer of a cluster's shard ([`Writer::for_shard`]) inserts into the shard's
//! replicated table on one replica and, when that one fails, sends the same bytes to the
//! next. There nothing needs settling: the shard's replicated block deduplication (block
//! hashes in ZooKeeper, checked by whichever replica commits) drops a block that landed
//! already, on any replica, even one that is down now.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use gallop_config::ClickHouseConfig;
use gallop_processor::Delta;
use gallop_support::Backoff;
use rand::Rng;
use tracing::{debug, info, warn};

use gallop_pipeline::{Claim, Mark, WriteFence};

use crate::{
    client::ClickHouse,
    encode::{encode_flush_into, FlushContext, Retention},
    error::SinkError,
};

/// Health and counters of a [`Writer`], shared with whoever reports them.
#[derive(Debug, Default)]
pub struct WriterStatus {
    /// False while the last attempt failed and retries are going on.
    pub healthy: AtomicBool,
    /// Inserts that landed.
    pub inserts: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Rows written.
    pub rows: AtomicU64,
    /// Bytes written (uncompressed RowBinary).
    pub bytes: AtomicU64,
}

/// What one successful write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Rows inserted (0 when an earlier attempt had landed).
    pub rows: usize,
    /// Uncompressed bytes.
    pub bytes: usize,
    /// Attempts made.
    pub attempts: u32,
    /// Time from first attempt to success.
    pub elapsed: Duration,
}

/// Writes deltas of one stream's partitions to ClickHouse.
#[derive(Debug)]
pub struct Writer {
    /// The servers it can insert into: one, or the replicas of a shard.
    replicas: Vec<ClickHouse>,
    /// The replica inserts go to now (the next one after a failure).
    current: AtomicUsize,
    /// Inserts go to a replicated table (retries rely on its deduplication).
    replicated: bool,
    stream: String,
    retention: Retention,
    backoff: Backoff,
    instance: String,
    sequence: AtomicU64,
    status: Arc<WriterStatus>,
    /// The last insert's body buffer, empty, for the next one (see [`encode_flush_into`]).
    spare: Mutex<Vec<u8>>,
}

impl Writer {
    /// A writer for positions of `stream`, with retry and retention from `config`.
    pub fn new(clickhouse: ClickHouse, stream: &str, config: &ClickHouseConfig) -> Self {
        Self::over(vec![clickhouse], false, stream, config)
    }

    /// A writer to one shard of a cluster, over its `replicas` (at least one), in order of
    /// preference: each insert goes to the replica that took the last one, the next one
    /// after a failure.
    pub fn for_shard(replicas: Vec<ClickHouse>, stream: &str, config: &ClickHouseConfig) -> Self {
        Self::over(replicas, true, stream, config)
    }

    fn over(replicas: Vec<ClickHouse>, replicated: bool, stream: &str, config: &ClickHouseConfig) -> Self {
        let seconds = |d: Duration| (!d.is_zero()).then(|| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let status = WriterStatus { healthy: AtomicBool::new(true), ..Default::default() };
        Self {
            replicas,
            current: AtomicUsize::new(0),
            replicated,
            stream: stream.to_owned(),
            retention: Retention {
                minute: seconds(config.retention_minute),
                hour: seconds(config.retention_hour),
                day: seconds(config.retention_day),
            },
            backoff: Backoff::new(config.retry_initial_backoff, config.retry_max_backoff),
            instance: format!("{:016x}", rand::rng().random::<u64>()),
            sequence: AtomicU64::new(0),
            status: Arc::new(status),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// Whether the attempt `query_id` landed: `None` while the server still runs it.
    async fn settle(&self, query_id: &str, encoded: &crate::encode::EncodedFlush) -> Result<Option<bool>, SinkError> {
        if self.clickhouse().is_running(query_id).await? {
            return Ok(None);
        }
        self.clickhouse().landed(&self.stream, encoded).await.map(Some)
    }

    /// Waits (up to twice `clickhouse.request_timeout`) until no insert of another writer
    /// into the table that was running when called still runs: a processor taking over a
    /// partition reads its mark only after an insert the previous owner had under way
    /// landed or failed. Gallop's inserts carry query ids `gallop-<writer>-…`.
    pub async fn settle_others(&self) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let mut waited_for: Option<Vec<String>> = None;
        loop {
            let mut running = Vec::new();
            for replica in &self.replicas {
                match replica.inserts_running(&self.instance).await {
                    Ok(queries) => running.extend(queries),
                    // A replica that does not answer is taken to be down: what it committed
                    // is in the shard's log, which reads at start wait for. One cut off from
                    // this processor only could still finish an insert begun before; the
                    // writers' fence bounds that (ARCHITECTURE.md, "Sharing partitions").
                    Err(e) if e.is_transient() && self.replicated => {
                        warn!(error = %e, "a replica does not answer; not waiting for inserts on it");
                    }
                    Err(e) => return Err(e),
                }
            }
            let pending: Vec<String> = match &waited_for {
                None => running,
                Some(before) => running.into_iter().filter(|q| before.contains(q)).collect(),
            };
            if pending.is_empty() {
                return Ok(());
            }
            if started.elapsed() > self.clickhouse().timeout() * 2 {
                warn!(inserts = ?pending, "other processors' inserts still run after twice clickhouse.request_timeout; \
                    going on");
                return Ok(());
            }
            waited_for = Some(pending);
            backoff.wait().await;
        }
    }

    /// Shared status for metrics and readiness.
    pub fn status(&self) -> Arc<WriterStatus> {
        Arc::clone(&self.status)
    }

    /// The connection inserts go to now.
    pub fn clickhouse(&self) -> &ClickHouse {
        // `current` only ever holds an index below the (non-empty, fixed) list's length.
        &self.replicas[self.current.load(Ordering::Relaxed) % self.replicas.len()]
    }

    /// Every replica, starting with the one inserts go to now.
    pub fn replicas(&self) -> impl Iterator<Item = &ClickHouse> {
        let from = self.current.load(Ordering::Relaxed);
        (0..self.replicas.len()).map(move |i| &self.replicas[(from + i) % self.replicas.len()])
    }

    /// Moves inserts to the next replica (after `failed` failed).
    fn next_replica(&self, failed: &ClickHouse) {
        if self.replicas.len() > 1 {
            let next = (self.current.load(Ordering::Relaxed) + 1) % self.replicas.len();
            self.current.store(next, Ordering::Relaxed);
            debug!(failed = failed.url(), next = self.clickhouse().url(), "inserts go to the next replica");
        }
    }

    /// Writes `delta` (rows, leaderboards) and `marks` (the positions it accounts for) as
    /// one insert, retrying transient failures until it lands. `now` is wall-clock seconds.
    /// A rejection (schema mismatch, bad data) is returned at once: retrying cannot fix it.
    pub async fn write(&self, delta: &Delta, marks: &BTreeMap<u32, Mark>, now: i64) -> Result<WriteReport, SinkError> {
        self.write_claimed(delta, marks, &BTreeMap::new(), None, now).await
    }

    /// [`write`](Self::write) where partitions are shared among processors: each marker
    /// names its writer (`claims`), and no attempt is started unless `fence` passes right
    /// before it, so a processor whose claim lapsed stops retrying with
    /// [`SinkError::Fenced`].
    pub async fn write_claimed(
        &self,
        delta: &Delta,
        marks: &BTreeMap<u32, Mark>,
        claims: &BTreeMap<u32, Claim>,
        fence: Option<&WriteFence>,
        now: i64,
    ) -> Result<WriteReport, SinkError> {
        let flush_id = format!("{}-{}", self.instance, self.sequence.fetch_add(1, Ordering::Relaxed));
        let context = FlushContext {
            stream: &self.stream,
            marks,
            claims,
            flush_id: &flush_id,
            now,
            retention: self.retention,
            top_as_string: !self.clickhouse().schema().features().topk_states,
        };
        // Two writes at once (the runtime never does that) would each find a buffer or none.
        let spare = self.spare.lock().map(|mut spare| std::mem::take(&mut *spare)).unwrap_or_default();
        let mut encoded = encode_flush_into(delta, &context, spare);
        let data = Bytes::from(std::mem::take(&mut encoded.bytes));
        let started = Instant::now();
        let mut backoff = self.backoff;
        let mut attempts = 0;
        'attempts: loop {
            attempts += 1;
            if let Some(fenced) = fence.and_then(|fence| fence.check().err()) {
                return Err(SinkError::Fenced(fenced.to_string()));
            }
            let query_id = format!("gallop-{flush_id}-{attempts}");
            let replica = self.clickhouse();
            match replica.insert(&encoded, data.clone(), &flush_id, &query_id).await {
                Ok(()) => break,
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    self.status.healthy.store(false, Ordering::Relaxed);
                    self.status.retries.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, attempt = attempts, rows = encoded.rows, "insert failed; retrying");
                }
            }
            if self.replicated {
                // The same bytes again, on the next replica: if the failed attempt landed
                // after all (or still lands), the shard's block deduplication drops one.
                self.next_replica(replica);
                backoff.wait().await;
                continue 'attempts;
            }
            // Before sending again, settle whether the failed attempt landed after all (its
            // answer may have been lost): wait until the server no longer runs it, then look
            // for its markers. Until both questions get an answer, nothing is re-sent.
            loop {
                backoff.wait().await;
                match self.settle(&query_id, &encoded).await {
                    Ok(Some(true)) => {
                        info!(flush = %flush_id, "an earlier insert attempt had landed");
                        self.status.healthy.store(true, Ordering::Relaxed);
                        return Ok(WriteReport { rows: 0, bytes: 0, attempts, elapsed: started.elapsed() });
                    }
                    Ok(Some(false)) => continue 'attempts,
                    Ok(None) => {}
                    Err(e) if !e.is_transient() => return Err(e),
                    Err(e) => warn!(error = %e, "ClickHouse still unavailable"),
                }
            }
        }
        self.status.healthy.store(true, Ordering::Relaxed);
        self.status.inserts.fetch_add(1, Ordering::Relaxed);
        self.status.rows.fetch_add(encoded.rows as u64, Ordering::Relaxed);
        self.status.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let report = WriteReport { rows: encoded.rows, bytes: data.len(), attempts, elapsed: started.elapsed() };
        if let (Some(buffer), Ok(mut spare)) = (reclaim(data), self.spare.lock()) {
            *spare = buffer;
        }
        Ok(report)
    }
}

/// The allocation of a sent body back as an empty buffer, when nothing else holds a part
/// of it any more (`None` otherwise: the next flush then allocates its own).
fn reclaim(data: Bytes) -> Option<Vec<u8>> {
    let mut buffer = Vec::from(data.try_into_mut().ok()?);
    buffer.clear();
    Some(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_body_gives_its_allocation_back_once_no_piece_is_held() {
        let mut body = Vec::with_capacity(4 << 20);
        body.resize(3 << 20, 7u8);
        let (at, capacity) = (body.as_ptr(), body.capacity());
        let data = Bytes::from(body);
        let piece = data.slice(0..1 << 20);
        let data = match data.try_into_mut() {
            Ok(_) => panic!("a piece is still held, so the body must not come back"),
            Err(data) => data,
        };
        assert!(reclaim(data.clone()).is_none(), "held twice");
        drop(piece);
        let buffer = reclaim(data).unwrap_or_default();
        assert_eq!((buffer.as_ptr(), buffer.capacity(), buffer.len()), (at, capacity, 0), "the same allocation, empty");
    }
}

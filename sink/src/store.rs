//! [`ClickHouseStore`]: the ClickHouse sink's [`Writer`]s as the pipeline runtime's [`Store`].
//!
//! On one server there is one writer. On a cluster there is one per shard, and partition `p`
//! belongs to shard `p % shards`: its rows, marks and open visits go there in one insert,
//! and are read back from there at start, from a replica that first caught up with the
//! shard's replication log ([`ClickHouse::sync_replica`]).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt};
use gallop_config::ClickHouseConfig;
use gallop_pipeline::{Flush, Mark, Store, WriteReport};
use gallop_processor::OpenSessions;
use gallop_support::Backoff;
use tracing::{info, warn};

use crate::{
    client::ClickHouse,
    error::SinkError,
    writer::{Writer, WriterStatus},
};

/// Stores flushes in ClickHouse: rows and position markers in one insert, retried until it
/// lands and never twice (see [`Writer`]); on a cluster, each partition in its shard.
#[derive(Debug)]
pub struct ClickHouseStore {
    /// One writer per shard (one in all on a single server).
    shards: Vec<Writer>,
    statuses: Vec<Arc<WriterStatus>>,
    stream: String,
    /// The writers are of a cluster's shards: reads at start wait for a replica in sync.
    cluster: bool,
}

impl ClickHouseStore {
    /// A store writing through `writer` to one server, whose markers name `stream`.
    pub fn new(writer: Writer, stream: &str) -> Self {
        Self::over(vec![writer], false, stream)
    }

    /// A store writing to the cluster `clickhouse` was connected to, over the replicas
    /// `config.shards` lists: partition `p` to shard `p % shards`. Each replica that answers
    /// is checked to belong to its shard (the replicas of one shard share a `shard` macro,
    /// and shards do not); one that does not answer is checked when it is used.
    pub async fn cluster(clickhouse: &ClickHouse, config: &ClickHouseConfig, stream: &str) -> Result<Self, SinkError> {
        let cluster = config.cluster.clone().unwrap_or_default();
        let mut seen: Vec<(usize, String, String)> = Vec::new();
        let mut writers = Vec::with_capacity(config.shards.len());
        for (shard, urls) in config.shards.iter().enumerate() {
            let replicas: Vec<ClickHouse> = urls.iter().map(|url| clickhouse.at(url)).collect();
            for replica in &replicas {
                let found = match replica.shard_macro().await {
                    Ok(found) => found,
                    Err(e) if e.is_transient() => {
                        warn!(error = %e, shard, "a replica does not answer; it is checked when it is used");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for (other, url, other_macro) in &seen {
                    let problem = if *other == shard && *other_macro != found {
                        format!(
                            "clickhouse.shards lists {url} and {} as replicas of shard {shard}, but their `shard` \
                             macros differ ({other_macro:?}, {found:?}): they do not replicate each other",
                            replica.url()
                        )
                    } else if *other != shard && *other_macro == found {
                        format!(
                            "{url} (shard {other} in clickhouse.shards) and {} (shard {shard}) have the same `shard` \
                             macro {found:?}: they are one shard",
                            replica.url()
                        )
                    } else {
                        continue;
                    };
                    return Err(SinkError::Cluster { cluster, problem });
                }
                seen.push((shard, replica.url().to_owned(), found));
            }
            writers.push(Writer::for_shard(replicas, stream, config));
        }
        info!(cluster, shards = writers.len(), "writing to a ClickHouse cluster");
        Ok(Self::over(writers, true, stream))
    }

    fn over(shards: Vec<Writer>, cluster: bool, stream: &str) -> Self {
        let statuses = shards.iter().map(Writer::status).collect();
        Self { shards, statuses, stream: stream.to_owned(), cluster }
    }

    /// The shards' writers, in shard order.
    pub fn writers(&self) -> &[Writer] {
        &self.shards
    }

    /// `partitions` by shard: (shard, its partitions), shards with none left out.
    fn by_shard(&self, partitions: &[u32]) -> Vec<(usize, Vec<u32>)> {
        let mut split: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for &partition in partitions {
            split.entry(self.group_of(partition)).or_default().push(partition);
        }
        split.into_iter().collect()
    }

    /// Runs `read` on a replica of `shard` that holds every insert landed on the shard:
    /// on one server, the server; on a cluster, the first replica (from the one inserts go
    /// to) that syncs with the shard's replication log. While none can, it waits — the
    /// runtime's start with it, shown as not ready — and tries again: reading an older
    /// replica would resume partitions before what is stored, and count events twice.
    async fn read_shard<T, F, Fut>(&self, shard: usize, partitions: &[u32], read: F) -> Result<T, SinkError>
    where
        F: Fn(ClickHouse) -> Fut,
        Fut: Future<Output = Result<T, SinkError>>,
    {
        let writer = &self.shards[shard];
        if !self.cluster {
            return read(writer.clickhouse().clone()).await;
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let mut errors = Vec::new();
            for replica in writer.replicas() {
                let synced = match replica.sync_replica().await {
                    Ok(()) => read(replica.clone()).await,
                    Err(e) => Err(e),
                };
                match synced {
                    Ok(value) => {
                        self.statuses[shard].healthy.store(true, Ordering::Relaxed);
                        return Ok(value);
                    }
                    Err(e) if e.is_transient() => errors.push(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            self.statuses[shard].healthy.store(false, Ordering::Relaxed);
            warn!(
                shard,
                ?partitions,
                errors = ?errors,
                "no replica of the shard is reachable and up to date; its partitions wait (nothing is read or lost)"
            );
            backoff.wait().await;
        }
    }
}

impl Store for ClickHouseStore {
    type Error = SinkError;

    fn positions(&self, partitions: &[u32]) -> BoxFuture<'_, Result<BTreeMap<u32, Mark>, SinkError>> {
        let partitions = partitions.to_vec();
        async move {
            let mut all = BTreeMap::new();
            for (shard, owned) in self.by_shard(&partitions) {
                let stream = self.stream.as_str();
                let read = |ch: ClickHouse| {
                    let owned = owned.clone();
                    async move { ch.positions(stream, &owned).await }
                };
                all.extend(self.read_shard(shard, &owned, read).await?);
            }
            Ok(all)
        }
        .boxed()
    }

    fn open_sessions(&self, partitions: &[u32], horizon_ms: i64) -> BoxFuture<'_, Result<OpenSessions, SinkError>> {
        let partitions = partitions.to_vec();
        async move {
            let mut all = OpenSessions::default();
            for (shard, owned) in self.by_shard(&partitions) {
                let stream = self.stream.as_str();
                let read = |ch: ClickHouse| {
                    let owned = owned.clone();
                    async move { ch.open_sessions(stream, &owned, horizon_ms).await }
                };
                let open = self.read_shard(shard, &owned, read).await?;
                all.watermarks.extend(open.watermarks);
                all.sessions.extend(open.sessions);
            }
            Ok(all)
        }
        .boxed()
    }

    fn write(self: Arc<Self>, flush: Flush) -> BoxFuture<'static, Result<WriteReport, SinkError>> {
        async move {
            let writer = &self.shards[flush.group.min(self.shards.len() - 1)];
            let report = writer
                .write_claimed(&flush.delta, &flush.marks, &flush.claims, flush.fence.as_ref(), flush.now)
                .await?;
            Ok(WriteReport { rows: report.rows, bytes: report.bytes })
        }
        .boxed()
    }

    fn settle_others(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            for writer in &self.shards {
                writer.settle_others().await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn groups(&self) -> usize {
        self.shards.len()
    }

    fn group_of(&self, partition: u32) -> usize {
        partition as usize % self.shards.len().max(1)
    }

    fn is_fenced(error: &SinkError) -> bool {
        matches!(error, SinkError::Fenced(_))
    }

    fn is_healthy(&self) -> bool {
        self.statuses.iter().all(|status| status.healthy.load(Ordering::Relaxed))
    }

    fn retries(&self) -> u64 {
        self.statuses.iter().map(|status| status.retries.load(Ordering::Relaxed)).sum()
    }
}

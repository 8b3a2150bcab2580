//! [`ClickHouseStore`]: the ClickHouse sink's [`Writer`] as the pipeline runtime's [`Store`].

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
};

use futures::future::{BoxFuture, FutureExt};
use gallop_pipeline::{Flush, Mark, Store, WriteReport};
use gallop_processor::OpenSessions;

use crate::{
    error::SinkError,
    writer::{Writer, WriterStatus},
};

/// Stores flushes in ClickHouse: rows and position markers in one insert, retried until it
/// lands and never twice (see [`Writer`]).
#[derive(Debug)]
pub struct ClickHouseStore {
    writer: Writer,
    status: Arc<WriterStatus>,
    stream: String,
}

impl ClickHouseStore {
    /// A store writing through `writer`, whose markers name `stream`.
    pub fn new(writer: Writer, stream: &str) -> Self {
        let status = writer.status();
        Self { writer, status, stream: stream.to_owned() }
    }
}

impl Store for ClickHouseStore {
    type Error = SinkError;

    fn positions(&self, partitions: &[u32]) -> BoxFuture<'_, Result<BTreeMap<u32, Mark>, SinkError>> {
        let partitions = partitions.to_vec();
        async move { self.writer.clickhouse().positions(&self.stream, &partitions).await }.boxed()
    }

    fn open_sessions(&self, partitions: &[u32], horizon_ms: i64) -> BoxFuture<'_, Result<OpenSessions, SinkError>> {
        let partitions = partitions.to_vec();
        async move { self.writer.clickhouse().open_sessions(&self.stream, &partitions, horizon_ms).await }.boxed()
    }

    fn write(self: Arc<Self>, flush: Flush) -> BoxFuture<'static, Result<WriteReport, SinkError>> {
        async move {
            let report = self
                .writer
                .write_claimed(&flush.delta, &flush.marks, &flush.claims, flush.fence.as_ref(), flush.now)
                .await?;
            Ok(WriteReport { rows: report.rows, bytes: report.bytes })
        }
        .boxed()
    }

    fn settle_others(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move { self.writer.settle_others().await }.boxed()
    }

    fn is_fenced(error: &SinkError) -> bool {
        matches!(error, SinkError::Fenced(_))
    }

    fn is_healthy(&self) -> bool {
        self.status.healthy.load(Ordering::Relaxed)
    }

    fn retries(&self) -> u64 {
        self.status.retries.load(Ordering::Relaxed)
    }
}

//! `gallop process`: wiring of a broker source, the processor core and the ClickHouse store
//! into the runtime of `gallop-pipeline`, with the status endpoint beside it.

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use anyhow::Context as _;
use futures::future::{BoxFuture, FutureExt};
use gallop_broker::{Membership, Source};
use gallop_config::{Assignment as AssignmentMode, Config};
use gallop_pipeline::{status_router, Health, Ownership, ProcessMetrics, RunError, RunOptions};
use gallop_processor::Processor;
use gallop_sink::{ClickHouse, ClickHouseStore, Writer};
use gallop_support::Backoff;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The partitions of the static list: `consumer.partitions`, or all of them; `None` with
/// `consumer.assignment = "auto"`.
pub(crate) fn pinned_partitions(config: &Config) -> Option<Vec<u32>> {
    match config.consumer.assignment {
        AssignmentMode::Auto => None,
        AssignmentMode::Static if config.consumer.partitions.is_empty() => {
            Some((0..config.broker.partitions).collect())
        }
        AssignmentMode::Static => Some(config.consumer.partitions.clone()),
    }
}

/// This processor's name among those sharing the partitions.
pub(crate) fn member_name(config: &Config) -> String {
    if config.consumer.member.is_empty() {
        gallop_broker::default_member_name()
    } else {
        config.consumer.member.clone()
    }
}

/// Connects to ClickHouse, waiting out transient failures (the server may start after us)
/// for up to `wait`; migrates (idempotent) and checks the schema.
pub(crate) async fn open_clickhouse(config: &Config, wait: Duration) -> anyhow::Result<ClickHouse> {
    let started = Instant::now();
    let mut backoff = Backoff::new(config.clickhouse.retry_initial_backoff, config.clickhouse.retry_max_backoff);
    let clickhouse = loop {
        match ClickHouse::connect(&config.clickhouse).await {
            Ok(clickhouse) => break clickhouse,
            Err(e) if e.is_transient() && started.elapsed() < wait => {
                warn!(error = %e, "ClickHouse not available yet; retrying");
                backoff.wait().await;
            }
            Err(e) => return Err(e).context("connecting to ClickHouse"),
        }
    };
    let report = clickhouse.migrate().await.context("migrating the ClickHouse schema")?;
    info!(server = %report.server, schema = report.to, applied = ?report.applied, "ClickHouse ready");
    clickhouse.check_schema().await?;
    Ok(clickhouse)
}

/// Runs the processing loop over the partitions `membership` assigns, reading them with the
/// sources `open` makes (positions stored under `stream`), until `shutdown`, serving
/// `/metrics`, `/health` and `/ready` on `listener`.
///
/// The runtime follows the assignment as it changes (partitions written and handed over,
/// others read back and resumed, the rest going on). A partition lost outright stops it
/// with nothing more written; a new runtime then starts on the current assignment from
/// what ClickHouse holds. At shutdown the last flush is written and every partition
/// released at once.
pub(crate) async fn run<M, S, Open>(
    config: Config,
    clickhouse: ClickHouse,
    membership: Arc<M>,
    mut open: Open,
    stream: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    M: Membership,
    S: Source,
    Open: FnMut(Vec<u32>) -> BoxFuture<'static, anyhow::Result<S>>,
{
    let store = Arc::new(if config.clickhouse.cluster.is_some() {
        ClickHouseStore::cluster(&clickhouse, &config.clickhouse, stream).await?
    } else {
        ClickHouseStore::new(Writer::new(clickhouse, stream, &config.clickhouse), stream)
    });
    let metrics = ProcessMetrics::new();
    metrics.partitions_total.set(i64::from(config.broker.partitions));
    let health = Arc::new(Health::default());
    let router = status_router(
        metrics.clone(),
        Arc::clone(&health),
        gallop_support::ApiKeys::new(&config.ingest.auth.metrics_keys),
    );
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let shutdown = shutdown.boxed().shared();
    // Paces fresh starts after lost partitions (a claim that keeps failing its fence).
    let mut again = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let result = loop {
        let assignment = membership.watch().borrow().clone();
        info!(member = membership.member(), partitions = ?assignment.partitions(), "running partitions");
        let source = match open(assignment.partitions()).await {
            Ok(source) => source,
            Err(e) => break Err(e),
        };
        let processor = Processor::new(&config.processor, &config.time)?;
        let mut options = RunOptions::from_config(&config);
        options.ownership = Some(Ownership {
            membership: Arc::clone(&membership) as Arc<dyn Membership>,
            generations: assignment.owned.clone(),
        });
        let outcome = gallop_pipeline::run(
            source,
            processor,
            Arc::clone(&store),
            options,
            metrics.clone(),
            Arc::clone(&health),
            shutdown.clone(),
        )
        .await;
        match outcome {
            Ok(()) => break Ok(()),
            Err(RunError::Fenced(fenced)) => {
                warn!(
                    error = %fenced,
                    "a partition was lost: what was held in memory is dropped (unacknowledged, so it is read again) \
                     and the processor starts again from what ClickHouse holds"
                );
                // Partitions the runtime was giving up when it stopped are no longer in the
                // assignment; nothing of them is in flight now, so they go.
                let now = membership.watch().borrow().owned.clone();
                membership.hand_over((0..config.broker.partitions).filter(|p| !now.contains_key(p)).collect()).await;
                tokio::select! {
                    () = shutdown.clone() => break Ok(()),
                    () = again.wait() => {}
                }
            }
            Err(e) => break Err(anyhow::Error::new(e).context(format!("processing the events of {stream}"))),
        }
    };
    if result.is_ok() {
        membership.leave().await;
        info!("processor stopped; partitions released");
    }
    server.abort();
    result
}

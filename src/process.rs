//! `gallop process`: wiring of a broker source, the processor core and the ClickHouse store
//! into the runtime of `gallop-pipeline`, with the status endpoint beside it.

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use anyhow::Context as _;
use gallop_broker::Source;
use gallop_config::Config;
use gallop_pipeline::{status_router, Health, ProcessMetrics, RunOptions};
use gallop_processor::Processor;
use gallop_sink::{ClickHouse, ClickHouseStore, Writer};
use gallop_support::Backoff;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The partitions this instance owns: `consumer.partitions`, or all of them.
pub(crate) fn owned_partitions(config: &Config) -> Vec<u32> {
    if config.consumer.partitions.is_empty() {
        (0..config.broker.partitions).collect()
    } else {
        config.consumer.partitions.clone()
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

/// Runs the processing loop over `source` (whose positions are stored under `stream`) until
/// `shutdown`, serving `/metrics`, `/health` and `/ready` on `listener`.
pub(crate) async fn run<S: Source>(
    config: Config,
    clickhouse: ClickHouse,
    source: S,
    stream: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let processor = Processor::new(&config.processor, &config.time)?;
    let store = Arc::new(ClickHouseStore::new(Writer::new(clickhouse, stream, &config.clickhouse), stream));
    let metrics = ProcessMetrics::new();
    let health = Arc::new(Health::default());
    let router = status_router(
        metrics.clone(),
        Arc::clone(&health),
        gallop_support::ApiKeys::new(&config.ingest.auth.metrics_keys),
    );
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let options = RunOptions::from_config(&config);
    let result = gallop_pipeline::run(source, processor, store, options, metrics, health, shutdown).await;
    server.abort();
    result.with_context(|| format!("processing the events of {stream}"))
}

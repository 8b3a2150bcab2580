//! `gallop process`: wiring of a broker source, the processor core and the ClickHouse store
//! into the runtime of `gallop-pipeline`, with the status endpoint beside it.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration, time::Instant};

use anyhow::Context as _;
use futures::future::{BoxFuture, FutureExt};
use gallop_broker::{Assignment, Fence, Membership, Source};
use gallop_config::{Assignment as AssignmentMode, Config};
use gallop_pipeline::{status_router, Health, Ownership, OwnershipStatus, ProcessMetrics, RunError, RunOptions};
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
/// Each assignment runs in one runtime. When the assignment changes, the runtime writes
/// what it folded (fenced: nothing is written for a partition whose claim lapsed) and
/// stops; the partitions no longer run are handed over, and a new runtime starts on the
/// new assignment, reading its partitions' positions and open visits back from ClickHouse.
/// At shutdown the last flush is written and every partition released at once.
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
    let store = Arc::new(ClickHouseStore::new(Writer::new(clickhouse, stream, &config.clickhouse), stream));
    let metrics = ProcessMetrics::new();
    let health = Arc::new(Health::default());
    let router = status_router(
        metrics.clone(),
        Arc::clone(&health),
        gallop_support::ApiKeys::new(&config.ingest.auth.metrics_keys),
    );
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let observer = Observer {
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        seen: Default::default(),
        partitions: config.broker.partitions,
    };
    let shutdown = shutdown.boxed().shared();
    let mut assignments = membership.watch();
    let result = loop {
        let assignment = assignments.borrow_and_update().clone();
        observer.observe(membership.as_ref(), &assignment);
        if assignment.owned.is_empty() {
            // A standby: more members than partitions, or waiting for a share.
            tokio::select! {
                () = shutdown.clone() => break Ok(()),
                changed = assignments.changed() => if changed.is_err() { break Ok(()) },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let partitions = assignment.partitions();
        info!(member = membership.member(), ?partitions, "running partitions");
        let source = match open(partitions.clone()).await {
            Ok(source) => source,
            Err(e) => break Err(e),
        };
        let processor = Processor::new(&config.processor, &config.time)?;
        let mut options = RunOptions::from_config(&config);
        options.ownership = Some(Ownership {
            member: membership.member().into(),
            generations: assignment.owned.clone(),
            fence: Arc::clone(&membership) as Arc<dyn Fence>,
            write_budget: membership.write_budget(),
        });
        let stop = {
            let (shutdown, mut watch, owned) = (shutdown.clone(), membership.watch(), assignment.owned.clone());
            let (observer, membership) = (observer.clone(), Arc::clone(&membership));
            async move {
                let changed = async {
                    while watch.changed().await.is_ok() {
                        let now = watch.borrow_and_update().clone();
                        observer.observe(membership.as_ref(), &now);
                        if now.owned != owned {
                            info!(was = ?owned.keys(), now = ?now.owned.keys(), "assignment changed: writing what is held, then starting again");
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = shutdown => {}
                    () = changed => {}
                }
            }
        };
        let outcome = gallop_pipeline::run(
            source,
            processor,
            Arc::clone(&store),
            options,
            metrics.clone(),
            Arc::clone(&health),
            stop,
        )
        .await;
        match outcome {
            Ok(()) => {}
            Err(RunError::Fenced(fenced)) => {
                warn!(error = %fenced, "a partition was lost: what was held in memory is dropped (not acknowledged, so it is read again by whoever owns it)");
            }
            Err(e) => break Err(anyhow::Error::new(e).context(format!("processing the events of {stream}"))),
        }
        if shutdown.peek().is_some() {
            break Ok(());
        }
        let now = membership.watch().borrow().owned.clone();
        let gone: Vec<u32> = partitions.into_iter().filter(|p| !now.contains_key(p)).collect();
        if !gone.is_empty() {
            membership.hand_over(gone).await;
        }
    };
    if result.is_ok() {
        membership.leave().await;
        observer.observe(membership.as_ref(), &membership.watch().borrow().clone());
        info!("processor stopped; partitions released");
    }
    server.abort();
    result
}

/// Keeps the ownership metrics and `/ready` current.
#[derive(Clone)]
struct Observer {
    metrics: ProcessMetrics,
    health: Arc<Health>,
    /// The handover counts already added to the counter, by reason.
    seen: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    /// `broker.partitions`.
    partitions: u32,
}

impl Observer {
    fn observe<M: Membership>(&self, membership: &M, assignment: &Assignment) {
        let metrics = &self.metrics;
        metrics.partitions_owned.set(assignment.owned.len() as i64);
        // -1: the broker does not tell (Tansu 0.6 describes no consumer group).
        metrics.partitions_unowned.set(assignment.unowned.map_or(-1, i64::from));
        metrics.partition_members.set(assignment.members.map_or(-1, i64::from));
        metrics.partitions_total.set(i64::from(self.partitions));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (reason, &count) in &assignment.handovers {
            let before = seen.entry(reason.clone()).or_default();
            metrics.partition_handovers.with_label_values(&[reason]).inc_by(count.saturating_sub(*before));
            *before = (*before).max(count);
        }
        self.health.set_ownership(OwnershipStatus {
            member: membership.member().to_owned(),
            owned: assignment.partitions(),
            members: assignment.members,
            unowned: assignment.unowned,
            trouble: membership.trouble(),
        });
    }
}

//! `gallop process`: consumer → processor → ClickHouse, exactly once in effect.
//!
//! The loop takes deliveries from the owned partitions, folds them into the
//! [`Processor`], and when a flush is due hands the delta to one background write. A write
//! that lands acknowledges, per partition, the newest message it accounts for
//! (`AckPolicy::All` covers the ones before). Positions stored with the rows are read back at
//! start; a delivery at or below the position already folded in (stored, or in memory) is a
//! redelivery and is skipped. While a write is retrying, intake goes on until the processor
//! reaches `processor.max_live_keys`, then pauses: memory stays bounded and nothing is acked
//! that is not in ClickHouse.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use axum::{extract::State, http::header, http::StatusCode, response::IntoResponse, routing::get, Router};
use gallop_broker::{Acker, Delivery, NatsBroker, NatsConsumer};
use gallop_config::Config;
use gallop_processor::{Delta, Processor};
use gallop_sink::{ClickHouse, SinkError, WriteReport, Writer, WriterStatus};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{error, info, warn};

/// The processor's Prometheus metrics.
struct ProcessMetrics {
    registry: Registry,
    messages: IntCounterVec,
    events: IntCounterVec,
    invalid: IntCounterVec,
    flushes: IntCounter,
    flush_rows: IntCounter,
    flush_bytes: IntCounter,
    flush_duration: Histogram,
    insert_retries: IntGauge,
    live_keys: IntGauge,
    pending: IntGauge,
    watermark_lag: IntGauge,
}

impl ProcessMetrics {
    fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new("gallop_messages_total", "Broker messages by outcome (processed, redelivered)"),
            &["outcome"],
        )?;
        let events = IntCounterVec::new(
            Opts::new("gallop_events_total", "Records by outcome (counted, late, future)"),
            &["outcome"],
        )?;
        let invalid =
            IntCounterVec::new(Opts::new("gallop_events_invalid_total", "Unusable records by reason"), &["reason"])?;
        let flushes = IntCounter::new("gallop_flushes_total", "Flushes written to ClickHouse")?;
        let flush_rows = IntCounter::new("gallop_flush_rows_total", "Rows inserted into ClickHouse")?;
        let flush_bytes = IntCounter::new("gallop_flush_bytes_total", "Uncompressed RowBinary bytes inserted")?;
        let flush_duration = Histogram::with_opts(
            HistogramOpts::new("gallop_flush_duration_seconds", "Time from flush to a landed insert, retries included")
                .buckets(prometheus::exponential_buckets(0.005, 2.0, 14)?),
        )?;
        let insert_retries =
            IntGauge::new("gallop_insert_retries_total", "Insert attempts that failed and were retried")?;
        let live_keys = IntGauge::new("gallop_live_keys", "Rows and leaderboards held in memory since the last flush")?;
        let pending =
            IntGauge::new("gallop_consumer_pending_messages", "Messages behind the last delivery, all partitions")?;
        let watermark_lag =
            IntGauge::new("gallop_watermark_lag_seconds", "Wall clock minus the newest event time, oldest partition")?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(invalid.clone()))?;
        registry.register(Box::new(flushes.clone()))?;
        registry.register(Box::new(flush_rows.clone()))?;
        registry.register(Box::new(flush_bytes.clone()))?;
        registry.register(Box::new(flush_duration.clone()))?;
        registry.register(Box::new(insert_retries.clone()))?;
        registry.register(Box::new(live_keys.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(watermark_lag.clone()))?;
        Ok(Self {
            registry,
            messages,
            events,
            invalid,
            flushes,
            flush_rows,
            flush_bytes,
            flush_duration,
            insert_retries,
            live_keys,
            pending,
            watermark_lag,
        })
    }

    fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding text into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

struct HttpState {
    metrics: Arc<ProcessMetrics>,
    writer: Arc<WriterStatus>,
    broker: NatsBroker,
}

fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    if !state.writer.healthy.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: ClickHouse inserts are failing").into_response()
    } else if state.broker.client().connection_state() != async_nats::connection::State::Connected {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: broker not connected").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Connects to ClickHouse, waiting out transient failures (the server may start after us)
/// for up to `wait`; migrates (idempotent) and checks the schema.
async fn open_clickhouse(config: &Config, wait: Duration) -> anyhow::Result<ClickHouse> {
    let started = Instant::now();
    let mut backoff = config.clickhouse.retry_initial_backoff;
    let clickhouse = loop {
        match ClickHouse::connect(&config.clickhouse).await {
            Ok(clickhouse) => break clickhouse,
            Err(e) if e.is_transient() && started.elapsed() < wait => {
                warn!(error = %e, "ClickHouse not available yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.clickhouse.retry_max_backoff);
            }
            Err(e) => return Err(e).context("connecting to ClickHouse"),
        }
    };
    let report = clickhouse.migrate().await.context("migrating the ClickHouse schema")?;
    info!(server = %report.server, schema = report.to, applied = ?report.applied, "ClickHouse ready");
    clickhouse.check_schema().await?;
    Ok(clickhouse)
}

/// The newest unacknowledged delivery per partition: (position, its acker).
type Acks = BTreeMap<u32, (u64, Acker)>;

/// What a background write ends with: its result, the acknowledgements waiting for it, and
/// when it started.
type Written = (Result<WriteReport, SinkError>, Acks, Instant);

/// A write in the background.
type InFlight = JoinHandle<Written>;

/// Runs the processing loop on `broker` until `shutdown`, serving metrics on `listener`.
pub(crate) async fn run(
    config: Config,
    broker: NatsBroker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let partitions: Vec<u32> = if config.consumer.partitions.is_empty() {
        (0..config.broker.partitions).collect()
    } else {
        config.consumer.partitions.clone()
    };
    let clickhouse = open_clickhouse(&config, config.consumer.shutdown_timeout).await?;
    let durable = clickhouse.positions(broker.stream(), &partitions).await?;
    info!(?partitions, stored_positions = ?durable, "resuming after the stored positions");
    let mut processor = Processor::new(&config.processor, &config.time)?;
    let mut consumer = NatsConsumer::open(&broker, &partitions, &durable, &config.consumer).await?;
    let writer = Arc::new(Writer::new(clickhouse, broker.stream(), &config.clickhouse));
    let metrics = Arc::new(ProcessMetrics::new()?);
    let status = writer.status();
    let http =
        Arc::new(HttpState { metrics: Arc::clone(&metrics), writer: Arc::clone(&status), broker: broker.clone() });
    let server = tokio::spawn(async move { axum::serve(listener, router(http)).await });

    let mut state = Loop {
        durable: durable.clone(),
        seen: durable,
        unacked: BTreeMap::new(),
        pending: BTreeMap::new(),
        metrics: Arc::clone(&metrics),
    };
    let mut in_flight: Option<InFlight> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_flush = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let can_take = !processor.is_full();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            done = async { in_flight.as_mut().expect("guarded by is_some").await }, if in_flight.is_some() => {
                in_flight = None;
                state.landed(done.context("the write task panicked")?).await?;
            }
            delivery = consumer.next(), if can_take => {
                let delivery = delivery.context("every partition's pull task ended")?;
                state.take(&mut processor, delivery).await?;
            }
            _ = tick.tick() => {}
        }
        state.observe(&processor, status.retries.load(Ordering::Relaxed));
        // Also flush deliveries that added no keys (only late or invalid records), so that
        // they are acknowledged too.
        let idle_acks = !state.unacked.is_empty() && last_flush.elapsed() >= config.processor.flush_interval;
        if in_flight.is_none() && (processor.should_flush(now_ms()) || idle_acks) {
            in_flight = Some(state.start_write(&mut processor, &writer));
            last_flush = Instant::now();
        }
    }

    info!("shutting down: flushing what is in memory");
    let drain = async {
        if let Some(task) = in_flight.take() {
            state.landed(task.await.context("the write task panicked")?).await?;
        }
        if processor.live_keys() > 0 || !state.unacked.is_empty() {
            let task = state.start_write(&mut processor, &writer);
            state.landed(task.await.context("the write task panicked")?).await?;
        }
        anyhow::Ok(())
    };
    let grace = config.consumer.shutdown_timeout;
    match tokio::time::timeout(grace, drain).await {
        Ok(result) => result?,
        Err(_) => anyhow::bail!(
            "ClickHouse did not take the last flush within consumer.shutdown_timeout ({grace:?}); nothing \
             unwritten was acknowledged, so the broker will deliver it again"
        ),
    }
    server.abort();
    info!("processor stopped");
    Ok(())
}

/// Positions and acknowledgements of the loop.
struct Loop {
    /// Newest position per partition known to be in ClickHouse.
    durable: BTreeMap<u32, u64>,
    /// Newest position per partition folded in (in ClickHouse or in memory).
    seen: BTreeMap<u32, u64>,
    /// Newest delivery per partition folded in since the last flush, to acknowledge once
    /// that flush lands.
    unacked: Acks,
    /// Consumer lag per partition, from the last delivery.
    pending: BTreeMap<u32, u64>,
    metrics: Arc<ProcessMetrics>,
}

impl Loop {
    async fn take(&mut self, processor: &mut Processor, delivery: Delivery) -> anyhow::Result<()> {
        let Delivery { partition, position, payload, delivered, pending, acker } = delivery;
        self.pending.insert(partition, pending);
        if self.seen.get(&partition).is_some_and(|&seen| position <= seen) {
            self.metrics.messages.with_label_values(&["redelivered"]).inc();
            // Already in ClickHouse: acknowledge so it stops coming back. Only in memory:
            // leave it; the acknowledgement after the next flush covers it.
            if self.durable.get(&partition).is_some_and(|&durable| position <= durable) {
                if let Err(e) = acker.ack(partition, position).await {
                    warn!(error = %e, "acknowledging a redelivery failed; it will come again and be skipped again");
                }
            }
            return Ok(());
        }
        if delivered > 1 {
            info!(partition, position, delivered, "processing a redelivered message not yet stored");
        }
        let report = processor
            .process_message(partition, position, &payload, now_ms())
            // The loop only takes deliveries while the processor has room.
            .context("processor refused a message it had room for")?;
        for record in &report.invalid {
            warn!(partition, position, index = record.index, reason = record.reason, detail = %record.detail,
                "unusable record skipped");
            self.metrics.invalid.with_label_values(&[record.reason]).inc();
        }
        self.metrics.messages.with_label_values(&["processed"]).inc();
        self.metrics.events.with_label_values(&["counted"]).inc_by(report.counted as u64);
        self.metrics.events.with_label_values(&["late"]).inc_by(report.late as u64);
        self.metrics.events.with_label_values(&["future"]).inc_by(report.future as u64);
        self.seen.insert(partition, position);
        self.unacked.insert(partition, (position, acker));
        Ok(())
    }

    fn start_write(&mut self, processor: &mut Processor, writer: &Arc<Writer>) -> InFlight {
        let now = now_ms();
        let delta: Delta = processor.flush(now);
        let acks = std::mem::take(&mut self.unacked);
        let writer = Arc::clone(writer);
        let started = Instant::now();
        tokio::spawn(async move {
            let result = writer.write(&delta, now / 1000).await;
            (result, acks, started)
        })
    }

    async fn landed(&mut self, (result, acks, started): Written) -> anyhow::Result<()> {
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                error!(error = %e, "ClickHouse rejected a flush; stopping without acknowledging it");
                return Err(e.into());
            }
        };
        self.metrics.flushes.inc();
        self.metrics.flush_rows.inc_by(report.rows as u64);
        self.metrics.flush_bytes.inc_by(report.bytes as u64);
        self.metrics.flush_duration.observe(started.elapsed().as_secs_f64());
        for (partition, (position, acker)) in acks {
            self.durable.insert(partition, position);
            if let Err(e) = acker.ack(partition, position).await {
                // Stored already; a redelivery will be recognised and skipped.
                warn!(error = %e, "acknowledgement failed after a landed insert");
            }
        }
        Ok(())
    }

    fn observe(&self, processor: &Processor, retries: u64) {
        self.metrics.live_keys.set(processor.live_keys() as i64);
        self.metrics.insert_retries.set(retries as i64);
        self.metrics.pending.set(self.pending.values().sum::<u64>() as i64);
        let oldest = self.seen.keys().filter_map(|&p| processor.watermark(p)).min();
        if let Some(watermark) = oldest {
            self.metrics.watermark_lag.set((now_ms() - watermark) / 1000);
        }
    }
}

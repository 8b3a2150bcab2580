//! The processor's Prometheus metrics.

use gallop_support::{exponential_buckets, MetricsRegistry};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

/// Every metric `gallop process` exports on `/metrics`.
#[derive(Clone, Debug)]
pub struct ProcessMetrics {
    registry: MetricsRegistry,
    /// Broker messages by outcome: `processed`, `redelivered` (at or below a position
    /// already folded in), `duplicate` (an id seen inside the dedup window).
    pub messages: IntCounterVec,
    /// Records by outcome: `counted`, `late`, `future`.
    pub events: IntCounterVec,
    /// Unusable records by reason.
    pub invalid: IntCounterVec,
    /// Flushes landed in the store.
    pub flushes: IntCounter,
    /// Rows written.
    pub flush_rows: IntCounter,
    /// Bytes written (uncompressed).
    pub flush_bytes: IntCounter,
    /// Time from a flush to its landed write, retries included.
    pub flush_duration: Histogram,
    /// Write attempts that failed and were retried.
    pub insert_retries: IntCounter,
    /// Rows and leaderboards held in memory since the last flush.
    pub live_keys: IntGauge,
    /// `processor.max_live_keys`: at this many live keys intake pauses (backpressure).
    pub live_keys_limit: IntGauge,
    /// Visits held open.
    pub sessions_open: IntGauge,
    /// Visits ended early at `processor.max_open_sessions`.
    pub sessions_evicted: IntCounter,
    /// 1 while the broker delivers, 0 while it is unreachable.
    pub broker_up: IntGauge,
    /// 1 while writes land, 0 while inserts are failing.
    pub store_up: IntGauge,
    /// Messages not yet delivered, all partitions.
    pub pending: IntGauge,
    /// Messages not yet delivered, per partition.
    pub lag: IntGaugeVec,
    /// Seconds behind the newest message, per partition: 0 when caught up, otherwise the
    /// wall clock minus the broker time of the newest message folded in.
    pub lag_seconds: IntGaugeVec,
    /// Newest event time seen, per partition (Unix seconds): late events are judged by it.
    pub watermark: IntGaugeVec,
    /// Wall clock minus the newest event time of the partition furthest behind.
    pub watermark_lag: IntGauge,
    /// Stored positions found outside the log and gone on from (accepted gaps), by kind.
    pub log_gaps: IntCounterVec,
    /// Positions skipped by accepted gaps, by kind.
    pub log_gap_positions: IntCounterVec,
    /// Message ids held in the dedup windows.
    pub dedup_ids: IntGauge,
    /// Ids dropped from a dedup window by its size bound while still inside its time.
    pub dedup_evicted: IntCounter,
    /// Partitions this processor runs now.
    pub partitions_owned: IntGauge,
    /// Partitions that moved to or from this processor, by reason: `claimed` (a free or
    /// handed-over partition), `took_over` (a partition whose previous owner's claim
    /// lapsed), `handed_over` (given up after its last flush, for balance), `lost` (its
    /// claim lapsed or was taken: nothing more written), `shutdown`.
    pub partition_handovers: IntCounterVec,
    /// Partitions no live processor holds, as this one last saw them; -1 where the broker
    /// does not tell (Tansu 0.6 describes no consumer group).
    pub partitions_unowned: IntGauge,
    /// `broker.partitions` (`gallop_partitions`): with the sum of `gallop_partitions_owned` over all processors,
    /// what Prometheus itself counts as unowned.
    pub partitions_total: IntGauge,
    /// Processors seen alive sharing the partitions, this one included.
    pub partition_members: IntGauge,
}

impl ProcessMetrics {
    /// Creates and registers every metric in a registry of its own.
    pub fn new() -> Self {
        let r = MetricsRegistry::new().with_process_metrics("processor");
        Self {
            messages: r.counter_vec(
                "gallop_messages_total",
                "Broker messages by outcome (processed, redelivered, duplicate)",
                &["outcome"],
            ),
            events: r.counter_vec("gallop_events_total", "Records by outcome (counted, late, future)", &["outcome"]),
            invalid: r.counter_vec("gallop_events_invalid_total", "Unusable records by reason", &["reason"]),
            flushes: r.counter("gallop_flushes_total", "Flushes written to ClickHouse"),
            flush_rows: r.counter("gallop_flush_rows_total", "Rows inserted into ClickHouse"),
            flush_bytes: r.counter("gallop_flush_bytes_total", "Uncompressed RowBinary bytes inserted"),
            flush_duration: r.histogram(
                "gallop_flush_duration_seconds",
                "Time from flush to a landed insert, retries included",
                exponential_buckets(0.005, 2.0, 14),
            ),
            insert_retries: r.counter("gallop_insert_retries_total", "Insert attempts that failed and were retried"),
            live_keys: r.gauge("gallop_live_keys", "Rows and leaderboards held in memory since the last flush"),
            live_keys_limit: r.gauge(
                "gallop_live_keys_limit",
                "processor.max_live_keys: at this many live keys the processor stops taking messages until a flush lands",
            ),
            sessions_open: r.gauge("gallop_sessions_open", "Visits (sessions) held open in memory"),
            sessions_evicted: r.counter(
                "gallop_sessions_evicted_total",
                "Visits ended early because processor.max_open_sessions were open; their next event starts a new visit",
            ),
            broker_up: r.gauge("gallop_broker_up", "1 while the broker is reachable, 0 while it is not"),
            store_up: r.gauge("gallop_clickhouse_up", "1 while ClickHouse inserts land, 0 while they are failing"),
            pending: r.gauge("gallop_consumer_pending_messages", "Messages not yet delivered, all owned partitions"),
            lag: r.gauge_vec(
                "gallop_consumer_lag_messages",
                "Messages not yet delivered, per partition",
                &["partition"],
            ),
            lag_seconds: r.gauge_vec(
                "gallop_consumer_lag_seconds",
                "Seconds behind the newest message, per partition: 0 when caught up, else now minus the broker \
                 time of the newest message processed",
                &["partition"],
            ),
            watermark: r.gauge_vec(
                "gallop_watermark_timestamp_seconds",
                "Newest event time seen, per partition (Unix seconds); events older than it minus \
                 time.allowed_lateness are late",
                &["partition"],
            ),
            watermark_lag: r.gauge(
                "gallop_watermark_lag_seconds",
                "Wall clock minus the newest event time, partition furthest behind",
            ),
            log_gaps: r.counter_vec(
                "gallop_log_gaps_total",
                "Stored positions found outside the broker's log and gone on from (consumer.accept_log_gaps)",
                &["kind"],
            ),
            log_gap_positions: r.counter_vec(
                "gallop_log_gap_positions_total",
                "Log positions skipped by accepted gaps",
                &["kind"],
            ),
            dedup_ids: r.gauge("gallop_dedup_window_ids", "Message ids held in the dedup windows"),
            dedup_evicted: r.counter(
                "gallop_dedup_window_evicted_total",
                "Message ids dropped from a dedup window by its size bound while still inside its time",
            ),
            partitions_owned: r.gauge("gallop_partitions_owned", "Partitions this processor runs now"),
            partition_handovers: r.counter_vec(
                "gallop_partition_handovers_total",
                "Partitions that moved to or from this processor, by reason (claimed, took_over, handed_over, lost, \
                 shutdown)",
                &["reason"],
            ),
            partitions_unowned: r.gauge(
                "gallop_partitions_unowned",
                "Partitions no live processor holds, as this processor last saw them (-1: the broker does not tell)",
            ),
            partitions_total: r.gauge("gallop_partitions", "Partitions of the events stream (broker.partitions)"),
            partition_members: r.gauge(
                "gallop_partition_members",
                "Processors seen alive sharing the partitions, this one included (-1: the broker does not tell)",
            ),
            registry: r,
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let metrics = ProcessMetrics::new();
        metrics.lag.with_label_values(&["3"]).set(5);
        metrics.lag_seconds.with_label_values(&["3"]).set(2);
        metrics.watermark.with_label_values(&["3"]).set(1_795_428_000);
        metrics.log_gaps.with_label_values(&["removed"]).inc();
        metrics.messages.with_label_values(&["processed"]).inc();
        let text = metrics.render();
        for line in [
            "gallop_consumer_lag_messages{partition=\"3\"} 5",
            "gallop_log_gaps_total{kind=\"removed\"} 1",
            "# TYPE gallop_insert_retries_total counter",
            "gallop_flushes_total 0",
            "gallop_dedup_window_ids 0",
            "gallop_partitions_owned 0",
            "gallop_partitions_unowned 0",
            "# TYPE gallop_consumer_lag_seconds gauge",
            "# TYPE gallop_watermark_timestamp_seconds gauge",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}

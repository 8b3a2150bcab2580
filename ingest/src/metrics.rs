//! The gateway's Prometheus metrics, registered in a registry of their own so several
//! gateways can live in one process (tests).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use gallop_support::{exponential_buckets, MetricsRegistry};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

/// The metrics of a listener of another protocol on the gateway (traqq's TCP protocol), on
/// the gateway's `/metrics` page.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// `gallop_<protocol>_connections`: connections open now.
    pub connections: IntGauge,
    /// `gallop_<protocol>_commands_total{command, outcome}`: lines answered.
    pub commands: IntCounterVec,
}

/// Every metric the gateway exports on `/metrics`.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: MetricsRegistry,
    /// The listeners' metrics by protocol, registered at the first listener of each.
    listeners: Arc<Mutex<BTreeMap<String, ListenerMetrics>>>,
    /// HTTP requests by route and status code.
    pub(crate) requests: IntCounterVec,
    /// HTTP request latency by route.
    pub(crate) request_duration: HistogramVec,
    /// Events acknowledged by the broker.
    pub(crate) events_accepted: IntCounter,
    /// Events rejected, by reason (`invalid`, `unknown_site`, `too_old`, …).
    pub(crate) events_rejected: IntCounterVec,
    /// Events dropped because a bot or crawler sent them.
    pub(crate) events_bots: IntCounter,
    /// Events dropped because the request was a prefetch or prerender.
    pub(crate) events_prefetch: IntCounter,
    /// Events dropped because an earlier event of the same request or input message had the
    /// same site and id (the same event, counted once).
    pub(crate) events_duplicate: IntCounter,
    /// Time from handing a message to the broker until its acknowledgement.
    pub(crate) publish_duration: Histogram,
    /// Broker messages awaiting acknowledgement.
    pub(crate) publishes_in_flight: IntGauge,
    /// Publish attempts retried after a retryable failure.
    pub(crate) publish_retries: IntCounter,
    /// Messages given up on, by error kind.
    pub(crate) publish_failures: IntCounterVec,
    /// Events per broker message.
    pub(crate) message_events: Histogram,
    /// Payload bytes of the broker messages acknowledged (uncompressed, as published).
    pub(crate) published_bytes: IntCounter,
    /// 1 while the broker is reachable (what `/ready` says), set when `/metrics` is read.
    pub(crate) broker_up: IntGauge,
    /// Input messages (topic ingestion) by outcome: `processed`, `retried` (publishing
    /// failed, tried again), `refused` (the broker refused its events: dead-lettered whole).
    pub(crate) input_messages: IntCounterVec,
    /// Records (or whole input messages) sent to the dead letters, by reason.
    pub(crate) dead_letters: IntCounterVec,
    /// Open client connections.
    pub(crate) connections: IntGauge,
    /// Connections past `ingest.server.max_connections`: shed (answered 503) or closed.
    pub(crate) connections_refused: IntCounterVec,
    /// Request-body bytes held by requests in flight.
    pub(crate) inflight_bytes: IntGauge,
    /// Bytes the User-Agent cache holds.
    pub(crate) user_agent_cache_bytes: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = MetricsRegistry::new().with_process_metrics("gateway");
        let latency = || exponential_buckets(0.000_1, 2.0, 18);
        let metrics = Self {
            requests: r.counter_vec(
                "gallop_http_requests_total",
                "HTTP requests by route and status code",
                &["route", "status"],
            ),
            request_duration: r.histogram_vec(
                "gallop_http_request_duration_seconds",
                "HTTP request latency by route",
                &["route"],
                latency(),
            ),
            events_accepted: r.counter("gallop_events_accepted_total", "Events acknowledged by the broker"),
            events_rejected: r.counter_vec("gallop_events_rejected_total", "Events rejected, by reason", &["reason"]),
            events_bots: r.counter("gallop_events_bots_total", "Events dropped because a bot sent them"),
            events_prefetch: r
                .counter("gallop_events_prefetch_total", "Events dropped from prefetch or prerender requests"),
            events_duplicate: r.counter(
                "gallop_events_duplicate_total",
                "Events counted once because an earlier event of the same request or input message had the same site \
                 and id",
            ),
            publish_duration: r.histogram(
                "gallop_publish_duration_seconds",
                "Broker publish latency until acknowledgement",
                latency(),
            ),
            publishes_in_flight: r.gauge("gallop_publishes_in_flight", "Broker messages awaiting acknowledgement"),
            publish_retries: r.counter("gallop_publish_retries_total", "Publish attempts retried"),
            publish_failures: r.counter_vec(
                "gallop_publish_failures_total",
                "Broker messages given up on, by error kind",
                &["kind"],
            ),
            message_events: r.histogram(
                "gallop_broker_message_events",
                "Events per broker message",
                exponential_buckets(1.0, 2.0, 12),
            ),
            published_bytes: r.counter(
                "gallop_published_bytes_total",
                "Payload bytes of the broker messages acknowledged, uncompressed",
            ),
            broker_up: r.gauge("gallop_broker_up", "1 while the broker is reachable, 0 while it is not"),
            input_messages: r.counter_vec(
                "gallop_input_messages_total",
                "Input topic messages by outcome (processed: acknowledged after their events; retried: publishing failed; \
                 refused: the broker refused its events, dead-lettered whole)",
                &["outcome"],
            ),
            dead_letters: r.counter_vec(
                "gallop_dead_letters_total",
                "Input records (or whole messages) sent to the dead letters, by reason",
                &["reason"],
            ),
            connections: r.gauge("gallop_http_connections", "Open client connections"),
            connections_refused: r.counter_vec(
                "gallop_http_connections_refused_total",
                "Connections past ingest.server.max_connections (shed: answered 503; closed: closed at once; \
                 accept_error: the system refused, e.g. out of file descriptors)",
                &["reason"],
            ),
            inflight_bytes: r.gauge("gallop_http_inflight_bytes", "Request-body bytes held by requests in flight"),
            user_agent_cache_bytes: r.gauge("gallop_user_agent_cache_bytes", "Bytes the User-Agent cache holds"),
            registry: r,
            listeners: Arc::default(),
        };
        // Every reason exists from the start (at 0), so rates and alerts see a series.
        for reason in ["shed", "closed", "accept_error"] {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        metrics
    }

    /// The metrics of `protocol`'s listener (a name of lower-case letters: `traqq`),
    /// registered on this page by the first call and shared by every later one (a second
    /// listener on the same gateway counts into the same metrics).
    pub fn listener(&self, protocol: &str) -> ListenerMetrics {
        // Inserting one entry cannot leave the map half-written if a holder panicked.
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let registry = &self.registry;
        listeners
            .entry(protocol.to_owned())
            .or_insert_with(|| ListenerMetrics {
                connections: registry
                    .gauge(&format!("gallop_{protocol}_connections"), &format!("Open {protocol} protocol connections")),
                commands: registry.counter_vec(
                    &format!("gallop_{protocol}_commands_total"),
                    &format!("{protocol} protocol lines answered, by command and outcome"),
                    &["command", "outcome"],
                ),
            })
            .clone()
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protocols_listeners_share_its_metrics() {
        let metrics = Metrics::new();
        let first = metrics.listener("traqq");
        let second = metrics.clone().listener("traqq");
        first.connections.inc();
        second.connections.inc();
        second.commands.with_label_values(&["record", "ok"]).inc();
        let text = metrics.render();
        assert!(text.contains("gallop_traqq_connections 2"), "{text}");
        assert!(text.contains("gallop_traqq_commands_total{command=\"record\",outcome=\"ok\"} 1"), "{text}");
        assert_eq!(text.matches("# TYPE gallop_traqq_connections gauge").count(), 1, "{text}");
    }

    #[test]
    fn renders_every_family() {
        let metrics = Metrics::new();
        metrics.requests.with_label_values(&["/api/event", "202"]).inc();
        metrics.events_rejected.with_label_values(&["invalid"]).inc();
        metrics.publish_failures.with_label_values(&["timeout"]).inc();
        metrics.request_duration.with_label_values(&["/api/event"]).observe(0.001);
        let text = metrics.render();
        for name in [
            "gallop_http_requests_total{route=\"/api/event\",status=\"202\"} 1",
            "gallop_events_rejected_total{reason=\"invalid\"} 1",
            "gallop_events_accepted_total 0",
            "gallop_events_bots_total 0",
            "gallop_publish_duration_seconds_bucket",
            "gallop_publishes_in_flight 0",
            "gallop_http_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}

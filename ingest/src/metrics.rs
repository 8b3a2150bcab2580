//! The gateway's Prometheus metrics, registered in a registry of their own so several
//! gateways can live in one process (tests).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports on `/metrics`.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
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
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("gallop_http_requests_total", "HTTP requests by route and status code"),
            &["route", "status"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new("gallop_http_request_duration_seconds", "HTTP request latency by route")
                .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 18).unwrap_or_default()),
            &["route"],
        );
        let events_accepted = IntCounter::new("gallop_events_accepted_total", "Events acknowledged by the broker");
        let events_rejected =
            IntCounterVec::new(Opts::new("gallop_events_rejected_total", "Events rejected, by reason"), &["reason"]);
        let events_bots = IntCounter::new("gallop_events_bots_total", "Events dropped because a bot sent them");
        let events_prefetch =
            IntCounter::new("gallop_events_prefetch_total", "Events dropped from prefetch or prerender requests");
        let publish_duration = Histogram::with_opts(
            HistogramOpts::new("gallop_publish_duration_seconds", "Broker publish latency until acknowledgement")
                .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 18).unwrap_or_default()),
        );
        let publishes_in_flight =
            IntGauge::new("gallop_publishes_in_flight", "Broker messages awaiting acknowledgement");
        let publish_retries = IntCounter::new("gallop_publish_retries_total", "Publish attempts retried");
        let publish_failures = IntCounterVec::new(
            Opts::new("gallop_publish_failures_total", "Broker messages given up on, by error kind"),
            &["kind"],
        );
        let message_events = Histogram::with_opts(
            HistogramOpts::new("gallop_broker_message_events", "Events per broker message")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 12).unwrap_or_default()),
        );
        let metrics = Self {
            registry,
            requests: requests.unwrap_or_else(|e| unreachable_metric(e)),
            request_duration: request_duration.unwrap_or_else(|e| unreachable_metric(e)),
            events_accepted: events_accepted.unwrap_or_else(|e| unreachable_metric(e)),
            events_rejected: events_rejected.unwrap_or_else(|e| unreachable_metric(e)),
            events_bots: events_bots.unwrap_or_else(|e| unreachable_metric(e)),
            events_prefetch: events_prefetch.unwrap_or_else(|e| unreachable_metric(e)),
            publish_duration: publish_duration.unwrap_or_else(|e| unreachable_metric(e)),
            publishes_in_flight: publishes_in_flight.unwrap_or_else(|e| unreachable_metric(e)),
            publish_retries: publish_retries.unwrap_or_else(|e| unreachable_metric(e)),
            publish_failures: publish_failures.unwrap_or_else(|e| unreachable_metric(e)),
            message_events: message_events.unwrap_or_else(|e| unreachable_metric(e)),
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 11] = [
            Box::new(self.requests.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.events_accepted.clone()),
            Box::new(self.events_rejected.clone()),
            Box::new(self.events_bots.clone()),
            Box::new(self.events_prefetch.clone()),
            Box::new(self.publish_duration.clone()),
            Box::new(self.publishes_in_flight.clone()),
            Box::new(self.publish_retries.clone()),
            Box::new(self.publish_failures.clone()),
            Box::new(self.message_events.clone()),
        ];
        for collector in collectors {
            if let Err(e) = self.registry.register(collector) {
                unreachable_metric(e)
            }
        }
    }

    /// The registry, to add metrics of other components to the same `/metrics` page.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec only fails on invalid metric names, which
        // are constants here.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric names and labels above are constants that satisfy Prometheus' rules, and each is
/// registered once in a fresh registry, so construction and registration cannot fail.
#[allow(clippy::panic)]
fn unreachable_metric<T>(error: prometheus::Error) -> T {
    panic!("metric definition is invalid: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

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

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
        let latency = || prometheus::exponential_buckets(0.000_1, 2.0, 18).unwrap_or_default();
        let r = &registry;
        Self {
            requests: register(
                r,
                IntCounterVec::new(
                    Opts::new("gallop_http_requests_total", "HTTP requests by route and status code"),
                    &["route", "status"],
                ),
            ),
            request_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new("gallop_http_request_duration_seconds", "HTTP request latency by route")
                        .buckets(latency()),
                    &["route"],
                ),
            ),
            events_accepted: register(
                r,
                IntCounter::new("gallop_events_accepted_total", "Events acknowledged by the broker"),
            ),
            events_rejected: register(
                r,
                IntCounterVec::new(
                    Opts::new("gallop_events_rejected_total", "Events rejected, by reason"),
                    &["reason"],
                ),
            ),
            events_bots: register(
                r,
                IntCounter::new("gallop_events_bots_total", "Events dropped because a bot sent them"),
            ),
            events_prefetch: register(
                r,
                IntCounter::new("gallop_events_prefetch_total", "Events dropped from prefetch or prerender requests"),
            ),
            publish_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gallop_publish_duration_seconds",
                        "Broker publish latency until acknowledgement",
                    )
                    .buckets(latency()),
                ),
            ),
            publishes_in_flight: register(
                r,
                IntGauge::new("gallop_publishes_in_flight", "Broker messages awaiting acknowledgement"),
            ),
            publish_retries: register(r, IntCounter::new("gallop_publish_retries_total", "Publish attempts retried")),
            publish_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new("gallop_publish_failures_total", "Broker messages given up on, by error kind"),
                    &["kind"],
                ),
            ),
            message_events: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("gallop_broker_message_events", "Events per broker message")
                        .buckets(prometheus::exponential_buckets(1.0, 2.0, 12).unwrap_or_default()),
                ),
            ),
            registry,
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

/// Registers a freshly built metric and returns it.
///
/// Metric names, help texts and labels here are constants that satisfy Prometheus' rules,
/// and each is registered once in a fresh registry, so neither step can fail at run time;
/// a failure is a programming error that the unit test below catches.
#[allow(clippy::panic)]
fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<T>) -> T {
    let metric = metric.unwrap_or_else(|e| panic!("invalid metric definition: {e}"));
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        panic!("metric registered twice: {e}");
    }
    metric
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

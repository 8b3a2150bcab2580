//! One way to define Prometheus metrics: built and registered in a registry of the
//! component's own (so several components can live in one process, as in tests and
//! `gallop run`), rendered in the text format for `/metrics`.

use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// A Prometheus registry with constructors that register as they build.
///
/// Metric names, help texts, labels and buckets are constants in Gallop's code, so building
/// or registering one can only fail on a programming error (a bad name, a name used twice);
/// the constructors panic then, and every component's unit tests build all its metrics.
#[derive(Clone, Debug, Default)]
pub struct MetricsRegistry {
    registry: Registry,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The underlying registry, to register collectors built elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A counter.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help))
    }

    /// A counter with labels.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels))
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help))
    }

    /// A gauge with labels.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    /// A histogram with the given bucket bounds.
    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)))
    }

    /// A histogram with labels.
    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
        self.register(HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels))
    }

    /// Adds what every Gallop process exports besides its own metrics: the standard process
    /// metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
    /// `process_open_fds`, `process_max_fds`, `process_threads`, `process_start_time_seconds`;
    /// Linux only, read from `/proc`) and `gallop_build_info{version, component}`, always 1,
    /// so dashboards can tell versions apart during a rolling upgrade.
    pub fn with_process_metrics(self, component: &str) -> Self {
        #[cfg(target_os = "linux")]
        if let Err(e) = self.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
            panic!("process metrics registered twice: {e}");
        }
        self.gauge_vec(
            "gallop_build_info",
            "Build of the running process; the value is always 1",
            &["version", "component"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION"), component])
        .set(1);
        self
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec only fails on invalid metric names, which
        // the constructors above already refused.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[allow(clippy::panic)]
    fn register<T: Collector + Clone + 'static>(&self, metric: prometheus::Result<T>) -> T {
        let metric = metric.unwrap_or_else(|e| panic!("invalid metric definition: {e}"));
        if let Err(e) = self.registry.register(Box::new(metric.clone())) {
            panic!("metric registered twice: {e}");
        }
        metric
    }
}

/// `count` buckets from `start`, each `factor` times the one before (for latencies and sizes).
pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders_each_kind() {
        let metrics = MetricsRegistry::new();
        metrics.counter("a_total", "A").inc();
        metrics.counter_vec("b_total", "B", &["kind"]).with_label_values(&["x"]).inc_by(2);
        metrics.gauge("c", "C").set(3);
        metrics.gauge_vec("d", "D", &["partition"]).with_label_values(&["7"]).set(4);
        metrics.histogram("e_seconds", "E", exponential_buckets(0.1, 2.0, 3)).observe(0.15);
        metrics.histogram_vec("f_seconds", "F", &["route"], vec![1.0]).with_label_values(&["/"]).observe(0.5);
        let text = metrics.render();
        for line in [
            "a_total 1",
            "b_total{kind=\"x\"} 2",
            "c 3",
            "d{partition=\"7\"} 4",
            "e_seconds_bucket{le=\"0.2\"} 1",
            "f_seconds_count{route=\"/\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn process_metrics_and_build_info() {
        let text = MetricsRegistry::new().with_process_metrics("gateway").render();
        let build = format!("gallop_build_info{{component=\"gateway\",version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&build), "missing {build} in\n{text}");
        #[cfg(target_os = "linux")]
        for family in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(family).and_then(|rest| rest.trim().parse::<f64>().ok()))
                .unwrap_or_else(|| panic!("no sample of {family} in\n{text}"));
            if family != "process_cpu_seconds_total" {
                assert!(value > 0.0, "{family} = {value}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_name_used_twice_is_a_programming_error() {
        let metrics = MetricsRegistry::new();
        metrics.counter("same_total", "x");
        metrics.counter("same_total", "y");
    }
}

//! Small pieces every Gallop process shares.
//!
//! [`Backoff`] is the one retry policy: exponential waits with jitter, used by every loop
//! that retries a broker, ClickHouse or the salt store. [`MetricsRegistry`] builds,
//! registers and renders the Prometheus metrics of the gateway and the processor alike.
//! [`ApiKeys`] checks presented API keys against configured hashes in constant time.
#![warn(missing_docs)]

mod api_keys;
mod backoff;
mod metrics;

pub use api_keys::{hash_key, ApiKeys};
pub use backoff::Backoff;
pub use metrics::{exponential_buckets, MetricsRegistry};

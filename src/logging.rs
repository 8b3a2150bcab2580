//! Log setup: `tracing` to stderr, human-readable or JSON lines.

use gallop_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins over `log.filter`.
pub(crate) fn init(config: &LogConfig, force_json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if force_json || config.format == LogFormat::Json {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}

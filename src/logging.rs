//! Log setup: `tracing` to stderr, human-readable or JSON lines; colours only when stderr
//! is a terminal (and `NO_COLOR` is unset), so redirected logs hold no ANSI escapes.

use std::io::IsTerminal as _;

use gallop_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins over `log.filter`.
pub(crate) fn init(config: &LogConfig, force_json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if force_json || config.format == LogFormat::Json {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}

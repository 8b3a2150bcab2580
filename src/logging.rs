//! Log setup: `tracing` to stderr, human-readable or JSON lines; colours only when stderr
//! is a terminal (and `NO_COLOR` is unset), so redirected logs hold no ANSI escapes.

use std::io::IsTerminal as _;

use gallop_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Libraries whose most verbose levels print what must never reach a log: message
/// payloads (async-nats's trace level prints every message, the day's salt included) and
/// raw request heads. They are capped at `debug`, whatever the filter asks.
const CAPPED_AT_DEBUG: &[&str] = &["async_nats", "hyper", "hyper_util", "rdkafka", "h2", "reqwest"];

/// Installs the global subscriber. `RUST_LOG` wins over `log.filter`.
pub(crate) fn init(config: &LogConfig, force_json: bool) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    // Only a filter that lets trace through anywhere needs the cap (adding it otherwise
    // would raise those libraries to debug).
    if filter.max_level_hint().is_none_or(|level| level >= tracing_subscriber::filter::LevelFilter::TRACE) {
        for target in CAPPED_AT_DEBUG {
            if let Ok(directive) = format!("{target}=debug").parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if force_json || config.format == LogFormat::Json {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}

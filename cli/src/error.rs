//! [`CliError`]: why a command-line tool stopped, in the words of the flag at fault.

use gallop_processor::ProcessorError;
use gallop_sink::SinkError;

/// Why `gallop query`, `export` or `publish` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A date or time as typed is not one (the flag, what was typed, and why).
    #[error("{flag} {text:?}: {reason}")]
    BadTime {
        /// `--from` or `--to`.
        flag: &'static str,
        /// What was typed.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Neither `--from`/`--to` nor `--realtime` was given.
    #[error("--from and --to are required (or --realtime)")]
    NoRange,
    /// `--from` is not before `--to`.
    #[error("--from {from:?} is not before --to {to:?} (a whole --to date is included)")]
    EmptyRange {
        /// `--from` as typed.
        from: String,
        /// `--to` as typed.
        to: String,
    },
    /// The range cannot be read (it does not start and end on whole minutes).
    #[error("--from {from:?} --to {to:?}: {source}")]
    Range {
        /// `--from` as typed.
        from: String,
        /// `--to` as typed.
        to: String,
        /// Why the sink refuses it.
        source: Box<SinkError>,
    },
    /// ClickHouse does not know the time zone.
    #[error("--tz {0:?} is not a time zone this ClickHouse knows; use an IANA name such as Europe/Berlin or UTC")]
    UnknownZone(String),
    /// A dimension neither configured nor stored.
    #[error("{flag} {dimension:?} is not a dimension Gallop keeps; known: {known}")]
    UnknownDimension {
        /// `--by` or `--top`.
        flag: &'static str,
        /// What was asked for.
        dimension: String,
        /// The dimensions there are, comma-separated.
        known: String,
    },
    /// The processor's rollups in the config are invalid.
    #[error("the processor config: {0}")]
    Config(#[from] ProcessorError),
    /// ClickHouse failed or refused.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// An answer could not be written as JSON.
    #[error("writing the answer as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Reading the input or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// Not every line of a `gallop publish` input was published.
    #[error("{rejected} lines rejected, {failed} records not acknowledged by the broker")]
    NotAllPublished {
        /// Lines that are not JSON objects.
        rejected: u64,
        /// Records whose message the broker did not acknowledge.
        failed: u64,
    },
}

impl CliError {
    /// An I/O error of `what`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

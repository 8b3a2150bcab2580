//! Errors from loading and validating configuration; each names the key at fault.

use std::path::PathBuf;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named explicitly does not exist or cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The file that was asked for.
        path: PathBuf,
        /// What went wrong reading it.
        reason: String,
    },
    /// A key has the wrong type, an unknown name or a value that cannot be parsed.
    #[error("config: {0}")]
    Parse(String),
    /// Values parsed, but some break a rule; every broken rule is listed.
    #[error("config is invalid:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One broken rule: the dotted key and what was expected of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path such as `ingest.batching.max_events`.
    pub key: String,
    /// What the value must be.
    pub expected: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.expected)
    }
}

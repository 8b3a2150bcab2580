//! Errors of the processor core.

/// Why the processor could not be built or refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    /// A dimension spec in the configuration is not valid.
    #[error("{key}: dimension {spec:?}: {reason}")]
    Dimension {
        /// Config key of the spec, e.g. `processor.rollups[2].dimension`.
        key: String,
        /// The spec as written.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A leaderboard's k is not one ClickHouse's `topK` accepts.
    #[error("{key}: {reason}")]
    Leaderboard {
        /// Config key, e.g. `processor.leaderboards[0].k`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The state holds `processor.max_live_keys` keys: flush before adding more.
    #[error(
        "processor state is full: {live_keys} live keys, bound {max_live_keys} (processor.max_live_keys); flush first"
    )]
    Full {
        /// Keys now live.
        live_keys: usize,
        /// The configured bound.
        max_live_keys: usize,
    },
}

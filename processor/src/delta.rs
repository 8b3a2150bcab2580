//! What a flush hands to the sink: plain rows of ClickHouse-mergeable partial states.

use std::collections::BTreeMap;

use crate::{
    changed::ChangedVisits,
    sketch::{TopK, UniqHll12},
};

/// The aggregates of one (site, bucket, dimension, value) since the last flush.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    /// Site.
    pub site: String,
    /// Start of the one-minute bucket, seconds since the Unix epoch (UTC).
    pub bucket: i64,
    /// Dimension name, e.g. `path`, `name~props.plan`, `total`.
    pub dimension: String,
    /// Dimension value, compound parts joined by `~`; `""` for `total`.
    pub value: String,
    /// Events counted (`sum(UInt64)` state).
    pub events: u64,
    /// Visitors (`uniqHLL12(UInt64)` state); empty when the rollup keeps no visitors.
    pub visitors: UniqHll12,
    /// Sum of event values (`sum(Float64)` state).
    pub value_sum: f64,
    /// Events that carried a value (`sum(UInt64)` state).
    pub value_count: u64,
}

/// The top-k sketch of one (site, bucket, dimension) since the last flush.
#[derive(Debug, Clone)]
pub struct LeaderboardRow {
    /// Site.
    pub site: String,
    /// Start of the one-minute bucket, seconds since the Unix epoch (UTC).
    pub bucket: i64,
    /// Dimension name, e.g. `referrer`, `props.plan`.
    pub dimension: String,
    /// `topK(k)` state over the dimension's values, one insert per event.
    pub top: TopK,
}

/// Everything aggregated since the previous flush.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Breakdown rows.
    pub rows: Vec<RollupRow>,
    /// Leaderboard sketches.
    pub leaderboards: Vec<LeaderboardRow>,
    /// Highest message position (stream sequence / offset) folded in, per partition, as
    /// the processor saw it. The pipeline runtime writes position marks of its own (with
    /// epochs, caught-up idle partitions and skipped duplicates, which the processor does
    /// not see); this is for callers of the core alone (tests, benchmarks).
    pub positions: BTreeMap<u32, u64>,
    /// Visits that changed since the previous flush (ended ones as tombstones); stored
    /// with the rows so a restart goes on with them ([`crate::OpenSessions`]).
    pub sessions: ChangedVisits,
    /// Event-time watermark of every partition seen, ms; stored with the rows.
    pub watermarks: BTreeMap<u32, i64>,
}

impl Delta {
    /// Whether the delta holds no aggregates.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.leaderboards.is_empty()
    }
}

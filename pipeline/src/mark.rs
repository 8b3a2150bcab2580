//! [`Mark`]: where a partition stands in the store, written with the rows it accounts for.

/// Where one partition stands in the store: every message of the partition up to
/// `position` in incarnation `epoch` of the log is stored.
///
/// The epoch grows when an operator lets a processor go on with a log that was deleted and
/// recreated (its positions start again at 1), so the newest marker is still the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mark {
    /// Incarnation of the log, from 0.
    pub epoch: u32,
    /// Position of the last message accounted for (stream sequence, Kafka offset + 1).
    pub position: u64,
    /// The broker's timestamp of that message, ms since the Unix epoch (0: unknown); where
    /// the runtime keeps a dedup window, it rebuilds the window from there after a restart.
    pub time_ms: i64,
}

impl Mark {
    /// Position `position` of the first incarnation, time unknown.
    pub fn at(position: u64) -> Self {
        Self { epoch: 0, position, time_ms: 0 }
    }
}

/// Who wrote a mark and what it continues, stored with it so that an operator (and a test)
/// can show that no two owners' writes of one partition interleave: the marks of a
/// partition account for disjoint ranges `(after, position]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The member that wrote it (`consumer.member`).
    pub member: std::sync::Arc<str>,
    /// The generation of the member's claim on the partition (NATS: the lease's revision
    /// when claimed; Kafka: when the group assigned it).
    pub generation: u64,
    /// The position of the partition's previous mark, which this one continues.
    pub after: u64,
}

//! The stored form of visits: [`SessionState`] (an open visit as the sink stores it and a
//! restart reads it back), its [`EngagedPage`]s, and [`OpenSessions`], what a processor
//! needs to go on after a restart.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// One page of a visit that sent engagement: its deepest scroll so far and the bucket its
/// engagement rows go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngagedPage {
    /// Page path.
    pub path: CompactString,
    /// Deepest scroll reported so far, percent.
    pub scroll_depth: u8,
    /// Minute bucket (minutes since the epoch) of its first engagement event.
    pub bucket: u32,
}

/// An open visit, as the processor keeps it and the sink stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// Partition whose events make up the visit.
    pub partition: u32,
    /// Site.
    pub site: CompactString,
    /// Visitor id.
    pub visitor: u64,
    /// Grows with every change; with `last_ts` it orders the stored versions of a visit.
    pub seq: u64,
    /// Minute bucket (minutes since the epoch) the visit started in; its rows live there.
    pub bucket: u32,
    /// Earliest event time, ms.
    pub first_ts: i64,
    /// Latest event time, ms.
    pub last_ts: i64,
    /// Interactive events so far.
    pub interactive: u32,
    /// Page of the first event.
    pub entry_page: CompactString,
    /// Page of the latest pageview (of the first event until there is one).
    pub exit_page: CompactString,
    /// Event time of `exit_page`'s event, ms.
    pub exit_ts: i64,
    /// Source of the first event (empty unless `processor.session_breakdowns` has `source`).
    pub source: CompactString,
    /// Country of the first event (empty unless `processor.session_breakdowns` has `country`).
    pub country: CompactString,
    /// Device of the first event (empty unless `processor.session_breakdowns` has `device`).
    pub device: CompactString,
    /// Browser of the first event (empty unless `processor.session_breakdowns` has `browser`).
    pub browser: CompactString,
    /// Operating system of the first event (empty unless `processor.session_breakdowns` has
    /// `os`).
    pub os: CompactString,
    /// Pages with engagement.
    pub pages: Vec<EngagedPage>,
    /// A tombstone: the visit was ended early to make room (`processor.max_open_sessions`).
    pub ended: bool,
}

impl SessionState {
    /// Which stored version of the same visit is newer.
    pub fn version(&self) -> (i64, u64) {
        (self.last_ts, self.seq)
    }
}

/// What a processor needs to go on after a restart: each partition's watermark and the
/// newest stored state of every visit of those partitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenSessions {
    /// Event-time watermark per partition, ms.
    pub watermarks: BTreeMap<u32, i64>,
    /// Stored visit states (any versions: the newest per visit is kept).
    pub sessions: Vec<SessionState>,
}

//! Gallop's pure aggregation core: turns normalized events into per-minute partial
//! aggregates that ClickHouse can merge. No I/O lives here: brokers feed it, a sink
//! drains it, a clock is passed in.
//!
//! [`Processor`] keeps, per (site, one-minute bucket, dimension, value), an event count,
//! a value sum and count and a visitor HyperLogLog, and per (site, bucket, dimension) a
//! top-k leaderboard; [`Processor::flush`] hands them out as a [`Delta`] of
//! ClickHouse-compatible states ([`sketch`]) and forgets them.
#![warn(missing_docs)]

mod changed;
mod delta;
mod dimension;
mod error;
mod intern;
mod open_visits;
mod processor;
mod rules;
mod same_bytes;
mod session;
pub mod sketch;
mod stored;

pub use changed::{ChangedPage, ChangedVisit, ChangedVisits};
pub use delta::{Delta, LeaderboardRow, RollupRow};
pub use error::ProcessorError;
pub use processor::{InvalidRecord, MessageReport, Outcome, Processor, Stats};
pub use rules::dimensions;
pub use stored::{EngagedPage, OpenSessions, SessionState};

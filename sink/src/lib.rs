//! Gallop's ClickHouse sink.
//!
//! [`ClickHouse`] connects, detects the server version ([`ServerVersion`], [`Features`]),
//! creates or upgrades the schema ([`Schema`], versioned idempotent migrations), checks it,
//! and reads back the stored stream positions. [`Writer`] turns each processor
//! [`Delta`](gallop_processor::Delta) into one atomic RowBinary insert — minute, hour and
//! day rows, leaderboards and the position markers together ([`encode_flush`]) — retried
//! with backoff until it lands, never twice; [`ClickHouseStore`] is that writer as the
//! pipeline runtime's `Store`. [`Reader`] answers the questions `gallop query` and
//! dashboards ask.
#![warn(missing_docs)]

mod client;
mod encode;
mod error;
mod reader;
mod schema;
mod store;
mod version;
mod visits;
mod writer;

pub use client::{ClickHouse, MigrationReport};
pub use encode::{
    encode_flush, marker_value, parse_marker, parse_marker_claim, parse_session_value, parse_watermark_value,
    session_dimension, watermark_dimension, EncodedFlush, FlushContext, Retention,
};
pub use error::SinkError;
pub use reader::{Breakdown, BreakdownRow, DimensionRow, ExportRow, Headline, Leader, Reader, TimeRange};
pub use schema::{
    Granularity, Kind, Migration, Schema, AGGREGATES_TABLE, LOCAL_AGGREGATES_TABLE, MAX_LEADERBOARD_K, MIGRATIONS_TABLE,
};
pub use store::ClickHouseStore;
pub use version::{Features, ServerVersion};
pub use writer::{WriteReport, Writer, WriterStatus};

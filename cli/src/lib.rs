//! What Gallop's command-line tools do, apart from wiring: the binary parses its arguments
//! into the [`clap::Args`] types here, connects what they need and calls these functions,
//! which write to the output they are given.
//!
//! - [`query`]: a site's headline, a breakdown and a leaderboard for a range of local time,
//!   as a table, JSON or CSV ([`QueryArgs`]); [`export`]: every rollup row as CSV or NDJSON,
//!   a file per granularity ([`ExportArgs`]). Dates and times are checked against the
//!   calendar before ClickHouse is asked, dimensions against the config and what is stored,
//!   and control characters in stored values are escaped.
//! - [`publish`]: NDJSON lines into the input subject or topic through any
//!   [`InputPublisher`](gallop_broker::InputPublisher), many messages in flight
//!   ([`PublishArgs`], [`PublishSummary`]).
#![warn(missing_docs)]

mod calendar;
mod error;
mod export;
mod publish;
mod query;
mod render;

pub use error::CliError;
pub use export::{export, ExportArgs, ExportFormat};
pub use publish::{default_subject, publish, PublishArgs, PublishSummary};
pub use query::{query, Format, QueryArgs};

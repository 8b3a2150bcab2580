//! Gallop's pure aggregation core: turns normalized events into per-bucket rollup state
//! that ClickHouse can merge. No I/O lives here.
#![warn(missing_docs)]

pub mod sketch;

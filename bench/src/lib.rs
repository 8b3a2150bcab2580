//! Gallop's load generators and side-by-side benchmarks.
//!
//! - [`synth`]: a deterministic synthetic event stream and its broker-message encoding;
//! - [`traqq_side`]: the same events through `traqq` 0.2.0, configured for the metrics of
//!   Gallop's default rollups;
//! - [`decode`]: decoding broker messages (NDJSON of `EventRecord`) with several JSON decoders.
//!
//! `examples/compare.rs` runs all of them and prints events per second.
#![warn(missing_docs)]

pub mod decode;
pub mod synth;
pub mod traqq_side;

mod error;

pub use error::BenchError;

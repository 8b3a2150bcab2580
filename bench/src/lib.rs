//! Gallop's load generators and side-by-side benchmarks.
//!
//! - [`synth`]: a deterministic synthetic event stream and its broker-message encoding;
//! - [`traqq_side`]: the same events through `traqq` 0.2.0, configured for the metrics of
//!   Gallop's default rollups;
//! - [`decode`]: decoding broker messages (NDJSON of `EventRecord`) with several JSON decoders;
//! - [`pipeline`]: `gallop bench pipeline`, the whole pipeline end to end (the `pipeline`
//!   feature, which the `gallop` binary turns on).
//!
//! The comparisons (`traqq_side`, `decode`) need the `compare` feature (on by default);
//! the `gallop-bench` binary (`gallop-bench process`) and `examples/compare.rs` run them.
//! The `gallop` binary uses `synth` through `pipeline`.
#![warn(missing_docs)]

#[cfg(feature = "compare")]
pub mod decode;
#[cfg(feature = "pipeline")]
pub mod pipeline;
pub mod synth;
#[cfg(feature = "compare")]
pub mod traqq_side;

#[cfg(feature = "compare")]
mod error;

#[cfg(feature = "compare")]
pub use error::BenchError;

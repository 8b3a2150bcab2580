//! Gallop's load generators and side-by-side benchmarks.
#![warn(missing_docs)]

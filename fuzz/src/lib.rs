//! The checks behind Gallop's fuzz targets, one module per target, each a `check(data)` that
//! panics on a finding.
//!
//! Two drivers run them: `cargo fuzz` (nightly, libFuzzer; `fuzz_targets/`, built with the
//! `libfuzzer` feature; `scripts/fuzz.sh run` explores with it) and this crate's own test
//! (`tests/it`, stable, part of the test suite), which replays every committed corpus input
//! and every reproducer of a fixed finding (`regressions/`) through the same checks.
#![warn(missing_docs)]

mod body;

pub mod batch_body;
pub mod block_message;
pub mod broker_message;
pub mod plausible_body;
pub mod sketch_state;

/// A target's check: panics on a finding.
pub type Check = fn(&[u8]);

/// Every target: its name (the folder of its corpus and reproducers) and its check.
pub const TARGETS: [(&str, Check); 5] = [
    ("plausible_body", plausible_body::check),
    ("batch_body", batch_body::check),
    ("broker_message", broker_message::check),
    ("block_message", block_message::check),
    ("sketch_state", sketch_state::check),
];

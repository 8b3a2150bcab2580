//! ClickHouse-compatible aggregate states, in pure Rust.
//!
//! Each type here builds the same state ClickHouse's aggregate function builds from the same
//! inputs, and reads and writes it in ClickHouse's binary form: the bytes of an
//! `AggregateFunction(..)` value in RowBinary (no length prefix). Partial states written by
//! Gallop therefore merge inside ClickHouse (`uniqHLL12Merge`, `topKMerge`, `sumMerge`) with
//! each other and with states built in SQL.
//!
//! | type | ClickHouse column | compatibility |
//! |---|---|---|
//! | [`UniqHll12`] | `AggregateFunction(uniqHLL12, UInt64)` (or `String`) | byte-identical, estimate identical |
//! | [`TopK`] | `AggregateFunction(topK(k), String)` | byte-identical for ordered inserts; see [`TopK`] |
//! | [`SumU64`] | `AggregateFunction(sum, UInt64)` | byte-identical |
//! | [`SumF64`] | `AggregateFunction(sum, Float64)` | byte-identical for the same addition order |
//!
//! The reference is ClickHouse 18.16.1 (the Debian package), checked by the crate's
//! integration tests against a live server. No I/O happens here.

mod hash;
mod hll;
mod state_bytes;
mod sum;
mod topk;

pub use hash::{city_hash64, int_hash32, int_hash64};
pub use hll::UniqHll12;
pub use sum::{SumF64, SumU64};
pub use topk::{TopK, TopKItem};

/// Why a sketch state could not be read or a sketch not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    /// The state ended before a field was complete.
    #[error("{what}: truncated at byte {offset}: needed {needed} more bytes, {available} left")]
    Truncated {
        /// Which state was being read.
        what: &'static str,
        /// Offset of the incomplete field.
        offset: usize,
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Bytes remained after a complete state.
    #[error("{what}: {extra} unexpected bytes after the state, starting at byte {offset}")]
    TrailingBytes {
        /// Which state was being read.
        what: &'static str,
        /// Offset of the first extra byte.
        offset: usize,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A `VarUInt` ran past ClickHouse's 9 bytes.
    #[error("{what}: VarUInt at byte {offset} is longer than ClickHouse's 9 bytes")]
    VarUIntTooLong {
        /// Which state was being read.
        what: &'static str,
        /// Offset where the integer started.
        offset: usize,
    },
    /// The first byte of a `uniqHLL12` state was neither 0 (small set) nor 1 (registers).
    #[error("uniqHLL12 state: form byte is {form:#04x}, expected 0x00 (small set) or 0x01 (registers)")]
    HllBadForm {
        /// The byte found.
        form: u8,
    },
    /// A small `uniqHLL12` set claimed more than 16 keys.
    #[error("uniqHLL12 state: small set holds {len} keys, at most 16 are allowed")]
    HllSmallSetTooLarge {
        /// The size found.
        len: u64,
    },
    /// A small `uniqHLL12` set repeated a key.
    #[error("uniqHLL12 state: small set repeats key {key:#018x}")]
    HllDuplicateKey {
        /// The repeated key.
        key: u64,
    },
    /// A register held a rank above 21, which a 32-bit hash cannot produce.
    #[error("uniqHLL12 state: register {index} holds rank {rank}, the maximum is 21")]
    HllRankOutOfRange {
        /// Register index.
        index: usize,
        /// Rank found.
        rank: u8,
    },
    /// The stored per-rank histogram disagrees with the registers.
    #[error("uniqHLL12 state: histogram says {stored} registers have rank {rank}, the registers hold {actual}")]
    HllHistogramMismatch {
        /// The rank whose count is wrong.
        rank: usize,
        /// Count stored in the state.
        stored: u32,
        /// Count of registers with that rank.
        actual: u32,
    },
    /// The stored zero-register count disagrees with the registers.
    #[error("uniqHLL12 state: zero count says {stored}, the registers hold {actual} zeros")]
    HllZeroCountMismatch {
        /// Count stored in the state.
        stored: u16,
        /// Number of zero registers.
        actual: u32,
    },
    /// `topK(k)` with `k` outside ClickHouse's accepted range.
    #[error("topK: k = {k} is invalid, it must be between 1 and {max}")]
    TopKBadK {
        /// The `k` asked for.
        k: usize,
        /// ClickHouse's maximum.
        max: usize,
    },
    /// A `topK` state holds more counters than `3k`.
    #[error("topK state: {count} counters do not fit topK({k}), whose capacity is {capacity}")]
    TopKTooManyCounters {
        /// Counters in the state.
        count: u64,
        /// Capacity for this `k`.
        capacity: usize,
        /// The `k` the state was read for.
        k: usize,
    },
    /// A key listed more than once whose counters add up past what a counter holds
    /// (2^63 − 1) or to more error than count.
    #[error("topK state: key {key:?} is listed more than once and its counters add up past 2^63 - 1 or to more error than count")]
    TopKRepeatedKeyOverflow {
        /// The key, lossily decoded as UTF-8.
        key: String,
    },
    /// A `topK` counter claims more error than count.
    #[error("topK state: key {key:?} has error {error} above its count {count}")]
    TopKErrorAboveCount {
        /// The key, lossily decoded as UTF-8.
        key: String,
        /// Its count.
        count: u64,
        /// Its error.
        error: u64,
    },
}

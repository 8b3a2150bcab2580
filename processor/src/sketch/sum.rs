//! `sum` states: `AggregateFunction(sum, UInt64)` and `AggregateFunction(sum, Float64)`.
//!
//! ClickHouse's `sum` state is the running total itself, 8 bytes little-endian: a `UInt64`
//! that wraps on overflow, or an IEEE-754 `Float64` accumulated with plain `+=` in input
//! order (18.16 has no compensated summation for `sum`).

use super::state_bytes::Reader;
use super::SketchError;

/// The state of `sum` over `UInt64`: a total that wraps modulo 2^64 like ClickHouse's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SumU64 {
    total: u64,
}

impl SumU64 {
    /// A zero total.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value.
    pub fn add(&mut self, value: u64) {
        self.total = self.total.wrapping_add(value);
    }

    /// Adds another partial total.
    pub fn merge(&mut self, other: &SumU64) {
        self.add(other.total);
    }

    /// The total (what `sumMerge` returns).
    pub fn value(&self) -> u64 {
        self.total
    }

    /// Appends the 8-byte little-endian state.
    pub fn write_state(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.total.to_le_bytes());
    }

    /// Parses exactly 8 state bytes.
    pub fn read_state(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut reader = Reader::new(bytes, "sum(UInt64) state");
        let total = reader.u64_le()?;
        reader.finish()?;
        Ok(Self { total })
    }
}

/// The state of `sum` over `Float64`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SumF64 {
    total: f64,
}

impl SumF64 {
    /// A zero total.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value.
    pub fn add(&mut self, value: f64) {
        self.total += value;
    }

    /// Adds another partial total.
    pub fn merge(&mut self, other: &SumF64) {
        self.add(other.total);
    }

    /// The total (what `sumMerge` returns).
    pub fn value(&self) -> f64 {
        self.total
    }

    /// Appends the 8-byte little-endian IEEE-754 state.
    pub fn write_state(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.total.to_le_bytes());
    }

    /// Parses exactly 8 state bytes.
    pub fn read_state(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut reader = Reader::new(bytes, "sum(Float64) state");
        let total = f64::from_bits(reader.u64_le()?);
        reader.finish()?;
        Ok(Self { total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SELECT sumState(toUInt64(number)) FROM numbers(10)` is `2d 00 00 00 00 00 00 00`.
    #[test]
    fn u64_state_matches_clickhouse_sample() {
        let mut s = SumU64::new();
        (0..10).for_each(|v| s.add(v));
        let mut out = Vec::new();
        s.write_state(&mut out);
        assert_eq!(out, [0x2d, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(SumU64::read_state(&out), Ok(s));
    }

    /// `SELECT sumState(toFloat64(number)/7) FROM numbers(10)` is `6d db b6 6d db b6 19 40`.
    #[test]
    fn f64_state_matches_clickhouse_sample() {
        let mut s = SumF64::new();
        (0..10).for_each(|v| s.add(f64::from(v) / 7.0));
        let mut out = Vec::new();
        s.write_state(&mut out);
        assert_eq!(out, [0x6d, 0xdb, 0xb6, 0x6d, 0xdb, 0xb6, 0x19, 0x40]);
        assert_eq!(SumF64::read_state(&out), Ok(s));
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert!(matches!(SumU64::read_state(&[0; 7]), Err(SketchError::Truncated { .. })));
        assert!(matches!(SumF64::read_state(&[0; 9]), Err(SketchError::TrailingBytes { .. })));
    }

    #[test]
    fn u64_wraps_like_clickhouse() {
        let mut s = SumU64::new();
        s.add(u64::MAX);
        s.add(2);
        assert_eq!(s.value(), 1);
    }
}

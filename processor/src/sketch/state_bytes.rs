//! ClickHouse's `VarUInt` in state bytes (through `gallop-codec`, bounded to its 9 groups) and
//! a small bounds-checked reader for state bytes.

use gallop_codec::{read_clickhouse_varuint, write_varint, VarintError, CLICKHOUSE_VARUINT_MAX};

use super::SketchError;

/// Appends `value` as a ClickHouse `VarUInt`. Values above [`CLICKHOUSE_VARUINT_MAX`] are
/// clamped to it (ClickHouse itself would silently drop the top bit).
pub(crate) fn write_varuint(value: u64, out: &mut Vec<u8>) {
    write_varint(value.min(CLICKHOUSE_VARUINT_MAX), out);
}

/// A cursor over state bytes that reports truncation with context instead of panicking.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`; `what` names the state in error messages.
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, pos: 0, what }
    }

    /// The current offset from the start of the state.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SketchError> {
        if self.remaining() < n {
            return Err(SketchError::Truncated {
                what: self.what,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    /// Takes one byte.
    pub(crate) fn u8(&mut self) -> Result<u8, SketchError> {
        Ok(self.take(1)?[0])
    }

    /// Takes a little-endian `u16`.
    pub(crate) fn u16_le(&mut self) -> Result<u16, SketchError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Takes a little-endian `u32`.
    pub(crate) fn u32_le(&mut self) -> Result<u32, SketchError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a little-endian `u64`.
    pub(crate) fn u64_le(&mut self) -> Result<u64, SketchError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Takes a ClickHouse `VarUInt` (at most 9 groups).
    pub(crate) fn varuint(&mut self) -> Result<u64, SketchError> {
        let start = self.pos;
        read_clickhouse_varuint(self.bytes, &mut self.pos).map_err(|e| match e {
            VarintError::Truncated { read } => {
                SketchError::Truncated { what: self.what, offset: start + read, needed: 1, available: 0 }
            }
            VarintError::TooLong { .. } => SketchError::VarUIntTooLong { what: self.what, offset: start },
        })
    }

    /// Fails unless every byte has been consumed.
    pub(crate) fn finish(self) -> Result<(), SketchError> {
        if self.remaining() != 0 {
            return Err(SketchError::TrailingBytes { what: self.what, offset: self.pos, extra: self.remaining() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varuint(v, &mut out);
        out
    }

    #[test]
    fn clamps_to_what_clickhouse_can_read() {
        assert_eq!(enc(CLICKHOUSE_VARUINT_MAX).len(), 9);
        assert_eq!(enc(u64::MAX), enc(CLICKHOUSE_VARUINT_MAX));
    }

    #[test]
    fn round_trips() {
        for v in [0, 1, 127, 128, 300, 1 << 20, 1 << 40, CLICKHOUSE_VARUINT_MAX] {
            let bytes = enc(v);
            let mut r = Reader::new(&bytes, "test");
            assert_eq!(r.varuint(), Ok(v));
            assert_eq!(r.finish(), Ok(()));
        }
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        let mut r = Reader::new(&[0x80], "test");
        assert!(matches!(r.varuint(), Err(SketchError::Truncated { .. })));
        let ten = [0xffu8; 10];
        let mut r = Reader::new(&ten, "test");
        assert!(matches!(r.varuint(), Err(SketchError::VarUIntTooLong { .. })));
    }
}

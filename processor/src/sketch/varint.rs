//! ClickHouse's `VarUInt` encoding and a small bounds-checked reader for state bytes.
//!
//! ClickHouse writes an unsigned integer as little-endian base-128 groups, high bit set on
//! every group but the last, and never more than 9 groups (`writeVarUInt` in
//! `IO/VarInt.h`). Nine groups carry 63 bits, so values of 2^63 and above cannot be
//! represented: [`VARUINT_MAX`] is the largest encodable value.

use super::SketchError;

/// The largest value ClickHouse's 9-group `VarUInt` can carry (2^63 - 1).
pub(crate) const VARUINT_MAX: u64 = (1 << 63) - 1;

/// Appends `value` as a ClickHouse `VarUInt`. Values above [`VARUINT_MAX`] are clamped to it
/// (ClickHouse itself would silently drop the top bit).
pub(crate) fn write_varuint(value: u64, out: &mut Vec<u8>) {
    let mut x = value.min(VARUINT_MAX);
    loop {
        let byte = (x & 0x7f) as u8;
        x >>= 7;
        if x == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
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
        let mut x = 0u64;
        for i in 0..9 {
            let byte = self.u8()?;
            x |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(SketchError::VarUIntTooLong { what: self.what, offset: start })
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
    fn encodes_like_clickhouse() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(0x7f), [0x7f]);
        assert_eq!(enc(0x80), [0x80, 0x01]);
        // 256, the alpha-map size of topK(10): seen as `80 02` in 18.16's topKState bytes.
        assert_eq!(enc(256), [0x80, 0x02]);
        assert_eq!(enc(VARUINT_MAX).len(), 9);
        assert_eq!(enc(u64::MAX), enc(VARUINT_MAX));
    }

    #[test]
    fn round_trips() {
        for v in [0, 1, 127, 128, 300, 1 << 20, 1 << 40, VARUINT_MAX] {
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

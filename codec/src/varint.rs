//! The one varint codec: unsigned LEB128.
//!
//! A value is written as groups of 7 bits, lowest first, each in a byte whose high bit says
//! that another byte follows. ClickHouse's `VarUInt` (`IO/VarInt.h`) is the same encoding
//! read to at most 9 groups, so it carries 63 bits ([`CLICKHOUSE_VARUINT_MAX`]); Gallop's own
//! formats (the compact event block, the stored visits) carry all 64 (at most 10 groups).
//! Reads are strict: a value past its bound, or bytes that end inside a value, are errors.

/// The largest value ClickHouse's 9-group `VarUInt` can carry (2^63 - 1).
pub const CLICKHOUSE_VARUINT_MAX: u64 = (1 << 63) - 1;

/// Why bytes do not hold a varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The bytes end before the value does.
    #[error("the bytes end inside a varint ({read} read)")]
    Truncated {
        /// Bytes read before they ran out.
        read: usize,
    },
    /// The value does not fit its bound (64 bits, or ClickHouse's 9 groups).
    #[error("a varint longer than {groups} bytes or past {bits} bits")]
    TooLong {
        /// Most bytes the value may take.
        groups: usize,
        /// Most bits the value may carry.
        bits: u32,
    },
}

/// Appends `value` as an unsigned LEB128 varint (1 to 10 bytes). For a ClickHouse
/// `VarUInt`, clamp the value to [`CLICKHOUSE_VARUINT_MAX`] first.
#[inline]
pub fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads the varint at `bytes[*at..]` and moves `at` past it: at most 10 bytes and 64 bits.
/// On an error `at` stays where it was.
#[inline]
pub fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, VarintError> {
    read_groups(bytes, at, 10, 64)
}

/// Reads a ClickHouse `VarUInt` at `bytes[*at..]` and moves `at` past it: at most 9 bytes, so
/// at most [`CLICKHOUSE_VARUINT_MAX`]. On an error `at` stays where it was.
#[inline]
pub fn read_clickhouse_varuint(bytes: &[u8], at: &mut usize) -> Result<u64, VarintError> {
    read_groups(bytes, at, 9, 63)
}

/// The loop of both reads: at most `groups` bytes carrying at most `bits` bits.
#[inline]
fn read_groups(bytes: &[u8], at: &mut usize, groups: usize, bits: u32) -> Result<u64, VarintError> {
    let start = *at;
    let mut value = 0u64;
    for i in 0..groups {
        let Some(&byte) = bytes.get(start + i) else {
            return Err(VarintError::Truncated { read: i });
        };
        let shift = 7 * i as u32;
        let group = u64::from(byte & 0x7f);
        // The last group may only carry the bits left below the bound.
        if shift + 7 > bits && group >> (bits - shift) != 0 {
            return Err(VarintError::TooLong { groups, bits });
        }
        value |= group << shift;
        if byte < 0x80 {
            *at = start + i + 1;
            return Ok(value);
        }
    }
    Err(VarintError::TooLong { groups, bits })
}

/// A signed integer as an unsigned one that small magnitudes keep small: 0, -1, 1, -2 → 0,
/// 1, 2, 3 (protobuf's zigzag).
#[inline]
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline]
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(value, &mut out);
        out
    }

    #[test]
    fn writes_like_clickhouse() {
        // (value, bytes): 256 is the alpha-map size of topK(10), seen as `80 02` in 18.16's
        // topKState bytes.
        let cases: [(u64, &[u8]); 6] = [
            (0, &[0x00]),
            (0x7f, &[0x7f]),
            (0x80, &[0x80, 0x01]),
            (256, &[0x80, 0x02]),
            (300, &[0xac, 0x02]),
            (u64::MAX, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ];
        for (value, bytes) in cases {
            assert_eq!(written(value), bytes, "{value}");
        }
        assert_eq!(written(CLICKHOUSE_VARUINT_MAX).len(), 9);
    }

    #[test]
    fn refuses_what_is_cut_or_too_long() {
        // (bytes, read_varint, read_clickhouse_varuint)
        let ten_ff = [0xffu8; 10];
        let eleven = [0x80u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        let u64_max = written(u64::MAX);
        let too_long_64 = Err(VarintError::TooLong { groups: 10, bits: 64 });
        let too_long_ch = Err(VarintError::TooLong { groups: 9, bits: 63 });
        type Read = Result<(u64, usize), VarintError>;
        // (value, bytes taken) of a read from the start, `at` unmoved on an error.
        let from_start = |read: fn(&[u8], &mut usize) -> Result<u64, VarintError>, bytes: &[u8]| -> Read {
            let mut at = 0;
            let result = read(bytes, &mut at).map(|value| (value, at));
            if result.is_err() {
                assert_eq!(at, 0, "an error leaves the cursor");
            }
            result
        };
        let cases: [(&[u8], Read, Read); 7] = [
            (&[], Err(VarintError::Truncated { read: 0 }), Err(VarintError::Truncated { read: 0 })),
            (&[0x80], Err(VarintError::Truncated { read: 1 }), Err(VarintError::Truncated { read: 1 })),
            (&[0x05, 0xff], Ok((5, 1)), Ok((5, 1))),
            (&ten_ff, too_long_64, too_long_ch),
            (&eleven, too_long_64, too_long_ch),
            (&u64_max, Ok((u64::MAX, 10)), too_long_ch),
            // Bit 64 set in the tenth byte: past 64 bits.
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], too_long_64, too_long_ch),
        ];
        for (bytes, plain, clickhouse) in cases {
            assert_eq!(from_start(read_varint, bytes), plain, "{bytes:02x?}");
            assert_eq!(from_start(read_clickhouse_varuint, bytes), clickhouse, "{bytes:02x?}");
        }
        let ch_max = written(CLICKHOUSE_VARUINT_MAX);
        assert_eq!(from_start(read_clickhouse_varuint, &ch_max), Ok((CLICKHOUSE_VARUINT_MAX, 9)));
        // Reads go on from where the cursor is; past the end is a truncation.
        let (mut at, two) = (0, [0x05, 0xac, 0x02]);
        assert_eq!((read_varint(&two, &mut at), at), (Ok(5), 1));
        assert_eq!((read_varint(&two, &mut at), at), (Ok(300), 3));
        assert_eq!((read_varint(&two, &mut at), at), (Err(VarintError::Truncated { read: 0 }), 3));
        let mut past = 9;
        assert_eq!(read_varint(&two, &mut past), Err(VarintError::Truncated { read: 0 }));
    }

    #[test]
    fn zigzag_keeps_small_magnitudes_small() {
        for (signed, unsigned) in [(0, 0), (-1, 1), (1, 2), (-2, 3), (i64::MAX, u64::MAX - 1), (i64::MIN, u64::MAX)] {
            assert_eq!(zigzag(signed), unsigned, "{signed}");
            assert_eq!(unzigzag(unsigned), signed, "{unsigned}");
        }
    }

    proptest! {
        #[test]
        fn every_value_reads_back_with_its_length(head: Vec<u8>, value: u64, tail: Vec<u8>) {
            let mut bytes = head.clone();
            write_varint(value, &mut bytes);
            let end = bytes.len();
            bytes.extend_from_slice(&tail);
            let mut at = head.len();
            prop_assert_eq!(read_varint(&bytes, &mut at), Ok(value));
            prop_assert_eq!(at, end);
            if value <= CLICKHOUSE_VARUINT_MAX {
                let mut at = head.len();
                prop_assert_eq!(read_clickhouse_varuint(&bytes, &mut at), Ok(value));
                prop_assert_eq!(at, end);
            }
        }

        #[test]
        fn zigzag_round_trips(value: i64) {
            prop_assert_eq!(unzigzag(zigzag(value)), value);
        }
    }
}

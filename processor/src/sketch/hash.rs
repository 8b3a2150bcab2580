//! The hash functions ClickHouse uses inside the sketches, bit for bit.
//!
//! - [`city_hash64`]: CityHash64 as of CityHash v1.0.2, the version ClickHouse vendors
//!   (`contrib/libcityhash`, namespace `CityHash_v1_0_2`) and uses for `cityHash64` and for
//!   hashing `String` arguments of `uniqHLL12`. Later CityHash releases changed the
//!   algorithm; this is the old one.
//! - [`int_hash32`]: ClickHouse's `intHash32<0>` (a Thomas Wang mix, with rotations where
//!   the original shifts), used by `uniqHLL12` to pick a register and its rank.
//! - [`int_hash64`]: ClickHouse's SQL `intHash64` (the Murmur3 finalizer of the salted key);
//!   tests use it to generate the same pseudo-random inputs on both sides.
//! - `string_ref_hash`: `StringRefHash`, the hash of ClickHouse's `HashMap<StringRef, ..>`
//!   on an SSE 4.2 build (CRC32-C over 8-byte words); `topK` picks its alpha slot with it.

const K0: u64 = 0xc3a5_c85c_97cb_3127;
const K1: u64 = 0xb492_b66f_be98_f273;
const K2: u64 = 0x9ae1_6a3b_2f90_404f;
const K3: u64 = 0xc949_d7c7_509e_6557;
const KMUL: u64 = 0x9ddf_ea08_eb38_2d69;

fn fetch64(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(b)
}

fn fetch32(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&s[at..at + 4]);
    u64::from(u32::from_le_bytes(b))
}

fn rotate(val: u64, shift: u32) -> u64 {
    // CityHash's Rotate special-cases 0; rotate_right(0) is the identity as well.
    val.rotate_right(shift)
}

fn shift_mix(val: u64) -> u64 {
    val ^ (val >> 47)
}

fn hash128_to_64(low: u64, high: u64) -> u64 {
    let mut a = (low ^ high).wrapping_mul(KMUL);
    a ^= a >> 47;
    let mut b = (high ^ a).wrapping_mul(KMUL);
    b ^= b >> 47;
    b.wrapping_mul(KMUL)
}

fn hash_len16(u: u64, v: u64) -> u64 {
    hash128_to_64(u, v)
}

fn hash_len0to16(s: &[u8]) -> u64 {
    let len = s.len();
    if len > 8 {
        let a = fetch64(s, 0);
        let b = fetch64(s, len - 8);
        return hash_len16(a, rotate(b.wrapping_add(len as u64), len as u32)) ^ b;
    }
    if len >= 4 {
        let a = fetch32(s, 0);
        return hash_len16((len as u64).wrapping_add(a << 3), fetch32(s, len - 4));
    }
    if len > 0 {
        let a = u32::from(s[0]);
        let b = u32::from(s[len >> 1]);
        let c = u32::from(s[len - 1]);
        let y = a.wrapping_add(b << 8);
        let z = (len as u32).wrapping_add(c << 2);
        return shift_mix(u64::from(y).wrapping_mul(K2) ^ u64::from(z).wrapping_mul(K3)).wrapping_mul(K2);
    }
    K2
}

fn hash_len17to32(s: &[u8]) -> u64 {
    let len = s.len();
    let a = fetch64(s, 0).wrapping_mul(K1);
    let b = fetch64(s, 8);
    let c = fetch64(s, len - 8).wrapping_mul(K2);
    let d = fetch64(s, len - 16).wrapping_mul(K0);
    hash_len16(
        rotate(a.wrapping_sub(b), 43).wrapping_add(rotate(c, 30)).wrapping_add(d),
        a.wrapping_add(rotate(b ^ K3, 20)).wrapping_sub(c).wrapping_add(len as u64),
    )
}

fn weak_hash_len32_with_seeds(s: &[u8], at: usize, a: u64, b: u64) -> (u64, u64) {
    let w = fetch64(s, at);
    let x = fetch64(s, at + 8);
    let y = fetch64(s, at + 16);
    let z = fetch64(s, at + 24);
    let mut a = a.wrapping_add(w);
    let mut b = rotate(b.wrapping_add(a).wrapping_add(z), 21);
    let c = a;
    a = a.wrapping_add(x);
    a = a.wrapping_add(y);
    b = b.wrapping_add(rotate(a, 44));
    (a.wrapping_add(z), b.wrapping_add(c))
}

fn hash_len33to64(s: &[u8]) -> u64 {
    let len = s.len();
    let mut z = fetch64(s, 24);
    let mut a = fetch64(s, 0).wrapping_add((len as u64).wrapping_add(fetch64(s, len - 16)).wrapping_mul(K0));
    let mut b = rotate(a.wrapping_add(z), 52);
    let mut c = rotate(a, 37);
    a = a.wrapping_add(fetch64(s, 8));
    c = c.wrapping_add(rotate(a, 7));
    a = a.wrapping_add(fetch64(s, 16));
    let vf = a.wrapping_add(z);
    let vs = b.wrapping_add(rotate(a, 31)).wrapping_add(c);
    a = fetch64(s, 16).wrapping_add(fetch64(s, len - 32));
    z = fetch64(s, len - 8);
    b = rotate(a.wrapping_add(z), 52);
    c = rotate(a, 37);
    a = a.wrapping_add(fetch64(s, len - 24));
    c = c.wrapping_add(rotate(a, 7));
    a = a.wrapping_add(fetch64(s, len - 16));
    let wf = a.wrapping_add(z);
    let ws = b.wrapping_add(rotate(a, 31)).wrapping_add(c);
    let r = shift_mix(vf.wrapping_add(ws).wrapping_mul(K2).wrapping_add(wf.wrapping_add(vs).wrapping_mul(K0)));
    shift_mix(r.wrapping_mul(K0).wrapping_add(vs)).wrapping_mul(K2)
}

/// CityHash64 v1.0.2 of `s`, as ClickHouse's `cityHash64(s)` computes it for one `String`.
///
/// `city_hash64(b"0") == 0x9071_C92B_AA45_8312`.
pub fn city_hash64(s: &[u8]) -> u64 {
    let len = s.len();
    if len <= 32 {
        if len <= 16 {
            return hash_len0to16(s);
        }
        return hash_len17to32(s);
    } else if len <= 64 {
        return hash_len33to64(s);
    }

    let mut x = fetch64(s, 0);
    let mut y = fetch64(s, len - 16) ^ K1;
    let mut z = fetch64(s, len - 56) ^ K0;
    let mut v = weak_hash_len32_with_seeds(s, len - 64, len as u64, y);
    let mut w = weak_hash_len32_with_seeds(s, len - 32, (len as u64).wrapping_mul(K1), K0);
    z = z.wrapping_add(shift_mix(v.1).wrapping_mul(K1));
    x = rotate(z.wrapping_add(x), 39).wrapping_mul(K1);
    y = rotate(y, 33).wrapping_mul(K1);

    // Whole 64-byte chunks, the last one possibly overlapping the tail hashed above.
    let mut remaining = (len - 1) & !63usize;
    let mut at = 0usize;
    loop {
        x = rotate(x.wrapping_add(y).wrapping_add(v.0).wrapping_add(fetch64(s, at + 16)), 37).wrapping_mul(K1);
        y = rotate(y.wrapping_add(v.1).wrapping_add(fetch64(s, at + 48)), 42).wrapping_mul(K1);
        x ^= w.1;
        y ^= v.0;
        z = rotate(z ^ w.0, 33);
        v = weak_hash_len32_with_seeds(s, at, v.1.wrapping_mul(K1), x.wrapping_add(w.0));
        w = weak_hash_len32_with_seeds(s, at + 32, z.wrapping_add(w.1), y);
        std::mem::swap(&mut z, &mut x);
        at += 64;
        remaining -= 64;
        if remaining == 0 {
            break;
        }
    }
    hash_len16(
        hash_len16(v.0, w.0).wrapping_add(shift_mix(y).wrapping_mul(K1)).wrapping_add(z),
        hash_len16(v.1, w.1).wrapping_add(x),
    )
}

/// ClickHouse's `intHash32<0>(key)`: the hash `uniqHLL12` applies to every key.
pub fn int_hash32(key: u64) -> u32 {
    int_hash32_salted(key, 0)
}

/// `intHash32<salt>(key)`. The SQL function `intHash32` uses salt `0x75D9543DE018BF45`;
/// the aggregate functions use salt 0.
fn int_hash32_salted(key: u64, salt: u64) -> u32 {
    let mut key = key ^ salt;
    key = (!key).wrapping_add(key << 18);
    key ^= key.rotate_right(31);
    key = key.wrapping_mul(21);
    key ^= key.rotate_right(11);
    key = key.wrapping_add(key << 6);
    key ^= key.rotate_right(22);
    key as u32
}

/// ClickHouse's SQL function `intHash64(x)`: the Murmur3 64-bit finalizer applied to
/// `x ^ 0x4CF2D2BAAE6DA887` (`IntHash64Impl`).
pub fn int_hash64(x: u64) -> u64 {
    let mut x = x ^ 0x4CF2_D2BA_AE6D_A887;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// CRC32-C (Castagnoli, reflected polynomial 0x82F63B78) byte table, as the SSE 4.2
/// `crc32` instruction computes it (no pre- or post-inversion).
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// `_mm_crc32_u64(crc, word)`: CRC32-C of the 8 little-endian bytes of `word`, starting
/// from the low 32 bits of `crc`; the result is zero-extended.
fn crc32c_u64(crc: u64, word: u64) -> u64 {
    let mut c = crc as u32;
    for byte in word.to_le_bytes() {
        c = CRC32C_TABLE[((c ^ u32::from(byte)) & 0xff) as usize] ^ (c >> 8);
    }
    u64::from(c)
}

/// ClickHouse's `hashLessThan8` (from `StringRef.h`), for strings shorter than 8 bytes.
fn hash_less_than8(s: &[u8]) -> u64 {
    let size = s.len();
    if size >= 4 {
        let a = fetch32(s, 0);
        return hash_len16((size as u64).wrapping_add(a << 3), fetch32(s, size - 4));
    }
    // Sizes 1..=3 and 0 hash exactly as in CityHash's HashLen0to16.
    hash_len0to16(s)
}

/// `StringRefHash` of ClickHouse 18.16 (x86-64 with SSE 4.2, i.e. `CRC32Hash`): the hash
/// `SpaceSaving` (topK) stores per counter and masks to pick an alpha-map slot.
pub(crate) fn string_ref_hash(s: &[u8]) -> u64 {
    let size = s.len();
    if size == 0 {
        return 0;
    }
    if size < 8 {
        return hash_less_than8(s);
    }
    let mut res = u64::MAX;
    let mut pos = 0usize;
    loop {
        res = crc32c_u64(res, fetch64(s, pos));
        pos += 8;
        if pos + 8 >= size {
            break;
        }
    }
    crc32c_u64(res, fetch64(s, size - 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by ClickHouse 18.16.1 (`SELECT cityHash64(..)`, `intHash32(..)`,
    /// `intHash64(..)`).
    #[test]
    fn matches_clickhouse_18_16_samples() {
        assert_eq!(city_hash64(b"0"), 0x9071_C92B_AA45_8312);
        assert_eq!(city_hash64(b""), 11_160_318_154_034_397_263);
        assert_eq!(city_hash64(b"abc"), 4_220_206_313_085_259_313);
        assert_eq!(city_hash64(b"hello world, this is longer than 16"), 2_761_631_774_197_249_475);
        // The SQL function is intHash32<0x75D9543DE018BF45>; uniqHLL12 uses intHash32<0>,
        // which the integration tests check through the server's register bytes.
        const SQL_SALT: u64 = 0x75D9_543D_E018_BF45;
        assert_eq!(int_hash32_salted(1, SQL_SALT), 1_343_103_100);
        assert_eq!(int_hash32_salted(12_345_678_901_234, SQL_SALT), 3_189_984_052);
        assert_eq!(int_hash64(1), 10_577_349_846_663_553_072);
        assert_eq!(int_hash64(12_345_678_901_234), 9_406_998_214_620_712_310);
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // Standard CRC-32C check: crc32c("123456789") = 0xE3069283 with ~init and ~final.
        let mut c = 0xffff_ffffu32;
        for b in b"123456789" {
            c = CRC32C_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
        }
        assert_eq!(!c, 0xe306_9283);
    }
}

//! `uniqHLL12`: ClickHouse's HyperLogLog with a small-set optimization, byte-identical.
//!
//! ClickHouse (`HyperLogLogWithSmallSetOptimization<UInt64, 16, 12>`) keeps up to 16 distinct
//! keys verbatim, in insertion order; the 17th distinct key converts the set into a
//! HyperLogLog counter of 4096 registers (`HyperLogLogCounter<12, IntHash32<UInt64>, UInt32,
//! double, TrivialBiasEstimator, FullFeatured, StableIfBig>`).
//!
//! A key is the `UInt64` argument itself, or for a `String` argument its CityHash64 v1.0.2.
//! In the counter, `h = intHash32(key)`; the register is `h & 0xFFF`; its candidate rank is
//! `trailing_zeros(h >> 12) + 1`, or 21 when `h >> 12 == 0`; a register keeps the maximum.
//!
//! State bytes (as in RowBinary, no length prefix), confirmed against ClickHouse 18.16.1:
//!
//! - small: `0x00`, `VarUInt` n (n ≤ 16), n keys as 8-byte little-endian integers;
//! - large: `0x01`, 2560 bytes of 4096 5-bit registers packed low bit first (register i is
//!   bits `5i..5i+5` of the little-endian bit stream), 22 little-endian `UInt32` counts of
//!   registers per rank 0..=21 (the "denominator" histogram), a little-endian `UInt16` count
//!   of zero registers: 2651 bytes in all. ClickHouse trusts the histogram and the zero
//!   count when it reads a state, so they must agree with the registers.
//!
//! The estimate reproduces `HyperLogLogCounter::size()` of 18.16: raw HLL estimate
//! `alpha · 4096² / Σ 2^-rank` with `alpha = 0.7213 / (1 + 1.079 / 4096)`; linear counting
//! `4096 · (ln 4096 - ln zeros)` when `raw ≤ 2.5 · 4096` and some register is zero; the raw
//! estimate otherwise, also above `2^32 / 30` (no large-range correction); then
//! `(UInt64)(estimate + 0.5)`.

use super::hash::{city_hash64, int_hash32};
use super::state_bytes::{write_varuint, Reader};
use super::SketchError;

/// Keys kept verbatim before switching to registers.
const SMALL_CAPACITY: usize = 16;
/// log2 of the register count.
const PRECISION: u32 = 12;
/// Number of registers.
const REGISTERS: usize = 1 << PRECISION;
/// Packed register bytes: 4096 × 5 bits.
const PACKED_BYTES: usize = REGISTERS * 5 / 8;
/// Highest rank: 32-bit hash minus 12 index bits, plus one.
const MAX_RANK: u8 = 32 - PRECISION as u8 + 1;
/// Histogram entries: ranks 0..=21.
const HISTOGRAM_LEN: usize = MAX_RANK as usize + 1;
/// Size of a serialized large state, form byte included.
const LARGE_STATE_BYTES: usize = 1 + PACKED_BYTES + HISTOGRAM_LEN * 4 + 2;

const STATE_NAME: &str = "uniqHLL12 state";

/// The state of ClickHouse's `uniqHLL12` aggregate function, for `UInt64` or `String`
/// arguments (one sketch must see one kind: a string is counted by its CityHash64).
///
/// In memory a sketch takes the least room its content needs: no allocation while empty,
/// one key inline, up to 16 keys in a small box, then its registers as a small hash set of
/// the registers set so far (up to [`SPARSE_MAX_REGISTERS`]), and only past that the 2.6 KB
/// array ClickHouse keeps. Most cells of a minute see a handful of visitors; a per-minute
/// table of them holds far more small sketches than large ones. Every form writes the same
/// state bytes and estimate as ClickHouse's two forms.
#[derive(Clone, Debug)]
pub struct UniqHll12 {
    repr: Repr,
}

#[derive(Clone, Debug)]
enum Repr {
    /// ClickHouse's small set with no key.
    Empty,
    /// ClickHouse's small set with one key.
    One(u64),
    /// ClickHouse's small set with 2..=16 keys (boxed, so a cell holds the sketch inline).
    Small(Box<Small>),
    /// ClickHouse's registers, few of them set.
    Sparse(Sparse),
    /// ClickHouse's registers, as ClickHouse keeps them.
    Large(Box<Large>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Small {
    len: usize,
    keys: [u64; SMALL_CAPACITY],
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Large {
    packed: [u8; PACKED_BYTES],
    histogram: [u32; HISTOGRAM_LEN],
    zeros: u16,
}

/// Registers set above zero before a sketch turns into the full array: a sparse set of
/// this many takes 512 bytes, against the array's 2.6 KB. Measured against 192 (1 KB):
/// the larger bound saved a little memory but grew each busy sketch once more before
/// converting it anyway, and cost the core without visits about 5 %.
const SPARSE_MAX_REGISTERS: usize = 96;
/// Slots of a new sparse set: room for the 17 keys a small set turns over.
const SPARSE_MIN_SLOTS: usize = 32;

/// The registers above zero as an open-addressing hash set (linear probing) of
/// `index << 5 | rank` entries; 0 marks a free slot (a set register has rank ≥ 1). The
/// register index is itself a uniform hash, so its low bits pick the slot. Slot 0 of the
/// boxed slice holds the number of entries; the table is the rest, a power of two long,
/// at most three quarters full.
#[derive(Clone, Debug)]
struct Sparse {
    slots: Box<[u32]>,
}

impl Small {
    fn keys(&self) -> &[u64] {
        &self.keys[..self.len]
    }
}

/// The register and rank of `key`, as `HyperLogLogCounter::insert` computes them.
fn register_of(key: u64) -> (usize, u8) {
    let hash = int_hash32(key);
    let index = (hash & (REGISTERS as u32 - 1)) as usize;
    let tail = hash >> PRECISION;
    let rank = if tail == 0 {
        MAX_RANK
    } else {
        // tail has 20 significant bits, so this is at most 20.
        (tail.trailing_zeros() + 1).min(u32::from(MAX_RANK)) as u8
    };
    (index, rank)
}

/// Sets register `index` of the packed 5-bit registers to `rank`.
fn set_packed(packed: &mut [u8], index: usize, rank: u8) {
    let bit = index * 5;
    let byte = bit / 8;
    let offset = bit % 8;
    if offset <= 3 {
        let mask = 0x1fu8 << offset;
        packed[byte] = (packed[byte] & !mask) | (rank << offset);
    } else {
        let mut pair = u16::from(packed[byte]) | (u16::from(packed[byte + 1]) << 8);
        let mask = 0x1fu16 << offset;
        pair = (pair & !mask) | (u16::from(rank) << offset);
        let [lo, hi] = pair.to_le_bytes();
        packed[byte] = lo;
        packed[byte + 1] = hi;
    }
}

/// `HyperLogLogCounter::size()` of ClickHouse 18.16 from the rank histogram and the count
/// of zero registers (see the module documentation).
fn estimate_from(histogram: &[u32; HISTOGRAM_LEN], zeros: u16) -> u64 {
    // Denominator::get() for StableIfBig: Σ histogram[r] · 2^-r, evaluated from the top
    // rank down. Every intermediate is a dyadic rational with at most 33 significant
    // bits, so f64 is exact here, like ClickHouse's long double.
    let mut denominator = f64::from(histogram[HISTOGRAM_LEN - 1]);
    for rank in (0..HISTOGRAM_LEN - 1).rev() {
        denominator /= 2.0;
        denominator += f64::from(histogram[rank]);
    }
    let m = REGISTERS as f64;
    let alpha_m = 0.7213 / (1.0 + 1.079 / m);
    let raw = alpha_m * m * m / denominator;

    // Above 2^32 / 30 the raw estimate is returned as is: ClickHouse dropped the 32-bit
    // large-range correction (`-2^32 ln(1 - raw / 2^32)`) long before 18.16, which the
    // integration tests confirm with hand-built register states.
    let fixed = if raw > 4_294_967_296.0 / 30.0 {
        raw
    } else if raw <= 2.5 * m && zeros != 0 {
        m * (m.ln() - f64::from(zeros).ln())
    } else {
        raw
    };
    // static_cast<UInt64>(fixed + 0.5); `fixed` is finite and below 2^33 here.
    (fixed + 0.5) as u64
}

impl Large {
    fn new() -> Self {
        let mut histogram = [0u32; HISTOGRAM_LEN];
        histogram[0] = REGISTERS as u32;
        Self { packed: [0; PACKED_BYTES], histogram, zeros: REGISTERS as u16 }
    }

    fn get(&self, index: usize) -> u8 {
        let bit = index * 5;
        let byte = bit / 8;
        let offset = bit % 8;
        if offset <= 3 {
            (self.packed[byte] >> offset) & 0x1f
        } else {
            let pair = u16::from(self.packed[byte]) | (u16::from(self.packed[byte + 1]) << 8);
            ((pair >> offset) & 0x1f) as u8
        }
    }

    fn set(&mut self, index: usize, rank: u8) {
        set_packed(&mut self.packed, index, rank);
    }

    /// `HyperLogLogCounter::update`: raise register `index` to `rank`.
    fn update(&mut self, index: usize, rank: u8) {
        let current = self.get(index);
        if rank > current {
            if current == 0 {
                self.zeros -= 1;
            }
            self.histogram[usize::from(current)] -= 1;
            self.histogram[usize::from(rank)] += 1;
            self.set(index, rank);
        }
    }

    fn insert(&mut self, key: u64) {
        let (index, rank) = register_of(key);
        self.update(index, rank);
    }

    fn merge(&mut self, other: &Large) {
        for index in 0..REGISTERS {
            self.update(index, other.get(index));
        }
    }

    fn estimate(&self) -> u64 {
        estimate_from(&self.histogram, self.zeros)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.reserve(LARGE_STATE_BYTES);
        out.push(1);
        out.extend_from_slice(&self.packed);
        for count in self.histogram {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&self.zeros.to_le_bytes());
    }
}

impl Sparse {
    fn new() -> Self {
        Self { slots: vec![0; 1 + SPARSE_MIN_SLOTS].into_boxed_slice() }
    }

    fn len(&self) -> usize {
        self.slots[0] as usize
    }

    /// The (index, rank) of every register above zero, in no particular order.
    fn entries(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        self.slots[1..].iter().filter(|&&e| e != 0).map(|&e| ((e >> 5) as usize, (e & 0x1f) as u8))
    }

    /// The slot of `table` that holds register `index`, or the free slot where it goes.
    /// The table is never full (at most three quarters), so the probe ends.
    fn slot_of(table: &[u32], index: usize) -> usize {
        let mask = table.len() - 1;
        let mut at = index & mask;
        while table[at] != 0 && (table[at] >> 5) as usize != index {
            at = (at + 1) & mask;
        }
        at
    }

    /// The rank of register `index` (0 when not set).
    fn get(&self, index: usize) -> u8 {
        let table = &self.slots[1..];
        (table[Self::slot_of(table, index)] & 0x1f) as u8
    }

    /// Raises register `index` to `rank`; false, changing nothing, when that would set one
    /// register more than [`SPARSE_MAX_REGISTERS`].
    fn update(&mut self, index: usize, rank: u8) -> bool {
        let entry = (index as u32) << 5 | u32::from(rank);
        let (count, table) = self.slots.split_at_mut(1);
        let at = Self::slot_of(table, index);
        if table[at] != 0 {
            if rank > (table[at] & 0x1f) as u8 {
                table[at] = entry;
            }
            return true;
        }
        let len = count[0] as usize + 1;
        if len > SPARSE_MAX_REGISTERS {
            return false;
        }
        if len * 4 > table.len() * 3 {
            self.grow();
            return self.update(index, rank);
        }
        table[at] = entry;
        count[0] = len as u32;
        true
    }

    /// Doubles the table, placing every entry again.
    fn grow(&mut self) {
        let mut bigger = vec![0u32; 1 + (self.slots.len() - 1) * 2].into_boxed_slice();
        bigger[0] = self.slots[0];
        let table = &mut bigger[1..];
        for &e in self.slots[1..].iter().filter(|&&e| e != 0) {
            table[Self::slot_of(table, (e >> 5) as usize)] = e;
        }
        self.slots = bigger;
    }

    /// The same registers as the full array.
    fn to_large(&self) -> Box<Large> {
        let mut large = Box::new(Large::new());
        for (index, rank) in self.entries() {
            large.update(index, rank);
        }
        large
    }

    /// The rank histogram and zero count the full array would carry.
    fn histogram(&self) -> ([u32; HISTOGRAM_LEN], u16) {
        let mut histogram = [0u32; HISTOGRAM_LEN];
        for (_, rank) in self.entries() {
            histogram[usize::from(rank)] += 1;
        }
        // At most SPARSE_MAX_REGISTERS of 4096 are set.
        let zeros = (REGISTERS - self.len()) as u16;
        histogram[0] = u32::from(zeros);
        (histogram, zeros)
    }

    fn estimate(&self) -> u64 {
        let (histogram, zeros) = self.histogram();
        estimate_from(&histogram, zeros)
    }

    /// Writes the state of the full array, without building one.
    fn write(&self, out: &mut Vec<u8>) {
        out.reserve(LARGE_STATE_BYTES);
        out.push(1);
        let start = out.len();
        out.resize(start + PACKED_BYTES, 0);
        for (index, rank) in self.entries() {
            set_packed(&mut out[start..], index, rank);
        }
        let (histogram, zeros) = self.histogram();
        for count in histogram {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&zeros.to_le_bytes());
    }
}

impl Default for UniqHll12 {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for UniqHll12 {
    /// Equal when ClickHouse would hold the same state: the same small-set keys in the same
    /// order, or the same registers, whichever form each side keeps them in.
    fn eq(&self, other: &Self) -> bool {
        match (self.small_keys(), other.small_keys()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => (0..REGISTERS).all(|i| self.register(i) == other.register(i)),
            _ => false,
        }
    }
}

impl Eq for UniqHll12 {}

impl UniqHll12 {
    /// An empty sketch (the state of `uniqHLL12State` over no rows: bytes `00 00`).
    pub fn new() -> Self {
        Self { repr: Repr::Empty }
    }

    /// The small set's keys in insertion order; `None` once the sketch keeps registers.
    fn small_keys(&self) -> Option<&[u64]> {
        match &self.repr {
            Repr::Empty => Some(&[]),
            Repr::One(key) => Some(std::slice::from_ref(key)),
            Repr::Small(small) => Some(small.keys()),
            Repr::Sparse(_) | Repr::Large(_) => None,
        }
    }

    /// The rank of register `index` (0 while the small set is in use).
    fn register(&self, index: usize) -> u8 {
        match &self.repr {
            Repr::Sparse(sparse) => sparse.get(index),
            Repr::Large(large) => large.get(index),
            _ => 0,
        }
    }

    /// Adds a `UInt64` argument, as `uniqHLL12(x)` does for a `UInt64` column.
    #[inline]
    pub fn insert_u64(&mut self, value: u64) {
        match &mut self.repr {
            Repr::Large(large) => large.insert(value),
            Repr::Sparse(_) => {
                let (index, rank) = register_of(value);
                self.update_register(index, rank);
            }
            Repr::Empty => self.repr = Repr::One(value),
            Repr::One(key) => {
                if *key != value {
                    let mut keys = [0; SMALL_CAPACITY];
                    keys[0] = *key;
                    keys[1] = value;
                    self.repr = Repr::Small(Box::new(Small { len: 2, keys }));
                }
            }
            Repr::Small(small) => {
                if small.keys().contains(&value) {
                    return;
                }
                if small.len < SMALL_CAPACITY {
                    small.keys[small.len] = value;
                    small.len += 1;
                } else {
                    // ClickHouse's toLarge: the small keys in order, then the new one.
                    self.registers_from_small();
                    self.insert_u64(value);
                }
            }
        }
    }

    /// Adds a `String` argument, as `uniqHLL12(s)` does for a `String` column: the key is
    /// the string's CityHash64 v1.0.2.
    pub fn insert_str(&mut self, value: &[u8]) {
        self.insert_u64(city_hash64(value));
    }

    /// Turns the small set (of at most 16 keys) into registers, inserting its keys in order.
    fn registers_from_small(&mut self) {
        let mut sparse = Sparse::new();
        for &key in self.small_keys().unwrap_or_default() {
            let (index, rank) = register_of(key);
            // 16 keys set at most 16 of the SPARSE_MAX_REGISTERS registers.
            sparse.update(index, rank);
        }
        self.repr = Repr::Sparse(sparse);
    }

    /// Raises register `index` to `rank`, turning the small set into registers first and
    /// sparse registers into the full array when they outgrow it.
    fn update_register(&mut self, index: usize, rank: u8) {
        if self.small_keys().is_some() {
            self.registers_from_small();
        }
        match &mut self.repr {
            Repr::Large(large) => large.update(index, rank),
            Repr::Sparse(sparse) => {
                if !sparse.update(index, rank) {
                    let mut large = sparse.to_large();
                    large.update(index, rank);
                    self.repr = Repr::Large(large);
                }
            }
            // The small set became registers above.
            Repr::Empty | Repr::One(_) | Repr::Small(_) => {}
        }
    }

    /// Turns registers of any form, or the small set, into the full array.
    fn make_large(&mut self) {
        if self.small_keys().is_some() {
            self.registers_from_small();
        }
        if let Repr::Sparse(sparse) = &self.repr {
            self.repr = Repr::Large(sparse.to_large());
        }
    }

    /// Merges `other` into `self`, as ClickHouse's `merge` does: small keys are inserted one
    /// by one in their stored order; registers are combined by maximum.
    pub fn merge(&mut self, other: &UniqHll12) {
        match &other.repr {
            Repr::Empty | Repr::One(_) | Repr::Small(_) => {
                for &key in other.small_keys().unwrap_or_default() {
                    self.insert_u64(key);
                }
            }
            Repr::Sparse(other_sparse) => {
                for (index, rank) in other_sparse.entries() {
                    self.update_register(index, rank);
                }
            }
            Repr::Large(other_large) => {
                self.make_large();
                if let Repr::Large(large) = &mut self.repr {
                    large.merge(other_large);
                }
            }
        }
    }

    /// The estimated number of distinct values: exactly what `uniqHLL12Merge` returns for
    /// this state (the number of keys while the small set is in use).
    pub fn estimate(&self) -> u64 {
        match &self.repr {
            Repr::Sparse(sparse) => sparse.estimate(),
            Repr::Large(large) => large.estimate(),
            _ => self.small_keys().map_or(0, |keys| keys.len() as u64),
        }
    }

    /// Whether the sketch has switched from the small set to registers.
    pub fn is_large(&self) -> bool {
        self.small_keys().is_none()
    }

    /// Appends the raw state bytes, identical to what ClickHouse writes for the same inputs
    /// (the value of an `AggregateFunction(uniqHLL12, UInt64)` column in RowBinary).
    pub fn write_state(&self, out: &mut Vec<u8>) {
        match &self.repr {
            Repr::Large(large) => large.write(out),
            Repr::Sparse(sparse) => sparse.write(out),
            _ => {
                let keys = self.small_keys().unwrap_or_default();
                out.push(0);
                write_varuint(keys.len() as u64, out);
                for key in keys {
                    out.extend_from_slice(&key.to_le_bytes());
                }
            }
        }
    }

    /// How many bytes [`UniqHll12::write_state`] appends.
    pub fn state_len(&self) -> usize {
        match self.small_keys() {
            // The count is a one-byte varint: at most 16.
            Some(keys) => 2 + 8 * keys.len(),
            None => LARGE_STATE_BYTES,
        }
    }

    /// The raw state bytes as a new vector.
    pub fn to_state(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_state(&mut out);
        out
    }

    /// Parses raw state bytes (exactly one state, nothing after it), checking everything
    /// ClickHouse would silently trust: the form byte, the small-set size and uniqueness,
    /// register ranks, and that the histogram and zero count match the registers.
    pub fn read_state(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut reader = Reader::new(bytes, STATE_NAME);
        let form = reader.u8()?;
        let sketch = match form {
            0 => {
                let n = reader.varuint()?;
                if n > SMALL_CAPACITY as u64 {
                    return Err(SketchError::HllSmallSetTooLarge { len: n });
                }
                let mut small = Small { len: 0, keys: [0; SMALL_CAPACITY] };
                for _ in 0..n {
                    let key = reader.u64_le()?;
                    if small.keys().contains(&key) {
                        return Err(SketchError::HllDuplicateKey { key });
                    }
                    small.keys[small.len] = key;
                    small.len += 1;
                }
                let repr = match small.keys() {
                    [] => Repr::Empty,
                    [key] => Repr::One(*key),
                    _ => Repr::Small(Box::new(small)),
                };
                Self { repr }
            }
            1 => {
                let mut large = Box::new(Large::new());
                large.packed.copy_from_slice(reader.take(PACKED_BYTES)?);
                let mut histogram = [0u32; HISTOGRAM_LEN];
                for count in &mut histogram {
                    *count = reader.u32_le()?;
                }
                let zeros = reader.u16_le()?;

                let mut actual = [0u32; HISTOGRAM_LEN];
                for index in 0..REGISTERS {
                    let rank = large.get(index);
                    if rank > MAX_RANK {
                        return Err(SketchError::HllRankOutOfRange { index, rank });
                    }
                    actual[usize::from(rank)] += 1;
                }
                for (rank, (&stored, &counted)) in histogram.iter().zip(&actual).enumerate() {
                    if stored != counted {
                        return Err(SketchError::HllHistogramMismatch { rank, stored, actual: counted });
                    }
                }
                if u32::from(zeros) != actual[0] {
                    return Err(SketchError::HllZeroCountMismatch { stored: zeros, actual: actual[0] });
                }
                large.histogram = histogram;
                large.zeros = zeros;
                Self { repr: Repr::Large(large) }
            }
            other => return Err(SketchError::HllBadForm { form: other }),
        };
        reader.finish()?;
        Ok(sketch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_state_is_two_zero_bytes() {
        assert_eq!(UniqHll12::new().to_state(), [0, 0]);
        assert_eq!(UniqHll12::new().state_len(), 2);
        assert_eq!(UniqHll12::new().estimate(), 0);
    }

    /// `SELECT uniqHLL12State(toUInt64(number)) FROM numbers(3) FORMAT RowBinary` on 18.16.
    #[test]
    fn small_state_matches_clickhouse_sample() {
        let mut h = UniqHll12::new();
        for v in 0..3 {
            h.insert_u64(v);
            h.insert_u64(v);
        }
        let mut expected = vec![0u8, 3];
        for v in 0u64..3 {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(h.to_state(), expected);
        assert_eq!(h.estimate(), 3);
    }

    /// `SELECT uniqHLL12State(toString(number)) FROM numbers(1)`: `00 01` + cityHash64('0').
    #[test]
    fn string_key_is_its_cityhash() {
        let mut h = UniqHll12::new();
        h.insert_str(b"0");
        assert_eq!(h.to_state(), [0x00, 0x01, 0x12, 0x83, 0x45, 0xaa, 0x2b, 0xc9, 0x71, 0x90]);
    }

    #[test]
    fn seventeenth_key_switches_to_registers() {
        let mut h = UniqHll12::new();
        for v in 0..16 {
            h.insert_u64(v);
        }
        assert!(!h.is_large());
        assert_eq!(h.state_len(), h.to_state().len());
        h.insert_u64(16);
        assert!(h.is_large());
        let state = h.to_state();
        assert_eq!(state.len(), LARGE_STATE_BYTES);
        assert_eq!(state.len(), 2651);
        assert_eq!(h.state_len(), 2651);
        assert_eq!(UniqHll12::read_state(&state), Ok(h));
    }

    #[test]
    fn packed_registers_round_trip() {
        let mut large = Large::new();
        for i in 0..REGISTERS {
            large.set(i, (i % 22) as u8);
        }
        for i in 0..REGISTERS {
            assert_eq!(large.get(i), (i % 22) as u8, "register {i}");
        }
    }

    #[test]
    fn read_state_rejects_bad_input() {
        assert!(matches!(UniqHll12::read_state(&[]), Err(SketchError::Truncated { .. })));
        assert_eq!(UniqHll12::read_state(&[2, 0]), Err(SketchError::HllBadForm { form: 2 }));
        assert_eq!(UniqHll12::read_state(&[0, 17]), Err(SketchError::HllSmallSetTooLarge { len: 17 }));
        let mut dup = vec![0u8, 2];
        dup.extend_from_slice(&7u64.to_le_bytes());
        dup.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(UniqHll12::read_state(&dup), Err(SketchError::HllDuplicateKey { key: 7 }));
        assert!(matches!(UniqHll12::read_state(&[0, 1, 1, 2]), Err(SketchError::Truncated { .. })));
        assert!(matches!(UniqHll12::read_state(&[0, 0, 0]), Err(SketchError::TrailingBytes { .. })));

        let mut h = UniqHll12::new();
        for v in 0..1000 {
            h.insert_u64(v);
        }
        let good = h.to_state();
        assert!(matches!(UniqHll12::read_state(&good[..good.len() - 1]), Err(SketchError::Truncated { .. })));
        // Corrupt the histogram entry for rank 1.
        let mut bad = good.clone();
        bad[1 + PACKED_BYTES + 4] ^= 1;
        assert!(matches!(UniqHll12::read_state(&bad), Err(SketchError::HllHistogramMismatch { rank: 1, .. })));
        // Corrupt the zero count.
        let mut bad = good.clone();
        bad[LARGE_STATE_BYTES - 2] ^= 1;
        assert!(matches!(UniqHll12::read_state(&bad), Err(SketchError::HllZeroCountMismatch { .. })));
        // A register of rank 31.
        let mut bad = good;
        bad[1] |= 0x1f;
        assert!(matches!(UniqHll12::read_state(&bad), Err(SketchError::HllRankOutOfRange { index: 0, rank: 31 })));
    }

    #[test]
    fn merge_small_into_small_keeps_insertion_order() {
        let mut a = UniqHll12::new();
        a.insert_u64(5);
        a.insert_u64(1);
        let mut b = UniqHll12::new();
        b.insert_u64(1);
        b.insert_u64(9);
        a.merge(&b);
        let mut expected = vec![0u8, 3];
        for v in [5u64, 1, 9] {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(a.to_state(), expected);
    }

    /// ClickHouse's two forms and nothing else: the small set, then the full array with
    /// the small keys inserted in order. An oracle for the compact in-memory forms.
    fn reference_state(keys: &[u64]) -> Vec<u8> {
        let mut small: Vec<u64> = Vec::new();
        let mut large: Option<Large> = None;
        for &key in keys {
            if let Some(large) = &mut large {
                large.insert(key);
            } else if !small.contains(&key) {
                if small.len() < SMALL_CAPACITY {
                    small.push(key);
                } else {
                    let mut l = Large::new();
                    for &k in small.iter().chain([&key]) {
                        l.insert(k);
                    }
                    large = Some(l);
                }
            }
        }
        let mut out = Vec::new();
        match large {
            Some(large) => large.write(&mut out),
            None => {
                out.push(0);
                write_varuint(small.len() as u64, &mut out);
                for key in small {
                    out.extend_from_slice(&key.to_le_bytes());
                }
            }
        }
        out
    }

    fn sketch_of(keys: &[u64]) -> UniqHll12 {
        let mut h = UniqHll12::new();
        for &key in keys {
            h.insert_u64(key);
        }
        h
    }

    /// Every count across the forms (one key, small set, sparse registers as they grow,
    /// the full array), with repeated keys: the same bytes and estimate as ClickHouse's two
    /// forms, and a state that reads back equal.
    #[test]
    fn every_form_writes_clickhouses_state() {
        let sizes = (0..=40).chain([63, 64, 72, 73, 95, 96, 97, 98, 100, 150, 192, 193, 250, 400, 3_000]);
        for n in sizes {
            let keys: Vec<u64> = (0..n).map(|i| crate::sketch::int_hash64(i / 2 * 7 + 1)).collect();
            let h = sketch_of(&keys);
            let expected = reference_state(&keys);
            assert_eq!(h.to_state(), expected, "{n} keys");
            assert_eq!(h.state_len(), expected.len(), "{n} keys");
            let read = UniqHll12::read_state(&expected).expect("reference state reads");
            assert_eq!(h.estimate(), read.estimate(), "{n} keys");
            assert_eq!(read, h, "{n} keys: read back equals the compact form");
        }
    }

    #[test]
    fn sparse_registers_give_way_to_the_array_past_their_bound() {
        let mut h = UniqHll12::new();
        let mut n = 0u64;
        while !matches!(h.repr, Repr::Large(_)) {
            assert!(n < 10_000, "still sparse after {n} keys");
            h.insert_u64(crate::sketch::int_hash64(n));
            if let Repr::Sparse(sparse) = &h.repr {
                assert!(sparse.len() <= SPARSE_MAX_REGISTERS);
                assert!(sparse.len() * 4 <= (sparse.slots.len() - 1) * 3, "at most three quarters full");
            }
            n += 1;
        }
        // The array took over with one register more than the sparse form holds.
        let zeros = match &h.repr {
            Repr::Large(large) => large.zeros,
            _ => 0,
        };
        assert_eq!(REGISTERS - usize::from(zeros), SPARSE_MAX_REGISTERS + 1);
    }

    proptest::proptest! {
        /// Merges across every pair of forms equal the reference merge: keys of a small
        /// `b` inserted in order, registers combined by maximum.
        #[test]
        fn merges_of_every_form_equal_clickhouses(
            a in proptest::collection::vec(0u64..5_000, 0..600),
            b in proptest::collection::vec(0u64..5_000, 0..600),
        ) {
            let (a, b): (Vec<u64>, Vec<u64>) = (
                a.iter().map(|&k| crate::sketch::int_hash64(k)).collect(),
                b.iter().map(|&k| crate::sketch::int_hash64(k)).collect(),
            );
            let mut merged = sketch_of(&a);
            merged.merge(&sketch_of(&b));
            let mut oracle = UniqHll12::read_state(&reference_state(&a)).expect("reads");
            oracle.merge(&UniqHll12::read_state(&reference_state(&b)).expect("reads"));
            proptest::prop_assert_eq!(merged.to_state(), oracle.to_state());
            proptest::prop_assert_eq!(merged.estimate(), oracle.estimate());
        }
    }

    #[test]
    fn estimate_is_close_for_many_keys() {
        let mut h = UniqHll12::new();
        for v in 0..100_000u64 {
            h.insert_u64(crate::sketch::int_hash64(v));
        }
        let e = h.estimate() as f64;
        assert!((e - 100_000.0).abs() / 100_000.0 < 0.05, "estimate {e}");
    }
}

//! `topK(k)` for `String`: ClickHouse 18.16's Filtered Space-Saving state, compatible.
//!
//! This mirrors `SpaceSaving<StringRef, StringRefHash>` and `AggregateFunctionTopKGeneric` as
//! shipped in ClickHouse 18.16:
//!
//! - capacity (`reserved`) is `3 · k` counters (`TOP_K_LOAD_FACTOR`); the alpha map has
//!   `nextAlphaSize(capacity) = 2^(64 - clz(6 · capacity))` slots (64 for k = 3, 256 for
//!   k = 10) and a key's slot is `StringRefHash(key) & (slots - 1)`;
//! - counters are kept in a list sorted by (count desc, error asc), each change "percolating"
//!   a counter up past strictly smaller neighbours only, so ties keep their arrival order;
//! - an unknown key arriving at a full set is folded into its alpha slot unless
//!   `alpha + weight ≥ min.count`, in which case it replaces the minimum counter with count
//!   `alpha + weight` and error `alpha` (after the minimum's count was stored in the
//!   minimum's own alpha slot: when both keys share a slot the new one inherits it);
//! - merge is the Parallel Space-Saving combine with truncation to capacity, as ClickHouse
//!   does it from 19.x on (see [`TopK::merge`]); 18.16's insert-based merge is not
//!   reproduced. Counts wrap modulo 2^64 as in C++ (the `error - m2` step relies on it).
//!
//! State bytes: `VarUInt` counter count, per counter in list order (`VarUInt` key length,
//! key bytes, `VarUInt` count, `VarUInt` error), then `VarUInt` alpha-map size and that many
//! `VarUInt` alphas. Capacity is not stored; a reader must know `k`.
//!
//! Compatibility notes (all measured on 18.16.1):
//!
//! - Byte identity with `topKState(k)` for the same inputs in the same order holds as long
//!   as 18.16's counter map finds every monitored key, which is always the case while no
//!   counter has been evicted (at most `3k` distinct keys), and is lost after evictions
//!   sooner or later. The cause is a bug in 18.16, not hash-order dependence: when it evicts
//!   the minimum, `SpaceSaving::insert` re-keys the evicted key's cell in its open-addressing
//!   `HashMap` and moves it with `HashTable::reinsert`, a helper meant for resizing that
//!   leaves a hole in the linear-probing chain. Keys stored behind the hole can no longer be
//!   found: their next occurrence is treated as a new key (alpha path or a second counter for
//!   the same key, so 18.16 states can list a key twice), and evicting such a key is
//!   skipped. A model of that hash table (`HashTableGrower<4>`, linear probing,
//!   `reinsert`) reproduced the server's states exactly in our investigation; [`TopK`] keeps
//!   an exact index instead, so its counts are never worse than the server's. The alpha
//!   slots use `StringRefHash` exactly as 18.16 does, so without lost keys the bytes match.
//!   A server aggregating in several threads also merges partial states in an unspecified
//!   order, so only single-threaded, ordered aggregation is comparable at all.
//! - An empty `topKState(k)` from the server has a 64-slot alpha map whatever `k` (its
//!   default-constructed set never got resized); an empty [`TopK`] writes its usual
//!   `nextAlphaSize(3k)` zeros. Both read back as empty.
//! - 18.16 merges into a default-constructed set of capacity 10 (never resized), so
//!   `topKMerge(k)` and `topKMergeState(k)` on that server keep at most 10 counters whatever
//!   `k`; with the insert-based merge and the lost-key bug above, its merged top items can
//!   be plainly wrong even for one input state (see the crate's integration tests). Merge
//!   top-k partial states in Gallop, or on a newer server, when accuracy matters.
//! - 18.16 appends the stored alpha map to a freshly sized one when it reads a state, so a
//!   state it re-serializes (e.g. selecting an `AggregateFunction` column) carries
//!   `nextAlphaSize(3k) + stored` alphas, the first ones zero. [`TopK::read_state`] folds an
//!   alpha map of any size onto its own slots by `index & (slots - 1)`, keeping the maximum,
//!   which recovers the original map from such a state.
//! - 18.16 re-inserts the counters of every state it reads; states with more than `3k`
//!   counters would be truncated through the alpha path there, so [`TopK`] never writes more
//!   and [`TopK::read_state`] rejects them.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::hash::string_ref_hash;
use gallop_codec::CLICKHOUSE_VARUINT_MAX;

use super::state_bytes::{write_varuint, Reader};
use super::SketchError;

/// ClickHouse's `TOP_K_LOAD_FACTOR`: counters kept per requested item.
const LOAD_FACTOR: usize = 3;
/// ClickHouse's `TOP_K_MAX_SIZE`.
const MAX_K: usize = 0xFF_FFFF;
const STATE_NAME: &str = "topK state";

/// One monitored key.
#[derive(Clone, Debug)]
struct Counter {
    key: Box<[u8]>,
    hash: u64,
    count: u64,
    error: u64,
    /// Position in `TopK::order`.
    slot: usize,
}

impl Counter {
    /// `SpaceSaving::Counter::operator>`.
    fn greater(&self, other: &Counter) -> bool {
        self.count > other.count || (self.count == other.count && self.error < other.error)
    }
}

/// An item of a [`TopK`] result: key, estimated count, and the maximum overestimation.
pub type TopKItem = (Vec<u8>, u64, u64);

/// The state of ClickHouse's `topK(k)` aggregate function over a `String` argument.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    capacity: usize,
    /// Counter storage; an id is an index here. Counters are never removed, only reused.
    counters: Vec<Counter>,
    /// Counter ids, sorted as ClickHouse's `counter_list`.
    order: Vec<usize>,
    /// Key to counter id. At most `capacity` keys, so foldhash (randomly seeded per
    /// sketch) rather than SipHash: this lookup runs per event per leaderboard.
    index: HashMap<Box<[u8]>, usize, RandomState>,
    alpha: Vec<u64>,
}

/// `SpaceSaving::nextAlphaSize`.
fn next_alpha_size(capacity: usize) -> usize {
    let x = (capacity as u64).saturating_mul(6);
    1usize << (64 - x.leading_zeros())
}

impl TopK {
    /// A sketch for `topK(k)`: `3k` counters. Fails for `k == 0` or `k > 0xFFFFFF`, which
    /// ClickHouse rejects as well.
    pub fn new(k: usize) -> Result<Self, SketchError> {
        if k == 0 || k > MAX_K {
            return Err(SketchError::TopKBadK { k, max: MAX_K });
        }
        let capacity = LOAD_FACTOR * k;
        Ok(Self {
            k,
            capacity,
            counters: Vec::new(),
            order: Vec::new(),
            index: HashMap::default(),
            alpha: vec![0; next_alpha_size(capacity)],
        })
    }

    /// The `k` this sketch answers for.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of monitored keys (at most `3k`).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Counts one occurrence of `key`.
    pub fn insert(&mut self, key: &[u8]) {
        self.insert_with_error(key, 1, 0);
    }

    /// Counts `weight` occurrences of `key` (ClickHouse's `insert(key, increment)`).
    pub fn insert_weighted(&mut self, key: &[u8], weight: u64) {
        self.insert_with_error(key, weight, 0);
    }

    /// `SpaceSaving::insert(key, increment, error)`.
    fn insert_with_error(&mut self, key: &[u8], increment: u64, error: u64) {
        if let Some(&id) = self.index.get(key) {
            let c = &mut self.counters[id];
            c.count = c.count.wrapping_add(increment);
            c.error = c.error.wrapping_add(error);
            self.percolate(id);
            return;
        }
        let hash = string_ref_hash(key);
        if self.order.len() < self.capacity {
            self.push(key.into(), hash, increment, error);
            return;
        }
        let Some(&min_id) = self.order.last() else {
            return; // capacity is at least 3, so a full set is never empty
        };
        let mask = self.alpha.len() - 1;
        let slot = (hash as usize) & mask;
        let min_count = self.counters[min_id].count;
        if self.alpha[slot].wrapping_add(increment) < min_count {
            self.alpha[slot] = self.alpha[slot].wrapping_add(increment);
            return;
        }
        // The minimum's count goes to its own slot first; the newcomer then reads its slot,
        // which may be that same slot.
        let min_slot = (self.counters[min_id].hash as usize) & mask;
        self.alpha[min_slot] = min_count;
        let alpha = self.alpha[slot];

        let new_key: Box<[u8]> = key.into();
        let c = &mut self.counters[min_id];
        let old_key = std::mem::replace(&mut c.key, new_key.clone());
        c.hash = hash;
        c.count = alpha.wrapping_add(increment);
        c.error = alpha.wrapping_add(error);
        self.index.remove(&old_key);
        self.index.insert(new_key, min_id);
        self.percolate(min_id);
    }

    fn push(&mut self, key: Box<[u8]>, hash: u64, count: u64, error: u64) {
        let id = self.counters.len();
        let slot = self.order.len();
        self.counters.push(Counter { key: key.clone(), hash, count, error, slot });
        self.order.push(id);
        self.index.insert(key, id);
        self.percolate(id);
    }

    /// One bubble-sort step upwards, past strictly smaller counters only.
    fn percolate(&mut self, id: usize) {
        loop {
            let slot = self.counters[id].slot;
            if slot == 0 {
                return;
            }
            let prev = self.order[slot - 1];
            if !self.counters[id].greater(&self.counters[prev]) {
                return;
            }
            self.order.swap(slot - 1, slot);
            self.counters[id].slot = slot - 1;
            self.counters[prev].slot = slot;
        }
    }

    /// Merges `other` into `self` with the Parallel Space-Saving combine (the form later
    /// ClickHouse releases use): `m1`/`m2` are the minimum counts of `self`/`other` when
    /// full; own counters get `+m2`; a key known to both gets the other's count and error
    /// added (net of that `m2`); an unknown key joins with `+m1`; the union is sorted by
    /// (count desc, error asc), ties kept in order, and truncated to `self`'s capacity. The
    /// alpha maps are left alone.
    ///
    /// 18.16's own merge instead re-inserts the other side's counters one by one through the
    /// alpha path, which inflates alphas with every merge and turns long-tail keys into
    /// counters with huge errors; its result is not reproduced here.
    pub fn merge(&mut self, other: &TopK) {
        let m1 = match self.order.last() {
            Some(&id) if self.order.len() == self.capacity => self.counters[id].count,
            _ => 0,
        };
        let m2 = match other.order.last() {
            Some(&id) if other.order.len() == other.capacity => other.counters[id].count,
            _ => 0,
        };
        if m2 > 0 {
            for &id in &self.order {
                let c = &mut self.counters[id];
                c.count = c.count.wrapping_add(m2);
                c.error = c.error.wrapping_add(m2);
            }
        }
        for &id in other.order.iter().rev() {
            let theirs = &other.counters[id];
            if let Some(&mine) = self.index.get(&theirs.key) {
                let c = &mut self.counters[mine];
                c.count = c.count.wrapping_add(theirs.count.wrapping_sub(m2));
                c.error = c.error.wrapping_add(theirs.error.wrapping_sub(m2));
            } else {
                let new_id = self.counters.len();
                self.counters.push(Counter {
                    key: theirs.key.clone(),
                    hash: theirs.hash,
                    count: theirs.count.wrapping_add(m1),
                    error: theirs.error.wrapping_add(m1),
                    slot: self.order.len(),
                });
                self.order.push(new_id);
                self.index.insert(theirs.key.clone(), new_id);
            }
        }
        let counters = &self.counters;
        self.order.sort_by(|&a, &b| {
            let (a, b) = (&counters[a], &counters[b]);
            b.count.cmp(&a.count).then(a.error.cmp(&b.error))
        });
        if self.order.len() > self.capacity {
            for &id in &self.order[self.capacity..] {
                self.index.remove(&self.counters[id].key);
            }
            self.order.truncate(self.capacity);
        }
        // Compact storage so dropped counters do not linger.
        let mut counters = Vec::with_capacity(self.order.len());
        for (slot, id) in self.order.iter_mut().enumerate() {
            let mut c = self.counters[*id].clone();
            c.slot = slot;
            counters.push(c);
            *id = slot;
        }
        self.counters = counters;
        for (id, c) in self.counters.iter().enumerate() {
            if let Some(entry) = self.index.get_mut(&c.key) {
                *entry = id;
            }
        }
    }

    /// The top `k` keys, most frequent first, with their estimated counts and errors
    /// (`count - error` is a lower bound of the true count). The keys are what
    /// `topKMerge(k)` returns for this state on a server that keeps `3k` counters.
    pub fn top(&self) -> Vec<TopKItem> {
        self.order
            .iter()
            .take(self.k)
            .map(|&id| {
                let c = &self.counters[id];
                (c.key.to_vec(), c.count, c.error)
            })
            .collect()
    }

    /// Appends the raw state bytes (the value of an `AggregateFunction(topK(k), String)`
    /// column in RowBinary).
    pub fn write_state(&self, out: &mut Vec<u8>) {
        self.write_counters(out);
        write_varuint(self.alpha.len() as u64, out);
        for &a in &self.alpha {
            write_varuint(a, out);
        }
    }

    fn write_counters(&self, out: &mut Vec<u8>) {
        write_varuint(self.order.len() as u64, out);
        for &id in &self.order {
            let c = &self.counters[id];
            write_varuint(c.key.len() as u64, out);
            out.extend_from_slice(&c.key);
            write_varuint(c.count, out);
            write_varuint(c.error, out);
        }
    }

    /// Appends the state as a `topK(k)` state, for a column declared with another `k` than
    /// this sketch's (Gallop's `top` column is `topK(100)` whatever each leaderboard's `k`).
    /// Current servers (26.x) refuse a state whose alpha map is not sized for the column's
    /// `k`, so the map is resized: a larger map gives slot `i` the alpha of slot
    /// `i mod own size`, a smaller one keeps the maximum of the slots folded onto it, so every
    /// key hash still sees at least the alpha it saw here. Fails when the counters do not fit
    /// `topK(k)`.
    pub fn write_state_for(&self, k: usize, out: &mut Vec<u8>) -> Result<(), SketchError> {
        if k == 0 || k > MAX_K {
            return Err(SketchError::TopKBadK { k, max: MAX_K });
        }
        let capacity = LOAD_FACTOR * k;
        if self.order.len() > capacity {
            return Err(SketchError::TopKTooManyCounters { count: self.order.len() as u64, capacity, k });
        }
        let size = next_alpha_size(capacity);
        let mut alpha = vec![0u64; size];
        for (i, &a) in self.alpha.iter().enumerate() {
            let slot = &mut alpha[i & (size - 1)];
            *slot = (*slot).max(a);
        }
        // Both sizes are powers of two; spreading repeats the own map across the larger one.
        for i in self.alpha.len()..size {
            alpha[i] = self.alpha[i & (self.alpha.len() - 1)];
        }
        self.write_counters(out);
        write_varuint(size as u64, out);
        for a in alpha {
            write_varuint(a, out);
        }
        Ok(())
    }

    /// The raw state bytes as a new vector.
    pub fn to_state(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_state(&mut out);
        out
    }

    /// Parses a `topK(k)` state (exactly one, nothing after it). Counters are re-inserted in
    /// stored order as ClickHouse does; the alpha map may have any size (see the module
    /// docs). Fails on truncation, more than `3k` counters, a repeated key, an error larger
    /// than its count, or an invalid `k`.
    pub fn read_state(k: usize, bytes: &[u8]) -> Result<Self, SketchError> {
        let (sketch, used) = Self::read_state_prefix(k, bytes)?;
        if used != bytes.len() {
            return Err(SketchError::TrailingBytes { what: STATE_NAME, offset: used, extra: bytes.len() - used });
        }
        Ok(sketch)
    }

    /// Parses one `topK(k)` state at the start of `bytes`, which may go on with other data
    /// (a column of states in RowBinary), and returns it with the number of bytes it took.
    /// Same checks as [`TopK::read_state`].
    pub fn read_state_prefix(k: usize, bytes: &[u8]) -> Result<(Self, usize), SketchError> {
        let mut sketch = Self::new(k)?;
        let mut reader = Reader::new(bytes, STATE_NAME);
        let n = reader.varuint()?;
        if n > sketch.capacity as u64 {
            return Err(SketchError::TopKTooManyCounters { count: n, capacity: sketch.capacity, k });
        }
        for _ in 0..n {
            let len_offset = reader.offset();
            let len = reader.varuint()?;
            let len = usize::try_from(len).map_err(|_| SketchError::Truncated {
                what: STATE_NAME,
                offset: len_offset,
                needed: usize::MAX,
                available: reader.remaining(),
            })?;
            let key = reader.take(len)?;
            let count = reader.varuint()?;
            let error = reader.varuint()?;
            if error > count {
                return Err(SketchError::TopKErrorAboveCount {
                    key: String::from_utf8_lossy(key).into_owned(),
                    count,
                    error,
                });
            }
            // 18.16 can write a key twice (see the module docs); reading, it adds the
            // second counter to the first, and so does this.
            if let Some(&id) = sketch.index.get(key) {
                let c = &mut sketch.counters[id];
                // The sums must still be a counter ClickHouse can hold (found by fuzzing:
                // wrapping sums gave states that were refused or changed when written back).
                let count_sum = c.count.checked_add(count).filter(|v| *v <= CLICKHOUSE_VARUINT_MAX);
                let error_sum = c.error.checked_add(error).filter(|v| *v <= CLICKHOUSE_VARUINT_MAX);
                match (count_sum, error_sum) {
                    (Some(count), Some(error)) if error <= count => {
                        c.count = count;
                        c.error = error;
                    }
                    _ => {
                        return Err(SketchError::TopKRepeatedKeyOverflow {
                            key: String::from_utf8_lossy(key).into_owned(),
                        })
                    }
                }
                sketch.percolate(id);
            } else {
                sketch.push(key.into(), string_ref_hash(key), count, error);
            }
        }
        let alpha_size = reader.varuint()?;
        // Every alpha takes at least one byte: reject sizes the input cannot hold before
        // looping.
        if alpha_size > reader.remaining() as u64 {
            return Err(SketchError::Truncated {
                what: STATE_NAME,
                offset: reader.offset(),
                needed: usize::try_from(alpha_size).unwrap_or(usize::MAX),
                available: reader.remaining(),
            });
        }
        let mask = sketch.alpha.len() - 1;
        for i in 0..alpha_size as usize {
            let a = reader.varuint()?;
            let slot = &mut sketch.alpha[i & mask];
            *slot = (*slot).max(a);
        }
        Ok((sketch, reader.offset()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_whose_counters_overflow_is_refused() {
        // One counter map listing key "a" twice (18.16 can write a key twice): counts that
        // sum past 2^63 - 1, and errors that sum past the counts. Found by fuzzing.
        let state = |count: u64, error: u64| {
            let mut out = Vec::new();
            write_varuint(2, &mut out);
            for _ in 0..2 {
                write_varuint(1, &mut out);
                out.push(b'a');
                write_varuint(count, &mut out);
                write_varuint(error, &mut out);
            }
            write_varuint(0, &mut out);
            out
        };
        let fine = TopK::read_state(1, &state(5, 1)).expect("counters add up");
        assert_eq!(fine.top(), [(b"a".to_vec(), 10, 2)]);
        for (count, error) in [(CLICKHOUSE_VARUINT_MAX, 0), (CLICKHOUSE_VARUINT_MAX / 2 + 1, 0)] {
            let err = TopK::read_state(1, &state(count, error)).expect_err("sum past 2^63 - 1");
            assert!(matches!(err, SketchError::TopKRepeatedKeyOverflow { .. }), "{err}");
        }
    }

    #[test]
    fn alpha_sizes_match_clickhouse() {
        assert_eq!(next_alpha_size(9), 64);
        assert_eq!(next_alpha_size(10), 64);
        assert_eq!(next_alpha_size(30), 256);
    }

    #[test]
    fn rejects_bad_k() {
        assert!(TopK::new(0).is_err());
        assert!(TopK::new(MAX_K + 1).is_err());
    }

    /// `SELECT topKState(3)(toString(number % 5)) FROM numbers(100) FORMAT RowBinary`.
    #[test]
    fn matches_clickhouse_sample_without_evictions() {
        let mut t = TopK::new(3).expect("valid k");
        for n in 0..100u64 {
            t.insert((n % 5).to_string().as_bytes());
        }
        let mut expected = vec![5u8];
        for d in b"01234" {
            expected.extend_from_slice(&[1, *d, 20, 0]);
        }
        expected.push(64);
        expected.extend_from_slice(&[0; 64]);
        assert_eq!(t.to_state(), expected);
        assert_eq!(TopK::read_state(3, &expected).expect("valid state").to_state(), expected);
    }

    #[test]
    fn top_is_sorted_and_bounded() {
        let mut t = TopK::new(2).expect("valid k");
        for (key, n) in [("a", 5), ("b", 9), ("c", 1), ("d", 7)] {
            t.insert_weighted(key.as_bytes(), n);
        }
        let top = t.top();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (b"b".to_vec(), 9, 0));
        assert_eq!(top[1], (b"d".to_vec(), 7, 0));
    }

    #[test]
    fn read_state_validates() {
        let mut t = TopK::new(1).expect("valid k");
        for key in ["x", "y", "z"] {
            t.insert(key.as_bytes());
        }
        let good = t.to_state();
        assert!(TopK::read_state(1, &good).is_ok());
        assert!(matches!(TopK::read_state(1, &good[..good.len() - 1]), Err(SketchError::Truncated { .. })));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(TopK::read_state(1, &trailing), Err(SketchError::TrailingBytes { .. })));
        // Four counters do not fit topK(1) (capacity 3).
        let mut big = TopK::new(2).expect("valid k");
        for key in ["a", "b", "c", "d"] {
            big.insert(key.as_bytes());
        }
        assert!(matches!(TopK::read_state(1, &big.to_state()), Err(SketchError::TopKTooManyCounters { count: 4, .. })));
        // A repeated key is added up, as ClickHouse does when it reads such a state.
        let dup = [3u8, 1, b'a', 1, 0, 1, b'b', 2, 0, 1, b'a', 2, 1, 0];
        let t = TopK::read_state(1, &dup).expect("duplicates are accepted");
        assert_eq!(t.len(), 2);
        assert_eq!(t.top(), vec![(b"a".to_vec(), 3, 1)]);
        let bad_error = [1u8, 1, b'a', 1, 2, 0];
        assert!(matches!(TopK::read_state(1, &bad_error), Err(SketchError::TopKErrorAboveCount { .. })));
        // A huge alpha size with no bytes behind it fails fast.
        let huge_alpha = [0u8, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(TopK::read_state(1, &huge_alpha), Err(SketchError::Truncated { .. })));
    }

    #[test]
    fn folds_a_doubled_alpha_map() {
        // 18.16 re-serializes a topK(3) state with 64 zero alphas followed by the 64 stored.
        let mut state = vec![0u8, 128, 1];
        state.extend_from_slice(&[0; 64]);
        let mut stored = [0u8; 64];
        stored[5] = 7;
        state.extend_from_slice(&stored);
        let t = TopK::read_state(3, &state).expect("valid state");
        let mut expected = vec![0u8, 64];
        expected.extend_from_slice(&stored);
        assert_eq!(t.to_state(), expected);
    }

    #[test]
    fn a_state_resized_for_another_k_keeps_counters_and_alphas() {
        let mut small = TopK::new(3).expect("valid k");
        for i in 0..200u32 {
            small.insert(format!("key{}", i % 40).as_bytes());
        }
        assert!(small.alpha.iter().any(|&a| a > 0), "evictions filled the alpha map");
        let mut wide = Vec::new();
        small.write_state_for(100, &mut wide).expect("9 counters fit topK(100)");
        let read = TopK::read_state(100, &wide).expect("a valid topK(100) state");
        assert_eq!(read.alpha.len(), next_alpha_size(300));
        assert_eq!(read.len(), small.len());
        assert_eq!(read.top()[..3], small.top()[..]);
        // Every slot of the wide map holds the alpha its hash saw in the small one.
        let mask = small.alpha.len() - 1;
        assert!(read.alpha.iter().enumerate().all(|(i, &a)| a == small.alpha[i & mask]));
        // Folding back onto the small size gives the original state.
        assert_eq!(TopK::read_state(3, &wide).expect("folds").to_state(), small.to_state());
        let mut same = Vec::new();
        small.write_state_for(3, &mut same).expect("same k");
        assert_eq!(same, small.to_state());
        // Narrower: 9 counters do not fit topK(2).
        assert!(matches!(small.write_state_for(2, &mut Vec::new()), Err(SketchError::TopKTooManyCounters { .. })));
    }
}

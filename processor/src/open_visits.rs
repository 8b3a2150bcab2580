//! [`OpenVisits`]: the open visits by (site id, visitor), in slots of one vector, with each
//! visit's times copied into a dense array of [`Clock`]s.
//!
//! A processor holds up to `processor.max_open_sessions` visits (half a million by
//! default), and when they are that many it ends the idlest eighth to make room. In a hash
//! map of the visits themselves (about 120 bytes each, the table half empty) every such
//! pass read the whole table, about 120 MB, to find them: a tenth of `gallop process`'s time
//! in a profile of a stream with a million visitors in five minutes. Here a pass reads 24
//! bytes per visit, and the hash table holds 8-byte (hash, slot) entries, so growing it
//! moves 8 bytes per visit instead of 120, and looking up a visitor who has no open visit
//! reads no visit at all.
//!
//! A removed visit leaves a free slot, taken by the next new visit; slots never move, so
//! the table's slot numbers stay valid.

use std::hash::BuildHasher as _;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

/// A visit's key: (site id, visitor).
pub(crate) type Key = (u32, u64);

/// The times of an open visit that decide when it expires and how idle it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    /// Latest event time, ms.
    pub(crate) last_ts: i64,
    /// Earliest event time, ms.
    pub(crate) first_ts: i64,
    /// Partition whose events make up the visit.
    pub(crate) partition: u32,
    /// False for a free slot: a pass over the clocks reads nothing else.
    live: bool,
}

impl Clock {
    /// The clock of a live visit.
    pub(crate) fn new(partition: u32, first_ts: i64, last_ts: i64) -> Self {
        Self { last_ts, first_ts, partition, live: true }
    }
}

/// What the table needs of a visit: the times that decide when it expires (the visits
/// themselves are the `session` module's).
pub(crate) trait Timed {
    /// The visit's clock.
    fn clock(&self) -> Clock;
}

/// An entry of the hash table: 32 bits of the key's hash (for growing without reading
/// keys) and the slot; 8 bytes, so that the table of half a million visits takes about
/// 9 MB with its control bytes, not 120.
#[derive(Clone, Copy)]
struct Entry {
    hash: u32,
    slot: u32,
}

/// The table's 64-bit hash of a stored 32-bit one: hashbrown places an entry by the low
/// bits and tags it with the top 7, and an odd multiplier carries the stored bits to both.
fn spread(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The open visits; see the module documentation.
pub(crate) struct OpenVisits<Open> {
    hasher: FixedState,
    index: HashTable<Entry>,
    /// Per slot: the key, and the visit (`None` for a free slot).
    slots: Vec<(Key, Option<Open>)>,
    /// Per slot: the visit's clock (not `live` for a free slot).
    clocks: Vec<Clock>,
    /// Free slots, taken before new ones are added.
    free: Vec<u32>,
}

impl<Open> Default for OpenVisits<Open> {
    fn default() -> Self {
        Self {
            hasher: FixedState::default(),
            index: HashTable::new(),
            slots: Vec::new(),
            clocks: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<Open: Timed> OpenVisits<Open> {
    /// Visits held.
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The stored hash of `key`.
    fn hash(&self, key: &Key) -> u32 {
        // The top half: foldhash mixes best there.
        (self.hasher.hash_one(key) >> 32) as u32
    }

    /// The slot of `key`'s visit.
    fn find(&self, key: &Key) -> Option<u32> {
        let hash = self.hash(key);
        let slots = &self.slots;
        self.index.find(spread(hash), |e| e.hash == hash && slots[e.slot as usize].0 == *key).map(|e| e.slot)
    }

    /// Runs `f` on `key`'s visit, if open, then takes the visit's clock anew (so `f` may
    /// change its times).
    pub(crate) fn update<R>(&mut self, key: &Key, f: impl FnOnce(&mut Open) -> R) -> Option<R> {
        let slot = self.find(key)? as usize;
        let open = self.slots[slot].1.as_mut()?;
        let result = f(open);
        self.clocks[slot] = open.clock();
        Some(result)
    }

    /// Holds `open` as `key`'s visit, replacing the one it had.
    pub(crate) fn insert(&mut self, key: Key, open: Open) {
        if let Some(slot) = self.find(&key) {
            self.clocks[slot as usize] = open.clock();
            self.slots[slot as usize].1 = Some(open);
            return;
        }
        self.add(key, open);
    }

    /// Holds `open` as the visit of `key`, which holds none (the caller just looked: a new
    /// visit is most events' case, and a second probe of the table was wasted work).
    pub(crate) fn add(&mut self, key: Key, open: Open) {
        debug_assert!(self.find(&key).is_none(), "{key:?} holds a visit already");
        let clock = open.clock();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = (key, Some(open));
                self.clocks[slot as usize] = clock;
                slot
            }
            None => {
                // Slots are bounded by `processor.max_open_sessions` plus restored visits,
                // far below u32::MAX.
                let slot = self.slots.len() as u32;
                self.slots.push((key, Some(open)));
                self.clocks.push(clock);
                slot
            }
        };
        let hash = self.hash(&key);
        self.index.insert_unique(spread(hash), Entry { hash, slot }, |e| spread(e.hash));
    }

    /// Ends the visit in `slot`: returns its key and state, and frees the slot.
    fn take(&mut self, slot: u32) -> Option<(Key, Open)> {
        let (key, open) = self.slots.get_mut(slot as usize)?;
        let open = open.take()?;
        let key = *key;
        self.clocks[slot as usize].live = false;
        let hash = self.hash(&key);
        if let Ok(entry) = self.index.find_entry(spread(hash), |e| e.slot == slot) {
            entry.remove();
        }
        self.free.push(slot);
        Some((key, open))
    }

    /// Every open visit's slot and clock, in slot order (a pass over the clocks only).
    pub(crate) fn clocks(&self) -> impl Iterator<Item = (u32, Clock)> + '_ {
        // Slot numbers fit u32 (see `insert`).
        self.clocks.iter().enumerate().filter(|(_, clock)| clock.live).map(|(slot, clock)| (slot as u32, *clock))
    }

    /// Ends the visits in `slots` (free slots are skipped), handing each to `ended`.
    pub(crate) fn end(&mut self, slots: impl IntoIterator<Item = u32>, mut ended: impl FnMut(Key, Open)) {
        for slot in slots {
            if let Some((key, open)) = self.take(slot) {
                ended(key, open);
            }
        }
    }

    /// Keeps the visits for which `keep` returns true (it may change them), in slot order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Key, &mut Open) -> bool) {
        for slot in 0..self.slots.len() {
            let (key, open) = &mut self.slots[slot];
            let Some(visit) = open else { continue };
            if keep(key, visit) {
                self.clocks[slot] = visit.clock();
            } else {
                // Slot numbers fit u32 (see `insert`).
                self.take(slot as u32);
            }
        }
    }

    /// Every open visit with its key, in slot order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &Open)> {
        self.slots.iter().filter_map(|(key, open)| open.as_ref().map(|open| (key, open)))
    }

    /// Every open visit, to change anything but its times, in slot order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Open> {
        self.slots.iter_mut().filter_map(|(_, open)| open.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A visit that is its times and nothing else.
    #[derive(Debug)]
    struct Visit {
        partition: u32,
        first_ts: i64,
        last_ts: i64,
    }

    impl Timed for Visit {
        fn clock(&self) -> Clock {
            Clock::new(self.partition, self.first_ts, self.last_ts)
        }
    }

    fn visit(partition: u32, first_ts: i64, last_ts: i64) -> Visit {
        Visit { partition, first_ts, last_ts }
    }

    /// One step of a model run: which key (of a few, so that keys come back) and what.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, i64),
        Update(u8, i64),
        End(u8),
        RetainAfter(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (any::<u8>(), 0..1_000i64).prop_map(|(k, t)| Step::Insert(k % 40, t)),
            3 => (any::<u8>(), 0..1_000i64).prop_map(|(k, t)| Step::Update(k % 40, t)),
            2 => any::<u8>().prop_map(|k| Step::End(k % 40)),
            1 => (0..1_000i64).prop_map(Step::RetainAfter),
        ]
    }

    fn key(k: u8) -> Key {
        (u32::from(k % 3), u64::from(k) * 0x9e37_79b9)
    }

    proptest! {
        /// Against a plain map: the same visits, the same clocks, after any steps.
        #[test]
        fn holds_what_a_map_holds(steps in proptest::collection::vec(step(), 0..300)) {
            let mut visits = OpenVisits::default();
            let mut model: HashMap<Key, (i64, i64)> = HashMap::new();
            for step in steps {
                match step {
                    Step::Insert(k, t) => {
                        visits.insert(key(k), visit(u32::from(k), t, t));
                        model.insert(key(k), (t, t));
                    }
                    Step::Update(k, t) => {
                        let found = visits.update(&key(k), |open| {
                            open.last_ts = open.last_ts.max(t);
                            open.first_ts = open.first_ts.min(t);
                        });
                        let expected = model.get_mut(&key(k)).map(|(first, last)| {
                            (*first, *last) = ((*first).min(t), (*last).max(t));
                        });
                        prop_assert_eq!(found, expected);
                    }
                    Step::End(k) => {
                        let slot = visits.find(&key(k));
                        let mut ended = Vec::new();
                        visits.end(slot, |key, open| ended.push((key, open.first_ts, open.last_ts)));
                        let expected = model.remove(&key(k)).map(|(first, last)| (key(k), first, last));
                        prop_assert_eq!(ended, expected.into_iter().collect::<Vec<_>>());
                    }
                    Step::RetainAfter(t) => {
                        visits.retain(|_, open| open.last_ts >= t);
                        model.retain(|_, (_, last)| *last >= t);
                    }
                }
                prop_assert_eq!(visits.len(), model.len());
                let mut held: Vec<(Key, i64, i64)> =
                    visits.iter().map(|(k, open)| (*k, open.first_ts, open.last_ts)).collect();
                held.sort_unstable();
                let mut clocks: Vec<(Key, i64, i64)> = visits
                    .clocks()
                    .map(|(slot, clock)| (visits.slots[slot as usize].0, clock.first_ts, clock.last_ts))
                    .collect();
                clocks.sort_unstable();
                let mut expected: Vec<(Key, i64, i64)> = model.iter().map(|(k, (f, l))| (*k, *f, *l)).collect();
                expected.sort_unstable();
                prop_assert_eq!(&held, &expected);
                prop_assert_eq!(&clocks, &expected, "the clocks follow the visits");
                for (k, _, _) in &expected {
                    prop_assert!(visits.find(k).is_some());
                }
            }
        }
    }

    #[test]
    fn a_freed_slot_is_taken_by_the_next_visit() {
        let mut visits = OpenVisits::default();
        for k in 0..4 {
            visits.insert(key(k), visit(0, 1, 1));
        }
        let slot = visits.find(&key(1));
        visits.end(slot, |_, _| {});
        visits.insert(key(9), visit(0, 2, 2));
        assert_eq!((visits.slots.len(), visits.len(), visits.find(&key(9))), (4, 4, slot));
        assert_eq!(visits.find(&key(1)), None);
    }
}

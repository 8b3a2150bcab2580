//! [`Interner`]: strings as small stable ids, for the processor's tables and open visits.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::same_bytes::same_bytes;

/// Interned strings with stable ids; `keep` first entries survive [`Interner::reset`].
pub(crate) struct Interner {
    hasher: FixedState,
    /// (hash, id) of every name: the hash skips names that differ, the id finds the name.
    ids: HashTable<(u64, u32)>,
    /// Names by id.
    pub(crate) names: Vec<Box<str>>,
    /// How many of the first names [`Interner::reset`] keeps.
    pub(crate) keep: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Self { hasher: FixedState::with_seed(0x696e_7465_726e), ids: HashTable::new(), names: Vec::new(), keep: 0 }
    }
}

impl Interner {
    /// The id of `name`, interned when new. Names are compared by the processor's inlined
    /// `same_bytes`: a call into libc's `memcmp` per lookup was 2.5 % of a profile of
    /// decode + core (visits intern each new visit's path and source).
    pub(crate) fn id(&mut self, name: &str) -> u32 {
        let hash = self.hasher.hash_one(name);
        let names = &self.names;
        let found = self.ids.find(hash, |&(h, id)| {
            h == hash && names.get(id as usize).is_some_and(|n| same_bytes(n.as_bytes(), name.as_bytes()))
        });
        if let Some(&(_, id)) = found {
            return id;
        }
        // More than u32::MAX distinct names would need more memory than the bounds on
        // live keys and open visits allow.
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert_unique(hash, (hash, id), |&(h, _)| h);
        id
    }

    /// The name of `id` (empty for an id never handed out).
    pub(crate) fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }

    /// Forgets everything but the first `keep` names.
    pub(crate) fn reset(&mut self) {
        let keep = self.keep;
        self.names.truncate(keep);
        self.ids.retain(|&mut (_, id)| (id as usize) < keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_reset_keeps_the_first() {
        let mut interner = Interner::default();
        let (a, b) = (interner.id("/a"), interner.id("/b"));
        assert_eq!((a, b), (0, 1));
        assert_eq!(interner.id(&String::from("/a")), a, "equal bytes elsewhere, same id");
        assert_eq!(interner.name(b), "/b");
        interner.keep = 1;
        interner.reset();
        assert_eq!(interner.names.len(), 1);
        assert_eq!(interner.id("/a"), a, "kept");
        assert_eq!(interner.id("/c"), 1, "a forgotten id is handed out again");
        assert_eq!(interner.id("/b"), 2, "a forgotten name is new");
        assert_eq!(interner.name(9), "");
    }
}

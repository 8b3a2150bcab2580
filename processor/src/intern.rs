//! [`Interner`]: strings as small stable ids, for the processor's tables and open visits.

use std::collections::HashMap;

use foldhash::fast::FixedState;

/// Interned strings with stable ids; `keep` first entries survive [`Interner::reset`].
#[derive(Default)]
pub(crate) struct Interner {
    ids: HashMap<Box<str>, u32, FixedState>,
    /// Names by id.
    pub(crate) names: Vec<Box<str>>,
    /// How many of the first names [`Interner::reset`] keeps.
    pub(crate) keep: usize,
}

impl Interner {
    /// The id of `name`, interned when new.
    pub(crate) fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        // More than u32::MAX distinct names would need more memory than the bounds on
        // live keys and open visits allow.
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    /// The name of `id` (empty for an id never handed out).
    pub(crate) fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }

    /// Forgets everything but the first `keep` names.
    pub(crate) fn reset(&mut self) {
        for name in self.names.drain(self.keep..) {
            self.ids.remove(&name);
        }
    }
}

//! The daily visitor salt and where it is kept.
//!
//! Every gateway of a deployment must hash a visitor with the same salt on the same day,
//! and nobody may be able to recompute yesterday's hashes: so the salt lives in a store
//! shared by the gateways (a JetStream key-value bucket) and is destroyed once its day is
//! over.

use std::{collections::HashMap, sync::Mutex};

use futures::future::{self, BoxFuture, FutureExt};
use time::Date;

/// 128 random bits that key the visitor hash for one UTC day.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Salt(pub [u8; 16]);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(<redacted>)")
    }
}

impl Salt {
    /// A fresh random salt.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

/// Why the salt could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SaltError {
    /// The store could not be reached or answered with an error.
    #[error("salt store {store}: {reason}")]
    Store {
        /// Which store (bucket name).
        store: String,
        /// What failed.
        reason: String,
    },
    /// The stored value is not a salt.
    #[error("salt store {store}: value for {day} is {len} bytes, expected 16")]
    Corrupt {
        /// Which store.
        store: String,
        /// The day asked for.
        day: Date,
        /// Length found.
        len: usize,
    },
}

/// Keeps one salt per UTC day, shared by every gateway that uses the same store.
pub trait SaltStore: Send + Sync + 'static {
    /// The salt of `day`, made now if nobody made it yet. Two gateways asking at once
    /// get the same salt.
    fn salt_for(&self, day: Date) -> BoxFuture<'_, Result<Salt, SaltError>>;

    /// Destroys the salts of every day before `day`.
    fn forget_before(&self, day: Date) -> BoxFuture<'_, Result<(), SaltError>>;
}

/// A salt store private to this process (single-binary mode, tests).
#[derive(Debug, Default)]
pub struct LocalSaltStore {
    salts: Mutex<HashMap<Date, Salt>>,
}

impl LocalSaltStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SaltStore for LocalSaltStore {
    fn salt_for(&self, day: Date) -> BoxFuture<'_, Result<Salt, SaltError>> {
        let mut salts = self.salts.lock().unwrap_or_else(|p| p.into_inner());
        let salt = *salts.entry(day).or_insert_with(Salt::random);
        future::ready(Ok(salt)).boxed()
    }

    fn forget_before(&self, day: Date) -> BoxFuture<'_, Result<(), SaltError>> {
        self.salts.lock().unwrap_or_else(|p| p.into_inner()).retain(|d, _| *d >= day);
        future::ready(Ok(())).boxed()
    }
}

/// The key a store keeps `day`'s salt under, e.g. `day-2026-11-23` (a valid JetStream KV
/// key and Kafka record key); every adapter uses it, so stores agree on it.
pub fn salt_key(day: Date) -> String {
    format!("day-{:04}-{:02}-{:02}", day.year(), u8::from(day.month()), day.day())
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[tokio::test]
    async fn local_store_keeps_one_salt_per_day_and_forgets() {
        let store = LocalSaltStore::new();
        let a = store.salt_for(date!(2026 - 11 - 23)).await.expect("salt");
        assert_eq!(a, store.salt_for(date!(2026 - 11 - 23)).await.expect("salt"));
        let b = store.salt_for(date!(2026 - 11 - 24)).await.expect("salt");
        assert_ne!(a, b);
        store.forget_before(date!(2026 - 11 - 24)).await.expect("forget");
        assert_ne!(
            a,
            store.salt_for(date!(2026 - 11 - 23)).await.expect("salt"),
            "a forgotten salt is never made again"
        );
    }

    #[test]
    fn day_keys_are_valid_kv_keys() {
        assert_eq!(salt_key(date!(2026 - 01 - 05)), "day-2026-01-05");
    }

    #[test]
    fn debug_hides_the_salt() {
        assert_eq!(format!("{:?}", Salt([7; 16])), "Salt(<redacted>)");
    }
}

//! Visitor identity without cookies: a keyed hash under a salt that rotates every UTC day.
//!
//! `visitor = SipHash-2-4(key = day's salt)(site ‖ client address ‖ User-Agent)`. The salt
//! comes from a [`SaltStore`] shared by all gateways and is forgotten once the day is over,
//! after which nobody — Gallop included — can link a visitor across days or recompute a
//! hash from an address. The raw address and User-Agent exist only inside this hash.

use std::{
    hash::Hasher,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use gallop_broker::{Salt, SaltError, SaltStore};
use siphasher::sip::SipHasher24;
use time::{Date, OffsetDateTime};
use tracing::warn;

/// The current day's salt, refreshed from the store when the UTC day changes.
pub(crate) struct Visitors {
    store: Arc<dyn SaltStore>,
    current: RwLock<(Date, Salt)>,
}

impl std::fmt::Debug for Visitors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Visitors").finish_non_exhaustive()
    }
}

impl Visitors {
    /// Fetches today's salt.
    pub(crate) async fn new(store: Arc<dyn SaltStore>) -> Result<Self, SaltError> {
        let today = OffsetDateTime::now_utc().date();
        let salt = store.salt_for(today).await?;
        Ok(Self { store, current: RwLock::new((today, salt)) })
    }

    /// The salt of the current UTC day; crosses to the store only when the day changed.
    pub(crate) async fn salt(&self) -> Result<Salt, SaltError> {
        let today = OffsetDateTime::now_utc().date();
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.0 == today {
                return Ok(current.1);
            }
        }
        let salt = self.store.salt_for(today).await?;
        let rotated = {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            let rotated = current.0 < today;
            if rotated {
                *current = (today, salt);
            }
            rotated
        };
        if rotated {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.forget_before(today).await {
                    warn!(error = %e, "could not destroy old visitor salts; they expire by age");
                }
            });
        }
        Ok(salt)
    }
}

/// The visitor hash of a browser visit: site, client address and User-Agent.
pub(crate) fn visitor_from_request(salt: &Salt, site: &str, ip: IpAddr, user_agent: &str) -> u64 {
    let mut hasher = keyed(salt);
    hasher.write_u8(0);
    hasher.write(site.as_bytes());
    hasher.write_u8(0xff);
    match ip {
        IpAddr::V4(v4) => hasher.write(&v4.octets()),
        IpAddr::V6(v6) => hasher.write(&v6.octets()),
    }
    hasher.write_u8(0xff);
    hasher.write(user_agent.as_bytes());
    hasher.finish()
}

/// The visitor hash of a client-chosen visitor key (apps and servers that know their user).
pub(crate) fn visitor_from_key(salt: &Salt, site: &str, key: &str) -> u64 {
    let mut hasher = keyed(salt);
    hasher.write_u8(1);
    hasher.write(site.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(key.as_bytes());
    hasher.finish()
}

/// The hash of identifier `name` = `value` (traqq's `bmp` fields, such as an IP address):
/// distinct values stay distinct within a day, the value itself never leaves the gateway.
pub(crate) fn identifier_hash(salt: &Salt, site: &str, name: &str, value: &str) -> u64 {
    let mut hasher = keyed(salt);
    hasher.write_u8(2);
    hasher.write(site.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(name.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(value.as_bytes());
    hasher.finish()
}

fn keyed(salt: &Salt) -> SipHasher24 {
    let (k0, k1) = salt.0.split_at(8);
    // split_at(8) of a 16-byte array gives two 8-byte halves.
    let k0 = u64::from_le_bytes(k0.try_into().unwrap_or_default());
    let k1 = u64::from_le_bytes(k1.try_into().unwrap_or_default());
    SipHasher24::new_with_keys(k0, k1)
}

#[cfg(test)]
mod tests {
    use gallop_broker::LocalSaltStore;

    use super::*;

    #[test]
    fn hash_depends_on_every_input_and_the_salt() {
        let salt = Salt([1; 16]);
        let ip: IpAddr = "198.51.100.7".parse().expect("ip");
        let base = visitor_from_request(&salt, "a.com", ip, "UA");
        assert_eq!(base, visitor_from_request(&salt, "a.com", ip, "UA"));
        assert_ne!(base, visitor_from_request(&salt, "b.com", ip, "UA"));
        assert_ne!(base, visitor_from_request(&salt, "a.com", "198.51.100.8".parse().expect("ip"), "UA"));
        assert_ne!(base, visitor_from_request(&salt, "a.com", ip, "UA2"));
        assert_ne!(base, visitor_from_request(&Salt([2; 16]), "a.com", ip, "UA"));
        assert_ne!(visitor_from_key(&salt, "a.com", "u1"), visitor_from_key(&salt, "a.com", "u2"));
    }

    #[tokio::test]
    async fn salt_is_cached_for_the_day() {
        let store: Arc<dyn SaltStore> = Arc::new(LocalSaltStore::new());
        let visitors = Visitors::new(store.clone()).await.expect("salt");
        let today = OffsetDateTime::now_utc().date();
        assert_eq!(visitors.salt().await.expect("salt"), store.salt_for(today).await.expect("salt"));
    }
}

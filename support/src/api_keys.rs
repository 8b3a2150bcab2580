//! API keys checked against their configured SHA-256 hashes.
//!
//! The configuration holds `sha256:<hex>` of each key, never the key: a leaked config file
//! or `gallop config` output opens nothing. A presented key is hashed and compared with
//! every configured hash in constant time (all of them, always), so neither the position
//! of a mismatch nor which key matched shows in the response time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The keys allowed on one endpoint; empty allows everyone.
#[derive(Clone, Default)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("keys", &self.hashes.len()).finish()
    }
}

/// `sha256:<64 lowercase hex digits>` of `key`: what the configuration holds for it.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

impl ApiKeys {
    /// Parses configured hashes (`sha256:<hex>`, checked by config validation); entries
    /// that are not such a hash are skipped.
    pub fn new(configured: &[String]) -> Self {
        let hashes = configured
            .iter()
            .filter_map(|entry| {
                let hex = entry.strip_prefix("sha256:")?;
                let mut hash = [0u8; 32];
                if hex.len() != 64 {
                    return None;
                }
                for (i, slot) in hash.iter_mut().enumerate() {
                    *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(hash)
            })
            .collect();
        Self { hashes }
    }

    /// Whether any key is required.
    pub fn is_enabled(&self) -> bool {
        !self.hashes.is_empty()
    }

    /// Whether a request with `headers` may pass: it presents one of the keys as
    /// `Authorization: Bearer <key>` or `X-Api-Key: <key>`, or no key is configured.
    pub fn allows(&self, headers: &http::HeaderMap) -> bool {
        if self.hashes.is_empty() {
            return true;
        }
        let authorization = headers.get(http::header::AUTHORIZATION).map(http::HeaderValue::as_bytes);
        let x_api_key = headers.get("x-api-key").map(http::HeaderValue::as_bytes);
        let bearer = authorization.and_then(|value| {
            let value = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer "))?;
            Some(value.trim_ascii())
        });
        let Some(presented) = bearer.or(x_api_key.map(<[u8]>::trim_ascii)) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut matched = subtle::Choice::from(0);
        for hash in &self.hashes {
            matched |= hash.ct_eq(&digest);
        }
        matched.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn keys_are_checked_by_hash() {
        // The SHA-256 of "secret-key-1", as `sha256sum` prints it.
        let hash = hash_key("secret-key-1");
        assert_eq!(hash, "sha256:a6c1eaef9d5f23f4e13d9b574cbbe07ae877227d92be87d077005dc6776bcdcc");
        let keys = ApiKeys::new(&[hash, hash_key("other")]);
        assert!(keys.is_enabled());
        assert!(keys.allows(&headers(&[("authorization", "Bearer secret-key-1")])));
        assert!(keys.allows(&headers(&[("x-api-key", "other")])));
        assert!(!keys.allows(&headers(&[("authorization", "Bearer secret-key-2")])));
        assert!(
            !keys.allows(&headers(&[("authorization", "secret-key-1")])),
            "a bare Authorization value is no bearer token"
        );
        assert!(!keys.allows(&headers(&[])));
        assert!(ApiKeys::new(&[]).allows(&headers(&[])), "no keys configured: open");
    }
}

//! The ClickHouse server version and the optional features Gallop uses when it has them.

use std::fmt;

use crate::error::SinkError;

/// A server version as `SELECT version()` prints it (`18.16.1`, `26.9.2.17`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Year-based major version (18, 19, …, 26).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl ServerVersion {
    /// Parses `major.minor[.patch[.build]]`; the error names the text.
    pub fn parse(text: &str) -> Result<Self, SinkError> {
        let bad = || SinkError::Version { text: text.to_owned() };
        let mut parts = text.trim().split('.').map(|p| p.parse::<u32>());
        let major = parts.next().and_then(Result::ok).ok_or_else(bad)?;
        let minor = parts.next().and_then(Result::ok).ok_or_else(bad)?;
        let patch = match parts.next() {
            Some(p) => p.map_err(|_| bad())?,
            None => 0,
        };
        Ok(Self { major, minor, patch })
    }

    /// What this server can do that Gallop makes use of.
    pub fn features(self) -> Features {
        let at_least = |major: u32, minor: u32| (self.major, self.minor) >= (major, minor);
        Features {
            // LowCardinality left its experimental flag in 19.x; 20.1 is the first release
            // line where it is on by default everywhere.
            low_cardinality: at_least(20, 1),
            // Table TTL arrived in 19.6, SimpleAggregateFunction (the type of `expires`
            // wherever TTL is used) in 19.8; 20.1 is the first release line with both for sure.
            ttl: at_least(20, 1),
            // `insert_deduplication_token` (22.2) with `non_replicated_deduplication_window`.
            dedup_token: at_least(22, 2),
            // 18.16 re-reads stored topK states with its default capacity of 10 counters and
            // drops the rest (measured: 58 counters in, 10 out). 26.9 keeps them (chDB check).
            // 22.8 LTS is the oldest release Gallop trusts with topK state columns.
            topk_states: at_least(22, 8),
        }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Optional server features. Async inserts are deliberately not among them: Gallop sends
/// few large inserts, exactly the case async inserts do not help, and an async insert's
/// part may mix other clients' rows, which would weaken the atomicity the positions rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// `LowCardinality(String)` for the site and dimension columns.
    pub low_cardinality: bool,
    /// `TTL` on the table, for retention per granularity.
    pub ttl: bool,
    /// Insert deduplication by token on a non-replicated table: a retried insert whose
    /// first attempt landed is dropped by the server as well.
    pub dedup_token: bool,
    /// Leaderboards in an `AggregateFunction(topK(..), String)` column. Without it they are
    /// kept as raw state bytes in a `String` column, which the server leaves alone.
    pub topk_states: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expect: Option<(u32, u32, u32)>, features: Features) {
        let parsed = ServerVersion::parse(text).ok();
        assert_eq!(parsed.map(|v| (v.major, v.minor, v.patch)), expect, "{text}");
        if let Some(version) = parsed {
            assert_eq!(version.features(), features, "{text}");
        }
    }

    #[test]
    fn versions_and_their_features() {
        let none = Features::default();
        let all = Features { low_cardinality: true, ttl: true, dedup_token: true, topk_states: true };
        check("18.16.1", Some((18, 16, 1)), none);
        check("19.6.0", Some((19, 6, 0)), none);
        check("20.1.2.4", Some((20, 1, 2)), Features { ttl: true, low_cardinality: true, ..none });
        check("22.1.3", Some((22, 1, 3)), Features { ttl: true, low_cardinality: true, ..none });
        check("22.2", Some((22, 2, 0)), Features { topk_states: false, ..all });
        check("26.9.2.17", Some((26, 9, 2)), all);
        check("", None, none);
        check("abc", None, none);
        check("18", None, none);
        check("18.x", None, none);
    }
}

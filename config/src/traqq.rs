//! `[traqq]`: a listener speaking traqq's newline-delimited JSON protocol, and traqq's
//! metric mapping (`bmp`, `add`, `adv`, `top`), expressed here as the Gallop rollups and
//! leaderboards it needs.
//!
//! The mapping keeps traqq's own shape (`MappingConfig` of traqq 0.2.0), so a traqq
//! configuration carries over unchanged; [`TraqqMapping::metrics`] turns it into Gallop's
//! terms once, for the gateway (what to keep and hash), the processor rules (checked at
//! load) and the query answers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The traqq protocol listener of the gateway process. Off unless `enabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraqqConfig {
    /// Start the listener (in `gallop ingest` and `gallop run`).
    pub enabled: bool,
    /// Address to listen on (traqq's default port is 9876).
    pub listen: SocketAddr,
    /// The site traqq events are recorded under (traqq's key prefix plays this part).
    pub site: String,
    /// Longest command line in bytes; a longer one is answered with an error and skipped,
    /// and the connection goes on.
    pub max_line_bytes: usize,
    /// Most open connections; past it a connection gets one error line and is closed.
    pub max_connections: usize,
    /// Most command lines of one connection being answered at once (pipelining).
    pub max_pipelined: usize,
    /// A connection with nothing sent and nothing to answer for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: std::time::Duration,
    /// Most days one `query` or `find` may cover.
    pub max_query_days: u32,
    /// Metrics, in traqq's own `MappingConfig` shape.
    pub mapping: TraqqMapping,
    /// How many top items each `top` leaderboard keeps (traqq reads 250; Gallop keeps at
    /// most 100).
    pub top_k: usize,
}

impl Default for TraqqConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9876)),
            site: String::new(),
            max_line_bytes: 64 * 1024,
            max_connections: 1024,
            max_pipelined: 4096,
            idle_timeout: std::time::Duration::from_secs(300),
            max_query_days: 366,
            mapping: TraqqMapping::default(),
            top_k: MAX_TOP_K,
        }
    }
}

/// Most items a `top` leaderboard can keep (the `top` column's `k` in ClickHouse).
pub const MAX_TOP_K: usize = 100;

/// traqq's `MappingConfig`: which event properties become which metrics. Patterns join
/// property names with `~` (`event~geo`); `event` is the event name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraqqMapping {
    /// Unique counts (`bmp`): property names whose distinct values are counted, e.g. `ip`.
    /// Their values are hashed with the day's salt at the gateway; a raw value never
    /// reaches the broker.
    pub bitmap: Vec<String>,
    /// Counters (`add`): events per value of each pattern.
    pub add: Vec<String>,
    /// Value sums (`adv`): sum and count of `add_key` per value of `key`.
    pub add_value: Vec<TraqqAddValue>,
    /// Leaderboards (`top`): the most frequent values of each pattern.
    pub top: Vec<String>,
}

impl Default for TraqqMapping {
    /// traqq's default: one counter of event names.
    fn default() -> Self {
        Self { bitmap: Vec::new(), add: vec![EVENT.to_owned()], add_value: Vec::new(), top: Vec::new() }
    }
}

/// One `adv` metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraqqAddValue {
    /// The pattern to group by, e.g. `event~geo`.
    pub key: String,
    /// The property holding the number to add, e.g. `amount`.
    pub add_key: String,
}

/// The property that is the event's name in traqq events.
pub const EVENT: &str = "event";

/// The kind of one traqq metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraqqKind {
    /// Unique count.
    Bmp,
    /// Counter per value.
    Add,
    /// Value sum and count per value.
    Adv,
    /// Leaderboard.
    Top,
}

impl TraqqKind {
    /// The name traqq uses (`metric_type`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Bmp => "bmp",
            Self::Add => "add",
            Self::Adv => "adv",
            Self::Top => "top",
        }
    }
}

/// One traqq metric in Gallop's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraqqMetric {
    /// Its kind.
    pub kind: TraqqKind,
    /// The pattern's property names, sorted (as traqq stores and reports them).
    pub keys: Vec<String>,
    /// `adv`: the property whose numbers are summed.
    pub add_key: Option<String>,
    /// The Gallop dimension that holds it: `name`, `props.geo`, `name~props.geo`, `uniq:ip`.
    pub dimension: String,
    /// Where in `traqq.mapping` it comes from, for errors (`traqq.mapping.add[1]`).
    pub origin: String,
}

impl TraqqMetric {
    /// The pattern as traqq writes it in keys: sorted names joined by `~`.
    pub fn pattern(&self) -> String {
        self.keys.join("~")
    }
}

impl TraqqMapping {
    /// Every metric of the mapping, in mapping order (`bmp`, `add`, `adv`, `top`).
    pub fn metrics(&self) -> Vec<TraqqMetric> {
        let sorted = |pattern: &str| {
            let mut keys: Vec<String> = pattern.split('~').map(str::to_owned).collect();
            keys.sort();
            keys
        };
        let grouped = |keys: &[String]| keys.iter().map(|k| field_spec(k)).collect::<Vec<_>>().join("~");
        let mut metrics = Vec::new();
        for (i, name) in self.bitmap.iter().enumerate() {
            metrics.push(TraqqMetric {
                kind: TraqqKind::Bmp,
                keys: vec![name.clone()],
                add_key: None,
                dimension: format!("uniq:{name}"),
                origin: format!("traqq.mapping.bitmap[{i}]"),
            });
        }
        let grouping = |kind, pattern: &str, add_key: Option<&String>, origin: String| {
            let keys = sorted(pattern);
            TraqqMetric { kind, dimension: grouped(&keys), keys, add_key: add_key.cloned(), origin }
        };
        for (i, pattern) in self.add.iter().enumerate() {
            metrics.push(grouping(TraqqKind::Add, pattern, None, format!("traqq.mapping.add[{i}]")));
        }
        for (i, adv) in self.add_value.iter().enumerate() {
            metrics.push(grouping(
                TraqqKind::Adv,
                &adv.key,
                Some(&adv.add_key),
                format!("traqq.mapping.add_value[{i}]"),
            ));
        }
        for (i, pattern) in self.top.iter().enumerate() {
            metrics.push(grouping(TraqqKind::Top, pattern, None, format!("traqq.mapping.top[{i}]")));
        }
        metrics
    }

    /// The property whose number becomes the event's `value` (the `adv` metrics' one
    /// `add_key`), if any.
    pub fn value_field(&self) -> Option<&str> {
        self.add_value.first().map(|a| a.add_key.as_str())
    }

    /// Whether `key` is a property the mapping groups by (kept on the record as a prop).
    pub fn groups_by(&self, key: &str) -> bool {
        key != EVENT
            && self
                .add
                .iter()
                .chain(self.add_value.iter().map(|a| &a.key))
                .chain(&self.top)
                .any(|pattern| pattern.split('~').any(|k| k == key))
    }

    /// Whether `key` is a `bmp` property (hashed, never kept as it is).
    pub fn counts_uniques_of(&self, key: &str) -> bool {
        self.bitmap.iter().any(|b| b == key)
    }

    /// Every broken rule of the mapping, as (key, what was expected).
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let patterns = self
            .bitmap
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("traqq.mapping.bitmap[{i}]"), p))
            .chain(self.add.iter().enumerate().map(|(i, p)| (format!("traqq.mapping.add[{i}]"), p)))
            .chain(
                self.add_value.iter().enumerate().map(|(i, a)| (format!("traqq.mapping.add_value[{i}].key"), &a.key)),
            )
            .chain(self.top.iter().enumerate().map(|(i, p)| (format!("traqq.mapping.top[{i}]"), p)));
        for (key, pattern) in patterns {
            let shape = if pattern.is_empty() {
                Some("a pattern, not empty")
            } else if pattern.contains("~~") || pattern.starts_with('~') || pattern.ends_with('~') {
                Some("property names joined by single '~' (event~geo)")
            } else if !pattern.split('~').all(is_property_name) {
                Some("property names of letters, digits, '_', '-' and '.' (at most 64 bytes each)")
            } else {
                None
            };
            if let Some(expected) = shape {
                problems.push((key, format!("{expected}, got {pattern:?}")));
            }
        }
        for (i, name) in self.bitmap.iter().enumerate() {
            if name.contains('~') || name == EVENT {
                problems.push((
                    format!("traqq.mapping.bitmap[{i}]"),
                    format!("one property other than event (unique counts of compounds are not kept), got {name:?}"),
                ));
            }
        }
        for (i, name) in self.bitmap.iter().enumerate() {
            if self.groups_by(name) || self.value_field() == Some(name.as_str()) {
                problems.push((
                    format!("traqq.mapping.bitmap[{i}]"),
                    format!(
                        "a property no other metric groups by or sums ({name:?} is hashed at the gateway; \
                         grouping by it would carry the raw value)"
                    ),
                ));
            }
        }
        for metric in self.metrics() {
            if !seen.insert((metric.kind, metric.pattern(), metric.add_key.clone())) {
                problems
                    .push((metric.origin.clone(), format!("each pattern once, {:?} is there twice", metric.pattern())));
            }
        }
        for (i, adv) in self.add_value.iter().enumerate() {
            let key = format!("traqq.mapping.add_value[{i}].add_key");
            if !is_property_name(&adv.add_key) || adv.add_key == EVENT {
                problems.push((key, format!("a property name other than event, got {:?}", adv.add_key)));
            } else if self.value_field() != Some(adv.add_key.as_str()) {
                problems.push((
                    key,
                    format!(
                        "the same add_key as add_value[0] ({:?}): a Gallop event carries one value",
                        self.value_field().unwrap_or_default()
                    ),
                ));
            }
        }
        problems
    }
}

/// The Gallop field a traqq property name stands for.
pub fn field_spec(key: &str) -> String {
    if key == EVENT {
        "name".to_owned()
    } else {
        format!("props.{key}")
    }
}

/// A property name traqq and Gallop both can use in a pattern.
fn is_property_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> TraqqMapping {
        TraqqMapping {
            bitmap: vec!["ip".into()],
            add: vec!["event".into(), "geo~event".into()],
            add_value: vec![TraqqAddValue { key: "event~geo".into(), add_key: "amount".into() }],
            top: vec!["geo".into()],
        }
    }

    #[test]
    fn metrics_in_gallop_terms() {
        let got: Vec<(TraqqKind, String, String, Option<String>)> =
            mapping().metrics().into_iter().map(|m| (m.kind, m.pattern(), m.dimension, m.add_key)).collect();
        let want = [
            (TraqqKind::Bmp, "ip", "uniq:ip", None),
            (TraqqKind::Add, "event", "name", None),
            (TraqqKind::Add, "event~geo", "name~props.geo", None),
            (TraqqKind::Adv, "event~geo", "name~props.geo", Some("amount")),
            (TraqqKind::Top, "geo", "props.geo", None),
        ]
        .map(|(k, p, d, a)| (k, p.to_owned(), d.to_owned(), a.map(str::to_owned)));
        assert_eq!(got, want);
        let m = mapping();
        assert_eq!(m.value_field(), Some("amount"));
        assert!(m.groups_by("geo") && !m.groups_by("event") && !m.groups_by("ip") && !m.groups_by("amount"));
        assert!(m.counts_uniques_of("ip") && !m.counts_uniques_of("geo"));
        assert!(m.problems().is_empty(), "{:?}", m.problems());
    }

    #[test]
    fn broken_mappings_name_the_entry() {
        let mut m = mapping();
        m.add.push("geo~~x".into());
        m.add.push("event~geo".into());
        m.bitmap.push("ip~geo".into());
        m.top.push("a b".into());
        m.add_value.push(TraqqAddValue { key: "geo".into(), add_key: "price".into() });
        let keys: Vec<String> = m.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "traqq.mapping.add[2]",
                "traqq.mapping.top[1]",
                "traqq.mapping.bitmap[1]",
                "traqq.mapping.add[3]",
                "traqq.mapping.add_value[1].add_key",
            ]
        );
    }
}

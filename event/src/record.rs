//! [`EventRecord`]: one normalized, enriched, privacy-safe event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The record format version written in every record's `v` field.
pub const FORMAT_VERSION: u8 = 1;

/// Custom properties, sorted by key (a key appears once).
pub type Props = BTreeMap<String, String>;

/// Hashed identifiers to count distinct values of, by name (traqq's `bmp` fields such as
/// `ip`): each a keyed hash under the day's salt, never the raw value. Kept apart from
/// [`Props`] so that no breakdown over every property ever makes a row per identifier.
pub type Uniques = BTreeMap<String, u64>;

/// One event as it travels on the broker: validated, enriched, and holding no raw IP
/// address or User-Agent (only the derived [`visitor`](Self::visitor) hash and the
/// parsed browser, OS and device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventRecord {
    /// Format version, [`FORMAT_VERSION`].
    pub v: u8,
    /// Site the event belongs to, e.g. `example.com`.
    pub site: String,
    /// Event id: the client's own (for dedup) or one the gateway made.
    pub id: String,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub ts: i64,
    /// Event name: `pageview` or a custom name.
    pub name: String,
    /// Host of the page URL, lower-case.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Path of the page URL, without query string or fragment.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Full referrer URL (empty for direct traffic and self-referrals).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub referrer: String,
    /// Host of the referrer, lower-case, without a leading `www.`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ref_host: String,
    /// Traffic source: a known name (`Google`, `Hacker News`…), the `utm_source` /
    /// `ref` / `source` query parameter, or the referrer host.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// `utm_source` of the page URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub utm_source: String,
    /// `utm_medium` of the page URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub utm_medium: String,
    /// `utm_campaign` of the page URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub utm_campaign: String,
    /// `utm_content` of the page URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub utm_content: String,
    /// `utm_term` of the page URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub utm_term: String,
    /// ISO 3166-1 alpha-2 country code, upper-case; empty when unknown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country: String,
    /// Browser family, e.g. `Firefox`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub browser: String,
    /// Browser major version, e.g. `121`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub browser_version: String,
    /// Operating system family, e.g. `Windows`, `iOS`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Device class: `desktop`, `mobile` or `tablet`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// Visitor: keyed hash of site, client address and User-Agent under the day's salt.
    pub visitor: u64,
    /// Custom properties.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub props: Props,
    /// Hashed identifiers to count distinct values of (rollups `uniq:<name>`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub uniques: Uniques,
    /// Numeric value (revenue, duration…) when the event has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// ISO 4217 currency of `value` when it is revenue.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub currency: String,
    /// `false` for events that should not count as interaction (Plausible's `interactive`).
    #[serde(skip_serializing_if = "is_true")]
    pub interactive: bool,
    /// Engagement events only: the deepest point of the page the visitor scrolled to, in
    /// percent of its height (0-100; Plausible's `sd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scroll_depth: Option<u8>,
    /// Engagement events only: milliseconds the page was visible and focused since the
    /// previous engagement event of the same pageview (Plausible's `e`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engaged_ms: Option<u64>,
}

/// The name of Plausible's engagement events: sent when a visitor leaves or hides a page,
/// with scroll depth and engaged time. Not a custom event, not a pageview.
pub const ENGAGEMENT: &str = "engagement";

fn is_true(b: &bool) -> bool {
    *b
}

impl EventRecord {
    /// An empty record of the current format version, interactive by default.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for EventRecord {
    /// Missing fields of a decoded record take these values: empty strings, no value,
    /// and `interactive: true` (only non-interactive events carry the field).
    fn default() -> Self {
        Self {
            v: FORMAT_VERSION,
            site: String::new(),
            id: String::new(),
            ts: 0,
            name: String::new(),
            host: String::new(),
            path: String::new(),
            referrer: String::new(),
            ref_host: String::new(),
            source: String::new(),
            utm_source: String::new(),
            utm_medium: String::new(),
            utm_campaign: String::new(),
            utm_content: String::new(),
            utm_term: String::new(),
            country: String::new(),
            browser: String::new(),
            browser_version: String::new(),
            os: String::new(),
            device: String::new(),
            visitor: 0,
            props: Props::new(),
            uniques: Uniques::new(),
            value: None,
            currency: String::new(),
            interactive: true,
            scroll_depth: None,
            engaged_ms: None,
        }
    }
}

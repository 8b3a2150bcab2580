//! [`EventFields`]: read access to an event's fields, whatever holds them ([`EventRecord`],
//! the borrowed `EventView`, a compact block's `BlockEvent`), so the processor reads any.

use crate::record::EventRecord;

/// Read access to an event's fields, whatever holds them.
pub trait EventFields {
    /// Site.
    fn site(&self) -> &str;
    /// Event name.
    fn name(&self) -> &str;
    /// Event time, ms since the Unix epoch.
    fn ts(&self) -> i64;
    /// Page host.
    fn host(&self) -> &str;
    /// Page path.
    fn path(&self) -> &str;
    /// Full referrer URL.
    fn referrer(&self) -> &str;
    /// Referrer host.
    fn ref_host(&self) -> &str;
    /// Traffic source.
    fn source(&self) -> &str;
    /// `utm_source`.
    fn utm_source(&self) -> &str;
    /// `utm_medium`.
    fn utm_medium(&self) -> &str;
    /// `utm_campaign`.
    fn utm_campaign(&self) -> &str;
    /// `utm_content`.
    fn utm_content(&self) -> &str;
    /// `utm_term`.
    fn utm_term(&self) -> &str;
    /// Country code.
    fn country(&self) -> &str;
    /// Browser family.
    fn browser(&self) -> &str;
    /// Browser major version.
    fn browser_version(&self) -> &str;
    /// Operating system family.
    fn os(&self) -> &str;
    /// Device class.
    fn device(&self) -> &str;
    /// Visitor hash.
    fn visitor(&self) -> u64;
    /// Numeric value.
    fn value(&self) -> Option<f64>;
    /// ISO 4217 currency of the value (revenue), upper-case; empty when not money.
    fn currency(&self) -> &str;
    /// Whether the event counts as interaction (Plausible's `interactive`).
    fn interactive(&self) -> bool;
    /// Scroll depth in percent (engagement events).
    fn scroll_depth(&self) -> Option<u8>;
    /// Engaged milliseconds since the previous engagement event (engagement events).
    fn engaged_ms(&self) -> Option<u64>;
    /// The value of property `key`.
    fn prop(&self, key: &str) -> Option<&str>;
    /// Every property, each key once.
    fn props(&self) -> impl Iterator<Item = (&str, &str)>;
    /// The hashed identifier `name` (see [`EventRecord::uniques`]).
    fn unique(&self, name: &str) -> Option<u64>;
}

/// The accessors both record types share: each field read straight off the struct.
macro_rules! plain_fields {
    () => {
        plain_fields!(@str site, name, host, path, referrer, ref_host, source, utm_source, utm_medium, utm_campaign,
            utm_content, utm_term, country, browser, browser_version, os, device, currency);

        fn ts(&self) -> i64 {
            self.ts
        }

        fn visitor(&self) -> u64 {
            self.visitor
        }

        fn value(&self) -> Option<f64> {
            self.value
        }

        fn interactive(&self) -> bool {
            self.interactive
        }

        fn scroll_depth(&self) -> Option<u8> {
            self.scroll_depth
        }

        fn engaged_ms(&self) -> Option<u64> {
            self.engaged_ms
        }
    };
    (@str $($field:ident),*) => {
        $(fn $field(&self) -> &str {
            &self.$field
        })*
    };
}

pub(crate) use plain_fields;

impl EventFields for EventRecord {
    plain_fields!();

    fn prop(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(String::as_str)
    }

    fn props(&self) -> impl Iterator<Item = (&str, &str)> {
        self.props.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn unique(&self, name: &str) -> Option<u64> {
        self.uniques.get(name).copied()
    }
}

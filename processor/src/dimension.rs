//! Dimensions: which field (or compound of fields) of an event a rollup groups by, and how
//! its value is read off an event.

use gallop_event::EventFields;

use crate::error::ProcessorError;

/// Separator between the parts of a compound dimension and of its values.
pub(crate) const COMPOUND: char = '~';

/// The name given to the dimension with no fields: one row per site and bucket.
pub(crate) const TOTAL: &str = "total";

/// Prefix of a distinct count of a hashed identifier: `uniq:ip` is one row per site and
/// bucket whose sketch counts the distinct `uniques.ip` of its events (traqq's `bmp`).
pub(crate) const UNIQ_PREFIX: &str = "uniq:";

/// One field of an event record that can be grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    Name,
    Host,
    Path,
    Referrer,
    RefHost,
    Source,
    UtmSource,
    UtmMedium,
    UtmCampaign,
    UtmContent,
    UtmTerm,
    Country,
    Browser,
    BrowserVersion,
    Os,
    Device,
    /// ISO 4217 currency of the event's value (revenue).
    Currency,
    /// `path` of pageviews only (Plausible's top pages); other events have none.
    Page,
    /// `props.<key>`.
    Prop(String),
    /// `props.*`: one dimension per property key the event carries.
    AnyProp,
}

const FIELDS: &[(&str, Field)] = &[
    ("name", Field::Name),
    ("host", Field::Host),
    ("path", Field::Path),
    ("referrer", Field::Referrer),
    ("ref_host", Field::RefHost),
    ("source", Field::Source),
    ("utm_source", Field::UtmSource),
    ("utm_medium", Field::UtmMedium),
    ("utm_campaign", Field::UtmCampaign),
    ("utm_content", Field::UtmContent),
    ("utm_term", Field::UtmTerm),
    ("country", Field::Country),
    ("browser", Field::Browser),
    ("browser_version", Field::BrowserVersion),
    ("os", Field::Os),
    ("device", Field::Device),
    ("currency", Field::Currency),
    ("page", Field::Page),
];

impl Field {
    fn parse(text: &str) -> Option<Self> {
        if text == "props.*" {
            return Some(Self::AnyProp);
        }
        if let Some(key) = text.strip_prefix("props.") {
            return (!key.is_empty() && !key.contains(COMPOUND)).then(|| Self::Prop(key.to_owned()));
        }
        FIELDS.iter().find(|(name, _)| *name == text).map(|(_, f)| f.clone())
    }

    /// The field's value on `event`; `None` when the event lacks the property.
    pub(crate) fn read<'e, E: EventFields>(&self, event: &'e E) -> Option<&'e str> {
        Some(match self {
            Self::Name => event.name(),
            Self::Host => event.host(),
            Self::Path => event.path(),
            Self::Referrer => event.referrer(),
            Self::RefHost => event.ref_host(),
            Self::Source => event.source(),
            Self::UtmSource => event.utm_source(),
            Self::UtmMedium => event.utm_medium(),
            Self::UtmCampaign => event.utm_campaign(),
            Self::UtmContent => event.utm_content(),
            Self::UtmTerm => event.utm_term(),
            Self::Country => event.country(),
            Self::Browser => event.browser(),
            Self::BrowserVersion => event.browser_version(),
            Self::Os => event.os(),
            Self::Device => event.device(),
            Self::Currency => event.currency(),
            Self::Page => return (event.name() == "pageview").then(|| event.path()),
            Self::Prop(key) => return event.prop(key),
            // Expanded per key by the caller.
            Self::AnyProp => return None,
        })
    }
}

/// A parsed dimension spec such as `name~props.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dimension {
    /// The spec as written, normalized (`total` for no fields).
    pub(crate) spec: String,
    pub(crate) fields: Vec<Field>,
    /// `uniq:<name>`: the identifier whose distinct values the row's sketch counts.
    pub(crate) uniques_of: Option<String>,
}

impl Dimension {
    /// Parses a spec; `key` names the config entry for errors.
    pub(crate) fn parse(spec: &str, key: &str) -> Result<Self, ProcessorError> {
        let spec = spec.trim();
        if spec == TOTAL || spec.is_empty() {
            return Ok(Self { spec: TOTAL.to_owned(), fields: Vec::new(), uniques_of: None });
        }
        if let Some(name) = spec.strip_prefix(UNIQ_PREFIX) {
            let name = name.trim();
            if name.is_empty() || name.contains(COMPOUND) || name.contains(char::is_whitespace) {
                return Err(ProcessorError::Dimension {
                    key: key.to_owned(),
                    spec: spec.to_owned(),
                    reason: "uniq: takes one identifier name, such as uniq:ip".to_owned(),
                });
            }
            return Ok(Self {
                spec: format!("{UNIQ_PREFIX}{name}"),
                fields: Vec::new(),
                uniques_of: Some(name.to_owned()),
            });
        }
        let fields = spec
            .split(COMPOUND)
            .map(|part| {
                Field::parse(part.trim()).ok_or_else(|| ProcessorError::Dimension {
                    key: key.to_owned(),
                    spec: spec.to_owned(),
                    reason: format!(
                        "unknown field {part:?}; expected one of {}, props.<key>, props.* or total",
                        FIELDS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if fields.iter().filter(|f| **f == Field::AnyProp).count() > 1 {
            return Err(ProcessorError::Dimension {
                key: key.to_owned(),
                spec: spec.to_owned(),
                reason: "props.* may appear once".to_owned(),
            });
        }
        let spec = fields.iter().map(Field::spec).collect::<Vec<_>>().join("~");
        Ok(Self { spec, fields, uniques_of: None })
    }

    /// The one field of a single-field, non-wildcard dimension.
    pub(crate) fn single_field(&self) -> Option<&Field> {
        match self.fields.as_slice() {
            [field] if *field != Field::AnyProp => Some(field),
            _ => None,
        }
    }

    /// Whether the dimension expands per property key.
    pub(crate) fn is_wildcard(&self) -> bool {
        self.fields.contains(&Field::AnyProp)
    }

    /// Writes the concrete dimension name for property `key` of a wildcard dimension
    /// into `out` (`name~props.*` → `name~props.plan`).
    pub(crate) fn write_with_prop(&self, key: &str, out: &mut String) {
        out.clear();
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(COMPOUND);
            }
            match field {
                Field::AnyProp => {
                    out.push_str("props.");
                    out.push_str(key);
                }
                Field::Prop(own) => {
                    out.push_str("props.");
                    out.push_str(own);
                }
                other => out.push_str(other.name()),
            }
        }
    }
}

impl Field {
    fn spec(&self) -> String {
        match self {
            Self::Prop(key) => format!("props.{key}"),
            Self::AnyProp => "props.*".to_owned(),
            other => other.name().to_owned(),
        }
    }

    /// The name of a plain field (empty for property fields).
    fn name(&self) -> &'static str {
        FIELDS.iter().find(|(_, f)| f == self).map_or("", |(n, _)| n)
    }
}

/// Writes the value of `dimension` for `event` into `out` (cleared first); `prop` is the
/// (key, value) that `props.*` stands for. Returns whether any part was empty, or `None`
/// when a named property is absent (no row for this event).
pub(crate) fn compose<E: EventFields>(
    dimension: &Dimension,
    event: &E,
    prop: Option<(&str, &str)>,
    out: &mut String,
) -> Option<bool> {
    out.clear();
    let mut any_empty = false;
    for (i, field) in dimension.fields.iter().enumerate() {
        let part = match field {
            Field::AnyProp => prop?.1,
            other => other.read(event)?,
        };
        if i > 0 {
            out.push(COMPOUND);
        }
        any_empty |= part.is_empty();
        out.push_str(part);
    }
    Some(any_empty)
}

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary.
pub(crate) fn truncate(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[cfg(test)]
mod tests {
    use gallop_event::EventRecord;

    use super::*;

    fn event() -> EventRecord {
        let mut e = EventRecord::new();
        e.name = "signup".into();
        e.country = "DE".into();
        e.path = "/p".into();
        e.props.insert("plan".into(), "pro".into());
        e
    }

    #[track_caller]
    fn check(spec: &str, prop: Option<(&str, &str)>, expect: Option<(&str, bool)>) {
        let dim = Dimension::parse(spec, "test").expect("valid spec");
        let mut out = String::new();
        let got = compose(&dim, &event(), prop, &mut out).map(|empty| (out.as_str(), empty));
        assert_eq!(got, expect, "{spec}");
    }

    #[test]
    fn composes_values() {
        check("total", None, Some(("", false)));
        check("path", None, Some(("/p", false)));
        check("name~country", None, Some(("signup~DE", false)));
        check("name~props.plan", None, Some(("signup~pro", false)));
        check("props.missing", None, None);
        check("name~props.*", Some(("plan", "pro")), Some(("signup~pro", false)));
        check("country~utm_source", None, Some(("DE~", true)));
    }

    #[test]
    fn parses_and_names_specs() {
        let dim = Dimension::parse(" name ~ props.* ", "k").expect("valid");
        assert_eq!(dim.spec, "name~props.*");
        assert!(dim.is_wildcard());
        let mut name = String::new();
        dim.write_with_prop("plan", &mut name);
        assert_eq!(name, "name~props.plan");
        assert_eq!(Dimension::parse("", "k").expect("total").spec, "total");
        let err = Dimension::parse("name~colour", "processor.rollups[0].dimension").expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("processor.rollups[0].dimension") && text.contains("\"colour\""), "{text}");
        assert!(Dimension::parse("props.*~props.*", "k").is_err());
        assert!(Dimension::parse("props.", "k").is_err());
        let uniq = Dimension::parse(" uniq:ip ", "k").expect("valid");
        assert_eq!((uniq.spec.as_str(), uniq.uniques_of.as_deref(), uniq.fields.len()), ("uniq:ip", Some("ip"), 0));
        for bad in ["uniq:", "uniq:a~b", "uniq:a b"] {
            let err = Dimension::parse(bad, "processor.rollups[2].dimension").expect_err(bad);
            assert!(err.to_string().contains("one identifier name"), "{err}");
        }
    }

    #[test]
    fn truncates_on_char_boundaries() {
        let mut s = "aé".repeat(4);
        assert!(truncate(&mut s, 4));
        assert_eq!(s, "aéa");
        let mut short = "abc".to_owned();
        assert!(!truncate(&mut short, 8));
    }
}

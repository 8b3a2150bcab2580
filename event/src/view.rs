//! [`EventView`]: a decoded record whose strings borrow from the message; it implements
//! [`EventFields`] as [`EventRecord`] does, so the processor reads either.
//!
//! Decoding into borrowed strings skips one allocation per field: measured 1.17× the
//! events/s of decoding into [`EventRecord`] with serde_json, and as fast as sonic-rs or
//! simd-json into the same borrowed shape (docs/benchmarks.md), without their build
//! requirements. A string holding an escape sequence is unescaped into an owned one.

use std::{borrow::Cow, fmt, marker::PhantomData};

use serde::{
    de::{Deserializer, MapAccess, Visitor},
    Deserialize,
};

use crate::{
    fields::{plain_fields, EventFields},
    message::{check_version, non_blank_lines, DecodeError},
    record::{EventRecord, FORMAT_VERSION},
};

impl EventFields for EventView<'_> {
    plain_fields!();

    fn prop(&self, key: &str) -> Option<&str> {
        self.props.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    fn props(&self) -> impl Iterator<Item = (&str, &str)> {
        self.props.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    fn unique(&self, name: &str) -> Option<u64> {
        self.uniques.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// An [`EventRecord`] whose strings borrow from the decoded message. Same fields, same
/// JSON, same defaults; see [`EventRecord`] for what each field means.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct EventView<'a> {
    pub v: u8,
    #[serde(borrow)]
    pub site: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub ts: i64,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub host: Cow<'a, str>,
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub referrer: Cow<'a, str>,
    #[serde(borrow)]
    pub ref_host: Cow<'a, str>,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(borrow)]
    pub utm_source: Cow<'a, str>,
    #[serde(borrow)]
    pub utm_medium: Cow<'a, str>,
    #[serde(borrow)]
    pub utm_campaign: Cow<'a, str>,
    #[serde(borrow)]
    pub utm_content: Cow<'a, str>,
    #[serde(borrow)]
    pub utm_term: Cow<'a, str>,
    #[serde(borrow)]
    pub country: Cow<'a, str>,
    #[serde(borrow)]
    pub browser: Cow<'a, str>,
    #[serde(borrow)]
    pub browser_version: Cow<'a, str>,
    #[serde(borrow)]
    pub os: Cow<'a, str>,
    #[serde(borrow)]
    pub device: Cow<'a, str>,
    pub visitor: u64,
    #[serde(borrow)]
    pub props: ViewProps<'a>,
    #[serde(borrow)]
    pub uniques: ViewUniques<'a>,
    pub value: Option<f64>,
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
    pub interactive: bool,
    pub scroll_depth: Option<u8>,
    pub engaged_ms: Option<u64>,
}

impl Default for EventView<'_> {
    /// The defaults of [`EventRecord`]: empty strings, current version, interactive.
    fn default() -> Self {
        let empty = || Cow::Borrowed("");
        Self {
            v: FORMAT_VERSION,
            site: empty(),
            id: empty(),
            ts: 0,
            name: empty(),
            host: empty(),
            path: empty(),
            referrer: empty(),
            ref_host: empty(),
            source: empty(),
            utm_source: empty(),
            utm_medium: empty(),
            utm_campaign: empty(),
            utm_content: empty(),
            utm_term: empty(),
            country: empty(),
            browser: empty(),
            browser_version: empty(),
            os: empty(),
            device: empty(),
            visitor: 0,
            props: ViewProps::default(),
            uniques: ViewUniques::default(),
            value: None,
            currency: empty(),
            interactive: true,
            scroll_depth: None,
            engaged_ms: None,
        }
    }
}

impl EventView<'_> {
    /// The owned record with the same content.
    pub fn to_record(&self) -> EventRecord {
        EventRecord {
            v: self.v,
            site: self.site.to_string(),
            id: self.id.to_string(),
            ts: self.ts,
            name: self.name.to_string(),
            host: self.host.to_string(),
            path: self.path.to_string(),
            referrer: self.referrer.to_string(),
            ref_host: self.ref_host.to_string(),
            source: self.source.to_string(),
            utm_source: self.utm_source.to_string(),
            utm_medium: self.utm_medium.to_string(),
            utm_campaign: self.utm_campaign.to_string(),
            utm_content: self.utm_content.to_string(),
            utm_term: self.utm_term.to_string(),
            country: self.country.to_string(),
            browser: self.browser.to_string(),
            browser_version: self.browser_version.to_string(),
            os: self.os.to_string(),
            device: self.device.to_string(),
            visitor: self.visitor,
            props: self.props.0.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            uniques: self.uniques.0.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            value: self.value,
            currency: self.currency.to_string(),
            interactive: self.interactive,
            scroll_depth: self.scroll_depth,
            engaged_ms: self.engaged_ms,
        }
    }
}

/// Custom properties in message order; a repeated key keeps its last value, as
/// [`EventRecord`]'s map does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewProps<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for ViewProps<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for PropsVisitor<'a> {
            type Value = ViewProps<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string properties")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut props: Vec<(Cow<'a, str>, Cow<'a, str>)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
                while let Some((key, value)) = map.next_entry::<CowStr<'a>, CowStr<'a>>()? {
                    match props.iter_mut().find(|(k, _)| *k == key.0) {
                        Some(existing) => existing.1 = value.0,
                        None => props.push((key.0, value.0)),
                    }
                }
                Ok(ViewProps(props))
            }
        }
        deserializer.deserialize_map(PropsVisitor(PhantomData))
    }
}

/// Hashed identifiers in message order; a repeated name keeps its last value, as
/// [`EventRecord`]'s map does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewUniques<'a>(pub Vec<(Cow<'a, str>, u64)>);

impl<'de: 'a, 'a> Deserialize<'de> for ViewUniques<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UniquesVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for UniquesVisitor<'a> {
            type Value = ViewUniques<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of unsigned 64-bit hashes")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut uniques: Vec<(Cow<'a, str>, u64)> = Vec::with_capacity(map.size_hint().unwrap_or(0).min(8));
                while let Some((key, value)) = map.next_entry::<CowStr<'a>, u64>()? {
                    match uniques.iter_mut().find(|(k, _)| *k == key.0) {
                        Some(existing) => existing.1 = value,
                        None => uniques.push((key.0, value)),
                    }
                }
                Ok(ViewUniques(uniques))
            }
        }
        deserializer.deserialize_map(UniquesVisitor(PhantomData))
    }
}

/// A string that borrows from the input when the deserializer can lend it.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

/// Decodes every record of a message as a borrowed view; a bad line yields an error and
/// decoding goes on (the same rules as [`crate::decode_message`]).
pub fn decode_message_view(payload: &[u8]) -> impl Iterator<Item = Result<EventView<'_>, DecodeError>> + '_ {
    // One vectorized UTF-8 check of the whole message instead of one per string; a message
    // that fails it is decoded line by line from bytes, so only the bad line is refused.
    let text = std::str::from_utf8(payload).ok();
    non_blank_lines(payload).map(move |(index, line)| {
        // A line is a sub-slice of the payload cut at b'\n' (ASCII): in valid UTF-8 text its
        // ends are char boundaries, so slicing the text there yields exactly its bytes.
        let start = line.as_ptr() as usize - payload.as_ptr() as usize;
        let parsed = match text.and_then(|text| text.get(start..start + line.len())) {
            Some(line) => serde_json::from_str::<EventView<'_>>(line),
            None => serde_json::from_slice::<EventView<'_>>(line),
        };
        let view = parsed.map_err(|source| DecodeError::Json { index, source })?;
        check_version(index, view.v)?;
        Ok(view)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_message, encode_into};

    /// A record's fields as owned values, to compare two record types.
    fn fields<E: EventFields>(e: &E) -> String {
        format!(
            "{:?}",
            (
                e.site().to_owned(),
                e.path().to_owned(),
                e.ts(),
                e.visitor(),
                e.value(),
                e.props().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<Vec<_>>(),
                e.prop("plan").map(str::to_owned),
                e.unique("ip"),
            )
        )
    }

    #[test]
    fn views_read_the_same_as_records() {
        let mut r = EventRecord::new();
        r.site = "a.com".into();
        r.name = "signup".into();
        r.path = "/caf\u{e9} \"quoted\"\\".into();
        r.ts = 1_795_428_000_000;
        r.visitor = 7;
        r.value = Some(1.5);
        r.props.insert("plan".into(), "pro".into());
        r.props.insert("seats".into(), "5".into());
        r.uniques.insert("ip".into(), u64::MAX - 3);
        let mut payload = Vec::new();
        encode_into(&r, &mut payload);
        payload.extend_from_slice(b"{broken\n");
        encode_into(&r, &mut payload);
        let owned: Vec<_> = decode_message(&payload).collect();
        let views: Vec<_> = decode_message_view(&payload).collect();
        assert_eq!(owned.len(), views.len());
        for (o, v) in owned.iter().zip(&views) {
            match (o, v) {
                (Ok(o), Ok(v)) => assert_eq!(fields(o), fields(v)),
                (Err(DecodeError::Json { index: a, .. }), Err(DecodeError::Json { index: b, .. })) => assert_eq!(a, b),
                other => panic!("decoders disagree: {other:?}"),
            }
        }
    }

    #[test]
    fn a_line_of_invalid_utf8_is_refused_alone() {
        let mut r = EventRecord::new();
        r.site = "caf\u{e9}.example".into();
        r.name = "pageview".into();
        let mut payload = Vec::new();
        encode_into(&r, &mut payload);
        payload.extend_from_slice(b"{\"v\":1,\"site\":\"\xff\"}\n");
        encode_into(&r, &mut payload);
        let views: Vec<_> = decode_message_view(&payload).collect();
        assert_eq!(views.len(), 3);
        assert!(matches!(views[1], Err(DecodeError::Json { index: 1, .. })), "{:?}", views[1]);
        for view in [&views[0], &views[2]] {
            assert_eq!(view.as_ref().map(|v| v.site.as_ref()).ok(), Some("caf\u{e9}.example"));
        }
    }

    #[test]
    fn repeated_prop_keys_keep_the_last_value() {
        let payload = br#"{"v":1,"site":"a","props":{"k":"1","k":"2"}}"#;
        let view = decode_message_view(payload).next().and_then(Result::ok).expect("decodes");
        assert_eq!(view.props().collect::<Vec<_>>(), vec![("k", "2")]);
        let record = decode_message(payload).next().and_then(Result::ok).expect("decodes");
        assert_eq!(record.props().collect::<Vec<_>>(), vec![("k", "2")]);
        let payload = br#"{"v":1,"site":"a","uniques":{"ip":1,"ip":18446744073709551615}}"#;
        let view = decode_message_view(payload).next().and_then(Result::ok).expect("decodes");
        let record = decode_message(payload).next().and_then(Result::ok).expect("decodes");
        assert_eq!((view.unique("ip"), record.unique("ip")), (Some(u64::MAX), Some(u64::MAX)));
        assert_eq!(view.to_record(), record);
        assert!(decode_message_view(br#"{"v":1,"uniques":{"ip":-1}}"#).next().is_some_and(|r| r.is_err()));
    }
}

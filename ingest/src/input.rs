//! Request bodies: Plausible's `/api/event` form and Gallop's `/v1/events` batch form,
//! parsed into [`RawEvent`]s. Parsing checks shapes and types only; limits and meaning
//! are checked by `validate`.

use std::fmt;

use serde::{
    de::{self, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::error::FieldError;

/// An event as the client sent it, before validation and enrichment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RawEvent {
    pub(crate) site: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) referrer: Option<String>,
    /// Milliseconds since the epoch; `None` means "now".
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) props: Vec<(String, String)>,
    pub(crate) value: Option<f64>,
    pub(crate) currency: Option<String>,
    pub(crate) id: Option<String>,
    /// Client-chosen visitor identity (hashed with the day's salt; never forwarded).
    pub(crate) visitor: Option<String>,
    pub(crate) interactive: bool,
    /// Engagement events: scroll depth in percent, as sent (checked by `normalize`).
    pub(crate) scroll_depth: Option<f64>,
    /// Engagement events: engaged milliseconds, as sent (checked by `normalize`).
    pub(crate) engaged_ms: Option<f64>,
}

/// Gallop's own event form (`/v1/events`). Unknown fields are errors, to catch typos.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GallopInput {
    site: Option<String>,
    name: Option<String>,
    url: Option<String>,
    referrer: Option<String>,
    timestamp: Option<Timestamp>,
    props: Option<Props>,
    value: Option<f64>,
    currency: Option<String>,
    id: Option<String>,
    visitor: Option<String>,
    interactive: Option<bool>,
    scroll_depth: Option<f64>,
    engaged_ms: Option<f64>,
}

impl GallopInput {
    fn into_raw(self) -> RawEvent {
        RawEvent {
            site: self.site,
            name: self.name,
            url: self.url,
            referrer: self.referrer.filter(|r| !r.is_empty()),
            timestamp_ms: self.timestamp.map(|t| t.0),
            props: self.props.map(|p| p.0).unwrap_or_default(),
            value: self.value,
            currency: self.currency,
            id: self.id,
            visitor: self.visitor,
            interactive: self.interactive.unwrap_or(true),
            scroll_depth: self.scroll_depth,
            engaged_ms: self.engaged_ms,
        }
    }
}

/// Plausible's form, as its tracker script sends it. Unknown fields are ignored, as
/// Plausible does, so newer trackers keep working.
#[derive(Debug, Deserialize)]
struct PlausibleInput {
    #[serde(alias = "n")]
    name: Option<String>,
    #[serde(alias = "u")]
    url: Option<String>,
    #[serde(alias = "d")]
    domain: Option<String>,
    #[serde(alias = "r")]
    referrer: Option<String>,
    #[serde(alias = "p", alias = "meta", alias = "m")]
    props: Option<Props>,
    #[serde(alias = "$")]
    revenue: Option<Box<RawValue>>,
    #[serde(alias = "i")]
    interactive: Option<bool>,
    /// Engagement events: scroll depth in percent.
    sd: Option<f64>,
    /// Engagement events: engaged milliseconds since the previous engagement event.
    e: Option<f64>,
}

/// Parses a Plausible body into one event per listed domain.
pub(crate) fn parse_plausible(body: &str, max_domains: usize) -> Result<Vec<RawEvent>, Vec<FieldError>> {
    let input: PlausibleInput = from_json(body).map_err(|e| vec![e.into_field_error(None)])?;
    let mut errors = Vec::new();
    let (value, currency) = match input.revenue.as_deref().map(parse_revenue).transpose() {
        Ok(revenue) => revenue.unzip(),
        Err(e) => {
            errors.push(e);
            (None, None)
        }
    };
    let domains: Vec<String> = match &input.domain {
        Some(list) => list.split(',').map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).collect(),
        None => Vec::new(),
    };
    if domains.is_empty() {
        errors.push(FieldError::request("domain", "missing; the site the event belongs to is required"));
    } else if domains.len() > max_domains {
        errors.push(FieldError::request(
            "domain",
            format!("lists {} sites, more than {max_domains} (limit: ingest.limits.max_domains)", domains.len()),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let props = input.props.map(|p| p.0).unwrap_or_default();
    Ok(domains
        .into_iter()
        .map(|site| RawEvent {
            site: Some(site),
            name: input.name.clone(),
            url: input.url.clone(),
            referrer: input.referrer.clone().filter(|r| !r.is_empty()),
            timestamp_ms: None,
            props: props.clone(),
            value,
            currency: currency.clone(),
            id: None,
            visitor: None,
            interactive: input.interactive.unwrap_or(true),
            scroll_depth: input.sd,
            engaged_ms: input.e,
        })
        .collect())
}

/// Plausible revenue: `{"amount": 12.5 | "12.5", "currency": "EUR"}`, or that object
/// JSON-encoded in a string.
fn parse_revenue(raw: &RawValue) -> Result<(f64, String), FieldError> {
    #[derive(Deserialize)]
    struct Revenue {
        amount: serde_json::Value,
        currency: String,
    }
    let text = raw.get();
    let decoded: Result<Revenue, _> = match serde_json::from_str::<String>(text) {
        Ok(inner) => serde_json::from_str(&inner),
        Err(_) => serde_json::from_str(text),
    };
    let revenue = decoded.map_err(|e| {
        FieldError::request("revenue", format!("expected {{\"amount\": number, \"currency\": \"EUR\"}}: {e}"))
    })?;
    let amount = match &revenue.amount {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|a| a.is_finite())
    .ok_or_else(|| FieldError::request("revenue.amount", "must be a finite number or a numeric string"))?;
    let currency = revenue.currency.trim().to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(FieldError::request("revenue.currency", "must be a 3-letter ISO 4217 code such as EUR"));
    }
    Ok((amount, currency))
}

/// How a `/v1/events` body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line.
    NdJson,
}

/// Parses a `/v1/events` body. Every event is parsed; every bad one is reported by
/// index. At most `max_events` events are read.
pub(crate) fn parse_batch(body: &str, framing: Framing, max_events: usize) -> Result<Vec<RawEvent>, Vec<FieldError>> {
    let items: Vec<&str> = match framing {
        Framing::NdJson => body.lines().map(str::trim).filter(|l| !l.is_empty()).collect(),
        Framing::Json => {
            let trimmed = body.trim_start();
            if trimmed.starts_with('[') {
                // One pass when every event is good (the common case); otherwise each
                // event again on its own, to report every bad one by index.
                if let Ok(inputs) = serde_json::from_str::<Vec<GallopInput>>(body) {
                    if !inputs.is_empty() && inputs.len() <= max_events {
                        return Ok(inputs.into_iter().map(GallopInput::into_raw).collect());
                    }
                }
                let raw: Vec<&RawValue> = serde_json::from_str(body)
                    .map_err(|e| vec![FieldError::request("body", format!("malformed JSON array: {e}"))])?;
                raw.into_iter().map(RawValue::get).collect()
            } else if trimmed.starts_with('{') {
                vec![body]
            } else if trimmed.is_empty() {
                Vec::new()
            } else {
                return Err(vec![FieldError::request("body", "expected a JSON object or an array of objects")]);
            }
        }
    };
    if items.is_empty() {
        return Err(vec![FieldError::request("body", "contains no events")]);
    }
    if items.len() > max_events {
        return Err(vec![FieldError::request(
            "body",
            format!("holds {} events, more than {max_events} (limit: ingest.limits.max_batch_events)", items.len()),
        )]);
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match from_json::<GallopInput>(item) {
            Ok(input) => events.push(input.into_raw()),
            Err(e) => errors.push(e.into_field_error(Some(index))),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

/// One record of the public event contract (docs/topics.md, docs/event.schema.json): the
/// fields of `/v1/events` plus what an HTTP request would tell: `user_agent` (bot rules,
/// browser, OS, device) and `ip` (country, and with `user_agent` the visitor when there is
/// no `visitor` key). Unknown fields are errors, to catch typos.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicInput {
    site: Option<String>,
    name: Option<String>,
    url: Option<String>,
    referrer: Option<String>,
    timestamp: Option<Timestamp>,
    props: Option<Props>,
    value: Option<f64>,
    currency: Option<String>,
    id: Option<String>,
    visitor: Option<String>,
    interactive: Option<bool>,
    scroll_depth: Option<f64>,
    engaged_ms: Option<f64>,
    user_agent: Option<String>,
    ip: Option<String>,
}

/// A record of an input message, parsed: the event and what stands in for the request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopicRecord {
    pub(crate) event: RawEvent,
    pub(crate) user_agent: Option<String>,
    pub(crate) ip: Option<std::net::IpAddr>,
}

/// Why a record could not be parsed: `not_json` (the text is no JSON at all) or
/// `invalid` (JSON of the wrong shape), with the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordError {
    pub(crate) not_json: bool,
    pub(crate) error: FieldError,
}

/// Parses one record of an input message (`index` = its line, for error reports).
pub(crate) fn parse_record(text: &str, index: usize) -> Result<TopicRecord, RecordError> {
    let input: TopicInput = from_json(text).map_err(|e| RecordError {
        not_json: e.message.starts_with("malformed JSON"),
        error: e.into_field_error(Some(index)),
    })?;
    let ip = match input.ip.as_deref().map(str::trim).filter(|ip| !ip.is_empty()) {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| RecordError {
            not_json: false,
            error: FieldError::event(index, "ip", format!("{text:?} is not an IPv4 or IPv6 address")),
        })?),
    };
    Ok(TopicRecord {
        event: RawEvent {
            site: input.site,
            name: input.name,
            url: input.url,
            referrer: input.referrer.filter(|r| !r.is_empty()),
            timestamp_ms: input.timestamp.map(|t| t.0),
            props: input.props.map(|p| p.0).unwrap_or_default(),
            value: input.value,
            currency: input.currency,
            id: input.id,
            visitor: input.visitor,
            interactive: input.interactive.unwrap_or(true),
            scroll_depth: input.scroll_depth,
            engaged_ms: input.engaged_ms,
        },
        user_agent: input.user_agent.filter(|ua| !ua.trim().is_empty()),
        ip,
    })
}

/// A JSON error with the path of the field it concerns.
struct JsonError {
    path: String,
    message: String,
}

impl JsonError {
    fn into_field_error(self, index: Option<usize>) -> FieldError {
        FieldError { index, field: self.path, reason: self.message }
    }
}

/// Parses `text`; on failure, parses again tracking the path, to name the field at fault.
/// Valid input (the common case) pays no path-tracking cost.
fn from_json<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, JsonError> {
    serde_json::from_str(text).or_else(|_| from_json_tracked(text))
}

fn from_json_tracked<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let syntax = inner.is_syntax() || inner.is_eof();
        let field = if syntax {
            // A broken document has no meaningful field; point at the body.
            "body".to_owned()
        } else if path == "." || path == "?" || path.is_empty() {
            // Unknown and duplicate fields are reported at the root; the message names them.
            match message.split('`').nth(1) {
                Some(name) if message.starts_with("unknown field") || message.starts_with("duplicate field") => {
                    name.to_owned()
                }
                _ => "body".to_owned(),
            }
        } else {
            path
        };
        let message = if syntax { format!("malformed JSON: {message}") } else { message };
        JsonError { path: field, message }
    })?;
    deserializer.end().map_err(|e| JsonError { path: "body".into(), message: format!("malformed JSON: {e}") })?;
    Ok(value)
}

/// An event time: an RFC 3339 string or integer milliseconds since the epoch.
#[derive(Debug)]
struct Timestamp(i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time such as \"2026-11-23T10:00:00Z\" or integer epoch milliseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                let t = OffsetDateTime::parse(v, &Rfc3339)
                    .map_err(|e| E::custom(format!("invalid RFC 3339 time {v:?}: {e}")))?;
                i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                    .map(Timestamp)
                    .map_err(|_| E::custom("time out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v).map(Timestamp).map_err(|_| E::custom("epoch milliseconds out of range"))
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

/// Custom properties: an object of string, number or boolean values (numbers and booleans
/// become strings; `null` values are dropped), or such an object JSON-encoded in a string
/// (older Plausible trackers send that).
#[derive(Debug, Default)]
struct Props(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Props {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropsVisitor;
        impl<'de> Visitor<'de> for PropsVisitor {
            type Value = Props;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string, number or boolean values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Props, A::Error> {
                let mut props = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, PropValue>()? {
                    if let Some(value) = value.0 {
                        props.push((key, value));
                    }
                }
                Ok(Props(props))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Props, E> {
                serde_json::from_str::<Props>(v)
                    .map_err(|e| E::custom(format!("props string is not a JSON object: {e}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Props, E> {
                Ok(Props::default())
            }
        }
        deserializer.deserialize_any(PropsVisitor)
    }
}

/// One property value, rendered as a string; `None` for `null`.
struct PropValue(Option<String>);

impl<'de> Deserialize<'de> for PropValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = PropValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PropValue, E> {
                Ok(PropValue(Some(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<PropValue, E> {
                Ok(PropValue(Some(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropValue, E> {
                Ok(PropValue(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropValue, E> {
                Ok(PropValue(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropValue, E> {
                Ok(PropValue(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropValue, E> {
                Ok(PropValue(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<PropValue, E> {
                Ok(PropValue(None))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (site, name, props) of each expected event.
    type Expected<'a> = Vec<(&'a str, &'a str, Vec<(&'a str, &'a str)>)>;

    #[track_caller]
    fn check_plausible(body: &str, expect: Result<Expected<'_>, &str>) {
        let got = parse_plausible(body, 10);
        match (got, expect) {
            (Ok(events), Ok(want)) => {
                let got: Vec<_> = events
                    .iter()
                    .map(|e| {
                        (
                            e.site.clone().unwrap_or_default(),
                            e.name.clone().unwrap_or_default(),
                            e.props.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>(),
                        )
                    })
                    .collect();
                let want: Vec<_> = want
                    .into_iter()
                    .map(|(s, n, p)| {
                        (s.to_owned(), n.to_owned(), p.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
                    })
                    .collect();
                assert_eq!(got, want);
            }
            (Err(errors), Err(needle)) => {
                let text = format!("{errors:?}");
                assert!(text.contains(needle), "{text} should contain {needle}");
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn plausible_forms() {
        check_plausible(
            r#"{"n":"pageview","u":"https://a.com/","d":"a.com","r":null,"p":{"plan":"pro","n":3,"ok":true,"x":null}}"#,
            Ok(vec![("a.com", "pageview", vec![("plan", "pro"), ("n", "3"), ("ok", "true")])]),
        );
        check_plausible(
            r#"{"name":"signup","url":"https://a.com/","domain":"a.com, b.com","props":"{\"plan\":\"pro\"}"}"#,
            Ok(vec![("a.com", "signup", vec![("plan", "pro")]), ("b.com", "signup", vec![("plan", "pro")])]),
        );
        check_plausible(
            r#"{"n":"pageview","u":"https://a.com/","d":"a.com","m":{"k":"v"},"h":1}"#,
            Ok(vec![("a.com", "pageview", vec![("k", "v")])]),
        );
        check_plausible(r#"{"n":"pageview","u":"https://a.com/"}"#, Err("domain"));
        check_plausible(r#"{"n":"pageview","u":"https://a.com/","d":"a.com","p":{"k":{"deep":1}}}"#, Err("p.k"));
        check_plausible(r#"{"n":"pageview""#, Err("malformed JSON"));
        check_plausible(
            r#"{"n":5,"u":"https://a.com/","d":"a.com"}"#,
            Err("invalid type: integer `5`, expected a string"),
        );
    }

    #[test]
    fn plausible_revenue() {
        let events = parse_plausible(
            r#"{"n":"buy","u":"https://a.com/","d":"a.com","$":{"amount":"12.50","currency":"eur"}}"#,
            10,
        )
        .expect("valid");
        assert_eq!((events[0].value, events[0].currency.as_deref()), (Some(12.5), Some("EUR")));
        let events = parse_plausible(
            r#"{"n":"buy","u":"https://a.com/","d":"a.com","revenue":"{\"amount\":3,\"currency\":\"USD\"}"}"#,
            10,
        )
        .expect("valid");
        assert_eq!(events[0].value, Some(3.0));
        check_plausible(
            r#"{"n":"buy","u":"https://a.com/","d":"a.com","$":{"amount":"lots","currency":"EUR"}}"#,
            Err("revenue.amount"),
        );
    }

    #[test]
    fn batch_framings() {
        let one = r#"{"site":"a.com","name":"pageview","url":"https://a.com/","timestamp":"2026-11-23T10:00:00Z"}"#;
        let events = parse_batch(one, Framing::Json, 10).expect("object");
        assert_eq!(events[0].timestamp_ms, Some(1_795_428_000_000));
        let array = format!("[{one},{one}]");
        assert_eq!(parse_batch(&array, Framing::Json, 10).expect("array").len(), 2);
        let nd = format!("{one}\n\n{one}\n{one}\n");
        assert_eq!(parse_batch(&nd, Framing::NdJson, 10).expect("ndjson").len(), 3);
        let err = parse_batch(&nd, Framing::NdJson, 2).expect_err("too many");
        assert!(err[0].reason.contains("max_batch_events"), "{err:?}");
    }

    #[test]
    fn batch_reports_every_bad_event_by_index() {
        let body = "{\"site\":\"a.com\",\"name\":\"x\",\"url\":\"https://a.com/\"}\n{\"site\":\"a.com\",\"nmae\":\"x\"}\n{\"site\":1}\n{\"timestamp\":\"yesterday\"}\n{nope\n";
        let errors = parse_batch(body, Framing::NdJson, 10).expect_err("bad events");
        let got: Vec<_> = errors.iter().map(|e| (e.index, e.field.as_str())).collect();
        assert_eq!(got, vec![(Some(1), "nmae"), (Some(2), "site"), (Some(3), "timestamp"), (Some(4), "body")]);
        assert!(errors[0].reason.contains("unknown field"), "{errors:?}");
        assert!(errors[2].reason.contains("RFC 3339"), "{errors:?}");
        assert!(errors[3].reason.contains("malformed JSON"), "{errors:?}");
    }

    #[test]
    fn an_array_is_read_in_one_pass_or_event_by_event_alike() {
        let good = r#"{"site":"a.com","name":"pageview","url":"https://a.com/x","referrer":"","props":{"k":"v"},"value":2.5,"visitor":"u1","interactive":false}"#;
        let other = r#"{"site":"b.com","name":"signup","url":"https://b.com/","timestamp":1795428000000}"#;
        let array = format!("[{good}, {other}]");
        let nd = format!("{good}\n{other}\n");
        let whole = parse_batch(&array, Framing::Json, 10).expect("array");
        assert_eq!(whole, parse_batch(&nd, Framing::NdJson, 10).expect("ndjson"));
        assert_eq!(whole[0].referrer, None);
        assert_eq!(whole[0].props, vec![("k".to_owned(), "v".to_owned())]);
        // One bad event sends the array down the event-by-event path, which names each.
        let errors = parse_batch(&format!(r#"[{good}, {{"site":1}}, {other}, {{"nmae":"x"}}]"#), Framing::Json, 10)
            .expect_err("bad events");
        let got: Vec<_> = errors.iter().map(|e| (e.index, e.field.as_str())).collect();
        assert_eq!(got, vec![(Some(1), "site"), (Some(3), "nmae")]);
        let errors = parse_batch(&array, Framing::Json, 1).expect_err("too many");
        assert!(errors[0].reason.contains("holds 2 events, more than 1"), "{errors:?}");
        assert!(parse_batch("[]", Framing::Json, 1).expect_err("empty")[0].reason.contains("no events"));
    }

    #[test]
    fn epoch_millisecond_timestamps() {
        let events =
            parse_batch(r#"{"site":"a","name":"b","url":"https://a/","timestamp":1795428000000}"#, Framing::Json, 1)
                .expect("valid");
        assert_eq!(events[0].timestamp_ms, Some(1_795_428_000_000));
    }
}

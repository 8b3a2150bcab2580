//! A traqq event (`{"event": "purchase", "ip": "…", "geo": "US", "amount": 99.99}`) in
//! Gallop's terms: traqq's own reading of it (`IncomingEvent::from_json`, then
//! `validate_and_sanitize`), so that the values Gallop groups by are the very strings
//! traqq would have keyed its metrics with.
//!
//! - the name is the `event` string, required;
//! - only the properties the mapping uses are kept (traqq drops the rest too);
//! - strings are trimmed, `~` and `:` at their ends dropped and inside replaced by `_`
//!   (traqq's `sanitize_value`); a string left empty is dropped; numbers and booleans
//!   become their JSON text; arrays, objects and `null` are dropped;
//! - `bmp` properties become identifiers (hashed by the gateway, never kept as they are);
//! - the `adv` metrics' `add_key` becomes the event's value when its text is a number.

use gallop_config::{TraqqMapping, EVENT};
use gallop_ingest::ForeignEvent;
use serde_json::Value;

/// The characters traqq reserves for its keys.
const RESERVED: [char; 2] = ['~', ':'];

/// `event` read as traqq reads it; the error is traqq's own message.
pub(crate) fn read_event(event: &Value, mapping: &TraqqMapping) -> Result<ForeignEvent, String> {
    let Some(name) = event.get(EVENT).and_then(Value::as_str) else {
        return Err("missing required 'event' field".to_owned());
    };
    let name = sanitize(name).ok_or_else(|| "event name cannot be empty".to_owned())?;
    let mut foreign = ForeignEvent { name, ..ForeignEvent::default() };
    let Value::Object(properties) = event else { return Ok(foreign) };
    let value_field = mapping.value_field();
    for (key, value) in properties {
        if key == EVENT {
            continue;
        }
        let unique = mapping.counts_uniques_of(key);
        let grouped = mapping.groups_by(key);
        let is_value = value_field == Some(key.as_str());
        if !(unique || grouped || is_value) {
            continue;
        }
        let text = match value {
            Value::String(s) => match sanitize(s) {
                Some(s) => s,
                None => continue,
            },
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null | Value::Array(_) | Value::Object(_) => continue,
        };
        if is_value {
            // traqq adds a value only when its text parses as a number.
            foreign.value = text.parse::<f64>().ok();
        }
        if unique {
            foreign.identifiers.push((key.clone(), text));
        } else if grouped {
            foreign.props.push((key.clone(), text));
        }
    }
    Ok(foreign)
}

/// traqq's `sanitize_value`: trimmed, reserved characters dropped at the ends and replaced
/// by `_` inside; `None` when nothing is left. (traqq also cuts to 512 characters; here a
/// longer value meets the gateway's limits and is refused with their names.)
pub(crate) fn sanitize(value: &str) -> Option<String> {
    let trimmed = value.trim().trim_matches(|c| RESERVED.contains(&c));
    (!trimmed.is_empty()).then(|| trimmed.replace(RESERVED, "_"))
}

#[cfg(test)]
mod tests {
    use gallop_config::TraqqAddValue;
    use serde_json::json;

    use super::*;

    fn mapping() -> TraqqMapping {
        TraqqMapping {
            bitmap: vec!["ip".into()],
            add: vec!["event".into(), "event~geo".into(), "plan".into()],
            add_value: vec![TraqqAddValue { key: "event".into(), add_key: "amount".into() }],
            top: vec!["ref".into()],
        }
    }

    #[track_caller]
    fn check(event: Value, expect: Result<ForeignEvent, &str>) {
        assert_eq!(read_event(&event, &mapping()), expect.map_err(str::to_owned), "{event}");
    }

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn reads_events_as_traqq_does() {
        check(
            json!({"event": " purchase ", "ip": "1.2.3.4", "geo": "US", "amount": 99.99, "user_agent": "x"}),
            Ok(ForeignEvent {
                name: "purchase".into(),
                props: props(&[("geo", "US")]),
                value: Some(99.99),
                identifiers: props(&[("ip", "1.2.3.4")]),
            }),
        );
        check(
            json!({"event": "a:b", "geo": "~x~y:z~", "plan": true, "ref": "https://h.test/", "amount": "0.99"}),
            Ok(ForeignEvent {
                name: "a_b".into(),
                props: props(&[("geo", "x_y_z"), ("plan", "true"), ("ref", "https_//h.test/")]),
                value: Some(0.99),
                identifiers: vec![],
            }),
        );
        check(
            json!({"event": "x", "geo": "  ", "plan": null, "ref": [1], "amount": "lots", "ip": 7}),
            Ok(ForeignEvent { name: "x".into(), identifiers: props(&[("ip", "7")]), ..ForeignEvent::default() }),
        );
        check(json!({"name": "x"}), Err("missing required 'event' field"));
        check(json!({"event": 5}), Err("missing required 'event' field"));
        check(json!({"event": " ~: "}), Err("event name cannot be empty"));
        check(json!("purchase"), Err("missing required 'event' field"));
    }
}

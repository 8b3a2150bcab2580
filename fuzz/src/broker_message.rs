//! A broker message (NDJSON of `EventRecord`s) through both decoders,
//! `gallop_event::decode_message` (owned records) and `decode_message_view` (borrowed
//! views): neither panics, they yield the same number of lines, fail on the same lines with
//! the same kind of error (JSON vs. format version, same index), and for every line both
//! accept, every field read through the `EventFields` trait is equal (properties compared
//! as a map: the view keeps message order, the record sorts by key), as is
//! `EventView::to_record()`. An accepted record also survives `encode_into` +
//! `decode_message` unchanged.
use std::collections::BTreeMap;

use gallop_event::{decode_message, decode_message_view, encode_into, DecodeError, EventFields, EventRecord};

/// Everything `EventFields` exposes, owned and comparable (the value by its bits).
#[derive(Debug, PartialEq)]
struct Fields {
    strings: [String; 18],
    ts: i64,
    visitor: u64,
    value: Option<u64>,
    interactive: bool,
    scroll_depth: Option<u8>,
    engaged_ms: Option<u64>,
    props: BTreeMap<String, String>,
    prop_count: usize,
}

fn fields<E: EventFields>(e: &E) -> Fields {
    let strings = [
        e.site(),
        e.name(),
        e.host(),
        e.path(),
        e.referrer(),
        e.ref_host(),
        e.source(),
        e.utm_source(),
        e.utm_medium(),
        e.utm_campaign(),
        e.utm_content(),
        e.utm_term(),
        e.country(),
        e.browser(),
        e.browser_version(),
        e.os(),
        e.device(),
        e.currency(),
    ]
    .map(str::to_owned);
    let props: BTreeMap<String, String> = e.props().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    // `props()` promises each key once, and `prop(key)` must agree with it.
    for (k, v) in &props {
        assert_eq!(e.prop(k), Some(v.as_str()), "prop({k:?}) disagrees with props()");
    }
    Fields {
        strings,
        ts: e.ts(),
        visitor: e.visitor(),
        value: e.value().map(f64::to_bits),
        interactive: e.interactive(),
        scroll_depth: e.scroll_depth(),
        engaged_ms: e.engaged_ms(),
        prop_count: e.props().count(),
        props,
    }
}

/// Runs the check on one input; panics on a finding.
pub fn check(data: &[u8]) {
    let owned: Vec<_> = decode_message(data).collect();
    let views: Vec<_> = decode_message_view(data).collect();
    assert_eq!(owned.len(), views.len(), "decoders see a different number of lines in {}", crate::body::escape(data));
    for (line, (o, v)) in owned.iter().zip(&views).enumerate() {
        match (o, v) {
            (Ok(o), Ok(v)) => {
                let (fo, fv) = (fields(o), fields(v));
                assert_eq!(fo.prop_count, fo.props.len(), "record props() repeats a key");
                assert_eq!(fv.prop_count, fv.props.len(), "view props() repeats a key");
                assert_eq!(fo, fv, "line {line}: record and view read differently");
                assert_eq!(v.v, o.v);
                assert_eq!(v.id, o.id.as_str());
                let back = v.to_record();
                // Compare with the value by bits (both are finite, but be exact).
                assert!(
                    back == *o && back.value.map(f64::to_bits) == o.value.map(f64::to_bits),
                    "line {line}: view.to_record() differs:\n{back:?}\n{o:?}"
                );
                round_trip(o);
            }
            (Err(DecodeError::Json { index: a, .. }), Err(DecodeError::Json { index: b, .. })) => {
                assert_eq!(a, b, "line {line}: JSON errors at different indexes");
            }
            (
                Err(DecodeError::Version { index: a, version: va }),
                Err(DecodeError::Version { index: b, version: vb }),
            ) => {
                assert_eq!((a, va), (b, vb), "line {line}: version errors differ");
            }
            (o, v) => panic!(
                "line {line}: decoders disagree\nrecord: {:?}\nview:   {:?}\ninput: {}",
                o.as_ref().map(|_| "ok"),
                v.as_ref().map(|_| "ok"),
                crate::body::escape(data)
            ),
        }
    }
}

/// A decoded record, encoded again, decodes to itself.
fn round_trip(record: &EventRecord) {
    let mut message = Vec::new();
    encode_into(record, &mut message);
    let mut decoded = decode_message(&message);
    let again = decoded.next().expect("one line").unwrap_or_else(|e| {
        panic!("a decoded record, re-encoded, does not decode: {e}\n{}", crate::body::escape(&message))
    });
    assert!(decoded.next().is_none(), "one record encodes to one line");
    assert!(
        again == *record && again.value.map(f64::to_bits) == record.value.map(f64::to_bits),
        "re-encoded record decodes differently:\n{}\nbefore: {record:?}\nafter:  {again:?}",
        crate::body::escape(&message)
    );
}

//! Shared by the body targets: turning fuzz input into (User-Agent, body), one
//! `BodyChecker` per process, and the properties every accepted record must have.

use std::{borrow::Cow, sync::OnceLock};

use gallop_config::Config;
use gallop_event::{decode_message, decode_message_view, encode_into, EventRecord, FORMAT_VERSION};
use gallop_ingest::{BodyChecker, BodyFormat};

/// The gateway clock every body is checked at (2026-05-28T20:26:40Z). Seeds with timestamps
/// sit around it so the time-window checks pass and the rest of the record is exercised.
pub(crate) const NOW_MS: i64 = 1_780_000_000_000;

/// Realistic User-Agents, picked by the first input byte when it is below 0x80.
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "",
];

/// The checker built from the default config, once per process (compiling the uap-core
/// rules takes a moment), and the range of event times that config accepts at [`NOW_MS`].
struct Checker {
    checker: BodyChecker,
    accepted_ts: std::ops::RangeInclusive<i64>,
}

fn checker() -> &'static Checker {
    static CHECKER: OnceLock<Checker> = OnceLock::new();
    CHECKER.get_or_init(|| {
        let config = Config::default();
        let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).expect("a window of sane size");
        let accepted_ts = NOW_MS - millis(config.time.allowed_lateness)..=NOW_MS + millis(config.time.max_future);
        let checker = BodyChecker::new(config).expect("the default config builds a BodyChecker");
        Checker { checker, accepted_ts }
    })
}

/// `TEST_GALLOP_FUZZ_VERBOSE=1` prints what each body became (to check seeds: run the target
/// on a corpus with `-runs=0`).
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("TEST_GALLOP_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

/// Splits `data` into a User-Agent and a body. First byte `b`: below 0x80 picks one of
/// [`USER_AGENTS`] and the body is the rest; otherwise the next `b & 0x7f` bytes are the
/// User-Agent (lossily decoded as UTF-8) and the body follows them.
pub(crate) fn split(data: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let (&first, rest) = data.split_first()?;
    if first < 0x80 {
        return Some((Cow::Borrowed(USER_AGENTS[usize::from(first) % USER_AGENTS.len()]), rest));
    }
    let len = usize::from(first & 0x7f).min(rest.len());
    let (ua, body) = rest.split_at(len);
    Some((String::from_utf8_lossy(ua), body))
}

/// Checks `body` in `format` and, when it is accepted, every property an accepted record
/// must have. Panics (a finding) when one does not hold.
pub(crate) fn check_body(format: BodyFormat, body: &[u8], user_agent: &str) {
    let checker = checker();
    let result = checker.checker.check(format, body, user_agent, NOW_MS);
    if verbose() {
        eprintln!("{format:?} body, User-Agent {user_agent:?}: {result:#?}");
    }
    let Ok(records) = result else {
        return;
    };
    assert!(!records.is_empty(), "an accepted body yields at least one record");
    for record in &records {
        check_record(record, &checker.accepted_ts);
    }
    // The whole set as one broker message, as the batcher would publish it.
    let mut message = Vec::new();
    for record in &records {
        encode_into(record, &mut message);
    }
    let decoded: Vec<EventRecord> = decode_message(&message)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("a message of accepted records does not decode: {e}\n{}", escape(&message)));
    assert_records_eq(&records, &decoded, &message, "decode_message");
    let viewed: Vec<EventRecord> =
        decode_message_view(&message).map(|v| v.map(|v| v.to_record())).collect::<Result<_, _>>().unwrap_or_else(|e| {
            panic!("a message of accepted records does not decode as views: {e}\n{}", escape(&message))
        });
    assert_records_eq(&records, &viewed, &message, "decode_message_view");
}

/// What `normalize` promises about a record it accepted.
fn check_record(r: &EventRecord, accepted_ts: &std::ops::RangeInclusive<i64>) {
    assert_eq!(r.v, FORMAT_VERSION, "{r:?}");
    assert!(!r.site.is_empty() && r.site.trim() == r.site, "site empty or untrimmed: {r:?}");
    assert!(!r.name.is_empty() && r.name.trim() == r.name, "name empty or untrimmed: {r:?}");
    assert!(!r.host.is_empty(), "host empty: {r:?}");
    assert!(r.path.starts_with('/'), "path does not start with '/': {r:?}");
    assert!(r.id.is_empty() && r.visitor == 0, "id/visitor are the gateway's to set: {r:?}");
    assert!(accepted_ts.contains(&r.ts), "ts {} outside the accepted window {accepted_ts:?}: {r:?}", r.ts);
    if let Some(value) = r.value {
        assert!(value.is_finite(), "value not finite: {r:?}");
    }
    assert!(
        r.currency.is_empty() || (r.currency.len() == 3 && r.currency.bytes().all(|b| b.is_ascii_uppercase())),
        "currency not a 3-letter upper-case code: {r:?}"
    );
    if r.name != gallop_event::ENGAGEMENT {
        assert!(
            r.scroll_depth.is_none() && r.engaged_ms.is_none(),
            "engagement fields on a non-engagement event: {r:?}"
        );
    }
    if let Some(sd) = r.scroll_depth {
        assert!(sd <= 100, "scroll_depth above 100: {r:?}");
    }
    if let Some(e) = r.engaged_ms {
        assert!(e <= 86_400_000, "engaged_ms above a day: {r:?}");
    }
}

fn assert_records_eq(expected: &[EventRecord], got: &[EventRecord], message: &[u8], how: &str) {
    assert_eq!(expected.len(), got.len(), "{how}: record count changed\n{}", escape(message));
    for (e, g) in expected.iter().zip(got) {
        if e != g {
            // Name the first field that differs; the float case gets its bits.
            let detail = match (e.value, g.value) {
                (Some(a), Some(b)) if a.to_bits() != b.to_bits() => {
                    format!("value {a:?} ({:#018x}) came back as {b:?} ({:#018x})", a.to_bits(), b.to_bits())
                }
                _ => String::new(),
            };
            panic!(
                "{how}: record did not round-trip. {detail}\nencoded: {}\nbefore: {e:?}\nafter:  {g:?}",
                escape(message)
            );
        }
    }
}

/// Bytes as escaped text for panic messages.
pub(crate) fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

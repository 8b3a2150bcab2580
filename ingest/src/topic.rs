//! Topic ingestion: messages applications publish to the input subject or topic (the public
//! event contract, docs/topics.md) go through the very checks an HTTP request does —
//! validation and limits, enrichment, bot rules, visitor hashing — into the partitioned
//! stream. Bad records go to the dead letters with the reason; they never hold up the
//! records behind them.
//!
//! An input message is acknowledged only after every event derived from it and every dead
//! letter of it is acknowledged by the broker. Events without a client `id` get one derived
//! from the message's origin and line, so a message processed again after a crash yields
//! the same events under the same message ids, which the partitioned stream drops
//! (JetStream: inside `nats.duplicate_window`; Kafka: the processor's dedup window).

use std::{future::Future, sync::Arc, time::Duration};

use futures::{stream::FuturesUnordered, StreamExt};
use gallop_broker::{DeadLetter, DeadLetters, InputMessage, InputSource, PublishError};
use gallop_support::Backoff;
use tracing::{error, info, warn};

use crate::{
    admit::{Admission, Admitted, EventId, VisitorFrom},
    error::FieldError,
    input::{parse_record, RecordError, TopicRecord},
    normalize::{normalize, Rules, Sender},
    state::AppState,
    Gateway,
};

/// What became of one input message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InputOutcome {
    /// Events published into the partitioned stream.
    pub accepted: usize,
    /// Records dropped by the bot rules.
    pub bots: usize,
    /// Records dropped because an earlier record of the message had the same site and id
    /// (the same event, counted once).
    pub duplicates: usize,
    /// Records (or, for a whole message, 1) sent to the dead letters.
    pub dead: usize,
}

/// A record that goes to the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    /// The record's line; `None` for the whole message.
    record: Option<usize>,
    reason: &'static str,
    field: String,
    detail: String,
}

/// Reads `input` until `shutdown` resolves, at most `input.max_in_flight` messages at once,
/// and acknowledges each once everything derived from it is stored. A message whose events
/// cannot be published (the broker is down) is retried with backoff; at shutdown the ones
/// still in progress are left unacknowledged, for the broker to deliver again.
pub async fn run_input<I: InputSource>(
    gateway: Gateway,
    mut input: I,
    dead: Arc<dyn DeadLetters>,
    shutdown: impl Future<Output = ()>,
) {
    let state = gateway.state();
    let max_in_flight = state.config.input.max_in_flight.max(1);
    let describe = input.describe();
    info!(input = %describe, max_in_flight, "topic ingestion started");
    let mut in_flight = FuturesUnordered::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = input.next(), if in_flight.len() < max_in_flight => match next {
                Some(Ok(message)) => {
                    backoff.reset();
                    in_flight.push(settle(gateway.clone(), message, dead.clone()));
                }
                Some(Err(e)) => {
                    warn!(input = %describe, error = %e, "reading the input failed; retrying");
                    backoff.wait().await;
                }
                None => {
                    error!(input = %describe, "the input stopped delivering; topic ingestion ends");
                    break;
                }
            },
        }
    }
    // Let what is in progress finish while the broker answers; what does not is delivered
    // again after a restart.
    let grace = state.config.ingest.publish_timeout * 2;
    if tokio::time::timeout(grace, async { while in_flight.next().await.is_some() {} }).await.is_err() {
        warn!(left = in_flight.len(), "input messages still in progress at shutdown stay unacknowledged");
    }
    info!(input = %describe, "topic ingestion stopped");
}

/// Processes `message` until it is done (retrying while the broker is unavailable), then
/// acknowledges it.
async fn settle(gateway: Gateway, message: InputMessage, dead: Arc<dyn DeadLetters>) {
    let state = gateway.state();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match ingest_message(state, &message, dead.as_ref()).await {
            Ok(outcome) => {
                state.metrics.input_messages.with_label_values(&["processed"]).inc();
                if outcome.dead > 0 {
                    info!(origin = %message.origin, dead = outcome.dead, accepted = outcome.accepted,
                        "input records sent to the dead letters");
                }
                if let Err(e) = message.ack.ack().await {
                    // Stored already; a redelivery yields the same ids and is dropped downstream.
                    warn!(origin = %message.origin, error = %e, "acknowledging an input message failed");
                }
                return;
            }
            Err(e) if e.is_retryable() => {
                state.metrics.input_messages.with_label_values(&["retried"]).inc();
                warn!(origin = %message.origin, error = %e, "publishing an input message's events failed; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                // Retrying cannot help (a chunk larger than the broker takes): the message
                // goes to the dead letters whole, loudly; chunks stored before stay stored.
                error!(origin = %message.origin, error = %e, "the broker refused an input message's events; \
                    the whole message goes to the dead letters");
                let detail = format!("the broker refused the events made from this message: {e}");
                let letter = DeadLetter {
                    payload: &message.payload,
                    reason: "broker_refused",
                    field: "message",
                    detail: &detail,
                    origin: &message.origin,
                    source: &message.source,
                    record: None,
                };
                match dead.send(letter).await {
                    Ok(()) => {
                        state.metrics.dead_letters.with_label_values(&["broker_refused"]).inc();
                        state.metrics.input_messages.with_label_values(&["refused"]).inc();
                        if let Err(e) = message.ack.ack().await {
                            warn!(origin = %message.origin, error = %e, "acknowledging an input message failed");
                        }
                        return;
                    }
                    Err(e) => {
                        warn!(origin = %message.origin, error = %e, "sending a dead letter failed; retrying");
                        backoff.wait().await;
                    }
                }
            }
        }
    }
}

/// Turns one input message into events of the partitioned stream and dead letters, and
/// waits until the broker acknowledged all of them.
pub(crate) async fn ingest_message(
    state: &AppState,
    message: &InputMessage,
    dead: &dyn DeadLetters,
) -> Result<InputOutcome, PublishError> {
    let config = &state.config;
    if !state.publisher.is_ready() {
        return Err(PublishError::NotConnected("not connected to the broker".to_owned()));
    }
    let (records, mut refused) = split_records(&message.payload, config.input.max_records_per_message);
    let mut admission = Admission::begin(state, records.len())
        .await
        .map_err(|e| PublishError::NotConnected(format!("visitor salt: {e}")))?;
    let rules =
        Rules { limits: &config.ingest.limits, time: &config.time, sites: &config.ingest.sites, url_required: true };
    let mut outcome = InputOutcome::default();
    let no_headers = axum::http::HeaderMap::new();
    for (index, record) in records {
        let TopicRecord { event, user_agent, ip } = record;
        let ua = state.user_agents.parse(user_agent.as_deref().unwrap_or(""));
        if user_agent.is_some() && ua.bot {
            outcome.bots += 1;
            continue;
        }
        let country = ip.map(|ip| state.geo.country(&no_headers, ip)).unwrap_or_default();
        let sender = Sender { ua: &ua, country: &country, now_ms: admission.now_ms() };
        // `normalize` checks both; they travel apart from the record (the key only as a hash).
        let client_id = event.id.clone();
        let visitor_key = event.visitor.clone();
        let record = match normalize(event, index, &sender, &rules) {
            Ok(record) => record,
            Err(errors) => {
                refused.push(refusal(index, "invalid", &errors));
                continue;
            }
        };
        let visitor = match (&visitor_key, ip, &user_agent) {
            (Some(key), _, _) => VisitorFrom::Key(key),
            (None, Some(ip), Some(ua)) => VisitorFrom::Request(ip, ua),
            _ => {
                refused.push(Refused {
                    record: Some(index),
                    reason: "invalid",
                    field: "visitor".to_owned(),
                    detail: "a record needs a visitor key, or ip and user_agent to derive one from".to_owned(),
                });
                continue;
            }
        };
        // Without a client id, one derived from where the record sits in the log, so a
        // redelivery gives the same id.
        let id = client_id.map_or_else(|| EventId::Derived(format!("in/{}/{index}", message.origin)), EventId::Client);
        match admission.admit(record, visitor, id) {
            Admitted::To(_) => outcome.accepted += 1,
            Admitted::Duplicate => outcome.duplicates += 1,
        }
    }

    let letters: Vec<(Refused, &[u8])> =
        refused.into_iter().map(|r| (r.clone(), record_bytes(&message.payload, r.record))).collect();
    let sends = letters.iter().map(|(r, payload)| {
        dead.send(DeadLetter {
            payload,
            reason: r.reason,
            field: &r.field,
            detail: &r.detail,
            origin: &message.origin,
            source: &message.source,
            record: r.record,
        })
    });
    let (published, sent) = futures::future::join(admission.submit(), futures::future::join_all(sends)).await;
    if let Some(e) = published.into_iter().map(|(_, result)| result).chain(sent).find_map(Result::err) {
        return Err(e);
    }
    for (refused, _) in &letters {
        state.metrics.dead_letters.with_label_values(&[refused.reason]).inc();
    }
    state.metrics.events_accepted.inc_by(outcome.accepted as u64);
    state.metrics.events_bots.inc_by(outcome.bots as u64);
    state.metrics.events_duplicate.inc_by(outcome.duplicates as u64);
    outcome.dead = letters.len();
    Ok(outcome)
}

/// The refusal of record `index` for `errors` (the first names the field; all are told).
fn refusal(index: usize, reason: &'static str, errors: &[FieldError]) -> Refused {
    let field = errors.first().map_or_else(|| "body".to_owned(), |e| e.field.clone());
    let detail = errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>().join("; ");
    Refused { record: Some(index), reason, field, detail }
}

/// The records of an input message with their lines, and the refusals found while reading
/// it. One JSON object, or one per line (NDJSON); a message in which no line is JSON at
/// all, that is not UTF-8, or that holds more than `max_records` records is refused whole.
fn split_records(payload: &[u8], max_records: usize) -> (Vec<(usize, TopicRecord)>, Vec<Refused>) {
    let whole = |reason: &'static str, detail: String| {
        (Vec::new(), vec![Refused { record: None, reason, field: "message".to_owned(), detail }])
    };
    let Ok(text) = std::str::from_utf8(payload) else {
        return whole("not_json", "the message is not UTF-8 text".to_owned());
    };
    let lines: Vec<(usize, &str)> =
        text.split('\n').enumerate().map(|(i, l)| (i, l.trim())).filter(|(_, l)| !l.is_empty()).collect();
    if lines.is_empty() {
        return whole("not_json", "the message is empty".to_owned());
    }
    // One object written over several lines (pretty-printed) is one record.
    if lines.len() > 1
        && parse_record(lines[0].1, 0).is_err_and(|e| e.not_json)
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    {
        return match parse_record(text, 0) {
            Ok(record) => (vec![(0, record)], Vec::new()),
            // The record is the whole message: that is what goes to the dead letters.
            Err(RecordError { error, .. }) => {
                (Vec::new(), vec![Refused { record: None, ..refusal(0, "invalid", &[error]) }])
            }
        };
    }
    if lines.len() > max_records {
        return whole(
            "too_many_records",
            format!("{} records, more than {max_records} (limit: input.max_records_per_message)", lines.len()),
        );
    }
    let mut records = Vec::with_capacity(lines.len());
    let mut refused = Vec::new();
    let mut any_json = false;
    for (index, line) in lines {
        match parse_record(line, index) {
            Ok(record) => {
                any_json = true;
                records.push((index, record));
            }
            Err(RecordError { not_json, error }) => {
                any_json |= !not_json;
                let reason = if not_json { "not_json" } else { "invalid" };
                refused.push(refusal(index, reason, &[error]));
            }
        }
    }
    if !any_json {
        let first = refused.first().map(|r| r.detail.clone()).unwrap_or_default();
        return whole("not_json", format!("no line of the message is JSON ({first})"));
    }
    (records, refused)
}

/// The bytes of line `record` of `payload` (the whole payload for `None`).
fn record_bytes(payload: &[u8], record: Option<usize>) -> &[u8] {
    match record {
        None => payload,
        Some(index) => {
            let line = payload.split(|b| *b == b'\n').nth(index).unwrap_or_default();
            line.strip_suffix(b"\r").unwrap_or(line)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    /// (record, reason, field) of a refusal.
    type Refusal = (Option<usize>, &'static str, String);

    fn reasons(payload: &str) -> (Vec<usize>, Vec<Refusal>) {
        let (records, refused) = split_records(payload.as_bytes(), 3);
        (
            records.iter().map(|(i, _)| *i).collect(),
            refused.into_iter().map(|r| (r.record, r.reason, r.field)).collect(),
        )
    }

    #[test]
    fn records_of_a_message() {
        let ok = r#"{"site":"a.test","name":"pageview","url":"https://a.test/","visitor":"u"}"#;
        let pretty = "{\n  \"site\": \"a.test\",\n  \"name\": \"x\",\n  \"url\": \"https://a.test/\"\n}";
        for (payload, want_records, want_refused) in [
            (ok.to_owned(), vec![0], vec![]),
            (format!("{ok}\n\n{ok}\r\n"), vec![0, 2], vec![]),
            (pretty.to_owned(), vec![0], vec![]),
            (pretty.replace("site", "sight"), vec![], vec![(None, "invalid", "sight".to_owned())]),
            (
                format!("{ok}\nnot json\n{{\"site\":1}}"),
                vec![0],
                vec![(Some(1), "not_json", "body".to_owned()), (Some(2), "invalid", "site".to_owned())],
            ),
            (format!("{ok}\n{{\"sight\":\"a\"}}"), vec![0], vec![(Some(1), "invalid", "sight".to_owned())]),
            ("garbage\nmore garbage".to_owned(), vec![], vec![(None, "not_json", "message".to_owned())]),
            ("   \n".to_owned(), vec![], vec![(None, "not_json", "message".to_owned())]),
            (format!("{ok}\n{ok}\n{ok}\n{ok}"), vec![], vec![(None, "too_many_records", "message".to_owned())]),
        ] {
            assert_eq!(reasons(&payload), (want_records, want_refused), "{payload}");
        }
        let (_, refused) = split_records(&[0xff, 0xfe], 3);
        assert_eq!(refused[0].reason, "not_json");
    }

    #[test]
    fn a_record_keeps_its_original_bytes() {
        let payload = b"{\"a\":1}\r\nbad line\n{\"b\":2}";
        assert_eq!(record_bytes(payload, Some(1)), b"bad line");
        assert_eq!(record_bytes(payload, Some(0)), b"{\"a\":1}");
        assert_eq!(record_bytes(payload, None), payload);
    }

    /// docs/event.schema.json, the published contract, agrees with what the gateway reads:
    /// its examples are accepted by both, every property it lists is a field the gateway
    /// knows, and records it refuses are refused by the gateway too.
    #[test]
    fn the_published_schema_matches_the_gateway() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/event.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("schema JSON");
        let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
        let examples = schema["examples"].as_array().expect("examples");
        assert!(examples.len() >= 2);
        for example in examples {
            assert!(validator.is_valid(example), "{example}");
            parse_record(&example.to_string(), 0).unwrap_or_else(|e| panic!("{example}: {e:?}"));
        }
        let samples = serde_json::json!({
            "site": "a.test", "name": "x", "url": "https://a.test/", "referrer": "https://b.test/",
            "timestamp": 1, "props": {"k": "v"}, "value": 1.5, "currency": "EUR", "id": "i", "visitor": "v",
            "interactive": false, "scroll_depth": 40, "engaged_ms": 1200, "user_agent": "ua", "ip": "192.0.2.1"
        });
        let properties = schema["properties"].as_object().expect("properties");
        let listed: Vec<&String> = properties.keys().collect();
        let sampled: Vec<&String> = samples.as_object().expect("object").keys().collect();
        assert_eq!(listed.len(), sampled.len(), "schema properties {listed:?} vs fields {sampled:?}");
        for name in listed {
            let one = serde_json::json!({ name.as_str(): samples[name.as_str()].clone() });
            parse_record(&one.to_string(), 0).unwrap_or_else(|e| panic!("{name} is not read by the gateway: {e:?}"));
        }
        assert_eq!(schema["required"], serde_json::json!(["site", "name", "url"]));
        assert!(validator.is_valid(&samples), "{samples}");
        for refused in [
            serde_json::json!({"site": "a.test", "name": "x", "url": "https://a.test/", "sight": 1}),
            serde_json::json!({"site": "a.test", "name": "x", "url": "https://a.test/", "timestamp": true}),
            serde_json::json!({"site": "a.test", "name": "x", "url": "https://a.test/", "value": "12"}),
            serde_json::json!({"site": "a.test", "name": "x", "url": "https://a.test/", "props": [1]}),
        ] {
            assert!(!validator.is_valid(&refused), "the schema accepts {refused}");
            assert!(parse_record(&refused.to_string(), 0).is_err(), "the gateway accepts {refused}");
        }
    }

    #[test]
    fn an_ip_must_be_an_address() {
        let error = parse_record(r#"{"ip":"300.1.1.1"}"#, 4).expect_err("bad ip");
        assert_eq!((error.error.index, error.error.field.as_str()), (Some(4), "ip"));
        let record = parse_record(r#"{"ip":" 2001:db8::1 ","user_agent":"x"}"#, 0).expect("record");
        assert_eq!(record.ip, Some("2001:db8::1".parse::<IpAddr>().expect("ip")));
    }

    /// Acknowledges nothing (the test reads what was published, not the input).
    struct NoAck;

    impl gallop_broker::Acknowledge for NoAck {
        fn ack(&self) -> futures::future::BoxFuture<'_, Result<(), gallop_broker::AckError>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// Keeps the dead letters' reasons.
    #[derive(Default)]
    struct Letters(std::sync::Mutex<Vec<String>>);

    impl DeadLetters for Letters {
        fn send<'a>(&'a self, letter: DeadLetter<'a>) -> futures::future::BoxFuture<'a, Result<(), PublishError>> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(letter.reason.to_owned());
            Box::pin(async { Ok(()) })
        }
    }

    /// An `id` names one event: an input message holding the same (site, id) twice holds one
    /// event, counted once (the first copy kept; docs/topics.md), whatever the lines between.
    #[tokio::test]
    async fn the_same_id_twice_in_one_message_is_one_event() {
        let broker = Arc::new(gallop_broker::MemoryBroker::new(4));
        let salts = Arc::new(gallop_broker::LocalSaltStore::new());
        let gateway = Gateway::new(gallop_config::Config::default(), broker.clone(), salts).await.expect("a gateway");
        let line = |site: &str, id: &str, path: &str| {
            format!(r#"{{"site":"{site}","name":"order","url":"https://{site}{path}","id":"{id}","visitor":"v"}}"#)
        };
        let payload = [
            line("a.test", "o-1", "/first"),
            line("a.test", "o-2", "/"),
            line("a.test", "o-1", "/second"),
            line("b.test", "o-1", "/"),
        ]
        .join("\n");
        let message = InputMessage {
            payload: payload.into(),
            origin: "INPUT:1".to_owned(),
            source: "gallop.in.test".to_owned(),
            delivered: 1,
            ack: gallop_broker::Ack::new(NoAck),
        };
        let letters = Letters::default();
        let outcome = ingest_message(gateway.state(), &message, &letters).await.expect("published");
        assert_eq!(outcome, InputOutcome { accepted: 3, bots: 0, duplicates: 1, dead: 0 });
        assert!(letters.0.lock().expect("letters").is_empty(), "a repeated id is no dead letter");
        let mut stored: Vec<(String, String, String)> = (0..4)
            .flat_map(|partition| broker.messages(partition))
            .flat_map(|m| gallop_event::decode_records(&m.payload))
            .map(|r| r.expect("a record"))
            .map(|r| (r.site, r.id, r.path))
            .collect();
        stored.sort();
        let expected = [("a.test", "o-1", "/first"), ("a.test", "o-2", "/"), ("b.test", "o-1", "/")];
        assert_eq!(stored, expected.map(|(s, i, p)| (s.to_owned(), i.to_owned(), p.to_owned())));
        assert!(gateway.metrics().render().contains("gallop_events_duplicate_total 1"));
    }
}

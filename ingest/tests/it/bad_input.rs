//! The bad-input catalogue: each case's status and error text, and nothing published.

use time::OffsetDateTime;

use crate::fixture::{test_config, TestGateway, FIREFOX};

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Substrings the response body must contain.
    expect: Vec<String>,
}

fn case(
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    expect: &[&str],
) -> Case {
    Case {
        name,
        path,
        content_type,
        body: body.into(),
        status,
        expect: expect.iter().map(|s| (*s).to_owned()).collect(),
    }
}

const V1: &str = "/v1/events";
const PL: &str = "/api/event";
const JSON: Option<&str> = Some("application/json");
const ND: Option<&str> = Some("application/x-ndjson");
const TEXT: Option<&str> = Some("text/plain");

fn ev(extra: &str) -> String {
    format!(r#"{{"site":"example.com","name":"pageview","url":"https://example.com/"{extra}}}"#)
}

fn catalogue() -> Vec<Case> {
    let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let not_utf8 = b"{\"site\":\"example.com\",\"name\":\"\xff\xfe\"}".to_vec();
    let bad_byte = format!("offset {}", not_utf8.iter().position(|b| *b == 0xff).unwrap_or_default());
    let props = |n: usize| (0..n).map(|i| format!(r#""k{i}":"v""#)).collect::<Vec<_>>().join(",");
    vec![
        case(
            "body over the limit (batch)",
            V1,
            JSON,
            format!("[{}]", vec![ev(""); 200].join(",")),
            413,
            &["\"field\":\"body\"", "larger than 8192 bytes", "ingest.limits.max_body_bytes"],
        ),
        case(
            "body over the limit (plausible)",
            PL,
            TEXT,
            format!(r#"{{"n":"x","u":"https://example.com/","d":"example.com","p":{{"k":"{}"}}}}"#, "v".repeat(9000)),
            413,
            &["larger than 8192 bytes"],
        ),
        case("not UTF-8", V1, JSON, not_utf8, 400, &["not valid UTF-8", &bad_byte]),
        case(
            "malformed JSON (plausible)",
            PL,
            TEXT,
            r#"{"n":"pageview","u":"#,
            400,
            &["malformed JSON", "\"field\":\"body\""],
        ),
        case("malformed JSON array", V1, JSON, format!("[{},{{", ev("")), 400, &["malformed JSON array"]),
        case("not an object", V1, JSON, "42", 400, &["expected a JSON object or an array of objects"]),
        case("empty batch", V1, JSON, "[]", 400, &["contains no events"]),
        case(
            "name of wrong type",
            V1,
            JSON,
            r#"{"site":"example.com","name":7,"url":"https://example.com/"}"#,
            400,
            &["\"field\":\"name\"", "invalid type: integer `7`, expected a string"],
        ),
        case(
            "nested prop value",
            V1,
            JSON,
            ev(r#","props":{"a":{"b":1}}"#),
            400,
            &["\"field\":\"props.a\"", "expected a string, number or boolean"],
        ),
        case("value of wrong type", V1, JSON, ev(r#","value":"12""#), 400, &["\"field\":\"value\"", "invalid type"]),
        case(
            "unknown field (typo)",
            V1,
            JSON,
            ev(r#","referer":"https://a.com/""#),
            400,
            &["\"field\":\"referer\"", "unknown field"],
        ),
        case(
            "missing site",
            V1,
            JSON,
            r#"{"name":"pageview","url":"https://example.com/"}"#,
            400,
            &["\"field\":\"site\"", "missing; this field is required"],
        ),
        case(
            "missing name",
            V1,
            JSON,
            r#"{"site":"example.com","url":"https://example.com/"}"#,
            400,
            &["\"field\":\"name\"", "missing"],
        ),
        case(
            "missing url",
            V1,
            JSON,
            r#"{"site":"example.com","name":"pageview"}"#,
            400,
            &["\"field\":\"url\"", "missing"],
        ),
        case(
            "missing domain (plausible)",
            PL,
            TEXT,
            r#"{"n":"pageview","u":"https://example.com/"}"#,
            400,
            &["\"field\":\"domain\"", "missing"],
        ),
        case(
            "unknown site",
            V1,
            JSON,
            r#"{"site":"evil.example","name":"pageview","url":"https://evil.example/"}"#,
            400,
            &["\"field\":\"site\"", "\\\"evil.example\\\" is not an allowed site (ingest.sites)"],
        ),
        case(
            "unknown site (plausible)",
            PL,
            TEXT,
            r#"{"n":"pageview","u":"https://evil.example/","d":"evil.example"}"#,
            400,
            &["not an allowed site"],
        ),
        case(
            "timestamp too old",
            V1,
            JSON,
            ev(&format!(r#","timestamp":{}"#, now - 2 * 3_600_000)),
            400,
            &["\"field\":\"timestamp\"", "older than the allowed lateness of 1h (time.allowed_lateness)"],
        ),
        case(
            "timestamp in the future",
            V1,
            JSON,
            ev(&format!(r#","timestamp":{}"#, now + 3_600_000)),
            400,
            &["more than 5m in the future (time.max_future)"],
        ),
        case(
            "timestamp not RFC 3339",
            V1,
            JSON,
            ev(r#","timestamp":"23/11/2026""#),
            400,
            &["\"field\":\"timestamp\"", "invalid RFC 3339 time"],
        ),
        case(
            "scroll depth over 100 (plausible engagement)",
            PL,
            TEXT,
            r#"{"n":"engagement","u":"https://example.com/","d":"example.com","sd":150,"e":10}"#,
            400,
            &["\"field\":\"scroll_depth\"", "whole number from 0 to 100 (Plausible: sd), got 150"],
        ),
        case(
            "negative engaged time",
            V1,
            JSON,
            r#"{"site":"example.com","name":"engagement","url":"https://example.com/","engaged_ms":-5}"#,
            400,
            &["\"field\":\"engaged_ms\"", "whole number from 0 to 86400000 (Plausible: e)"],
        ),
        case(
            "scroll depth on a pageview",
            PL,
            TEXT,
            r#"{"n":"pageview","u":"https://example.com/","d":"example.com","sd":20}"#,
            400,
            &["\"field\":\"scroll_depth\"", "only `engagement` events carry scroll_depth"],
        ),
        case(
            "a site that would break out of a SQL literal",
            V1,
            JSON,
            r#"{"site":"x\\' OR 1=1 -- ","name":"pageview","url":"https://example.com/"}"#,
            400,
            &["\"field\":\"site\"", "not allowed in a site name", "letters, digits"],
        ),
        case(
            "relative url",
            V1,
            JSON,
            r#"{"site":"example.com","name":"pageview","url":"/pricing"}"#,
            400,
            &["\"field\":\"url\"", "not a valid absolute URL"],
        ),
        case(
            "url too long",
            V1,
            JSON,
            format!(r#"{{"site":"example.com","name":"pageview","url":"https://example.com/{}"}}"#, "a".repeat(2100)),
            400,
            &["\"field\":\"url\"", "longer than 2048 bytes (limit: ingest.limits.max_url_bytes)"],
        ),
        case(
            "name too long",
            V1,
            JSON,
            format!(r#"{{"site":"example.com","name":"{}","url":"https://example.com/"}}"#, "n".repeat(121)),
            400,
            &["longer than 120 bytes (limit: ingest.limits.max_name_bytes)"],
        ),
        case(
            "site too long",
            V1,
            JSON,
            format!(r#"{{"site":"{}","name":"x","url":"https://example.com/"}}"#, "s".repeat(254)),
            400,
            &["longer than 253 bytes (limit: ingest.limits.max_site_bytes)"],
        ),
        case(
            "referrer too long",
            V1,
            JSON,
            ev(&format!(r#","referrer":"https://r.com/{}""#, "r".repeat(2100))),
            400,
            &["\"field\":\"referrer\"", "ingest.limits.max_referrer_bytes"],
        ),
        case(
            "too many props",
            V1,
            JSON,
            ev(&format!(r#","props":{{{}}}"#, props(31))),
            400,
            &["has 31 properties, more than 30 (limit: ingest.limits.max_props)"],
        ),
        case(
            "prop key too long",
            V1,
            JSON,
            ev(&format!(r#","props":{{"{}":"v"}}"#, "k".repeat(301))),
            400,
            &["key longer than 300 bytes (limit: ingest.limits.max_prop_key_bytes)"],
        ),
        case(
            "prop value too long",
            V1,
            JSON,
            ev(&format!(r#","props":{{"k":"{}"}}"#, "v".repeat(2001))),
            400,
            &["\"field\":\"props.k\"", "value longer than 2000 bytes (limit: ingest.limits.max_prop_value_bytes)"],
        ),
        case(
            "id too long",
            V1,
            JSON,
            ev(&format!(r#","id":"{}""#, "i".repeat(129))),
            400,
            &["\"field\":\"id\"", "ingest.limits.max_id_bytes"],
        ),
        case(
            "batch too long",
            V1,
            ND,
            format!("{}\n", ev("")).repeat(11),
            400,
            &["holds 11 events, more than 10 (limit: ingest.limits.max_batch_events)"],
        ),
        case(
            "unsupported Content-Type (batch)",
            V1,
            Some("application/x-www-form-urlencoded"),
            ev(""),
            415,
            &["\"field\":\"Content-Type\"", "application/json or application/x-ndjson"],
        ),
        case(
            "missing Content-Type (batch)",
            V1,
            None,
            ev(""),
            415,
            &["missing; expected application/json or application/x-ndjson"],
        ),
        case(
            "unsupported Content-Type (plausible)",
            PL,
            Some("multipart/form-data"),
            r#"{"n":"x"}"#,
            415,
            &["text/plain or application/json"],
        ),
        case(
            "bad revenue",
            PL,
            TEXT,
            r#"{"n":"buy","u":"https://example.com/","d":"example.com","$":{"amount":"much","currency":"EUR"}}"#,
            400,
            &["\"field\":\"revenue.amount\""],
        ),
        case(
            "too many domains",
            PL,
            TEXT,
            format!(r#"{{"n":"x","u":"https://example.com/","d":"{}"}}"#, ["example.com"; 11].join(",")),
            400,
            &["lists 11 sites, more than 10 (limit: ingest.limits.max_domains)"],
        ),
        case(
            "bad currency",
            V1,
            JSON,
            ev(r#","value":3,"currency":"euro""#),
            400,
            &["\"field\":\"currency\"", "3-letter ISO 4217"],
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_gets_a_clear_error_and_nothing_is_published() {
    let mut config = test_config();
    config.ingest.limits.max_body_bytes = 8192;
    config.ingest.limits.max_batch_events = 10;
    config.ingest.sites = vec!["example.com".to_owned()];
    let gateway = TestGateway::start(config).await;
    let cases = catalogue();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for case in cases {
        let reply = gateway.post(case.path, case.content_type, case.body, &[("user-agent", FIREFOX)]).await;
        let mut problems = Vec::new();
        if reply.status != case.status {
            problems.push(format!("status {} (want {})", reply.status, case.status));
        }
        if reply.headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            problems.push("body is not JSON".to_owned());
        }
        for needle in &case.expect {
            if !reply.body.contains(needle.as_str()) {
                problems.push(format!("body lacks {needle:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {} — body: {}", case.name, problems.join(", "), reply.body));
        }
    }
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
    assert!(gateway.records().await.is_empty(), "a rejected request publishes nothing");
    let metrics = gateway.get("/metrics").await.body;
    assert!(metrics.contains("gallop_http_requests_total{route=\"/v1/events\",status=\"400\"}"), "{metrics}");
    assert!(metrics.contains("gallop_http_requests_total{route=\"/v1/events\",status=\"413\"} 1"), "{metrics}");
}

#[tokio::test]
async fn one_bad_event_rejects_the_whole_batch_and_every_bad_one_is_listed() {
    let gateway = TestGateway::start(test_config()).await;
    let good = ev("");
    let body = format!(
        "{good}\n{}\n{good}\n{}\n",
        r#"{"site":"example.com","name":"x"}"#, r#"{"site":"","name":"x","url":"https://example.com/"}"#
    );
    let reply = gateway.post(V1, ND, body, &[]).await;
    assert_eq!(reply.status, 400);
    let parsed: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON error body");
    let listed: Vec<(u64, &str)> = parsed["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .map(|e| (e["index"].as_u64().expect("index"), e["field"].as_str().expect("field")))
        .collect();
    assert_eq!(listed, vec![(1, "url"), (3, "site")]);
    // A request is answered after its events were published: nothing of this one can follow.
    assert!(gateway.records().await.is_empty(), "the good events of a rejected batch are not published");
    // What was accepted before stays intact.
    assert_eq!(gateway.post(V1, JSON, good.clone(), &[]).await.status, 202);
    assert_eq!(gateway.post(V1, JSON, "{broken", &[]).await.status, 400);
    assert_eq!(gateway.records().await.len(), 1);
}

//! Gallop's `/v1/events` batch form: JSON object, array and NDJSON; dedup of retried ids.

use time::OffsetDateTime;

use crate::fixture::{test_config, TestGateway, FIREFOX};

fn event(i: usize, ts_ms: i64) -> String {
    format!(
        r#"{{"site":"app.example","name":"signup","url":"https://app.example/s/{i}","timestamp":{ts_ms},"props":{{"plan":"p{}"}},"value":{i}.5,"visitor":"user-{}"}}"#,
        i % 3,
        i % 10
    )
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test]
async fn ndjson_batch_of_100_is_published_whole() {
    let gateway = TestGateway::start(test_config()).await;
    let ts = now_ms() - 60_000;
    let body: String = (0..100).map(|i| event(i, ts) + "\n").collect();
    let reply = gateway.post("/v1/events", Some("application/x-ndjson"), body, &[("user-agent", FIREFOX)]).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body, r#"{"accepted":100,"dropped_bots":0,"dropped_duplicates":0}"#);
    let records = gateway.records().await;
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(|r| r.ts == ts && r.site == "app.example" && r.name == "signup"));
    let value_sum: f64 = records.iter().filter_map(|r| r.value).sum();
    assert_eq!(value_sum, (0..100).map(|i| i as f64 + 0.5).sum::<f64>());
    let visitors: std::collections::HashSet<u64> = records.iter().map(|r| r.visitor).collect();
    assert_eq!(visitors.len(), 10, "visitor keys user-0..user-9");
    // Ten visitors over four partitions: fewer messages than events.
    assert!(gateway.messages().await.len() <= 4);
}

#[tokio::test]
async fn json_array_and_single_object_with_rfc3339_time() {
    let gateway = TestGateway::start(test_config()).await;
    let ts = OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let rfc = ts.format(&time::format_description::well_known::Rfc3339).expect("format");
    let one = format!(r#"{{"site":"a.example","name":"pageview","url":"https://a.example/","timestamp":"{rfc}"}}"#);
    let reply = gateway.post("/v1/events", Some("application/json"), one.clone(), &[]).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let reply =
        gateway.post("/v1/events", Some("application/json; charset=utf-8"), format!("[{one},{one}]"), &[]).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let records = gateway.records().await;
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.ts == (ts.unix_timestamp_nanos() / 1_000_000) as i64));
}

#[tokio::test]
async fn a_retried_request_with_client_ids_is_stored_once() {
    let gateway = TestGateway::start(test_config()).await;
    let body: String = (0..20)
        .map(|i| {
            format!(
                r#"{{"site":"a.example","name":"order","url":"https://a.example/","id":"order-{i}","visitor":"v{i}"}}"#
            ) + "\n"
        })
        .collect();
    for _ in 0..3 {
        let reply = gateway.post("/v1/events", Some("application/x-ndjson"), body.clone(), &[]).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let records = gateway.records().await;
    assert_eq!(records.len(), 20, "three identical requests, each event stored once");
    let mut ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert!(ids.contains(&"order-7"), "client ids are kept");
}

/// An `id` names one event: a request holding the same (site, id) twice holds one event,
/// counted once (the first copy kept), as a request sent twice is; the same id on two sites
/// is two events. docs/security.md says so.
#[tokio::test]
async fn the_same_id_twice_in_one_request_is_one_event() {
    let gateway = TestGateway::start(test_config()).await;
    let event = |site: &str, id: &str, path: &str| {
        format!(r#"{{"site":"{site}","name":"order","url":"https://{site}{path}","id":"{id}","visitor":"v"}}"#) + "\n"
    };
    let body = [
        event("a.example", "order-1", "/first"),
        event("a.example", "order-2", "/"),
        event("a.example", "order-1", "/second"),
        event("b.example", "order-1", "/"),
        event("a.example", "order-1", "/third"),
    ]
    .concat();
    let reply = gateway.post("/v1/events", Some("application/x-ndjson"), body.clone(), &[]).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body, r#"{"accepted":3,"dropped_bots":0,"dropped_duplicates":2}"#);
    // Sent again (a client whose answer was lost): still those three.
    let reply = gateway.post("/v1/events", Some("application/x-ndjson"), body, &[]).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let mut stored: Vec<(String, String, String)> =
        gateway.records().await.into_iter().map(|r| (r.site, r.id, r.path)).collect();
    stored.sort();
    let expected = [("a.example", "order-1", "/first"), ("a.example", "order-2", "/"), ("b.example", "order-1", "/")];
    assert_eq!(stored, expected.map(|(s, i, p)| (s.to_owned(), i.to_owned(), p.to_owned())));
    let metrics = gateway.get("/metrics").await.body;
    assert!(metrics.contains("gallop_events_duplicate_total 4"), "two per request:\n{metrics}");
}

#[tokio::test]
async fn requests_without_client_ids_are_not_deduplicated() {
    let gateway = TestGateway::start(test_config()).await;
    let body = r#"{"site":"a.example","name":"pageview","url":"https://a.example/"}"#;
    for _ in 0..2 {
        assert_eq!(gateway.post("/v1/events", Some("application/json"), body, &[]).await.status, 202);
    }
    let records = gateway.records().await;
    assert_eq!(records.len(), 2, "two real page views");
    assert_ne!(records[0].id, records[1].id, "the gateway makes unique ids");
}

#[tokio::test]
async fn block_and_ndjson_gateways_publish_the_same_records() {
    let ts = now_ms() - 60_000;
    let body: String = (0..300).map(|i| event(i, ts) + "\n").collect();
    let mut published = Vec::new();
    for format in [gallop_config::MessageEncoding::Ndjson, gallop_config::MessageEncoding::Block] {
        let mut config = test_config();
        config.ingest.batching.format = format;
        // Small messages: the block path's size bound must cut a request's part too.
        config.ingest.batching.max_bytes = 16 * 1024;
        let gateway = TestGateway::start(config).await;
        let reply =
            gateway.post("/v1/events", Some("application/x-ndjson"), body.clone(), &[("user-agent", FIREFOX)]).await;
        assert_eq!(reply.status, 202, "{format:?}: {}", reply.body);
        let messages = gateway.messages().await;
        assert!(messages.iter().all(|m| m.payload.len() <= 16 * 1024), "{format:?}: a message over max_bytes");
        let is_block = |p: &[u8]| gallop_event::MessageFormat::of(p) != gallop_event::MessageFormat::Ndjson;
        assert!(messages.iter().all(|m| is_block(&m.payload) == (format == gallop_config::MessageEncoding::Block)));
        let mut records = gateway.records().await;
        // The same events, whatever their partition messages' order; ids and visitor hashes
        // (each test gateway has a salt of its own) differ per gateway.
        records.sort_by(|a, b| a.path.cmp(&b.path));
        for record in &mut records {
            record.id.clear();
            record.visitor = 0;
        }
        published.push((records, messages.iter().map(|m| m.payload.len()).sum::<usize>()));
    }
    assert_eq!(published[0].0.len(), 300);
    assert!(published[0].0 == published[1].0, "the records differ between the formats");
    assert!(published[1].1 * 3 < published[0].1, "block {} bytes vs NDJSON {}", published[1].1, published[0].1);
}

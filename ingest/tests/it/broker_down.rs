//! NATS outage: 503 with Retry-After while the broker is away, nothing half-published,
//! reconnect and accept again when it is back — without restarting the gateway.

use std::time::Duration;

use crate::fixture::{test_config, Proxy, TestGateway, FIREFOX};

#[tokio::test]
async fn broker_down_gives_503_then_recovers() {
    let proxy = Proxy::start().await;
    let mut config = test_config();
    config.nats.url = proxy.url();
    config.ingest.publish_timeout = Duration::from_millis(800);
    let gateway = TestGateway::start(config).await;
    let event = |path: &str| format!(r#"{{"n":"pageview","u":"https://example.com{path}","d":"example.com"}}"#);
    let send =
        |body: String| async { gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", FIREFOX)]).await };

    assert_eq!(send(event("/before")).await.status, 202);
    gateway.wait_ready(200, Duration::from_secs(1)).await;

    proxy.set_up(false);
    gateway.wait_ready(503, Duration::from_secs(10)).await;
    for path in ["/during-1", "/during-2"] {
        let reply = send(event(path)).await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
        assert!(reply.body.contains("\"field\":\"broker\""), "{}", reply.body);
    }
    let batch = (0..5)
        .map(|i| {
            format!(
                r#"{{"site":"example.com","name":"x","url":"https://example.com/during-batch-{i}","visitor":"v{i}"}}"#
            ) + "\n"
        })
        .collect::<String>();
    let reply = gateway.post("/v1/events", Some("application/x-ndjson"), batch, &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.body);

    proxy.set_up(true);
    gateway.wait_ready(200, Duration::from_secs(15)).await;
    let reply = send(event("/after")).await;
    assert_eq!(reply.status, 202, "{}", reply.body);

    let paths: Vec<String> = gateway.records().await.into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/before", "/after"], "events answered 503 are never published, not even after reconnecting");
    let metrics = gateway.get("/metrics").await.body;
    assert!(metrics.contains("gallop_http_requests_total{route=\"/api/event\",status=\"503\"} 2"), "{metrics}");
}

#[tokio::test]
async fn unreachable_nats_at_start_is_a_clear_error() {
    let mut config = test_config();
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    config.nats.url = format!("nats://127.0.0.1:{port}");
    config.nats.connect_timeout = Duration::from_millis(500);
    let err = gallop_nats::NatsBroker::connect(&config.nats, 4, Duration::from_secs(1))
        .await
        .expect_err("nothing listens there");
    let text = err.to_string();
    assert!(text.contains(&format!("cannot connect to NATS at nats://127.0.0.1:{port}")), "{text}");
}

#[tokio::test]
async fn a_full_stream_refuses_new_events_and_loses_none_it_accepted() {
    let mut config = test_config();
    // Discard-new is the default: a full stream refuses, it never drops what it holds.
    config.nats.max_bytes = 8 * 1024;
    config.ingest.stall_after = Duration::from_secs(3);
    let gateway = TestGateway::start(config).await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let body = format!(r#"{{"n":"pageview","u":"https://example.com/p{i}","d":"example.com"}}"#);
        let reply = gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", FIREFOX)]).await;
        match reply.status {
            202 => accepted.push(format!("/p{i}")),
            503 => {
                refused = Some(reply);
                break;
            }
            other => panic!("status {other}: {}", reply.body),
        }
    }
    let refused = refused.expect("an 8 KiB stream fills up within 200 events");
    assert!(refused.body.contains("out of storage"), "{}", refused.body);
    assert_eq!(refused.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    let ready = gateway.get("/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("out of storage"), "{}", ready.body);
    let paths: Vec<String> = gateway.records().await.into_iter().map(|r| r.path).collect();
    assert_eq!(paths, accepted, "every accepted event is still in the stream, in order");
    let metrics = gateway.get("/metrics").await.body;
    assert!(metrics.contains("gallop_publish_failures_total{kind=\"storage_full\"} 1"), "{metrics}");
}

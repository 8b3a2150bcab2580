//! Health, readiness, metrics, CORS and graceful shutdown.

use crate::fixture::{test_config, TestGateway, FIREFOX};

#[tokio::test]
async fn health_ready_and_metrics() {
    let gateway = TestGateway::start(test_config()).await;
    assert_eq!(gateway.get("/health").await.status, 200);
    let ready = gateway.get("/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    let body = r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#;
    assert_eq!(gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", FIREFOX)]).await.status, 202);
    let metrics = gateway.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    for line in [
        "gallop_http_requests_total{route=\"/api/event\",status=\"202\"} 1",
        "gallop_events_accepted_total 1",
        "gallop_publish_duration_seconds_count 1",
        "gallop_publishes_in_flight 0",
        "gallop_broker_message_events_count 1",
    ] {
        assert!(metrics.body.contains(line), "missing {line:?} in\n{}", metrics.body);
    }
}

#[tokio::test]
async fn cors_preflight_allows_trackers() {
    let gateway = TestGateway::start(test_config()).await;
    let response = gateway
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/api/event", gateway.url))
        .header("origin", "https://blog.example.org")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("*"));
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let mut config = test_config();
    // A long linger keeps the request in flight when shutdown starts.
    config.ingest.batching.linger = std::time::Duration::from_millis(300);
    let mut gateway = TestGateway::start(config).await;
    let url = format!("{}/api/event", gateway.url);
    let http = gateway.http.clone();
    let request = tokio::spawn(async move {
        http.post(url)
            .header("content-type", "text/plain")
            .header("user-agent", FIREFOX)
            .body(r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    gateway.stop().await.expect("clean shutdown");
    assert_eq!(request.await.expect("task").expect("answered"), 202);
    assert_eq!(gateway.records().await.len(), 1, "the in-flight event was published before exit");
}

#[tokio::test]
async fn api_keys_guard_the_batch_route_and_metrics() {
    let mut config = test_config();
    config.ingest.auth.event_keys = vec![gallop_support::hash_key("server-key-0123456789")];
    config.ingest.auth.metrics_keys = vec![gallop_support::hash_key("scraper-key-0123456789")];
    let gateway = TestGateway::start(config).await;
    let batch = r#"{"site":"example.com","name":"signup","url":"https://example.com/"}"#;
    let post = |headers: &'static [(&'static str, &'static str)]| {
        gateway.post("/v1/events", Some("application/json"), batch, headers)
    };
    for headers in [
        &[][..],
        &[("authorization", "Bearer wrong-key-0123456789")][..],
        &[("authorization", "scraper-key-0123456789")][..],
        // A metrics key opens /metrics only.
        &[("x-api-key", "scraper-key-0123456789")][..],
    ] {
        let reply = post(headers).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
        assert_eq!(reply.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
        assert!(reply.body.contains("Authorization: Bearer <key>"), "{}", reply.body);
    }
    assert_eq!(post(&[("authorization", "Bearer server-key-0123456789")]).await.status, 202);
    assert_eq!(post(&[("x-api-key", "server-key-0123456789")]).await.status, 202);
    // The browser route cannot hold a secret: the site allow-list guards it instead.
    let body = r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#;
    assert_eq!(gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", FIREFOX)]).await.status, 202);
    assert_eq!(gateway.get("/metrics").await.status, 401);
    let metrics = gateway
        .http
        .get(format!("{}/metrics", gateway.url))
        .bearer_auth("scraper-key-0123456789")
        .send()
        .await
        .expect("request");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("body");
    assert!(text.contains("gallop_http_requests_total{route=\"/v1/events\",status=\"401\"} 4"), "{text}");
    assert!(!text.contains("server-key") && !text.contains("scraper-key"), "keys never reach metrics");
    assert_eq!(gateway.get("/health").await.status, 200);
    assert_eq!(gateway.records().await.len(), 3);
}

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

//! The gateway against hostile or unlucky clients: slowloris heads, slow bodies, floods of
//! idle connections, bodies that together exceed the byte budget, endless distinct
//! User-Agents. Each test asserts the bound and that `/health` keeps answering.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use crate::fixture::{test_config, TestGateway, FIREFOX};

/// The value of the sample `name` (with its labels, as printed) on a metrics page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn addr(gateway: &TestGateway) -> String {
    gateway.url.trim_start_matches("http://").to_owned()
}

/// `/health` must answer 200 within a second, however busy the gateway is.
async fn health_answers(gateway: &TestGateway) {
    let reply =
        tokio::time::timeout(Duration::from_secs(1), gateway.get("/health")).await.expect("/health answered within 1s");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Reads until the peer closes (0 bytes) or `within` passes; returns what came and whether
/// it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn slowloris_heads_are_cut_at_the_header_timeout() {
    let mut config = test_config();
    config.ingest.server.header_timeout = Duration::from_millis(800);
    let gateway = TestGateway::start(config).await;
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr(&gateway)).await.expect("connect");
        stream.write_all(b"POST /api/event HTTP/1.1\r\nHost: x\r\n").await.expect("first line");
        attackers.push(stream);
    }
    // One more header line every 200 ms would keep a naive server waiting forever.
    for round in 0..3 {
        for stream in &mut attackers {
            let _ = stream.write_all(format!("X-Slow-{round}: y\r\n").as_bytes()).await;
        }
        health_answers(&gateway).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut stream in attackers {
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
        assert!(closed, "a connection that never finished its head must be closed");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "closed after {elapsed:?}; header_timeout is 800ms");
    health_answers(&gateway).await;
    let page = gateway.get("/metrics").await.body;
    assert!(metric(&page, "gallop_http_connections") <= 2.0, "connections left open:\n{page}");
}

#[tokio::test]
async fn slow_bodies_get_408_at_the_body_timeout() {
    let mut config = test_config();
    config.ingest.server.body_timeout = Duration::from_millis(700);
    let gateway = TestGateway::start(config).await;
    let mut stream = TcpStream::connect(addr(&gateway)).await.expect("connect");
    let head = format!(
        "POST /api/event HTTP/1.1\r\nHost: x\r\nUser-Agent: {FIREFOX}\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(b"{\"n\":\"pageview\",").await.expect("first bytes");
    let started = Instant::now();
    let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("ingest.server.body_timeout"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    health_answers(&gateway).await;
    assert!(gateway.records().await.is_empty());
}

#[tokio::test]
async fn an_idle_flood_stays_bounded_and_health_answers() {
    let mut config = test_config();
    config.ingest.server.max_connections = 16;
    config.ingest.server.header_timeout = Duration::from_secs(30);
    let gateway = TestGateway::start(config).await;
    // Ten times the cap, all idle: a naive server keeps every one (and its descriptor).
    let mut idle = Vec::new();
    for _ in 0..160 {
        if let Ok(stream) = TcpStream::connect(addr(&gateway)).await {
            idle.push(stream);
        }
    }
    // Past the cap and the shed slots, connections are closed at once; shed ones within a
    // second. Probes still get through, on a shed slot or a freed one.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = reqwest::Client::new().get(format!("{}/health", gateway.url)).send();
        let reply = tokio::time::timeout(Duration::from_secs(1), probe).await;
        if matches!(&reply, Ok(Ok(r)) if r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "/health never answered during an idle flood: {reply:?}");
    }
    let page = loop {
        // Through the probe's kept-alive connection if it has one, else a freed slot.
        let probe = gateway.http.get(format!("{}/metrics", gateway.url)).send();
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
            break reply.text().await.expect("metrics body");
        }
        assert!(Instant::now() < deadline + Duration::from_secs(5), "/metrics never answered during the flood");
    };
    let open = metric(&page, "gallop_http_connections");
    assert!(open <= 16.0 + 16.0 + 2.0, "{open} connections open with max_connections = 16:\n{page}");
    assert!(metric(&page, "gallop_http_connections_refused_total{reason=\"closed\"}") > 0.0, "{page}");
    // An ingestion request on a shed connection is answered 503 + Retry-After, unread.
    let mut shed = None;
    for _ in 0..50 {
        let Ok(mut stream) = TcpStream::connect(addr(&gateway)).await else { continue };
        let body = r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#;
        let request = format!(
            "POST /api/event HTTP/1.1\r\nHost: x\r\nUser-Agent: {FIREFOX}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
        if reply.starts_with("HTTP/1.1 503") {
            shed = Some(reply);
            break;
        }
    }
    let shed = shed.expect("a request on a connection past the cap is answered 503");
    assert!(shed.to_ascii_lowercase().contains("retry-after: 7"), "{shed}");
    assert!(shed.contains("ingest.server.max_connections"), "{shed}");
    drop(idle);
    health_answers(&gateway).await;
    assert!(gateway.records().await.is_empty(), "nothing of a shed request is published");
}

#[tokio::test]
async fn bodies_beyond_the_byte_budget_get_503_before_being_read() {
    let mut config = test_config();
    config.ingest.limits.max_body_bytes = 16 * 1024;
    config.ingest.server.max_inflight_bytes = 64 * 1024;
    let gateway = TestGateway::start(config).await;
    // Each declares 16 000 bytes and sends half: four fit the 64 KiB budget.
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16000\r\n\r\n{}",
        " ".repeat(8000)
    );
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr(&gateway)).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("half a body");
        holders.push(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = gateway.get("/metrics").await.body;
        if metric(&page, "gallop_http_inflight_bytes") >= 64_000.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the four bodies were never counted:\n{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = gateway.post("/v1/events", Some("application/json"), " ".repeat(16_000), &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    assert!(reply.body.contains("ingest.server.max_inflight_bytes"), "{}", reply.body);
    health_answers(&gateway).await;
    // Once they go, the budget is free again.
    drop(holders);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = gateway.get("/metrics").await.body;
        if metric(&page, "gallop_http_inflight_bytes") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "bytes of closed requests stay counted:\n{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = r#"{"site":"example.com","name":"pageview","url":"https://example.com/"}"#;
    let reply = gateway.post("/v1/events", Some("application/json"), body, &[]).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
}

#[tokio::test]
async fn distinct_user_agents_cannot_grow_the_cache_past_its_bytes() {
    let mut config = test_config();
    config.ingest.user_agent_cache = 100_000;
    config.ingest.user_agent_cache_bytes = 256 * 1024;
    let gateway = TestGateway::start(config).await;
    let body = r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#;
    // 600 distinct 2 KB User-Agents: 1.2 MB of keys against a 256 KiB cache (and each is
    // parsed as its first ingest.limits.max_user_agent_bytes = 1024 bytes).
    for i in 0..600 {
        let ua = format!("{FIREFOX} {i:06} {}", "x".repeat(2000));
        let reply = gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", ua.as_str())]).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let page = gateway.get("/metrics").await.body;
    let cached = metric(&page, "gallop_user_agent_cache_bytes");
    assert!(cached > 0.0 && cached <= 256.0 * 1024.0, "User-Agent cache holds {cached} bytes:\n{page}");
    // A User-Agent past the head limit (32 KiB) is refused by the HTTP layer with 431.
    let huge = format!("{FIREFOX} {}", "y".repeat(200 * 1024));
    let reply = gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", huge.as_str())]).await;
    assert_eq!(reply.status, 431, "{}", reply.body);
    health_answers(&gateway).await;
    assert_eq!(gateway.records().await.len(), 600);
}

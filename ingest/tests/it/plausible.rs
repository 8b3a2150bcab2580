//! Plausible-format requests as the tracker script sends them, read back from the stream.

use time::OffsetDateTime;

use crate::fixture::{test_config, TestGateway, FIREFOX};

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test]
async fn text_plain_short_keys_land_normalized() {
    let gateway = TestGateway::start(test_config()).await;
    let before = now_ms();
    let reply = gateway
        .post(
            "/api/event",
            Some("text/plain"),
            r#"{"n":"pageview","u":"https://example.com/pricing?utm_source=news&utm_medium=email&utm_campaign=launch#plans","d":"example.com","r":"https://www.google.com/search?q=gallop","p":{"plan":"pro","seats":5}}"#,
            &[("user-agent", FIREFOX), ("x-forwarded-for", "198.51.100.20"), ("cf-ipcountry", "de")],
        )
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (202, "ok"));
    let records = gateway.records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.v, 1);
    assert_eq!((r.site.as_str(), r.name.as_str()), ("example.com", "pageview"));
    assert_eq!((r.host.as_str(), r.path.as_str()), ("example.com", "/pricing"));
    assert_eq!((r.utm_source.as_str(), r.utm_medium.as_str(), r.utm_campaign.as_str()), ("news", "email", "launch"));
    assert_eq!(r.source, "news", "utm_source wins over the referrer");
    assert_eq!((r.referrer.as_str(), r.ref_host.as_str()), ("https://www.google.com/search", "google.com"));
    assert_eq!(
        (r.browser.as_str(), r.browser_version.as_str(), r.os.as_str(), r.device.as_str()),
        ("Firefox", "121", "Windows", "desktop")
    );
    assert_eq!(r.country, "DE");
    assert_eq!(r.props.get("plan").map(String::as_str), Some("pro"));
    assert_eq!(r.props.get("seats").map(String::as_str), Some("5"));
    assert!(r.visitor != 0);
    assert!(!r.id.is_empty());
    assert!(r.ts >= before && r.ts <= now_ms(), "ts {} not within the request", r.ts);
    assert!(r.interactive);
    // The message carries a dedup id and its event count.
    let messages = gateway.messages().await;
    assert!(messages[0].headers.get("Nats-Msg-Id").is_some());
    assert_eq!(messages[0].headers.get("Gallop-Events").map(|v| v.as_str()), Some("1"));
}

/// The engagement event of Plausible's tracker (tracker/src/engagement.js, sent when a page
/// is hidden or left), field for field: scroll depth and engaged time travel in the record.
#[tokio::test]
async fn the_trackers_engagement_event_carries_scroll_depth_and_engaged_time() {
    let gateway = TestGateway::start(test_config()).await;
    let reply = gateway
        .post(
            "/api/event",
            Some("text/plain"),
            r#"{"n":"engagement","sd":57,"d":"example.com","u":"https://example.com/docs","p":{},"e":4321,"v":28,"h":1}"#,
            &[("user-agent", FIREFOX)],
        )
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (202, "ok"));
    let records = gateway.records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!((r.name.as_str(), r.path.as_str()), ("engagement", "/docs"));
    assert_eq!((r.scroll_depth, r.engaged_ms), (Some(57), Some(4321)));
    assert!(r.props.is_empty());
}

#[tokio::test]
async fn json_long_keys_multi_site_domain_and_revenue() {
    let gateway = TestGateway::start(test_config()).await;
    let reply = gateway
        .post(
            "/api/event",
            Some("application/json"),
            r#"{"name":"Purchase","url":"https://shop.example.com/checkout","domain":"shop.example.com,rollup.example.com","referrer":"https://news.ycombinator.com/item?id=1","props":{"method":"card"},"revenue":{"amount":"19.99","currency":"eur"},"interactive":false}"#,
            &[("user-agent", FIREFOX)],
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let mut records = gateway.records().await;
    records.sort_by(|a, b| a.site.cmp(&b.site));
    let sites: Vec<&str> = records.iter().map(|r| r.site.as_str()).collect();
    assert_eq!(sites, ["rollup.example.com", "shop.example.com"]);
    for r in &records {
        assert_eq!(r.name, "Purchase");
        assert_eq!(r.source, "Hacker News");
        assert_eq!((r.value, r.currency.as_str()), (Some(19.99), "EUR"));
        assert!(!r.interactive);
        assert_eq!(r.props.get("method").map(String::as_str), Some("card"));
    }
    assert_ne!(records[0].visitor, records[1].visitor, "visitor hashes are per site");
    assert_ne!(records[0].id, records[1].id);
}

#[tokio::test]
async fn self_referral_and_direct_traffic_have_no_source() {
    let gateway = TestGateway::start(test_config()).await;
    for body in [
        r#"{"n":"pageview","u":"https://www.example.com/b","d":"example.com","r":"https://example.com/a"}"#,
        r#"{"n":"pageview","u":"https://example.com/c","d":"example.com","r":null}"#,
    ] {
        let reply = gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", FIREFOX)]).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    for r in gateway.records().await {
        assert_eq!((r.source.as_str(), r.ref_host.as_str(), r.referrer.as_str()), ("", "", ""), "{r:?}");
    }
}

#[tokio::test]
async fn bots_and_prefetches_are_dropped_and_counted() {
    let gateway = TestGateway::start(test_config()).await;
    let body = r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#;
    let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    assert_eq!(gateway.post("/api/event", Some("text/plain"), body, &[("user-agent", googlebot)]).await.status, 202);
    assert_eq!(gateway.post("/api/event", Some("text/plain"), body, &[]).await.status, 202, "no User-Agent");
    let prefetch = [("user-agent", FIREFOX), ("sec-purpose", "prefetch")];
    assert_eq!(gateway.post("/api/event", Some("text/plain"), body, &prefetch).await.status, 202);
    assert!(gateway.records().await.is_empty(), "nothing from bots or prefetches is published");
    let metrics = gateway.get("/metrics").await.body;
    assert!(metrics.contains("gallop_events_bots_total 2"), "{metrics}");
    assert!(metrics.contains("gallop_events_prefetch_total 1"), "{metrics}");
}

#[tokio::test]
async fn same_visitor_same_partition_same_hash() {
    let gateway = TestGateway::start(test_config()).await;
    let body = r#"{"n":"pageview","u":"https://example.com/x","d":"example.com"}"#;
    for ip in ["198.51.100.1", "198.51.100.1", "198.51.100.2"] {
        let reply = gateway
            .post("/api/event", Some("text/plain"), body, &[("user-agent", FIREFOX), ("x-forwarded-for", ip)])
            .await;
        assert_eq!(reply.status, 202);
    }
    // (subject, visitor) of every event.
    let placed: Vec<(String, u64)> = gateway
        .messages()
        .await
        .iter()
        .flat_map(|m| {
            let subject = m.subject.to_string();
            gallop_event::decode_records(&m.payload)
                .into_iter()
                .map(move |r| (subject.clone(), r.expect("decodes").visitor))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(placed.len(), 3);
    let repeat = placed[0].1;
    assert_eq!(placed.iter().filter(|(_, v)| *v == repeat).count(), 2, "same IP and UA, same visitor: {placed:?}");
    let subjects: std::collections::HashSet<&String> =
        placed.iter().filter(|(_, v)| *v == repeat).map(|(s, _)| s).collect();
    assert_eq!(subjects.len(), 1, "one visitor, one partition: {placed:?}");
}

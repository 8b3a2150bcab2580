//! The privacy proof: the raw client address and User-Agent never appear in a broker
//! message, a log line, an error body or the metrics.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use tracing_subscriber::fmt::MakeWriter;

use crate::fixture::{test_config, TestGateway};

const IP: &str = "203.0.113.77";
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 PrivacyProbe/9.8.7";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// current_thread: every task of the gateway runs on this thread, under this subscriber.
#[tokio::test(flavor = "current_thread")]
async fn raw_ip_and_user_agent_never_leave_the_gateway() {
    let logs = Capture::default();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(logs.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let gateway = TestGateway::start(test_config()).await;
    let headers = [("user-agent", UA), ("x-forwarded-for", IP)];
    let accepted = [
        gateway
            .post(
                "/api/event",
                Some("text/plain"),
                r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#,
                &headers,
            )
            .await,
        gateway
            .post(
                "/v1/events",
                Some("application/json"),
                r#"{"site":"example.com","name":"x","url":"https://example.com/"}"#,
                &headers,
            )
            .await,
    ];
    for reply in &accepted {
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let rejected = [
        gateway
            .post("/api/event", Some("text/plain"), r#"{"n":"pageview","u":"nope","d":"example.com"}"#, &headers)
            .await,
        gateway.post("/v1/events", Some("application/json"), r#"{"site":"example.com","name":"x"}"#, &headers).await,
        gateway.post("/v1/events", Some("text/csv"), "a,b", &headers).await,
    ];
    assert!(rejected.iter().all(|r| r.status >= 400));

    let messages = gateway.messages().await;
    assert_eq!(messages.len(), 2);
    let mut published = Vec::new();
    for m in &messages {
        published.extend_from_slice(&m.payload);
        for (name, values) in m.headers.iter() {
            published.extend_from_slice(name.to_string().as_bytes());
            for v in values {
                published.extend_from_slice(v.as_str().as_bytes());
            }
        }
    }
    let published = String::from_utf8_lossy(&published).into_owned();
    let logged = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    let errors: String = rejected.iter().map(|r| r.body.clone()).collect();
    let metrics = gateway.get("/metrics").await.body;
    assert!(!logged.is_empty(), "the capture must have seen the gateway's logs");
    for (what, text) in
        [("broker messages", &published), ("logs", &logged), ("error bodies", &errors), ("metrics", &metrics)]
    {
        for secret in [IP, "PrivacyProbe", "203.0.113", "X11; Linux x86_64; rv:120.0"] {
            assert!(!text.contains(secret), "{secret:?} leaked into {what}");
        }
    }
    // What was derived from them is there: the parsed browser and a visitor hash.
    let records = gateway.records().await;
    assert!(records.iter().all(|r| r.browser == "Firefox" && r.os == "GNU/Linux" && r.visitor != 0));
    assert_eq!(records[0].visitor, records[1].visitor, "same site, address and UA: same visitor");
}

#[tokio::test]
async fn gateways_sharing_a_salt_bucket_agree_on_visitors() {
    let config = test_config();
    let a = TestGateway::start(config.clone()).await;
    let b = TestGateway::start(config).await;
    let headers = [("user-agent", UA), ("x-forwarded-for", IP)];
    let body = r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#;
    assert_eq!(a.post("/api/event", Some("text/plain"), body, &headers).await.status, 202);
    assert_eq!(b.post("/api/event", Some("text/plain"), body, &headers).await.status, 202);
    let records = a.records().await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].visitor, records[1].visitor, "one daily salt for the deployment");
}

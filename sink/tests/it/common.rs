//! Test fixtures: a private database per test, events, a processor.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use gallop_config::{ClickHouseConfig, ProcessorConfig, TimeConfig};
use gallop_event::{encode_into, EventRecord};
use gallop_processor::Processor;
use gallop_sink::ClickHouse;

pub(crate) fn clickhouse_url() -> String {
    std::env::var("TEST_GALLOP_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

/// A database name of its own for one test; dropped (best effort) when the test ends.
pub(crate) struct TestDb {
    pub(crate) config: ClickHouseConfig,
}

impl TestDb {
    pub(crate) fn new(test: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let database = format!(
            "gallop_sink_{test}_{}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let config = ClickHouseConfig {
            url: clickhouse_url(),
            database,
            retry_initial_backoff: std::time::Duration::from_millis(50),
            retry_max_backoff: std::time::Duration::from_millis(400),
            ..ClickHouseConfig::default()
        };
        Self { config }
    }

    /// Connects, failing loudly when no server answers.
    pub(crate) async fn connect(&self) -> ClickHouse {
        match ClickHouse::connect(&self.config).await {
            Ok(ch) => ch,
            Err(e) => panic!("ClickHouse must run for these tests (scripts/services.sh up): {e}"),
        }
    }

    /// Connects and migrates.
    pub(crate) async fn migrated(&self) -> ClickHouse {
        let ch = self.connect().await;
        ch.migrate().await.expect("migrate");
        ch
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ =
            ureq::post(&self.config.url).send_string(&format!("DROP DATABASE IF EXISTS `{}`", self.config.database));
    }
}

/// Runs `sql` on the test server, returning the body (panics with the server's error).
pub(crate) fn query(sql: &str) -> String {
    try_query(sql).unwrap_or_else(|e| panic!("{sql}\n→ {e}"))
}

/// Runs `sql` on the test server: the body, or the server's error (a server that cannot be
/// reached is a panic, not an error).
pub(crate) fn try_query(sql: &str) -> Result<String, String> {
    match ureq::post(&clickhouse_url()).send_string(sql) {
        Ok(resp) => Ok(resp.into_string().expect("utf-8 body")),
        Err(ureq::Error::Status(code, resp)) => Err(format!("HTTP {code}: {}", resp.into_string().unwrap_or_default())),
        Err(e) => panic!("{sql}\n→ {e}"),
    }
}

/// Every number as f64 (ClickHouse may quote 64-bit integers in JSON).
pub(crate) fn number(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        serde_json::Value::String(s) => s.parse().unwrap_or(f64::NAN),
        other => panic!("not a number: {other}"),
    }
}

/// A processor with the built-in rollups.
pub(crate) fn processor() -> Processor {
    Processor::new(&ProcessorConfig::default(), &TimeConfig::default()).expect("default config is valid")
}

/// An event of `site` at `ts` (ms).
pub(crate) fn event(site: &str, ts: i64, name: &str, path: &str, visitor: u64) -> EventRecord {
    EventRecord {
        site: site.to_owned(),
        id: format!("{ts}-{visitor}"),
        ts,
        name: name.to_owned(),
        host: site.to_owned(),
        path: path.to_owned(),
        country: "DE".to_owned(),
        visitor,
        ..EventRecord::default()
    }
}

/// `events` as one broker message (NDJSON).
pub(crate) fn message(events: &[EventRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        encode_into(e, &mut out);
    }
    out
}

/// The marks of what `delta` accounts for: the newest position folded in per partition, in
/// epoch 0, as the runtime writes them for a log it has read from the start.
pub(crate) fn marks(delta: &gallop_processor::Delta) -> std::collections::BTreeMap<u32, gallop_pipeline::Mark> {
    delta.positions.iter().map(|(&p, &position)| (p, gallop_pipeline::Mark::at(position))).collect()
}

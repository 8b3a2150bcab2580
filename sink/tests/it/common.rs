//! Test fixtures: a private database per test, events, a processor.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use gallop_config::{ClickHouseConfig, ProcessorConfig, TimeConfig};
use gallop_event::{encode_into, EventRecord};
use gallop_processor::Processor;
use gallop_sink::{ClickHouse, ClickHouseStore, Writer};

pub(crate) fn clickhouse_url() -> String {
    std::env::var("TEST_GALLOP_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

/// The loopback cluster of `scripts/cluster.sh` (`scripts/services.sh cluster`): 2 shards ×
/// 2 replicas of ClickHouse 18.16, server `n` answering HTTP on `1812n`.
pub(crate) const CLUSTER: &str = "gallop_test";

/// The HTTP URL of cluster server `n` (1–4; 1 and 2 are shard 1, 3 and 4 shard 2).
pub(crate) fn cluster_server(n: u32) -> String {
    format!("http://127.0.0.1:1812{n}")
}

/// A database name of its own for one test; dropped (best effort) when the test ends.
pub(crate) struct TestDb {
    pub(crate) config: ClickHouseConfig,
    /// On the cluster: the lock of tests using it (see [`ClusterLock`]).
    _lock: Option<ClusterLock>,
}

/// The lock every test using the loopback cluster holds: shared while it only uses the
/// cluster, exclusive while it stops a server or ZooKeeper (which the others would see).
/// The whole-pipeline tests (`tests/it/cluster.rs`) take the same lock. Held by a `flock(1)`
/// child (the crate forbids `unsafe`, and `File::lock` is newer than its MSRV) until dropped.
pub(crate) struct ClusterLock(std::process::Child);

impl ClusterLock {
    pub(crate) fn take(exclusive: bool) -> Self {
        use std::io::BufRead;
        let dir = std::env::var("TEST_GALLOP_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/gallop-cluster".to_owned());
        let path = format!("{dir}/tests.lock");
        let mut child = std::process::Command::new("flock")
            .args([if exclusive { "--exclusive" } else { "--shared" }, &path, "-c", "echo locked; exec cat"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("flock(1) for the cluster's test lock {path}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        std::io::BufReader::new(stdout).read_line(&mut line).expect("flock answers");
        assert_eq!(line.trim(), "locked", "the cluster's test lock {path} (scripts/services.sh cluster makes {dir})");
        Self(child)
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl TestDb {
    /// The same on the loopback cluster ([`CLUSTER`]), read and migrated through server 1;
    /// fails loudly when the cluster is not up.
    pub(crate) fn on_cluster(test: &str) -> Self {
        Self::on_cluster_locked(test, false)
    }

    /// [`on_cluster`](Self::on_cluster), holding the cluster's lock exclusively where the
    /// test stops a server.
    pub(crate) fn on_cluster_locked(test: &str, exclusive: bool) -> Self {
        let mut db = Self::new(test);
        db._lock = Some(ClusterLock::take(exclusive));
        for n in 1..=4 {
            let url = cluster_server(n);
            if let Err(e) = ureq::get(&format!("{url}/ping")).call() {
                panic!("the ClickHouse cluster must run for this test (scripts/services.sh cluster): {url}: {e}");
            }
        }
        db.config.url = cluster_server(1);
        db.config.cluster = Some(CLUSTER.to_owned());
        db.config.shards = vec![vec![cluster_server(1), cluster_server(2)], vec![cluster_server(3), cluster_server(4)]];
        db
    }

    /// Runs `sql` on this database's server (the cluster's first server), returning the body.
    pub(crate) fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}\n→ {e}"))
    }

    /// Runs `sql` on this database's server: the body, or the server's error.
    pub(crate) fn try_query(&self, sql: &str) -> Result<String, String> {
        post(&self.config.url, sql)
    }

    /// Folds `messages` — (partition, NDJSON payload, arrival ms), positions counting up per
    /// partition — and writes them as the runtime would: one processor and one write per
    /// place the store keeps partitions apart (a cluster's shard), each with its marks.
    pub(crate) async fn write(&self, ch: &ClickHouse, messages: &[(u32, Vec<u8>, i64)], now: i64) {
        use gallop_pipeline::{Flush, Store};
        let store = std::sync::Arc::new(if self.config.cluster.is_some() {
            ClickHouseStore::cluster(ch, &self.config, "EVENTS").await.expect("the cluster's store")
        } else {
            ClickHouseStore::new(Writer::new(ch.clone(), "EVENTS", &self.config), "EVENTS")
        });
        for group in 0..store.groups() {
            let mut processor = processor();
            let mut positions = std::collections::BTreeMap::<u32, u64>::new();
            for (partition, payload, arrival) in messages {
                let position = positions.entry(*partition).or_default();
                *position += 1;
                if store.group_of(*partition) == group {
                    processor.process_message(*partition, *position, payload, *arrival).expect("not full");
                }
            }
            let delta = processor.flush(0);
            let flush = Flush { marks: marks(&delta), delta, claims: Default::default(), fence: None, now, group };
            std::sync::Arc::clone(&store).write(flush).await.expect("write");
        }
        // Readers of the Distributed table read any replica: wait until every one has it.
        for writer in store.writers().iter().filter(|_| self.config.cluster.is_some()) {
            for replica in writer.replicas() {
                replica.sync_replica().await.expect("every replica catches up");
            }
        }
    }

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
        Self { config, _lock: None }
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
        let on = self.config.cluster.as_ref().map_or_else(String::new, |c| format!(" ON CLUSTER `{c}`"));
        let _ = ureq::post(&self.config.url)
            .send_string(&format!("DROP DATABASE IF EXISTS `{}`{on}", self.config.database));
    }
}

/// Runs `sql` on the test server, returning the body (panics with the server's error).
pub(crate) fn query(sql: &str) -> String {
    try_query(sql).unwrap_or_else(|e| panic!("{sql}\n→ {e}"))
}

/// Runs `sql` on the test server: the body, or the server's error (a server that cannot be
/// reached is a panic, not an error).
pub(crate) fn try_query(sql: &str) -> Result<String, String> {
    post(&clickhouse_url(), sql)
}

/// Runs `sql` on the server at `url`: the body, or the server's error (a server that cannot
/// be reached is a panic, not an error).
pub(crate) fn post(url: &str, sql: &str) -> Result<String, String> {
    match ureq::post(url).send_string(sql) {
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

//! The sink on the loopback cluster (`scripts/services.sh cluster`: ZooKeeper and 2 shards ×
//! 2 replicas of ClickHouse 18.16): migrations on every server, resumed after a server was
//! down; a cluster the servers do not form, named; a shard with no replica, waited for.
//! The documented queries and the dashboards on the cluster are in `docs.rs` and
//! `grafana.rs`; the whole pipeline through a killed replica and a ZooKeeper outage is in
//! the root `tests/it/cluster.rs`.

use std::{sync::Arc, time::Duration};

use gallop_pipeline::Store;
use gallop_sink::{ClickHouse, ClickHouseStore, SinkError};

use crate::common::{cluster_server, post, TestDb, CLUSTER};

/// The tables of one migrated database, as every server of the cluster must have them.
const TABLES: [&str; 9] = [
    "aggregates",
    "aggregates_local",
    "leaderboard_day",
    "leaderboard_hour",
    "leaderboard_minute",
    "rollup_day",
    "rollup_hour",
    "rollup_minute",
    "schema_migrations",
];

/// Runs `sql` on cluster server `n`.
fn on(n: u32, sql: &str) -> String {
    post(&cluster_server(n), sql).unwrap_or_else(|e| panic!("server {n}: {sql}\n→ {e}"))
}

/// (table, engine) of `database` on server `n`.
fn tables(n: u32, database: &str) -> Vec<(String, String)> {
    on(n, &format!("SELECT name, engine FROM system.tables WHERE database = '{database}' ORDER BY name FORMAT TSV"))
        .lines()
        .filter_map(|line| line.split_once('\t').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect()
}

/// Every server has every table, the local ones replicated, and one record per migration.
fn assert_migrated_everywhere(db: &TestDb, latest: u32) {
    for n in 1..=4 {
        let found = tables(n, &db.config.database);
        let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, TABLES, "tables of server {n}");
        let engine = |table: &str| found.iter().find(|(name, _)| name == table).map(|(_, e)| e.clone());
        assert_eq!(engine("aggregates").as_deref(), Some("Distributed"), "server {n}");
        assert_eq!(engine("aggregates_local").as_deref(), Some("ReplicatedAggregatingMergeTree"), "server {n}");
        assert_eq!(engine("schema_migrations").as_deref(), Some("ReplicatedMergeTree"), "server {n}");
        let table = format!("`{}`.`schema_migrations`", db.config.database);
        on(n, &format!("SYSTEM SYNC REPLICA {table}"));
        let records =
            on(n, &format!("SELECT version, count() FROM {table} GROUP BY version ORDER BY version FORMAT TSV"));
        let want: String = (1..=latest).map(|v| format!("{v}\t1\n")).collect();
        assert_eq!(records, want, "one record per migration, seen from server {n}");
    }
}

#[tokio::test]
async fn migrate_on_the_cluster_makes_every_table_on_every_server_once() {
    let db = TestDb::on_cluster("cluster_migrate");
    let (a, b) = (db.connect().await, db.connect().await);
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.expect("first migrate"), rb.expect("second migrate"));
    let latest = a.schema().latest_version();
    assert_eq!((ra.to, rb.to), (latest, latest));
    a.check_schema().await.expect("the Distributed table has the columns inserts write");
    let again = a.migrate().await.expect("third migrate");
    assert_eq!((again.from, again.applied), (latest, vec![]));
    assert_migrated_everywhere(&db, latest);
}

#[tokio::test]
async fn a_migration_with_a_server_down_fails_and_is_resumed_once_it_is_back() {
    let mut db = TestDb::on_cluster_locked("cluster_resume", true);
    db.config.request_timeout = Duration::from_secs(3);
    let ch = db.connect().await;
    let down = Server(4);
    down.kill();
    let err = ch.migrate().await.expect_err("a server is down");
    let text = err.to_string();
    assert!(err.is_transient() && text.contains("unfinished hosts") && text.contains("Code: 159"), "{text}");
    assert_eq!(ch.schema_version().await.expect("version"), 0, "nothing recorded");
    down.start();
    // Server 4 runs the statements queued for it, then this run's: each once.
    let report = ch.migrate().await.expect("migrate once every server is back");
    let latest = ch.schema().latest_version();
    assert_eq!(report.applied, (1..=latest).collect::<Vec<_>>());
    assert_migrated_everywhere(&db, latest);
}

#[tokio::test]
async fn a_cluster_the_servers_do_not_form_is_named() {
    let db = TestDb::on_cluster("cluster_names");
    let unknown = gallop_config::ClickHouseConfig { cluster: Some("nope".to_owned()), ..db.config.clone() };
    let err = ClickHouse::connect(&unknown).await.expect_err("no such cluster");
    assert!(matches!(err, SinkError::Cluster { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("nope") && text.contains("knows no such cluster") && text.contains(CLUSTER), "{text}");

    let mut three = db.config.clone();
    three.shards.push(vec!["http://127.0.0.1:1".to_owned()]);
    let text = ClickHouse::connect(&three).await.expect_err("three shards listed").to_string();
    assert!(text.contains("gives it 2 shards, clickhouse.shards lists 3"), "{text}");

    let ch = db.connect().await;
    let mut crossed = db.config.clone();
    crossed.shards = vec![vec![cluster_server(1), cluster_server(3)], vec![cluster_server(2), cluster_server(4)]];
    let text = ClickHouseStore::cluster(&ch, &crossed, "EVENTS").await.expect_err("crossed").to_string();
    assert!(text.contains("macros differ") && text.contains(&cluster_server(3)), "{text}");
    let mut same = db.config.clone();
    same.shards = vec![vec![cluster_server(1)], vec![cluster_server(2)]];
    let text = ClickHouseStore::cluster(&ch, &same, "EVENTS").await.expect_err("one shard twice").to_string();
    assert!(text.contains("they are one shard"), "{text}");
}

#[tokio::test]
async fn a_shard_without_a_reachable_replica_is_waited_for_and_shown_unhealthy() {
    let db = TestDb::on_cluster("cluster_wait");
    let ch = db.migrated().await;
    let mut config = db.config.clone();
    // Shard 2 listed at addresses where nothing answers (its servers checked when used).
    config.shards[1] = vec!["http://127.0.0.1:1".to_owned(), "http://127.0.0.1:2".to_owned()];
    let store = Arc::new(ClickHouseStore::cluster(&ch, &config, "EVENTS").await.expect("store"));
    assert!(store.positions(&[0, 2]).await.expect("shard 1 answers").is_empty(), "nothing stored yet");
    assert!(store.is_healthy());
    // Partition 1 is shard 2's: its read waits instead of failing or reading nothing.
    let waiting = tokio::time::timeout(Duration::from_secs(2), store.positions(&[0, 1])).await;
    assert!(waiting.is_err(), "the read of a shard with no replica waits: {waiting:?}");
    assert!(!store.is_healthy(), "and the store says so (/ready answers 503)");
}

/// A server of the loopback cluster, stopped and started as `scripts/cluster.sh` does.
struct Server(u32);

impl Server {
    fn dir() -> String {
        std::env::var("TEST_GALLOP_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/gallop-cluster".to_owned())
    }

    /// SIGKILL, then waits until the process is gone (it takes a second or two to exit).
    fn kill(&self) {
        let pid_file = format!("{}/ch{}/clickhouse.pid", Self::dir(), self.0);
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("{pid_file}: {e}"));
        let pid = pid.trim();
        let killed = std::process::Command::new("kill").args(["-KILL", pid]).status().expect("kill runs");
        assert!(killed.success(), "kill -KILL {pid}");
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts what is not running (`scripts/cluster.sh up` waits until it answers).
    fn start(&self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh");
        let status = std::process::Command::new("bash").args([script, "up"]).status().expect("cluster.sh runs");
        assert!(status.success(), "scripts/cluster.sh up");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test leaves no server down for the next.
        if ureq::get(&format!("{}/ping", cluster_server(self.0))).call().is_err() {
            self.start();
        }
    }
}

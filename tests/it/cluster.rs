//! The whole pipeline writing to a replicated, sharded ClickHouse cluster (the loopback
//! cluster of `scripts/services.sh cluster`: ZooKeeper and 2 shards × 2 replicas of 18.16),
//! on NATS and on Kafka at once, while events keep coming: one replica of a shard is
//! SIGKILLed (inserts go on through the other; processors restarted meanwhile read their
//! partitions back once a replica holds every part of the shard) and started again (it
//! catches up), then ZooKeeper is stopped for 20 s
//! (inserts pause, the processors say they are not ready, then everything resumes). The
//! truth check then holds cell by cell, visits included, and the replicas of each shard
//! hold the same rows.

use std::{
    io::BufRead,
    process::{Child as StdChild, Command as StdCommand, Stdio},
    time::{Duration, Instant},
};

use crate::{
    brokers::{Broker, Kind},
    pipeline::{generate, metric, now_ms, send, sql, tag, Pipeline, Sent},
};

/// The cluster's name in the servers' `remote_servers`.
const CLUSTER: &str = "gallop_test";
/// How long ZooKeeper stays down.
const ZOOKEEPER_DOWN: Duration = Duration::from_secs(20);
/// Events per broker, sent at a steady pace across the faults.
const EVENTS: usize = 24_000;
/// Chunks they are sent in, one every [`PACE`].
const CHUNKS: usize = 60;
const PACE: Duration = Duration::from_millis(700);

fn cluster_dir() -> String {
    std::env::var("TEST_GALLOP_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/gallop-cluster".to_owned())
}

/// The HTTP URL of cluster server `n` (1 and 2 are shard 1, 3 and 4 shard 2).
fn server(n: u32) -> String {
    format!("http://127.0.0.1:1812{n}")
}

/// The lock the tests using the cluster share (`sink/tests/it/common.rs` takes the same):
/// held exclusively here, as this test stops a server and ZooKeeper. Held by a `flock(1)`
/// child until dropped.
struct ClusterLock(StdChild);

impl ClusterLock {
    fn exclusive() -> Self {
        let path = format!("{}/tests.lock", cluster_dir());
        let mut child = StdCommand::new("flock")
            .args(["--exclusive", &path, "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("flock(1) for {path}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        std::io::BufReader::new(stdout).read_line(&mut line).expect("flock answers");
        assert_eq!(line.trim(), "locked", "the cluster's test lock {path} (scripts/services.sh cluster)");
        Self(child)
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops and starts parts of the loopback cluster. When dropped (the test ended, even by a
/// panic) it restarts the whole cluster, cleanly: ClickHouse 18.16's DDL worker may have
/// stopped for good on a server that was SIGKILLed and restarted before ZooKeeper went away
/// ("Server expects that DDL task … should be processed, but it was already processed
/// according to ZK"), and every later `ON CLUSTER` statement would wait for that server.
struct Faults;

impl Faults {
    /// SIGKILL the process of `pid_file` (under the cluster's folder); returns its pid.
    fn kill(pid_file: &str) -> String {
        let path = format!("{}/{pid_file}", cluster_dir());
        let pid = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let pid = pid.trim().to_owned();
        let killed = StdCommand::new("kill").args(["-KILL", &pid]).status().expect("kill runs");
        assert!(killed.success(), "kill -KILL {pid} ({path})");
        pid
    }

    /// SIGKILL cluster server `n`; returns once the process is gone (it takes a second or
    /// two to exit, and a server started before would find it alive and stop).
    async fn kill_server(&self, n: u32) {
        let pid = Self::kill(&format!("ch{n}/clickhouse.pid"));
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL ZooKeeper; returns once it no longer accepts connections.
    async fn kill_zookeeper(&self) {
        Self::kill("zk/zk.pid");
        while tokio::net::TcpStream::connect("127.0.0.1:12181").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts whatever is not running and waits until it answers (`scripts/cluster.sh up`).
    fn start_all(&self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
        let status = StdCommand::new("bash").args([script, "up"]).status().expect("cluster.sh runs");
        assert!(status.success(), "scripts/cluster.sh up");
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
        let _ = StdCommand::new("bash").args([script, "down"]).status();
        self.start_all();
    }
}

/// A pipeline on `kind` writing to the cluster; readers (and the truth check) go through
/// server 2, and shard 1's inserts go to server 1 first.
async fn cluster_pipeline(kind: Kind) -> Pipeline {
    let mut pipeline = Pipeline::new(Broker::new(kind, &tag()), server(2));
    let shards = format!("[[\"{}\", \"{}\"], [\"{}\", \"{}\"]]", server(1), server(2), server(3), server(4));
    pipeline.env.push(("GALLOP_CLICKHOUSE__CLUSTER", CLUSTER.to_owned()));
    pipeline.env.push(("GALLOP_CLICKHOUSE__SHARDS", shards));
    pipeline.env.push(("GALLOP_CONSUMER__ASSIGNMENT", "static".to_owned()));
    pipeline.start_front(&["ingest"], "gateway listening").await;
    pipeline
}

/// Starts a processor of every partition (named `name`) with a status address; returns
/// its index.
async fn start_processor(pipeline: &mut Pipeline, name: &str) -> usize {
    let index = pipeline.start_member(name).await;
    assert!(pipeline.status[index].is_some(), "the processor serves /ready");
    index
}

/// `events` events of the last 50 minutes, sent in [`CHUNKS`] pieces one every [`PACE`], so
/// they keep arriving through the faults.
fn send_paced(pipeline: &Pipeline, seed: u64) -> (Vec<Sent>, tokio::task::JoinHandle<()>) {
    let events = generate(seed, EVENTS, now_ms(), 50);
    let address = pipeline.address.clone();
    let chunks: Vec<Vec<Sent>> = events.chunks(EVENTS / CHUNKS).map(<[Sent]>::to_vec).collect();
    let sender = tokio::spawn(async move {
        let mut pace = tokio::time::interval(PACE);
        for chunk in chunks {
            pace.tick().await;
            send(&address, &chunk).await;
        }
    });
    (events, sender)
}

/// Whether the processor at `index` answers `/ready` with 200.
async fn ready(pipeline: &Pipeline, index: usize) -> bool {
    let Some(address) = &pipeline.status[index] else { return false };
    reqwest::get(format!("http://{address}/ready")).await.is_ok_and(|r| r.status().is_success())
}

/// The insert retries the processor at `index` counted.
async fn retries(pipeline: &Pipeline, index: usize) -> f64 {
    let address = pipeline.status[index].as_deref().unwrap_or_default();
    metric(address, "gallop_insert_retries_total").await.unwrap_or(0.0)
}

/// Waits (up to `limit`) until `condition` holds, polling.
async fn until<F: std::future::Future<Output = bool>>(what: &str, limit: Duration, mut condition: impl FnMut() -> F) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (rows, events of the `total` rollup) in `database`'s local table on server `n`, once it
/// synced with its shard's log.
async fn local_totals(n: u32, database: &str) -> String {
    let table = format!("`{database}`.`aggregates_local`");
    sql(&server(n), &format!("SYSTEM SYNC REPLICA {table}")).await;
    sql(
        &server(n),
        &format!(
            "SELECT count(), sumMerge(events) FROM {table} WHERE kind = 'rollup' AND dimension = 'total' FORMAT TSV"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_brokers_count_exactly_on_a_cluster_through_a_killed_replica_and_a_zookeeper_outage() {
    let _lock = ClusterLock::exclusive();
    for n in 1..=4 {
        if let Err(e) = reqwest::get(format!("{}/ping", server(n))).await {
            panic!("the ClickHouse cluster must run for this test (scripts/services.sh cluster): {e}");
        }
    }
    let mut pipelines = vec![cluster_pipeline(Kind::Nats).await, cluster_pipeline(Kind::Kafka).await];
    // Dropped before the pipelines: the cluster is whole again when their databases go.
    let faults = Faults;
    let mut processors = Vec::new();
    for pipeline in &mut pipelines {
        processors.push(start_processor(pipeline, "first").await);
    }
    let mut sent = Vec::new();
    let mut senders = Vec::new();
    for (seed, pipeline) in pipelines.iter().enumerate() {
        let (events, sender) = send_paced(pipeline, 31 + seed as u64);
        sent.push(events);
        senders.push(sender);
    }
    for pipeline in &pipelines {
        pipeline.wait_until_landed_above(0).await;
    }

    // Shard 1's preferred replica dies: its inserts go to the other replica.
    faults.kill_server(1).await;
    let killed = Instant::now();
    for pipeline in &pipelines {
        let before = pipeline.landed().await;
        pipeline.wait_until_landed_above(before).await;
    }
    eprintln!("server 1 SIGKILLed: inserts landed again after {:?}", killed.elapsed());
    // A processor restarted meanwhile reads its partitions back from a replica that holds
    // every part of its shard: the live one, or — where a part committed on the dead one had
    // not been fetched yet — the dead one once it is back (until then those partitions wait:
    // reading the other replica would resume before what is stored).
    for (pipeline, &index) in pipelines.iter_mut().zip(&processors) {
        pipeline.kill_processor(index).await;
    }
    let restarted = Instant::now();
    for pipeline in &mut pipelines {
        processors.push(start_processor(pipeline, "second").await);
    }
    let processors: Vec<usize> = processors.split_off(2);
    faults.start_all();
    for pipeline in &pipelines {
        let before = pipeline.landed().await;
        pipeline.wait_until_landed_above(before).await;
    }
    eprintln!("processors restarted while server 1 was down: writing again {:?} later", restarted.elapsed());

    // ZooKeeper away for 20 s: replicated tables are read-only, inserts are retried.
    let retried: Vec<f64> =
        futures::future::join_all(pipelines.iter().zip(&processors).map(|(p, &i)| retries(p, i))).await;
    faults.kill_zookeeper().await;
    let down = Instant::now();
    for (pipeline, &index) in pipelines.iter().zip(&processors) {
        until("a processor says it is not ready while ZooKeeper is down", ZOOKEEPER_DOWN, || async {
            !ready(pipeline, index).await
        })
        .await;
    }
    let now_retried: Vec<f64> =
        futures::future::join_all(pipelines.iter().zip(&processors).map(|(p, &i)| retries(p, i))).await;
    for (before, after) in retried.iter().zip(&now_retried) {
        assert!(after > before, "inserts were retried during the outage ({before} → {after})");
    }
    tokio::time::sleep(ZOOKEEPER_DOWN.saturating_sub(down.elapsed())).await;
    faults.start_all();
    let outage = down.elapsed();
    for (pipeline, &index) in pipelines.iter().zip(&processors) {
        until("ready again after ZooKeeper is back", Duration::from_secs(60), || ready(pipeline, index)).await;
    }
    eprintln!("ZooKeeper was down {outage:?}; the processors were ready again {:?} after", down.elapsed() - outage);

    for sender in senders {
        sender.await.expect("every event sent");
    }
    for (pipeline, events) in pipelines.iter().zip(&sent) {
        pipeline.wait_for(events.len()).await;
        pipeline.check(events).await;
        // Each shard's replicas hold the same rows: the killed one caught up.
        for (a, b) in [(1, 2), (3, 4)] {
            let (first, second) =
                (local_totals(a, &pipeline.database).await, local_totals(b, &pipeline.database).await);
            assert_eq!(first, second, "servers {a} and {b} (one shard) hold the same rows of {}", pipeline.database);
            assert!(!first.starts_with("0\t"), "shard of servers {a} and {b} holds rows: {first}");
        }
    }
}

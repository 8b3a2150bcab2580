//! A gateway on its own JetStream stream with a traqq listener on port 0, answering from
//! its own ClickHouse database; and traqq's own server, in-process, to compare with.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use gallop_config::{Config, StorageKind, TraqqAddValue, TraqqMapping};
use gallop_event::{decode_records, EventRecord};
use gallop_ingest::Gateway;
use gallop_nats::NatsBroker;
use gallop_sink::ClickHouse;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The mapping every test here uses (traqq README's, plus a leaderboard of referrers).
pub(crate) fn mapping() -> TraqqMapping {
    TraqqMapping {
        bitmap: vec!["ip".into()],
        add: vec!["event".into(), "event~geo".into()],
        add_value: vec![TraqqAddValue { key: "event~geo".into(), add_key: "amount".into() }],
        top: vec!["geo".into()],
    }
}

/// A config with a stream, bucket and database no other test uses, the traqq listener on.
pub(crate) fn test_config() -> Config {
    let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let mut config = Config::default();
    config.nats.url = std::env::var("TEST_GALLOP_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    config.nats.stream = format!("GALLOP_TRAQQ_{tag}");
    config.nats.subject_prefix = format!("gallop-traqq-{tag}");
    config.nats.salt_bucket = format!("gallop_traqq_salts_{tag}");
    config.nats.storage = StorageKind::Memory;
    config.broker.partitions = 4;
    config.clickhouse.url =
        std::env::var("TEST_GALLOP_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    config.clickhouse.database = format!("gallop_traqq_{tag}");
    config.traqq.enabled = true;
    config.traqq.site = "traqq.test".into();
    config.traqq.mapping = mapping();
    config
}

/// A running gateway with a traqq listener.
pub(crate) struct TraqqGateway {
    pub(crate) address: SocketAddr,
    pub(crate) config: Config,
    broker: NatsBroker,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TraqqGateway {
    pub(crate) async fn start(config: Config) -> Self {
        Self::start_with(config, true).await
    }

    /// Starts a gateway; with `migrate`, makes its ClickHouse database first.
    pub(crate) async fn start_with(config: Config, migrate: bool) -> Self {
        let broker = NatsBroker::connect(&config.nats, config.broker.partitions, config.ingest.ack_timeout)
            .await
            .unwrap_or_else(|e| panic!("NATS must run at {} (scripts/services.sh starts it): {e}", config.nats.url));
        let salts = broker.salt_store(&config.nats).await.expect("salt bucket");
        let gateway = Gateway::new(config.clone(), Arc::new(broker.clone()), Arc::new(salts)).await.expect("gateway");
        if migrate {
            let clickhouse = ClickHouse::connect(&config.clickhouse).await.unwrap_or_else(|e| {
                panic!("ClickHouse must run at {} (scripts/services.sh): {e}", config.clickhouse.url)
            });
            clickhouse.migrate().await.expect("migrate");
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let address = listener.local_addr().expect("address");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gallop_traqq::run(
            listener,
            gateway,
            config.clickhouse.clone(),
            config.traqq.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Self { address, config, broker, shutdown: Some(tx), task: Some(task) }
    }

    /// Every record in the gateway's stream, and every payload as text.
    pub(crate) async fn stream(&self) -> (Vec<EventRecord>, String) {
        let stream = self.broker.jetstream().get_stream(&self.config.nats.stream).await.expect("stream");
        let info = stream.get_info().await.expect("info");
        let (mut records, mut text) = (Vec::new(), String::new());
        if info.state.messages > 0 {
            for seq in info.state.first_sequence..=info.state.last_sequence {
                let message = stream.get_raw_message(seq).await.expect("message");
                text.push_str(&String::from_utf8_lossy(&message.payload));
                records.extend(decode_records(&message.payload).into_iter().map(|r| r.expect("records decode")));
            }
        }
        (records, text)
    }

    /// Stops the listener (it answers what it read) and removes the stream and database.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").expect("no panic");
        }
        let js = self.broker.jetstream();
        let _ = js.delete_stream(&self.config.nats.stream).await;
        let _ = js.delete_key_value(&self.config.nats.salt_bucket).await;
        let _ = reqwest::Client::new()
            .post(&self.config.clickhouse.url)
            .body(format!("DROP DATABASE IF EXISTS `{}`", self.config.clickhouse.database))
            .send()
            .await;
    }
}

/// traqq 0.2.0's own server with in-memory storage and [`mapping`], on a free port of its
/// own thread (it serves until the test process ends).
pub(crate) fn traqqs_own_server() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let address = format!("127.0.0.1:{port}");
    let theirs = traqq_engine("traqq.test");
    let served = address.clone();
    std::thread::spawn(move || traqq::server::run(Arc::new(theirs), &served));
    wait_for_port(&address);
    address
}

/// traqq's engine with [`mapping`] (its `adv` added after `Traqq::new`: traqq 0.2.0's
/// validation refuses a pattern used by `add` and `add_value` alike, see gallop-bench).
pub(crate) fn traqq_engine(prefix: &str) -> traqq::Traqq {
    use traqq::prelude::*;
    let ours = mapping();
    let config = TraqqConfig {
        mapping: MappingConfig {
            bitmap: ours.bitmap.clone(),
            add: ours.add.clone(),
            add_value: Vec::new(),
            top: ours.top.clone(),
        },
        ..TraqqConfig::default()
    };
    let mut engine = Traqq::new(config, Box::new(MemoryStorage::new()), prefix).expect("traqq config");
    engine.config.mapping.add_value =
        ours.add_value.iter().map(|a| AddValueConfig { key: a.key.clone(), add_key: a.add_key.clone() }).collect();
    engine
}

/// Blocks until something accepts connections at `address` (10 s at most).
pub(crate) fn wait_for_port(address: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens at {address}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

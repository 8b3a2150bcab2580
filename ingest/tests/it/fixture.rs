//! A gateway on port 0 publishing to its own JetStream stream, and a TCP proxy to cut the
//! gateway off from NATS.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_nats::jetstream::{self, message::StreamMessage};
use gallop_config::{Config, StorageKind};
use gallop_event::{decode_records, EventRecord};
use gallop_ingest::{Gateway, IngestError};
use gallop_nats::NatsBroker;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::{AbortHandle, JoinHandle},
};

/// The NATS server the tests use.
pub(crate) fn nats_url() -> String {
    std::env::var("TEST_GALLOP_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A config with names no other test uses.
pub(crate) fn test_config() -> Config {
    let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let mut config = Config::default();
    config.nats.url = nats_url();
    config.nats.stream = format!("TEST_GALLOP_{tag}");
    config.nats.subject_prefix = format!("gallop-test-{tag}");
    config.nats.salt_bucket = format!("gallop_test_salts_{tag}");
    config.nats.storage = StorageKind::Memory;
    config.nats.connect_timeout = Duration::from_secs(3);
    config.broker.partitions = 4;
    config.ingest.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    config.ingest.country_header = Some("CF-IPCountry".to_owned());
    config.ingest.publish_timeout = Duration::from_secs(2);
    config.ingest.retry_after_seconds = 7;
    config
}

/// A running gateway and what a test needs to talk to it and to read its stream.
pub(crate) struct TestGateway {
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
    pub(crate) config: Config,
    jetstream: jetstream::Context,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), IngestError>>>,
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

/// A desktop Firefox User-Agent.
pub(crate) const FIREFOX: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";

impl TestGateway {
    /// Starts a gateway with `config`, talking to NATS at `config.nats.url`.
    pub(crate) async fn start(config: Config) -> Self {
        let broker = NatsBroker::connect(&config.nats, config.broker.partitions, config.ingest.ack_timeout)
            .await
            .unwrap_or_else(|e| {
                panic!("NATS JetStream must run at {} (scripts/services.sh starts it): {e}", config.nats.url)
            });
        let salts = broker.salt_store(&config.nats).await.expect("salt bucket");
        // The test reads the stream on the gateway's connection (same server, same credentials).
        let jetstream = broker.jetstream().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let gateway = Gateway::new(config.clone(), Arc::new(broker), Arc::new(salts)).await.expect("gateway builds");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gallop_ingest::run(gateway, listener, async move {
            let _ = rx.await;
        }));
        Self { url, http: reqwest::Client::new(), config, jetstream, shutdown: Some(tx), task: Some(task) }
    }

    /// POSTs `body` to `path` with a Content-Type (if any) and extra headers.
    pub(crate) async fn post(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.post(format!("{}{path}", self.url)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        read(request.send().await.expect("request sent")).await
    }

    /// GETs `path`.
    pub(crate) async fn get(&self, path: &str) -> Reply {
        read(self.http.get(format!("{}{path}", self.url)).send().await.expect("request sent")).await
    }

    /// Every message in the test's stream, oldest first.
    pub(crate) async fn messages(&self) -> Vec<StreamMessage> {
        let stream = self.jetstream.get_stream(&self.config.nats.stream).await.expect("stream exists");
        let info = stream.get_info().await.expect("stream info");
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        for seq in info.state.first_sequence..=info.state.last_sequence {
            out.push(stream.get_raw_message(seq).await.expect("message by sequence"));
        }
        out
    }

    /// Every event record in the test's stream, oldest first.
    pub(crate) async fn records(&self) -> Vec<EventRecord> {
        self.messages()
            .await
            .iter()
            .flat_map(|m| decode_records(&m.payload))
            .map(|r| r.expect("records on the stream decode"))
            .collect()
    }

    /// Waits (up to `within`) until `/ready` answers `status`.
    pub(crate) async fn wait_ready(&self, status: u16, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.get("/ready").await.status == status {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "/ready never answered {status} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends the shutdown signal and waits for the gateway to return.
    pub(crate) async fn stop(&mut self) -> Result<(), IngestError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("gateway task does not panic"),
            None => Ok(()),
        }
    }
}

async fn read(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    Reply { status, headers, body }
}

impl Drop for TestGateway {
    /// Deletes the test's stream and salt bucket, also when the test failed.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let stream = self.config.nats.stream.clone();
        let bucket_stream = format!("KV_{}", self.config.nats.salt_bucket);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(client);
                    let _ = js.delete_stream(&stream).await;
                    let _ = js.delete_stream(&bucket_stream).await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy to NATS that a test can cut (closing every connection and refusing new
/// ones) and restore, to play a NATS outage without stopping the shared server.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    /// Starts a proxy on port 0 forwarding to the NATS server of [`nats_url`].
    pub(crate) async fn start() -> Self {
        let upstream = nats_url().trim_start_matches("nats://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let up = up.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().expect("lock").push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Self { addr, up, connections, accept }
    }

    /// The URL to give the gateway.
    pub(crate) fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Cuts (`false`) or restores (`true`) the link.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for connection in self.connections.lock().expect("lock").drain(..) {
                connection.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_up(false);
    }
}

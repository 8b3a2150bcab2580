//! Against a NATS server of the test's own (Debian's `nats-server`, started here): frozen
//! with SIGSTOP to prove that a 503 means "not stored" and that `/ready` follows a stalled
//! broker, and started with user/password, token and NKey authentication.

use std::{
    net::TcpStream as StdTcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use gallop_config::{Config, Secret};
use gallop_nats::NatsBroker;
use tokio::time::Instant;

use crate::fixture::{test_config, TestGateway, FIREFOX};

/// A `nats-server` process with JetStream in a directory of its own, killed on drop.
struct PrivateNats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl PrivateNats {
    /// Starts `nats-server` with `auth` (the lines of an `authorization { }` block, or
    /// nothing) and waits until it accepts connections.
    fn start(auth: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = std::env::temp_dir().join(format!("gallop-nats-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("nats.conf");
        let authorization = if auth.is_empty() { String::new() } else { format!("authorization {{\n{auth}\n}}\n") };
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n{authorization}",
                dir.join("js").display()
            ),
        )
        .expect("write nats.conf");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/services.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "private nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} nats-server");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_for(nats: &PrivateNats) -> Config {
    let mut config = test_config();
    config.nats.url = nats.url();
    config
}

fn event(path: &str) -> String {
    format!(r#"{{"n":"pageview","u":"https://example.com{path}","d":"example.com"}}"#)
}

#[tokio::test]
async fn a_frozen_broker_makes_ready_false_and_every_503_means_not_stored() {
    let nats = PrivateNats::start("");
    let mut config = config_for(&nats);
    config.ingest.publish_timeout = Duration::from_secs(1);
    config.ingest.ack_timeout = Duration::from_secs(20);
    config.ingest.stall_after = Duration::from_millis(500);
    config.ingest.batching.max_in_flight = 4;
    let gateway = std::sync::Arc::new(TestGateway::start(config).await);
    let send = |path: String| {
        let gateway = gateway.clone();
        async move { gateway.post("/api/event", Some("text/plain"), event(&path), &[("user-agent", FIREFOX)]).await }
    };
    assert_eq!(send("/before".into()).await.status, 202);

    nats.signal("STOP");
    let frozen_at = Instant::now();
    // Requests sent into the freeze, some while the gateway still thinks all is well.
    let mut requests = Vec::new();
    for i in 0..9 {
        requests.push((format!("/frozen-{i}"), tokio::spawn(send(format!("/frozen-{i}")))));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.wait_ready(503, Duration::from_secs(3)).await;
    let ready = gateway.get("/ready").await.body;
    assert!(ready.contains("broker stalled"), "{ready}");
    // Once /ready is false, requests are refused at once, without being sent.
    let refused_at = Instant::now();
    let refused = send("/refused".into()).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused_at.elapsed() < Duration::from_millis(500), "a request to a stalled broker waits");
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(frozen_at.elapsed())).await;
    nats.signal("CONT");

    let mut stored_expected = vec!["/before".to_owned()];
    let mut not_stored = vec!["/refused".to_owned()];
    let mut statuses = Vec::new();
    for (path, request) in requests {
        let reply = request.await.expect("request task");
        statuses.push(reply.status);
        match reply.status {
            202 => stored_expected.push(path),
            503 => not_stored.push(path),
            other => panic!("{path}: status {other} ({}); the broker answered within ack_timeout", reply.body),
        }
    }
    gateway.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(send("/after".into()).await.status, 202);
    stored_expected.push("/after".to_owned());

    let mut stored: Vec<String> = gateway.records().await.into_iter().map(|r| r.path).collect();
    stored.sort();
    stored_expected.sort();
    for path in &not_stored {
        assert!(!stored.contains(path), "{path} was answered 503 but stored; statuses {statuses:?}");
    }
    assert_eq!(stored, stored_expected, "every 202 is stored, nothing else; statuses {statuses:?}");
    assert!(statuses.contains(&202), "requests sent before the freeze was noticed are awaited: {statuses:?}");
}

#[tokio::test]
async fn user_password_token_and_nkey_authentication() {
    // User and password.
    let nats = PrivateNats::start("  user: gallop\n  password: s3cret-pw");
    let mut config = config_for(&nats);
    config.nats.user = Some("gallop".to_owned());
    config.nats.password = Some(Secret::new("s3cret-pw"));
    let gateway = TestGateway::start(config.clone()).await;
    assert_eq!(
        gateway.post("/api/event", Some("text/plain"), event("/u"), &[("user-agent", FIREFOX)]).await.status,
        202
    );
    drop(gateway);
    config.nats.password = Some(Secret::new("wrong-pw"));
    config.nats.url = format!("nats://gallop:url-pw@127.0.0.1:{}", nats.port);
    config.nats.user = None;
    config.nats.password = None;
    let error =
        NatsBroker::connect(&config.nats, 4, Duration::from_secs(2)).await.expect_err("bad credentials").to_string();
    assert!(!error.contains("url-pw"), "credentials in the URL must not reach an error: {error}");
    assert!(error.contains("<redacted>"), "{error}");
    drop(nats);

    // Token.
    let nats = PrivateNats::start("  token: t0ken-abc");
    let mut config = config_for(&nats);
    config.nats.token = Some(Secret::new("t0ken-abc"));
    let gateway = TestGateway::start(config.clone()).await;
    assert_eq!(
        gateway.post("/api/event", Some("text/plain"), event("/t"), &[("user-agent", FIREFOX)]).await.status,
        202
    );
    drop(gateway);
    config.nats.token = None;
    assert!(NatsBroker::connect(&config.nats, 4, Duration::from_secs(2)).await.is_err(), "no token, no connection");
    drop(nats);

    // NKey: the server knows the public key only.
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().expect("user seed");
    let nats = PrivateNats::start(&format!("  users: [ {{ nkey: \"{}\" }} ]", pair.public_key()));
    let mut config = config_for(&nats);
    config.nats.nkey = Some(Secret::new(seed));
    let gateway = TestGateway::start(config).await;
    assert_eq!(
        gateway.post("/api/event", Some("text/plain"), event("/n"), &[("user-agent", FIREFOX)]).await.status,
        202
    );
    let paths: Vec<String> = gateway.records().await.into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/n"]);
}

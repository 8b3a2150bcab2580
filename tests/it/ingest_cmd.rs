//! `gallop ingest` as a process: serves, publishes to NATS, and exits 0 on SIGTERM after
//! finishing what is in flight.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::terminate;

fn nats_url() -> String {
    std::env::var("GALLOP_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

struct Gallop {
    child: Child,
    address: String,
    stream: String,
    bucket: String,
}

/// Starts `gallop ingest` on port 0 with its own stream and reads the bound address from
/// its JSON log.
async fn start() -> Gallop {
    let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let stream = format!("GALLOP_BIN_TEST_{tag}");
    let bucket = format!("gallop_bin_test_{tag}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gallop"))
        .args(["--log-json", "ingest"])
        .env_remove("GALLOP_CONFIG")
        .env("RUST_LOG", "info")
        .env("GALLOP_NATS__URL", nats_url())
        .env("GALLOP_NATS__STREAM", &stream)
        .env("GALLOP_NATS__SUBJECT_PREFIX", format!("gallop-bin-test-{tag}"))
        .env("GALLOP_NATS__SALT_BUCKET", &bucket)
        .env("GALLOP_NATS__STORAGE", "memory")
        .env("GALLOP_INGEST__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("gallop starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let address = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if entry["fields"]["message"] == "gateway listening" {
                return entry["fields"]["address"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("gateway logs its address within 20 s (is NATS running? scripts/services.sh)")
    .expect("address in the log");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Gallop { child, address, stream, bucket }
}

impl Drop for Gallop {
    fn drop(&mut self) {
        let streams = [self.stream.clone(), format!("KV_{}", self.bucket)];
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(client);
                    for s in streams {
                        let _ = js.delete_stream(&s).await;
                    }
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn serves_publishes_and_exits_zero_on_sigterm() {
    let mut gallop = start().await;
    let http = reqwest::Client::new();
    let reply = http
        .post(format!("http://{}/api/event", gallop.address))
        .header("content-type", "text/plain")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
        .body(r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status().as_u16(), 202);

    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
    let info = js.get_stream(&gallop.stream).await.expect("stream created by gallop").get_info().await.expect("info");
    assert_eq!(info.state.messages, 1);

    assert_eq!(terminate(&mut gallop.child, Duration::from_secs(20)).await, Some(0), "SIGTERM is a clean stop");
}

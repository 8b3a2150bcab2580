//! `gallop ingest` as a process: serves, publishes to NATS, and exits 0 on SIGTERM after
//! finishing what is in flight; at trace level its log never holds the day's salt, which
//! lives in memory storage only.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::terminate;

fn nats_url() -> String {
    std::env::var("TEST_GALLOP_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

struct Gallop {
    child: Child,
    address: String,
    stream: String,
    bucket: String,
    /// Every log line so far, as the text of all its JSON string values.
    log: Arc<Mutex<Vec<String>>>,
}

/// Starts `gallop ingest` on port 0 with its own stream (log filter `log_filter`) and reads
/// the bound address from its JSON log.
async fn start(log_filter: &str) -> Gallop {
    start_tagged(log_filter, &format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)).await
}

/// [`start`] with the stream and salt bucket named by `tag`, to start a second gateway on
/// the same ones.
async fn start_tagged(log_filter: &str, tag: &str) -> Gallop {
    let stream = format!("GALLOP_BIN_TEST_{tag}");
    let bucket = format!("gallop_bin_test_{tag}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gallop"))
        .args(["--log-json", "ingest"])
        .env_remove("GALLOP_CONFIG")
        .env("RUST_LOG", log_filter)
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
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = log.clone();
    let address = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            keep.lock().expect("lock").push(decoded(&line));
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
    // Keep reading the log so the child never blocks on a full pipe.
    let keep = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            keep.lock().expect("lock").push(decoded(&line));
        }
    });
    Gallop { child, address, stream, bucket, log }
}

/// A JSON log line as the text of its string values (JSON escapes undone), or the line.
fn decoded(line: &str) -> String {
    fn walk(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            other => out.push_str(&format!("{other} ")),
        }
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) => {
            let mut out = String::new();
            walk(&value, &mut out);
            out
        }
        Err(_) => line.to_owned(),
    }
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
    let mut gallop = start("info").await;
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

#[tokio::test]
async fn the_salt_never_reaches_a_log_or_a_disk() {
    // The first gateway makes the day's salt; the second, at trace level, reads it back
    // from the bucket (a read is where a NATS client would print the payload).
    let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let pageview = |address: String| async move {
        reqwest::Client::new()
            .post(format!("http://{address}/api/event"))
            .header("content-type", "text/plain")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
            .body(r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    };
    let mut first = start_tagged("info", &tag).await;
    assert_eq!(pageview(first.address.clone()).await, 202);
    assert_eq!(terminate(&mut first.child, Duration::from_secs(20)).await, Some(0));
    let mut gallop = start_tagged("trace", &tag).await;
    assert_eq!(pageview(gallop.address.clone()).await, 202);

    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
    let mut bucket_stream = js.get_stream(format!("KV_{}", gallop.bucket)).await.expect("salt bucket");
    let info = bucket_stream.info().await.expect("bucket info");
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::Memory,
        "salts live in memory storage, never in block files"
    );
    let kv = js.get_key_value(&gallop.bucket).await.expect("bucket");
    let day = time::OffsetDateTime::now_utc().date();
    let key = format!("day-{:04}-{:02}-{:02}", day.year(), u8::from(day.month()), day.day());
    let salt = kv.get(&key).await.expect("get").expect("today's salt exists");
    assert_eq!(salt.len(), 16);

    assert_eq!(terminate(&mut gallop.child, Duration::from_secs(20)).await, Some(0));
    let log = gallop.log.lock().expect("lock").join("\n");
    assert!(log.contains(&format!("DIRECT.GET.KV_{}", gallop.bucket)) || log.contains("salt"), "the read is logged");
    assert!(
        log.contains("DEBUG"),
        "the log is verbose (trace asked, libraries capped at debug): the test means something"
    );
    let hex: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    // How Rust prints bytes (`bytes::Bytes`'s Debug): printable ASCII as is, \n \r \t \\ \"
    // escaped, the rest as \xNN.
    let escaped: String = salt
        .iter()
        .map(|&b| match b {
            b'\n' => "\\n".to_owned(),
            b'\r' => "\\r".to_owned(),
            b'\t' => "\\t".to_owned(),
            b'\\' => "\\\\".to_owned(),
            b'"' => "\\\"".to_owned(),
            0x20..=0x7e => char::from(b).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect();
    let debug_list = format!("{:?}", salt.as_ref());
    drop(first);
    for (form, text) in [("hex", hex.as_str()), ("escaped bytes", escaped.as_str()), ("byte list", debug_list.as_str())]
    {
        assert!(!log.contains(text), "the salt ({form}: {text}) is in the trace-level log");
    }
}

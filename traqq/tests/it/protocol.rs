//! The protocol as traqq's clients see it.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    time::Duration,
};

use gallop_traqq::Response;
use serde_json::json;

use crate::fixture::{test_config, traqqs_own_server, TraqqGateway};

/// Sends `lines` in one write and reads one response per non-blank line.
fn exchange(address: &str, payload: &[u8], responses: usize) -> Vec<Response> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.write_all(payload).expect("write");
    let mut reader = BufReader::new(stream);
    (0..responses)
        .map(|i| {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap_or_else(|e| panic!("response {i}: {e}"));
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("response {i} {line:?}: {e}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_broker_hashed_and_only_what_the_mapping_needs() {
    let gateway = TraqqGateway::start(test_config()).await;
    let address = gateway.address.to_string();
    let answers = tokio::task::spawn_blocking(move || {
        let mut client = traqq::client::Client::connect(&address).expect("traqq's client connects");
        (0..40)
            .map(|i| {
                client
                    .record(json!({
                        "event": if i % 4 == 0 { "purchase" } else { "view" },
                        "ip": format!("203.0.113.{}", i % 10),
                        "geo": if i % 2 == 0 { "US" } else { "DE" },
                        "amount": if i % 4 == 0 { json!(9.5) } else { json!(null) },
                        "email": "someone@example.com",
                    }))
                    .expect("an answer")
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("client thread");
    assert!(answers.iter().all(|r| r.success && r.error.is_none()), "{answers:?}");

    let (records, text) = gateway.stream().await;
    assert_eq!(records.len(), 40, "each acknowledged record is in the stream");
    for raw in ["203.0.113.", "someone@example.com"] {
        assert!(!text.contains(raw), "{raw} reached the broker");
    }
    let ips: std::collections::HashSet<u64> = records.iter().map(|r| r.uniques["ip"]).collect();
    assert_eq!(ips.len(), 10, "ten addresses, ten hashes");
    for record in &records {
        assert_eq!(record.site, "traqq.test");
        assert_eq!(record.props.keys().collect::<Vec<_>>(), ["geo"], "only what the mapping groups by");
        assert_eq!(record.visitor, record.uniques["ip"], "visits group by the first bmp field");
        assert_eq!(record.value, (record.name == "purchase").then_some(9.5));
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_get_traqqs_errors_and_the_connection_goes_on() {
    let mut config = test_config();
    config.traqq.max_line_bytes = 1024;
    config.ingest.limits.max_name_bytes = 16;
    let gateway = TraqqGateway::start(config).await;
    let ours = gateway.address.to_string();
    let theirs = traqqs_own_server();

    // Lines both servers answer alike, word for word.
    let shared: Vec<String> = vec![
        "{not json".into(),
        r#"{"cmd":"delete","key":"x"}"#.into(),
        r#"{"cmd":"query","min":1}"#.into(),
        r#"{"cmd":"record","event":{"ip":"1.2.3.4"}}"#.into(),
        r#"{"cmd":"record","event":{"event":" ~ "}}"#.into(),
        r#"{"cmd":"record","event":{"event":"ok","geo":"US"}}"#.into(),
    ];
    let payload = shared.join("\n") + "\n";
    let (ours_shared, theirs_shared) = {
        let (ours, theirs, payload) = (ours.clone(), theirs.clone(), payload.clone());
        tokio::task::spawn_blocking(move || {
            (exchange(&ours, payload.as_bytes(), shared.len()), exchange(&theirs, payload.as_bytes(), shared.len()))
        })
        .await
        .expect("client thread")
    };
    assert_eq!(ours_shared, theirs_shared);
    assert_eq!(ours_shared.iter().filter(|r| r.success).count(), 1, "{ours_shared:?}");

    // Lines traqq has no answer for: over-long (traqq would buffer any length), not UTF-8
    // (traqq drops the connection), and an event over a Gallop limit. Then the connection
    // still answers.
    let mut payload = Vec::new();
    payload.extend_from_slice(
        format!(r#"{{"cmd":"record","event":{{"event":"x","geo":"{}"}}}}"#, "a".repeat(5000)).as_bytes(),
    );
    payload.extend_from_slice(b"\n\xff\xfe\n");
    payload.extend_from_slice(br#"{"cmd":"record","event":{"event":"a-name-longer-than-sixteen-bytes"}}"#);
    payload.extend_from_slice(b"\n\n   \n");
    payload.extend_from_slice(br#"{"cmd":"record","event":{"event":"after","geo":"DE"}}"#);
    payload.extend_from_slice(b"\n");
    let got = tokio::task::spawn_blocking(move || exchange(&ours, &payload, 4)).await.expect("client thread");
    let errors: Vec<Option<&str>> = got.iter().map(|r| r.error.as_deref()).collect();
    assert_eq!(
        errors,
        [
            Some("invalid command: line longer than 1024 bytes (traqq.max_line_bytes); skipped"),
            Some("invalid command: expected value at line 1 column 1"),
            Some("event: longer than 16 bytes (limit: ingest.limits.max_name_bytes)"),
            None,
        ]
    );
    assert!(got[3].success);
    let (records, _) = gateway.stream().await;
    let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "ok").count(), 1);
    assert_eq!(names.iter().filter(|n| **n == "after").count(), 1);
    assert_eq!(records.len(), 2, "nothing of a refused line was published: {names:?}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_lines_are_answered_in_order() {
    let gateway = TraqqGateway::start(test_config()).await;
    let address = gateway.address.to_string();
    let mut payload = String::new();
    for i in 0..3000 {
        payload
            .push_str(&json!({"cmd": "record", "event": {"event": format!("e{}", i % 7), "ip": i % 50}}).to_string());
        payload.push('\n');
        if i == 1500 {
            payload.push_str("{\"cmd\":\"query_days\",\"days\":0}\n{\"cmd\":\"nope\"}\n");
        }
    }
    let got = tokio::task::spawn_blocking(move || exchange(&address, payload.as_bytes(), 3002)).await.expect("client");
    assert!(got[..1501].iter().chain(&got[1503..]).all(|r| r.success && r.data.is_none()), "records");
    assert!(got[1501].success && got[1501].data.as_ref().is_some_and(serde_json::Value::is_array), "{:?}", got[1501]);
    assert!(!got[1502].success, "the unknown command's answer comes in its place");
    let (records, _) = gateway.stream().await;
    assert_eq!(records.len(), 3000);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_told_and_closed() {
    let mut config = test_config();
    config.traqq.max_connections = 2;
    let gateway = TraqqGateway::start(config).await;
    let address = gateway.address.to_string();
    let (refused, still) = tokio::task::spawn_blocking(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for _ in 0..2 {
            // A command answered proves the connection is counted before the next opens.
            let mut stream = TcpStream::connect(&address).expect("connect");
            stream.write_all(b"{\"cmd\":\"nope\"}\n").expect("write");
            let mut line = String::new();
            BufReader::new(stream.try_clone().expect("clone")).read_line(&mut line).expect("answer");
            held.push(stream);
        }
        let third = TcpStream::connect(&address).expect("the third connects");
        let mut reader = BufReader::new(third);
        let mut line = String::new();
        reader.read_line(&mut line).expect("an error line");
        let refused: Response = serde_json::from_str(&line).expect("json");
        let mut rest = String::new();
        let closed = reader.read_line(&mut rest).map(|n| n == 0).unwrap_or(true);
        drop(held);
        // With the two gone, a new connection is served again (retried until their ends
        // are seen by the server).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let served = loop {
            let answer = exchange(&address, b"{\"cmd\":\"query_days\",\"days\":0}\n", 1).remove(0);
            if answer.success || std::time::Instant::now() > deadline {
                break answer;
            }
        };
        ((refused, closed), served)
    })
    .await
    .expect("client thread");
    assert_eq!(
        refused.0.error.as_deref(),
        Some("too many connections: 2 are open (traqq.max_connections); retry later")
    );
    assert!(refused.1, "the refused connection is closed");
    assert!(still.success, "{still:?}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_clickhouse_queries_fail_and_records_go_on() {
    let mut config = test_config();
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    config.clickhouse.url = format!("http://127.0.0.1:{port}");
    let gateway = TraqqGateway::start_with(config, false).await;
    let address = gateway.address.to_string();
    let payload = b"{\"cmd\":\"query_days\",\"days\":1}\n{\"cmd\":\"record\",\"event\":{\"event\":\"x\"}}\n";
    let got = tokio::task::spawn_blocking(move || exchange(&address, payload, 2)).await.expect("client");
    let error = got[0].error.as_deref().unwrap_or_default();
    assert!(
        !got[0].success && error.starts_with("ClickHouse unavailable: ") && error.ends_with("; retry later"),
        "{error}"
    );
    assert!(got[1].success, "{:?}", got[1]);
    assert_eq!(gateway.stream().await.0.len(), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let mut config = test_config();
    config.traqq.idle_timeout = Duration::from_millis(300);
    let gateway = TraqqGateway::start(config).await;
    let address = gateway.address.to_string();
    let (answer, closed_after) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(b"{\"cmd\":\"nope\"}\n").expect("write");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("answer");
        let since = std::time::Instant::now();
        let mut rest = String::new();
        let n = reader.read_line(&mut rest).expect("the server closes, not the read timeout");
        assert_eq!(n, 0, "nothing more comes: {rest:?}");
        (line, since.elapsed())
    })
    .await
    .expect("client");
    assert!(answer.contains("invalid command"), "{answer}");
    assert!(closed_after >= Duration::from_millis(200) && closed_after < Duration::from_secs(5), "{closed_after:?}");
    gateway.stop().await;
}

//! Topic ingestion on both brokers: events published straight to the input subject or
//! topic (the public event contract) by `gallop publish` and by a plain client go through
//! `gallop ingest` into ClickHouse, checked cell by cell against the truth; bad records land
//! in the dead letters with their reason, field and original bytes, and nothing else is
//! affected; a message published twice counts once; a SIGKILLed gateway loses and doubles
//! nothing.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use rdkafka::{
    config::ClientConfig,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};

use crate::{
    brokers::{nats_url, Broker, Kind},
    pipeline::{clickhouse_url, generate, metric, now_ms, on_both_brokers, tag, Pipeline, Sent},
    terminate,
};

/// The gateway settings of these tests: topic ingestion on, and short redelivery waits so
/// that a killed gateway's messages come back quickly (NATS: the input consumer's ack wait;
/// Kafka: the group's session timeout, through a config file since the property's name has
/// dots).
fn input_env(pipeline: &Pipeline) -> Vec<(&'static str, String)> {
    let mut env = vec![("GALLOP_INPUT__ENABLED", "true".to_owned()), ("GALLOP_INPUT__NATS_ACK_WAIT", "3s".to_owned())];
    if pipeline.broker.kind == Kind::Kafka {
        let path = std::env::temp_dir().join(format!("gallop-topics-{}.toml", pipeline.broker.input_topic()));
        std::fs::write(
            &path,
            "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
        )
        .expect("write the config file");
        env.push(("GALLOP_CONFIG", path.to_string_lossy().into_owned()));
    }
    env
}

/// Publishes to the input subject or topic as an application does.
enum App {
    Nats(Box<jetstream::Context>, String),
    Kafka(FutureProducer, String),
}

impl App {
    async fn new(broker: &Broker) -> Self {
        match broker.kind {
            Kind::Nats => Self::Nats(Box::new(jetstream().await), format!("{}.app", broker.input_subject())),
            Kind::Kafka => {
                let producer = ClientConfig::new()
                    .set("bootstrap.servers", &broker.bootstrap)
                    .set("allow.auto.create.topics", "false")
                    .create()
                    .expect("Kafka producer");
                Self::Kafka(producer, broker.input_topic())
            }
        }
    }

    /// Publishes `payload` and waits for the broker's acknowledgement.
    async fn publish(&self, payload: impl Into<Bytes>) {
        let payload = payload.into();
        match self {
            Self::Nats(js, subject) => {
                js.publish(subject.clone(), payload).await.expect("publish").await.expect("acknowledged");
            }
            Self::Kafka(producer, topic) => {
                let record = FutureRecord::<(), [u8]>::to(topic).payload(&payload[..]);
                producer.send(record, Timeout::After(Duration::from_secs(10))).await.expect("acknowledged");
            }
        }
    }
}

/// A pipeline whose gateway consumes the input, with one processor; returns once the
/// gateway made the input and the processor its table.
async fn start(kind: Kind) -> (Pipeline, String) {
    let mut pipeline = Pipeline::new(Broker::new(kind, &tag()), clickhouse_url());
    let address = start_gateway(&mut pipeline).await;
    pipeline.start_processor(&[]).await;
    pipeline.wait_for_table().await;
    (pipeline, address)
}

/// Starts `gallop ingest` with topic ingestion and waits until it made its input (NATS:
/// the stream and its consumer; Kafka: the topic, so that no producer makes it first with
/// the broker's defaults).
async fn start_gateway(pipeline: &mut Pipeline) -> String {
    let env = input_env(pipeline);
    let (gateway, address) = pipeline.spawn(&["ingest"], &env, Some("gateway listening")).await;
    pipeline.gateway = Some(gateway);
    let started = Instant::now();
    loop {
        let ready = match pipeline.broker.kind {
            Kind::Nats => match jetstream().await.get_stream(pipeline.broker.input_stream()).await {
                Ok(mut stream) => stream.info().await.is_ok_and(|info| info.state.consumer_count > 0),
                Err(_) => false,
            },
            Kind::Kafka => {
                pipeline.broker.has_topic(&pipeline.broker.input_topic())
                    && pipeline.broker.has_topic(&pipeline.broker.dead_topic())
            }
        };
        if ready {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the gateway made no input within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    address.expect("gateway address")
}

fn ndjson(events: &[Sent]) -> String {
    events.iter().map(|e| format!("{}\n", e.json())).collect()
}

async fn jetstream() -> jetstream::Context {
    jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"))
}

async fn a_stream_published_with_gallop_publish_lands_exactly(kind: Kind) {
    let (pipeline, _) = start(kind).await;
    let sent = generate(31, 20_000, now_ms(), 10);
    let file = std::env::temp_dir().join(format!("gallop-publish-{}.ndjson", tag()));
    std::fs::write(&file, ndjson(&sent)).expect("write the NDJSON file");
    let subject = format!("{}.import", pipeline.broker.input_subject());
    let target: Vec<&str> = match kind {
        Kind::Nats => vec!["--subject", &subject],
        Kind::Kafka => vec![],
    };
    let env = input_env(&pipeline);
    let output = pipeline
        .command(&[&["publish"], &target[..], &[&file.to_string_lossy()]].concat(), &env)
        .output()
        .await
        .expect("gallop publish runs");
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "gallop publish failed:\n{stderr}");
    assert!(
        stderr.contains("sent 20000 records in 40 messages") && stderr.contains("rejected locally 0; failed 0"),
        "{stderr}"
    );
    pipeline.wait_for(sent.len()).await;
    pipeline.check(&sent).await;

    // Lines that are not JSON objects are refused before anything is sent, and reported.
    let file = std::env::temp_dir().join(format!("gallop-publish-bad-{}.ndjson", tag()));
    std::fs::write(&file, "[1,2]\nnot json\n").expect("write");
    let output =
        pipeline.command(&[&["publish"], &target[..], &[&file.to_string_lossy()]].concat(), &env).output().await;
    let _ = std::fs::remove_file(&file);
    let output = output.expect("gallop publish runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "rejected lines make the exit code non-zero:\n{stderr}");
    for part in ["line 1: not a JSON object", "line 2: not a JSON object", "rejected locally 2"] {
        assert!(stderr.contains(part), "{part:?} missing:\n{stderr}");
    }
}

/// One dead letter as stored: (reason, field, record, payload).
type Letter = (String, String, Option<String>, String);

/// Every dead letter, once `n` are there.
async fn dead_letters(broker: &Broker, n: usize) -> Vec<Letter> {
    let mut letters: Vec<Letter> = match broker.kind {
        Kind::Nats => {
            let js = jetstream().await;
            let started = Instant::now();
            let mut stream = js.get_stream(broker.dead_stream()).await.expect("dead-letter stream");
            loop {
                let info = stream.info().await.expect("stream info");
                if info.state.messages as usize >= n {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "only {} of {n} dead letters",
                    info.state.messages
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut letters = Vec::new();
            for sequence in 1..=stream.info().await.expect("info").state.last_sequence {
                let message = stream.get_raw_message(sequence).await.expect("dead letter");
                let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
                letters.push((
                    header("Gallop-Dead-Reason").unwrap_or_default(),
                    header("Gallop-Dead-Field").unwrap_or_default(),
                    header("Gallop-Record"),
                    String::from_utf8_lossy(&message.payload).into_owned(),
                ));
            }
            letters
        }
        Kind::Kafka => {
            let (broker, topic) = (broker.clone(), broker.dead_topic());
            let read = tokio::task::spawn_blocking(move || broker.read_with_headers(&topic, n)).await.expect("read");
            read.into_iter()
                .map(|(headers, payload)| {
                    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                    (
                        header("Gallop-Dead-Reason").unwrap_or_default(),
                        header("Gallop-Dead-Field").unwrap_or_default(),
                        header("Gallop-Record"),
                        String::from_utf8_lossy(&payload).into_owned(),
                    )
                })
                .collect()
        }
    };
    letters.sort();
    letters
}

async fn bad_records_go_to_the_dead_letters_and_a_republished_message_counts_once(kind: Kind) {
    let (mut pipeline, gateway) = start(kind).await;
    let app = App::new(&pipeline.broker).await;
    let good = generate(32, 1_000, now_ms(), 5);

    // An application retrying a publish: the same message twice.
    let first = ndjson(&good[..500]);
    app.publish(first.clone()).await;
    app.publish(first).await;

    // Good records with bad ones among them: none of them holds up the others.
    let no_url = r#"{"site":"a.test","name":"pageview","visitor":"v1"}"#;
    let bad_ip = r#"{"site":"a.test","name":"pageview","url":"https://a.test/","ip":"300.0.0.1","user_agent":"x"}"#;
    let no_visitor = r#"{"site":"a.test","name":"pageview","url":"https://a.test/"}"#;
    let mixed = format!("{no_url}\nnot json at all\n{}{bad_ip}\n{no_visitor}\n", ndjson(&good[500..]));
    app.publish(mixed).await;
    // A message that is no JSON at all is refused once, whole.
    app.publish("\u{1}\u{2} binary garbage\nmore".as_bytes().to_vec()).await;

    pipeline.wait_for(good.len()).await;
    pipeline.check(&good).await;

    let letters = dead_letters(&pipeline.broker, 5).await;
    let mut want: Vec<Letter> = vec![
        ("invalid".into(), "url".into(), Some("0".into()), no_url.into()),
        ("not_json".into(), "body".into(), Some("1".into()), "not json at all".into()),
        // Lines 2..=501 are the good records.
        ("invalid".into(), "ip".into(), Some("502".into()), bad_ip.into()),
        ("invalid".into(), "visitor".into(), Some("503".into()), no_visitor.into()),
        ("not_json".into(), "message".into(), None, "\u{1}\u{2} binary garbage\nmore".into()),
    ];
    want.sort();
    assert_eq!(letters, want);

    for (reason, count) in [("invalid", 3.0), ("not_json", 2.0)] {
        let name = format!("gallop_dead_letters_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&gateway, &name).await, Some(count), "{name}");
    }
    assert_eq!(metric(&gateway, r#"gallop_input_messages_total{outcome="processed"}"#).await, Some(4.0));

    // SIGTERM: topic ingestion stops, then HTTP; a clean exit.
    let mut gateway = pipeline.gateway.take().expect("gateway");
    assert_eq!(terminate(&mut gateway, Duration::from_secs(30)).await, Some(0), "SIGTERM is a clean stop");
}

async fn a_killed_gateway_loses_and_doubles_nothing(kind: Kind) {
    let (mut pipeline, _) = start(kind).await;
    let app = App::new(&pipeline.broker).await;
    let sent = generate(33, 30_000, now_ms(), 10);
    for chunk in sent.chunks(500) {
        app.publish(ndjson(chunk)).await;
    }
    // SIGKILL the gateway once events started to land, then start another.
    let started = Instant::now();
    while pipeline.landed().await == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "nothing landed within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut gateway = pipeline.gateway.take().expect("gateway");
    gateway.kill().await.expect("SIGKILL the gateway");
    start_gateway(&mut pipeline).await;
    pipeline.wait_for(sent.len()).await;
    pipeline.check(&sent).await;
}

on_both_brokers!(
    a_stream_published_with_gallop_publish_lands_exactly,
    bad_records_go_to_the_dead_letters_and_a_republished_message_counts_once,
    a_killed_gateway_loses_and_doubles_nothing,
);

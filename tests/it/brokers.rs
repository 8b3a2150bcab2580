//! The broker a whole-pipeline test runs on, NATS JetStream or Kafka, with names of the
//! test's own: what `gallop` is told about it, and what a test reads from it directly (every
//! record as it travelled, what is not acknowledged yet) or does to it (delete the log).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    message::{Headers as _, Message},
    Offset, TopicPartitionList,
};

/// A Kafka record as read: its headers (name, value) and payload.
pub(crate) type KafkaRecord = (Vec<(String, String)>, Vec<u8>);

/// The partitions every pipeline test uses (the default of `broker.partitions`).
pub(crate) const PARTITIONS: u32 = 8;

pub(crate) fn nats_url() -> String {
    std::env::var("TEST_GALLOP_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub(crate) fn kafka_bootstrap() -> String {
    std::env::var("TEST_GALLOP_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Nats,
    Kafka,
}

/// `consumer.lease_ttl` on NATS in these tests (whole seconds).
const LEASE_TTL_NATS: &str = "2s";
/// `consumer.lease_ttl` on Kafka in these tests (whole seconds).
const LEASE_TTL_KAFKA: &str = "6s";

/// A broker with stream, topic, bucket and consumer names of one test.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    pub(crate) kind: Kind,
    tag: String,
    /// Kafka bootstrap servers (another broker than the shared one, for outage tests).
    pub(crate) bootstrap: String,
}

impl Broker {
    pub(crate) fn new(kind: Kind, tag: &str) -> Self {
        Self { kind, tag: tag.to_owned(), bootstrap: kafka_bootstrap() }
    }

    pub(crate) fn stream(&self) -> String {
        format!("GALLOP_E2E_{}", self.tag)
    }

    fn bucket(&self) -> String {
        format!("gallop_e2e_{}", self.tag)
    }

    /// The processors' lease bucket (NATS).
    pub(crate) fn lease_bucket(&self) -> String {
        format!("gallop_e2e_lease_{}", self.tag)
    }

    /// The input stream (topic ingestion).
    pub(crate) fn input_stream(&self) -> String {
        format!("GALLOP_E2E_IN_{}", self.tag)
    }

    /// The root of the input subjects: applications publish to `<root>.<anything>`.
    pub(crate) fn input_subject(&self) -> String {
        format!("e2e-in-{}", self.tag)
    }

    /// The dead-letter stream and subject.
    pub(crate) fn dead_stream(&self) -> String {
        format!("GALLOP_E2E_DEAD_{}", self.tag)
    }

    pub(crate) fn dead_subject(&self) -> String {
        format!("e2e-dead-{}", self.tag)
    }

    /// The Kafka input and dead-letter topics (topic ingestion).
    pub(crate) fn input_topic(&self) -> String {
        format!("gallop-e2e-in-{}", self.tag)
    }

    pub(crate) fn dead_topic(&self) -> String {
        format!("gallop-e2e-dead-{}", self.tag)
    }

    /// Every message of the Kafka topic `topic` with its headers, each once, read until
    /// `expected` came or a minute passed.
    pub(crate) fn read_with_headers(&self, topic: &str, expected: usize) -> Vec<KafkaRecord> {
        let consumer = kafka_consumer(&self.bootstrap, None);
        let mut list = TopicPartitionList::new();
        for p in 0..PARTITIONS as i32 {
            list.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
        }
        consumer.assign(&list).expect("assign");
        let mut messages = BTreeMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while messages.len() < expected && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => {
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let payload = message.payload().unwrap_or_default().to_vec();
                    messages.insert((message.partition(), message.offset()), (headers, payload));
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        messages.into_values().collect()
    }

    /// Whether the Kafka topic `topic` exists with every partition.
    pub(crate) fn has_topic(&self, topic: &str) -> bool {
        let consumer = kafka_consumer(&self.bootstrap, None);
        consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && t.partitions().len() >= PARTITIONS as usize)
        })
    }

    fn durable_prefix(&self) -> String {
        format!("e2e-{}", self.tag)
    }

    pub(crate) fn topic(&self) -> String {
        format!("gallop-e2e-{}", self.tag)
    }

    fn salt_topic(&self) -> String {
        format!("gallop-e2e-salts-{}", self.tag)
    }

    fn group(&self) -> String {
        format!("gallop-e2e-{}", self.tag)
    }

    /// The events stream's name as the markers in ClickHouse carry it.
    pub(crate) fn events(&self) -> String {
        match self.kind {
            Kind::Nats => self.stream(),
            Kind::Kafka => self.topic(),
        }
    }

    /// `consumer.lease_ttl` of the pipelines on this broker.
    pub(crate) fn lease_ttl(&self) -> std::time::Duration {
        let ttl = match self.kind {
            Kind::Nats => LEASE_TTL_NATS,
            Kind::Kafka => LEASE_TTL_KAFKA,
        };
        std::time::Duration::from_secs(ttl.trim_end_matches('s').parse().unwrap_or(10))
    }

    /// The `GALLOP_*` variables that put `gallop` on this broker.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        match self.kind {
            Kind::Nats => vec![
                ("GALLOP_BROKER__KIND", "nats".to_owned()),
                ("GALLOP_NATS__URL", nats_url()),
                ("GALLOP_NATS__STREAM", self.stream()),
                ("GALLOP_NATS__SUBJECT_PREFIX", format!("gallop-e2e-{}", self.tag)),
                ("GALLOP_NATS__SALT_BUCKET", self.bucket()),
                ("GALLOP_NATS__LEASE_BUCKET", self.lease_bucket()),
                ("GALLOP_CONSUMER__DURABLE_PREFIX", self.durable_prefix()),
                ("GALLOP_INPUT__NATS_STREAM", self.input_stream()),
                ("GALLOP_INPUT__NATS_SUBJECT", format!("{}.>", self.input_subject())),
                ("GALLOP_INPUT__NATS_DEAD_STREAM", self.dead_stream()),
                ("GALLOP_INPUT__NATS_DEAD_SUBJECT", self.dead_subject()),
                ("GALLOP_INPUT__NATS_CONSUMER", format!("e2e-in-{}", self.tag)),
                // A restarted processor waits for the leases of its dead self to lapse.
                ("GALLOP_CONSUMER__LEASE_TTL", LEASE_TTL_NATS.to_owned()),
            ],
            Kind::Kafka => vec![
                ("GALLOP_BROKER__KIND", "kafka".to_owned()),
                ("GALLOP_KAFKA__BOOTSTRAP_SERVERS", self.bootstrap.clone()),
                ("GALLOP_KAFKA__TOPIC", self.topic()),
                ("GALLOP_KAFKA__SALT_TOPIC", self.salt_topic()),
                ("GALLOP_KAFKA__CONSUMER_GROUP", self.group()),
                ("GALLOP_INPUT__KAFKA_TOPIC", self.input_topic()),
                ("GALLOP_INPUT__KAFKA_DEAD_TOPIC", self.dead_topic()),
                ("GALLOP_INPUT__KAFKA_GROUP", format!("gallop-e2e-in-{}", self.tag)),
                // Kafka's own floor for session.timeout.ms is 6 s (group.min.session.timeout.ms).
                ("GALLOP_CONSUMER__LEASE_TTL", LEASE_TTL_KAFKA.to_owned()),
            ],
        }
    }

    /// Every event's visitor id as it travelled on the broker (hashed by the gateway), and
    /// how many records were read in all (copies of a republished message included). On
    /// Kafka the topic is read until `expected` distinct ids came (Tansu's end offsets can
    /// be one short) or a minute passed.
    pub(crate) async fn visitor_ids(&self, expected: usize) -> (HashMap<String, u64>, usize) {
        let mut ids = HashMap::new();
        let mut records = 0;
        for payload in self.payloads(expected).await {
            for record in gallop_event::decode_records(&payload) {
                let record = record.expect("valid record");
                records += 1;
                ids.insert(record.id, record.visitor);
            }
        }
        (ids, records)
    }

    /// The payload of every message in the log.
    pub(crate) async fn payloads(&self, expected: usize) -> Vec<Vec<u8>> {
        match self.kind {
            Kind::Nats => {
                use futures::StreamExt;
                let client = async_nats::connect(nats_url()).await.expect("NATS");
                let js = async_nats::jetstream::new(client);
                let stream = js.get_stream(&self.stream()).await.expect("stream");
                let consumer = stream
                    .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                    .await
                    .expect("ordered consumer");
                let total = stream.get_info().await.expect("info").state.messages;
                let mut messages = consumer.messages().await.expect("messages");
                let mut payloads = Vec::new();
                for _ in 0..total {
                    payloads.push(messages.next().await.expect("a message").expect("no error").payload.to_vec());
                }
                payloads
            }
            Kind::Kafka => {
                let (bootstrap, topic) = (self.bootstrap.clone(), self.topic());
                tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, expected))
                    .await
                    .expect("reader thread")
            }
        }
    }

    /// Messages not yet acknowledged by the processors, all partitions (NATS: pending and
    /// ack pending of the durable consumers; Kafka: end offsets minus the group's commits).
    pub(crate) async fn unacknowledged(&self) -> u64 {
        match self.kind {
            Kind::Nats => {
                let client = async_nats::connect(nats_url()).await.expect("NATS");
                let js = async_nats::jetstream::new(client);
                let stream = js.get_stream(&self.stream()).await.expect("stream");
                let mut total = 0;
                for p in 0..PARTITIONS {
                    let name = format!("{}-{p}", self.durable_prefix());
                    let mut consumer = stream
                        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                        .await
                        .unwrap_or_else(|e| panic!("consumer {name}: {e}"));
                    let info = consumer.info().await.expect("consumer info");
                    total += info.num_ack_pending as u64 + info.num_pending;
                }
                total
            }
            Kind::Kafka => {
                let (bootstrap, topic, group) = (self.bootstrap.clone(), self.topic(), self.group());
                let behind = tokio::task::spawn_blocking(move || {
                    let consumer = kafka_consumer(&bootstrap, Some(&group));
                    let mut list = TopicPartitionList::new();
                    for p in 0..PARTITIONS as i32 {
                        list.add_partition(&topic, p);
                    }
                    let committed =
                        consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
                    (0..PARTITIONS as i32)
                        .map(|p| {
                            let (_, high) =
                                consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).expect("watermarks");
                            let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                                Some(Offset::Offset(o)) => o,
                                _ => 0,
                            };
                            (high - done).max(0) as u64
                        })
                        .sum::<u64>()
                })
                .await
                .expect("reader thread");
                behind
            }
        }
    }

    /// The state of the processors' consumption, for failure messages.
    pub(crate) async fn states(&self) -> String {
        match self.kind {
            Kind::Nats => {
                let Ok(client) = async_nats::connect(nats_url()).await else { return "NATS unreachable".to_owned() };
                let js = async_nats::jetstream::new(client);
                let Ok(stream) = js.get_stream(&self.stream()).await else { return "no stream".to_owned() };
                let mut out = String::new();
                for p in 0..PARTITIONS {
                    let name = format!("{}-{p}", self.durable_prefix());
                    if let Ok(mut consumer) =
                        stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name).await
                    {
                        if let Ok(info) = consumer.info().await {
                            out.push_str(&format!(
                                "\n{name}: ack floor {:?}, delivered {:?}, ack pending {}, redelivered {}, pending {}",
                                info.ack_floor.stream_sequence,
                                info.delivered.stream_sequence,
                                info.num_ack_pending,
                                info.num_redelivered,
                                info.num_pending,
                            ));
                        }
                    }
                }
                out
            }
            Kind::Kafka => {
                format!("\n{} messages not committed by group {}", self.unacknowledged().await, self.group())
            }
        }
    }

    /// Deletes the stream or topic (the next gateway to start makes a new, empty one).
    pub(crate) async fn delete_log(&self) {
        match self.kind {
            Kind::Nats => {
                let client = async_nats::connect(nats_url()).await.expect("NATS");
                async_nats::jetstream::new(client).delete_stream(&self.stream()).await.expect("stream deleted");
            }
            Kind::Kafka => {
                let admin: AdminClient<DefaultClientContext> =
                    ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().expect("admin client");
                let deleted = admin.delete_topics(&[&self.topic()], &AdminOptions::new()).await.expect("delete");
                assert!(deleted.iter().all(Result::is_ok), "topic deleted: {deleted:?}");
            }
        }
    }

    /// Removes every message of the log (JetStream purge), as retention would.
    pub(crate) async fn purge(&self) {
        assert_eq!(self.kind, Kind::Nats, "Tansu implements no DeleteRecords");
        let client = async_nats::connect(nats_url()).await.expect("NATS");
        let js = async_nats::jetstream::new(client);
        js.get_stream(&self.stream()).await.expect("stream").purge().await.expect("purged");
    }

    /// Deletes everything the test made on the broker.
    pub(crate) async fn clean_up(&self) {
        match self.kind {
            Kind::Nats => {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(client);
                    for stream in [
                        self.stream(),
                        format!("KV_{}", self.bucket()),
                        format!("KV_{}", self.lease_bucket()),
                        self.input_stream(),
                        self.dead_stream(),
                    ] {
                        let _ = js.delete_stream(&stream).await;
                    }
                }
            }
            Kind::Kafka => {
                let admin: Result<AdminClient<DefaultClientContext>, _> =
                    ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create();
                if let Ok(admin) = admin {
                    let topics = [self.topic(), self.salt_topic(), self.input_topic(), self.dead_topic()];
                    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                    let _ = admin.delete_topics(&topics, &AdminOptions::new()).await;
                }
            }
        }
    }
}

fn kafka_consumer(bootstrap: &str, group: Option<&str>) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group.unwrap_or("gallop-e2e-reader"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false");
    config.create().expect("Kafka consumer")
}

/// Every message of every partition of `topic`, each once (by partition and offset: Tansu
/// may hand out a record again), read until they hold `expected` distinct event ids.
fn read_topic(bootstrap: &str, topic: &str, expected: usize) -> Vec<Vec<u8>> {
    let consumer = kafka_consumer(bootstrap, None);
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let mut payloads = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < expected && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                let payload = message.payload().unwrap_or_default().to_vec();
                for record in gallop_event::decode_records(&payload).into_iter().flatten() {
                    ids.insert(record.id);
                }
                payloads.insert((message.partition(), message.offset()), payload);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    payloads.into_values().collect()
}

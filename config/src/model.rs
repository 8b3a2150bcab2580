//! The configuration tree: every key Gallop reads, its default and its meaning.
//!
//! Each struct denies unknown fields so a typo fails at start instead of being ignored.
//! `gallop.example.toml` at the repository root mirrors this file key for key.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The whole configuration of one Gallop process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logging: format and filter.
    pub log: LogConfig,
    /// Event time rules shared by the gateway and the processor.
    pub time: TimeConfig,
    /// Which broker carries events, and how many partitions it has.
    pub broker: BrokerConfig,
    /// NATS JetStream connection, stream and key-value settings.
    pub nats: NatsConfig,
    /// Kafka connection, topics and client properties.
    pub kafka: KafkaConfig,
    /// The ingest gateway: HTTP listener, enrichment, privacy, limits, batching.
    pub ingest: IngestConfig,
    /// Events applications publish straight to a topic (the public event contract),
    /// consumed by the gateway process.
    pub input: InputConfig,
    /// The processor: which rollups to build, flushing, and memory bounds.
    pub processor: ProcessorConfig,
    /// How `gallop process` reads the broker: owned partitions, durable consumers.
    pub consumer: ConsumerConfig,
    /// The ClickHouse sink: server, database, retries, retention.
    pub clickhouse: ClickHouseConfig,
    /// A listener speaking traqq's TCP protocol in the gateway process, and traqq's metric
    /// mapping (docs/traqq.md). Off by default.
    pub traqq: crate::traqq::TraqqConfig,
}

/// How logs are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (coloured, one line per event) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `gallop_ingest=debug,info`.
    /// `RUST_LOG`, when set, wins over this.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, filter: "info".to_owned() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Event-time rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    /// How far behind the newest event time an event may be and still count in its own
    /// bucket. The gateway rejects events older than `now - allowed_lateness`.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How far ahead of the gateway's clock an event timestamp may be.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// How long after the gateway accepted an event the broker may stamp it (queueing,
    /// retries, waiting for the acknowledgement): the processor allows that much more
    /// lateness, so every event the gateway accepted is counted. At least
    /// `ingest.publish_timeout + ingest.ack_timeout`.
    #[serde(with = "humantime_serde")]
    pub acceptance_grace: Duration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::from_secs(3600),
            max_future: Duration::from_secs(300),
            acceptance_grace: Duration::from_secs(120),
        }
    }
}

/// Which broker to use and its partitioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `nats` (JetStream, section `[nats]`) or `kafka` (section `[kafka]`).
    pub kind: BrokerKind,
    /// Number of partitions events are spread over. A visitor's events always go to the
    /// same partition (a consistent hash of site and visitor); growing the count moves
    /// about 1/n of the visitors.
    pub partitions: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self { kind: BrokerKind::Nats, partitions: 8 }
    }
}

/// The broker implementations Gallop knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// NATS JetStream.
    Nats,
    /// Apache Kafka (or a Kafka-protocol broker).
    Kafka,
}

impl BrokerKind {
    /// `nats` or `kafka`, as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Kafka => "kafka",
        }
    }
}

/// Kafka settings, used when `broker.kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from, comma separated `host:port`.
    pub bootstrap_servers: String,
    /// Topic that carries events between gateways and processors.
    pub topic: String,
    /// Partitions of the topic when Gallop creates or grows it; unset means
    /// `broker.partitions`. It may be larger (partitions made ahead of growth; Gallop uses
    /// the first `broker.partitions`), never smaller.
    pub partitions: Option<u32>,
    /// Replication factor of the topics Gallop creates.
    pub replication_factor: i16,
    /// Create the topics when missing, and grow the events topic to `broker.partitions`
    /// when it has fewer. `false`: they must exist (a missing one fails at start).
    pub create_topics: bool,
    /// `retention.ms` of the events topic when Gallop creates it: how long a processor may
    /// be down before unprocessed events are removed (the processor then refuses to start,
    /// see `consumer.accept_log_gaps`).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Topic holding the daily visitor salt every gateway shares (one partition, records
    /// expire after a day, older days are deleted at rotation where the broker allows).
    pub salt_topic: String,
    /// Consumer group processors commit their positions to. Only for tools that show lag:
    /// Gallop itself resumes from the positions stored in ClickHouse.
    pub consumer_group: String,
    /// Kafka stores a republished message again (a gateway retrying a publish, a client
    /// retrying a request whose events carry ids): the processor drops a message whose id it
    /// saw in the same partition this long before. Like `nats.duplicate_window`.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// librdkafka properties passed to every client as they are (SASL, TLS, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`. They win over Gallop's own defaults
    /// (`compression.type = "lz4"`, `linger.ms = 1`, …); the keys its delivery guarantees
    /// rest on (`enable.idempotence`, `acks`, `message.timeout.ms`, `enable.auto.commit`,
    /// `auto.offset.reset`) are refused.
    pub properties: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topic: "gallop-events".to_owned(),
            partitions: None,
            replication_factor: 1,
            create_topics: true,
            retention: Duration::from_secs(7 * 24 * 3600),
            salt_topic: "gallop-salts".to_owned(),
            consumer_group: "gallop-processor".to_owned(),
            dedup_window: Duration::from_secs(120),
            properties: KafkaProperties::default(),
        }
    }
}

/// librdkafka properties; the values of secret ones (`*password*`, `*secret*`, `sasl.jaas*`,
/// `*.key.pem`, `sasl.oauthbearer.config`) print as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl KafkaProperties {
    /// Whether the value of `key` must not be shown.
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        ["password", "secret", "sasl.jaas", "key.pem", "oauthbearer.config"].iter().any(|marker| key.contains(marker))
    }

    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0.iter().map(|(k, v)| (k.as_str(), if Self::is_secret(k) { "<redacted>" } else { v.as_str() })).collect()
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(serializer)
    }
}

/// NATS JetStream settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`. Credentials in it
    /// (`nats://user:pass@host`) work but are shown redacted; prefer `user`/`password`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// Optional token for token authentication.
    pub token: Option<Secret>,
    /// Optional user name for user/password authentication.
    pub user: Option<String>,
    /// Optional password for user/password authentication.
    pub password: Option<Secret>,
    /// Optional NKey seed (`SU…`) for NKey authentication.
    pub nkey: Option<Secret>,
    /// Optional path of a `.creds` file (JWT + NKey seed) for decentralized authentication.
    pub credentials_file: Option<PathBuf>,
    /// Require TLS for the connection (also implied by a `tls://` URL).
    pub tls: bool,
    /// PEM file of the CA that signed the server's certificate, when not a public one.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS; set both or neither.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// How long the first connection attempt may take before start-up fails.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// JetStream stream that holds events. Created or updated on start.
    pub stream: String,
    /// Subject prefix: partition `p` is published on `<subject_prefix>.events.<p>`.
    pub subject_prefix: String,
    /// Stream storage: `file` (survives restarts) or `memory`.
    pub storage: StorageKind,
    /// Oldest message the stream keeps.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Largest size of the stream in bytes; 0 means unlimited.
    pub max_bytes: u64,
    /// What a stream at `max_bytes` does: `new` (default) refuses new publishes, so the
    /// gateway answers 503 and nothing accepted is lost; `old` drops the oldest messages,
    /// which may not have been processed yet (the processor then reports a gap).
    pub discard: DiscardKind,
    /// Window in which a re-published message with the same `Nats-Msg-Id` is stored once.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Stream replicas (1 on a single server).
    pub replicas: u32,
    /// Key-value bucket that holds the daily visitor salt shared by every gateway.
    pub salt_bucket: String,
    /// Key-value bucket through which processors share the partitions: a heartbeat key
    /// per live processor and a lease key per owned partition, expiring after
    /// `consumer.lease_ttl` (the bucket's `max_age`) unless renewed.
    pub lease_bucket: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            token: None,
            user: None,
            password: None,
            nkey: None,
            credentials_file: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout: Duration::from_secs(5),
            stream: "GALLOP_EVENTS".to_owned(),
            subject_prefix: "gallop".to_owned(),
            storage: StorageKind::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 0,
            discard: DiscardKind::New,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            salt_bucket: "gallop_salts".to_owned(),
            lease_bucket: "gallop_leases".to_owned(),
        }
    }
}

/// What a full JetStream stream does with the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscardKind {
    /// Refuse the new message (the publisher gets an error; the gateway answers 503).
    New,
    /// Drop the oldest message to make room.
    Old,
}

/// Where a JetStream stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// On disk.
    File,
    /// In memory (lost when the server stops).
    Memory,
}

/// `url` (or a comma-separated list of URLs) with the credentials of each replaced by
/// `<redacted>`: `nats://user:pw@host:4222` → `nats://<redacted>@host:4222`. For config
/// output and error messages.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.find("://") {
                Some(at) => one.split_at(at + 3),
                None => ("", one),
            };
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}<redacted>{}", &rest[at..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn serialize_redacted_url<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

/// A secret string: printed as `<redacted>`, never logged.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// The ingest gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Site allow-list. Empty accepts every site; otherwise other sites get a 400.
    pub sites: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR blocks). The client address is
    /// the right-most address in the header that is not itself a trusted proxy.
    pub trusted_proxies: Vec<IpNet>,
    /// Header holding an ISO 3166-1 alpha-2 country code set by a CDN, e.g. `CF-IPCountry`.
    pub country_header: Option<String>,
    /// Path of a MaxMind-format `.mmdb` country or city database.
    pub geoip_database: Option<PathBuf>,
    /// Origins allowed by CORS. `["*"]` allows any origin (trackers run on many sites).
    pub cors_allowed_origins: Vec<String>,
    /// Longest time a request waits for its events to be handed to the broker (queueing,
    /// retries of publishes the broker refused) before it gets a 503, which then always
    /// means "not stored". On Kafka (at least 2.5 s) a message is handed to librdkafka only
    /// while it settles within 3/4 of this, so the answer is the real outcome.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// NATS: once a message was sent, longest time the request waits for the broker's
    /// acknowledgement. The answer is the real outcome (202 or 503) when one comes in this
    /// time; otherwise 504, "outcome unknown" (a retry with the same event ids is safe).
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// `/ready` turns false while a publish has waited this long for the broker with no
    /// acknowledgement arriving meanwhile (a stalled broker), and for this long after the
    /// broker reported it is out of storage (JetStream 10023) or the stream is full.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// Seconds put in `Retry-After` on a 503.
    pub retry_after_seconds: u32,
    /// Longest time shutdown waits for in-flight requests and publishes.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Number of distinct User-Agent strings whose parse result is cached.
    pub user_agent_cache: usize,
    /// Most bytes the User-Agent cache holds (keys and parse results together).
    pub user_agent_cache_bytes: usize,
    /// Request and field limits.
    pub limits: LimitsConfig,
    /// Connection, timeout and memory bounds of the HTTP server.
    pub server: ServerConfig,
    /// API keys for `POST /v1/events` and `/metrics`.
    pub auth: AuthConfig,
    /// Micro-batching of events into broker messages.
    pub batching: BatchingConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            sites: Vec::new(),
            trusted_proxies: Vec::new(),
            country_header: None,
            geoip_database: None,
            cors_allowed_origins: vec!["*".to_owned()],
            publish_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(30),
            stall_after: Duration::from_secs(2),
            retry_after_seconds: 5,
            shutdown_timeout: Duration::from_secs(30),
            user_agent_cache: 10_000,
            user_agent_cache_bytes: 8 << 20,
            limits: LimitsConfig::default(),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            batching: BatchingConfig::default(),
        }
    }
}

/// The largest `ingest.limits.max_abs_value` may be, and what the processor refuses
/// beyond: sums of values this large cannot overflow to infinity (which ClickHouse returns
/// as `null`).
pub const MAX_ABS_VALUE: f64 = 1e15;

/// Limits on what one request and one event may hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most events in one `/v1/events` request.
    pub max_batch_events: usize,
    /// Longest `site` / `domain`, in bytes.
    pub max_site_bytes: usize,
    /// Longest event `name`, in bytes.
    pub max_name_bytes: usize,
    /// Longest `url`, in bytes.
    pub max_url_bytes: usize,
    /// Longest `referrer`, in bytes.
    pub max_referrer_bytes: usize,
    /// Longest client-supplied event `id`, in bytes.
    pub max_id_bytes: usize,
    /// Most custom properties on one event.
    pub max_props: usize,
    /// Longest property key, in bytes.
    pub max_prop_key_bytes: usize,
    /// Longest property value, in bytes.
    pub max_prop_value_bytes: usize,
    /// Most sites in one Plausible `domain` list.
    pub max_domains: usize,
    /// Longest User-Agent parsed, in bytes; a longer one is parsed as its first this many
    /// bytes (the visitor hash still covers all of it).
    pub max_user_agent_bytes: usize,
    /// Largest magnitude of an event `value`; larger values are refused, so that sums stay
    /// exact enough and can never overflow to infinity.
    pub max_abs_value: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_batch_events: 1000,
            max_site_bytes: 253,
            max_name_bytes: 120,
            max_url_bytes: 2048,
            max_referrer_bytes: 2048,
            max_id_bytes: 128,
            max_props: 30,
            max_prop_key_bytes: 300,
            max_prop_value_bytes: 2000,
            max_domains: 10,
            max_user_agent_bytes: 1024,
            max_abs_value: 1e12,
        }
    }
}

/// Bounds that keep one client, or many, from exhausting the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Most open client connections. Past it a few more are accepted only to be answered
    /// 503 with `Retry-After` (and `/health`, `/ready` as usual) and closed; the rest are
    /// closed at once.
    pub max_connections: usize,
    /// Longest time to receive a request's head (request line and headers), from the
    /// connection's start or the previous response: also how long an idle keep-alive
    /// connection is kept (slowloris, idle floods).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest time to receive a request's body, from the end of its head (slow bodies).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Largest request head in bytes (431 above it).
    pub max_header_bytes: usize,
    /// Most request-body bytes held at once over all requests in flight; past it new
    /// bodies get 503 with `Retry-After`.
    pub max_inflight_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_inflight_bytes: 64 << 20,
        }
    }
}

/// API keys. Keys are configured by their SHA-256 (`sha256:<64 hex digits>`, made by
/// `gallop hash-key`), so the config holds no usable secret; a presented key is hashed
/// and compared with every configured hash in constant time. Clients send
/// `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Hashes of the keys that may `POST /v1/events`; empty leaves it open. (`/api/event`,
    /// called by browsers, cannot hold a secret: `ingest.sites` is its guard.)
    pub event_keys: Vec<String>,
    /// Hashes of the keys that may read `/metrics` of the gateway and the processor; empty
    /// leaves it open.
    pub metrics_keys: Vec<String>,
}

/// How the gateway groups events into broker messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most events in one broker message.
    pub max_events: usize,
    /// Most bytes in one broker message (keep below the server's max payload, 1 MiB by
    /// default on NATS).
    pub max_bytes: usize,
    /// Longest time the first event of a message waits for company.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most broker messages awaiting acknowledgement at once, over all partitions.
    pub max_in_flight: usize,
    /// How messages are encoded: `block` (the default: compact, each distinct string once
    /// per message; read by processors since the compact block came, 2026-11-27) or
    /// `ndjson` (one JSON record per line; read by every version). Upgrading from an older
    /// version, upgrade the processors first, or keep `ndjson` until they run this one: an
    /// older processor skips blocks as unusable records (logged, counted), so their events
    /// would not count.
    pub format: MessageEncoding,
}

/// The encoding of broker messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageEncoding {
    /// A compact block per message (`gallop_event::encode_block`).
    Block,
    /// One JSON record per line.
    Ndjson,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_events: 1000,
            max_bytes: 512 * 1024,
            linger: Duration::from_millis(2),
            max_in_flight: 512,
            // Processors have read blocks for a version now (readers first); blocks cost
            // less end to end (docs/benchmarks.md).
            format: MessageEncoding::Block,
        }
    }
}

/// The processor: rollup definitions and the bounds of its in-memory state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Include the built-in rollups and leaderboards (what a web-analytics dashboard
    /// shows). `rollups` and `leaderboards` below are added to them.
    pub default_rollups: bool,
    /// Extra breakdowns: exact per-value rows of counters, value sums and visitors.
    pub rollups: Vec<RollupConfig>,
    /// Extra leaderboards: top-k sketches for high-cardinality fields.
    pub leaderboards: Vec<LeaderboardConfig>,
    /// Flush the delta at least this often.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Flush as soon as this many keys (rows + leaderboards) are live.
    pub flush_keys: usize,
    /// Hard bound on live keys: above it the processor refuses events (backpressure)
    /// until a flush succeeds.
    pub max_live_keys: usize,
    /// Dimension values longer than this are truncated (at a character boundary).
    pub max_value_bytes: usize,
    /// Most rows one event may touch; further combinations (props explosions) are
    /// skipped and counted.
    pub max_combinations_per_event: usize,
    /// What to do with an empty dimension value (no referrer, unknown country…).
    pub empty_values: EmptyValues,
    /// What to do with an event older than `watermark - time.allowed_lateness`.
    pub late_events: LateEvents,
    /// Keep visits (sessions): visits, bounces, duration, entry and exit pages per
    /// source, country, device, browser and OS, written as `session:*` rows.
    pub sessions: bool,
    /// A visit ends after this long without an event from its visitor (and at the UTC day
    /// boundary, where the daily salt changes the visitor id anyway).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Breakdowns of visits by the visit's first event (`session:<field>` rows with visits,
    /// duration and bounces): any of `source`, `country`, `device`, `browser`, `os`. Each
    /// costs a row update per visit and per extension; entry and exit pages are always kept.
    pub session_breakdowns: Vec<String>,
    /// Most visits held open at once. At the bound the processor first drops visits that
    /// can no longer be extended, then ends those idle longest until an eighth of the bound
    /// is free (their next event starts a new visit), counted in
    /// `gallop_sessions_evicted_total`.
    pub max_open_sessions: usize,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            default_rollups: true,
            rollups: Vec::new(),
            leaderboards: Vec::new(),
            flush_interval: Duration::from_secs(5),
            flush_keys: 200_000,
            max_live_keys: 1_000_000,
            max_value_bytes: 512,
            max_combinations_per_event: 64,
            empty_values: EmptyValues::Keep,
            late_events: LateEvents::Drop,
            sessions: true,
            session_timeout: Duration::from_secs(30 * 60),
            session_breakdowns: vec!["source".to_owned()],
            max_open_sessions: 500_000,
        }
    }
}

/// One breakdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// A field (`path`, `country`, `props.plan`), `props.*` (every property key), a
    /// compound of fields joined by `~` (`name~country`, `name~props.*`), or `total`.
    pub dimension: String,
    /// Keep a HyperLogLog of visitors per value (costs memory and time).
    #[serde(default = "yes")]
    pub visitors: bool,
}

/// One leaderboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardConfig {
    /// A field, `props.*`, or a compound, as for rollups.
    pub dimension: String,
    /// How many top values the sketch answers for (it keeps 3k counters).
    #[serde(default = "default_k")]
    pub k: usize,
}

fn yes() -> bool {
    true
}

fn default_k() -> usize {
    20
}

/// Empty dimension values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyValues {
    /// Count them as the value `""` (so breakdowns add up to the totals).
    Keep,
    /// Leave them out of the breakdown.
    Skip,
}

/// Late events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateEvents {
    /// Count them in `gallop_events_late_total` and drop them.
    Drop,
    /// Count them, then aggregate them into the bucket of their arrival time.
    ArrivalBucket,
}

/// Topic ingestion: applications publish events (docs/topics.md, `docs/event.schema.json`)
/// to an input subject or topic; `gallop ingest` and `gallop run` consume it on the
/// configured broker, run the same validation, enrichment, bot rules and visitor hashing as
/// HTTP, and publish into the partitioned stream. Records that fail go to a dead-letter
/// subject or topic with the reason in headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Consume the input subject / topic. Off by default.
    pub enabled: bool,
    /// NATS: the stream holding the input subjects (work-queue retention: a message is
    /// removed once a gateway acknowledged it).
    pub nats_stream: String,
    /// NATS: subjects applications publish to (wildcards allowed, one per application or
    /// site if you like).
    pub nats_subject: String,
    /// NATS: the stream holding dead letters.
    pub nats_dead_stream: String,
    /// NATS: the subject dead letters are published to.
    pub nats_dead_subject: String,
    /// NATS: durable consumer name shared by every gateway (they split the messages).
    pub nats_consumer: String,
    /// NATS: how long a gateway may hold an input message unacknowledged before JetStream
    /// hands it to another (after a crash). At most half of `nats.duplicate_window`, so the
    /// events of a message processed again are still recognised as copies.
    #[serde(with = "humantime_serde")]
    pub nats_ack_wait: Duration,
    /// Kafka: the topic applications publish to (created when missing, `broker.partitions`
    /// partitions).
    pub kafka_topic: String,
    /// Kafka: the topic dead letters are published to (created when missing).
    pub kafka_dead_topic: String,
    /// Kafka: consumer group every gateway joins (they split the partitions).
    pub kafka_group: String,
    /// How long dead letters are kept (NATS `max_age`, Kafka `retention.ms`).
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
    /// Most input messages being processed at once per gateway (each waits for the broker
    /// acknowledgement of the events it produced before it is acknowledged itself).
    pub max_in_flight: usize,
    /// Most records one input message may hold; a longer message is dead-lettered whole.
    pub max_records_per_message: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            nats_stream: "GALLOP_INPUT".to_owned(),
            nats_subject: "gallop.in.>".to_owned(),
            nats_dead_stream: "GALLOP_DEAD".to_owned(),
            nats_dead_subject: "gallop.dead".to_owned(),
            nats_consumer: "gallop-ingest".to_owned(),
            nats_ack_wait: Duration::from_secs(30),
            kafka_topic: "gallop-input".to_owned(),
            kafka_dead_topic: "gallop-dead".to_owned(),
            kafka_group: "gallop-ingest".to_owned(),
            dead_retention: Duration::from_secs(7 * 86_400),
            max_in_flight: 64,
            max_records_per_message: 10_000,
        }
    }
}

/// How a processor learns which partitions it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assignment {
    /// The processors share the partitions among themselves: NATS through leases in
    /// `nats.lease_bucket`, Kafka through the consumer group `kafka.consumer_group`. A dead
    /// processor's share is taken over, a new one gets a share.
    Auto,
    /// `consumer.partitions`, written by hand; nothing moves when a processor dies.
    Static,
}

/// How a processor instance consumes the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// How this processor learns which partitions it owns: `auto` (the processors share
    /// them among themselves through the broker) or `static` (`partitions`, by hand).
    pub assignment: Assignment,
    /// With `assignment = "static"`: the partitions this instance owns; empty owns all of
    /// `0..broker.partitions`. Two instances must own disjoint sets (on NATS a processor
    /// whose list overlaps a live one's is refused at start). Must be empty with `auto`.
    pub partitions: Vec<u32>,
    /// This processor's name among those sharing the partitions: in the lease bucket, in
    /// the position markers it writes and in logs. Letters, digits, '-' and '_'; must be
    /// unique among live processors. Empty: `<host>-<pid>`.
    pub member: String,
    /// How long a processor's claim on its partitions outlives its last renewal (NATS: the
    /// lease bucket's `max_age`; Kafka: the group's `session.timeout.ms`). A dead
    /// processor's partitions are taken over within about this long; a live one renews four
    /// times per period and writes only while its claim holds for another quarter of it.
    /// Kafka brokers refuse sessions below their `group.min.session.timeout.ms` (6 s by
    /// default).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Durable consumer name prefix: partition `p` is read by `<durable_prefix>-<p>`.
    pub durable_prefix: String,
    /// Most messages asked for in one pull.
    pub fetch_batch: usize,
    /// Most bytes asked for in one pull. Bounds what the broker pushes at a processor that
    /// is applying backpressure: keep `fetch_max_bytes` × owned partitions well below the
    /// NATS server's `max_pending` (64 MiB by default), or the server cuts the connection
    /// as a slow consumer. Must hold the largest message: at least 1 MiB and twice
    /// `ingest.batching.max_bytes`.
    pub fetch_max_bytes: usize,
    /// How long the broker waits for an acknowledgement before redelivering. Redelivered
    /// messages already folded into memory are recognised and skipped.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Most unacknowledged messages per partition: the broker stops delivering above it.
    pub max_ack_pending: i64,
    /// Address of the processor's HTTP endpoint (`/metrics`, `/health`, `/ready`).
    pub listen: SocketAddr,
    /// Longest time shutdown waits for the last flush to reach ClickHouse.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// What to do when a stored position is outside the broker's log: below its first
    /// message (retention or a size limit removed messages before they were processed) or
    /// beyond its end (the stream or topic was deleted and recreated). `false` (default):
    /// refuse to start, naming the partition, the position and the log's range. `true`: go
    /// on from the log's first message; the gap is logged at ERROR and counted in
    /// `gallop_log_gaps_total`, and the events in it are lost.
    pub accept_log_gaps: bool,
    /// Where the broker keeps republished messages (Kafka), the processor drops a message
    /// whose id it saw in the partition shortly before (`kafka.dedup_window`); this bounds
    /// the ids remembered per partition. Past it the oldest are forgotten early, counted in
    /// `gallop_dedup_window_evicted_total`.
    pub dedup_max_ids: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            assignment: Assignment::Auto,
            partitions: Vec::new(),
            member: String::new(),
            lease_ttl: Duration::from_secs(10),
            durable_prefix: "gallop-processor".to_owned(),
            fetch_batch: 512,
            fetch_max_bytes: 4 << 20,
            ack_wait: Duration::from_secs(120),
            max_ack_pending: 20_000,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            shutdown_timeout: Duration::from_secs(60),
            accept_log_gaps: false,
            dedup_max_ids: 200_000,
        }
    }
}

/// The ClickHouse server Gallop writes aggregates to and reads them from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface URL. Credentials in it are shown redacted; prefer `user`/`password`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// Database holding Gallop's tables; `gallop migrate` creates it.
    pub database: String,
    /// User name.
    pub user: String,
    /// Optional password (also `GALLOP_CLICKHOUSE__PASSWORD`).
    pub password: Option<Secret>,
    /// File holding the password (its first line), e.g. a mounted secret; not together with
    /// `password`.
    pub password_file: Option<PathBuf>,
    /// Compress inserts and query results (LZ4).
    pub compression: bool,
    /// Longest time one insert or query may take before it counts as failed and is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First wait before retrying a failed insert; doubles up to `retry_max_backoff`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// Longest wait between retries. Inserts are retried until they succeed.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How long minute rows are kept (servers with TTL only); 0 keeps them forever.
    #[serde(with = "humantime_serde")]
    pub retention_minute: Duration,
    /// How long hour rows are kept (servers with TTL only); 0 keeps them forever.
    #[serde(with = "humantime_serde")]
    pub retention_hour: Duration,
    /// How long day rows are kept (servers with TTL only); 0 keeps them forever.
    #[serde(with = "humantime_serde")]
    pub retention_day: Duration,
    /// Name of a ClickHouse cluster (`remote_servers` in the servers' config) to write to
    /// instead of one server; unset: the server at `url` alone. With a cluster, `gallop
    /// migrate` creates replicated local tables on every server (`ON CLUSTER`) and a
    /// `Distributed` table under each of today's names, so readers run the same SQL.
    pub cluster: Option<String>,
    /// With `cluster`: the HTTP URL of every replica, one list per shard, in the order of the
    /// cluster's shard numbers (each server is checked to be that shard at start). Partition
    /// `p` is written to shard `p % shards.len()`, on the first replica of the list that
    /// answers. `url` stays the address for migrations and readers (any server of the
    /// cluster, or a balancer in front of them).
    pub shards: Vec<Vec<String>>,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_owned(),
            database: "gallop".to_owned(),
            user: "default".to_owned(),
            password: None,
            password_file: None,
            compression: true,
            request_timeout: Duration::from_secs(60),
            retry_initial_backoff: Duration::from_millis(200),
            retry_max_backoff: Duration::from_secs(10),
            retention_minute: Duration::from_secs(30 * 86_400),
            retention_hour: Duration::from_secs(400 * 86_400),
            retention_day: Duration::ZERO,
            cluster: None,
            shards: Vec::new(),
        }
    }
}

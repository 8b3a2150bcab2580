//! [`NatsBroker`]: one stream, one subject per partition, acknowledged deduplicated
//! publishing; [`NatsSaltStore`]: the daily salt in a KV bucket.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::{
    connection::State,
    jetstream::{
        self,
        context::PublishErrorKind,
        kv,
        message::PublishMessage,
        stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    },
    ConnectOptions,
};
use futures::future::{BoxFuture, FutureExt};
use gallop_config::{redact_url, DiscardKind, NatsConfig, StorageKind};
use time::Date;
use tracing::{info, warn};

use gallop_broker::{salt_key, OutboundMessage, Position, PublishError, Publisher, Salt, SaltError, SaltStore};

/// Failure to set up the NATS side at start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No connection to the server.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// Server URL from `nats.url`.
        url: String,
        /// Client error text.
        reason: String,
    },
    /// The stream could not be created or brought up to date.
    #[error("cannot create or update JetStream stream {stream}: {reason}")]
    Stream {
        /// Stream name from `nats.stream`.
        stream: String,
        /// Server error text.
        reason: String,
    },
    /// The salt key-value bucket could not be created or opened.
    #[error("cannot open key-value bucket {bucket}: {reason}")]
    Bucket {
        /// Bucket name from `nats.salt_bucket`.
        bucket: String,
        /// Server error text.
        reason: String,
    },
}

/// A JetStream-backed [`Publisher`]. Partition `p` is subject `<prefix>.events.<p>`.
#[derive(Clone, Debug)]
pub struct NatsBroker {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Vec<String>,
    stream: String,
    max_payload: usize,
    fill: Option<Arc<FillWatch>>,
}

/// Refuse publishes to a stream with `max_bytes` once it is this full (in percent): the
/// server's own check lets a stream overshoot and then drops its oldest messages even
/// with discard-new (seen on NATS 2.9), and those may not be processed yet.
const HIGH_WATER_PERCENT: u64 = 90;
/// What JetStream stores per message beyond its payload (subject, headers, index), roughly.
const MESSAGE_OVERHEAD: u64 = 160;

/// How full a stream with `max_bytes` is: its size as last read from the server plus what
/// was published since, so a burst cannot overshoot between two reads.
#[derive(Debug)]
struct FillWatch {
    limit: u64,
    stored: AtomicU64,
    poller: tokio::task::AbortHandle,
}

impl Drop for FillWatch {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl FillWatch {
    /// Starts reading `stream`'s size every second.
    fn start(jetstream: jetstream::Context, stream: String, limit: u64, stored: u64) -> Arc<Self> {
        Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let weak = weak.clone();
            let poller = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let Some(watch) = weak.upgrade() else { break };
                    // The handle comes with the stream's info: one request a second.
                    if let Ok(handle) = jetstream.get_stream(&stream).await {
                        watch.stored.store(handle.cached_info().state.bytes, Ordering::Relaxed);
                    }
                }
            })
            .abort_handle();
            Self { limit, stored: AtomicU64::new(stored), poller }
        })
    }

    /// Counts `bytes` more, or says why the stream must not take them.
    fn admit(&self, bytes: u64) -> Result<(), String> {
        let high_water = self.limit / 100 * HIGH_WATER_PERCENT;
        let stored = self.stored.load(Ordering::Relaxed);
        if stored + bytes + MESSAGE_OVERHEAD > high_water {
            return Err(format!(
                "the stream holds about {stored} of its {} bytes (nats.max_bytes); new events are refused at \
                 {HIGH_WATER_PERCENT}% so none it holds is dropped",
                self.limit
            ));
        }
        self.stored.fetch_add(bytes + MESSAGE_OVERHEAD, Ordering::Relaxed);
        Ok(())
    }
}

impl NatsBroker {
    /// Connects, then creates the stream or updates it to match `config`.
    ///
    /// After start the client reconnects by itself whenever the server goes away.
    pub async fn connect(config: &NatsConfig, partitions: u32, ack_timeout: Duration) -> Result<Self, NatsError> {
        let client = connect_client(config).await?;
        let jetstream = jetstream::ContextBuilder::new().timeout(ack_timeout).build(client.clone());
        let subjects = subjects(&config.subject_prefix, partitions);
        let stream_config = stream::Config {
            name: config.stream.clone(),
            subjects: subjects.clone(),
            retention: RetentionPolicy::Limits,
            discard: match config.discard {
                DiscardKind::New => DiscardPolicy::New,
                DiscardKind::Old => DiscardPolicy::Old,
            },
            storage: match config.storage {
                StorageKind::File => StorageType::File,
                StorageKind::Memory => StorageType::Memory,
            },
            max_age: config.max_age,
            max_bytes: if config.max_bytes == 0 { -1 } else { i64::try_from(config.max_bytes).unwrap_or(i64::MAX) },
            duplicate_window: config.duplicate_window,
            num_replicas: config.replicas as usize,
            description: Some(format!("Gallop events, {partitions} partitions")),
            ..Default::default()
        };
        let info = jetstream
            .create_or_update_stream(stream_config)
            .await
            .map_err(|e| NatsError::Stream { stream: config.stream.clone(), reason: e.to_string() })?;
        info!(stream = %config.stream, partitions, messages = info.state.messages, "JetStream stream ready");
        if config.max_bytes > 0 && config.discard == DiscardKind::Old {
            warn!(stream = %config.stream, max_bytes = config.max_bytes,
                "nats.discard = \"old\": a full stream drops its oldest messages, processed or not \
                 (the processor then reports a gap)");
        }
        let fill = (config.max_bytes > 0 && config.discard == DiscardKind::New)
            .then(|| FillWatch::start(jetstream.clone(), config.stream.clone(), config.max_bytes, info.state.bytes));
        let max_payload = client.server_info().max_payload;
        Ok(Self { client, jetstream, subjects, stream: config.stream.clone(), max_payload, fill })
    }

    /// The client, for other adapters sharing the connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context, for other adapters sharing the connection.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The subject of `partition`.
    pub fn subject(&self, partition: u32) -> Option<&str> {
        self.subjects.get(partition as usize).map(String::as_str)
    }

    /// Opens (creating if needed) the salt bucket named in `config` on this connection.
    pub async fn salt_store(&self, config: &NatsConfig) -> Result<NatsSaltStore, NatsError> {
        NatsSaltStore::open(&self.jetstream, &config.salt_bucket).await
    }

    /// What the events stream holds now: (bytes, messages).
    pub async fn stored(&self) -> Result<(u64, u64), NatsError> {
        let error = |e: String| NatsError::Stream { stream: self.stream.clone(), reason: e };
        let mut stream = self.jetstream.get_stream(&self.stream).await.map_err(|e| error(e.to_string()))?;
        let info = stream.info().await.map_err(|e| error(e.to_string()))?;
        Ok((info.state.bytes, info.state.messages))
    }

    /// Deletes the stream `name` (a bucket `b` is the stream `KV_b`) with everything it
    /// holds; false when there was none. For benchmarks and tests that clean up after
    /// themselves.
    pub async fn delete_stream(&self, name: &str) -> Result<bool, NatsError> {
        match self.jetstream.delete_stream(name).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                jetstream::context::DeleteStreamErrorKind::JetStream(error)
                    if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(NatsError::Stream { stream: name.to_owned(), reason: e.to_string() }),
            },
        }
    }
}

fn subjects(prefix: &str, partitions: u32) -> Vec<String> {
    (0..partitions).map(|p| format!("{prefix}.events.{p}")).collect()
}

async fn connect_client(config: &NatsConfig) -> Result<async_nats::Client, NatsError> {
    let mut options = ConnectOptions::new()
        .name("gallop")
        .connection_timeout(config.connect_timeout)
        // Reconnect forever, quickly at first: a gateway outlives NATS restarts.
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(2_000)))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => info!("connected to NATS"),
                async_nats::Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
                other => info!(event = %other, "NATS client event"),
            }
        });
    let url = redact_url(&config.url);
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(seed) = &config.nkey {
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|e| NatsError::Connect {
            url: url.clone(),
            reason: format!("nats.credentials_file {}: {e}", path.display()),
        })?;
    }
    if config.tls || config.url.split(',').any(|u| u.trim_start().starts_with("tls://")) {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let connect = options.connect(config.url.as_str());
    match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(client)) => Ok(client),
        // The client's text may quote the URL it was given, credentials included.
        Ok(Err(e)) => Err(NatsError::Connect { url: url.clone(), reason: e.to_string().replace(&config.url, &url) }),
        Err(_) => Err(NatsError::Connect { url, reason: format!("no connection within {:?}", config.connect_timeout) }),
    }
}

impl Publisher for NatsBroker {
    fn partitions(&self) -> u32 {
        // `subjects` has one entry per partition, built from a u32 count.
        self.subjects.len() as u32
    }

    fn is_ready(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn publish(&self, message: OutboundMessage) -> BoxFuture<'static, Result<Position, PublishError>> {
        let subject = self.subjects.get(message.partition as usize).cloned();
        let partitions = self.partitions();
        let connected = self.is_ready();
        let max_payload = self.max_payload;
        let jetstream = self.jetstream.clone();
        let admitted = match &self.fill {
            Some(fill) if connected => fill.admit(message.payload.len() as u64),
            _ => Ok(()),
        };
        async move {
            if let Err(reason) = admitted {
                return Err(PublishError::StorageFull { id: message.id, reason });
            }
            let Some(subject) = subject else {
                return Err(PublishError::NoSuchPartition { partition: message.partition, partitions });
            };
            // Never hand a message to a disconnected client: it would sit in the client's
            // buffer and be sent after reconnecting, long after the caller gave up on it.
            if !connected {
                return Err(PublishError::NotConnected("NATS connection is down".to_owned()));
            }
            if message.payload.len() + 256 > max_payload {
                return Err(PublishError::TooLarge { id: message.id, bytes: message.payload.len() });
            }
            let publish = PublishMessage::build()
                .payload(message.payload)
                .message_id(&message.id)
                .header("Gallop-Events", message.events.to_string().as_str());
            let ack = jetstream
                .send_publish(subject, publish)
                .await
                .map_err(|e| publish_error(&message.id, e.kind(), e.to_string()))?
                .await
                .map_err(|e| publish_error(&message.id, e.kind(), e.to_string()))?;
            Ok(Position { partition: message.partition, offset: ack.sequence, duplicate: ack.duplicate })
        }
        .boxed()
    }
}

pub(crate) fn publish_error(id: &str, kind: PublishErrorKind, text: String) -> PublishError {
    // JetStream 10023 "insufficient resources", 10047/10028 "insufficient storage/memory
    // resources available"; a stream at max_bytes / max_msgs with discard-new answers
    // "maximum bytes/messages exceeded".
    let full = ["10023", "10028", "10047", "resources", "maximum bytes exceeded", "maximum messages exceeded"];
    if full.iter().any(|marker| text.contains(marker)) {
        return PublishError::StorageFull { id: id.to_owned(), reason: text };
    }
    match kind {
        PublishErrorKind::TimedOut => PublishError::Timeout { id: id.to_owned() },
        PublishErrorKind::BrokenPipe => PublishError::NotConnected(text),
        PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge { id: id.to_owned(), bytes: 0 },
        _ => PublishError::Rejected { id: id.to_owned(), reason: text },
    }
}

/// The backing stream of key-value bucket `bucket`, made directly with the key-value
/// conventions (ADR-8: stream `KV_<bucket>`, subjects `$KV.<bucket>.>`, one value per key,
/// rollups allowed, deletes denied, direct get): `create_key_value` first asks for account
/// info, which async-nats cannot parse from NATS 2.9 servers (Debian's). Values expire
/// `max_age` after their last write.
pub(crate) fn kv_bucket_stream(
    bucket: &str,
    description: &str,
    max_age: Duration,
    storage: StorageType,
) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        max_bytes: -1,
        max_message_size: -1,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        num_replicas: 1,
        storage,
        ..Default::default()
    }
}

/// Daily salts in a JetStream key-value bucket shared by every gateway.
///
/// The first gateway to need a day's salt creates it with a create-if-absent write, so
/// racing gateways agree. Entries expire after a day (`max_age`) and are purged
/// explicitly by [`SaltStore::forget_before`] at rotation.
#[derive(Clone)]
pub struct NatsSaltStore {
    store: kv::Store,
    bucket: String,
}

impl std::fmt::Debug for NatsSaltStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSaltStore").field("bucket", &self.bucket).finish()
    }
}

impl NatsSaltStore {
    /// Opens the bucket, creating it when missing ([`kv_bucket_stream`]).
    ///
    /// Salts live in memory storage only, whatever `nats.storage` says: a salt must never
    /// reach a disk where it would outlive its day (purged file-store messages stay
    /// readable in block files until compaction). If every NATS server restarts, the day
    /// gets a fresh salt, so visitors of that day are counted again once. A bucket found
    /// on file storage (made by an older Gallop) is deleted and made again in memory.
    pub async fn open(jetstream: &jetstream::Context, bucket: &str) -> Result<Self, NatsError> {
        let fail = |e: &dyn std::fmt::Display| NatsError::Bucket { bucket: bucket.to_owned(), reason: e.to_string() };
        let config =
            kv_bucket_stream(bucket, "Gallop daily visitor salts", Duration::from_secs(24 * 3600), StorageType::Memory);
        let stream = jetstream.get_or_create_stream(config.clone()).await.map_err(|e| fail(&e))?;
        if stream.cached_info().config.storage != StorageType::Memory {
            warn!(bucket, "salt bucket found on file storage; making it again in memory (today's salt is replaced)");
            jetstream.delete_stream(&config.name).await.map_err(|e| fail(&e))?;
            jetstream.create_stream(config).await.map_err(|e| fail(&e))?;
        }
        let store = jetstream.get_key_value(bucket).await.map_err(|e| fail(&e))?;
        Ok(Self { store, bucket: bucket.to_owned() })
    }

    fn error(&self, reason: impl ToString) -> SaltError {
        SaltError::Store { store: self.bucket.clone(), reason: reason.to_string() }
    }

    async fn read(&self, day: Date, key: &str) -> Result<Option<Salt>, SaltError> {
        let Some(value) = self.store.get(key).await.map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        let bytes: [u8; 16] = value.as_ref().try_into().map_err(|_| SaltError::Corrupt {
            store: self.bucket.clone(),
            day,
            len: value.len(),
        })?;
        Ok(Some(Salt(bytes)))
    }
}

impl SaltStore for NatsSaltStore {
    fn salt_for(&self, day: Date) -> BoxFuture<'_, Result<Salt, SaltError>> {
        async move {
            let key = salt_key(day);
            if let Some(salt) = self.read(day, &key).await? {
                return Ok(salt);
            }
            let fresh = Salt::random();
            match self.store.create(&key, fresh.0.to_vec().into()).await {
                Ok(_) => Ok(fresh),
                // Another gateway won the race: use its salt.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    self.read(day, &key).await?.ok_or_else(|| self.error(format!("{key} vanished after a create race")))
                }
                Err(e) => Err(self.error(e)),
            }
        }
        .boxed()
    }

    fn forget_before(&self, day: Date) -> BoxFuture<'_, Result<(), SaltError>> {
        async move {
            // Salts older than a few days have expired by max_age already.
            for back in 1..=3 {
                let Some(old) = day.checked_sub(time::Duration::days(back)) else {
                    break;
                };
                self.store.purge(salt_key(old)).await.map_err(|e| self.error(e))?;
            }
            Ok(())
        }
        .boxed()
    }
}

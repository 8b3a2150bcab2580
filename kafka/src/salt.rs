//! [`KafkaSaltStore`]: the daily visitor salt in a one-partition topic, for deployments
//! that run Kafka and no NATS.
//!
//! Agreement: a gateway that finds no record for the day proposes one (key `day-…`, value
//! 16 random bytes); the *first* record for the day in the partition wins, and every gateway
//! reads the partition in the same order, so racing gateways end up with the same salt.
//! Destruction: the topic keeps records 24 hours (`retention.ms`, with hourly segments so
//! the broker can drop them on time), and at the day's rotation a gateway deletes every
//! record before the new day's first one (`DeleteRecords`) where the broker supports it.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use gallop_config::KafkaConfig;
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    message::Message,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    Offset, TopicPartitionList,
};
use time::Date;

use gallop_broker::{salt_key, Salt, SaltError, SaltStore};

use crate::client::{blocking, client_config, create, ensure_topic, KafkaSetupError, REQUEST_TIMEOUT};

/// Salts live this long in the topic (then the broker removes them).
const SALT_RETENTION_MS: &str = "86400000";
/// Segments roll hourly, so retention can remove a day-old salt within the hour.
const SALT_SEGMENT_MS: &str = "3600000";

/// Daily salts in a Kafka topic shared by every gateway.
#[derive(Clone)]
pub struct KafkaSaltStore {
    producer: FutureProducer,
    reader: ClientConfig,
    admin: Arc<AdminClient<DefaultClientContext>>,
    topic: String,
}

impl std::fmt::Debug for KafkaSaltStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSaltStore").field("topic", &self.topic).finish()
    }
}

/// One record of the salt topic.
struct SaltRecord {
    offset: i64,
    key: String,
    value: Vec<u8>,
}

impl KafkaSaltStore {
    /// Opens `config.salt_topic` (creating it when missing and allowed), with clients of its
    /// own (proposals are rare; the events producer's failures do not touch them).
    pub async fn open(config: &KafkaConfig) -> Result<Self, KafkaSetupError> {
        ensure_topic(
            config,
            &config.salt_topic,
            1,
            &[
                ("cleanup.policy", "delete".to_owned()),
                ("retention.ms", SALT_RETENTION_MS.to_owned()),
                ("segment.ms", SALT_SEGMENT_MS.to_owned()),
            ],
        )
        .await?;
        let mut settings = client_config(config, &[]);
        settings.set("acks", "all");
        let producer: FutureProducer = create(&settings, "producer", config)?;
        let admin = create(&client_config(config, &[]), "admin client", config)?;
        let mut reader = client_config(config, &[]);
        // Assigning needs a group id; nothing is committed to it.
        reader
            .set("group.id", format!("{}-reader", config.salt_topic))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("allow.auto.create.topics", "false");
        Ok(Self { producer, reader, admin: Arc::new(admin), topic: config.salt_topic.clone() })
    }

    fn error(&self, reason: impl ToString) -> SaltError {
        SaltError::Store { store: format!("Kafka topic {}", self.topic), reason: reason.to_string() }
    }

    /// Every record the topic holds, oldest first.
    async fn records(&self) -> Result<Vec<SaltRecord>, SaltError> {
        let reader = self.reader.clone();
        let topic = self.topic.clone();
        blocking(move || read_all(&reader, &topic)).await.map_err(|e| self.error(e))?.map_err(|e| self.error(e))
    }

    /// The salt of `key` in `records`: the first well-formed record for it.
    fn first(&self, records: &[SaltRecord], day: Date, key: &str) -> Result<Option<Salt>, SaltError> {
        let Some(record) = records.iter().find(|r| r.key == key) else { return Ok(None) };
        let bytes: [u8; 16] = record.value.as_slice().try_into().map_err(|_| SaltError::Corrupt {
            store: format!("Kafka topic {}", self.topic),
            day,
            len: record.value.len(),
        })?;
        Ok(Some(Salt(bytes)))
    }
}

/// Reads partition 0 of `topic` from its start to its end.
fn read_all(config: &ClientConfig, topic: &str) -> Result<Vec<SaltRecord>, String> {
    let consumer: BaseConsumer = config.create().map_err(|e| format!("cannot create a reader: {e}"))?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, REQUEST_TIMEOUT).map_err(|e| format!("watermarks: {e}"))?;
    let mut records = Vec::new();
    if high <= low {
        return Ok(records);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(low)).map_err(|e| e.to_string())?;
    consumer.assign(&list).map_err(|e| format!("assign: {e}"))?;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    while records.last().is_none_or(|r: &SaltRecord| r.offset < high - 1) {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "read only up to offset {:?} of {high} within {REQUEST_TIMEOUT:?}",
                records.last().map(|r| r.offset)
            ));
        }
        match consumer.poll(Timeout::After(std::time::Duration::from_millis(200))) {
            Some(Ok(message)) => records.push(SaltRecord {
                offset: message.offset(),
                key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                value: message.payload().unwrap_or_default().to_vec(),
            }),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(format!("reading: {e}")),
        }
    }
    Ok(records)
}

impl SaltStore for KafkaSaltStore {
    fn salt_for(&self, day: Date) -> BoxFuture<'_, Result<Salt, SaltError>> {
        async move {
            let key = salt_key(day);
            if let Some(salt) = self.first(&self.records().await?, day, &key)? {
                return Ok(salt);
            }
            let proposal = Salt::random();
            let record = FutureRecord::to(&self.topic).partition(0).key(key.as_str()).payload(&proposal.0[..]);
            let delivered = self
                .producer
                .send(record, Timeout::After(REQUEST_TIMEOUT))
                .await
                .map_err(|(e, _)| self.error(format!("proposing the salt of {key}: {e}")))?;
            // Whoever's proposal came first is the day's salt: read up to ours at least.
            let records = self.records().await?;
            if records.last().is_none_or(|r| r.offset < delivered.offset) {
                return Err(self.error(format!("the proposal at offset {} is not readable", delivered.offset)));
            }
            self.first(&records, day, &key)?.ok_or_else(|| self.error(format!("{key} vanished after it was proposed")))
        }
        .boxed()
    }

    fn forget_before(&self, day: Date) -> BoxFuture<'_, Result<(), SaltError>> {
        async move {
            let key = salt_key(day);
            let records = self.records().await?;
            // Keys sort by date; everything before the first record of `day` or later goes.
            let Some(keep) = records.iter().find(|r| r.key >= key) else { return Ok(()) };
            if keep.offset == records[0].offset {
                return Ok(());
            }
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&self.topic, 0, Offset::Offset(keep.offset)).map_err(|e| self.error(e))?;
            let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
            let result = self.admin.delete_records(&list, &options).await.map_err(|e| {
                self.error(format!(
                    "DeleteRecords up to offset {}: {e}; old salts go with retention.ms (24 h)",
                    keep.offset
                ))
            })?;
            match result.elements().first().map(|e| e.error()) {
                Some(Err(e)) => Err(self.error(format!(
                    "DeleteRecords up to offset {}: {e}; old salts go with retention.ms (24 h)",
                    keep.offset
                ))),
                _ => Ok(()),
            }
        }
        .boxed()
    }
}

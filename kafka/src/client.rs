//! What every Kafka client of Gallop's is made with: settings from `[kafka]`, creation with
//! errors naming the client and the servers, blocking librdkafka calls off the async
//! threads, and topics made to exist with enough partitions.

use std::{sync::Arc, time::Duration};

use gallop_config::KafkaConfig;
use gallop_support::Backoff;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication, TopicResult},
    client::DefaultClientContext,
    config::{ClientConfig, FromClientConfig},
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
    util::Timeout,
};
use tracing::info;

/// How long one admin or metadata request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a created (or grown) topic may take to show in the metadata.
const TOPIC_VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// Failure to set up the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A client could not be made (bad properties).
    #[error("cannot create a Kafka {client} for {servers}: {reason}")]
    Client {
        /// `producer`, `consumer` or `admin client`.
        client: &'static str,
        /// `kafka.bootstrap_servers`.
        servers: String,
        /// librdkafka's complaint.
        reason: String,
    },
    /// A topic is missing, too small, or could not be made or read.
    #[error("Kafka topic {topic} at {servers}: {reason}")]
    Topic {
        /// Topic name.
        topic: String,
        /// `kafka.bootstrap_servers`.
        servers: String,
        /// What is wrong.
        reason: String,
    },
}

/// A client config with `kafka.bootstrap_servers`, Gallop's `defaults` and then the
/// operator's `kafka.properties` (which win).
pub(crate) fn client_config(config: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in defaults {
        client.set(*key, *value);
    }
    for (key, value) in &config.properties.0 {
        client.set(key, value);
    }
    client
}

/// A librdkafka client (`what`: `producer`, `consumer`, `admin client`) from `settings`,
/// its failure naming the client and the servers.
pub(crate) fn create<T: FromClientConfig>(
    settings: &ClientConfig,
    what: &'static str,
    config: &KafkaConfig,
) -> Result<T, KafkaSetupError> {
    settings.create().map_err(|e| KafkaSetupError::Client {
        client: what,
        servers: config.bootstrap_servers.clone(),
        reason: e.to_string(),
    })
}

/// A consumer-type client for metadata lookups: a producer-type one (an admin client
/// included) asks the broker to auto-create the topics it looks up, with the broker's
/// defaults (Tansu does).
pub(crate) fn lookup_client(config: &KafkaConfig) -> Result<BaseConsumer, KafkaSetupError> {
    create(&client_config(config, &[("allow.auto.create.topics", "false")]), "consumer", config)
}

/// Runs a blocking librdkafka call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(call).await.map_err(|e| format!("librdkafka call panicked: {e}"))
}

/// Makes the events topic (`config.topic`) exist with at least `partitions` partitions (more
/// when `kafka.partitions` says so), with `kafka.retention` when created.
pub(crate) async fn ensure_events_topic(config: &KafkaConfig, partitions: u32) -> Result<(), KafkaSetupError> {
    ensure_topic(
        config,
        &config.topic,
        config.partitions.unwrap_or(partitions).max(partitions),
        &[("retention.ms", config.retention.as_millis().to_string())],
    )
    .await
}

/// Makes `topic` exist with at least `partitions` partitions (creating or growing it when
/// `config.create_topics`), with the topic settings `settings` when created.
pub(crate) async fn ensure_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: u32,
    settings: &[(&str, String)],
) -> Result<(), KafkaSetupError> {
    let fail = |reason: String| KafkaSetupError::Topic {
        topic: topic.to_owned(),
        servers: config.bootstrap_servers.clone(),
        reason,
    };
    let admin: AdminClient<DefaultClientContext> = create(&client_config(config, &[]), "admin client", config)?;
    let lookup = Arc::new(lookup_client(config)?);
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)).request_timeout(Some(REQUEST_TIMEOUT));
    let found = partition_count(&lookup, topic).await.map_err(fail)?;
    match found {
        Some(n) if n >= partitions => return Ok(()),
        _ if !config.create_topics => {
            let what = match found {
                Some(n) => format!("has {n} partitions, {partitions} are needed"),
                None => "does not exist".to_owned(),
            };
            return Err(fail(format!("{what}, and kafka.create_topics = false")));
        }
        Some(n) => {
            info!(topic, from = n, to = partitions, "growing the topic");
            let result = admin.create_partitions(&[NewPartitions::new(topic, partitions as usize)], &options).await;
            check_admin(result)
                .map_err(|e| fail(format!("cannot grow it from {n} to {partitions} partitions: {e}")))?;
        }
        None => {
            info!(topic, partitions, "creating the topic");
            let mut new = NewTopic::new(
                topic,
                i32::try_from(partitions).unwrap_or(i32::MAX),
                TopicReplication::Fixed(i32::from(config.replication_factor)),
            );
            for (key, value) in settings {
                new = new.set(key, value);
            }
            match check_admin(admin.create_topics(&[new], &options).await) {
                Ok(()) => {}
                // Another gateway or processor made it first.
                Err(e) if e.contains("TopicAlreadyExists") || e.contains("already exists") => {}
                Err(e) => return Err(fail(format!("cannot create it: {e}"))),
            }
        }
    }
    // Creation is asynchronous on the broker side: wait until metadata shows it.
    let deadline = tokio::time::Instant::now() + TOPIC_VISIBLE_WITHIN;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        if partition_count(&lookup, topic).await.map_err(fail)?.is_some_and(|n| n >= partitions) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(format!(
                "does not show {partitions} partitions {} s after it was created",
                TOPIC_VISIBLE_WITHIN.as_secs()
            )));
        }
        backoff.wait().await;
    }
}

/// The partition count of `topic`, `None` when it does not exist.
async fn partition_count(lookup: &Arc<BaseConsumer>, topic: &str) -> Result<Option<u32>, String> {
    let lookup = Arc::clone(lookup);
    let name = topic.to_owned();
    let metadata = blocking(move || lookup.fetch_metadata(Some(&name), REQUEST_TIMEOUT))
        .await?
        .map_err(|e| format!("cannot read metadata: {e}"))?;
    let topic = metadata.topics().iter().find(|t| t.name() == topic);
    Ok(match topic {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Some(t.partitions().len() as u32),
        _ => None,
    })
}

/// The first error of an admin operation's per-item results.
fn check_admin(result: Result<Vec<TopicResult>, KafkaError>) -> Result<(), String> {
    match result {
        Ok(items) => {
            items.into_iter().try_for_each(|item| item.map(|_| ()).map_err(|(_, code)| format!("{code:?}: {code}")))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Deletes `topics` with everything they hold (those that do not exist are skipped). For
/// benchmarks and tests that clean up after themselves.
pub async fn delete_topics(config: &KafkaConfig, topics: &[&str]) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = create(&client_config(config, &[]), "admin client", config)?;
    let options = AdminOptions::new().operation_timeout(Some(Timeout::After(REQUEST_TIMEOUT)));
    let results = admin.delete_topics(topics, &options).await.map_err(|e| KafkaSetupError::Topic {
        topic: topics.join(", "),
        servers: config.bootstrap_servers.clone(),
        reason: e.to_string(),
    })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::Topic {
                    topic,
                    servers: config.bootstrap_servers.clone(),
                    reason: format!("delete: {code}"),
                })
            }
        }
    }
    Ok(())
}

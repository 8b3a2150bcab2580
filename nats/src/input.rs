//! The public input on NATS JetStream: a work-queue stream over the input subjects, read by
//! one durable pull consumer that every gateway shares (so they split the messages), and a
//! stream of dead letters.

use std::time::Duration;

use async_nats::{
    jetstream::{
        self,
        consumer::{pull, AckPolicy, DeliverPolicy},
        message::PublishMessage,
        stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    },
    HeaderMap,
};
use futures::{
    future::{BoxFuture, FutureExt},
    StreamExt,
};
use gallop_config::{InputConfig, NatsConfig, StorageKind};
use tracing::info;

use gallop_broker::{
    Ack, AckError, Acknowledge, DeadLetter, DeadLetters, InputError, InputMessage, InputPublisher, InputSource,
    PublishError,
};

use crate::broker::{publish_error, NatsBroker, NatsError};

/// Reads the input subjects through the shared durable consumer.
pub struct NatsInput {
    messages: pull::Stream,
    stream: String,
}

impl NatsInput {
    /// Creates (or updates) the input and dead-letter streams and the shared consumer, and
    /// starts pulling. At most `input.max_in_flight` messages are unacknowledged at once.
    pub async fn open(
        broker: &NatsBroker,
        nats: &NatsConfig,
        input: &InputConfig,
    ) -> Result<(Self, NatsDeadLetters), NatsError> {
        let input_stream = Self::create_streams(broker, nats, input).await?;
        let consumer_error =
            |e: String| NatsError::Stream { stream: input.nats_stream.clone(), reason: format!("consumer: {e}") };
        let consumer: jetstream::consumer::Consumer<pull::Config> = input_stream
            .get_or_create_consumer(
                &input.nats_consumer,
                pull::Config {
                    durable_name: Some(input.nats_consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    // Well below nats.duplicate_window (validated): a message redelivered after a gateway
                    // died is republished while the events stream still drops the copies.
                    ack_wait: input.nats_ack_wait,
                    deliver_policy: DeliverPolicy::All,
                    max_ack_pending: i64::try_from(input.max_in_flight).unwrap_or(i64::MAX),
                    description: Some("Gallop gateways".to_owned()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| consumer_error(e.to_string()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(input.max_in_flight)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| consumer_error(e.to_string()))?;
        info!(stream = %input.nats_stream, subject = %input.nats_subject, consumer = %input.nats_consumer,
            dead = %input.nats_dead_subject, "reading the NATS input subjects");
        let dead = NatsDeadLetters {
            jetstream: broker.jetstream().clone(),
            subject: input.nats_dead_subject.clone(),
            connected: broker.client().clone(),
        };
        Ok((Self { messages, stream: input.nats_stream.clone() }, dead))
    }

    /// Creates (or updates) the input stream (work-queue retention: a message is removed
    /// once acknowledged) and the dead-letter stream; returns the input stream. Publishers
    /// (`gallop publish`) call this alone, without consuming.
    pub async fn create_streams(
        broker: &NatsBroker,
        nats: &NatsConfig,
        input: &InputConfig,
    ) -> Result<stream::Stream, NatsError> {
        let jetstream = broker.jetstream();
        let storage = match nats.storage {
            StorageKind::File => StorageType::File,
            StorageKind::Memory => StorageType::Memory,
        };
        let stream_error = |name: &str| {
            let name = name.to_owned();
            move |e: jetstream::context::CreateStreamError| NatsError::Stream { stream: name, reason: e.to_string() }
        };
        jetstream
            .create_or_update_stream(stream::Config {
                name: input.nats_stream.clone(),
                subjects: vec![input.nats_subject.clone()],
                retention: RetentionPolicy::WorkQueue,
                discard: DiscardPolicy::New,
                storage,
                num_replicas: nats.replicas as usize,
                duplicate_window: nats.duplicate_window,
                description: Some("Gallop input: events published by applications (docs/topics.md)".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(stream_error(&input.nats_stream))?;
        jetstream
            .create_or_update_stream(stream::Config {
                name: input.nats_dead_stream.clone(),
                subjects: vec![input.nats_dead_subject.clone()],
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::Old,
                storage,
                max_age: input.dead_retention,
                num_replicas: nats.replicas as usize,
                description: Some("Gallop dead letters: input records that could not be used".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(stream_error(&input.nats_dead_stream))?;
        jetstream
            .get_stream(&input.nats_stream)
            .await
            .map_err(|e| NatsError::Stream { stream: input.nats_stream.clone(), reason: e.to_string() })
    }
}

impl InputSource for NatsInput {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<InputMessage, InputError>>> {
        async move {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(e) => return Some(Err(InputError { input: self.describe(), reason: e.to_string() })),
            };
            let (origin, delivered) = match message.info() {
                Ok(info) => (format!("{}:{}", self.stream, info.stream_sequence), info.delivered),
                Err(e) => {
                    return Some(Err(InputError { input: self.describe(), reason: format!("message info: {e}") }))
                }
            };
            Some(Ok(InputMessage {
                payload: message.payload.clone(),
                origin,
                source: message.subject.to_string(),
                delivered: u32::try_from(delivered).unwrap_or(u32::MAX),
                ack: Ack::new(InputAck(message)),
            }))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("NATS stream {}", self.stream)
    }
}

/// Acknowledges one input message and waits for the server's confirmation.
struct InputAck(jetstream::Message);

impl Acknowledge for InputAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), AckError>> {
        async move {
            self.0.double_ack().await.map_err(|e| AckError {
                partition: 0,
                position: self.0.info().map_or(0, |i| i.stream_sequence),
                reason: e.to_string(),
            })
        }
        .boxed()
    }
}

/// Publishes dead letters to the dead-letter subject, stored by its stream.
#[derive(Clone)]
pub struct NatsDeadLetters {
    jetstream: jetstream::Context,
    subject: String,
    connected: async_nats::Client,
}

impl DeadLetters for NatsDeadLetters {
    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), PublishError>> {
        async move {
            let id = format!("dead-{}-{}", letter.origin, letter.record.map_or("all".to_owned(), |r| r.to_string()));
            if self.connected.connection_state() != async_nats::connection::State::Connected {
                return Err(PublishError::NotConnected("NATS connection is down".to_owned()));
            }
            let mut headers = HeaderMap::new();
            for (name, value) in letter.headers() {
                headers.insert(name, value.as_str());
            }
            let publish = PublishMessage::build()
                .payload(bytes::Bytes::copy_from_slice(letter.payload))
                .headers(headers)
                .message_id(&id);
            let rejected = |e: String| PublishError::Rejected { id: id.clone(), reason: e };
            self.jetstream
                .send_publish(self.subject.clone(), publish)
                .await
                .map_err(|e| rejected(e.to_string()))?
                .await
                .map_err(|e| rejected(e.to_string()))?;
            Ok(())
        }
        .boxed()
    }
}

/// Publishes messages to an input subject, as an application would (`gallop publish`).
#[derive(Clone)]
pub struct NatsInputPublisher {
    jetstream: jetstream::Context,
    subject: String,
}

impl NatsInputPublisher {
    /// Makes the input and dead-letter streams exist (see [`NatsInput::create_streams`]) and
    /// publishes to `subject`, which must be one of `input.nats_subject`'s subjects.
    pub async fn open(
        broker: &NatsBroker,
        nats: &NatsConfig,
        input: &InputConfig,
        subject: String,
    ) -> Result<Self, NatsError> {
        NatsInput::create_streams(broker, nats, input).await?;
        Ok(Self { jetstream: broker.jetstream().clone(), subject })
    }
}

impl InputPublisher for NatsInputPublisher {
    fn send(&self, payload: bytes::Bytes) -> BoxFuture<'static, Result<(), PublishError>> {
        let (jetstream, subject) = (self.jetstream.clone(), self.subject.clone());
        async move {
            // The broker's error named by the subject (the message has no id of its own).
            let failed = |e: jetstream::context::PublishError| {
                let text = e.to_string();
                publish_error(&format!("to {subject}"), e.kind(), text)
            };
            let ack = jetstream.publish(subject.clone(), payload).await.map_err(failed)?;
            ack.await.map(|_| ()).map_err(failed)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("NATS subject {}", self.subject)
    }
}

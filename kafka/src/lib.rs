//! The Kafka adapter (librdkafka through `rdkafka`): [`KafkaBroker`] publishes, a
//! [`KafkaSource`] reads owned partitions for the processor, [`KafkaGroup`] shares them among
//! processors through the broker's consumer group, [`KafkaSaltStore`] keeps the daily
//! visitor salt in a topic.
//!
//! Partition `p` of Gallop is partition `p` of the events topic; a message's position is its
//! offset + 1, so that 0 means "nothing processed" on every broker. Messages carry their id
//! in the `Gallop-Msg-Id` header. Kafka keeps a republished message (there is no window like
//! JetStream's `Nats-Msg-Id`): the idempotent producer removes librdkafka's own retries, and
//! the processor drops copies that a gateway or a client republished by their ids
//! (`kafka.dedup_window`).
#![warn(missing_docs)]

mod broker;
mod client;
mod group;
mod input;
mod salt;
mod source;

pub use broker::{KafkaBroker, MESSAGE_ID_HEADER};
pub use client::{delete_topics, KafkaSetupError};
pub use group::KafkaGroup;
pub use input::{KafkaDeadLetters, KafkaInput, KafkaInputPublisher};
pub use salt::KafkaSaltStore;
pub use source::KafkaSource;

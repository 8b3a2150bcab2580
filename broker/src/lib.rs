//! Gallop's broker adapters.
//!
//! The gateway talks to a broker only through [`Publisher`]: messages go to a numbered
//! partition and come back acknowledged with a per-partition [`Position`]. The same shape
//! fits NATS JetStream (one subject per partition, stream sequence as position,
//! [`NatsBroker`]) and Kafka (topic partitions, offset + 1 as position, [`KafkaBroker`]). [`partition_for`] keeps a visitor on one partition.
//! [`Source`] is the consuming side the processor's runtime reads: owned partitions as
//! in-order [`Delivery`]s with positions, acknowledged once stored ([`NatsSource`],
//! [`KafkaSource`], [`MemorySource`]).
//! [`SaltStore`] holds the daily visitor salt every gateway of a deployment shares.
//! [`InputSource`] and [`DeadLetters`] are the public input applications publish to
//! ([`NatsInput`], [`KafkaInput`]) and where its unusable records go.
#![warn(missing_docs)]

mod input;
mod kafka;
mod memory;
mod nats;
mod nats_input;
mod nats_source;
mod partition;
mod publisher;
mod salt;
mod source;

pub use input::{dead_letter_headers, DeadLetter, DeadLetters, InputError, InputMessage, InputSource};
pub use kafka::{
    KafkaBroker, KafkaDeadLetters, KafkaInput, KafkaInputPublisher, KafkaSaltStore, KafkaSetupError, KafkaSource,
    MESSAGE_ID_HEADER,
};
pub use memory::{MemoryBroker, MemoryFaults, MemorySource, StoredMessage};
pub use nats::{NatsBroker, NatsError, NatsSaltStore};
pub use nats_input::{NatsDeadLetters, NatsInput};
pub use nats_source::NatsSource;
pub use partition::partition_for;
pub use publisher::{OutboundMessage, Position, PublishError, Publisher};
pub use salt::{LocalSaltStore, Salt, SaltError, SaltStore};
pub use source::{Ack, AckError, Acknowledge, Delivery, LogRange, Source, SourceError, SourceEvent};

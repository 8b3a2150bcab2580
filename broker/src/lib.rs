//! Gallop's broker adapters.
//!
//! The gateway talks to a broker only through [`Publisher`]: messages go to a numbered
//! partition and come back acknowledged with a per-partition [`Position`]. The same shape
//! fits NATS JetStream (one subject per partition, stream sequence as position) and Kafka
//! (topic partitions, offsets). [`partition_for`] keeps a visitor on one partition.
//! [`NatsConsumer`] reads owned partitions back as [`Delivery`]s for the processor.
//! [`SaltStore`] holds the daily visitor salt every gateway of a deployment shares.
#![warn(missing_docs)]

mod consumer;
mod memory;
mod nats;
mod partition;
mod publisher;
mod salt;

pub use consumer::{AckError, Acker, Delivery, NatsConsumer};
pub use memory::{MemoryBroker, StoredMessage};
pub use nats::{NatsBroker, NatsError, NatsSaltStore};
pub use partition::partition_for;
pub use publisher::{OutboundMessage, Position, PublishError, Publisher};
pub use salt::{LocalSaltStore, Salt, SaltError, SaltStore};

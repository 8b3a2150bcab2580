//! The NATS JetStream adapter (`async-nats`) of Gallop's broker contract.
//!
//! [`NatsBroker`] publishes (one stream, a subject per partition, `Nats-Msg-Id` dedup);
//! [`NatsSource`] reads a processor's partitions, one durable pull consumer each;
//! [`NatsLeases`] shares the partitions among processors through leases in a KV bucket;
//! [`NatsSaltStore`] keeps the daily visitor salt in a KV bucket; [`NatsInput`],
//! [`NatsDeadLetters`] and [`NatsInputPublisher`] are the public input subjects.
#![warn(missing_docs)]

mod broker;
mod input;
mod lease;
mod source;

pub use broker::{NatsBroker, NatsError, NatsSaltStore};
pub use input::{NatsDeadLetters, NatsInput, NatsInputPublisher};
pub use lease::NatsLeases;
pub use source::NatsSource;

//! Gallop's broker contract: what the gateway and the processor's runtime need of a broker,
//! apart from any broker's client library.
//!
//! The gateway talks to a broker only through [`Publisher`]: messages go to a numbered
//! partition and come back acknowledged with a per-partition [`Position`]; [`partition_for`]
//! keeps a visitor on one partition. [`Source`] is the consuming side the processor's
//! runtime reads: owned partitions as in-order [`Delivery`]s with positions, acknowledged
//! once stored. [`SaltStore`] holds the daily visitor salt every gateway of a deployment
//! shares. [`InputSource`], [`InputPublisher`] and [`DeadLetters`] are the public input
//! applications publish to and where its unusable records go.
//!
//! [`Membership`] and [`Fence`] say which partitions a processor runs when several share
//! them, and whether it may still write them.
//!
//! The adapters live in crates of their own (`gallop-nats`: JetStream, `gallop-kafka`:
//! librdkafka), so what only needs the contract compiles neither client. [`MemoryBroker`]
//! is an in-process log with fault switches, for the runtime's tests.
#![warn(missing_docs)]

mod input;
mod memory;
mod ownership;
mod partition;
mod publisher;
mod salt;
mod source;

pub use input::{dead_letter_headers, DeadLetter, DeadLetters, InputError, InputMessage, InputPublisher, InputSource};
pub use memory::{MemoryBroker, MemoryFaults, MemorySource, StoredMessage};
pub use ownership::{
    default_member_name, fair_share, wall_ms, Assignment, Fence, Fenced, Membership, StaticMembership,
};
pub use partition::partition_for;
pub use publisher::{OutboundMessage, Position, PublishError, Publisher};
pub use salt::{salt_key, LocalSaltStore, Salt, SaltError, SaltStore};
pub use source::{Ack, AckError, Acknowledge, Delivery, LogRange, Source, SourceError, SourceEvent};

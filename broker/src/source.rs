//! The consuming side of a broker, as the processor's runtime sees it: owned partitions
//! delivered in order, each message with its position, acknowledged up to a position once
//! what it carried is stored.
//!
//! Positions start at 1 and grow along a partition (JetStream: the stream sequence; Kafka:
//! the offset + 1), so 0 means "nothing processed yet" on every broker.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

/// One message read from a partition.
pub struct Delivery {
    /// Partition the message was published to.
    pub partition: u32,
    /// Its position in the partition (from 1).
    pub position: u64,
    /// The message body (encoded event records).
    pub payload: Bytes,
    /// The publisher's message id, where the broker carries one (the dedup header).
    pub id: Option<String>,
    /// When the broker (or producer) stamped the message, ms since the Unix epoch; 0 when
    /// unknown.
    pub timestamp_ms: i64,
    /// How many times the broker has delivered it (1 the first time, where it knows).
    pub delivered: u32,
    /// Acknowledges this message and every earlier one of its partition.
    pub ack: Ack,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("partition", &self.partition)
            .field("position", &self.position)
            .field("bytes", &self.payload.len())
            .field("id", &self.id)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

/// What a [`Source`] hands the runtime next.
#[derive(Debug)]
pub enum SourceEvent {
    /// A message, in order within its partition.
    Message(Delivery),
    /// Deliveries of `partition` can no longer be trusted to follow on (some went missing
    /// on the way, or the broker refused to go on from where it was): the partition is
    /// stopped until the runtime resumes it.
    Gap {
        /// The partition.
        partition: u32,
        /// What happened, for the log.
        reason: String,
    },
    /// Every message of `partition` up to `position` was delivered before this event (there
    /// may be none): the partition's stored position may advance to it, so that retention
    /// removing old messages of other partitions is not mistaken for a loss.
    CaughtUp {
        /// The partition.
        partition: u32,
        /// Position up to which nothing is left to deliver.
        position: u64,
    },
}

/// The positions a partition's log holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRange {
    /// The lowest position still held; everything below was removed (retention, size
    /// limits). Equal to `next` when the log holds nothing.
    pub first: u64,
    /// The position the next message will get (one past the last one held).
    pub next: u64,
}

/// Why a source could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The partition is not one this source reads.
    #[error("partition {partition} is not one of this source's partitions {owned:?}")]
    NotOwned {
        /// Partition asked for.
        partition: u32,
        /// Partitions the source reads.
        owned: Vec<u32>,
    },
    /// The broker failed or could not be reached.
    #[error("{broker} {operation} for partition {partition}: {reason}")]
    Broker {
        /// `NATS stream GALLOP_EVENTS`, `Kafka topic gallop-events`, …
        broker: String,
        /// What was being done.
        operation: &'static str,
        /// Partition.
        partition: u32,
        /// The client's or server's complaint.
        reason: String,
    },
}

/// An acknowledgement the broker did not confirm.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot acknowledge position {position} of partition {partition}: {reason}")]
pub struct AckError {
    /// Partition.
    pub partition: u32,
    /// Position.
    pub position: u64,
    /// Client error text.
    pub reason: String,
}

/// How one broker acknowledges one message (and, cumulatively, those before it).
pub trait Acknowledge: Send + Sync + 'static {
    /// Acknowledges and waits for the broker's confirmation where it gives one.
    fn ack(&self) -> BoxFuture<'_, Result<(), AckError>>;
}

/// A message's acknowledgement, kept by the runtime until what it carried is stored.
pub struct Ack(Box<dyn Acknowledge>);

impl Ack {
    /// Wraps a broker's acknowledgement.
    pub fn new(ack: impl Acknowledge) -> Self {
        Self(Box::new(ack))
    }

    /// Acknowledges the message and every earlier one of its partition.
    pub async fn ack(&self) -> Result<(), AckError> {
        self.0.ack().await
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// Reads a processor's owned partitions of the events log.
///
/// Nothing is delivered for a partition until [`resume`](Self::resume) names where to
/// start; the runtime decides that from the positions it stored, and checks them against
/// [`log_range`](Self::log_range) first. [`next`](Self::next) must be cancel-safe: the
/// runtime polls it in a `select!` and may drop it unfinished.
pub trait Source: Send + 'static {
    /// The partitions this source reads.
    fn partitions(&self) -> &[u32];

    /// What the log holds of `partition` right now.
    fn log_range(&self, partition: u32) -> BoxFuture<'_, Result<LogRange, SourceError>>;

    /// Whether the log still holds the message at `position` of `partition`. The runtime
    /// asks before it calls a stored position beyond the log's end a recreated log: some
    /// brokers report an end one short (Tansu 0.6).
    fn holds(&self, partition: u32, position: u64) -> BoxFuture<'_, Result<bool, SourceError>>;

    /// The first position of `partition` whose message was stamped at or after
    /// `timestamp_ms`, or `None` when every message is older; for rebuilding a dedup window
    /// after a restart.
    fn position_at(&self, partition: u32, timestamp_ms: i64) -> BoxFuture<'_, Result<Option<u64>, SourceError>>;

    /// (Re)starts in-order delivery of `partition` from position `from` (0 or 1: from the
    /// start of the log). Deliveries of the partition from before the call are not handed
    /// out afterwards.
    fn resume(&mut self, partition: u32, from: u64) -> BoxFuture<'_, Result<(), SourceError>>;

    /// Reads `partition` too, from now on (the processor's assignment grew); nothing of it
    /// is delivered until it is [resumed](Self::resume).
    fn add(&mut self, partition: u32) -> Result<(), SourceError>;

    /// Stops reading `partition` (handed over to another processor): nothing of it is
    /// delivered afterwards.
    fn remove(&mut self, partition: u32);

    /// The next event of any resumed partition; `None` once the source cannot go on.
    fn next(&mut self) -> BoxFuture<'_, Option<SourceEvent>>;

    /// Messages not yet delivered, per partition, as last seen.
    fn lag(&self) -> Vec<(u32, u64)>;

    /// Whether the broker is reachable right now (drives `/ready`).
    fn is_ready(&self) -> bool;

    /// How long after a message a republished copy with the same id may arrive, where the
    /// broker itself does not drop such copies (Kafka): the runtime then keeps a window of
    /// message ids per partition. `None` where the broker deduplicates (JetStream).
    fn dedup_window(&self) -> Option<Duration>;

    /// `NATS stream GALLOP_EVENTS`, `Kafka topic gallop-events`: for errors and logs.
    fn describe(&self) -> String;
}

//! The [`Publisher`] trait: partitioned, acknowledged, deduplicated publishing.

use bytes::Bytes;
use futures::future::BoxFuture;

/// One broker message on its way out.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    /// Target partition, below [`Publisher::partitions`].
    pub partition: u32,
    /// Unique id; a broker stores a re-published id once (JetStream `Nats-Msg-Id`).
    pub id: String,
    /// The encoded events (NDJSON of `gallop_event::EventRecord`).
    pub payload: Bytes,
    /// How many events the payload holds, for metrics and headers.
    pub events: u32,
}

/// Where an acknowledged message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Partition the message was stored in.
    pub partition: u32,
    /// Position in that partition (JetStream stream sequence, Kafka offset).
    pub offset: u64,
    /// The broker had already stored a message with this id; this publish stored nothing.
    pub duplicate: bool,
}

/// Why a publish was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Not connected to the broker; nothing was sent.
    #[error("broker not connected: {0}")]
    NotConnected(String),
    /// Sent, but no acknowledgement came in time; the message may or may not be stored
    /// (a re-publish with the same id is deduplicated).
    #[error("broker did not acknowledge message {id} in time")]
    Timeout {
        /// The message id.
        id: String,
    },
    /// Never handed to the broker: the caller's deadline passed first (queued behind
    /// other messages, or too close to the deadline to start). Nothing was stored.
    #[error("not sent to the broker before the deadline: {0}")]
    NotSent(String),
    /// The broker is out of storage or the stream is full and refuses new messages
    /// (JetStream 10023 "insufficient resources", or `max_bytes`/`max_msgs` with
    /// discard-new). Nothing was stored.
    #[error("broker refused message {id}: out of storage ({reason})")]
    StorageFull {
        /// The message id.
        id: String,
        /// The broker's text.
        reason: String,
    },
    /// The partition number is outside the broker's range.
    #[error("partition {partition} out of range (broker has {partitions})")]
    NoSuchPartition {
        /// Partition asked for.
        partition: u32,
        /// Partitions the broker has.
        partitions: u32,
    },
    /// The message is larger than the broker accepts.
    #[error("message {id} of {bytes} bytes is larger than the broker accepts")]
    TooLarge {
        /// The message id.
        id: String,
        /// Payload size.
        bytes: usize,
    },
    /// Any other broker failure, with its text.
    #[error("broker rejected message {id}: {reason}")]
    Rejected {
        /// The message id.
        id: String,
        /// The broker's or client's complaint.
        reason: String,
    },
}

impl PublishError {
    /// Whether publishing the same message again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::NotConnected(_)
                | Self::Timeout { .. }
                | Self::Rejected { .. }
                | Self::NotSent(_)
                | Self::StorageFull { .. }
        )
    }

    /// Whether the message may have been stored although no acknowledgement came: only
    /// after a timeout once it was sent. Every other error means "not stored".
    pub fn may_be_stored(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

/// A broker that stores messages in numbered partitions and acknowledges them.
///
/// `publish` returns a `'static` future so callers can keep many publishes in flight;
/// implementations must not block in `publish` itself.
pub trait Publisher: Send + Sync + 'static {
    /// Number of partitions; valid partitions are `0..partitions()`.
    fn partitions(&self) -> u32;

    /// Whether the broker is reachable right now (drives `/ready`).
    fn is_ready(&self) -> bool;

    /// Publishes one message; resolves once the broker acknowledged it.
    fn publish(&self, message: OutboundMessage) -> BoxFuture<'static, Result<Position, PublishError>>;

    /// The longest a publish can take to resolve, where the client library settles every
    /// message by itself within a bound and cannot take one back once handed over (Kafka).
    /// The caller then starts a publish only while that bound ends before its deadline, and
    /// waits for the outcome instead of dropping the future. `None`: the caller bounds each
    /// publish by its own deadline (NATS).
    fn publish_settles_within(&self) -> Option<std::time::Duration> {
        None
    }
}

//! The public input: messages applications publish to an input subject or topic (the event
//! contract of docs/topics.md), and dead letters for the records that cannot be used.
//!
//! The gateway reads an [`InputSource`], turns each [`InputMessage`] into events of the
//! partitioned stream and acknowledges the message only once those events (and the dead
//! letters of its bad records) are acknowledged. A message delivered again after a crash
//! has the same [`InputMessage::origin`], from which the gateway derives the same event ids,
//! so the partitioned stream drops the copies.

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{publisher::PublishError, source::Ack};

/// Headers of a dead letter, naming why its record was refused.
pub mod dead_letter_headers {
    /// Machine-readable reason: `invalid`, `not_json`, `too_many_records`, …
    pub const REASON: &str = "Gallop-Dead-Reason";
    /// The field at fault (`url`, `props.plan`, `body`), or `message` for a whole message.
    pub const FIELD: &str = "Gallop-Dead-Field";
    /// What is wrong, in words, with the limit and its config key where one applies.
    pub const DETAIL: &str = "Gallop-Dead-Detail";
    /// Where the input message sat (`GALLOP_INPUT:42`, `gallop-input:3:1017`).
    pub const ORIGIN: &str = "Gallop-Origin";
    /// The subject or topic the input message was published to.
    pub const SOURCE: &str = "Gallop-Source";
    /// The record's line in its message (from 0); absent for a whole message.
    pub const RECORD: &str = "Gallop-Record";
}

/// One message of the input subject or topic.
pub struct InputMessage {
    /// What the application published: one JSON object or NDJSON.
    pub payload: Bytes,
    /// Where the message sits in its log, the same on every delivery of it.
    pub origin: String,
    /// The subject or topic it was published to.
    pub source: String,
    /// How many times the broker delivered it (1 the first time, where it knows).
    pub delivered: u32,
    /// Acknowledges this message (only this one).
    pub ack: Ack,
}

impl std::fmt::Debug for InputMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputMessage")
            .field("origin", &self.origin)
            .field("source", &self.source)
            .field("bytes", &self.payload.len())
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

/// Why reading the input stopped or stumbled.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{input}: {reason}")]
pub struct InputError {
    /// `NATS stream GALLOP_INPUT`, `Kafka topic gallop-input`.
    pub input: String,
    /// The client's or server's complaint.
    pub reason: String,
}

/// Reads the input subject or topic. Messages may be acknowledged in any order.
pub trait InputSource: Send + 'static {
    /// The next message; an error is worth logging and trying again; `None` once the
    /// source cannot go on.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<InputMessage, InputError>>>;

    /// `NATS stream GALLOP_INPUT`, `Kafka topic gallop-input`: for logs.
    fn describe(&self) -> String;
}

/// A record (or a whole message) that cannot be used, as it goes to the dead letters.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// The original bytes of the record (or message).
    pub payload: &'a [u8],
    /// Machine-readable reason.
    pub reason: &'a str,
    /// The field at fault.
    pub field: &'a str,
    /// What is wrong.
    pub detail: &'a str,
    /// The input message's origin.
    pub origin: &'a str,
    /// The input message's subject or topic.
    pub source: &'a str,
    /// The record's line in the message; `None` for a whole message.
    pub record: Option<usize>,
}

impl DeadLetter<'_> {
    /// The headers it is published with, in order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        use dead_letter_headers as h;
        let mut headers = vec![
            (h::REASON, self.reason.to_owned()),
            (h::FIELD, self.field.to_owned()),
            // Header values are one line.
            (h::DETAIL, self.detail.replace(['\r', '\n'], " ")),
            (h::ORIGIN, self.origin.to_owned()),
            (h::SOURCE, self.source.to_owned()),
        ];
        if let Some(record) = self.record {
            headers.push((h::RECORD, record.to_string()));
        }
        headers
    }
}

/// Where dead letters go: published and acknowledged by the broker before the input
/// message they came from is acknowledged.
pub trait DeadLetters: Send + Sync + 'static {
    /// Publishes `letter` and waits for the broker's acknowledgement.
    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), PublishError>>;
}

/// Publishes messages to the input subject or topic, as an application would: `gallop
/// publish` and the benchmark's topic load go through it.
pub trait InputPublisher: Send + Sync + 'static {
    /// Publishes `payload` (one JSON object or NDJSON) and waits for the broker's
    /// acknowledgement.
    fn send(&self, payload: Bytes) -> BoxFuture<'static, Result<(), PublishError>>;

    /// `NATS subject gallop.in.import`, `Kafka topic gallop-input`: for reports and logs.
    fn describe(&self) -> String;
}

//! The NATS adapter against a real JetStream server (127.0.0.1:4222 or
//! `TEST_GALLOP_NATS_URL`); each test uses and deletes its own stream and bucket.

mod broker;
mod lease;

/// The server the tests run against.
pub(crate) fn nats_url() -> String {
    std::env::var("TEST_GALLOP_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

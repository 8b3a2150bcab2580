//! Integration tests of the ingest gateway against a real NATS JetStream server
//! (127.0.0.1:4222, or `TEST_GALLOP_NATS_URL`). Each test makes its own stream, subject
//! prefix and salt bucket, and deletes them when done.

mod bad_input;
mod batch;
mod broker_down;
mod endpoints;
mod fixture;
mod hardening;
mod plausible;
mod privacy;
mod private_nats;

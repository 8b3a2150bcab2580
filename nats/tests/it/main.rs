//! The NATS adapter against a real JetStream server (127.0.0.1:4222 or
//! `TEST_GALLOP_NATS_URL`); each test uses and deletes its own stream and bucket.

mod broker;

//! Whole-binary tests: `gallop` run as a user runs it, against the real NATS server.

mod config_cmd;
mod ingest_cmd;

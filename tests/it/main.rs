//! Whole-binary tests: `gallop` run as a user runs it, against the real NATS and ClickHouse
//! servers.

mod config_cmd;
mod ingest_cmd;
mod pipeline;

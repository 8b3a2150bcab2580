//! The sketches against a live ClickHouse server (`TEST_GALLOP_CLICKHOUSE_URL`, default
//! http://127.0.0.1:8123/): byte-identical states and equal results; plus property tests.

mod common;
mod hll;
mod props;
mod sessions;
mod split;
mod sum;
mod topk;

//! Integration tests of the sink against the real ClickHouse server
//! (`TEST_GALLOP_CLICKHOUSE_URL`, default `http://127.0.0.1:8123`; `scripts/services.sh up`
//! starts one). Each test works in a database of its own, dropped at the end.

mod cluster;
mod common;
mod docs;
mod grafana;
mod migrate;
mod write;

//! Shared helpers for the tests that talk to a real ClickHouse server over HTTP.
//!
//! The server is `TEST_GALLOP_CLICKHOUSE_URL` (default `http://127.0.0.1:8123/`). A test that
//! needs it fails with a clear message when it is not reachable; nothing is skipped.

#![allow(dead_code)]

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use gallop_processor::sketch::int_hash64;

/// Base URL of the ClickHouse HTTP interface.
pub(crate) fn clickhouse_url() -> String {
    std::env::var("TEST_GALLOP_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123/".into())
}

fn read_body(resp: ureq::Response, sql: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    resp.into_reader()
        .read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("reading ClickHouse's answer failed ({e}); query: {sql}"));
    buf
}

fn fail(err: ureq::Error, sql: &str) -> ! {
    match err {
        ureq::Error::Status(code, resp) => panic!(
            "ClickHouse rejected the query (HTTP {code}): {}\nquery: {sql}",
            resp.into_string().unwrap_or_default().trim()
        ),
        other => panic!(
            "ClickHouse is not reachable at {} ({other}). These tests need a running server: \
             start it with `bash scripts/services.sh clickhouse` (they fail, never skip).\nquery: {sql}",
            clickhouse_url()
        ),
    }
}

/// Runs `sql` (sent as the request body) and returns the raw answer.
pub(crate) fn query(sql: &str) -> Vec<u8> {
    match ureq::post(&clickhouse_url()).send_bytes(sql.as_bytes()) {
        Ok(resp) => read_body(resp, sql),
        Err(e) => fail(e, sql),
    }
}

/// Runs `sql` and returns the answer as trimmed text.
pub(crate) fn query_text(sql: &str) -> String {
    String::from_utf8(query(sql))
        .unwrap_or_else(|e| panic!("ClickHouse answered non-UTF-8 text ({e}); query: {sql}"))
        .trim_end()
        .to_string()
}

/// Runs `sql` (an `INSERT .. FORMAT ..`, sent in the URL) with `data` as the body.
pub(crate) fn insert(sql: &str, data: &[u8]) {
    match ureq::post(&clickhouse_url()).query("query", sql).send_bytes(data) {
        Ok(resp) => {
            read_body(resp, sql);
        }
        Err(e) => fail(e, sql),
    }
}

/// A database of its own for one test, dropped when the test ends.
pub(crate) struct TestDb {
    pub name: String,
}

impl TestDb {
    pub(crate) fn new(test: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!(
            "gallop_sketch_{test}_{}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        query(&format!("CREATE DATABASE {name}"));
        Self { name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort: a failing drop must not hide the test's own panic.
        let _ = ureq::post(&clickhouse_url()).send_string(&format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// The pseudo-random `UInt64` input number `number` of stream `seed`; SQL:
/// `intHash64(number + seed)`.
pub(crate) fn u64_input(seed: u64, number: u64) -> u64 {
    int_hash64(number.wrapping_add(seed))
}

/// SQL producing [`u64_input`] from a column `number`.
pub(crate) fn u64_input_sql(seed: u64) -> String {
    format!("intHash64(number + {seed})")
}

/// The pseudo-random `String` input (0 to 80 bytes, so every CityHash length branch is
/// used) derived from `x = u64_input(..)`.
pub(crate) fn str_input(x: u64) -> Vec<u8> {
    let digits = x.to_string().repeat(4);
    let len = usize::try_from(x % 81).unwrap_or(0).min(digits.len());
    digits.as_bytes()[..len].to_vec()
}

/// SQL producing [`str_input`] of [`u64_input_sql`].
pub(crate) fn str_input_sql(seed: u64) -> String {
    let x = u64_input_sql(seed);
    format!("substring(concat(toString({x}), toString({x}), toString({x}), toString({x})), 1, {x} % 81)")
}

/// `n` rows of `number` in order, also for `n = 0` (18.16's `numbers(0)` never ends).
pub(crate) fn numbers(n: u64) -> String {
    format!("(SELECT number FROM system.numbers LIMIT {n})")
}

/// Hex decoding of ClickHouse's `hex(..)` output.
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| {
            u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .unwrap_or_else(|e| panic!("bad hex {s:?} from ClickHouse: {e}"))
        })
        .collect()
}

/// A short hex prefix of differing bytes, for assertion messages.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i}: {:#04x} vs {:#04x} (lengths {} and {})",
            a[i],
            b[i],
            a.len(),
            b.len()
        ),
        None => format!("lengths {} and {}", a.len(), b.len()),
    }
}

//! `TopK` against a live ClickHouse 18.16: identical `topKState` bytes for the same ordered
//! inputs, decoding the server's states, and the server merging Gallop's partial states.

use std::collections::HashMap;

use crate::common::{first_difference, insert, numbers, query, query_text, u64_input, TestDb};
use gallop_processor::sketch::TopK;

/// A skewed key over at most `distinct` values (small ones more frequent); SQL twin:
/// [`skewed_sql`].
fn skewed(seed: u64, distinct: u64, number: u64) -> Vec<u8> {
    let x = u64_input(seed, number);
    (x % (1 + (x >> 32) % distinct)).to_string().into_bytes()
}

fn skewed_sql(seed: u64, distinct: u64) -> String {
    let x = format!("intHash64(number + {seed})");
    format!("toString({x} % (1 + bitShiftRight({x}, 32) % {distinct}))")
}

fn gallop(k: usize, seed: u64, distinct: u64, n: u64) -> TopK {
    let mut t = TopK::new(k).unwrap_or_else(|e| panic!("topK({k}): {e}"));
    for number in 0..n {
        t.insert(&skewed(seed, distinct, number));
    }
    t
}

/// `topK(k)` array of String as printed in TabSeparated, parsed back.
fn parse_string_array(text: &str) -> Vec<Vec<u8>> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not an array: {text:?}"));
    if inner.is_empty() {
        return Vec::new();
    }
    inner
        .split(',')
        .map(|item| {
            item.strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .unwrap_or_else(|| panic!("not a quoted string: {item:?}"))
                .as_bytes()
                .to_vec()
        })
        .collect()
}

/// Same inputs in the same order (one thread), at most `3k` distinct keys: Gallop's bytes
/// equal `topKState(k)`'s. (With evictions 18.16 loses keys in its counter map, so its
/// states diverge from any correct implementation; see the `TopK` docs.)
#[test]
fn states_are_byte_identical_to_clickhouse_for_ordered_inputs() {
    for k in [1usize, 3, 10, 50] {
        for n in [0u64, 5, 100, 10_000, 200_000] {
            let seed = 17 + n;
            let distinct = 3 * k as u64;
            let mut ours = gallop(k, seed, distinct, n).to_state();
            if n == 0 {
                // The server's empty state has a 64-slot alpha map whatever k; ours is sized
                // for 3k (both read back as empty).
                assert_eq!(TopK::read_state(k, &ours).map(|t| t.len()), Ok(0));
                ours = [vec![0u8, 64], vec![0u8; 64]].concat();
            }
            let theirs = query(&format!(
                "SELECT topKState({k})({}) FROM {} SETTINGS max_threads = 1 FORMAT RowBinary",
                skewed_sql(seed, distinct),
                numbers(n)
            ));
            assert!(ours == theirs, "topKState({k}), n {n}: {}", first_difference(&ours, &theirs));
        }
    }
}

/// Gallop decodes the server's states (with evictions, 300 distinct keys). Where the state
/// lists every key once, its items are the server's `topK` answer and it re-encodes to the
/// same bytes; where 18.16 listed a key twice, the decoded sketch holds their sum, as the
/// server's own reader does.
#[test]
fn decodes_clickhouse_states() {
    let mut with_duplicates = 0;
    for (k, n) in [(10usize, 50_000u64), (3, 1_000), (25, 100_000), (1, 100), (10, 2_000)] {
        let seed = 5 * n;
        let state = query(&format!(
            "SELECT topKState({k})({}) FROM {} SETTINGS max_threads = 1 FORMAT RowBinary",
            skewed_sql(seed, 300),
            numbers(n)
        ));
        let top = query_text(&format!(
            "SELECT topK({k})({}) FROM {} SETTINGS max_threads = 1",
            skewed_sql(seed, 300),
            numbers(n)
        ));
        let server_top = parse_string_array(&top);
        let decoded =
            TopK::read_state(k, &state).unwrap_or_else(|e| panic!("topK({k}) state from the server rejected: {e}"));
        let mut distinct = server_top.clone();
        distinct.sort();
        distinct.dedup();
        if decoded.len() == raw_counter_count(&state) {
            let keys: Vec<Vec<u8>> = decoded.top().into_iter().map(|(key, _, _)| key).collect();
            assert_eq!(keys, server_top, "topK({k}) over {n} rows");
            assert_eq!(decoded.to_state(), state, "re-encoded topK({k}) state");
        } else {
            with_duplicates += 1;
            assert!(decoded.len() < raw_counter_count(&state));
        }
    }
    eprintln!("server states listing a key twice: {with_duplicates} of 5");
}

/// The leading VarUInt of a topK state: how many counters it lists.
fn raw_counter_count(state: &[u8]) -> usize {
    let mut x = 0usize;
    for (i, b) in state.iter().take(9).enumerate() {
        x |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    x
}

/// The server stores, returns and merges a Gallop state. Gallop's `top()` is the true top
/// 10; the server hands the state back intact (modulo 18.16's doubled alpha map), and its
/// `topKMerge(10)` returns ten of the state's keys. (18.16's merge loses keys in its
/// counter map, so it is not held to the true top 10; see the `TopK` docs.)
#[test]
fn clickhouse_accepts_gallop_states() {
    let db = TestDb::new("topk_accept");
    query(&format!(
        "CREATE TABLE {}.t (k UInt32, s AggregateFunction(topK(10), String)) \
         ENGINE = AggregatingMergeTree ORDER BY k",
        db.name
    ));
    // Key i occurs 200 - 3i times, in an interleaved order.
    let mut stream = Vec::new();
    for i in 0..50u64 {
        for _ in 0..(200 - 3 * i) {
            stream.push(format!("key-{i}"));
        }
    }
    // Shuffle by position so every key is spread over the whole stream.
    let mut order: Vec<(u64, String)> =
        stream.into_iter().enumerate().map(|(i, s)| (u64_input(1, i as u64), s)).collect();
    order.sort();
    let stream: Vec<String> = order.into_iter().map(|(_, s)| s).collect();
    let mut t = TopK::new(10).unwrap_or_else(|e| panic!("{e}"));
    for s in &stream {
        t.insert(s.as_bytes());
    }
    let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("key-{i}").into_bytes()).collect();
    let ours: Vec<Vec<u8>> = t.top().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(ours, expected, "Gallop's own top 10");

    let mut body = 1u32.to_le_bytes().to_vec();
    t.write_state(&mut body);
    insert(&format!("INSERT INTO {}.t FORMAT RowBinary", db.name), &body);
    let stored = query(&format!("SELECT s FROM {}.t FORMAT RowBinary", db.name));
    let back = TopK::read_state(10, &stored).unwrap_or_else(|e| panic!("state returned by the server rejected: {e}"));
    assert_eq!(back.top(), t.top(), "state after a round trip through the server");
    assert_eq!(back.to_state(), t.to_state(), "re-encoded after the round trip");

    let merged = query_text(&format!("SELECT topKMerge(10)(s) FROM {}.t", db.name));
    let merged = parse_string_array(&merged);
    assert_eq!(merged.len(), 10, "server's topKMerge(10): {merged:?}");
    let all_keys: Vec<Vec<u8>> = (0..50).map(|i| format!("key-{i}").into_bytes()).collect();
    assert!(merged.iter().all(|k| all_keys.contains(k)), "{merged:?}");
}

/// splitmix64, a tiny seeded generator so the test data never changes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 100k Zipf(1.1) draws over 10k distinct URLs, seeded.
fn zipf_stream() -> Vec<String> {
    const DISTINCT: usize = 10_000;
    const DRAWS: usize = 100_000;
    let weights: Vec<f64> = (1..=DISTINCT).map(|r| 1.0 / (r as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(DISTINCT);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut rng = SplitMix(0x2026_1123);
    (0..DRAWS)
        .map(|_| {
            let u = rng.unit();
            let rank = cdf.partition_point(|&c| c < u).min(DISTINCT - 1);
            // Scramble the rank so that popularity is not visible in the key.
            format!("/page/{:016x}", (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        })
        .collect()
}

/// Zipf data split over 20 partial Gallop states (topK(10), 30 counters each): Gallop's
/// merge returns the exact top 5 in order, with `count - error ≤ exact ≤ count` for all of
/// its top 10. Observed with this seed: the largest overestimate `count - exact` in the
/// merged top 10 is 11 (on an item with 1181 occurrences; the #1 item, 15257, is exact).
/// The server's `topKMerge(10)` of the same partial states returns only heavy hitters, but
/// 18.16 drops the true #1 (see the comment at the end).
#[test]
fn zipf_partial_states_merge_to_the_true_top_items() {
    let stream = zipf_stream();
    let mut exact: HashMap<&str, u64> = HashMap::new();
    for s in &stream {
        *exact.entry(s.as_str()).or_default() += 1;
    }
    let mut by_count: Vec<(&str, u64)> = exact.iter().map(|(k, v)| (*k, *v)).collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let true_top5: Vec<Vec<u8>> = by_count[..5].iter().map(|(k, _)| k.as_bytes().to_vec()).collect();
    assert!(by_count[4].1 > by_count[5].1, "test data must have a strict top 5");

    let partials: Vec<TopK> = stream
        .chunks(stream.len() / 20)
        .map(|chunk| {
            let mut t = TopK::new(10).unwrap_or_else(|e| panic!("{e}"));
            for s in chunk {
                t.insert(s.as_bytes());
            }
            t
        })
        .collect();
    assert_eq!(partials.len(), 20);

    // Gallop's own merge.
    let mut merged = TopK::new(10).unwrap_or_else(|e| panic!("{e}"));
    for p in &partials {
        merged.merge(p);
    }
    let top = merged.top();
    let keys: Vec<Vec<u8>> = top.iter().take(5).map(|(k, _, _)| k.clone()).collect();
    assert_eq!(keys, true_top5, "Gallop's merged top 5");
    let mut worst_over = 0u64;
    for (key, count, error) in &top {
        let key = String::from_utf8_lossy(key);
        let truth = exact.get(key.as_ref()).copied().unwrap_or(0);
        assert!(
            count.saturating_sub(*error) <= truth && truth <= *count,
            "{key}: count {count}, error {error}, exact {truth}"
        );
        worst_over = worst_over.max(count - truth);
    }
    eprintln!("zipf: worst overestimate in Gallop's merged top 10: {worst_over}");
    assert!(worst_over <= 50, "overestimate {worst_over} grew past the observed 11");

    // The server's merge of the same 20 partial states.
    let db = TestDb::new("topk_zipf");
    query(&format!(
        "CREATE TABLE {}.t (k UInt32, s AggregateFunction(topK(10), String)) \
         ENGINE = MergeTree ORDER BY k",
        db.name
    ));
    let mut body = Vec::new();
    for (i, p) in partials.iter().enumerate() {
        body.extend_from_slice(&(i as u32).to_le_bytes());
        p.write_state(&mut body);
    }
    insert(&format!("INSERT INTO {}.t FORMAT RowBinary", db.name), &body);
    let answer = query_text(&format!("SELECT topKMerge(10)(s) FROM {}.t", db.name));
    let server = parse_string_array(&answer);
    assert_eq!(server.len(), 10, "server's topKMerge(10): {answer}");
    // 18.16 cannot be held to the exact top 5: its merge goes through its counter map,
    // which loses keys after evictions (see the `TopK` docs). With this seed it drops the
    // true #1 and returns ranks 2..=11. What it returns must still be heavy hitters.
    let true_top15: Vec<Vec<u8>> = by_count[..15].iter().map(|(k, _)| k.as_bytes().to_vec()).collect();
    for key in &server {
        assert!(
            true_top15.contains(key),
            "server's topKMerge(10) returned {} which is not in the true top 15: {answer}",
            String::from_utf8_lossy(key)
        );
    }
    let server_hits = true_top5.iter().filter(|k| server[..5].contains(k)).count();
    eprintln!("zipf: server's merged top 5 holds {server_hits} of the true top 5: {answer}");
}

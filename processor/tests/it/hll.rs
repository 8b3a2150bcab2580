//! `UniqHll12` against a live ClickHouse 18.16: byte-identical states, identical estimates,
//! identical merges, and states ClickHouse accepts.

use crate::common::{
    first_difference, insert, numbers, query, query_text, str_input, str_input_sql, u64_input, u64_input_sql, unhex,
    TestDb,
};
use gallop_processor::sketch::{city_hash64, int_hash64, UniqHll12};

/// Every in-memory form: empty, one key, the small set, sparse registers (17 up to about
/// 97 distinct keys), the full array.
const SIZES: [u64; 12] = [0, 1, 2, 15, 16, 17, 60, 90, 100, 300, 10_000, 1_000_000];
const SEEDS: [u64; 2] = [7, 0x5eed_0000_0001];

fn gallop_u64(seed: u64, n: u64) -> UniqHll12 {
    let mut h = UniqHll12::new();
    for number in 0..n {
        h.insert_u64(u64_input(seed, number));
    }
    h
}

fn gallop_str(seed: u64, n: u64) -> UniqHll12 {
    let mut h = UniqHll12::new();
    for number in 0..n {
        h.insert_str(&str_input(u64_input(seed, number)));
    }
    h
}

/// `uniqHLL12State(expr)` over `n` rows, single-threaded so the small set keeps row order.
fn server_state(expr: &str, n: u64) -> Vec<u8> {
    query(&format!("SELECT uniqHLL12State({expr}) FROM {} SETTINGS max_threads = 1 FORMAT RowBinary", numbers(n)))
}

#[test]
fn u64_states_are_byte_identical_to_clickhouse() {
    for seed in SEEDS {
        for n in SIZES {
            let ours = gallop_u64(seed, n).to_state();
            let theirs = server_state(&u64_input_sql(seed), n);
            assert!(ours == theirs, "uniqHLL12State(UInt64), seed {seed}, n {n}: {}", first_difference(&ours, &theirs));
        }
    }
}

#[test]
fn string_states_are_byte_identical_to_clickhouse() {
    for seed in SEEDS {
        for n in SIZES {
            let ours = gallop_str(seed, n).to_state();
            let theirs = server_state(&str_input_sql(seed), n);
            assert!(ours == theirs, "uniqHLL12State(String), seed {seed}, n {n}: {}", first_difference(&ours, &theirs));
        }
    }
}

/// Every CityHash64 length branch (0..=16, 17..=32, 33..=64, the 64-byte loop) against the
/// server's `cityHash64`.
#[test]
fn city_hash64_matches_clickhouse_for_every_length_up_to_300() {
    let text: String = (0..40u64).map(|i| int_hash64(i).to_string()).collect();
    let parts: Vec<String> = (0..40).map(|i| format!("toString(intHash64({i}))")).collect();
    let sql = format!(
        "SELECT cityHash64(substring(concat({}), 1, number)) FROM numbers(301) \
         SETTINGS max_threads = 1",
        parts.join(", ")
    );
    let answer = query_text(&sql);
    let theirs: Vec<u64> =
        answer.lines().map(|l| l.parse().unwrap_or_else(|e| panic!("bad number {l:?}: {e}"))).collect();
    assert_eq!(theirs.len(), 301);
    for (len, expected) in theirs.iter().enumerate() {
        assert_eq!(city_hash64(&text.as_bytes()[..len]), *expected, "cityHash64 of the first {len} bytes");
    }
}

/// One query, ~150 groups of growing size (1 to ~50k keys): the server's
/// state and `uniqHLL12` for each group against Gallop's state and estimate. Covers the
/// small set, linear counting, its hand-over to the raw estimate at 2.5 · 4096, and the
/// raw estimate.
#[test]
fn estimates_equal_uniqhll12_for_all_cardinality_ranges() {
    let seed = 99u64;
    let total = 2_000_000u64;
    // IEEE square roots are correctly rounded on both sides, so the groups agree exactly.
    let group = |number: u64| ((number as f64).sqrt().sqrt() * 4.0).floor() as u64;
    let sql = format!(
        "SELECT toUInt64(floor(sqrt(sqrt(number)) * 4)) AS g, count(), uniqHLL12({x}), \
         hex(toString(uniqHLL12State({x}))) FROM numbers({total}) GROUP BY g ORDER BY g",
        x = u64_input_sql(seed)
    );
    let answer = query_text(&sql);

    let mut ours: Vec<UniqHll12> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    for number in 0..total {
        let g = group(number) as usize;
        while ours.len() <= g {
            ours.push(UniqHll12::new());
            sizes.push(0);
        }
        ours[g].insert_u64(u64_input(seed, number));
        sizes[g] += 1;
    }

    let mut checked = 0;
    for line in answer.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "bad line {line:?}");
        let g: usize = cols[0].parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let count: u64 = cols[1].parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let server_estimate: u64 = cols[2].parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let server_state = unhex(cols[3]);
        assert_eq!(sizes[g], count, "group {g}: group sizes disagree");
        let from_server =
            UniqHll12::read_state(&server_state).unwrap_or_else(|e| panic!("group {g}: server state rejected: {e}"));
        assert_eq!(from_server.estimate(), server_estimate, "group {g} ({count} keys): estimate of the server's state");
        assert_eq!(ours[g].estimate(), server_estimate, "group {g} ({count} keys): Gallop's estimate");
        if ours[g].is_large() {
            // Large states do not depend on insertion order, so they must match even though
            // the server aggregated in several threads.
            assert_eq!(ours[g].to_state(), server_state, "group {g}: state bytes");
        }
        checked += 1;
    }
    let non_empty = sizes.iter().filter(|&&n| n > 0).count();
    assert_eq!(checked, non_empty, "groups that came back");
}

/// The merge of two Gallop states equals the server's merge of the same two states
/// (`uniqHLL12MergeState`, bytes) and its `uniqHLL12Merge` (estimate), for every
/// combination of small and large; and the server accepts Gallop's bytes in an
/// `AggregateFunction(uniqHLL12, UInt64)` column.
#[test]
fn merges_equal_clickhouse_merges() {
    let db = TestDb::new("hll_merge");
    query(&format!(
        "CREATE TABLE {}.t (pair UInt32, k UInt32, s AggregateFunction(uniqHLL12, UInt64)) \
         ENGINE = MergeTree ORDER BY (pair, k)",
        db.name
    ));
    // (n_a, n_b): small+small staying small, small+small overflowing, small+large,
    // large+small, large+large; then with sparse registers (17..~97 keys): small+sparse,
    // sparse+small, sparse+sparse staying sparse, sparse+sparse outgrowing into the array,
    // sparse+large, large+sparse.
    let pairs: [(u64, u64); 12] = [
        (5, 7),
        (10, 10),
        (3, 5_000),
        (5_000, 3),
        (20_000, 300_000),
        (0, 17),
        (1, 60),
        (60, 2),
        (40, 40),
        (80, 80),
        (60, 5_000),
        (5_000, 60),
    ];
    let mut body = Vec::new();
    let mut expected = Vec::new();
    for (i, &(n_a, n_b)) in pairs.iter().enumerate() {
        // Overlapping inputs: b starts halfway through a's stream.
        let a = gallop_u64(1_000, n_a);
        let b = gallop_u64(1_000 + n_a / 2, n_b);
        for (k, state) in [(0u32, &a), (1u32, &b)] {
            body.extend_from_slice(&(i as u32).to_le_bytes());
            body.extend_from_slice(&k.to_le_bytes());
            state.write_state(&mut body);
        }
        let mut merged = a.clone();
        merged.merge(&b);
        expected.push(merged);
    }
    insert(&format!("INSERT INTO {}.t FORMAT RowBinary", db.name), &body);

    for (i, merged) in expected.iter().enumerate() {
        let state = query(&format!(
            "SELECT uniqHLL12MergeState(s) FROM (SELECT s FROM {}.t WHERE pair = {i} ORDER BY k) \
             SETTINGS max_threads = 1 FORMAT RowBinary",
            db.name
        ));
        assert!(
            state == merged.to_state(),
            "pair {i} {:?}: merged state: {}",
            pairs[i],
            first_difference(&merged.to_state(), &state)
        );
        let estimate = query_text(&format!("SELECT uniqHLL12Merge(s) FROM {}.t WHERE pair = {i}", db.name));
        assert_eq!(estimate, merged.estimate().to_string(), "pair {i} {:?}: uniqHLL12Merge", pairs[i]);
    }

    // The server stores Gallop's bytes unchanged.
    let stored = query(&format!("SELECT s FROM {}.t ORDER BY pair, k FORMAT RowBinary", db.name));
    let expected_rows: Vec<u8> = {
        let mut out = Vec::new();
        for (i, &(n_a, n_b)) in pairs.iter().enumerate() {
            let _ = i;
            gallop_u64(1_000, n_a).write_state(&mut out);
            gallop_u64(1_000 + n_a / 2, n_b).write_state(&mut out);
        }
        out
    };
    assert!(stored == expected_rows, "stored states: {}", first_difference(&stored, &expected_rows));
}

/// A million-key state built by Gallop, inserted raw, merges on the server to Gallop's
/// estimate; so does a String-keyed one.
#[test]
fn clickhouse_accepts_gallop_states() {
    let db = TestDb::new("hll_accept");
    query(&format!(
        "CREATE TABLE {}.t (k UInt32, s AggregateFunction(uniqHLL12, UInt64)) \
         ENGINE = AggregatingMergeTree ORDER BY k",
        db.name
    ));
    query(&format!(
        "CREATE TABLE {}.ts (k UInt32, s AggregateFunction(uniqHLL12, String)) \
         ENGINE = AggregatingMergeTree ORDER BY k",
        db.name
    ));
    let big = gallop_u64(3, 1_000_000);
    let small = gallop_u64(5, 9);
    let strings = gallop_str(11, 50_000);
    for (table, k, sketch) in [("t", 1u32, &big), ("t", 2, &small), ("ts", 1, &strings)] {
        let mut body = k.to_le_bytes().to_vec();
        sketch.write_state(&mut body);
        insert(&format!("INSERT INTO {}.{table} FORMAT RowBinary", db.name), &body);
        let estimate = query_text(&format!("SELECT uniqHLL12Merge(s) FROM {}.{table} WHERE k = {k}", db.name));
        assert_eq!(estimate, sketch.estimate().to_string(), "{table} k = {k}");
    }
    // Merged with a state the server builds itself from the same String inputs.
    let combined = query_text(&format!(
        "SELECT uniqHLL12Merge(s) FROM (SELECT s FROM {}.ts UNION ALL \
         SELECT uniqHLL12State({}) FROM {})",
        db.name,
        str_input_sql(11),
        numbers(50_000)
    ));
    assert_eq!(combined, strings.estimate().to_string());
}

/// Hand-built register contents, including ranks no real input reaches in practice, so
/// estimates above `2^32 / 30` (where older ClickHouse applied a large-range correction and
/// 18.16 does not) and above 2^32 are exercised.
#[test]
fn estimates_of_extreme_register_states_equal_clickhouse() {
    fn state_from_ranks(ranks: &[u8; 4096]) -> Vec<u8> {
        let mut packed = vec![0u8; 2560];
        for (i, &r) in ranks.iter().enumerate() {
            let bit = i * 5;
            let word = u16::from(r) << (bit % 8);
            packed[bit / 8] |= word as u8;
            if bit % 8 > 3 {
                packed[bit / 8 + 1] |= (word >> 8) as u8;
            }
        }
        let mut histogram = [0u32; 22];
        for &r in ranks {
            histogram[usize::from(r)] += 1;
        }
        let mut out = vec![1u8];
        out.extend_from_slice(&packed);
        for c in histogram {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out.extend_from_slice(&(histogram[0] as u16).to_le_bytes());
        out
    }

    let mut cases: Vec<[u8; 4096]> = Vec::new();
    for r in 0..=21u8 {
        cases.push([r; 4096]);
    }
    for top in [8u8, 12, 16, 19, 21] {
        let mut ranks = [0u8; 4096];
        for (i, r) in ranks.iter_mut().enumerate() {
            *r = (int_hash64(i as u64 + u64::from(top)) % (u64::from(top) + 1)) as u8;
        }
        cases.push(ranks);
    }
    // Just below and above full registers at mid ranks: zero count 1 and 0.
    let mut one_zero = [3u8; 4096];
    one_zero[17] = 0;
    cases.push(one_zero);

    let db = TestDb::new("hll_extreme");
    query(&format!(
        "CREATE TABLE {}.t (k UInt32, s AggregateFunction(uniqHLL12, UInt64)) \
         ENGINE = MergeTree ORDER BY k",
        db.name
    ));
    let mut body = Vec::new();
    let mut ours = Vec::new();
    for (k, ranks) in cases.iter().enumerate() {
        let state = state_from_ranks(ranks);
        let sketch =
            UniqHll12::read_state(&state).unwrap_or_else(|e| panic!("case {k}: hand-built state rejected: {e}"));
        ours.push(sketch.estimate());
        body.extend_from_slice(&(k as u32).to_le_bytes());
        body.extend_from_slice(&state);
    }
    insert(&format!("INSERT INTO {}.t FORMAT RowBinary", db.name), &body);
    let answer = query_text(&format!("SELECT k, uniqHLL12Merge(s) FROM {}.t GROUP BY k ORDER BY k", db.name));
    let theirs: Vec<u64> = answer
        .lines()
        .map(|l| l.split('\t').nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {l:?}")))
        .collect();
    assert_eq!(ours, theirs, "estimates per case (ours vs ClickHouse's)");
}

//! `SumU64` / `SumF64` against a live ClickHouse 18.16: `sumState` bytes and `sumMerge`.

use crate::common::{insert, numbers, query, query_text, u64_input, TestDb};
use gallop_processor::sketch::{SumF64, SumU64};

#[test]
fn sum_states_are_byte_identical_to_clickhouse() {
    for n in [0u64, 1, 1_000, 100_000] {
        let seed = 3 + n;
        let mut u = SumU64::new();
        let mut f = SumF64::new();
        for number in 0..n {
            let x = u64_input(seed, number);
            u.add(x); // wraps, like the server
            f.add((x % 1_000_000) as f64 / 7.0);
        }
        let mut ours = Vec::new();
        u.write_state(&mut ours);
        f.write_state(&mut ours);
        let theirs = query(&format!(
            "SELECT sumState(intHash64(number + {seed})), \
             sumState(toFloat64(intHash64(number + {seed}) % 1000000) / 7) \
             FROM {} SETTINGS max_threads = 1 FORMAT RowBinary",
            numbers(n)
        ));
        assert_eq!(ours, theirs, "sumState over {n} rows");
    }
}

#[test]
fn clickhouse_merges_gallop_sum_states() {
    let db = TestDb::new("sum_accept");
    query(&format!(
        "CREATE TABLE {}.t (k UInt32, u AggregateFunction(sum, UInt64), \
         f AggregateFunction(sum, Float64)) ENGINE = AggregatingMergeTree ORDER BY k",
        db.name
    ));
    let mut body = Vec::new();
    let mut total_u = SumU64::new();
    let mut total_f = SumF64::new();
    for k in 0..5u32 {
        let mut u = SumU64::new();
        let mut f = SumF64::new();
        u.add(u64::from(k) * 1_000_000_007);
        f.add(f64::from(k) * 0.5);
        total_u.merge(&u);
        total_f.merge(&f);
        body.extend_from_slice(&k.to_le_bytes());
        u.write_state(&mut body);
        f.write_state(&mut body);
    }
    insert(&format!("INSERT INTO {}.t FORMAT RowBinary", db.name), &body);
    let answer = query_text(&format!("SELECT sumMerge(u), sumMerge(f) FROM {}.t", db.name));
    assert_eq!(answer, format!("{}\t{}", total_u.value(), total_f.value()));
}

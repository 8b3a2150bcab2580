//! Prints 20 partial `topK(10)` states built by Gallop over a seeded Zipf(1.1) stream (100k
//! draws over 10k URLs), one hex state per line, then `TOP5` and the true top 5 keys by exact
//! count. `processor/tests/chdb_topk_check.py` merges the states on a modern ClickHouse.
//!
//! `cargo run -p gallop-processor --example topk_zipf`

use std::collections::HashMap;

use gallop_processor::sketch::TopK;

fn main() {
    const DISTINCT: usize = 10_000;
    const DRAWS: usize = 100_000;
    let weights: Vec<f64> = (1..=DISTINCT).map(|r| 1.0 / (r as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cdf: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect();
    let mut state: u64 = 0x2026_1123;
    let mut unit = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let stream: Vec<String> = (0..DRAWS)
        .map(|_| {
            let u = unit();
            let rank = cdf.partition_point(|&c| c < u).min(DISTINCT - 1);
            format!("/page/{:016x}", (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        })
        .collect();
    let mut exact: HashMap<&str, u64> = HashMap::new();
    for s in &stream {
        *exact.entry(s).or_default() += 1;
    }
    for chunk in stream.chunks(DRAWS / 20) {
        let Ok(mut top) = TopK::new(10) else { return };
        for s in chunk {
            top.insert(s.as_bytes());
        }
        let hex: String = top.to_state().iter().map(|b| format!("{b:02x}")).collect();
        println!("{hex}");
    }
    let mut by_count: Vec<(&str, u64)> = exact.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top5: Vec<&str> = by_count.iter().take(5).map(|(k, _)| *k).collect();
    println!("TOP5 {}", top5.join(","));
}

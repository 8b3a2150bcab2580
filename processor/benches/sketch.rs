//! Criterion benchmarks of the sketches' hot paths: HLL insert, topK insert, state encoding.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gallop_processor::sketch::{int_hash64, TopK, UniqHll12};

fn hll_insert(c: &mut Criterion) {
    let keys: Vec<u64> = (0..10_000u64).map(int_hash64).collect();
    let mut group = c.benchmark_group("hll");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("insert_u64_10k", |b| {
        b.iter(|| {
            let mut h = UniqHll12::new();
            for &k in &keys {
                h.insert_u64(k);
            }
            black_box(h.estimate())
        })
    });
    let mut big = UniqHll12::new();
    keys.iter().for_each(|&k| big.insert_u64(k));
    group.throughput(Throughput::Elements(1));
    group.bench_function("write_state_large", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            big.write_state(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn topk_insert(c: &mut Criterion) {
    // Skewed keys over ~1000 distinct paths.
    let keys: Vec<String> = (0..10_000u64)
        .map(|i| {
            let x = int_hash64(i);
            format!("/path/{}", x % (1 + (x >> 32) % 1000))
        })
        .collect();
    let mut group = c.benchmark_group("topk");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("insert_10k_k10", |b| {
        b.iter(|| {
            let mut t = TopK::new(10).unwrap_or_else(|e| panic!("{e}"));
            for k in &keys {
                t.insert(k.as_bytes());
            }
            black_box(t.len())
        })
    });
    let mut t = TopK::new(10).unwrap_or_else(|e| panic!("{e}"));
    keys.iter().for_each(|k| t.insert(k.as_bytes()));
    group.throughput(Throughput::Elements(1));
    group.bench_function("write_state_k10", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            t.write_state(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, hll_insert, topk_insert);
criterion_main!(benches);

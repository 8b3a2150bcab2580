//! Criterion: Gallop's processor core and traqq 0.2.0 on the same synthetic events.
//!
//! `cargo bench -p gallop-bench --bench process`. Throughput is in events. The processor
//! runs the default dashboard rollups and, separately, the metrics traqq is configured for;
//! both start from an empty state per iteration and flush at the end (the flush is part of
//! the measured work). `gallop-bench process` prints the same comparison on larger streams.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gallop_bench::{
    synth::{generate, SynthConfig},
    traqq_side::{gallop_like_traqq, run_traqq_with, TraqqEntry},
};
use gallop_config::{ProcessorConfig, TimeConfig};
use gallop_event::EventRecord;
use gallop_processor::Processor;

fn events(n: usize) -> Vec<EventRecord> {
    generate(&SynthConfig { events: n, span_ms: 3_600_000, ..SynthConfig::default() }).collect()
}

fn bench(c: &mut Criterion) {
    let records = events(50_000);
    let time = TimeConfig { allowed_lateness: Duration::from_secs(7_200), ..TimeConfig::default() };
    let arrival = records.iter().map(|e| e.ts).max().unwrap_or_default();
    let mut group = c.benchmark_group("process");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(10);
    for (name, config) in [
        ("gallop/default-rollups", ProcessorConfig::default()),
        ("gallop/traqq-metrics", gallop_like_traqq(&ProcessorConfig::default())),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || Processor::new(&config, &time).unwrap_or_else(|e| panic!("benchmark config: {e}")),
                |mut processor| {
                    for event in &records {
                        let _ = processor.process(0, event, arrival);
                    }
                    processor.flush(0)
                },
                BatchSize::LargeInput,
            )
        });
    }
    let few = &records[..5_000];
    group.throughput(Throughput::Elements(few.len() as u64));
    group.bench_function("traqq-0.2.0", |b| {
        b.iter(|| run_traqq_with(few, TraqqEntry::FromJson).unwrap_or_else(|e| panic!("traqq: {e}")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! `gallop-bench process`: the processor core and `traqq` 0.2.0 side by side on the same
//! deterministic stream, in one process and one run, plus JSON decode and memory figures.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gallop_bench::{
    decode::{decode_bench, Decoder},
    synth::{encode_messages, generate, SynthConfig},
    traqq_side::{gallop_like_traqq, TraqqEntry, TraqqRunner},
};
use gallop_config::{ProcessorConfig, TimeConfig};
use gallop_event::EventRecord;
use gallop_processor::Processor;

/// Options of `gallop-bench process`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProcessBench {
    /// Events through Gallop's core (generated and processed in chunks, so memory stays flat).
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Events through traqq (0 skips it); traqq runs on the first N of the same stream.
    #[arg(long, default_value_t = 2_000_000)]
    traqq_events: usize,
    /// Seed of the synthetic stream.
    #[arg(long, default_value_t = 0x006a_110b)]
    seed: u64,
    /// Events per broker message for the decode measurements.
    #[arg(long, default_value_t = 100)]
    per_message: usize,
    /// Event-time span of the stream in minutes. A pipeline doing millions of events per
    /// second sees many events per minute bucket; a day-long span models a small site.
    #[arg(long, default_value_t = 60)]
    span_minutes: i64,
    /// Only the decode + core runs over broker messages (NDJSON and block), e.g. under a
    /// profiler.
    #[arg(long)]
    messages_only: bool,
    /// Times each decode + core run is repeated (a fresh processor each time).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Only the compact blocks in the decode + core runs (skips NDJSON), e.g. under a profiler.
    #[arg(long)]
    blocks_only: bool,
}

/// Events generated and processed at a time.
const CHUNK: usize = 100_000;
/// Events encoded into broker messages for the decode measurements.
const DECODE_SAMPLE: usize = 500_000;

pub(crate) fn process(
    options: &ProcessBench,
    processor_config: &ProcessorConfig,
    time: &TimeConfig,
) -> anyhow::Result<()> {
    let synth = SynthConfig {
        seed: options.seed,
        events: options.events,
        span_ms: options.span_minutes.max(1) * 60_000,
        ..SynthConfig::default()
    };
    // The generator spreads events over one day; let every one of them count as on time.
    let time = TimeConfig { allowed_lateness: Duration::from_secs(2 * 86_400), ..time.clone() };
    println!(
        "gallop-bench process: {} events over {} min, seed {:#x}: {} visitors, {} pages and {} referrers (Zipf), {} countries, {} sites",
        options.events,
        options.span_minutes,
        synth.seed,
        synth.visitors,
        synth.pages,
        synth.referrers,
        synth.countries,
        synth.sites
    );

    let rss_start = rss_bytes();
    let arrival = synth.start_ms + synth.span_ms;
    if options.messages_only {
        let sample: Vec<EventRecord> =
            generate(&SynthConfig { events: DECODE_SAMPLE.min(options.events), ..synth.clone() }).collect();
        let (messages, blocks) = encode_both(&sample, options.per_message);
        return run_messages(processor_config, &time, arrival, &messages, &blocks, options);
    }
    // Memory first, while the process is fresh: one state built without flushing, measured
    // as resident-set growth per live key (later runs leave freed memory to be reused).
    let sample = CHUNK.min(options.events);
    let records: Vec<EventRecord> = generate(&SynthConfig { events: sample, ..synth.clone() }).collect();
    let roomy =
        ProcessorConfig { flush_keys: usize::MAX / 2, max_live_keys: usize::MAX / 2, ..processor_config.clone() };
    let mut holder = Processor::new(&roomy, &time)?;
    let before = rss_bytes();
    for event in &records {
        holder.process(0, event, arrival)?;
    }
    let after = rss_bytes();
    let per_key = after.saturating_sub(before) as f64 / holder.live_keys().max(1) as f64;
    println!(
        "  state size                         {:>12.0} bytes per live key ({} keys from {} events, default rollups)",
        per_key,
        holder.live_keys(),
        sample
    );
    drop(holder);

    // (a) Gallop's core on decoded records: first with the metrics traqq is configured for,
    // then with the full default dashboard rollups.
    let equivalent = gallop_like_traqq(processor_config);
    // Each twice: the first run also pays for faulting in fresh memory (the kernel zeroing
    // pages was 16 % of a profile); the second reuses what the allocator kept, as a
    // long-running processor does from its second flush on. The ratio uses the second.
    run_core("gallop core, traqq's metrics #1", &equivalent, &time, &synth)?;
    let (core_rate, peak_keys) = run_core("gallop core, traqq's metrics #2", &equivalent, &time, &synth)?;
    run_core("gallop core, default rollups #1", processor_config, &time, &synth)?;
    let (dashboard_rate, dashboard_peak) =
        run_core("gallop core, default rollups #2", processor_config, &time, &synth)?;
    let peak_keys = peak_keys.max(dashboard_peak);
    println!("  peak live keys (flush at 200 000)  {peak_keys:>12}");
    println!(
        "  peak RSS after the core runs       {:>12.1} MiB (the decode and traqq runs below hold their inputs in memory)",
        peak_rss_bytes() as f64 / 1_048_576.0
    );
    let mut chunk: Vec<EventRecord> = Vec::with_capacity(CHUNK);

    // (b) Decoding broker messages, separately.
    let sample: Vec<EventRecord> =
        generate(&SynthConfig { events: DECODE_SAMPLE.min(options.events), ..synth.clone() }).collect();
    let (messages, blocks) = encode_both(&sample, options.per_message);
    let bytes_per_event =
        |messages: &[Vec<u8>]| messages.iter().map(Vec::len).sum::<usize>() as f64 / sample.len() as f64;
    println!(
        "  broker bytes per event             {:>12.1} NDJSON, {:.1} compact block ({} events per message)",
        bytes_per_event(&messages),
        bytes_per_event(&blocks),
        options.per_message
    );
    drop(sample);
    let decoded = decode_bench(&messages, 3);
    let baseline = decoded.first().map(|d| d.events_per_sec()).unwrap_or(0.0);
    for result in &decoded {
        println!(
            "  decode {:<26} {:>12.0} events/s   ({:.2}× serde_json/owned{})",
            result.decoder,
            result.events_per_sec(),
            result.events_per_sec() / baseline.max(f64::MIN_POSITIVE),
            if result.errors > 0 { format!(", {} errors", result.errors) } else { String::new() }
        );
    }

    let started = Instant::now();
    let mut block_events = 0;
    for _ in 0..3 {
        for block in &blocks {
            block_events += gallop_event::decode_block(block).map_or(0, |events| events.len());
        }
    }
    println!(
        "  decode compact block               {:>12.0} events/s   ({:.2}× serde_json/owned)",
        block_events as f64 / started.elapsed().as_secs_f64(),
        block_events as f64 / started.elapsed().as_secs_f64() / baseline.max(f64::MIN_POSITIVE)
    );

    // (c) Gallop decode + core, as the consumer runs it.
    run_messages(processor_config, &time, arrival, &messages, &blocks, options)?;
    let _ = Decoder::ALL;

    // (d) traqq on the same stream.
    if options.traqq_events > 0 {
        let mut runner = TraqqRunner::new(TraqqEntry::FromJson);
        let mut stream = generate(&SynthConfig { events: options.traqq_events, ..synth.clone() });
        loop {
            chunk.clear();
            chunk.extend(stream.by_ref().take(CHUNK));
            if chunk.is_empty() {
                break;
            }
            runner.feed(&chunk).context("traqq rejected an event")?;
        }
        let run = runner.finish().context("reading traqq's results")?;
        let traqq_rate = run.events_per_sec();
        println!(
            "  traqq 0.2.0 (same metrics)        {:>12.0} events/s   ({} events in {:.2?}; {} storage ops)",
            traqq_rate, run.events, run.elapsed, run.storage_ops
        );
        println!(
            "  ratio gallop / traqq              {:>12.1}× with traqq's metrics, {:.1}× with the default rollups",
            core_rate / traqq_rate.max(f64::MIN_POSITIVE),
            dashboard_rate / traqq_rate.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "  peak RSS at the end                {:>12.1} MiB (process start {:.1} MiB)",
        peak_rss_bytes() as f64 / 1_048_576.0,
        rss_start as f64 / 1_048_576.0
    );
    Ok(())
}

/// `records` as broker messages of `per_message` events: NDJSON, and compact blocks.
fn encode_both(records: &[EventRecord], per_message: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let messages = encode_messages(records, per_message);
    let blocks = records
        .chunks(per_message.max(1))
        .map(|chunk| {
            let mut block = Vec::new();
            gallop_event::encode_block(chunk, &mut block);
            block
        })
        .collect();
    (messages, blocks)
}

/// Gallop decode + core, as the consumer runs it: `process_message` decodes (NDJSON into
/// borrowed views, or a compact block) and aggregates, flushing at `processor.flush_keys`.
fn run_messages(
    processor_config: &ProcessorConfig,
    time: &TimeConfig,
    arrival: i64,
    messages: &[Vec<u8>],
    blocks: &[Vec<u8>],
    options: &ProcessBench,
) -> anyhow::Result<()> {
    let formats = [("NDJSON", messages), ("block", blocks)];
    let formats = formats.into_iter().filter(|(format, _)| !options.blocks_only || *format == "block");
    for (format, messages) in formats.flat_map(|f| std::iter::repeat_n(f, options.rounds.max(1))) {
        let mut full = Processor::new(processor_config, time)?;
        let started = Instant::now();
        let cpu_started = thread_cpu_ns();
        for (offset, message) in messages.iter().enumerate() {
            full.process_message(0, offset as u64, message, arrival)?;
            if full.should_flush(0) {
                full.flush(0);
            }
        }
        full.flush(0);
        let decoded_events = full.stats().events;
        let full_rate = decoded_events as f64 / started.elapsed().as_secs_f64();
        // On a shared machine the wall clock also counts time other work took the core;
        // the thread's own CPU time does not, so the two together tell noise from cost.
        let cpu_rate = match (cpu_started, thread_cpu_ns()) {
            (Some(from), Some(to)) if to > from => format!("{:.0}", decoded_events as f64 * 1e9 / (to - from) as f64),
            _ => "?".to_owned(),
        };
        println!(
            "  gallop decode + core, {format:<13}{:>12.0} events/s   ({cpu_rate} per CPU-second; process_message over {} messages, {} events, default rollups)",
            full_rate,
            messages.len(),
            decoded_events
        );
    }
    Ok(())
}

/// Runs the core over the stream, generated and processed chunk by chunk (generation not
/// timed), flushing at 200 000 live keys. Prints and returns events/s and peak live keys.
fn run_core(
    label: &str,
    config: &ProcessorConfig,
    time: &TimeConfig,
    synth: &SynthConfig,
) -> anyhow::Result<(f64, usize)> {
    let mut processor = Processor::new(config, time)?;
    let mut stream = generate(synth);
    let mut chunk: Vec<EventRecord> = Vec::with_capacity(CHUNK);
    let mut core = Duration::ZERO;
    let (mut rows, mut boards, mut peak_keys) = (0usize, 0usize, 0usize);
    let arrival = synth.start_ms + synth.span_ms;
    let clock = Instant::now();
    loop {
        chunk.clear();
        chunk.extend(stream.by_ref().take(CHUNK));
        if chunk.is_empty() {
            break;
        }
        let started = Instant::now();
        for event in &chunk {
            processor.process(0, event, arrival)?;
            if processor.should_flush(wall_ms(clock)) || processor.is_full() {
                peak_keys = peak_keys.max(processor.live_keys());
                let delta = processor.flush(wall_ms(clock));
                rows += delta.rows.len();
                boards += delta.leaderboards.len();
            }
        }
        core += started.elapsed();
    }
    peak_keys = peak_keys.max(processor.live_keys());
    let started = Instant::now();
    let delta = processor.flush(wall_ms(clock));
    core += started.elapsed();
    rows += delta.rows.len();
    boards += delta.leaderboards.len();
    let stats = processor.stats();
    let rate = stats.events as f64 / core.as_secs_f64();
    println!(
        "  {label:<34}{rate:>12.0} events/s   ({} events in {core:.2?}; {rows} rows + {boards} leaderboards in {} flushes; late {}, invalid {})",
        stats.events,
        stats.flushes,
        stats.late_dropped,
        stats.invalid.values().sum::<u64>()
    );
    Ok((rate, peak_keys))
}

/// Nanoseconds this thread has run on a CPU, from /proc (`None` where unavailable).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

fn wall_ms(clock: Instant) -> i64 {
    i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// Resident set size now, from /proc (0 where unavailable).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Peak resident set size (VmHWM), from /proc (0 where unavailable).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

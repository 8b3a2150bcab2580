//! Side-by-side numbers: traqq 0.2.0 on Gallop's default metrics, and JSON decoders on
//! Gallop's broker messages, over one deterministic synthetic stream.
//!
//! ```text
//! cargo run --release -p gallop-bench --example compare -- --events 2000000
//! ```
//!
//! Options: `--events N` (2,000,000), `--seed S` (the `SynthConfig` default),
//! `--per-message N` records per broker message (100), `--decode-events N` events whose
//! messages the decoders get (all, at most 2,000,000: decoding speed does not depend on the
//! stream's length and the messages are held in memory), `--rounds N` decoding rounds (2),
//! `--traqq-entry from-json|prebuilt|both` (from-json), `--skip-traqq`, `--skip-decode`.
//!
//! The stream is generated and fed to traqq in chunks, so 10M events never sit in memory at
//! once.

use std::error::Error;
use std::time::{Duration, Instant};

use gallop_bench::decode::decode_bench;
use gallop_bench::synth::{encode_messages, generate, SynthConfig};
use gallop_bench::traqq_side::{TraqqEntry, TraqqRun, TraqqRunner};

struct Options {
    events: usize,
    seed: u64,
    per_message: usize,
    decode_events: Option<usize>,
    rounds: usize,
    entries: Vec<TraqqEntry>,
    skip_traqq: bool,
    skip_decode: bool,
}

fn parse() -> Result<Options, Box<dyn Error>> {
    let mut options = Options {
        events: 2_000_000,
        seed: SynthConfig::default().seed,
        per_message: 100,
        decode_events: None,
        rounds: 2,
        entries: vec![TraqqEntry::FromJson],
        skip_traqq: false,
        skip_decode: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--events" => options.events = value()?.replace('_', "").parse()?,
            "--seed" => options.seed = value()?.parse()?,
            "--per-message" => options.per_message = value()?.parse()?,
            "--decode-events" => options.decode_events = Some(value()?.replace('_', "").parse()?),
            "--rounds" => options.rounds = value()?.parse()?,
            "--traqq-entry" => {
                options.entries = match value()?.as_str() {
                    "from-json" => vec![TraqqEntry::FromJson],
                    "prebuilt" => vec![TraqqEntry::Prebuilt],
                    "both" => vec![TraqqEntry::FromJson, TraqqEntry::Prebuilt],
                    other => return Err(format!("--traqq-entry: unknown {other}").into()),
                }
            }
            "--skip-traqq" => options.skip_traqq = true,
            "--skip-decode" => options.skip_decode = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(options)
}

fn rate(events: usize, elapsed: Duration) -> String {
    let per_sec = events as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    format!("{:>12.0} events/s  ({events} events in {:.2} s)", per_sec, elapsed.as_secs_f64())
}

fn report(run: &TraqqRun) {
    println!("traqq 0.2.0 ({:?}): {}", run.entry, rate(run.events, run.elapsed));
    println!("  input preparation (not timed above): {:.2} s", run.prep_elapsed.as_secs_f64());
    let counted: i64 = run.counters.get("event").map_or(0, |fields| fields.values().sum());
    println!(
        "  check: event counter total {counted} (events {}), {} storage ops, {} metric keys, {} sites",
        run.events, run.storage_ops, run.metric_keys, run.sites
    );
    println!(
        "  check: {} unique visitors (sum over sites), value {:.2} over {} events, top referrer {:?}",
        run.unique_visitors,
        run.value_sum,
        run.value_count,
        run.top_referrers.first()
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let options = parse()?;
    let config = SynthConfig { events: options.events, seed: options.seed, ..SynthConfig::default() };
    let decode_events = options.decode_events.unwrap_or(options.events.min(2_000_000)).min(options.events);
    println!(
        "stream: {} events, seed {:#x}, {} visitors, {} pages, {} referrers, {} sites; {} per message",
        config.events, config.seed, config.visitors, config.pages, config.referrers, config.sites, options.per_message
    );

    let mut runners: Vec<TraqqRunner> =
        if options.skip_traqq { Vec::new() } else { options.entries.iter().map(|&e| TraqqRunner::new(e)).collect() };
    let mut messages = Vec::new();
    let mut generated = 0;
    let mut generation = Duration::ZERO;
    let mut stream = generate(&config);
    let started = Instant::now();
    loop {
        let start = Instant::now();
        let chunk: Vec<_> = stream.by_ref().take(100_000).collect();
        generation += start.elapsed();
        if chunk.is_empty() {
            break;
        }
        if !options.skip_decode && generated < decode_events {
            let take = chunk.len().min(decode_events - generated);
            messages.extend(encode_messages(&chunk[..take], options.per_message));
        }
        generated += chunk.len();
        for runner in &mut runners {
            runner.feed(&chunk)?;
        }
    }
    println!("generator: {}", rate(generated, generation));

    for runner in runners {
        report(&runner.finish()?);
    }
    println!("(traqq part, all steps: {:.1} s wall)", started.elapsed().as_secs_f64());

    if !options.skip_decode {
        let bytes: usize = messages.iter().map(Vec::len).sum();
        println!(
            "decode: {} messages, {} events, {:.1} MB ({:.0} B/event), {} rounds",
            messages.len(),
            decode_events,
            bytes as f64 / 1e6,
            bytes as f64 / decode_events.max(1) as f64,
            options.rounds
        );
        for result in decode_bench(&messages, options.rounds) {
            let mb_per_sec =
                (bytes * options.rounds) as f64 / 1e6 / result.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
            println!(
                "  {:<20} {}  {:>6.0} MB/s  errors {}",
                result.decoder,
                rate(result.events, result.elapsed),
                mb_per_sec,
                result.errors
            );
        }
    }
    Ok(())
}

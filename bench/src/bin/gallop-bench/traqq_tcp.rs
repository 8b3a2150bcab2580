//! `gallop-bench traqq-tcp`: traqq's TCP protocol, Gallop's listener against traqq 0.2.0's
//! own server, in one run on this machine.
//!
//! traqq's server (in-memory storage, the mapping of `--mapping`) runs in this process on
//! a free port; Gallop's is a running `gallop run` (or `gallop ingest` + `gallop process`)
//! with `[traqq]` enabled for the same mapping (`scripts/bench-traqq.sh` starts one). The
//! same seeded `record` lines go to each, two ways:
//!
//! - **pipelined**: `--connections` connections, each with a writer thread sending its share
//!   of the lines back to back and a reader thread reading the answers, as a client that
//!   does not wait for each answer does;
//! - **traqq's client**: `traqq::client::Client::record`, one line and one answer at a time
//!   on one connection (`--client-events` of them), as traqq's own client works.
//!
//! Each prints events per second (answers received, all `success`) and the answers that
//! were errors. traqq answers once its in-memory maps are updated; Gallop once the broker
//! acknowledged the event (stored durably, to be counted by the processor).

use std::{
    io::{BufRead, BufReader, BufWriter, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

/// Options of `gallop-bench traqq-tcp`.
#[derive(Debug, clap::Args)]
pub(crate) struct TraqqTcpBench {
    /// Address of Gallop's traqq listener.
    #[arg(long, default_value = "127.0.0.1:9876")]
    gallop: String,
    /// traqq `TraqqConfig` JSON whose mapping both servers use (Gallop's must have been
    /// made from it with `gallop traqq-config`).
    #[arg(long)]
    mapping: std::path::PathBuf,
    /// Events sent pipelined to each server.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Connections the pipelined events are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Events recorded through traqq's own client (one at a time) on each server.
    #[arg(long, default_value_t = 2_000)]
    client_events: usize,
    /// Seed of the event stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Seeded traqq events: 5 names, 6 countries, 3 plans, 12 referrers, 5 000 addresses,
/// amounts on a third, and two properties no metric uses.
pub(crate) fn events(seed: u64, n: usize) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let names = ["purchase", "signup", "view", "click", "share"];
    let geos = ["US", "DE", "FR", "BR", "JP", "IN"];
    let plans = ["free", "pro", "team"];
    (0..n)
        .map(|i| {
            let mut event = json!({
                "event": names[rng.random_range(0..names.len())],
                "ip": format!("10.{}.{}.{}", rng.random_range(0..5), rng.random_range(0..100), rng.random_range(0..10)),
                "geo": geos[rng.random_range(0..geos.len())],
                "plan": plans[rng.random_range(0..plans.len())],
                "ref": format!("https://r{}.test/p", rng.random_range(0..12)),
                "session_id": format!("s{i}"),
                "user_agent": "Mozilla/5.0",
            });
            if rng.random_ratio(1, 3) {
                event["amount"] = json!(f64::from(rng.random_range(1..10_000)) / 100.0);
            }
            event
        })
        .collect()
}

/// What one way of sending did.
struct Run {
    events: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Run {
    fn print(&self, server: &str, how: &str) {
        println!(
            "{server:<7} {how:<24} {:>9} events  {:>8.2} s  {:>10.0} events/s  {} errors{}",
            self.events,
            self.elapsed.as_secs_f64(),
            self.events as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            self.errors,
            self.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        );
    }
}

pub(crate) fn traqq_tcp(options: &TraqqTcpBench) -> anyhow::Result<()> {
    let config_text =
        std::fs::read_to_string(&options.mapping).with_context(|| format!("reading {}", options.mapping.display()))?;
    let traqq_address = start_traqq(&config_text)?;
    let events = events(options.seed, options.events.max(options.client_events));
    let lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut line = serde_json::to_vec(&json!({"cmd": "record", "event": e})).unwrap_or_default();
            line.push(b'\n');
            line
        })
        .collect();
    let lines = Arc::new(lines);
    println!(
        "traqq's TCP protocol, {} events pipelined over {} connections, {} through traqq's client; \
         traqq 0.2.0 server at {traqq_address} (in memory), Gallop at {}",
        options.events, options.connections, options.client_events, options.gallop
    );
    for (server, address) in [("traqq", traqq_address.as_str()), ("gallop", options.gallop.as_str())] {
        let run = pipelined(address, &lines[..options.events], options.connections)?;
        run.print(server, "pipelined");
        let run = one_by_one(address, &events[..options.client_events])?;
        run.print(server, "traqq::client, 1 by 1");
    }
    Ok(())
}

/// traqq's own server with the configuration `config_text`, on a free port.
fn start_traqq(config_text: &str) -> anyhow::Result<String> {
    let mut config: traqq::TraqqConfig = serde_json::from_str(config_text).context("a traqq TraqqConfig")?;
    // traqq 0.2.0 refuses a pattern in both add and add_value (see traqq_side.rs).
    let add_value = std::mem::take(&mut config.mapping.add_value);
    let mut traqq = traqq::Traqq::new(config, Box::new(traqq::storage::memory::MemoryStorage::new()), "traqq")
        .map_err(|e| anyhow::anyhow!("traqq refuses the configuration: {e}"))?;
    traqq.config.mapping.add_value = add_value;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address = format!("127.0.0.1:{port}");
    let served = address.clone();
    std::thread::spawn(move || traqq::server::run(Arc::new(traqq), &served));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&address).is_err() {
        if Instant::now() > deadline {
            bail!("traqq's server did not start at {address}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(address)
}

/// Sends `lines` over `connections` connections without waiting for answers, and reads
/// every answer.
fn pipelined(address: &str, lines: &[Vec<u8>], connections: usize) -> anyhow::Result<Run> {
    let connections = connections.max(1);
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(lines.len().div_ceil(connections).max(1))
            .map(|share| {
                scope.spawn(move || -> anyhow::Result<(usize, Option<String>)> {
                    let stream = TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
                    let reader = stream.try_clone()?;
                    let writer = scope.spawn(move || -> std::io::Result<()> {
                        let mut out = BufWriter::with_capacity(256 * 1024, stream);
                        for line in share {
                            out.write_all(line)?;
                        }
                        out.flush()
                    });
                    let (errors, first) = read_answers(reader, share.len())?;
                    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
                    Ok((errors, first))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("connection panicked"))?).collect::<Vec<_>>()
    });
    let mut run = Run { events: lines.len(), errors: 0, first_error: None, elapsed: started.elapsed() };
    for result in results {
        let (errors, first) = result?;
        run.errors += errors;
        run.first_error = run.first_error.or(first);
    }
    Ok(run)
}

/// Reads `n` answers: (errors, the first error).
fn read_answers(stream: TcpStream, n: usize) -> anyhow::Result<(usize, Option<String>)> {
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let (mut errors, mut first) = (0, None);
    let mut line = String::new();
    for i in 0..n {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the server closed the connection after {i} of {n} answers");
        }
        if !line.starts_with("{\"success\":true") {
            errors += 1;
            first.get_or_insert_with(|| line.trim().to_owned());
        }
    }
    Ok((errors, first))
}

/// Records `events` with traqq's own client, waiting for each answer.
fn one_by_one(address: &str, events: &[Value]) -> anyhow::Result<Run> {
    let mut client = traqq::client::Client::connect(address).with_context(|| format!("connecting to {address}"))?;
    let started = Instant::now();
    let (mut errors, mut first_error) = (0, None);
    for event in events {
        let response = client.record(event.clone()).map_err(|e| anyhow::anyhow!("traqq's client: {e}"))?;
        if !response.success {
            errors += 1;
            first_error.get_or_insert(response.error.unwrap_or_default());
        }
    }
    Ok(Run { events: events.len(), errors, first_error, elapsed: started.elapsed() })
}

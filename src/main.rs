//! `gallop`: the one binary. Subcommands run the pieces of the pipeline; all of them read
//! the same configuration (defaults < `gallop.toml` < `GALLOP_*` environment).

mod commands;
mod logging;
mod process;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// mimalloc: the gateway allocates small, short-lived buffers per request, and glibc's
/// malloc/free showed up as ~12% of its CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Privacy-first analytics pipeline: ingest, process, store.
#[derive(Debug, Parser)]
#[command(name = "gallop", version, about)]
struct Cli {
    /// TOML config file (else $GALLOP_CONFIG; else built-in defaults and GALLOP_* variables).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Write logs as JSON lines (overrides log.format).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ingest gateway: HTTP (and the input topic, traqq's TCP) in, the broker (NATS JetStream or Kafka) out.
    Ingest,
    /// Run the processor: the broker's partitions (NATS JetStream or Kafka) in, aggregates into ClickHouse.
    Process,
    /// Run gateway and processor in one process (the quick start).
    Run,
    /// Create or upgrade the ClickHouse database and tables.
    Migrate,
    /// Print a site's numbers for a time range.
    Query(gallop_cli::QueryArgs),
    /// Every rollup row of a site and time range as CSV or NDJSON: a copy of your data.
    Export(gallop_cli::ExportArgs),
    /// Publish NDJSON events (a file or stdin) to the input subject or topic, for backfills and imports.
    Publish(gallop_cli::PublishArgs),
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// Exit 0 when URL answers with a 2xx status within 2 s, else 1: a health check for
    /// container images that have no curl (`gallop probe http://127.0.0.1:8080/ready`).
    Probe {
        /// The URL to GET.
        url: String,
    },
    /// Print the hash of an API key (read from stdin, one line) to put in
    /// `ingest.auth.event_keys` or `ingest.auth.metrics_keys`: the config holds hashes only.
    HashKey,
    /// Turn a traqq `TraqqConfig` (JSON, a file or stdin) into Gallop's `[traqq]` section
    /// and the processor rules its metrics need; prints TOML to add to gallop.toml.
    TraqqConfig(TraqqConfigArgs),
    /// Benchmarks that print their numbers.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `gallop traqq-config`'s arguments.
#[derive(Debug, clap::Args)]
struct TraqqConfigArgs {
    /// The traqq configuration as JSON (`-` or nothing: stdin).
    file: Option<PathBuf>,
    /// The Gallop site traqq events are recorded under.
    #[arg(long)]
    site: String,
    /// Where the traqq listener listens.
    #[arg(long, default_value = "127.0.0.1:9876")]
    listen: String,
}

/// Benchmarks of the pipeline as it runs. The side-by-side comparisons with traqq and
/// other JSON decoders are in the separate `gallop-bench` binary.
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The whole pipeline on this machine (gateway, broker, processor, ClickHouse) end to end.
    Pipeline(gallop_bench::pipeline::PipelineBench),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::TraqqConfig(args) = &cli.command {
        // Needs no config: it writes part of one.
        return match commands::traqq_config(args.file.as_deref(), &args.site, &args.listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gallop: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if matches!(cli.command, Command::HashKey) {
        // Needs no config: an operator hashes a key before writing it into one.
        return match commands::hash_key() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gallop: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match gallop_config::load(&gallop_config::Sources::standard(cli.config.clone())) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gallop: {e}");
            return ExitCode::from(2);
        }
    };
    // Rollup dimensions are checked by the processor, which knows the fields.
    if let Err(e) = gallop_processor::Processor::new(&config.processor, &config.time) {
        eprintln!("gallop: config is invalid:\n  - {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Config => commands::print_config(&config),
        Command::HashKey | Command::TraqqConfig(_) => Ok(()),
        Command::Probe { url } => commands::probe(&url),
        Command::Bench(BenchCommand::Pipeline(options)) => {
            gallop_bench::pipeline::pipeline(&options, &config, cli.config).map_err(Into::into)
        }
        Command::Ingest => {
            logging::init(&config.log, cli.log_json);
            commands::ingest(config)
        }
        Command::Process => {
            logging::init(&config.log, cli.log_json);
            commands::process(config)
        }
        Command::Run => {
            logging::init(&config.log, cli.log_json);
            commands::run(config)
        }
        Command::Migrate => {
            logging::init(&config.log, cli.log_json);
            commands::migrate(config)
        }
        Command::Query(args) => commands::query(&config, &args),
        Command::Export(args) => commands::export(&config, &args),
        Command::Publish(args) => commands::publish(&config, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gallop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `gallop-bench`: the benchmarks that compare Gallop with other engines and decoders. They
//! live outside the `gallop` binary so that traqq, sonic-rs and simd-json never ship in it.

mod process;
mod traqq_tcp;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// The same allocator as the `gallop` binary, so the core is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Side-by-side benchmarks of Gallop's processor core and of its traqq protocol listener.
#[derive(Debug, Parser)]
#[command(name = "gallop-bench", version, about)]
struct Cli {
    /// Gallop config file whose processor and time settings the core runs with (else
    /// $GALLOP_CONFIG; else built-in defaults and GALLOP_* variables).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The processor core and traqq 0.2.0 side by side on one synthetic stream, with JSON
    /// decoders compared.
    Process(process::ProcessBench),
    /// traqq's TCP protocol: Gallop's listener (a running `gallop run` with `[traqq]`) and
    /// traqq 0.2.0's own server, side by side.
    TraqqTcp(traqq_tcp::TraqqTcpBench),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match gallop_config::load(&gallop_config::Sources::standard(cli.config.clone())) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gallop-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Process(options) => process::process(&options, &config.processor, &config.time),
        Command::TraqqTcp(options) => traqq_tcp::traqq_tcp(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gallop-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `annals` command.
//!
//! `annals serve` runs a node with working defaults (data in `./annals-data`, HTTP on
//! 127.0.0.1:8181); `annals audit` re-checks a data directory from its bytes.

mod audit;
mod duration;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "annals",
    version,
    about = "annals: a verifiable time-series ledger for sensor data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Recompute every hash and signature in a data directory (read-only; safe on a running node).
    Audit {
        /// Data directory to audit.
        #[arg(long, env = "ANNALS_DATA_DIR", default_value = "annals-data")]
        data_dir: PathBuf,
        /// Print a JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Audit { data_dir, json } => audit::run(&data_dir, json),
    }
}

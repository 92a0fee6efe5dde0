//! The `annals` command.
//!
//! `annals serve` runs a node with working defaults (data in `./annals-data`, HTTP on
//! 127.0.0.1:8181); `annals audit` re-checks a data directory from its bytes; `annals query`
//! and `annals shell` run SQL on a running node over its HTTP API; `annals proof` fetches a row's
//! proof from a running node and `annals verify` checks one offline with the independent
//! verifier (`annals-verify`); `annals token` creates, lists and revokes API tokens.

mod audit;
mod client;
mod duration;
mod malloc;
mod proof;
mod query;
mod serve;
mod shell;
mod size;
mod token;
mod verify;

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

// Parsed once at start; the size of `serve`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Run one SQL query on a running node and print the result.
    Query(query::QueryArgs),
    /// Interactive SQL shell on a running node.
    Shell(shell::ShellArgs),
    /// Fetch a row's proof document from a running node (print it or save it with --output).
    Proof(proof::ProofArgs),
    /// Verify a proof document offline against trusted validator keys (independent verifier).
    Verify(verify::VerifyArgs),
    /// Create, list or revoke API tokens on a running node (needs an admin token).
    Token(token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Audit { data_dir, json } => audit::run(&data_dir, json),
        Command::Query(args) => query::run(args),
        Command::Shell(args) => shell::run(args),
        Command::Proof(args) => proof::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Token(args) => token::run(args),
    }
}

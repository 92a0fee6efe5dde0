//! `annals query "SQL"`: runs one query on a running server and prints its result.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::client::{Client, QueryFailure, HOST_DEFAULT};

/// Result formats (as the server names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Pretty,
    Json,
    Jsonl,
    Csv,
    Parquet,
}

impl OutputFormat {
    fn name(self) -> &'static str {
        match self {
            OutputFormat::Pretty => "pretty",
            OutputFormat::Json => "json",
            OutputFormat::Jsonl => "jsonl",
            OutputFormat::Csv => "csv",
            OutputFormat::Parquet => "parquet",
        }
    }
}

/// Flags of `annals query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The SQL (several statements separated by `;`: the last one's result is printed).
    sql: String,
    /// Database whose tables are named without a prefix. Without it, tables are named
    /// `db.table` and `system.*` tables without a prefix.
    #[arg(long, env = "ANNALS_DB")]
    db: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "pretty")]
    format: OutputFormat,
    /// Server address.
    #[arg(long, env = "ANNALS_HOST", default_value = HOST_DEFAULT)]
    host: String,
    /// API token (sent as `Authorization: Bearer`); not needed with `--without-auth`.
    #[arg(long, env = "ANNALS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the ledger as of this checkpoint epoch.
    #[arg(long)]
    as_of_epoch: Option<u64>,
    /// Write the result to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// The database a client command queries when none is given: `system`, where every
/// database's table is reachable as `db.table`.
pub(crate) fn db_or_system(db: Option<&str>) -> &str {
    db.filter(|d| !d.is_empty()).unwrap_or("system")
}

pub(crate) fn run(args: QueryArgs) -> ExitCode {
    let client = match Client::new(&args.host, args.token.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("annals query: {e}");
            return ExitCode::FAILURE;
        }
    };
    let db = db_or_system(args.db.as_deref());
    let result = match &args.output {
        Some(path) => match File::create(path) {
            Ok(f) => {
                let mut w = BufWriter::new(f);
                let r =
                    client.query_into(db, &args.sql, args.format.name(), args.as_of_epoch, &mut w);
                if r.is_err() {
                    drop(w);
                    // Leave no partial file that looks like a result.
                    let _ = std::fs::remove_file(path);
                }
                r
            }
            Err(e) => {
                eprintln!("annals query: cannot create {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => {
            let stdout = std::io::stdout();
            if args.format == OutputFormat::Parquet && stdout.is_terminal() {
                eprintln!(
                    "annals query: not writing Parquet to a terminal: use --output FILE or redirect standard output"
                );
                return ExitCode::from(2);
            }
            let mut w = stdout.lock();
            client.query_into(db, &args.sql, args.format.name(), args.as_of_epoch, &mut w)
        }
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        // A closed pipe (`annals query ... | head`) is not a failure.
        Err(QueryFailure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("annals query: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `annals shell`: an interactive SQL shell on a running server.
//!
//! Statements end with `;` and may span lines; `\q`, `exit` or Ctrl-D quit; `\d` lists tables,
//! `\d TABLE` its columns, `\c DB` switches database, `\?` prints help. History is kept in
//! `$ANNALS_HISTORY` or `$HOME/.annals_history`. With standard input not a terminal, lines are
//! read plainly (rustyline's fallback), so the shell runs scripts: `annals shell < file.sql`;
//! it then exits non-zero if any statement failed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Config, Editor};

use crate::client::{Client, QueryFailure, HOST_DEFAULT};
use crate::query::db_or_system;

/// Lines of history kept.
const HISTORY_MAX: usize = 10_000;

/// Flags of `annals shell`.
#[derive(Debug, Args)]
pub(crate) struct ShellArgs {
    /// Database whose tables are named without a prefix (switch with `\c DB`).
    #[arg(long, env = "ANNALS_DB")]
    db: Option<String>,
    /// Server address.
    #[arg(long, env = "ANNALS_HOST", default_value = HOST_DEFAULT)]
    host: String,
    /// API token (sent as `Authorization: Bearer`); not needed with `--without-auth`.
    #[arg(long, env = "ANNALS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// History file (default `$HOME/.annals_history`).
    #[arg(long, env = "ANNALS_HISTORY")]
    history: Option<PathBuf>,
}

const HELP: &str = "\
Statements end with ';' and may span lines. Results print as tables.
  \\d          list tables (of the current database, or all without one)
  \\d TABLE    columns of TABLE
  \\c DB       use database DB (\\c alone: no database; name tables db.table)
  \\q, exit    quit (also Ctrl-D); Ctrl-C clears the statement being typed
  \\?          this help";

/// What one input line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Quit,
    Help,
    ListTables,
    Describe(String),
    Use(Option<String>),
    Unknown(String),
    /// Part of a statement.
    Sql,
}

/// Classifies a line typed at the start of a statement.
fn classify(line: &str) -> Line {
    let t = line.trim().trim_end_matches(';').trim();
    match t.to_ascii_lowercase().as_str() {
        "\\q" | "exit" | "quit" => return Line::Quit,
        "\\?" | "help" | "\\h" => return Line::Help,
        "\\d" => return Line::ListTables,
        "\\c" => return Line::Use(None),
        _ => {}
    }
    if let Some(rest) = t.strip_prefix("\\d ") {
        return Line::Describe(rest.trim().to_string());
    }
    if let Some(rest) = t.strip_prefix("\\c ") {
        return Line::Use(Some(rest.trim().to_string()));
    }
    if t.starts_with('\\') {
        return Line::Unknown(t.to_string());
    }
    Line::Sql
}

/// True when `buf` holds complete statements: it ends with `;` outside a quoted string.
fn complete(buf: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut last = None;
    for c in buf.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None => {}
        }
        if !c.is_whitespace() {
            last = Some((c, quote.is_none()));
        }
    }
    quote.is_none() && last == Some((';', true))
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn history_path(arg: Option<PathBuf>) -> Option<PathBuf> {
    arg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".annals_history")))
}

pub(crate) fn run(args: ShellArgs) -> ExitCode {
    let client = match Client::new(&args.host, args.token.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("annals shell: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interactive = std::io::stdin().is_terminal();
    let config = match Config::builder().max_history_size(HISTORY_MAX) {
        Ok(b) => b.auto_add_history(false).build(),
        Err(e) => {
            eprintln!("annals shell: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rl: Editor<(), FileHistory> = match Editor::with_config(config) {
        Ok(rl) => rl,
        Err(e) => {
            eprintln!("annals shell: cannot start the line editor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = history_path(args.history);
    if let Some(h) = &history {
        // A missing file is the first run; an unreadable one only loses history.
        if h.exists() {
            if let Err(e) = rl.load_history(h) {
                eprintln!("annals shell: cannot read history {}: {e}", h.display());
            }
        }
    }
    if interactive {
        println!("annals shell on {} (\\? for help, \\q to quit)", args.host);
    }
    let mut db = args.db.filter(|d| !d.is_empty());
    let mut buf = String::new();
    let mut failed = false;
    loop {
        let prompt = match (&db, buf.is_empty()) {
            (Some(d), true) => format!("{d}> "),
            (None, true) => "annals> ".to_string(),
            (_, false) => "    -> ".to_string(),
        };
        let line = match rl.readline(&prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                buf.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("annals shell: cannot read input: {e}");
                failed = true;
                break;
            }
        };
        if buf.is_empty() {
            if line.trim().is_empty() {
                continue;
            }
            let what = classify(&line);
            if what != Line::Sql {
                let _ = rl.add_history_entry(line.trim());
            }
            let sql = match what {
                Line::Quit => break,
                Line::Help => {
                    println!("{HELP}");
                    continue;
                }
                Line::Use(d) => {
                    db = d;
                    continue;
                }
                Line::Unknown(c) => {
                    eprintln!("unknown command {c}: \\? lists the commands");
                    failed = true;
                    continue;
                }
                Line::ListTables => match &db {
                    Some(d) => format!(
                        "SELECT table_name, count(*) AS columns FROM system.tables \
                         WHERE db = {} GROUP BY table_name ORDER BY table_name",
                        sql_string(d)
                    ),
                    None => "SELECT db, table_name, count(*) AS columns FROM system.tables \
                             GROUP BY db, table_name ORDER BY db, table_name"
                        .to_string(),
                },
                Line::Describe(t) => {
                    let (d, t) = match (t.split_once('.'), &db) {
                        (Some((d, t)), _) => (d.to_string(), t.to_string()),
                        (None, Some(d)) => (d.clone(), t),
                        (None, None) => {
                            eprintln!("\\d TABLE needs a database: \\c DB first, or \\d db.table");
                            failed = true;
                            continue;
                        }
                    };
                    format!(
                        "SELECT column_name, kind, data_type FROM system.tables \
                         WHERE db = {} AND table_name = {} ORDER BY ordinal",
                        sql_string(&d),
                        sql_string(&t)
                    )
                }
                Line::Sql => {
                    buf.push_str(&line);
                    buf.push('\n');
                    if !complete(&buf) {
                        continue;
                    }
                    let sql = std::mem::take(&mut buf);
                    let _ = rl.add_history_entry(sql.trim());
                    sql
                }
            };
            failed |= !execute(&client, db.as_deref(), sql.trim());
            continue;
        }
        buf.push_str(&line);
        buf.push('\n');
        if complete(&buf) {
            let sql = std::mem::take(&mut buf);
            let _ = rl.add_history_entry(sql.trim());
            failed |= !execute(&client, db.as_deref(), sql.trim());
        }
    }
    // A statement left without its `;` at the end of a script still runs.
    if !buf.trim().is_empty() {
        let _ = rl.add_history_entry(buf.trim());
        failed |= !execute(&client, db.as_deref(), buf.trim());
    }
    if let Some(h) = &history {
        if let Err(e) = rl.save_history(h) {
            eprintln!("annals shell: cannot write history {}: {e}", h.display());
        }
    }
    if failed && !interactive {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one statement and prints its table (or the error); true if it succeeded.
fn execute(client: &Client, db: Option<&str>, sql: &str) -> bool {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match client.query_into(db_or_system(db), sql, "pretty", None, &mut out) {
        Ok(_) => true,
        Err(e) => {
            let _ = out.flush();
            drop(out);
            match e {
                QueryFailure::Server { message, .. } => eprintln!("error: {message}"),
                other => eprintln!("error: {other}"),
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, complete, Line};

    #[test]
    fn statements_end_with_a_semicolon_outside_quotes() {
        assert!(complete("SELECT 1;"));
        assert!(complete("SELECT 1\n;\n"));
        assert!(!complete("SELECT 1"));
        assert!(!complete("SELECT ';"));
        assert!(!complete("SELECT 'a;'"));
        assert!(complete("SELECT 'a;';"));
        assert!(complete("SELECT \"x\" FROM t;"));
    }

    #[test]
    fn commands() {
        assert_eq!(classify("\\q"), Line::Quit);
        assert_eq!(classify(" exit; "), Line::Quit);
        assert_eq!(classify("\\d"), Line::ListTables);
        assert_eq!(classify("\\d readings"), Line::Describe("readings".into()));
        assert_eq!(classify("\\c fleet"), Line::Use(Some("fleet".into())));
        assert_eq!(classify("\\x"), Line::Unknown("\\x".into()));
        assert_eq!(classify("SELECT 1"), Line::Sql);
    }
}

//! SQL golden files: runs every `tests/slt/*.slt` with the `sqllogictest` crate.
//!
//! Each file gets a fresh temporary data directory and engine, and one [`QueryService`] session
//! (database `db`) that lives for the whole file, so `SET annals.as_of_epoch = N` persists from
//! one record to the next, as in a PG-wire or Flight SQL connection.
//!
//! # Directives
//!
//! Besides standard sqllogictest records, two directives are written as `statement` records
//! whose first line is a SQL comment, so they could never be mistaken for SQL:
//!
//! ```text
//! statement ok
//! -- lp
//! m,host=a v=1i,x=0.5 1000000000
//! m,host=b v=2i 2000000000
//! ```
//!
//! writes the lines after `-- lp` (InfluxDB line protocol, nanosecond timestamps) to database
//! `db` (`-- lp db=other` names another) and waits until they are acknowledged, i.e. durable and
//! visible. `statement error <regex>` checks that a write is refused (e.g. a field type
//! conflict) with a message matching the regex. The directive returns the write's receipt, one
//! row per line: `line, table, branch, height, index, tx_id` (types `ITTIIT`), so it can also
//! be a `query` record, or a `let` record binding a single line's receipt to variables
//! (`let line, tbl, branch, height, idx, tx`; then `control substitution on` and `$tx`).
//!
//! ```text
//! statement ok
//! -- flush
//! ```
//!
//! seals every open block, finishes every block file and writes a checkpoint
//! ([`Engine::flush`]); it prints nothing. Without it, rows stay in memory blocks (sealed at
//! `block_rows`, but not in a finished file until `file_rows`).
//!
//! The engine of a file has 2 shards, `block_rows` 4 and `file_rows` 8, and never seals, finishes
//! files or checkpoints by age (so results do not depend on timing). A comment line
//! `# engine: block_rows=N file_rows=N shards=N` anywhere in the file overrides these.
//!
//! # Results
//!
//! Column types (strictly checked): `I` integers, `R` floats and decimals, `T` strings
//! (dictionary-encoded tags too), `B` booleans, `P` timestamps, `D` dates, `?` anything else.
//! Values use Arrow's display (`2016-01-01T00:00:00`, `1.5`), `NULL` for null and `(empty)` for
//! an empty string. Every query must be deterministic: use `ORDER BY` (or `rowsort`).
//!
//! # Environment
//!
//! - `ANNALS_SLT=substring`: run only the files whose name contains it.
//!
//! - `ANNALS_SLT_COMPLETE=1`: rewrite each file's expected results with what the engine returns
//!   (review the diff before committing: this accepts whatever the engine says).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use annals_engine::{Engine, EngineConfig, PrepareOptions, ReceiptForm, SystemClock};
use annals_query::{QueryConfig, QueryError, QueryService};
use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, ColumnType, DBOutput, Runner};

/// Database the session's unqualified names (and `-- lp` without `db=`) refer to.
const DB: &str = "db";
/// How long a write waits for queue space before the directive fails.
const SUBMIT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Result column types, as DataFusion's own sqllogictest suite names them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Col {
    Bool,
    Date,
    Int,
    Timestamp,
    Float,
    Text,
    Other,
}

impl ColumnType for Col {
    fn from_char(c: char) -> Option<Self> {
        Some(match c {
            'B' => Col::Bool,
            'D' => Col::Date,
            'I' => Col::Int,
            'P' => Col::Timestamp,
            'R' => Col::Float,
            'T' => Col::Text,
            '?' => Col::Other,
            _ => return None,
        })
    }

    fn to_char(&self) -> char {
        match self {
            Col::Bool => 'B',
            Col::Date => 'D',
            Col::Int => 'I',
            Col::Timestamp => 'P',
            Col::Float => 'R',
            Col::Text => 'T',
            Col::Other => '?',
        }
    }
}

fn col_type(t: &DataType) -> Col {
    use DataType::*;
    match t {
        Boolean => Col::Bool,
        Date32 | Date64 => Col::Date,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => Col::Int,
        Timestamp(..) => Col::Timestamp,
        Float16 | Float32 | Float64 | Decimal128(..) | Decimal256(..) => Col::Float,
        Utf8 | LargeUtf8 | Utf8View => Col::Text,
        Dictionary(_, v) => col_type(v),
        _ => Col::Other,
    }
}

/// Why a record failed on our side.
#[derive(Debug, thiserror::Error)]
enum SltError {
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("write refused: {0}")]
    Write(String),
    #[error("flush: {0}")]
    Flush(String),
    #[error("bad directive: {0}")]
    Directive(String),
    #[error("formatting a result: {0}")]
    Format(#[from] arrow::error::ArrowError),
}

/// One session over the file's engine.
struct LedgerDb {
    engine: Arc<Engine>,
    service: Arc<QueryService>,
    ctx: SessionContext,
}

impl LedgerDb {
    /// Writes line protocol; returns the receipt, one row per line.
    async fn write_lp(&self, header: &str, body: &str) -> Result<Vec<Vec<String>>, SltError> {
        let mut db = DB;
        for arg in header.split_whitespace() {
            match arg.strip_prefix("db=") {
                Some(name) if !name.is_empty() => db = name,
                _ => {
                    return Err(SltError::Directive(format!(
                        "`-- lp {header}`: unknown `{arg}`"
                    )));
                }
            }
        }
        if body.trim().is_empty() {
            return Err(SltError::Directive("`-- lp` without lines".into()));
        }
        let mut prepared = self
            .engine
            .prepare(db, body.as_bytes(), &prepare_options())
            .map_err(|e| SltError::Write(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + SUBMIT_WAIT_MAX;
        let pending = loop {
            match self.engine.submit(prepared) {
                Ok(p) => break p,
                Err(back) if tokio::time::Instant::now() < deadline => {
                    prepared = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => return Err(SltError::Write("shard queues stayed full".into())),
            }
        };
        let outcome = pending
            .wait()
            .await
            .map_err(|e| SltError::Write(e.to_string()))?;
        if !outcome.rejected.is_empty() {
            return Err(SltError::Write(format!(
                "lines rejected: {:?}",
                outcome.rejected
            )));
        }
        receipt_rows(&outcome.receipt(ReceiptForm::Full))
    }

    async fn flush(&self) -> Result<(), SltError> {
        let engine = self.engine.clone();
        let epoch = tokio::task::spawn_blocking(move || engine.flush())
            .await
            .map_err(|e| SltError::Flush(e.to_string()))?;
        epoch
            .map(|_| ())
            .ok_or_else(|| SltError::Flush("the engine wrote no checkpoint".into()))
    }

    async fn query(&self, sql: &str) -> Result<DBOutput<Col>, SltError> {
        let out = self.service.run(&self.ctx, DB, sql).await?;
        let schema = out.schema.clone();
        let batches = out.collect().await?;
        let types: Vec<Col> = schema
            .fields()
            .iter()
            .map(|f| col_type(f.data_type()))
            .collect();
        // `SET` and other statements without columns.
        if types.is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types,
            rows: format_rows(&batches)?,
        })
    }
}

/// Options of an all-or-nothing write with nanosecond timestamps.
fn prepare_options() -> PrepareOptions {
    PrepareOptions {
        parse: annals_lp::ParseOptions::default(),
        accept_partial: false,
    }
}

/// The full receipt as rows `line, table, branch, height, index, tx_id`, in line order.
fn receipt_rows(receipt: &serde_json::Value) -> Result<Vec<Vec<String>>, SltError> {
    let bad = || SltError::Write(format!("unexpected receipt: {receipt}"));
    if receipt["receipt"] != "full" {
        return Err(bad());
    }
    let entries = receipt["entries"].as_array().ok_or_else(bad)?;
    entries
        .iter()
        .map(|e| {
            ["line", "table", "branch", "height", "index", "tx_id"]
                .iter()
                .map(|k| match &e[*k] {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Number(n) => Ok(n.to_string()),
                    _ => Err(bad()),
                })
                .collect()
        })
        .collect()
}

fn format_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter<'_>> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                fmts.iter()
                    .zip(b.columns())
                    .map(|(f, c)| {
                        let s = f.value(r).to_string();
                        if s.is_empty() && !c.is_null(r) {
                            "(empty)".to_string()
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

#[async_trait]
impl AsyncDB for LedgerDb {
    type Error = SltError;
    type ColumnType = Col;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Col>, SltError> {
        let (first, rest) = sql.split_once('\n').unwrap_or((sql, ""));
        let first = first.trim();
        if let Some(header) = first.strip_prefix("-- lp") {
            let rows = self.write_lp(header, rest).await?;
            return Ok(DBOutput::Rows {
                types: vec![
                    Col::Int,
                    Col::Text,
                    Col::Text,
                    Col::Int,
                    Col::Int,
                    Col::Text,
                ],
                rows,
            });
        }
        if first == "-- flush" {
            if !rest.trim().is_empty() {
                return Err(SltError::Directive("`-- flush` takes no lines".into()));
            }
            self.flush().await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        self.query(sql).await
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "annals"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Engine settings a file may override with `# engine: key=value ...`.
fn engine_config(dir: &Path, script: &str) -> Result<EngineConfig, String> {
    let mut c = EngineConfig::new(dir);
    c.shards = 2;
    c.block_rows = 4;
    c.file_rows = 8;
    c.memtable_rows = 1_000_000;
    // Nothing happens by age: blocks, files and checkpoints only by size or `-- flush`.
    c.block_age = Duration::from_secs(24 * 3600);
    c.file_age = Duration::from_secs(24 * 3600);
    c.checkpoint_interval = Duration::from_secs(24 * 3600);
    for line in script.lines() {
        let Some(settings) = line.strip_prefix("# engine:") else {
            continue;
        };
        for kv in settings.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("`{kv}` in `{line}`: expected key=value"))?;
            let n: u64 = v
                .parse()
                .map_err(|_| format!("`{kv}` in `{line}`: not a number"))?;
            match k {
                "block_rows" => c.block_rows = n as usize,
                "file_rows" => c.file_rows = n,
                "shards" => c.shards = n as usize,
                _ => return Err(format!("`{k}` in `{line}`: unknown setting")),
            }
        }
    }
    c.validate()?;
    Ok(c)
}

/// The `.slt` files of `tests/<dir>` whose name contains `ANNALS_SLT` (all when unset).
fn slt_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(&package_dir()).join("tests").join(dir);
    let filter = std::env::var("ANNALS_SLT").unwrap_or_default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(&filter))
        })
        .collect();
    files.sort();
    files
}

/// Runs one file against a fresh engine; `Err` carries the runner's report.
async fn run_file(path: &Path, complete: bool) -> Result<(), String> {
    let script = std::fs::read_to_string(path).map_err(|e| format!("reading: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let cfg = engine_config(dir.path(), &script)?;
    let engine = Arc::new(
        Engine::open(cfg, Arc::new(SystemClock)).map_err(|e| format!("opening engine: {e}"))?,
    );
    let service = Arc::new(
        QueryService::new(engine.clone(), QueryConfig::default())
            .map_err(|e| format!("query service: {e}"))?,
    );
    let (e, s) = (engine.clone(), service.clone());
    let mut runner = Runner::new(move || {
        let db = LedgerDb {
            ctx: s.session(DB),
            engine: e.clone(),
            service: s.clone(),
        };
        async move { Ok::<_, SltError>(db) }
    });
    runner.with_column_validator(sqllogictest::strict_column_validator);
    let result = if complete {
        runner
            .update_test_file(
                path,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::strict_column_validator,
            )
            .await
            .map_err(|e| e.to_string())
    } else {
        runner
            .run_file_async(path)
            .await
            .map_err(|e| e.display(false).to_string())
    };
    runner.shutdown_async().await;
    let engine_for_shutdown = engine.clone();
    drop(service);
    tokio::task::spawn_blocking(move || engine_for_shutdown.shutdown())
        .await
        .map_err(|e| format!("engine shutdown: {e}"))?;
    result
}

/// Runs the files, each on its own engine; panics listing every failure.
fn run_files(files: &[PathBuf]) {
    assert!(
        !files.is_empty(),
        "no .slt file to run (ANNALS_SLT={:?})",
        std::env::var("ANNALS_SLT").unwrap_or_default()
    );
    let complete = std::env::var("ANNALS_SLT_COMPLETE").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut failures = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let started = std::time::Instant::now();
        let r = rt.block_on(run_file(f, complete));
        eprintln!(
            "slt {name}: {} in {:.1}s",
            if r.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = r {
            failures.push(format!("{name}:\n{e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} sqllogictest files failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

/// Every file of `tests/slt`.
#[test]
fn sqllogictest_golden_files() {
    run_files(&slt_files("slt"));
}

/// The package's directory: the one `cargo test` names when it runs this binary (so a test
/// binary reused from another checkout's build reads this checkout's files), else the one it
/// was built in.
fn package_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

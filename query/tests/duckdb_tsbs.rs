//! annals against DuckDB on the TSBS-iot query set.
//!
//! A TSBS-iot dataset from the annals-bench generator (20 trucks, 6 hours, TSBS's missing
//! rows, null fields, cleared tags and late rows) is written to an in-process engine with
//! small blocks and files; part of it is flushed, so queries read finished block files and
//! blocks still in memory. Every row is then exported through SQL (`SELECT * FROM readings`,
//! `SELECT * FROM diagnostics`) to Parquet, tags as plain strings. The queries of
//! `tests/tsbs_queries.sql` run on annals (through [`QueryService`]) and on DuckDB (Python
//! module, `tests/duckdb_tsbs.py`, reading the Parquet files); the results must be equal row by
//! row, floats within a relative 1e-9.
//!
//! Needs `python3` with the `duckdb` module (`python3 -m pip install duckdb`); without it the
//! test fails and says so. `PYTHON` names another interpreter; `ANNALS_TSBS_PARQUET_DIR` keeps
//! the Parquet export there (to rerun the DuckDB side by hand) instead of in a temporary
//! directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_bench::tsbs::IotConfig;
use annals_engine::{Engine, EngineConfig, PrepareOptions, SystemClock};
use annals_query::{QueryConfig, QueryRequest, QueryService};
use anyhow::{bail, ensure, Context, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;

const DB: &str = "iot";
const TRUCKS: u64 = 20;
const HOURS: u64 = 6;
const SEED: u64 = 20_160_101;
/// Lines per write request.
const BATCH_LINES: usize = 5_000;
/// Relative tolerance for floats: sums and averages may add in another order.
const FLOAT_TOLERANCE: f64 = 1e-9;
const QUERIES: &str = include_str!("tsbs_queries.sql");
const INSTALL_HINT: &str = "python3 -m pip install duckdb";

/// The queries of `tsbs_queries.sql`, in file order: `(name, sql)`.
fn tsbs_queries() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in QUERIES.lines() {
        if let Some(name) = line.strip_prefix("-- name:") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some((_, sql)) = out.last_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    for (_, sql) in &mut out {
        *sql = sql.trim().to_string();
    }
    out
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fails fast, before the expensive part, when DuckDB cannot run.
fn check_duckdb() {
    let py = python();
    let out = Command::new(&py)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output();
    match out {
        Err(e) => panic!(
            "cannot run `{py}` ({e}): this test compares annals with DuckDB and needs Python 3 \
             with the duckdb module: install Python 3, then `{INSTALL_HINT}`"
        ),
        Ok(o) if !o.status.success() => panic!(
            "`{py} -c \"import duckdb\"` failed: this test compares annals with DuckDB; \
             install the module with `{INSTALL_HINT}`.\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(o) => eprintln!(
            "duckdb {} via {py}",
            String::from_utf8_lossy(&o.stdout).trim()
        ),
    }
}

fn engine(dir: &Path) -> Arc<Engine> {
    let mut c = EngineConfig::new(dir);
    c.shards = 2;
    c.block_rows = 2_048;
    c.file_rows = 8_192;
    c.block_age = Duration::from_secs(3_600);
    c.file_age = Duration::from_secs(3_600);
    c.checkpoint_interval = Duration::from_secs(3_600);
    Arc::new(Engine::open(c, Arc::new(SystemClock)).expect("open the engine"))
}

async fn write(engine: &Engine, body: &[u8]) -> Result<usize> {
    let opts = PrepareOptions {
        parse: annals_lp::ParseOptions::default(),
        accept_partial: false,
    };
    let mut prepared = engine.prepare(DB, body, &opts)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = loop {
        match engine.submit(prepared) {
            Ok(p) => break p,
            Err(back) => {
                ensure!(
                    Instant::now() < deadline,
                    "ingest queues stayed full for 30 s"
                );
                prepared = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let outcome = pending.wait().await?;
    ensure!(
        outcome.rejected.is_empty(),
        "rejected lines: {:?}",
        outcome.rejected
    );
    Ok(outcome.rows)
}

async fn sql(service: &QueryService, sql: &str) -> Result<Vec<RecordBatch>> {
    let out = service
        .sql(&QueryRequest {
            db: DB.into(),
            sql: sql.into(),
            as_of_epoch: None,
        })
        .await
        .with_context(|| format!("annals: {sql}"))?;
    out.collect()
        .await
        .with_context(|| format!("annals: {sql}"))
}

/// Writes a table's rows to Parquet with tags as plain strings (DuckDB reads dictionaries as
/// strings too, but plain columns keep the comparison about the query engines).
fn export(batches: &[RecordBatch], path: &Path) -> Result<usize> {
    let first = batches.first().context("no batches to export")?;
    let fields: Vec<Field> = first
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, v) => Field::new(f.name(), v.as_ref().clone(), true),
            t => Field::new(f.name(), t.clone(), f.is_nullable()),
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut w = ArrowWriter::try_new(file, schema.clone(), None)?;
    let mut rows = 0;
    for b in batches {
        let cols: Vec<ArrayRef> = b
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<_, _>>()?;
        w.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
        rows += b.num_rows();
    }
    w.close()?;
    Ok(rows)
}

/// A result value, typed loosely enough to compare two engines.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    /// Microseconds since the epoch.
    Time(i64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Time(us) => write!(f, "ts_us:{us}"),
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    let close = |x: f64, y: f64| x == y || (x - y).abs() <= FLOAT_TOLERANCE * x.abs().max(y.abs());
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => close(*x, *y),
        (Value::Int(i), Value::Float(x)) | (Value::Float(x), Value::Int(i)) => close(*i as f64, *x),
        _ => a == b,
    }
}

#[derive(Debug)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

/// annals' result as values.
fn to_table(batches: &[RecordBatch], schema: &Schema) -> Result<Table> {
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for b in batches {
        let mut cols: Vec<Vec<Value>> = Vec::new();
        for c in b.columns() {
            cols.push(values(c)?);
        }
        for r in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| c[r].clone()).collect());
        }
    }
    Ok(Table { columns, rows })
}

fn values(a: &ArrayRef) -> Result<Vec<Value>> {
    use DataType::*;
    let n = a.len();
    let wrap = |f: &dyn Fn(usize) -> Value| -> Vec<Value> {
        (0..n)
            .map(|i| if a.is_null(i) { Value::Null } else { f(i) })
            .collect()
    };
    Ok(match a.data_type() {
        Boolean => {
            let x: &BooleanArray = a.as_boolean();
            wrap(&|i| Value::Bool(x.value(i)))
        }
        Int8 | Int16 | Int32 | Int64 => {
            let c = arrow::compute::cast(a, &Int64)?;
            let x: &Int64Array = c.as_primitive();
            wrap(&|i| Value::Int(i128::from(x.value(i))))
        }
        UInt8 | UInt16 | UInt32 | UInt64 => {
            let c = arrow::compute::cast(a, &UInt64)?;
            let x: &UInt64Array = c.as_primitive();
            wrap(&|i| Value::Int(i128::from(x.value(i))))
        }
        Float32 | Float64 | Decimal128(..) => {
            let c = arrow::compute::cast(a, &Float64)?;
            let x: &Float64Array = c.as_primitive();
            wrap(&|i| Value::Float(x.value(i)))
        }
        Utf8 | LargeUtf8 | Utf8View | Dictionary(..) => {
            let c = arrow::compute::cast(a, &Utf8)?;
            let x: &StringArray = c.as_string();
            wrap(&|i| Value::Str(x.value(i).to_string()))
        }
        Timestamp(_, None) | Date32 | Date64 => {
            let c = arrow::compute::cast(a, &Timestamp(TimeUnit::Microsecond, None))?;
            let x: &TimestampMicrosecondArray = c.as_primitive();
            wrap(&|i| Value::Time(x.value(i)))
        }
        t => bail!("annals returned a column of type {t}, which this test does not compare"),
    })
}

/// DuckDB's result, from the JSON the Python script prints.
fn from_json(v: &serde_json::Value) -> Result<Table> {
    let columns = v["columns"]
        .as_array()
        .context("columns")?
        .iter()
        .map(|c| c.as_str().map(str::to_string).context("column name"))
        .collect::<Result<_>>()?;
    let rows = v["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .map(|r| {
            r.as_array()
                .context("row")?
                .iter()
                .map(json_value)
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    Ok(Table { columns, rows })
}

fn json_value(v: &serde_json::Value) -> Result<Value> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) if !n.is_f64() => Value::Int(i128::from(i)),
            (_, Some(u), _) if !n.is_f64() => Value::Int(i128::from(u)),
            (_, _, Some(f)) => Value::Float(f),
            _ => bail!("number {n}"),
        },
        J::String(s) => Value::Str(s.clone()),
        J::Object(o) => Value::Time(o.get("ts_us").and_then(J::as_i64).context("ts_us")?),
        J::Array(_) => bail!("unexpected array {v}"),
    })
}

/// Row-by-row comparison; the error lists the first differences.
fn compare(name: &str, sql: &str, annals: &Table, duck: &Table) -> Result<(), String> {
    let mut problems = Vec::new();
    let lower = |c: &[String]| c.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>();
    if lower(&annals.columns) != lower(&duck.columns) {
        problems.push(format!(
            "columns differ: annals {:?}, duckdb {:?}",
            annals.columns, duck.columns
        ));
    }
    if annals.rows.len() != duck.rows.len() {
        problems.push(format!(
            "row counts differ: annals {}, duckdb {}",
            annals.rows.len(),
            duck.rows.len()
        ));
    }
    for (i, (a, d)) in annals.rows.iter().zip(&duck.rows).enumerate() {
        let differs = a.len() != d.len() || a.iter().zip(d).any(|(x, y)| !same(x, y));
        if differs && problems.len() < 10 {
            let show = |r: &[Value]| {
                r.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            problems.push(format!(
                "row {i}:\n    annals: {}\n    duckdb: {}",
                show(a),
                show(d)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("query {name}:\n{sql}\n  {}", problems.join("\n  ")))
    }
}

fn run_duckdb(data_dir: &Path) -> Result<BTreeMap<String, Table>> {
    let tests = Path::new(&package_dir()).join("tests");
    let script: PathBuf = tests.join("duckdb_tsbs.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(data_dir)
        .arg(tests.join("tsbs_queries.sql"))
        .output()
        .with_context(|| format!("running {} (needs `{INSTALL_HINT}`)", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}); it needs python3 with duckdb (`{INSTALL_HINT}`):\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing the DuckDB script's JSON")?;
    let mut tables = BTreeMap::new();
    for (name, v) in json.as_object().context("a JSON object")? {
        tables.insert(
            name.clone(),
            from_json(v).with_context(|| format!("query {name}"))?,
        );
    }
    Ok(tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsbs_iot_queries_match_duckdb() -> Result<()> {
    check_duckdb();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let engine = engine(&dir.path().join("data"));
    let service = QueryService::new(engine.clone(), QueryConfig::default())?;

    // Write the dataset; flush after two thirds of it so the rest stays in memory blocks.
    let cfg = IotConfig::new(TRUCKS, Duration::from_secs(HOURS * 3_600), SEED)?;
    let batches: Vec<_> = cfg.batches(BATCH_LINES).collect();
    let (mut lines, mut rows, mut per_table) = (0usize, 0usize, BTreeMap::<String, usize>::new());
    let flush_at = batches.len() * 2 / 3;
    for (i, b) in batches.iter().enumerate() {
        for l in b.body.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            let m = l.split(|&c| c == b',').next().unwrap_or_default();
            *per_table
                .entry(String::from_utf8_lossy(m).into_owned())
                .or_default() += 1;
        }
        lines += b.lines;
        rows += write(&engine, &b.body).await?;
        if i + 1 == flush_at {
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.flush())
                .await?
                .context("flush wrote no checkpoint")?;
        }
    }
    assert_eq!(rows, lines, "every generated line is one acknowledged row");
    eprintln!(
        "wrote {rows} rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let states = sql(
        &service,
        "SELECT state, count(*) AS n FROM system.blocks GROUP BY state ORDER BY state",
    )
    .await?;
    let states = to_table(&states, &states[0].schema())?;
    let names: Vec<&Value> = states.rows.iter().map(|r| &r[0]).collect();
    assert_eq!(
        names,
        [&Value::Str("file".into()), &Value::Str("memory".into())],
        "the dataset must be read from block files and memory blocks alike: {states:?}"
    );

    // Export every row through SQL.
    let parquet_dir = match std::env::var_os("ANNALS_TSBS_PARQUET_DIR") {
        Some(d) => PathBuf::from(d),
        None => dir.path().join("parquet"),
    };
    std::fs::create_dir_all(&parquet_dir)?;
    for table in ["readings", "diagnostics"] {
        let batches = sql(&service, &format!("SELECT * FROM {table}")).await?;
        let n = export(&batches, &parquet_dir.join(format!("{table}.parquet")))?;
        assert_eq!(
            Some(&n),
            per_table.get(table),
            "SELECT * FROM {table} returns every row written to it"
        );
    }
    eprintln!("exported in {:.1}s", started.elapsed().as_secs_f64());

    let duck = run_duckdb(&parquet_dir)?;
    eprintln!("duckdb done in {:.1}s", started.elapsed().as_secs_f64());
    let queries = tsbs_queries();
    assert!(
        queries.len() >= 8,
        "tsbs_queries.sql lists {} queries",
        queries.len()
    );
    let mut failures = Vec::new();
    for (name, text) in &queries {
        let out = service
            .sql(&QueryRequest {
                db: DB.into(),
                sql: text.clone(),
                as_of_epoch: None,
            })
            .await
            .with_context(|| format!("annals: query {name}"))?;
        let schema = out.schema.clone();
        let batches = out
            .collect()
            .await
            .with_context(|| format!("annals: query {name}"))?;
        let annals = to_table(&batches, &schema)?;
        let Some(d) = duck.get(name) else {
            failures.push(format!("query {name}: no DuckDB result"));
            continue;
        };
        eprintln!("{name}: {} rows", annals.rows.len());
        if annals.rows.is_empty() {
            failures.push(format!(
                "query {name} returned no rows on annals: the comparison would prove nothing; \
                 adjust the query or the dataset"
            ));
        }
        if let Err(e) = compare(name, text, &annals, d) {
            failures.push(e);
        }
    }
    eprintln!("compared in {:.1}s", started.elapsed().as_secs_f64());
    engine.shutdown();
    assert!(
        failures.is_empty(),
        "annals and DuckDB disagree on {} of {} TSBS-iot queries:\n\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n\n")
    );
    Ok(())
}

/// The comparison itself must be able to fail.
#[test]
fn comparison_catches_differences() {
    let t = |rows: Vec<Vec<Value>>| Table {
        columns: vec!["a".into(), "b".into()],
        rows,
    };
    let base = t(vec![vec![Value::Str("x".into()), Value::Float(1.0)]]);
    assert!(compare("q", "", &base, &base).is_ok());
    let near = t(vec![vec![
        Value::Str("x".into()),
        Value::Float(1.0 + 1e-12),
    ]]);
    assert!(compare("q", "", &base, &near).is_ok(), "within tolerance");
    for other in [
        t(vec![vec![Value::Str("x".into()), Value::Float(1.0001)]]),
        t(vec![vec![Value::Str("x".into()), Value::Null]]),
        t(vec![vec![Value::Str("y".into()), Value::Float(1.0)]]),
        t(vec![vec![Value::Str("x".into()), Value::Time(1)]]),
        t(vec![]),
        t(vec![
            vec![Value::Str("x".into()), Value::Float(1.0)],
            vec![Value::Str("x".into()), Value::Float(1.0)],
        ]),
    ] {
        assert!(
            compare("q", "", &base, &other).is_err(),
            "{other:?} must differ"
        );
    }
    let renamed = Table {
        columns: vec!["a".into(), "c".into()],
        rows: base.rows.clone(),
    };
    assert!(
        compare("q", "", &base, &renamed).is_err(),
        "column names differ"
    );
}

/// The package's directory: the one `cargo test` names when it runs this binary (so a test
/// binary reused from another checkout's build reads this checkout's files), else the one it
/// was built in.
fn package_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

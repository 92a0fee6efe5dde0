//! `compare-query`: the TSBS iot queries on annals and on DuckDB over the same rows.
//!
//! The workload is loaded once into a data directory that outlives the run (`--dir`), in
//! segments so that any scale fits in memory; annals is then stopped cleanly (every block
//! sealed into Parquet block files) and restarted, so the queries read finished files the
//! way a long-running node does; the timed runs start once the restarted node has seeded its
//! last-value cache in the background (`/health` lists no cold table). The same rows are exported through annals' own query API as
//! one Parquet file per table, which DuckDB (from PyPI, driven by
//! `query/tests/duckdb_tsbs.py --time`) reads. Each query runs once to warm up, then `--runs`
//! times on each side; medians are compared. annals is timed from this client over HTTP
//! (request to last byte of the answer), DuckDB inside its Python process: the ratio carries
//! annals' HTTP and serialization cost, none of DuckDB's.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_bench::tsbs::IotConfig;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::load::{self, Endpoint, LoadOptions, Workload};
use crate::server::{self, Server};

/// Batches sent per load segment (a segment's line protocol is held in memory at once).
const SEGMENT_BATCHES: usize = 400;
/// Name of the file that records what `--dir` holds.
const LOADED_FILE: &str = "loaded.json";
/// Longest a single timed query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub(crate) struct QueryOptions {
    pub(crate) iot: IotConfig,
    pub(crate) connections: usize,
    pub(crate) batch_lines: usize,
    pub(crate) db: String,
    pub(crate) annals_bin: Option<PathBuf>,
    pub(crate) dir: PathBuf,
    pub(crate) runs: usize,
    pub(crate) python: PathBuf,
    pub(crate) queries: PathBuf,
    /// Skip the Parquet export and DuckDB: time annals alone.
    pub(crate) annals_only: bool,
    /// Extra `annals serve` flags.
    pub(crate) serve_args: Vec<String>,
}

/// One query, as each side runs it.
#[derive(Debug, Clone)]
struct Query {
    name: String,
    annals: String,
    duckdb: String,
}

/// Times of one query on one side.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timing {
    pub(crate) ms: Vec<f64>,
    pub(crate) rows: u64,
    /// The warm-up run (annals: the first query after a restart, e.g. seeding a cache).
    pub(crate) first_ms: f64,
}

impl Timing {
    pub(crate) fn median(&self) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    pub(crate) fn min(&self) -> f64 {
        self.ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub(crate) fn max(&self) -> f64 {
        self.ms.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

pub(crate) async fn run(opts: QueryOptions) -> Result<()> {
    load::check_db_name(&opts.db)?;
    if opts.runs == 0 || opts.runs > 100 {
        bail!("--runs must be between 1 and 100");
    }
    let bin = crate::compare::resolve_annals(opts.annals_bin.as_deref())?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let data_dir = opts.dir.join("annals-data");
    let rows = ensure_loaded(&bin, &data_dir, &opts).await?;

    let mut server = server::start_annals_at(&bin, &data_dir, &opts.serve_args)?;
    server.wait_ready("/health", Some(200)).await?;
    eprintln!("annals: {} rows in {}", rows, data_dir.display());
    let client = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    wait_warm(&client, &server).await?;

    let queries = all_queries(&opts)?;
    let export_dir = opts.dir.join("export");
    if !opts.annals_only {
        export(&client, &server, &opts.db, &export_dir).await?;
    }

    let mut annals = Vec::new();
    for q in &queries {
        let t = time_annals(&client, &server, &opts.db, &q.annals, opts.runs)
            .await
            .with_context(|| format!("annals: query {}", q.name))?;
        eprintln!(
            "annals {:<24} {:>9.1} ms median, {} rows",
            q.name,
            t.median(),
            t.rows
        );
        annals.push(t);
    }
    let pruning = explain_pruning(&client, &server, &opts.db, &queries).await?;
    let duckdb = if opts.annals_only {
        None
    } else {
        Some(time_duckdb(&opts, &export_dir, &queries)?)
    };
    server.check_alive()?;
    server.terminate()?;
    print_table(&opts, rows, &queries, &annals, duckdb.as_deref(), &pruning);
    Ok(())
}

/// Loads the workload into `data_dir` unless `loaded.json` says it already holds this scale;
/// returns the number of rows loaded.
async fn ensure_loaded(bin: &Path, data_dir: &Path, opts: &QueryOptions) -> Result<u64> {
    let iot = &opts.iot;
    let want = json!({
        "trucks": iot.trucks, "steps": iot.steps, "seed": iot.seed, "db": opts.db,
        "irregular": iot.irregularities != annals_bench::tsbs::Irregularities::NONE,
    });
    let marker = opts.dir.join(LOADED_FILE);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let have: Value = serde_json::from_str(&text).context("reading loaded.json")?;
        if have.get("workload") == Some(&want) {
            return have["rows"].as_u64().context("loaded.json has no rows");
        }
        bail!(
            "{} holds another workload ({}); pick another --dir or remove it",
            opts.dir.display(),
            have["workload"]
        );
    }
    if data_dir.exists() {
        bail!(
            "{} exists but was not loaded completely (no {LOADED_FILE}); remove it",
            data_dir.display()
        );
    }
    let mut server = server::start_annals_at(bin, data_dir, &opts.serve_args)?;
    server.wait_ready("/health", Some(200)).await?;
    eprintln!(
        "loading {} trucks x {} steps into {} ...",
        iot.trucks,
        iot.steps,
        data_dir.display()
    );
    let load_opts = LoadOptions {
        url: server.base_url.clone(),
        db: opts.db.clone(),
        endpoint: Endpoint::V3,
        connections: opts.connections,
        timeout: Duration::from_secs(120),
        progress: false,
    };
    let started = Instant::now();
    let mut rows = 0u64;
    let mut batches = iot.batches(opts.batch_lines).peekable();
    while batches.peek().is_some() {
        let work = Workload::from_batches(batches.by_ref().take(SEGMENT_BATCHES), false)?;
        let report = load::run(&load_opts, Arc::new(work)).await?;
        rows += report.rows;
        eprintln!(
            "  {rows} rows, {:.0} rows/s",
            rows as f64 / started.elapsed().as_secs_f64()
        );
    }
    server.check_alive()?;
    // A clean stop seals every open block and finishes every block file.
    server.terminate()?;
    let record = json!({ "workload": want, "rows": rows,
                         "load_secs": started.elapsed().as_secs_f64() });
    std::fs::write(&marker, serde_json::to_vec_pretty(&record)?)?;
    Ok(rows)
}

/// The TSBS queries from the file, then the point queries whose targets the issue names.
fn all_queries(opts: &QueryOptions) -> Result<Vec<Query>> {
    let text = std::fs::read_to_string(&opts.queries)
        .with_context(|| format!("reading {}", opts.queries.display()))?;
    let mut queries: Vec<Query> = parse_queries(&text)
        .into_iter()
        .map(|(name, sql)| Query {
            name,
            annals: sql.clone(),
            duckdb: sql,
        })
        .collect();
    let iot = &opts.iot;
    let span_ns = iot.steps as i64 * iot.interval_ns;
    let hour_ns = 3_600_000_000_000i64;
    // The hour in the middle of the data, on an hour boundary.
    let from = iot.start_ns + (span_ns / 2) / hour_ns * hour_ns;
    let truck = format!("truck_{}", iot.trucks / 2);
    let ts = |ns: i64| {
        let secs = ns.div_euclid(1_000_000_000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!(
            "TIMESTAMP '{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}'",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let device_hour = format!(
        "SELECT time, latitude, longitude, velocity, fuel_consumption FROM readings \
         WHERE name = '{truck}' AND time >= {} AND time < {} ORDER BY time",
        ts(from),
        ts(from + hour_ns)
    );
    queries.push(Query {
        name: "device_hour".into(),
        annals: device_hour.clone(),
        duckdb: device_hour,
    });
    queries.push(Query {
        name: "last_values".into(),
        annals: "SELECT * FROM last_values('readings', 'name') WHERE name IS NOT NULL".into(),
        duckdb: "SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY name \
                 ORDER BY time DESC) AS rn FROM readings WHERE name IS NOT NULL) WHERE rn = 1"
            .into(),
    });
    Ok(queries)
}

/// `(name, sql)` per `-- name:` header (the format of query/tests/tsbs_queries.sql).
pub(crate) fn parse_queries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-- name:") {
            out.extend(current.take());
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, sql)) = current.as_mut() {
            if !line.trim_start().starts_with("--") {
                sql.push_str(line);
                sql.push('\n');
            }
        }
    }
    out.extend(current);
    for (_, sql) in &mut out {
        *sql = sql.trim().to_owned();
    }
    out.retain(|(_, sql)| !sql.is_empty());
    out
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub(crate) async fn post_query(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    sql: &str,
    format: &str,
) -> Result<reqwest::Response> {
    let url = format!("{}/api/v3/query_sql", server.base_url);
    let resp = client
        .post(&url)
        .json(&json!({ "db": db, "q": sql, "format": format }))
        .send()
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("{status}: {body}");
    }
    Ok(resp)
}

/// Waits until the restarted server has seeded its last-value cache in the background (its
/// `/health` lists no cold table), so the timed runs measure the steady state, not the
/// start; prints how long that took.
async fn wait_warm(client: &reqwest::Client, server: &Server) -> Result<()> {
    let started = Instant::now();
    loop {
        let health: serde_json::Value = client
            .get(format!("{}/health", server.base_url))
            .send()
            .await?
            .json()
            .await?;
        let cold = health["last_values_cold"].as_array().map_or(0, |a| a.len());
        if cold == 0 {
            eprintln!(
                "annals: last-value cache warm {:.1} s after the start",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("annals: {cold} tables still have a cold last-value cache after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One warm-up, then `runs` timed runs, each from the request to the last byte of the answer.
pub(crate) async fn time_annals(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    sql: &str,
    runs: usize,
) -> Result<Timing> {
    let mut timing = Timing::default();
    for run in 0..=runs {
        let started = Instant::now();
        let body = post_query(client, server, db, sql, "jsonl")
            .await?
            .bytes()
            .await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if run == 0 {
            timing.first_ms = ms;
        } else {
            timing.ms.push(ms);
        }
        timing.rows = body.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok(timing)
}

/// `blocks=X of Y (Z pruned)` of each query's scans, from `EXPLAIN ANALYZE`.
async fn explain_pruning(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    queries: &[Query],
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for q in queries {
        let body = post_query(
            client,
            server,
            db,
            &format!("EXPLAIN ANALYZE {}", q.annals),
            "json",
        )
        .await?
        .text()
        .await?;
        let plans: Value = serde_json::from_str(&body)?;
        let mut found = Vec::new();
        for row in plans.as_array().into_iter().flatten() {
            let plan = row["plan"].as_str().unwrap_or_default();
            for line in plan.lines() {
                if let Some(at) = line.find("blocks=") {
                    let rest = &line[at..];
                    let end = rest.find(')').map_or(rest.len(), |e| e + 1);
                    found.push(rest[..end].to_owned());
                }
            }
        }
        out.push(found.join("; "));
    }
    Ok(out)
}

/// Writes `<table>.parquet` for both tables through annals' `format=parquet`, unless present.
pub(crate) async fn export(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for table in ["readings", "diagnostics"] {
        let path = dir.join(format!("{table}.parquet"));
        if path.exists() {
            continue;
        }
        let tmp = path.with_extension("parquet.tmp");
        let started = Instant::now();
        let mut resp = post_query(
            client,
            server,
            db,
            &format!("SELECT * FROM {table}"),
            "parquet",
        )
        .await
        .with_context(|| format!("exporting {table}"))?;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            bytes += chunk.len() as u64;
            file.write_all(&chunk)?;
        }
        file.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        eprintln!(
            "exported {table}: {:.1} MB in {:.1} s",
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Runs every query on DuckDB through the Python driver; same warm-up and run count.
fn time_duckdb(opts: &QueryOptions, export_dir: &Path, queries: &[Query]) -> Result<Vec<Timing>> {
    let mut file = String::new();
    for q in queries {
        writeln!(file, "-- name: {}\n{}\n", q.name, q.duckdb)?;
    }
    let queries_path = opts.dir.join("duckdb_queries.sql");
    std::fs::write(&queries_path, file)?;
    let times = run_duckdb(&opts.python, export_dir, &queries_path, Some(opts.runs))?;
    let names: Vec<&str> = queries.iter().map(|q| q.name.as_str()).collect();
    duckdb_timings(&times, &names)
}

/// Runs `query/tests/duckdb_tsbs.py` over the Parquet files in `export_dir`: the answers of
/// the queries in `queries_path`, or with `runs` their times; its JSON output.
pub(crate) fn run_duckdb(
    python: &Path,
    export_dir: &Path,
    queries_path: &Path,
    runs: Option<usize>,
) -> Result<Value> {
    let script = crate::package_dir().join("../query/tests/duckdb_tsbs.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(export_dir).arg(queries_path);
    if let Some(runs) = runs {
        cmd.arg("--time").arg(runs.to_string());
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        bail!(
            "DuckDB driver failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("DuckDB driver output")
}

/// The timings of `names` in the DuckDB driver's `--time` output.
pub(crate) fn duckdb_timings(times: &Value, names: &[&str]) -> Result<Vec<Timing>> {
    names
        .iter()
        .map(|name| {
            let t = &times[name];
            let ms = t["ms"]
                .as_array()
                .with_context(|| format!("no DuckDB times for {name}"))?
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            Ok(Timing {
                ms,
                rows: t["rows"].as_u64().unwrap_or_default(),
                first_ms: t["first_ms"].as_f64().unwrap_or(f64::NAN),
            })
        })
        .collect()
}

fn print_table(
    opts: &QueryOptions,
    rows: u64,
    queries: &[Query],
    annals: &[Timing],
    duckdb: Option<&[Timing]>,
    pruning: &[String],
) {
    let args: Vec<String> = std::env::args().collect();
    println!();
    println!(
        "### Queries, TSBS iot: {} trucks x {} steps, {} rows",
        opts.iot.trucks, opts.iot.steps, rows
    );
    println!();
    println!("`{}`", args.join(" "));
    println!();
    println!(
        "Median of {} runs after one warm-up (min–max in brackets). annals: over HTTP, request \
         to last byte (`format=jsonl`), reading finished block files after a restart. DuckDB: \
         in process (Python), over a Parquet export of the same rows.",
        opts.runs
    );
    println!();
    if duckdb.is_some() {
        println!(
            "| query | rows | annals ms | annals first run ms | DuckDB ms | annals / DuckDB | blocks read by annals |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|");
    } else {
        println!("| query | rows | annals ms | annals first run ms | blocks read by annals |");
        println!("|---|---:|---:|---:|---|");
    }
    for (i, q) in queries.iter().enumerate() {
        let a = &annals[i];
        let a_cell = format!(
            "{:.1} ({:.1}–{:.1}) | {:.1}",
            a.median(),
            a.min(),
            a.max(),
            a.first_ms
        );
        match duckdb {
            Some(d) => {
                let d = &d[i];
                let rows = if a.rows == d.rows {
                    a.rows.to_string()
                } else {
                    format!("{} (DuckDB {})", a.rows, d.rows)
                };
                println!(
                    "| {} | {rows} | {a_cell} | {:.1} ({:.1}–{:.1}) | {:.2}x | {} |",
                    q.name,
                    d.median(),
                    d.min(),
                    d.max(),
                    a.median() / d.median(),
                    pruning[i]
                );
            }
            None => println!("| {} | {} | {a_cell} | {} |", q.name, a.rows, pruning[i]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_split_at_name_headers_without_comments() {
        let text = "-- intro\n-- name: a\n-- about a\nSELECT 1\n\n-- name: b\nSELECT\n  2\n";
        assert_eq!(
            parse_queries(text),
            vec![
                ("a".to_owned(), "SELECT 1".to_owned()),
                ("b".to_owned(), "SELECT\n  2".to_owned())
            ]
        );
    }

    #[test]
    fn days_map_to_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2016-01-01 is day 16801; 2016 is a leap year.
        assert_eq!(civil_from_days(16_801), (2016, 1, 1));
        assert_eq!(civil_from_days(16_801 + 59), (2016, 2, 29));
        assert_eq!(civil_from_days(16_801 + 366), (2017, 1, 1));
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let t = |ms: &[f64]| Timing {
            ms: ms.to_vec(),
            ..Timing::default()
        };
        assert_eq!(t(&[3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(t(&[4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert_eq!(t(&[4.0, 1.0]).min(), 1.0);
        assert_eq!(t(&[4.0, 1.0]).max(), 4.0);
    }
}

//! `compare`: annals and its peers on the same generated workload in one run, one markdown
//! report with ratios, and a check that every peer gives the same answers.
//!
//! Ingest (one server at a time, each with a fresh temp dir, killed when done): InfluxDB 1.x
//! and annals get the same line-protocol bodies over the same number of HTTP connections
//! ([`compare::measure`]); annals, restarted on that data, then gets the same rows again as
//! Arrow batches through Flight `DoPut` into a second database (`<db>_arrow`, [`ingest_doput`];
//! `--no-doput` skips it), with the same connections and rows per batch; PostgreSQL gets the
//! same rows as CSV through `COPY` over as many connections ([`postgres`]). Queries: annals (restarted on its data, reading finished block
//! files), DuckDB over a Parquet export of annals' rows, PostgreSQL, and InfluxDB where
//! InfluxQL has an equivalent. annals' answers are the reference: any peer whose answer
//! differs (after sorting; numbers within a relative 1e-9) fails the run after the report is
//! printed, as does any peer that cannot be found or started.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use annals_bench::tsbs::IotConfig;
use anyhow::{bail, ensure, Context, Result};

use crate::answers::{self, Rows};
use crate::compare::{self, CompareOptions, Outcome};
use crate::flight::{self, PutFigures, PutOptions};
use crate::influxql;
use crate::load::{self, Endpoint, Workload};
use crate::postgres::{self, PgLoad};
use crate::query::{self, Timing};
use crate::server::{self, Server};

/// Longest a single annals query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub(crate) struct SideOptions {
    /// Scale, connections, batch size, binaries and directories, as for `compare-ingest`.
    pub(crate) ingest: CompareOptions,
    pub(crate) runs: usize,
    pub(crate) python: PathBuf,
    pub(crate) postgres_bin_dir: Option<PathBuf>,
    /// Also ingest the rows into annals by Arrow Flight `DoPut` (`--no-doput` turns it off).
    pub(crate) doput: bool,
}

/// The database of the `DoPut` step: the line-protocol one's name with this suffix, on the same
/// server (`bench` gives `bench_arrow`).
const DOPUT_DB_SUFFIX: &str = "_arrow";

/// The `DoPut` database for line-protocol database `db`.
fn doput_db(db: &str) -> String {
    format!("{db}{DOPUT_DB_SUFFIX}")
}

/// What annals did with the same rows sent by Flight `DoPut`.
#[derive(Debug)]
struct DoPutOutcome {
    db: String,
    put: PutFigures,
    /// `VmHWM` of the restarted process: startup on the line-protocol data, then `DoPut`.
    peak_rss: u64,
    /// The restarted process's user + system CPU: startup and `DoPut`.
    cpu_secs: f64,
    /// Growth of the data dir from just before the first call to the last receipt.
    disk_bytes: u64,
    /// Growth of the data dir from the line-protocol load's clean stop to this one's.
    disk_bytes_stopped: u64,
}

/// One peer's answer and times for one query.
#[derive(Debug)]
struct Answer {
    rows: Rows,
    timing: Timing,
}

/// Everything the report shows.
#[derive(Debug)]
struct Results {
    rows: u64,
    ingest: Vec<Outcome>,
    doput: Option<DoPutOutcome>,
    postgres: PgLoad,
    postgres_disk_stopped: u64,
    postgres_version: String,
    duckdb_version: String,
    names: Vec<String>,
    annals: Vec<Answer>,
    duckdb: Vec<Answer>,
    postgres_answers: Vec<Answer>,
    influxdb: Vec<Option<Answer>>,
    influx_missing: Vec<(String, String)>,
    /// `query: peer: what differs`.
    differences: Vec<String>,
}

fn repo_file(rel: &str) -> PathBuf {
    crate::package_dir().join(rel)
}

fn duckdb_version(python: &Path) -> Result<String> {
    let out = Command::new(python)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "DuckDB not found: {} cannot import duckdb (install it with `{} -m pip install \
             duckdb`): {}",
            python.display(),
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Reads a `-- name:` query file.
fn read_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(query::parse_queries(&text))
}

pub(crate) async fn run(opts: SideOptions) -> Result<()> {
    let o = &opts.ingest;
    load::check_db_name(&o.db)?;
    if opts.doput {
        load::check_db_name(&doput_db(&o.db))
            .context("the DoPut step writes to `<db>_arrow`: shorten --db or pass --no-doput")?;
    }
    ensure!(
        (1..=100).contains(&opts.runs),
        "--runs must be between 1 and 100"
    );
    // Every peer is found before any work starts; a missing one fails the run.
    let annals_bin = compare::resolve_annals(o.annals_bin.as_deref())?;
    let influxd = compare::resolve_influxd(&o.influxd_bin)?;
    let pg_tools = postgres::find_tools(opts.postgres_bin_dir.as_deref())?;
    let duckdb_version = duckdb_version(&opts.python)?;

    let sql = read_queries(&repo_file("../query/tests/tsbs_queries.sql"))?;
    let pg_sql = read_queries(&repo_file("queries/tsbs_postgres.sql"))?;
    let names: Vec<String> = sql.iter().map(|(n, _)| n.clone()).collect();
    let pg_names: Vec<String> = pg_sql.iter().map(|(n, _)| n.clone()).collect();
    ensure!(
        names == pg_names,
        "tsbs_postgres.sql has queries {pg_names:?}, tsbs_queries.sql {names:?}"
    );
    let iot = &o.iot;
    let end_ns = iot.start_ns + iot.steps as i64 * iot.interval_ns;
    let influx_text = std::fs::read_to_string(repo_file("queries/tsbs_influxql.sql"))?;
    let influx_qs = influxql::parse(&influx_text, iot.start_ns, end_ns)?;
    for name in influx_qs
        .queries
        .iter()
        .map(|q| &q.name)
        .chain(influx_qs.missing.iter().map(|(n, _)| n))
    {
        ensure!(
            names.contains(name),
            "tsbs_influxql.sql names unknown query {name}"
        );
    }

    let scratch = server::temp_root(&o.work_dir, "annals-bench-compare-")?;
    eprintln!(
        "generating {} trucks x {} steps (seed {}) in batches of {} lines...",
        iot.trucks, iot.steps, iot.seed, o.batch_lines
    );
    let work = Arc::new(Workload::from_batches(iot.batches(o.batch_lines), o.gzip)?);
    eprintln!(
        "{} rows, {:.1} MB of line protocol, {} bodies",
        work.lines,
        work.raw_bytes as f64 / 1e6,
        work.requests()
    );

    // Ingest, one server at a time; each is stopped cleanly and started again for queries.
    let mut influx = server::start_influxdb(&influxd, &o.work_dir)?;
    let influx_outcome = compare::measure(&mut influx, o, Endpoint::V1, &work).await?;
    let mut annals = server::start_annals(&annals_bin, &o.work_dir)?;
    let annals_outcome = compare::measure(&mut annals, o, o.annals_endpoint, &work).await?;
    drop(work);
    let doput = if opts.doput {
        Some(ingest_doput(&mut annals, o, &annals_outcome).await?)
    } else {
        None
    };
    let mut pg = postgres::start(&pg_tools, &o.work_dir)?;
    eprintln!("postgres: starting {}", pg.server.version);
    pg.wait_ready()?;
    let pg_load = pg.load(iot, o.batch_lines, o.connections)?;
    ensure!(
        pg_load.rows == annals_outcome.load.rows,
        "PostgreSQL got {} rows, annals {}",
        pg_load.rows,
        annals_outcome.load.rows
    );
    pg.server.terminate()?;
    let postgres_disk_stopped = pg.server.data_bytes()?;

    // Queries: annals first (its export feeds DuckDB).
    annals.respawn()?;
    annals.wait_ready("/health", Some(200)).await?;
    let client = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let export_dir = scratch.path().join("export");
    query::export(&client, &annals, &o.db, &export_dir).await?;
    let mut annals_answers = Vec::new();
    for (name, q) in &sql {
        let timing = query::time_annals(&client, &annals, &o.db, q, opts.runs)
            .await
            .with_context(|| format!("annals: query {name}"))?;
        let csv = query::post_query(&client, &annals, &o.db, q, "csv")
            .await?
            .text()
            .await?;
        let rows = answers::parse_csv(&csv).with_context(|| format!("annals: answer of {name}"))?;
        eprintln!(
            "annals   {name:<24} {:>9.1} ms, {} rows",
            timing.median(),
            rows.len()
        );
        annals_answers.push(Answer { rows, timing });
    }
    annals.check_alive()?;
    annals.terminate()?;

    let queries_path = scratch.path().join("duckdb_queries.sql");
    std::fs::copy(repo_file("../query/tests/tsbs_queries.sql"), &queries_path)?;
    let duck_rows = query::run_duckdb(&opts.python, &export_dir, &queries_path, None)?;
    let duck_times = query::run_duckdb(&opts.python, &export_dir, &queries_path, Some(opts.runs))?;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let duckdb = query::duckdb_timings(&duck_times, &name_refs)?
        .into_iter()
        .zip(&names)
        .map(|(timing, name)| {
            Ok(Answer {
                rows: answers::duckdb_rows(&duck_rows, name)?,
                timing,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    pg.server.respawn()?;
    pg.wait_ready()?;
    let postgres_answers: Vec<Answer> = pg
        .run_queries(&pg_sql, opts.runs)?
        .into_iter()
        .map(|(rows, timing)| Answer { rows, timing })
        .collect();
    pg.server.terminate()?;

    influx.respawn()?;
    influx.wait_ready("/ping", Some(204)).await?;
    let mut influxdb = Vec::new();
    for name in &names {
        influxdb.push(match influx_qs.get(name) {
            Some(q) => {
                let (rows, timing) = influxql::run(&client, &influx.base_url, &o.db, q, opts.runs)
                    .await
                    .with_context(|| format!("InfluxDB: query {name}"))?;
                Some(Answer { rows, timing })
            }
            None => None,
        });
    }
    influx.terminate()?;

    let mut differences = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let ours = &annals_answers[i].rows;
        let peers = [
            ("DuckDB", Some(&duckdb[i])),
            ("PostgreSQL", Some(&postgres_answers[i])),
            ("InfluxDB", influxdb[i].as_ref()),
        ];
        for (peer, answer) in peers {
            if let Some(diff) = answer.and_then(|a| answers::differences(ours, &a.rows)) {
                differences.push(format!("{name}: {peer}: {diff}"));
            }
        }
    }
    let results = Results {
        rows: annals_outcome.load.rows,
        ingest: vec![annals_outcome, influx_outcome],
        doput,
        postgres: pg_load,
        postgres_disk_stopped,
        postgres_version: pg.server.version.clone(),
        duckdb_version,
        names,
        annals: annals_answers,
        duckdb,
        postgres_answers,
        influxdb,
        influx_missing: influx_qs.missing.clone(),
        differences,
    };
    print!("{}", report(&opts, &results)?);
    if o.keep_dirs {
        for s in [&mut annals, &mut influx, &mut pg.server] {
            s.keep_files();
        }
        eprintln!("kept the export in {}", scratch.keep().display());
    }
    if !results.differences.is_empty() {
        bail!(
            "answers differ from annals':\n{}",
            results.differences.join("\n")
        );
    }
    eprintln!(
        "every answer agrees ({} queries on annals, DuckDB and PostgreSQL, {} on InfluxDB)",
        results.names.len(),
        results.influxdb.iter().flatten().count()
    );
    Ok(())
}

/// annals again, restarted on its line-protocol data: the same generated bodies, each parsed
/// into one Arrow batch per table (as `flight` builds them, before the clock), sent by Flight
/// `DoPut` into [`doput_db`] over as many connections as the line-protocol load, up to
/// [`flight::BATCHES_PER_CALL_DEFAULT`] batches of one table per call, every `PutResult` read.
/// Then each table must hold as many rows in both databases as were generated; the server is
/// stopped cleanly again. Fails on any error status, short receipt or count mismatch.
async fn ingest_doput(
    annals: &mut Server,
    o: &CompareOptions,
    lp: &Outcome,
) -> Result<DoPutOutcome> {
    let db = doput_db(&o.db);
    annals.respawn()?;
    annals.wait_ready("/health", Some(200)).await?;
    eprintln!(
        "annals: restarted at {}; converting the same bodies to Arrow for DoPut into {db}...",
        annals.base_url
    );
    let disk_before = annals.data_bytes()?;
    let put_opts = PutOptions {
        iot: &o.iot,
        batch_lines: o.batch_lines,
        db: &db,
        batches_per_call: flight::BATCHES_PER_CALL_DEFAULT,
        connections: o.connections,
        timeout: o.timeout,
        tags: flight::ArrowTags::Utf8,
    };
    let put = match flight::ingest_arrow(annals, &put_opts).await {
        Ok(put) => put,
        Err(e) => {
            return Err(match annals.check_alive() {
                Ok(()) => e.context("annals: DoPut failed"),
                Err(dead) => e.context(format!("{dead:#}")),
            })
        }
    };
    annals.check_alive()?;
    let peak_rss = annals.peak_rss_bytes()?;
    let cpu_secs = annals.cpu_seconds()?;
    let disk_bytes = annals.data_bytes()?.saturating_sub(disk_before);
    ensure!(
        put.timed.rows == lp.load.rows,
        "annals acknowledged {} rows by DoPut, {} by line protocol",
        put.timed.rows,
        lp.load.rows
    );
    let client = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    for (table, &sent) in &put.table_rows {
        for counted_db in [&o.db, &db] {
            let have = flight::count_rows(&client, annals, counted_db, table).await?;
            ensure!(
                have == sent,
                "annals: {counted_db}.{table} holds {have} rows, {sent} were generated"
            );
        }
        eprintln!("annals: {table}: {sent} rows in both {} and {db}", o.db);
    }
    annals.terminate()?;
    let disk_bytes_stopped = annals.data_bytes()?.saturating_sub(lp.disk_bytes_stopped);
    Ok(DoPutOutcome {
        db,
        put,
        peak_rss,
        cpu_secs,
        disk_bytes,
        disk_bytes_stopped,
    })
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// `Intel(R) Xeon(R) ..., 2 cores, 7.8 GiB RAM, Linux 6.1.0`.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {:.1} GiB RAM, Linux {}",
        mem_kb as f64 / f64::from(1 << 20),
        kernel.trim()
    )
}

/// Today's date (UTC) and time to the minute.
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = query::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn timing_cell(t: &Timing) -> String {
    format!("{:.1}", t.median())
}

fn report(opts: &SideOptions, r: &Results) -> Result<String> {
    let o = &opts.ingest;
    let iot: &IotConfig = &o.iot;
    let mut s = String::new();
    let secs = iot.steps * iot.interval_ns as u64 / 1_000_000_000;
    let span = match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    let args: Vec<String> = std::env::args().collect();
    writeln!(
        s,
        "\n### Side by side, TSBS iot: {} trucks x {span}, {} rows\n",
        iot.trucks,
        thousands(r.rows)
    )?;
    writeln!(s, "`{}`\n", args.join(" "))?;
    let [annals, influx] = &r.ingest[..] else {
        bail!("two ingest outcomes expected");
    };
    writeln!(
        s,
        "{}; {}. Peers: {}, {}, {}, DuckDB {} (Python). Seed {}, bodies of {} lines, {} \
         connections per server, gzip {}, annals endpoint {}.\n",
        now_utc(),
        machine(),
        annals.label,
        influx.label,
        r.postgres_version,
        r.duckdb_version,
        iot.seed,
        o.batch_lines,
        o.connections,
        if o.gzip { "on" } else { "off" },
        o.annals_endpoint,
    )?;
    writeln!(s, "#### Ingest\n")?;
    writeln!(
        s,
        "| server | how | rows/s | p50 ms | p99 ms | peak memory MiB | disk bytes/row at last ack | after clean stop | server CPU s |"
    )?;
    writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (out, how) in [
        (annals, "line protocol over HTTP"),
        (influx, "line protocol over HTTP (v1)"),
    ] {
        writeln!(
            s,
            "| {} | {how} | {} | {:.1} | {:.1} | {:.0} (VmHWM) | {:.1} | {:.1} | {:.1} |",
            out.label,
            thousands(out.load.rows_per_sec().round() as u64),
            load::ms(out.load.p50),
            load::ms(out.load.p99),
            mib(out.peak_rss),
            out.disk_bytes as f64 / out.load.rows as f64,
            out.disk_bytes_stopped as f64 / out.load.rows as f64,
            out.cpu_secs,
        )?;
    }
    if let Some(d) = &r.doput {
        let put = &d.put;
        writeln!(
            s,
            "| annals (Arrow Flight DoPut) | Arrow record batches over Flight `DoPut` ({:.1} MB \
             of IPC) | {} | – | – | {:.0} (VmHWM) | {:.1} | {:.1} | {:.1} |",
            put.timed.bytes as f64 / 1e6,
            thousands(put.timed.rows_per_sec().round() as u64),
            mib(d.peak_rss),
            d.disk_bytes as f64 / put.timed.rows as f64,
            d.disk_bytes_stopped as f64 / put.timed.rows as f64,
            d.cpu_secs,
        )?;
    }
    let pg = &r.postgres;
    let pg_rate = pg.rows as f64 / pg.elapsed.as_secs_f64();
    writeln!(
        s,
        "| {} | CSV through `COPY` ({:.1} MB) | {} | – | – | {:.0} (PSS sum) | {:.1} | {:.1} | {:.1} |",
        r.postgres_version,
        pg.csv_bytes as f64 / 1e6,
        thousands(pg_rate.round() as u64),
        mib(pg.peak_pss),
        pg.disk_bytes as f64 / pg.rows as f64,
        r.postgres_disk_stopped as f64 / pg.rows as f64,
        pg.cpu_secs,
    )?;
    writeln!(
        s,
        "\nannals ÷ InfluxDB: {} rows/s, {} peak memory, {} disk bytes/row after clean stop. \
         annals ÷ PostgreSQL: {} rows/s, {} disk bytes/row after clean stop; PostgreSQL's two \
         tables alone (`pg_total_relation_size`, no index) take {:.1} bytes/row.\n",
        ratio(annals.load.rows_per_sec(), influx.load.rows_per_sec()),
        ratio(annals.peak_rss as f64, influx.peak_rss as f64),
        ratio(
            annals.disk_bytes_stopped as f64,
            influx.disk_bytes_stopped as f64
        ),
        ratio(annals.load.rows_per_sec(), pg_rate),
        ratio(
            annals.disk_bytes_stopped as f64,
            r.postgres_disk_stopped as f64
        ),
        pg.table_bytes as f64 / pg.rows as f64,
    )?;
    if let Some(d) = &r.doput {
        let put = &d.put;
        writeln!(
            s,
            "annals Arrow Flight `DoPut` ÷ annals line protocol: {} rows/s; ÷ InfluxDB: {} \
             rows/s. The same rows, parsed by annals' line-protocol parser into one Arrow batch \
             per table and body (up to {} rows; tags `Utf8`, `time` `Timestamp(ns)`), {} \
             batches in {} `DoPut` calls of up to {} batches of one table ({} closed early by a \
             change of columns), over {} HTTP/2 connections into `{}` on the same annals, \
             restarted on its line-protocol data; every `PutResult` (the row count of a batch, \
             `annals-receipt: count`) read. The conversion and IPC encoding happen before the clock, as the \
             line-protocol bodies are built before theirs. Each table holds the generated rows \
             in both `{}` and `{}`. p50/p99 are per-request latencies, which a `DoPut` call of \
             several batches has no counterpart for; memory and CPU are the restarted \
             process's (startup and `DoPut`); disk is what the data dir grew by.\n",
            ratio(put.timed.rows_per_sec(), annals.load.rows_per_sec()),
            ratio(put.timed.rows_per_sec(), influx.load.rows_per_sec()),
            o.batch_lines,
            thousands(put.batches),
            thousands(put.calls as u64),
            flight::BATCHES_PER_CALL_DEFAULT,
            put.schema_cuts,
            o.connections,
            d.db,
            o.db,
            d.db,
        )?;
    }
    writeln!(
        s,
        "Peak memory: annals and InfluxDB are one process each (`VmHWM` at the end of the load); \
         PostgreSQL is a postmaster and a backend per connection, so its figure is the highest \
         sum of their PSS (shared buffers split among the processes that map them) sampled every \
         50 ms during `COPY`. CPU: the servers' user + system seconds for startup and load \
         (PostgreSQL: postmaster, its live and finished children). Disk: bytes allocated under \
         each data dir (WAL and catalogs included), at the last acknowledgement and after a clean \
         stop.\n"
    )?;

    writeln!(s, "#### Queries\n")?;
    writeln!(
        s,
        "Median ms of {} runs after one warm-up. annals over HTTP (request to last byte, JSON \
         lines), after a restart, reading its block files; DuckDB in process (Python) over a \
         Parquet export of annals' rows; PostgreSQL through `psql` (`\\timing`: send to last row \
         received), no index; InfluxDB 1.x over HTTP (InfluxQL, `/query`). Ratios are annals' \
         time ÷ the peer's (below 1: annals is faster). Answers are compared with annals' after \
         sorting, numbers within a relative {:e}.\n",
        opts.runs,
        answers::FLOAT_TOLERANCE
    )?;
    writeln!(
        s,
        "| query | rows | annals ms | DuckDB ms | PostgreSQL ms | InfluxDB ms | ÷ DuckDB | ÷ PostgreSQL | ÷ InfluxDB | answers |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for (i, name) in r.names.iter().enumerate() {
        let (a, d, p) = (&r.annals[i], &r.duckdb[i], &r.postgres_answers[i]);
        let influx = r.influxdb[i].as_ref();
        let differs: Vec<&str> = ["DuckDB", "PostgreSQL", "InfluxDB"]
            .into_iter()
            .filter(|peer| {
                r.differences
                    .iter()
                    .any(|d| d.starts_with(&format!("{name}: {peer}:")))
            })
            .collect();
        let verdict = if differs.is_empty() {
            "agree".to_owned()
        } else {
            format!("**differ: {}**", differs.join(", "))
        };
        writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {verdict} |",
            a.rows.len(),
            timing_cell(&a.timing),
            timing_cell(&d.timing),
            timing_cell(&p.timing),
            influx.map_or("–".into(), |x| timing_cell(&x.timing)),
            ratio(a.timing.median(), d.timing.median()),
            ratio(a.timing.median(), p.timing.median()),
            influx.map_or("–".into(), |x| ratio(
                a.timing.median(),
                x.timing.median()
            )),
        )?;
    }
    let total = |answers: &[Answer]| answers.iter().map(|a| a.timing.median()).sum::<f64>();
    let (ta, td, tp) = (
        total(&r.annals),
        total(&r.duckdb),
        total(&r.postgres_answers),
    );
    writeln!(
        s,
        "\nAll eight queries: annals {ta:.1} ms, DuckDB {td:.1} ms (annals ÷ DuckDB {}), \
         PostgreSQL {tp:.1} ms (annals ÷ PostgreSQL {}).",
        ratio(ta, td),
        ratio(ta, tp),
    )?;
    if !r.influx_missing.is_empty() {
        writeln!(
            s,
            "\nNo InfluxQL equivalent (`benches/queries/tsbs_influxql.sql`):"
        )?;
        for (name, why) in &r.influx_missing {
            writeln!(s, "- {name}: {why}")?;
        }
    }
    if !r.differences.is_empty() {
        writeln!(s, "\n**Answers that differ from annals':**\n")?;
        for d in &r.differences {
            writeln!(s, "- {d}")?;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_queries_match_the_portable_ones() {
        let sql = read_queries(&repo_file("../query/tests/tsbs_queries.sql")).unwrap();
        let pg = read_queries(&repo_file("queries/tsbs_postgres.sql")).unwrap();
        let names = |q: &[(String, String)]| q.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&sql), names(&pg));
        assert_eq!(sql.len(), 8);
        for ((_, a), (_, b)) in sql.iter().zip(&pg) {
            let portable = b.replace("DOUBLE PRECISION", "DOUBLE").replace(
                "TIMESTAMPTZ '2016-01-01 00:00:00+00'",
                "TIMESTAMP '2016-01-01 00:00:00'",
            );
            assert_eq!(&portable, a, "only the documented differences");
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

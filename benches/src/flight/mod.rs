//! `flight`: the same TSBS iot rows into one annals server over HTTP line protocol and over
//! Arrow Flight `DoPut`, then `SELECT * FROM readings` streamed back by Flight `DoGet` (and,
//! for context, once as JSON over HTTP); a markdown table at the end.
//!
//! Steps, on one `annals serve` started here (fresh temp dir, free loopback port):
//! 1. line protocol: every body to `/api/v3/write_lp` into database [`LP_DB`], as `load` sends
//!    it (`--connections` keep-alive HTTP/1.1 connections, `--gzip` honoured);
//! 2. Flight: the same generated bodies, each turned into one Arrow batch per table by annals'
//!    own line-protocol parser ([`arrow::lp_to_arrow`]), into database [`ARROW_DB`]:
//!    `--connections` gRPC connections to the HTTP port (h2c), each taking the next call from a
//!    shared index and streaming its batches of one table (`--batches-per-call`, fewer when the
//!    columns change: a `DoPut` stream has one schema) in one `DoPut` with the path descriptor
//!    `[database, table]`; every `PutResult` is read, and the rows the receipts acknowledge
//!    must add up to the rows sent;
//! 3. `SELECT count(*)` of each table in both databases (HTTP SQL) must equal the generated
//!    rows;
//! 4. one warm-up, then `--stream-runs` timed `DoGet` runs of [`STREAM_SQL`] on [`ARROW_DB`]
//!    (InfluxDB 3 JSON ticket), median reported; then one timed run of the same SQL as
//!    `/api/v3/query_sql?format=json`.
//!
//! Fairness: each side's input is built before its clock starts (line-protocol bodies, gzipped
//! with `--gzip`; Arrow batches converted and encoded into Flight IPC messages), so both clocks
//! measure the server and the wire, and both clients open their connections inside the clock.
//! Arrow batches are plain IPC (no compression), tags `Utf8` (or, with `--arrow-tags dict`,
//! `Dictionary(Int32, Utf8)`) marked with the field metadata `annals.kind = "tag"`, `time`
//! `Timestamp(Nanosecond)`. The Flight side runs second on the same server, which then already
//! holds the line-protocol rows.
//!
//! Memory: one side's input is held at a time: at most [`load::INPUT_BYTES_MAX`] of line
//! protocol (checked by `load`), then at most as many bytes of Arrow IPC
//! ([`put::ArrowWorkload`]). Result streams are counted as they arrive, never collected.
//!
//! Parts: [`arrow`] (line protocol to Arrow batches, also used by `gen --format parquet`),
//! [`put`] (`DoPut` calls and their sending, also used by `compare`), [`get`] (`DoGet`, HTTP
//! JSON and row counts), [`report`] (the table).

mod arrow;
mod get;
mod put;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use annals_bench::tsbs::IotConfig;
use anyhow::{anyhow, bail, ensure, Context, Result};

pub(crate) use self::arrow::ArrowTags;
pub(crate) use self::arrow::{lp_to_arrow, KIND_KEY, KIND_TAG, TIME_COLUMN};
pub(crate) use self::get::count_rows;
pub(crate) use self::put::{ingest_arrow, PutFigures, PutOptions};

use self::get::{do_get_once, http_json_once, verify_counts};
use self::put::{flight_client, Timed};
use self::report::print_table;
use crate::compare;
use crate::load::{self, Endpoint, LoadOptions, LoadReport, Workload};
use crate::server::{self, Server};

/// Database the line-protocol side writes to.
pub(crate) const LP_DB: &str = "lp";
/// Database the Flight side writes to and streams from.
pub(crate) const ARROW_DB: &str = "arrow";
/// The query streamed back.
pub(crate) const STREAM_SQL: &str = "SELECT * FROM readings";
/// Arrow batches streamed in one `DoPut` call.
pub(crate) const BATCHES_PER_CALL_MAX: usize = 1024;
/// `--batches-per-call` unless given (also what `compare` uses).
pub(crate) const BATCHES_PER_CALL_DEFAULT: usize = 16;
/// Timed `DoGet` runs.
pub(crate) const STREAM_RUNS_MAX: usize = 100;
/// One whole-table query (a `DoGet` run or the JSON run) may take this long.
const QUERY_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// What `annals-bench flight` runs.
#[derive(Debug)]
pub(crate) struct FlightOptions {
    pub(crate) iot: IotConfig,
    pub(crate) connections: usize,
    pub(crate) batch_lines: usize,
    pub(crate) gzip: bool,
    pub(crate) batches_per_call: usize,
    pub(crate) stream_runs: usize,
    pub(crate) arrow_tags: ArrowTags,
    pub(crate) annals_bin: Option<PathBuf>,
    pub(crate) work_dir: PathBuf,
    pub(crate) timeout: Duration,
}

impl FlightOptions {
    fn check(&self) -> Result<()> {
        if self.batches_per_call == 0 || self.batches_per_call > BATCHES_PER_CALL_MAX {
            bail!("--batches-per-call must be between 1 and {BATCHES_PER_CALL_MAX}");
        }
        if self.stream_runs == 0 || self.stream_runs > STREAM_RUNS_MAX {
            bail!("--stream-runs must be between 1 and {STREAM_RUNS_MAX}");
        }
        compare::check_scale(&self.iot)
    }
}

/// Everything measured, for the table.
#[derive(Debug)]
struct Figures {
    server: String,
    lp: LoadReport,
    lp_cpu_secs: f64,
    lp_requests: usize,
    put: PutFigures,
    /// The median `DoGet` run.
    get: Timed,
    /// Timed `DoGet` runs.
    get_runs: usize,
    json: Timed,
    peak_rss: u64,
}

/// `r`, its error with the server's exit status and log tail if the server is gone.
fn explained<T>(r: Result<T>, server: &mut Server) -> Result<T> {
    r.map_err(|e| match server.check_alive() {
        Ok(()) => e,
        Err(dead) => e.context(format!("{dead:#}")),
    })
}

/// Starts the server, runs the steps of the module doc, stops the server and prints the
/// table; fails on the first error, row-count mismatch or server exit.
pub(crate) async fn run(opts: FlightOptions) -> Result<()> {
    opts.check()?;
    let bin = compare::resolve_annals(opts.annals_bin.as_deref())?;
    let mut server = server::start_annals(&bin, &opts.work_dir)?;
    eprintln!(
        "{}: starting {} at {}",
        server.name, server.version, server.base_url
    );
    server.wait_ready("/health", Some(200)).await?;
    let http = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT_MAX)
        .build()
        .context("building the HTTP client")?;

    let (lp, lp_cpu_secs, lp_requests) = explained(ingest_lp(&server, &opts).await, &mut server)?;
    eprintln!("converting the same bodies to Arrow batches...");
    let put_opts = PutOptions {
        iot: &opts.iot,
        batch_lines: opts.batch_lines,
        db: ARROW_DB,
        batches_per_call: opts.batches_per_call,
        connections: opts.connections,
        timeout: opts.timeout,
        tags: opts.arrow_tags,
    };
    let put = explained(ingest_arrow(&server, &put_opts).await, &mut server)?;
    ensure!(
        put.timed.rows == lp.rows,
        "the Flight side wrote {} rows, line protocol {}",
        put.timed.rows,
        lp.rows
    );
    eprintln!("checking row counts...");
    explained(
        verify_counts(&http, &server, &put.table_rows).await,
        &mut server,
    )?;
    let readings = put.table_rows.get("readings").copied().unwrap_or(0);
    let (get, get_runs) = explained(stream(&server, &opts, readings).await, &mut server)?;
    eprintln!("{ARROW_DB}: {STREAM_SQL} as JSON over HTTP...");
    let cpu = server.cpu_seconds()?;
    let json = explained(
        http_json_once(&http, &server, ARROW_DB, STREAM_SQL).await,
        &mut server,
    )?;
    ensure!(
        json.rows == readings,
        "the JSON answer has {} rows, readings has {readings}",
        json.rows
    );
    let json = Timed {
        rows: json.rows,
        bytes: json.bytes,
        elapsed: json.elapsed,
        server_cpu_secs: server.cpu_seconds()? - cpu,
    };
    server.check_alive()?;
    let figures = Figures {
        server: server.version.clone(),
        lp,
        lp_cpu_secs,
        lp_requests,
        put,
        get,
        get_runs,
        json,
        peak_rss: server.peak_rss_bytes()?,
    };
    server.stop();
    print_table(&opts, &figures);
    Ok(())
}

/// The line-protocol side: every body into [`LP_DB`]; returns the report, the server's CPU
/// seconds and the number of bodies.
async fn ingest_lp(server: &Server, opts: &FlightOptions) -> Result<(LoadReport, f64, usize)> {
    let iot = &opts.iot;
    eprintln!(
        "generating {} trucks x {} steps (seed {}) in bodies of {} lines...",
        iot.trucks, iot.steps, iot.seed, opts.batch_lines
    );
    let work = Workload::from_batches(iot.batches(opts.batch_lines), opts.gzip)?;
    let requests = work.requests();
    eprintln!(
        "{LP_DB}: {} rows, {:.1} MB of line protocol in {requests} bodies over {} connections...",
        work.lines,
        work.raw_bytes as f64 / 1e6,
        opts.connections
    );
    let load_opts = LoadOptions {
        url: server.base_url.clone(),
        db: LP_DB.to_owned(),
        endpoint: Endpoint::V3,
        connections: opts.connections,
        timeout: opts.timeout,
        progress: true,
    };
    let cpu = server.cpu_seconds()?;
    // The bodies are freed when the load returns, before the Arrow side is built.
    let report = load::run(&load_opts, Arc::new(work)).await?;
    let cpu = server.cpu_seconds()? - cpu;
    eprintln!("{LP_DB}: {:.0} rows/s", report.rows_per_sec());
    Ok((report, cpu, requests))
}

/// One warm-up, then `--stream-runs` timed `DoGet` runs of [`STREAM_SQL`]; returns the median
/// run (by time) and the number of timed runs. Every run must return all `rows`.
async fn stream(server: &Server, opts: &FlightOptions, rows: u64) -> Result<(Timed, usize)> {
    let mut client = flight_client(&server.base_url)?;
    let mut runs = Vec::with_capacity(opts.stream_runs);
    for run in 0..=opts.stream_runs {
        let cpu = server.cpu_seconds()?;
        let s = tokio::time::timeout(
            QUERY_TIMEOUT_MAX,
            do_get_once(&mut client, ARROW_DB, STREAM_SQL),
        )
        .await
        .map_err(|_| anyhow!("DoGet took more than {QUERY_TIMEOUT_MAX:?}"))??;
        ensure!(
            s.rows == rows,
            "DoGet returned {} rows, readings has {rows}",
            s.rows
        );
        let label = if run == 0 { "warm-up" } else { "run" };
        eprintln!(
            "{ARROW_DB}: DoGet {label}: {} rows in {:.2} s",
            s.rows,
            s.elapsed.as_secs_f64()
        );
        if run > 0 {
            runs.push(Timed {
                rows: s.rows,
                bytes: s.bytes,
                elapsed: s.elapsed,
                server_cpu_secs: server.cpu_seconds()? - cpu,
            });
        }
    }
    runs.sort_by_key(|t| t.elapsed);
    Ok((runs[(runs.len() - 1) / 2], runs.len()))
}

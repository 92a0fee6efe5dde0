//! `annals-bench`: generate the TSBS iot workload, load it into a server, compare servers, and
//! compare annals' own ingest paths (`flight`: HTTP line protocol vs Arrow Flight `DoPut` of
//! the same rows, then Flight `DoGet` streaming). See `benches/README.md` for the commands and
//! what each figure means.

mod answers;
mod codecs;

/// This package's directory, where the query files and scripts are: the one `cargo` names
/// when it runs the harness (a binary built from another checkout of the same sources then
/// still reads this checkout's files), else the one it was built in.
fn package_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.join("queries/tsbs_postgres.sql").is_file())
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
mod compare;
mod flight;
mod gen_parquet;
mod influxql;
mod load;
mod postgres;
mod query;
mod server;
mod side;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_bench::tsbs::{parse_duration, IotConfig, Irregularities};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::compare::{CompareOptions, Peer};
use crate::load::{Endpoint, LoadOptions, Workload};

/// Lines generated per write call of `gen`.
const GEN_CHUNK_LINES: usize = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "annals-bench",
    version,
    about = "Workloads and ingest harness for annals"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write the TSBS iot workload as line protocol (readings and diagnostics interleaved), or
    /// as one Parquet file per table with `--format parquet`.
    Gen(GenArgs),
    /// Send line protocol to a server speaking the InfluxDB write API and report throughput.
    Load(LoadArgs),
    /// Start InfluxDB 1.x and annals, load the same batches into each, print a markdown table.
    CompareIngest(CompareArgs),
    /// Load the workload into annals once, export it to Parquet, time the TSBS iot queries on
    /// annals and on DuckDB (Python), print a markdown table.
    CompareQuery(CompareQueryArgs),
    /// Everything side by side: ingest into annals, InfluxDB 1.x and PostgreSQL (COPY), the
    /// TSBS iot queries on annals, DuckDB, PostgreSQL and InfluxDB (InfluxQL); check that every
    /// answer agrees and print one markdown report with ratios.
    Compare(SideArgs),
    /// Line protocol vs Arrow Flight DoPut ingest of the same rows, then Flight DoGet
    /// streaming; prints a markdown table.
    Flight(FlightArgs),
    /// Rewrite Parquet block files under each codec annals could use and time decoding
    /// columns from a file and from memory; prints a markdown table.
    Codecs(CodecArgs),
}

#[derive(Debug, Args)]
struct CodecArgs {
    /// Block files (`<data dir>/blocks/<branch>/*.parquet`) of one table.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Column sets to decode, each comma-separated; repeat the flag for several.
    #[arg(long = "columns", required = true)]
    columns: Vec<String>,
    /// Where the rewritten files go for the run (removed after each codec).
    #[arg(long, default_value = "codecs-out")]
    out_dir: PathBuf,
    /// Timed decodes per codec and column set; the best is shown.
    #[arg(long, default_value_t = 4)]
    runs: usize,
}

/// Scale of the TSBS iot workload: `trucks × duration / 10 s × 2` lines before irregularities.
#[derive(Debug, Args)]
struct Scale {
    /// Number of trucks (series per table).
    #[arg(long, default_value_t = 100)]
    trucks: u64,
    /// Simulated time span, e.g. 90s, 30m, 6h, 1d, 1h30m (one step every 10 s).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    duration: Duration,
    /// Seed; the same seed and scale always give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No missing rows, null fields, cleared tags or late rows.
    #[arg(long)]
    regular: bool,
}

impl Scale {
    fn config(&self) -> Result<IotConfig> {
        let mut cfg = IotConfig::new(self.trucks, self.duration, self.seed)?;
        if self.regular {
            cfg.irregularities = Irregularities::NONE;
        }
        Ok(cfg)
    }
}

/// What `gen` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GenFormat {
    /// One line-protocol file, the two tables interleaved in time order.
    Lp,
    /// A directory with `readings.parquet` and `diagnostics.parquet`.
    Parquet,
}

#[derive(Debug, Args)]
struct GenArgs {
    #[command(flatten)]
    scale: Scale,
    /// Output: a file (`-` for standard output) for line protocol, a directory for Parquet.
    #[arg(long)]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "lp")]
    format: GenFormat,
}

/// How requests are shaped and sent.
#[derive(Debug, Args)]
struct SendArgs {
    /// Concurrent keep-alive HTTP/1.1 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Lines per request body.
    #[arg(long, default_value_t = 5000)]
    batch_lines: usize,
    /// Gzip every body (done before the clock starts) and send `Content-Encoding: gzip`.
    #[arg(long)]
    gzip: bool,
    /// Database (v1, v3) or bucket (v2) name.
    #[arg(long, default_value = SendArgs::DB_DEFAULT)]
    db: String,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

impl SendArgs {
    const DB_DEFAULT: &str = "bench";

    fn check(&self) -> Result<()> {
        if self.batch_lines == 0 || self.batch_lines > load::BATCH_LINES_MAX {
            bail!(
                "--batch-lines must be between 1 and {}",
                load::BATCH_LINES_MAX
            );
        }
        if self.connections == 0 || self.connections > load::CONNECTIONS_MAX {
            bail!(
                "--connections must be between 1 and {}",
                load::CONNECTIONS_MAX
            );
        }
        load::check_db_name(&self.db)
    }
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8086")]
    url: String,
    /// Write API: v1 `/write`, v2 `/api/v2/write`, v3 `/api/v3/write_lp`.
    #[arg(long, value_enum, default_value = "v1")]
    endpoint: Endpoint,
    /// Line-protocol file to send (else the workload is generated in memory from the scale).
    #[arg(long, conflicts_with_all = ["trucks", "duration", "seed", "regular"])]
    file: Option<PathBuf>,
    #[command(flatten)]
    scale: Scale,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Debug, Args)]
struct CompareArgs {
    #[command(flatten)]
    scale: Scale,
    #[command(flatten)]
    send: SendArgs,
    /// annals binary [default: target/release/annals]
    #[arg(long)]
    annals_bin: Option<PathBuf>,
    /// Write API used for annals (InfluxDB 1.x gets v1).
    #[arg(long, value_enum, default_value = "v1")]
    annals_endpoint: Endpoint,
    /// InfluxDB 1.x server binary, looked up in PATH unless it has a slash.
    #[arg(long, default_value = "influxd")]
    influxd_bin: PathBuf,
    /// Measure one server only.
    #[arg(long, value_enum)]
    only: Option<Peer>,
    /// Where the servers' temp dirs go [default: the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the servers' data dirs and logs after the run.
    #[arg(long)]
    keep_dirs: bool,
}

#[derive(Debug, Args)]
struct CompareQueryArgs {
    #[command(flatten)]
    scale: Scale,
    #[command(flatten)]
    send: SendArgs,
    /// Directory kept between runs: annals' data dir, the Parquet export, what was loaded.
    #[arg(long)]
    dir: PathBuf,
    /// annals binary [default: target/release/annals]
    #[arg(long)]
    annals_bin: Option<PathBuf>,
    /// Timed runs per query and side (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Python with the `duckdb` package.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Queries under `-- name:` headers [default: query/tests/tsbs_queries.sql].
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Time annals alone (no Parquet export, no DuckDB).
    #[arg(long)]
    annals_only: bool,
    /// Extra flag passed to `annals serve` (repeat for several).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
}

#[derive(Debug, Args)]
struct SideArgs {
    #[command(flatten)]
    scale: Scale,
    #[command(flatten)]
    send: SendArgs,
    /// annals binary [default: target/release/annals]
    #[arg(long)]
    annals_bin: Option<PathBuf>,
    /// Write API used for annals (InfluxDB 1.x gets v1).
    #[arg(long, value_enum, default_value = "v1")]
    annals_endpoint: Endpoint,
    /// InfluxDB 1.x server binary, looked up in PATH unless it has a slash.
    #[arg(long, default_value = "influxd")]
    influxd_bin: PathBuf,
    /// Directory holding PostgreSQL's initdb, postgres and psql [default: PATH, then
    /// /usr/lib/postgresql/<newest>/bin].
    #[arg(long)]
    postgres_bin_dir: Option<PathBuf>,
    /// Python with the `duckdb` package.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Timed runs per query and peer (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Where the servers' temp dirs and the Parquet export go [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the servers' data dirs, logs and the export after the run.
    #[arg(long)]
    keep_dirs: bool,
    /// Skip annals' Arrow Flight DoPut ingest of the same rows (into `<db>_arrow`).
    #[arg(long)]
    no_doput: bool,
}

#[derive(Debug, Args)]
struct FlightArgs {
    #[command(flatten)]
    scale: Scale,
    // `--connections` is used by both sides; `--batch-lines` is the lines of a line-protocol
    // body and so the rows of the Arrow batches made from it (one per table); `--db` is refused
    // (the sides write to `lp` and `arrow`).
    #[command(flatten)]
    send: SendArgs,
    /// annals binary [default: target/release/annals]
    #[arg(long)]
    annals_bin: Option<PathBuf>,
    /// Where the server's temp dir goes [default: the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Arrow batches (of one table) streamed in one DoPut call.
    #[arg(long, default_value_t = flight::BATCHES_PER_CALL_DEFAULT)]
    batches_per_call: usize,
    /// Timed DoGet runs of `SELECT * FROM readings` (after one warm-up); the median is shown.
    #[arg(long, default_value_t = 3)]
    stream_runs: usize,
    /// How the Arrow batches carry tags: `utf8` (plain strings) or `dict`
    /// (`Dictionary(Int32, Utf8)`, as pyarrow's `dictionary_encode` and categorical columns give).
    #[arg(long, value_enum, default_value_t = flight::ArrowTags::Utf8)]
    arrow_tags: flight::ArrowTags,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Gen(args) => gen(args),
        Cmd::Load(args) => runtime()?.block_on(interruptible(load(args))),
        Cmd::CompareIngest(args) => runtime()?.block_on(interruptible(compare(args))),
        Cmd::CompareQuery(args) => runtime()?.block_on(interruptible(compare_query(args))),
        Cmd::Compare(args) => runtime()?.block_on(interruptible(side_by_side(args))),
        Cmd::Flight(args) => runtime()?.block_on(interruptible(flight(args))),
        Cmd::Codecs(args) => codecs::run(&args.files, &args.columns, &args.out_dir, args.runs),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Runs `fut` until done or Ctrl-C; dropping it on Ctrl-C kills any server it started.
async fn interruptible(fut: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::select! {
        r = fut => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

fn gen(args: GenArgs) -> Result<()> {
    let cfg = args.scale.config()?;
    if args.format == GenFormat::Parquet {
        return gen_parquet(&cfg, &args.out);
    }
    let started = Instant::now();
    let mut out: Box<dyn std::io::Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let file = std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        Box::new(file)
    };
    let mut gen = cfg.generator();
    let mut buf = Vec::with_capacity(GEN_CHUNK_LINES * 256);
    let mut bytes = 0u64;
    while gen.fill(&mut buf, GEN_CHUNK_LINES) > 0 {
        out.write_all(&buf).context("writing line protocol")?;
        bytes += buf.len() as u64;
        buf.clear();
    }
    out.flush()?;
    let s = gen.stats();
    eprintln!(
        "{} lines ({:.1} MB) of {} slots in {:.2} s: {} missing, {} late, {} with a null field, \
         {} with a cleared tag",
        s.emitted,
        bytes as f64 / 1e6,
        s.entries,
        started.elapsed().as_secs_f64(),
        s.missing,
        s.late,
        s.null_fields,
        s.cleared_tags
    );
    Ok(())
}

/// `gen --format parquet`: one file per table in `dir`, streamed (see `gen_parquet`).
fn gen_parquet(cfg: &annals_bench::tsbs::IotConfig, dir: &std::path::Path) -> Result<()> {
    if dir.as_os_str() == "-" {
        bail!("--format parquet writes a directory; --out - is for line protocol");
    }
    let started = Instant::now();
    let out = gen_parquet::write(cfg, dir, gen_parquet::ROW_GROUP_ROWS_MAX)?;
    for (path, rows, groups) in &out.files {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        eprintln!(
            "{}: {rows} rows in {groups} row groups ({:.1} MB)",
            path.display(),
            bytes as f64 / 1e6
        );
    }
    let s = out.stats;
    eprintln!(
        "{} rows of {} slots in {:.2} s: {} missing, {} late, {} with a null field, {} with a \
         cleared tag",
        s.emitted,
        s.entries,
        started.elapsed().as_secs_f64(),
        s.missing,
        s.late,
        s.null_fields,
        s.cleared_tags
    );
    Ok(())
}

async fn load(args: LoadArgs) -> Result<()> {
    args.send.check()?;
    let work = match &args.file {
        Some(path) => Workload::from_file(path, args.send.batch_lines, args.send.gzip)?,
        None => {
            let cfg = args.scale.config()?;
            compare::check_scale(&cfg)?;
            Workload::from_batches(cfg.batches(args.send.batch_lines), args.send.gzip)?
        }
    };
    eprintln!(
        "{} rows, {:.1} MB of line protocol in {} bodies -> {}",
        work.lines,
        work.raw_bytes as f64 / 1e6,
        work.requests(),
        args.endpoint.url(&args.url, &args.send.db)
    );
    let opts = LoadOptions {
        url: args.url,
        db: args.send.db,
        endpoint: args.endpoint,
        connections: args.send.connections,
        timeout: Duration::from_secs(args.send.timeout_secs),
        progress: true,
    };
    let report = load::run(&opts, Arc::new(work)).await?;
    report.print(args.send.gzip);
    Ok(())
}

async fn compare(args: CompareArgs) -> Result<()> {
    args.send.check()?;
    let iot = args.scale.config()?;
    compare::check_scale(&iot)?;
    compare::run(CompareOptions {
        iot,
        connections: args.send.connections,
        batch_lines: args.send.batch_lines,
        gzip: args.send.gzip,
        db: args.send.db,
        annals_bin: args.annals_bin,
        annals_endpoint: args.annals_endpoint,
        influxd_bin: args.influxd_bin,
        only: args.only,
        work_dir: args.work_dir.unwrap_or_else(std::env::temp_dir),
        keep_dirs: args.keep_dirs,
        timeout: Duration::from_secs(args.send.timeout_secs),
    })
    .await
}

async fn side_by_side(args: SideArgs) -> Result<()> {
    args.send.check()?;
    let iot = args.scale.config()?;
    compare::check_scale(&iot)?;
    let work_dir = args.dir.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    side::run(side::SideOptions {
        ingest: CompareOptions {
            iot,
            connections: args.send.connections,
            batch_lines: args.send.batch_lines,
            gzip: args.send.gzip,
            db: args.send.db,
            annals_bin: args.annals_bin,
            annals_endpoint: args.annals_endpoint,
            influxd_bin: args.influxd_bin,
            only: None,
            work_dir,
            keep_dirs: args.keep_dirs,
            timeout: Duration::from_secs(args.send.timeout_secs),
        },
        runs: args.runs,
        python: args.python,
        postgres_bin_dir: args.postgres_bin_dir,
        doput: !args.no_doput,
    })
    .await
}

async fn compare_query(args: CompareQueryArgs) -> Result<()> {
    args.send.check()?;
    let iot = args.scale.config()?;
    let queries = args
        .queries
        .unwrap_or_else(|| package_dir().join("../query/tests/tsbs_queries.sql"));
    query::run(query::QueryOptions {
        iot,
        connections: args.send.connections,
        batch_lines: args.send.batch_lines,
        db: args.send.db,
        annals_bin: args.annals_bin,
        dir: args.dir,
        runs: args.runs,
        python: args.python,
        queries,
        annals_only: args.annals_only,
        serve_args: args.serve_args,
    })
    .await
}

async fn flight(args: FlightArgs) -> Result<()> {
    args.send.check()?;
    if args.send.db != SendArgs::DB_DEFAULT {
        bail!(
            "flight writes to the databases `{}` and `{}`; --db is not used",
            flight::LP_DB,
            flight::ARROW_DB
        );
    }
    flight::run(flight::FlightOptions {
        iot: args.scale.config()?,
        connections: args.send.connections,
        batch_lines: args.send.batch_lines,
        gzip: args.send.gzip,
        batches_per_call: args.batches_per_call,
        stream_runs: args.stream_runs,
        arrow_tags: args.arrow_tags,
        annals_bin: args.annals_bin,
        work_dir: args.work_dir.unwrap_or_else(std::env::temp_dir),
        timeout: Duration::from_secs(args.send.timeout_secs),
    })
    .await
}

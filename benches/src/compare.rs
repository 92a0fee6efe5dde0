//! `compare-ingest`: the same batches into InfluxDB 1.x then annals, one server at a time,
//! same client, same connections and batch size; a markdown table at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use annals_bench::tsbs::IotConfig;
use anyhow::{bail, Context, Result};

use crate::load::{self, Endpoint, LoadOptions, LoadReport, Workload};
use crate::server::{self, Server};

/// The peers `compare-ingest` knows how to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    Influxdb,
    Annals,
}

#[derive(Debug)]
pub(crate) struct CompareOptions {
    pub(crate) iot: IotConfig,
    pub(crate) connections: usize,
    pub(crate) batch_lines: usize,
    pub(crate) gzip: bool,
    pub(crate) db: String,
    pub(crate) annals_bin: Option<PathBuf>,
    pub(crate) annals_endpoint: Endpoint,
    pub(crate) influxd_bin: PathBuf,
    pub(crate) only: Option<Peer>,
    pub(crate) work_dir: PathBuf,
    pub(crate) keep_dirs: bool,
    pub(crate) timeout: Duration,
}

/// What one server did with the workload.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) label: String,
    pub(crate) load: LoadReport,
    pub(crate) peak_rss: u64,
    pub(crate) cpu_secs: f64,
    pub(crate) disk_bytes: u64,
    /// After a clean shutdown (annals: blocks sealed, files finished, WAL retired).
    pub(crate) disk_bytes_stopped: u64,
}

/// Where `annals` is: the path given, else `target/release/annals` from the current directory,
/// else from this workspace.
pub(crate) fn resolve_annals(given: Option<&Path>) -> Result<PathBuf> {
    let build = "build it with `cargo build -p annals-cli --release` from the workspace root, \
                 pass --annals-bin PATH, or measure InfluxDB alone with --only influxdb";
    if let Some(path) = given {
        return server::find_binary(path)
            .with_context(|| format!("annals binary {} not found; {build}", path.display()));
    }
    let candidates = [
        PathBuf::from("target/release/annals"),
        crate::package_dir().join("../target/release/annals"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "annals binary not found at {} nor {}; {build}",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

pub(crate) fn resolve_influxd(bin: &Path) -> Result<PathBuf> {
    server::find_binary(bin).with_context(|| {
        format!(
            "{} not found: compare-ingest needs InfluxDB 1.x's `influxd` (Debian: `apt-get install \
             -y influxdb`; or pass --influxd-bin PATH), or measure annals alone with --only annals",
            bin.display()
        )
    })
}

pub(crate) async fn run(opts: CompareOptions) -> Result<()> {
    load::check_db_name(&opts.db)?;
    let wants = |p: Peer| opts.only.is_none_or(|o| o == p);
    // Find both binaries before spending time on the workload.
    let influxd = wants(Peer::Influxdb)
        .then(|| resolve_influxd(&opts.influxd_bin))
        .transpose()?;
    let annals = wants(Peer::Annals)
        .then(|| resolve_annals(opts.annals_bin.as_deref()))
        .transpose()?;

    let iot = &opts.iot;
    eprintln!(
        "generating {} trucks x {} steps (seed {}) in batches of {} lines...",
        iot.trucks, iot.steps, iot.seed, opts.batch_lines
    );
    let work = Arc::new(Workload::from_batches(
        iot.batches(opts.batch_lines),
        opts.gzip,
    )?);
    eprintln!(
        "{} rows, {:.1} MB of line protocol, {} bodies",
        work.lines,
        work.raw_bytes as f64 / 1e6,
        work.requests()
    );

    let mut outcomes = Vec::new();
    if let Some(bin) = influxd {
        let mut server = server::start_influxdb(&bin, &opts.work_dir)?;
        outcomes.push(measure(&mut server, &opts, Endpoint::V1, &work).await?);
        finish(server, opts.keep_dirs);
    }
    if let Some(bin) = annals {
        let mut server = server::start_annals(&bin, &opts.work_dir)?;
        outcomes.push(measure(&mut server, &opts, opts.annals_endpoint, &work).await?);
        finish(server, opts.keep_dirs);
    }
    print_table(&opts, &work, &outcomes);
    Ok(())
}

/// Stops `server`, keeping its files if asked.
pub(crate) fn finish(mut server: Server, keep_dirs: bool) {
    if keep_dirs {
        server.keep_files();
    }
    server.stop();
}

/// Loads `work` into the started `server`, takes its figures, then stops it cleanly (SIGTERM)
/// and measures its files again; the server can be started again on them with `respawn`.
pub(crate) async fn measure(
    server: &mut Server,
    opts: &CompareOptions,
    endpoint: Endpoint,
    work: &Arc<Workload>,
) -> Result<Outcome> {
    eprintln!(
        "{}: starting {} at {}",
        server.name, server.version, server.base_url
    );
    let is_influx = server.name == "influxdb";
    // InfluxDB answers /ping with 204; annals' readiness path is not fixed yet, any answer will do.
    let (path, want) = if is_influx {
        ("/ping", Some(204))
    } else {
        ("/ping", None)
    };
    server.wait_ready(path, want).await?;
    if is_influx {
        server::influx_create_db(&server.base_url, &opts.db).await?;
    }
    let load_opts = LoadOptions {
        url: server.base_url.clone(),
        db: opts.db.clone(),
        endpoint,
        connections: opts.connections,
        timeout: opts.timeout,
        progress: true,
    };
    eprintln!(
        "{}: loading over {} connections ({endpoint})...",
        server.name, opts.connections
    );
    let loaded = load::run(&load_opts, work.clone()).await;
    let report = match loaded {
        Ok(r) => r,
        Err(e) => {
            let alive = server.check_alive();
            return Err(match alive {
                Ok(()) => e.context(format!("loading {} failed", server.name)),
                Err(dead) => e.context(format!("{dead:#}")),
            });
        }
    };
    server.check_alive()?;
    let outcome = Outcome {
        label: server.version.clone(),
        peak_rss: server.peak_rss_bytes()?,
        cpu_secs: server.cpu_seconds()?,
        disk_bytes: server.data_bytes()?,
        disk_bytes_stopped: 0,
        load: report,
    };
    let mut outcome = outcome;
    server.terminate()?;
    outcome.disk_bytes_stopped = server.data_bytes()?;
    eprintln!(
        "{}: {:.0} rows/s, peak RSS {:.0} MiB, {:.1} disk bytes/row",
        server.name,
        outcome.load.rows_per_sec(),
        outcome.peak_rss as f64 / (1 << 20) as f64,
        outcome.disk_bytes as f64 / outcome.load.rows as f64
    );
    Ok(outcome)
}

/// `21600` as `6h`, `5400` as `90m`.
fn span(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
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

fn print_table(opts: &CompareOptions, work: &Workload, outcomes: &[Outcome]) {
    let iot = &opts.iot;
    let args: Vec<String> = std::env::args().collect();
    println!();
    let secs = iot.steps * iot.interval_ns as u64 / 1_000_000_000;
    println!(
        "### Ingest, TSBS iot: {} trucks x {}",
        iot.trucks,
        span(secs)
    );
    println!();
    println!("`{}`", args.join(" "));
    println!();
    println!(
        "{} rows ({:.1} MB of line protocol, seed {}) in {} bodies of up to {} lines; {} \
         connections; gzip {}; annals endpoint {}. Servers run one after the other on the same \
         machine ({} cores, shared with the load client), each with a fresh data dir.",
        thousands(work.lines),
        work.raw_bytes as f64 / 1e6,
        iot.seed,
        work.requests(),
        opts.batch_lines,
        opts.connections,
        if opts.gzip { "on" } else { "off" },
        opts.annals_endpoint,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!();
    println!("| server | rows/s | MB/s | p50 ms | p99 ms | peak RSS MiB | disk bytes/row at last ack | after clean stop | server CPU s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} |",
            o.label,
            thousands(o.load.rows_per_sec().round() as u64),
            o.load.mb_per_sec(),
            load::ms(o.load.p50),
            load::ms(o.load.p99),
            o.peak_rss as f64 / (1 << 20) as f64,
            o.disk_bytes as f64 / o.load.rows as f64,
            o.disk_bytes_stopped as f64 / o.load.rows as f64,
            o.cpu_secs,
        );
    }
    if let [influx, annals] = outcomes {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "n/a".into()
            }
        };
        println!();
        println!(
            "annals / InfluxDB: {} rows/s, {} peak RSS, {} disk bytes/row at last ack, {} after clean stop.",
            ratio(annals.load.rows_per_sec(), influx.load.rows_per_sec()),
            ratio(annals.peak_rss as f64, influx.peak_rss as f64),
            ratio(annals.disk_bytes as f64, influx.disk_bytes as f64),
            ratio(annals.disk_bytes_stopped as f64, influx.disk_bytes_stopped as f64),
        );
    }
    println!();
    println!(
        "Disk is measured right after the last acknowledgement (WAL included) and again after a \
         clean stop (SIGTERM: annals seals open blocks, finishes block files and retires its WAL)."
    );
}

/// Fails early, with the reason, when a scale would not fit the load client's memory bound.
pub(crate) fn check_scale(iot: &IotConfig) -> Result<()> {
    // ~230 bytes per TSBS iot line.
    let estimate = iot.entries().saturating_mul(230);
    if estimate > load::INPUT_BYTES_MAX {
        bail!(
            "{} lines is about {} GiB of line protocol, more than the {} GiB held in memory",
            iot.entries(),
            estimate >> 30,
            load::INPUT_BYTES_MAX >> 30
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn missing_binaries_are_explained() {
        let err = resolve_influxd(Path::new("/nonexistent/influxd"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install -y influxdb"), "{err}");
        let err = resolve_annals(Some(Path::new("/nonexistent/annals")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo build -p annals-cli --release"), "{err}");
    }
}

//! PostgreSQL as the plain-SQL peer of `compare`: a server of its own (`initdb` + `postgres` in
//! a temp dir, on a free loopback port, as `nobody` when run as root since PostgreSQL refuses
//! root), the two TSBS iot tables (tags as `text`, `time timestamptz`, fields `double
//! precision`, `status bigint`; no index, as a plain-SQL baseline), loaded with `COPY` over
//! the same number of connections as the HTTP peers, and the TSBS queries of
//! `benches/queries/tsbs_postgres.sql` run through `psql`.
//!
//! Rows are converted from the generator's line protocol to CSV before the clock starts
//! (body `i` goes to connection `i mod C`, as the HTTP load hands bodies to its connections);
//! the load is timed from starting the `psql \copy` clients to the last one's exit.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_bench::tsbs::IotConfig;
use anyhow::{bail, ensure, Context, Result};

use crate::answers::{self, Rows};
use crate::query::Timing;
use crate::server::{self, Server};

/// How long PostgreSQL may take to accept its first connection.
const STARTUP_MAX: Duration = Duration::from_secs(60);
/// Memory sampling period during the load.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Where Debian's `postgresql` package puts the server binaries (one dir per major version).
const DEBIAN_PG_LIB: &str = "/usr/lib/postgresql";
const INSTALL_HINT: &str = "install PostgreSQL (Debian: `apt-get install -y postgresql`) or \
                            pass --postgres-bin-dir DIR";
/// Tags of both tables, in the generator's order.
const TAGS: [&str; 8] = [
    "name",
    "fleet",
    "driver",
    "model",
    "device_version",
    "load_capacity",
    "fuel_capacity",
    "nominal_fuel_consumption",
];
const READINGS_FIELDS: [&str; 7] = [
    "latitude",
    "longitude",
    "elevation",
    "velocity",
    "heading",
    "grade",
    "fuel_consumption",
];
const DIAGNOSTICS_FIELDS: [&str; 3] = ["fuel_state", "current_load", "status"];

/// The PostgreSQL programs the harness runs.
#[derive(Debug, Clone)]
pub(crate) struct PgTools {
    initdb: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
}

/// Finds `initdb` and `postgres` in `bin_dir`, else in `PATH`, else in Debian's
/// `/usr/lib/postgresql/<newest>/bin`; `psql` beside them, else in `PATH`.
pub(crate) fn find_tools(bin_dir: Option<&Path>) -> Result<PgTools> {
    let mut dirs: Vec<PathBuf> = bin_dir.into_iter().map(Path::to_path_buf).collect();
    if bin_dir.is_none() {
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        let mut debian: Vec<PathBuf> = std::fs::read_dir(DEBIAN_PG_LIB)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .collect();
        debian.sort_by_key(|p| {
            let major = p.parent().and_then(Path::file_name);
            major.and_then(|m| m.to_str()?.parse::<u32>().ok())
        });
        dirs.extend(debian.into_iter().rev());
    }
    let dir = dirs
        .iter()
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .with_context(|| {
            format!("PostgreSQL's initdb and postgres not found (PATH, {DEBIAN_PG_LIB}/*/bin); {INSTALL_HINT}")
        })?;
    let psql = Some(dir.join("psql"))
        .filter(|p| p.is_file())
        .or_else(|| server::find_binary(Path::new("psql")))
        .with_context(|| {
            format!(
                "psql not found beside {} nor in PATH; {INSTALL_HINT}",
                dir.display()
            )
        })?;
    Ok(PgTools {
        initdb: dir.join("initdb"),
        postgres: dir.join("postgres"),
        psql,
    })
}

/// The user PostgreSQL runs as when we are root: `(uid, gid)` of `nobody`.
fn unprivileged_ids() -> Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .context("no Uid in /proc/self/status")?;
    if euid != "0" {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").arg(flag).arg("nobody").output()?;
        ensure!(
            out.status.success(),
            "`id {flag} nobody` failed: running as root, PostgreSQL \
                                       needs an unprivileged user"
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// `program args`, through `setpriv` as `ids` when set.
fn as_user(
    ids: Option<(u32, u32)>,
    program: &Path,
    args: Vec<OsString>,
) -> (PathBuf, Vec<OsString>) {
    match ids {
        None => (program.to_path_buf(), args),
        Some((uid, gid)) => {
            let mut all: Vec<OsString> = vec![
                format!("--reuid={uid}").into(),
                format!("--regid={gid}").into(),
                "--clear-groups".into(),
                "--".into(),
                program.into(),
            ];
            all.extend(args);
            (PathBuf::from("setpriv"), all)
        }
    }
}

/// A running PostgreSQL and how to reach it.
#[derive(Debug)]
pub(crate) struct Postgres {
    pub(crate) server: Server,
    tools: PgTools,
    port: u16,
    /// Files that are not the cluster's (CSV, query scripts, answers).
    scratch: PathBuf,
}

/// What loading did.
#[derive(Debug)]
pub(crate) struct PgLoad {
    pub(crate) rows: u64,
    pub(crate) csv_bytes: u64,
    pub(crate) elapsed: Duration,
    /// Peak of the summed PSS of the postmaster and its children, sampled.
    pub(crate) peak_pss: u64,
    pub(crate) cpu_secs: f64,
    /// `pg_total_relation_size` of both tables.
    pub(crate) table_bytes: u64,
    pub(crate) disk_bytes: u64,
}

pub(crate) fn start(tools: &PgTools, work_dir: &Path) -> Result<Postgres> {
    let root = server::temp_root(work_dir, "annals-bench-postgres-")?;
    let root_path = root.path().to_path_buf();
    let ids = unprivileged_ids()?;
    let cluster = root_path.join("cluster");
    let scratch = root_path.join("scratch");
    std::fs::create_dir(&cluster)?;
    std::fs::create_dir(&scratch)?;
    if let Some((uid, gid)) = ids {
        for p in [&root_path, &cluster] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to uid {uid}", p.display()))?;
        }
    }
    let data_dir = cluster.join("data");
    let log_path = root_path.join("server.log");
    let initdb_args: Vec<OsString> = vec![
        "-D".into(),
        data_dir.clone().into(),
        "-U".into(),
        "postgres".into(),
        "--auth=trust".into(),
        "--encoding=UTF8".into(),
        "--locale=C".into(),
        // Only the empty cluster's files are not fsynced; the load and queries run with fsync.
        "--no-sync".into(),
    ];
    let (program, args) = as_user(ids, &tools.initdb, initdb_args);
    let out = Command::new(&program)
        .args(&args)
        .current_dir(&root_path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", tools.initdb.display()))?;
    if !out.status.success() {
        bail!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let [port] = server::free_ports()?;
    let pg_args: Vec<OsString> = vec![
        "-D".into(),
        data_dir.clone().into(),
        "-p".into(),
        port.to_string().into(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        "unix_socket_directories=".into(),
    ];
    let (program, args) = as_user(ids, &tools.postgres, pg_args);
    let version = server::version_of(&tools.postgres, &["--version"], "PostgreSQL");
    let version = version.replace("postgres (PostgreSQL) ", "PostgreSQL ");
    let server = Server::spawn_new(
        "postgres",
        version,
        &program,
        args,
        format!("postgresql://postgres@127.0.0.1:{port}/postgres"),
        Some(root),
        data_dir,
        log_path,
    )?;
    Ok(Postgres {
        server,
        tools: tools.clone(),
        port,
        scratch,
    })
}

impl Postgres {
    fn psql(&self) -> Command {
        let mut cmd = Command::new(&self.tools.psql);
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg("postgres")
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGTZ", "UTC")
        .stdin(Stdio::null());
        cmd
    }

    /// Runs `sql` and returns psql's unaligned, tuples-only output.
    fn sql(&self, sql: &str) -> Result<String> {
        let out = self.psql().args(["-A", "-t", "-c", sql]).output()?;
        if !out.status.success() {
            bail!(
                "psql: {sql}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Waits until PostgreSQL accepts a connection.
    pub(crate) fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            self.server.check_alive()?;
            if self.sql("SELECT 1").is_ok() {
                return Ok(());
            }
            if started.elapsed() > STARTUP_MAX {
                bail!(
                    "PostgreSQL did not accept connections within {STARTUP_MAX:?}; log tail:\n{}",
                    self.server.log_tail_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates the tables, writes the workload as CSV (untimed), then times `COPY` over
    /// `connections` concurrent `psql` clients.
    pub(crate) fn load(
        &mut self,
        iot: &IotConfig,
        batch_lines: usize,
        connections: usize,
    ) -> Result<PgLoad> {
        let tags = TAGS.map(|t| format!("{t} text")).join(", ");
        let fields = |names: &[&str], int: &str| -> String {
            names
                .iter()
                .map(|f| {
                    let ty = if *f == int {
                        "bigint"
                    } else {
                        "double precision"
                    };
                    format!("{f} {ty}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.sql(&format!(
            "CREATE TABLE readings ({tags}, time timestamptz NOT NULL, {}); \
             CREATE TABLE diagnostics ({tags}, time timestamptz NOT NULL, {});",
            fields(&READINGS_FIELDS, ""),
            fields(&DIAGNOSTICS_FIELDS, "status"),
        ))?;

        let CsvFiles {
            files,
            rows,
            bytes: csv_bytes,
        } = write_csv(iot, batch_lines, connections, &self.scratch)?;
        eprintln!(
            "postgres: {rows} rows as {:.1} MB of CSV; COPY over {connections} connections...",
            csv_bytes as f64 / 1e6
        );
        let pid = self.server.pid();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(tree_pss(pid));
                    std::thread::sleep(SAMPLE_EVERY);
                }
                peak.max(tree_pss(pid))
            })
        };
        let started = Instant::now();
        let children: Vec<_> = files
            .iter()
            .map(|(readings, diagnostics)| {
                let copy = |table: &str, path: &Path| {
                    let quoted = path.display().to_string().replace('\'', "''");
                    format!("\\copy {table} FROM '{quoted}' WITH (FORMAT csv)")
                };
                self.psql()
                    .arg("-c")
                    .arg(copy("readings", readings))
                    .arg("-c")
                    .arg(copy("diagnostics", diagnostics))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting psql")
            })
            .collect::<Result<_>>()?;
        let mut failure = None;
        for child in children {
            let out = child.wait_with_output()?;
            if !out.status.success() && failure.is_none() {
                failure = Some(String::from_utf8_lossy(&out.stderr).trim().to_owned());
            }
        }
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let peak_pss = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
        if let Some(err) = failure {
            bail!("COPY into PostgreSQL failed: {err}");
        }
        let cpu_secs = tree_cpu_secs(pid)?;
        let counted: u64 = self
            .sql("SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM diagnostics)")?
            .parse()?;
        ensure!(
            counted == rows,
            "PostgreSQL holds {counted} rows, {rows} were copied"
        );
        let table_bytes: u64 = self
            .sql(
                "SELECT pg_total_relation_size('readings') + pg_total_relation_size('diagnostics')",
            )?
            .parse()?;
        let disk_bytes = self.server.data_bytes()?;
        // Statistics for the planner, as any user would gather after a bulk load (untimed).
        self.sql("ANALYZE")?;
        Ok(PgLoad {
            rows,
            csv_bytes,
            elapsed,
            peak_pss,
            cpu_secs,
            table_bytes,
            disk_bytes,
        })
    }

    /// Runs each query once to warm up (its answer is kept) and then `runs` times, in one
    /// `psql` session; times are psql's `\timing` (send to last row received).
    pub(crate) fn run_queries(
        &self,
        queries: &[(String, String)],
        runs: usize,
    ) -> Result<Vec<(Rows, Timing)>> {
        let mut script = String::from("SET TimeZone = 'UTC';\n\\pset format csv\n\\timing on\n");
        let mut answer_paths = Vec::new();
        for (i, (_, sql)) in queries.iter().enumerate() {
            let path = self.scratch.join(format!("answer_{i}.csv"));
            let sql = sql.trim().trim_end_matches(';');
            script.push_str(&format!("\\o {}\n{sql};\n\\o /dev/null\n", path.display()));
            for _ in 0..runs {
                script.push_str(&format!("{sql};\n"));
            }
            script.push_str("\\o\n");
            answer_paths.push(path);
        }
        let script_path = self.scratch.join("queries.sql");
        std::fs::write(&script_path, script)?;
        let out = self.psql().arg("-f").arg(&script_path).output()?;
        if !out.status.success() {
            bail!(
                "PostgreSQL queries failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let times: Vec<f64> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("Time: "))
            .map(|t| {
                let ms = t.split_whitespace().next().unwrap_or_default();
                ms.parse::<f64>()
                    .with_context(|| format!("psql timing {t:?}"))
            })
            .collect::<Result<_>>()?;
        // `SET` runs before `\timing on`: one line per query run, nothing else.
        let per_query = runs + 1;
        ensure!(
            times.len() == queries.len() * per_query,
            "psql printed {} timings, expected {}",
            times.len(),
            queries.len() * per_query
        );
        queries
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let t = &times[i * per_query..(i + 1) * per_query];
                let rows = answers::parse_csv(&std::fs::read_to_string(&answer_paths[i])?)?;
                let timing = Timing {
                    ms: t[1..].to_vec(),
                    rows: rows.len() as u64,
                    first_ms: t[0],
                };
                Ok((rows, timing))
            })
            .collect()
    }
}

/// The workload as CSV files.
#[derive(Debug)]
struct CsvFiles {
    /// `(readings, diagnostics)` per connection.
    files: Vec<(PathBuf, PathBuf)>,
    rows: u64,
    bytes: u64,
}

/// Writes the workload as CSV, body `i` to connection `i mod connections`.
fn write_csv(
    iot: &IotConfig,
    batch_lines: usize,
    connections: usize,
    dir: &Path,
) -> Result<CsvFiles> {
    let mut paths = Vec::new();
    let mut writers = Vec::new();
    for c in 0..connections {
        let r = dir.join(format!("readings_{c}.csv"));
        let d = dir.join(format!("diagnostics_{c}.csv"));
        writers.push((
            std::io::BufWriter::new(std::fs::File::create(&r)?),
            std::io::BufWriter::new(std::fs::File::create(&d)?),
        ));
        paths.push((r, d));
    }
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut line_no = 0u64;
    let mut csv = String::new();
    for (i, batch) in iot.batches(batch_lines).enumerate() {
        let (readings, diagnostics) = &mut writers[i % connections];
        let body =
            std::str::from_utf8(&batch.body).context("generated line protocol is not UTF-8")?;
        for line in body.lines() {
            line_no += 1;
            csv.clear();
            let table = line_to_csv(line, &mut csv)
                .with_context(|| format!("generated line {line_no}: {line}"))?;
            let out = if table == "readings" {
                &mut *readings
            } else {
                &mut *diagnostics
            };
            out.write_all(csv.as_bytes())?;
            bytes += csv.len() as u64;
            rows += 1;
        }
    }
    for (r, d) in writers {
        r.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        d.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    Ok(CsvFiles {
        files: paths,
        rows,
        bytes,
    })
}

/// One generated line as a CSV row of its table (tags, time, fields; absent ones empty, which
/// `COPY ... (FORMAT csv)` reads as NULL); returns the table. The generator writes no escapes,
/// no quotes and no string fields, so anything else is refused rather than guessed.
fn line_to_csv<'a>(line: &'a str, out: &mut String) -> Result<&'a str> {
    ensure!(
        !line.contains(['\\', '"']),
        "escapes and quoted strings are not supported"
    );
    let mut parts = line.split(' ');
    let (Some(key), Some(fields), Some(ts), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("expected `table,tags fields time`");
    };
    let mut key_parts = key.split(',');
    let table = key_parts.next().unwrap_or_default();
    let field_names: &[&str] = match table {
        "readings" => &READINGS_FIELDS,
        "diagnostics" => &DIAGNOSTICS_FIELDS,
        other => bail!("unknown table {other}"),
    };
    let mut tag_values = [""; TAGS.len()];
    for kv in key_parts {
        let (k, v) = kv.split_once('=').context("tag without `=`")?;
        let i = TAGS
            .iter()
            .position(|t| *t == k)
            .with_context(|| format!("unknown tag {k}"))?;
        tag_values[i] = v;
    }
    let mut field_values = [""; 7];
    for kv in fields.split(',') {
        let (k, v) = kv.split_once('=').context("field without `=`")?;
        let i = field_names
            .iter()
            .position(|f| *f == k)
            .with_context(|| format!("unknown field {k}"))?;
        field_values[i] = v.strip_suffix('i').unwrap_or(v);
    }
    let ns: i64 = ts.parse().context("bad timestamp")?;
    ensure!(
        ns % 1000 == 0,
        "timestamp {ns} is finer than PostgreSQL's microseconds"
    );
    for v in tag_values {
        out.push_str(v);
        out.push(',');
    }
    out.push_str(&timestamp_text(ns));
    for v in &field_values[..field_names.len()] {
        out.push(',');
        out.push_str(v);
    }
    out.push('\n');
    Ok(table)
}

/// `2016-01-01 00:00:10.000000+00` for nanoseconds since the epoch.
fn timestamp_text(ns: i64) -> String {
    let us = ns.div_euclid(1000);
    let secs = us.div_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::query::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us.rem_euclid(1_000_000)
    )
}

/// PIDs of `pid`'s children.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|at| stat[at + 2..].split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Summed PSS of `pid` and its children, in bytes (PSS shares `shared_buffers` among the
/// processes mapping it instead of counting it once per backend as RSS would).
fn tree_pss(pid: u32) -> u64 {
    let pss = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Pss:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    pss(pid) + children_of(pid).into_iter().map(pss).sum::<u64>()
}

/// CPU seconds of the postmaster, its live children and its reaped children (backends).
fn tree_cpu_secs(pid: u32) -> Result<f64> {
    let ticks = |p: u32, with_reaped: bool| -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat"))?;
        let rest = &stat[stat.rfind(')').context("bad /proc stat")? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let n = if with_reaped { 4 } else { 2 };
        f[11..11 + n].iter().map(|v| Ok(v.parse::<u64>()?)).sum()
    };
    let mut total = ticks(pid, true)?;
    for child in children_of(pid) {
        total += ticks(child, false).unwrap_or(0);
    }
    Ok(total as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_csv_rows_with_nulls() {
        let mut out = String::new();
        let table = line_to_csv(
            "diagnostics,name=truck_0,fleet=East,model=G-2000 fuel_state=1,status=0i 1451606410000000000",
            &mut out,
        )
        .unwrap();
        assert_eq!(table, "diagnostics");
        assert_eq!(
            out,
            "truck_0,East,,G-2000,,,,,2016-01-01 00:00:10.000000+00,1,,0\n"
        );
        assert!(line_to_csv("cpu,host=a usage=1 1", &mut String::new()).is_err());
        assert!(line_to_csv("readings,name=a\\ b latitude=1 1000", &mut String::new()).is_err());
        assert!(line_to_csv("readings,name=a latitude=1 1", &mut String::new()).is_err());
        assert!(line_to_csv("readings,name=a latitude=1", &mut String::new()).is_err());
    }
}

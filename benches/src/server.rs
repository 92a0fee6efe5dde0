//! Servers started by `compare-ingest`: annals and InfluxDB 1.x, each in its own temp dir,
//! listening on free loopback ports, killed when their guard drops (also on error or panic).

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to answer its first request.
const STARTUP_MAX: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Log lines shown when a server fails.
const LOG_TAIL_LINES: usize = 30;
/// Linux reports process times in USER_HZ ticks, 100 per second on every architecture's ABI.
const USER_HZ: f64 = 100.0;

/// A running server and its files; killed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) version: String,
    child: Option<Child>,
    pub(crate) base_url: String,
    root: Option<tempfile::TempDir>,
    /// Directory whose size is reported (data, WAL, metadata; not the log or config).
    pub(crate) data_dir: PathBuf,
    log_path: PathBuf,
    /// Program and arguments, to start the server again on the same files.
    spec: (PathBuf, Vec<std::ffi::OsString>),
}

impl Server {
    /// Starts `program args` with its output in `log_path`; `root` (if any) is removed on drop.
    // Each argument is one plain field of the guard; a struct for them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn_new(
        name: &str,
        version: String,
        program: &Path,
        args: Vec<std::ffi::OsString>,
        base_url: String,
        root: Option<tempfile::TempDir>,
        data_dir: PathBuf,
        log_path: PathBuf,
    ) -> Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(&args);
        let child = spawn(cmd, &log_path, name)?;
        Ok(Self {
            name: name.to_owned(),
            version,
            child: Some(child),
            base_url,
            root,
            data_dir,
            log_path,
            spec: (program.to_path_buf(), args),
        })
    }

    /// Starts the server again, on the same files and ports, after [`Server::terminate`].
    pub(crate) fn respawn(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is still running", self.name);
        let mut cmd = Command::new(&self.spec.0);
        cmd.args(&self.spec.1);
        // Append to the log: the first run's lines stay readable.
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log_path)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} again", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn log_tail_text(&self) -> String {
        self.log_tail()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Polls `path` until the server answers: with `want` a given status, else any status.
    pub(crate) async fn wait_ready(&mut self, path: &str, want: Option<u16>) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}{path}", self.base_url);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().expect("server running").try_wait()? {
                bail!(
                    "{} exited during startup ({status}); log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(resp) = client.get(&url).send().await {
                let status = resp.status().as_u16();
                if want.is_none_or(|w| w == status) {
                    return Ok(());
                }
            }
            if started.elapsed() > STARTUP_MAX {
                bail!(
                    "{} did not answer GET {url} within {STARTUP_MAX:?}; log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Fails with the server's log tail if it is no longer running.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.as_mut().expect("server running").try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Peak resident set size (`VmHWM`), in bytes.
    pub(crate) fn peak_rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no VmHWM in {path}"))?;
        Ok(kb * 1024)
    }

    /// User + system CPU time used so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').context("bad /proc stat")? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (1-based).
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks as f64 / USER_HZ)
    }

    /// Bytes allocated on disk to the files under the data directory (what `du` reports:
    /// InfluxDB preallocates sparse 4 MiB series-file segments, so apparent sizes overstate it).
    pub(crate) fn data_bytes(&self) -> Result<u64> {
        dir_bytes(&self.data_dir)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Leaves the directory in place and says where it is.
    pub(crate) fn keep_files(&mut self) {
        if let Some(root) = self.root.take() {
            let path = root.keep();
            eprintln!("kept {} files in {}", self.name, path.display());
        }
    }

    /// Asks the server to shut down cleanly (SIGTERM) and waits up to 120 s for it to exit, so
    /// what it writes at shutdown is on disk before the directory is measured again.
    pub(crate) fn terminate(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "could not signal {}", self.name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while child.try_wait()?.is_none() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{} did not stop within 120 s",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.child = None;
        Ok(())
    }

    /// Kills the server and waits for it.
    pub(crate) fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if meta.is_file() {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// `N` distinct loopback ports nobody listens on right now (all held open until chosen).
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port"))
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

/// `bin` itself if it has a path component, else its location in `PATH`.
pub(crate) fn find_binary(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(bin))
        .find(|p| p.is_file())
}

pub(crate) fn temp_root(work_dir: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(work_dir)
        .with_context(|| format!("creating a temp dir in {}", work_dir.display()))
}

fn spawn(mut cmd: Command, log_path: &Path, what: &str) -> Result<Child> {
    let log = File::create(log_path)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {what}"))
}

/// First line of `bin <args>` output, or `fallback`.
pub(crate) fn version_of(bin: &Path, args: &[&str], fallback: &str) -> String {
    Command::new(bin)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::trim).map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

/// Starts `influxd` (InfluxDB 1.x) with a config of its own: data, meta and WAL in a temp dir,
/// HTTP and RPC on free loopback ports, usage reporting and the self-monitoring store off.
/// WAL fsync is left at its default (every write is fsynced before the answer), like annals.
pub(crate) fn start_influxdb(bin: &Path, work_dir: &Path) -> Result<Server> {
    let root = temp_root(work_dir, "annals-bench-influxdb-")?;
    let root_path = root.path().to_path_buf();
    let data_dir = root_path.join("data");
    std::fs::create_dir(&data_dir)?;
    let [http_port, rpc_port] = free_ports()?;
    let config = format!(
        r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{data}/meta"

[data]
  dir = "{data}/data"
  wal-dir = "{data}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false

[logging]
  level = "warn"
"#,
        data = data_dir.display()
    );
    let config_path = root_path.join("influxdb.conf");
    std::fs::write(&config_path, config)?;
    let log_path = root_path.join("server.log");
    let version = version_of(bin, &["version"], "InfluxDB 1.x");
    let version = version.split(" (").next().unwrap_or(&version).to_owned();
    Server::spawn_new(
        "influxdb",
        version,
        bin,
        vec!["run".into(), "-config".into(), config_path.into()],
        format!("http://127.0.0.1:{http_port}"),
        Some(root),
        data_dir,
        log_path,
    )
}

/// `--without-auth` if this annals build has authentication (builds before it had no flag).
fn without_auth(bin: &Path) -> Option<std::ffi::OsString> {
    let help = Command::new(bin)
        .args(["serve", "--help"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&help.stdout)
        .contains("--without-auth")
        .then(|| "--without-auth".into())
}

/// Starts `annals serve --data-dir <tmp>/data --http-addr 127.0.0.1:<free port>`.
pub(crate) fn start_annals(bin: &Path, work_dir: &Path) -> Result<Server> {
    let root = temp_root(work_dir, "annals-bench-annals-")?;
    let root_path = root.path().to_path_buf();
    let data_dir = root_path.join("data");
    std::fs::create_dir(&data_dir)?;
    let [port] = free_ports()?;
    let log_path = root_path.join("server.log");
    let version = version_of(bin, &["--version"], "annals");
    let mut args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--data-dir".into(),
        data_dir.clone().into(),
        "--http-addr".into(),
        format!("127.0.0.1:{port}").into(),
    ];
    // The harness measures the data path; peers run without authentication too.
    args.extend(without_auth(bin));
    Server::spawn_new(
        "annals",
        version,
        bin,
        args,
        format!("http://127.0.0.1:{port}"),
        Some(root),
        data_dir,
        log_path,
    )
}

/// Starts `annals serve` on a data directory that outlives the run (created if missing), with
/// its log beside it in `<data_dir>.log`; `extra` flags are passed through.
pub(crate) fn start_annals_at(bin: &Path, data_dir: &Path, extra: &[String]) -> Result<Server> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let [port] = free_ports()?;
    let log_path = data_dir.with_extension("log");
    let version = version_of(bin, &["--version"], "annals");
    let mut args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--data-dir".into(),
        data_dir.into(),
        "--http-addr".into(),
        format!("127.0.0.1:{port}").into(),
    ];
    args.extend(without_auth(bin));
    args.extend(extra.iter().map(Into::into));
    Server::spawn_new(
        "annals",
        version,
        bin,
        args,
        format!("http://127.0.0.1:{port}"),
        None,
        data_dir.to_path_buf(),
        log_path,
    )
}

/// `CREATE DATABASE` through InfluxDB 1.x's `/query`.
pub(crate) async fn influx_create_db(base_url: &str, db: &str) -> Result<()> {
    let url = format!("{base_url}/query?q=CREATE%20DATABASE%20%22{db}%22");
    let resp = reqwest::Client::new().post(&url).send().await?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() || body.contains("\"error\"") {
        bail!("CREATE DATABASE {db} failed: {status} {body}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_figures_are_readable() {
        // `sleep` stands in for a server; our sources for its data.
        let server = Server {
            name: "sleep".into(),
            version: String::new(),
            child: Some(Command::new("sleep").arg("30").spawn().unwrap()),
            base_url: String::new(),
            root: None,
            data_dir: crate::package_dir().join("src"),
            log_path: PathBuf::new(),
            spec: (PathBuf::from("sleep"), vec!["30".into()]),
        };
        assert!(server.data_bytes().unwrap() > 10_000);
        assert!(server.peak_rss_bytes().unwrap() > 0);
        assert!(server.cpu_seconds().unwrap() >= 0.0);
        let pid = server.pid();
        drop(server);
        // The guard killed and reaped it.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn binaries_are_found_in_path() {
        assert!(find_binary(Path::new("sh")).is_some());
        assert!(find_binary(Path::new("no-such-binary-here")).is_none());
        assert!(find_binary(Path::new("./no/such/bin")).is_none());
    }
}

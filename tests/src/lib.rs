//! # annals-tests: support for tests that drive the real `annals` binary
//!
//! [`Server`] starts `annals serve` on a free loopback port with its own data directory,
//! waits until it listens, and can stop it gracefully or kill it with SIGKILL. [`receipt_rows`]
//! reads receipts; [`read_ledger`] reads every row back from a stopped node's data directory
//! through the storage crate, with its position and `tx_id`, so tests can check what survived.
//!
//! The process tests themselves live in `clients/cli/tests/`, where Cargo hands them the path
//! of the binary it just built.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use annals_format::block::{tx_id, BlockHeader};
use annals_format::hash::{leaf_hash, to_hex};
use annals_format::merkle::root_of;
use annals_storage::block_file::{row_encodings, BlockFileReader, FILE_SUFFIX};
use anyhow::{bail, Context, Result};

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `annals serve`.
#[derive(Debug)]
pub struct Server {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub port: u16,
    pub args: Vec<String>,
    /// The admin token secret printed on first start (servers started with auth only).
    pub admin_token: Option<String>,
    child: Option<Child>,
}

impl Server {
    /// Starts the binary on `data_dir` with extra flags and `--without-auth`, and waits until
    /// it listens.
    pub fn start(bin: &Path, data_dir: &Path, args: &[&str]) -> Result<Server> {
        let mut all = vec!["--without-auth"];
        all.extend_from_slice(args);
        Self::start_with_auth(bin, data_dir, &all)
    }

    /// [`Server::start`] with authentication on (unless `args` turn it off); the admin token
    /// printed on first start is kept in [`Server::admin_token`].
    pub fn start_with_auth(bin: &Path, data_dir: &Path, args: &[&str]) -> Result<Server> {
        let mut s = Server {
            bin: bin.to_owned(),
            data_dir: data_dir.to_owned(),
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            admin_token: None,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.args)
            .env(
                "ANNALS_LOG",
                std::env::var("ANNALS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Lines up to "listening" (the admin token on a first start) go to the waiting
            // test; later ones are drained so the server never blocks on a full pipe.
            for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                let _ = tx.send(l);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("listening") => break,
                Ok(l) if l.contains("admin token (shown once") => {
                    self.admin_token = l.rsplit(' ').next().map(str::to_owned);
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    bail!("server did not start: {e}");
                }
            }
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").arg("-TERM").arg(&pid).status()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(st) = c.try_wait()? {
                    if !st.success() {
                        bail!("server exited with {st}");
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("server did not stop within 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Starts the same server again (same port, data directory and flags).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `(line, tx_id hex)` of every row of a full receipt.
pub fn receipt_rows(receipt: &serde_json::Value) -> Vec<(u64, String)> {
    receipt["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["line"].as_u64().unwrap_or(0),
                        e["tx_id"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A row read back from block files.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub table: String,
    pub branch: String,
    pub height: u64,
    pub index: u32,
    pub tx_id: String,
    pub encoding: Vec<u8>,
}

/// Every row in the finished block files of a (stopped) data directory, by `tx_id`, after
/// checking that each block's rows hash to its header's `rows_root`. Duplicated `tx_id`s are
/// an error.
pub fn read_ledger(data_dir: &Path) -> Result<BTreeMap<String, StoredRow>> {
    let mut out = BTreeMap::new();
    let blocks = data_dir.join("blocks");
    let mut dirs: Vec<_> = std::fs::read_dir(&blocks)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    dirs.sort();
    for d in dirs {
        let mut files: Vec<_> = std::fs::read_dir(&d)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.sort();
        for f in files {
            if !f.to_string_lossy().ends_with(FILE_SUFFIX) {
                continue;
            }
            let r = BlockFileReader::open(&f)?;
            for b in r.blocks() {
                let h = BlockHeader::decode(&b.header)?;
                let batch = r.read_row_group(b.row_group as usize)?;
                let rows = row_encodings(&h.table, &batch)?;
                let leaves: Vec<_> = rows.iter().map(|x| leaf_hash(x)).collect();
                if root_of(&leaves) != h.rows_root {
                    bail!(
                        "{}: block {} does not re-hash to its header",
                        f.display(),
                        h.height
                    );
                }
                for (i, (enc, leaf)) in rows.into_iter().zip(leaves).enumerate() {
                    let t = to_hex(&tx_id(&h.branch, h.height, i as u32, &leaf));
                    let row = StoredRow {
                        table: h.table.clone(),
                        branch: to_hex(&h.branch),
                        height: h.height,
                        index: i as u32,
                        tx_id: t.clone(),
                        encoding: enc,
                    };
                    if out.insert(t.clone(), row).is_some() {
                        bail!("tx_id {t} stored twice");
                    }
                }
            }
        }
    }
    Ok(out)
}

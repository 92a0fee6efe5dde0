//! Load client: replays pre-split line-protocol bodies over C keep-alive HTTP/1.1 connections.
//!
//! All bodies are built (and gzipped, with `--gzip`) before the clock starts, so the figures
//! measure the server and the wire, not the generator. They are held in memory: up to
//! [`INPUT_BYTES_MAX`] of line protocol (roughly 37 M TSBS rows), twice that with `--gzip`
//! only for the time compression takes.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_bench::tsbs::LineBatch;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

/// Line protocol held in memory for one load.
pub(crate) const INPUT_BYTES_MAX: u64 = 8 << 30;
/// Concurrent connections.
pub(crate) const CONNECTIONS_MAX: usize = 1024;
/// Lines per request body.
pub(crate) const BATCH_LINES_MAX: usize = 1_000_000;
/// Retries of one body answered 429 or 503 before the load fails.
const RETRIES_MAX: u32 = 30;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Characters of an error body printed.
const ERROR_BODY_MAX: usize = 2000;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Which InfluxDB write API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Endpoint {
    /// `POST /write?db=DB&precision=ns` (InfluxDB 1.x)
    V1,
    /// `POST /api/v2/write?bucket=DB&precision=ns` (InfluxDB 2.x, 1.8+)
    V2,
    /// `POST /api/v3/write_lp?db=DB&precision=nanosecond` (InfluxDB 3)
    V3,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).expect("no skipped variants");
        f.write_str(name.get_name())
    }
}

impl Endpoint {
    pub(crate) fn url(self, base: &str, db: &str) -> String {
        let base = base.trim_end_matches('/');
        match self {
            Self::V1 => format!("{base}/write?db={db}&precision=ns"),
            Self::V2 => format!("{base}/api/v2/write?bucket={db}&precision=ns"),
            Self::V3 => format!("{base}/api/v3/write_lp?db={db}&precision=nanosecond"),
        }
    }
}

/// Database names go into URLs unescaped, so keep them plain.
pub(crate) fn check_db_name(db: &str) -> Result<()> {
    let ok = !db.is_empty()
        && db.len() <= 64
        && db
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        bail!("database name {db:?}: use 1 to 64 of [A-Za-z0-9_-]");
    }
    Ok(())
}

#[derive(Debug)]
struct Body {
    data: Bytes,
    lines: u64,
}

/// Request bodies ready to send.
#[derive(Debug)]
pub(crate) struct Workload {
    bodies: Vec<Body>,
    gzip: bool,
    pub(crate) lines: u64,
    /// Line protocol bytes (before compression).
    pub(crate) raw_bytes: u64,
    /// Bytes sent as bodies (after compression).
    pub(crate) wire_bytes: u64,
}

impl Workload {
    pub(crate) fn from_batches(
        batches: impl Iterator<Item = LineBatch>,
        gzip: bool,
    ) -> Result<Self> {
        let mut raw_bytes = 0u64;
        let mut parts = Vec::new();
        for batch in batches {
            raw_bytes += batch.body.len() as u64;
            if raw_bytes > INPUT_BYTES_MAX {
                bail!(
                    "workload exceeds {} GiB of line protocol held in memory; lower the scale",
                    INPUT_BYTES_MAX >> 30
                );
            }
            parts.push((Bytes::from(batch.body), batch.lines as u64));
        }
        Self::build(parts, gzip)
    }

    /// Reads `path` and cuts it into bodies of `batch_lines` lines; blank and `#` lines are
    /// sent but not counted as rows.
    pub(crate) fn from_file(path: &Path, batch_lines: usize, gzip: bool) -> Result<Self> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if len > INPUT_BYTES_MAX {
            bail!(
                "{} is {len} bytes, more than the {} GiB a load holds in memory; split it",
                path.display(),
                INPUT_BYTES_MAX >> 30
            );
        }
        let mut buf =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if buf.last().is_some_and(|&b| b != b'\n') {
            buf.push(b'\n');
        }
        let all = Bytes::from(buf);
        let mut parts = Vec::new();
        let (mut start, mut pos, mut lines) = (0usize, 0usize, 0u64);
        while pos < all.len() {
            let end = pos
                + all[pos..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .expect("ends in \\n")
                + 1;
            let line = all[pos..end].trim_ascii();
            if !line.is_empty() && !line.starts_with(b"#") {
                lines += 1;
            }
            pos = end;
            if lines == batch_lines as u64 {
                parts.push((all.slice(start..pos), lines));
                (start, lines) = (pos, 0);
            }
        }
        if lines > 0 {
            parts.push((all.slice(start..), lines));
        }
        Self::build(parts, gzip)
    }

    fn build(parts: Vec<(Bytes, u64)>, gzip: bool) -> Result<Self> {
        let raw_bytes = parts.iter().map(|(b, _)| b.len() as u64).sum();
        let lines = parts.iter().map(|(_, n)| n).sum();
        let bodies = parts
            .into_iter()
            .map(|(data, lines)| {
                let data = if gzip {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    enc.write_all(&data)?;
                    Bytes::from(enc.finish()?)
                } else {
                    data
                };
                Ok(Body { data, lines })
            })
            .collect::<Result<Vec<_>>>()?;
        let wire_bytes = bodies.iter().map(|b| b.data.len() as u64).sum();
        if lines == 0 {
            bail!("the workload has no rows");
        }
        Ok(Self {
            bodies,
            gzip,
            lines,
            raw_bytes,
            wire_bytes,
        })
    }

    pub(crate) fn requests(&self) -> usize {
        self.bodies.len()
    }
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub(crate) struct LoadOptions {
    pub(crate) url: String,
    pub(crate) db: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) connections: usize,
    pub(crate) timeout: Duration,
    pub(crate) progress: bool,
}

/// Figures of one load; latencies are of the accepted attempt of each request.
#[derive(Debug, Clone)]
pub(crate) struct LoadReport {
    pub(crate) rows: u64,
    pub(crate) requests: u64,
    pub(crate) retries: u64,
    pub(crate) raw_bytes: u64,
    pub(crate) wire_bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl LoadReport {
    pub(crate) fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }

    /// Line-protocol megabytes (10^6) per second.
    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.raw_bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn print(&self, gzip: bool) {
        let secs = self.elapsed.as_secs_f64();
        println!("rows acknowledged  {}", self.rows);
        println!("elapsed            {secs:.2} s");
        println!(
            "throughput         {:.0} rows/s, {:.1} MB/s of line protocol",
            self.rows_per_sec(),
            self.mb_per_sec()
        );
        if gzip {
            println!(
                "wire               {:.1} MB/s gzip",
                self.wire_bytes as f64 / 1e6 / secs
            );
        }
        println!(
            "requests           {} ({} retried), latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.requests,
            self.retries,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        );
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Debug, Default)]
struct Shared {
    next: AtomicUsize,
    rows: AtomicU64,
    retries: AtomicU64,
    stop: AtomicBool,
}

/// Sends every body once (plus retries) and fails on the first unexpected answer.
pub(crate) async fn run(opts: &LoadOptions, work: Arc<Workload>) -> Result<LoadReport> {
    if opts.connections == 0 || opts.connections > CONNECTIONS_MAX {
        bail!("--connections must be between 1 and {CONNECTIONS_MAX}");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.connections)
        .tcp_nodelay(true)
        .timeout(opts.timeout)
        .build()
        .context("cannot build the HTTP client")?;
    let url = opts.endpoint.url(&opts.url, &opts.db);
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.connections {
        let (client, url, work, shared) =
            (client.clone(), url.clone(), work.clone(), shared.clone());
        tasks.spawn(async move {
            let result = worker(&client, &url, &work, &shared).await;
            if result.is_err() {
                shared.stop.store(true, Ordering::Relaxed);
            }
            result
        });
    }
    let ticker = opts.progress.then(|| {
        let (shared, total) = (shared.clone(), work.lines);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let rows = shared.rows.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  {rows}/{total} rows, {:.0} rows/s so far",
                    rows as f64 / secs
                );
            }
        })
    });
    let mut latencies = Vec::with_capacity(work.requests());
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("load task panicked")? {
            Ok(mut l) => latencies.append(&mut l),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let rows = shared.rows.load(Ordering::Relaxed);
    assert_eq!(rows, work.lines, "every body was acknowledged");
    Ok(LoadReport {
        rows,
        requests: latencies.len() as u64,
        retries: shared.retries.load(Ordering::Relaxed),
        raw_bytes: work.raw_bytes,
        wire_bytes: work.wire_bytes,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
    })
}

async fn worker(
    client: &reqwest::Client,
    url: &str,
    work: &Workload,
    shared: &Shared,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= work.bodies.len() || shared.stop.load(Ordering::Relaxed) {
            return Ok(latencies);
        }
        let body = &work.bodies[i];
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0;
        loop {
            let mut req = client
                .post(url)
                .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(body.data.clone());
            if work.gzip {
                req = req.header(CONTENT_ENCODING, "gzip");
            }
            let t0 = Instant::now();
            let resp = req
                .send()
                .await
                .with_context(|| format!("POST {url} (body {i}, {} lines) failed", body.lines))?;
            let status = resp.status();
            if status.is_success() {
                // Read the (empty) answer to the end so the connection is reused.
                resp.bytes().await.context("reading the answer")?;
                latencies.push(t0.elapsed());
                shared.rows.fetch_add(body.lines, Ordering::Relaxed);
                break;
            }
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if retryable && attempt < RETRIES_MAX {
                let asked = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or_default();
                tokio::time::sleep(backoff.max(asked).min(BACKOFF_MAX)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                attempt += 1;
                shared.retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let text = resp.text().await.unwrap_or_default();
            let text: String = text.chars().take(ERROR_BODY_MAX).collect();
            if retryable {
                bail!("POST {url}: body {i} still answered {status} after {RETRIES_MAX} retries: {text}");
            }
            bail!(
                "POST {url}: body {i} ({} lines) answered {status}: {text}",
                body.lines
            );
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_influx_apis() {
        let base = "http://127.0.0.1:8086/";
        assert_eq!(
            Endpoint::V1.url(base, "b"),
            "http://127.0.0.1:8086/write?db=b&precision=ns"
        );
        assert_eq!(
            Endpoint::V2.url(base, "b"),
            "http://127.0.0.1:8086/api/v2/write?bucket=b&precision=ns"
        );
        assert_eq!(
            Endpoint::V3.url(base, "b"),
            "http://127.0.0.1:8086/api/v3/write_lp?db=b&precision=nanosecond"
        );
        assert!(check_db_name("bench_1").is_ok());
        assert!(check_db_name("a&b").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 0.99), Duration::from_millis(1));
    }

    /// A keep-alive HTTP/1.1 server answering request `n` (from 0) with `answer(n)`.
    async fn mock(answer: fn(usize) -> (u16, &'static str)) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    loop {
                        let mut len = 0;
                        loop {
                            let mut line = String::new();
                            if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        conn.read_exact(&mut body).await.unwrap();
                        let (status, text) = answer(counter.fetch_add(1, Ordering::SeqCst));
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        conn.get_mut().write_all(resp.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (url, count)
    }

    fn options(url: String) -> LoadOptions {
        LoadOptions {
            url,
            db: "bench".into(),
            endpoint: Endpoint::V1,
            connections: 2,
            timeout: Duration::from_secs(10),
            progress: false,
        }
    }

    fn small_workload() -> Arc<Workload> {
        let cfg = annals_bench::tsbs::IotConfig::new(3, Duration::from_secs(600), 1).unwrap();
        Arc::new(Workload::from_batches(cfg.batches(50), false).unwrap())
    }

    #[tokio::test]
    async fn overload_answers_are_retried() {
        // Every other request is refused once with 429 or 503.
        let (url, count) = mock(|n| match n % 4 {
            0 => (429, "slow down"),
            2 => (503, "busy"),
            _ => (204, ""),
        })
        .await;
        let work = small_workload();
        let report = run(&options(url), work.clone()).await.unwrap();
        assert_eq!(report.rows, work.lines);
        assert_eq!(report.requests, work.requests() as u64);
        assert_eq!(
            count.load(Ordering::SeqCst) as u64,
            report.requests + report.retries
        );
        assert!(report.retries >= work.requests() as u64 / 2);
    }

    #[tokio::test]
    async fn other_errors_fail_with_status_and_body() {
        let (url, _) = mock(|n| {
            if n < 3 {
                (204, "")
            } else {
                (400, "bad line 7")
            }
        })
        .await;
        let err = run(&options(url), small_workload())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("400") && err.contains("bad line 7"), "{err}");
    }

    #[test]
    fn files_split_into_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.lp");
        std::fs::write(&path, "a x=1 1\n\n# c\nb x=2 2\nc x=3 3\nd x=4 4").unwrap();
        let w = Workload::from_file(&path, 2, false).unwrap();
        assert_eq!(w.lines, 4);
        let bodies: Vec<&[u8]> = w.bodies.iter().map(|b| &b.data[..]).collect();
        assert_eq!(
            bodies,
            [&b"a x=1 1\n\n# c\nb x=2 2\n"[..], b"c x=3 3\nd x=4 4\n"]
        );
        let z = Workload::from_file(&path, 3, true).unwrap();
        let mut plain = Vec::new();
        for b in &z.bodies {
            let mut d = flate2::read::GzDecoder::new(&b.data[..]);
            std::io::Read::read_to_end(&mut d, &mut plain).unwrap();
        }
        assert_eq!(plain, b"a x=1 1\n\n# c\nb x=2 2\nc x=3 3\nd x=4 4\n");
    }
}

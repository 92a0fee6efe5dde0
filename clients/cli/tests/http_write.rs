//! The write API as InfluxDB clients see it, against the real binary: endpoints, status codes,
//! error bodies with line numbers, gzip, precision, receipts, idempotency, back-pressure.

use std::io::Write;
use std::time::Duration;

use annals_tests::{read_ledger, receipt_rows, Server};

const BIN: &str = env!("CARGO_BIN_EXE_annals");

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_bytes(body) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// Sends only the request head announcing `len` body bytes and reads the status line.
fn status_for_announced_body(port: u16, path: &str, len: usize) -> u16 {
    use std::io::{BufRead, BufReader};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn start(args: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(BIN.as_ref(), &dir.path().join("data"), args).unwrap();
    (dir, s)
}

#[test]
fn endpoints_status_codes_and_errors() {
    let (_d, s) = start(&[]);
    // v1, v2 and v3 all write; 204 as InfluxDB clients expect.
    assert_eq!(
        post(
            &s.url("/write?db=db1&precision=s"),
            b"m,host=a v=1 1700000000",
            &[]
        )
        .0,
        204
    );
    assert_eq!(
        post(
            &s.url("/api/v2/write?bucket=db1&org=x&precision=ms"),
            b"m,host=b v=2 1700000000000",
            &[]
        )
        .0,
        204
    );
    assert_eq!(
        post(
            &s.url("/api/v3/write_lp?db=db1"),
            b"m,host=c v=3 1700000000000000000",
            &[]
        )
        .0,
        204
    );
    // Missing database, bad precision, bad database name.
    assert_eq!(post(&s.url("/write"), b"m v=1", &[]).0, 400);
    let (c, b) = post(&s.url("/write?db=db1&precision=fortnight"), b"m v=1", &[]);
    assert_eq!(c, 400, "{b}");
    assert!(b.contains("precision"));
    assert_eq!(post(&s.url("/write?db=no%20spaces"), b"m v=1", &[]).0, 400);
    // A malformed line names its line number and nothing of the request is written.
    let (c, b) = post(
        &s.url("/write?db=db1"),
        b"m,host=d v=4\n# comment\nm,host=e v=\n",
        &[],
    );
    assert_eq!(c, 400);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["line"], 3, "{b}");
    // Type conflict with the table: 422, nothing written.
    let (c, b) = post(
        &s.url("/write?db=db1"),
        b"m,host=f v=5\nm,host=g v=\"text\"\n",
        &[],
    );
    assert_eq!(c, 422, "{b}");
    assert!(b.contains("line 2"), "{b}");
    // Partial acceptance writes the good lines and reports the bad ones.
    let (c, b) = post(
        &s.url("/write?db=db1&accept_partial=true&receipt=true"),
        b"m,host=h v=6\nm,host=i v=oops\n",
        &[],
    );
    assert_eq!(c, 400, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["rows"], 1);
    assert_eq!(v["rejected"][0]["line"], 2);
    // Oversize bodies: 413, answered from the Content-Length before the body is read.
    assert_eq!(
        status_for_announced_body(s.port, "/write?db=db1", 33 << 20),
        413
    );
    // Health and metrics.
    let h: serde_json::Value = agent()
        .get(&s.url("/health"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(h["status"], "pass");
    let m = agent()
        .get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(m.contains("annals_rows_written_total"), "{m}");
    assert_eq!(agent().get(&s.url("/ping")).call().unwrap().status(), 204);

    // Exactly the accepted rows are in the ledger after a clean stop: a, b, c, h.
    let mut s = s;
    s.stop().unwrap();
    // A clean stop leaves nothing to replay: one empty segment per shard.
    for shard in std::fs::read_dir(s.data_dir.join("wal")).unwrap() {
        let segs: Vec<_> = std::fs::read_dir(shard.unwrap().path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect();
        assert_eq!(segs.len(), 1, "{segs:?}");
        assert!(segs[0] <= 64, "segment holds only its header: {segs:?}");
    }
    let ledger = read_ledger(&s.data_dir).unwrap();
    let mut hosts: Vec<String> = ledger
        .values()
        .map(|r| {
            let d = annals_format::row::decode_row(&r.encoding).unwrap();
            match d.columns.iter().find(|c| c.name == "host").unwrap().value {
                annals_format::row::ValueRef::Tag(t) => t.to_owned(),
                _ => unreachable!(),
            }
        })
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["a", "b", "c", "h"]);
    // Precision was applied: all three first rows sit at the same instant.
    let times: Vec<i64> = ledger
        .values()
        .map(|r| annals_format::row::decode_row(&r.encoding).unwrap().time)
        .collect();
    assert_eq!(
        times
            .iter()
            .filter(|&&t| t == 1_700_000_000_000_000_000)
            .count(),
        3
    );
}

#[test]
fn gzip_receipts_and_idempotency() {
    let (_d, mut s) = start(&["--block-rows", "4"]);
    let lines: String = (0..10)
        .map(|i| {
            format!(
                "r,dev=d{} temp={i}.5 {}\n",
                i % 3,
                1_700_000_000_000_000_000i64 + i
            )
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(lines.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let url = s.url("/api/v3/write_lp?db=g&receipt=true");
    let (c, b) = post(
        &url,
        &gz,
        &[("Content-Encoding", "gzip"), ("Idempotency-Key", "k1")],
    );
    assert_eq!(c, 200, "{b}");
    let first: serde_json::Value = serde_json::from_str(&b).unwrap();
    let rows = receipt_rows(&first);
    assert_eq!(rows.len(), 10);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    // A retry with the same key writes nothing and returns the same receipt.
    let (c, b) = post(
        &url,
        &gz,
        &[("Content-Encoding", "gzip"), ("Idempotency-Key", "k1")],
    );
    assert_eq!(c, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap(),
        first
    );
    // The same key with another body is refused.
    assert_eq!(
        post(&url, b"r,dev=x temp=1", &[("Idempotency-Key", "k1")]).0,
        422
    );
    // Compact receipts list runs.
    let (c, b) = post(
        &s.url("/api/v3/write_lp?db=g&receipt=compact"),
        lines.as_bytes(),
        &[],
    );
    assert_eq!(c, 200);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let counted: u64 = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 10);
    // Bad gzip is a clear 400.
    assert_eq!(
        post(&url, b"not gzip", &[("Content-Encoding", "gzip")]).0,
        400
    );
    s.stop().unwrap();
    let ledger = read_ledger(&s.data_dir).unwrap();
    assert_eq!(
        ledger.len(),
        20,
        "10 rows once through the key, 10 through the compact write"
    );
    for (_, tx) in rows {
        assert!(
            ledger.contains_key(&tx),
            "receipt tx_id {tx} is in the ledger"
        );
    }
}

#[test]
fn overload_gets_503_with_retry_after_and_bounded_memory() {
    // One queue slot per shard and no waiting: concurrent writers must see 503 quickly.
    let (_d, s) = start(&["--queue-depth", "1", "--write-wait", "0ms", "--shards", "1"]);
    let url = s.url("/write?db=o");
    let body: String = (0..5000)
        .map(|i| {
            format!(
                "m,dev=d{} a={i},b=2,c=3,d=4 {}\n",
                i % 50,
                1_700_000_000_000_000_000i64 + i
            )
        })
        .collect();
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let mut counts = (0u32, 0u32);
                for _ in 0..15 {
                    match agent().post(&url).send_string(&body) {
                        Ok(r) => {
                            assert_eq!(r.status(), 204);
                            counts.0 += 1;
                        }
                        Err(ureq::Error::Status(503, r)) => {
                            assert_eq!(r.header("retry-after"), Some("1"));
                            counts.1 += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                counts
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in threads {
        let (a, b) = t.join().unwrap();
        ok += a;
        refused += b;
    }
    assert!(ok > 0, "some writes went through");
    assert!(refused > 0, "overload was answered with 503");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid().unwrap())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(hwm_kb < 1_500_000, "peak memory {hwm_kb} kB under overload");
}

#[test]
fn idempotent_retry_after_sigkill_writes_nothing_new() {
    let (_d, mut s) = start(&["--block-age", "1h"]);
    let lines: String = (0..30)
        .map(|i| {
            format!(
                "r,dev=d{} temp={i}.5 {}\n",
                i % 7,
                1_700_000_000_000_000_000i64 + i
            )
        })
        .collect();
    let url = |s: &Server| s.url("/api/v3/write_lp?db=k&receipt=true");
    let (c, first) = post(
        &url(&s),
        lines.as_bytes(),
        &[("Idempotency-Key", "retry-1")],
    );
    assert_eq!(c, 200, "{first}");
    // The server dies right after acknowledging; the client never saw the answer and retries.
    s.restart().unwrap();
    let (c, again) = post(
        &url(&s),
        lines.as_bytes(),
        &[("Idempotency-Key", "retry-1")],
    );
    assert_eq!(c, 200, "{again}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        receipt_rows(&first),
        receipt_rows(&again),
        "same positions and tx_ids after the restart"
    );
    // A different body under the same key is refused.
    assert_eq!(
        post(
            &url(&s),
            b"r,dev=x temp=1",
            &[("Idempotency-Key", "retry-1")]
        )
        .0,
        422
    );
    s.stop().unwrap();
    assert_eq!(
        read_ledger(&s.data_dir).unwrap().len(),
        30,
        "the retry wrote nothing"
    );
}

//! Live subscriptions over HTTP (`/api/v3/subscribe`, NDJSON) against the real binary: a
//! consumer reads part of the stream, disconnects, the server is killed (SIGKILL) and
//! restarted, the consumer resumes from its last cursor, and in the end it has every
//! acknowledged row exactly once. The same over Flight `DoGet` (pyarrow, `subscribe_flight.py`):
//! it needs `python3` with `pyarrow` (`python3 -m pip install pyarrow`) and fails without it;
//! `PYTHON` names another interpreter.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use annals_tests::Server;
use common::{agent, start, write_receipt};
use serde_json::Value;

/// Blocks of 4 rows sealed within 100 ms, a checkpoint every 100 ms: rows are committed
/// shortly after they are acknowledged.
const LIVE: [&str; 12] = [
    "--shards",
    "2",
    "--block-rows",
    "4",
    "--block-age",
    "100ms",
    "--file-rows",
    "8",
    "--file-age",
    "1h",
    "--checkpoint-interval",
    "100ms",
];

/// An open subscription: its lines, one at a time.
struct Stream {
    lines: std::io::Lines<BufReader<Box<dyn std::io::Read + Send + Sync>>>,
}

fn subscribe(s: &Server, query: &str) -> Stream {
    let a = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(20))
        .build();
    let r = a
        .get(&s.url(&format!(
            "/api/v3/subscribe?db=fleet&table=m&heartbeat=0.3{query}"
        )))
        .call()
        .expect("subscription accepted");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    Stream {
        lines: BufReader::new(r.into_reader()).lines(),
    }
}

impl Stream {
    /// The next line: its cursor and its rows' `_tx_id`s.
    fn next(&mut self) -> (String, Vec<String>) {
        let l = self.lines.next().expect("the stream goes on").unwrap();
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(v.get("error").is_none(), "stream failed: {l}");
        let cursor = v["cursor"].as_str().expect("a cursor").to_string();
        let rows = v["rows"].as_array().expect("rows");
        let ids = rows
            .iter()
            .map(|r| {
                assert!(r["time"].is_string() && r["v"].is_i64(), "row {r}");
                r["_tx_id"].as_str().expect("_tx_id").to_string()
            })
            .collect();
        (cursor, ids)
    }
}

/// Writes `n` rows (values from `from`) and returns their `tx_id`s.
fn write(s: &Server, from: u64, n: u64) -> Vec<String> {
    let body: String = (from..from + n)
        .map(|i| {
            format!(
                "m,host=h{} v={i}i {}\n",
                i % 5,
                1_700_000_000_000_000_000u64 + i
            )
        })
        .collect();
    write_receipt(s, &body)
        .iter()
        .map(|e| e["tx_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn resume_after_disconnect_and_kill9_gives_every_committed_row_once() {
    let (_dir, mut s) = start(&LIVE);
    let mut acked: Vec<String> = Vec::new();
    for b in 0..5 {
        acked.extend(write(&s, b * 10, 10));
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let take = |ids: Vec<String>, got: &mut BTreeMap<String, usize>| {
        let n = ids.len();
        for id in ids {
            *got.entry(id).or_default() += 1;
        }
        n
    };

    // Read part of the committed rows, then disconnect.
    let mut sub = subscribe(&s, "");
    let mut cursor = String::new();
    let mut read = 0;
    while read < 20 {
        let (c, ids) = sub.next();
        read += take(ids, &mut got);
        cursor = c;
    }
    drop(sub);
    assert!(read < acked.len(), "only part was read ({read})");
    assert!(
        cursor.split('.').count() == 5,
        "a cursor inside a step: {cursor}"
    );

    // More rows, a crash, a restart, more rows.
    for b in 5..8 {
        acked.extend(write(&s, b * 10, 10));
    }
    s.kill9();
    s.restart().unwrap();
    for b in 8..10 {
        acked.extend(write(&s, b * 10, 10));
    }

    // Resume: everything else arrives, nothing twice.
    let mut sub = subscribe(&s, &format!("&from={cursor}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < acked.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} rows",
            got.len(),
            acked.len()
        );
        let (_, ids) = sub.next();
        take(ids, &mut got);
    }
    // A heartbeat (no rows) after everything: nothing further was pending.
    let (_, ids) = sub.next();
    take(ids, &mut got);
    let want: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(want.len(), acked.len(), "tx_ids are distinct");
    let have: BTreeSet<&String> = got.keys().collect();
    assert_eq!(have, want, "every acknowledged row, nothing else");
    let twice: Vec<_> = got.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

#[test]
fn filters_latest_and_refusals() {
    let (_dir, s) = start(&LIVE);
    let old = write(&s, 0, 8);
    // Wait until the first rows are committed, so `latest` starts after them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sub = subscribe(&s, "");
    let mut seen = 0;
    while seen < old.len() {
        assert!(Instant::now() < deadline);
        seen += sub.next().1.len();
    }
    drop(sub);
    let mut sub = subscribe(
        &s,
        "&from=latest&where=host%20%3D%20'h1'%20AND%20v%20%3E%3D%20100",
    );
    let new = write(&s, 100, 20);
    let want: BTreeSet<String> = new
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 == 1)
        .map(|(_, t)| t.clone())
        .collect();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < want.len() {
        assert!(Instant::now() < deadline, "{got:?}");
        for id in sub.next().1 {
            assert!(got.insert(id), "no row twice");
        }
    }
    assert_eq!(got, want, "only new rows of h1");

    let status = |q: &str| match agent().get(&s.url(q)).call() {
        Ok(r) => (r.status(), String::new()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{q}: {e}"),
    };
    for (q, code, text) in [
        ("/api/v3/subscribe?db=fleet", 400, "missing parameter table"),
        ("/api/v3/subscribe?db=fleet&table=nope", 404, "not found"),
        ("/api/v3/subscribe?db=nope&table=m", 404, "not found"),
        (
            "/api/v3/subscribe?db=fleet&table=m&from=x",
            400,
            "bad cursor",
        ),
        (
            "/api/v3/subscribe?db=fleet&table=m&from=999999",
            400,
            "latest is",
        ),
        (
            "/api/v3/subscribe?db=fleet&table=m&where=nosuch%3D1",
            400,
            "bad filter",
        ),
    ] {
        let (c, body) = status(q);
        assert_eq!(c, code, "{q}: {body}");
        assert!(body.contains(text), "{q}: {body}");
    }
}

#[test]
fn subscriptions_need_read_on_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_auth(common::BIN.as_ref(), &dir.path().join("data"), &LIVE).unwrap();
    let admin = s.admin_token.clone().expect("admin token");
    let r = agent()
        .post(&s.url("/api/v3/write_lp?db=fleet"))
        .set("Authorization", &format!("Bearer {admin}"))
        .send_string("m v=1i 1\n")
        .unwrap();
    assert_eq!(r.status(), 204);
    let token = |db: &str| -> String {
        let v: Value = agent()
            .post(&s.url("/api/v3/tokens"))
            .set("Authorization", &format!("Bearer {admin}"))
            .send_json(serde_json::json!({"read": true, "db": db}))
            .unwrap()
            .into_json()
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let url = s.url("/api/v3/subscribe?db=fleet&table=m&heartbeat=0.3");
    let code = |auth: Option<String>| {
        let mut req = agent().get(&url);
        if let Some(t) = auth {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(c, _)) => c,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code(None), 401);
    assert_eq!(code(Some(token("other"))), 403);
    assert_eq!(code(Some(token("fleet"))), 200);
}

#[test]
fn flight_subscription_resumes_from_app_metadata_cursor() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import pyarrow.flight"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} with pyarrow is needed: python3 -m pip install pyarrow"
    );
    let (dir, s) = start(&LIVE);
    let mut acked = Vec::new();
    for b in 0..6 {
        acked.extend(write(&s, b * 10, 10));
    }
    let ids = dir.path().join("tx_ids.txt");
    std::fs::write(&ids, acked.join("\n")).unwrap();
    let script = &format!("{}/tests/subscribe_flight.py", common::package_dir());
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(s.port.to_string())
        .arg(&ids)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

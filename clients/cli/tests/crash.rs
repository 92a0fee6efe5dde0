//! Durability under SIGKILL: concurrent writers, the real binary killed at random points at
//! least 20 times, restarted each time; afterwards every acknowledged row is in the ledger
//! exactly once, every block re-hashes to its header, and `annals audit` passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals_tests::{read_ledger, receipt_rows, Server};
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_annals");
const KILLS: usize = 20;
const WRITERS: usize = 4;
const LINES_PER_REQUEST: usize = 50;

/// A small-block configuration so kills land in every phase: mid-WAL, mid-seal, mid-file.
const FLAGS: &[&str] = &[
    "--block-rows",
    "64",
    "--block-age",
    "100ms",
    "--file-rows",
    "256",
    "--file-age",
    "300ms",
    "--checkpoint-interval",
    "100ms",
    "--shards",
    "2",
];

fn body(writer: usize, first_seq: u64) -> String {
    let mut s = String::new();
    for k in 0..LINES_PER_REQUEST as u64 {
        let seq = first_seq + k;
        // Several tables and series; an occasional string field; times out of order.
        let table = if seq.is_multiple_of(3) {
            "diagnostics"
        } else {
            "readings"
        };
        let t = 1_700_000_000_000_000_000i64 + (seq as i64 % 97) * 1_000_000_000 + writer as i64;
        s.push_str(&format!(
            "{table},writer=w{writer},truck=truck_{} seq={seq}i,velocity={}.5,note=\"n {seq}\" {t}\n",
            seq % 7,
            seq % 120
        ));
    }
    s
}

#[test]
fn every_acknowledged_row_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Arc::new(Mutex::new(
        Server::start(BIN.as_ref(), &data, FLAGS).unwrap(),
    ));
    let port = server.lock().unwrap().port;
    let stop = Arc::new(AtomicBool::new(false));
    // tx_id -> (writer, seq) for every acknowledged row; seqs whose outcome is unknown.
    let acked: Arc<Mutex<BTreeMap<String, (usize, u64)>>> = Arc::default();
    let unknown: Arc<Mutex<BTreeSet<(usize, u64)>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, acked, unknown, requests) = (
                stop.clone(),
                acked.clone(),
                unknown.clone(),
                requests.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let url = format!(
                    "http://127.0.0.1:{port}/api/v3/write_lp?db=crash&precision=ns&receipt=true"
                );
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let b = body(w, seq);
                    match agent.post(&url).send_string(&b) {
                        Ok(resp) => {
                            assert_eq!(resp.status(), 200);
                            let v: serde_json::Value = resp.into_json().unwrap();
                            let rows = receipt_rows(&v);
                            assert_eq!(rows.len(), LINES_PER_REQUEST, "receipt lists every row");
                            let mut a = acked.lock().unwrap();
                            for (line, tx) in rows {
                                assert!(
                                    a.insert(tx, (w, seq + line - 1)).is_none(),
                                    "a tx_id was handed out twice"
                                );
                            }
                            requests.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ureq::Error::Status(code, resp)) => {
                            // Refused writes write nothing, but 503 during shutdown races are fine.
                            assert!(
                                code == 503,
                                "unexpected {code}: {}",
                                resp.into_string().unwrap_or_default()
                            );
                            let mut u = unknown.lock().unwrap();
                            u.extend((0..LINES_PER_REQUEST as u64).map(|k| (w, seq + k)));
                        }
                        Err(_) => {
                            // Connection dropped by the kill: the rows may or may not be durable.
                            let mut u = unknown.lock().unwrap();
                            u.extend((0..LINES_PER_REQUEST as u64).map(|k| (w, seq + k)));
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    seq += LINES_PER_REQUEST as u64;
                }
            })
        })
        .collect();

    let mut rng = rand::rngs::StdRng::seed_from_u64(0xa11a15);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        let mut s = server.lock().unwrap();
        s.kill9();
        s.restart().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    server.lock().unwrap().stop().unwrap();

    let acked = acked.lock().unwrap();
    let unknown = unknown.lock().unwrap();
    assert!(
        requests.load(Ordering::Relaxed) > 20,
        "the writers got enough writes through"
    );
    let ledger = read_ledger(&data).unwrap();
    for (tx, (w, seq)) in acked.iter() {
        let row = ledger
            .get(tx)
            .unwrap_or_else(|| panic!("acknowledged row w{w} seq {seq} (tx {tx}) is missing"));
        let decoded = annals_format::row::decode_row(&row.encoding).unwrap();
        let got_seq = decoded
            .columns
            .iter()
            .find(|c| c.name == "seq")
            .map(|c| c.value);
        assert_eq!(
            got_seq,
            Some(annals_format::row::ValueRef::I64(*seq as i64)),
            "row content at tx {tx}"
        );
    }
    // Exactly once: no (writer, seq) is stored twice, and nothing is stored that was never sent.
    let mut contents = BTreeSet::new();
    for row in ledger.values() {
        let d = annals_format::row::decode_row(&row.encoding).unwrap();
        let w = d.columns.iter().find_map(|c| match (c.name, c.value) {
            ("writer", annals_format::row::ValueRef::Tag(v)) => Some(v.to_owned()),
            _ => None,
        });
        let seq = d.columns.iter().find_map(|c| match (c.name, c.value) {
            ("seq", annals_format::row::ValueRef::I64(v)) => Some(v),
            _ => None,
        });
        assert!(
            contents.insert((w.clone(), seq)),
            "row {w:?} {seq:?} stored twice"
        );
    }
    let acked_contents: BTreeSet<_> = acked
        .values()
        .map(|(w, s)| (Some(format!("w{w}")), Some(*s as i64)))
        .collect();
    for c in &contents {
        let maybe = unknown.contains(&(
            c.0.as_deref().unwrap()[1..].parse().unwrap(),
            c.1.unwrap() as u64,
        ));
        assert!(
            acked_contents.contains(c) || maybe,
            "row {c:?} was never acknowledged nor in flight"
        );
    }
    eprintln!(
        "acknowledged rows: {}, stored rows: {}, in doubt: {}",
        acked.len(),
        ledger.len(),
        unknown.len()
    );

    let audit = std::process::Command::new(BIN)
        .args(["audit", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "audit failed:\n{out}");
    assert!(out.contains("audit: OK"));
}

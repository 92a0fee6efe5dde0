//! The ledger API (`/api/v3/ledger/...`), `ledger_proof()` in SQL and `annals proof`, against
//! the real binary. Every proof, checkpoint and consistency path is checked here with
//! `annals-format` code, as an auditor holding only FORMAT.md would.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use annals_format::block::{tx_id, BlockHeader};
use annals_format::checkpoint::{branches_root, BranchEntry, CheckpointHeader};
use annals_format::hash::{hash_from_hex, leaf_hash, to_hex, Hash};
use annals_format::merkle::{verify_consistency, verify_inclusion};
use annals_tests::Server;
use common::{agent, start, write_receipt as write, BIN};
use serde_json::{json, Value};

const FLAGS: &[&str] = &common::manual_flags("1");

/// Status and JSON body (error statuses included).
fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = match agent().get(&s.url(path)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = r.status();
    let mut body = String::new();
    r.into_reader().read_to_string(&mut body).unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

fn flush(s: &Server) -> u64 {
    let r = agent().post(&s.url("/api/v3/flush")).call().unwrap();
    let v: Value = r.into_json().unwrap();
    v["checkpoint_epoch"].as_u64().expect("an epoch")
}

fn node_key(s: &Server) -> [u8; 32] {
    hash_from_hex(get(s, "/health").1["node_key"].as_str().unwrap()).unwrap()
}

fn lines(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "readings,truck=t{} velocity={}.25,seq={i}i {}",
                i % 3,
                i,
                1_700_000_000_000_000_000i64 + i as i64
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn h(v: &Value) -> Hash {
    hash_from_hex(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap_or_else(|| panic!("not a hash: {v}"))
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(h).collect()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn proof_url(e: &Value, with_position: bool) -> String {
    let mut u = format!(
        "/api/v3/ledger/proof?tx_id={}",
        e["tx_id"].as_str().unwrap()
    );
    if with_position {
        u.push_str(&format!(
            "&branch={}&height={}&index={}",
            e["branch"].as_str().unwrap(),
            e["height"],
            e["index"]
        ));
    }
    u
}

/// FORMAT.md's verifier, on a proof document, for the row of receipt entry `e`.
fn verify_proof(d: &Value, e: &Value, seq: i64, key: &[u8; 32]) {
    assert_eq!(d["format"], "annals-proof/1");
    let row = unhex(&d["row_hex"]);
    // The row is the one written: table, time and columns.
    assert_eq!(d["row"]["table"], "fleet/readings");
    assert_eq!(d["row"]["time"], json!(1_700_000_000_000_000_000i64 + seq));
    let cols = &d["row"]["columns"];
    assert_eq!(cols[0], json!({"name": "seq", "kind": "i64", "value": seq}));
    assert_eq!(cols[1]["kind"], "tag");
    assert_eq!(
        cols[2],
        json!({"name": "velocity", "kind": "f64", "value": seq as f64 + 0.25})
    );
    let decoded = annals_format::row::decode_row(&row).unwrap();
    assert_eq!(decoded.columns.len(), 3);
    let header = BlockHeader::decode(&unhex(&d["block"]["header_hex"])).unwrap();
    let index = d["block"]["index"].as_u64().unwrap();
    assert_eq!(
        (to_hex(&header.branch), header.height, index),
        (
            e["branch"].as_str().unwrap().to_string(),
            e["height"].as_u64().unwrap(),
            e["index"].as_u64().unwrap()
        )
    );
    let leaf = leaf_hash(&row);
    assert!(
        verify_inclusion(
            &leaf,
            index,
            header.row_count.into(),
            &hashes(&d["block"]["path"]),
            &header.rows_root
        ),
        "row inclusion"
    );
    let tx = tx_id(&header.branch, header.height, index as u32, &leaf);
    assert_eq!(to_hex(&tx), e["tx_id"].as_str().unwrap());
    assert_eq!(d["tx_id"], e["tx_id"]);
    let sig: [u8; 64] = unhex(&d["block"]["signature"]["sig"]).try_into().unwrap();
    assert_eq!(h(&d["block"]["signature"]["key"]), *key);
    annals_format::sign::verify(key, &header.hash(), &sig).expect("block signature");
    let entry = BranchEntry::decode(&unhex(&d["checkpoint"]["entry_hex"])).unwrap();
    assert_eq!(entry.branch, header.branch);
    assert_eq!(d["branch"]["size"].as_u64().unwrap(), entry.size);
    assert!(
        verify_inclusion(
            &leaf_hash(&header.hash()),
            header.height,
            entry.size,
            &hashes(&d["branch"]["path"]),
            &entry.root
        ),
        "block inclusion"
    );
    let cp = CheckpointHeader::decode(&unhex(&d["checkpoint"]["header_hex"])).unwrap();
    assert!(
        verify_inclusion(
            &leaf_hash(&entry.encode()),
            d["checkpoint"]["entry_index"].as_u64().unwrap(),
            cp.branch_count.into(),
            &hashes(&d["checkpoint"]["path"]),
            &cp.branches_root
        ),
        "entry inclusion"
    );
    let s = &d["checkpoint"]["signatures"][0];
    assert_eq!(h(&s["key"]), *key);
    let csig: [u8; 64] = unhex(&s["sig"]).try_into().unwrap();
    annals_format::sign::verify(key, &cp.hash(), &csig).expect("checkpoint signature");
}

#[test]
fn proof_endpoint_answers_proofs_reasons_and_waits() {
    let (_d, s) = start(FLAGS);
    let key = node_key(&s);
    // 10 rows: blocks 0 and 1 are sealed (4 rows each), rows 8 and 9 stay in an open block.
    let es = write(&s, &lines(0, 10));
    assert_eq!(es.len(), 10);

    let (code, v) = get(&s, &proof_url(&es[9], true));
    assert_eq!(
        (code, v["reason"].as_str()),
        (404, Some("not_sealed")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("still open"), "{v}");
    // Sealing is asynchronous: block 0 becomes sealed-but-not-checkpointed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, v) = get(&s, &proof_url(&es[1], true));
        assert_eq!(code, 404, "{v}");
        if v["reason"] == "not_checkpointed" {
            break;
        }
        assert_eq!(v["reason"], "not_sealed");
        assert!(
            Instant::now() < deadline,
            "block 0 was not sealed within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // wait: the answer comes when a checkpoint covers the row (here: the flush below).
    let url = s.url(&format!("{}&wait=30", proof_url(&es[2], false)));
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        let r = agent().get(&url).call().expect("200 after the checkpoint");
        (
            r.status(),
            r.into_json::<Value>().unwrap(),
            started.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    let epoch = flush(&s);
    let (code, doc, took) = waiter.join().unwrap();
    assert_eq!(code, 200);
    assert!(
        took >= Duration::from_millis(700),
        "answered before the checkpoint existed: {took:?}"
    );
    verify_proof(&doc, &es[2], 2, &key);
    let cp = CheckpointHeader::decode(&unhex(&doc["checkpoint"]["header_hex"])).unwrap();
    assert_eq!(cp.epoch, epoch);
    // wait runs out: a still open block gives the reason after the wait.
    let es2 = write(&s, &lines(10, 1));
    let t = Instant::now();
    let (code, v) = get(&s, &format!("{}&wait=1", proof_url(&es2[0], true)));
    assert_eq!(
        (code, v["reason"].as_str()),
        (404, Some("not_sealed")),
        "{v}"
    );
    assert!(t.elapsed() >= Duration::from_secs(1));

    // Every row of the flushed write: with its position and found from the tx_id alone.
    for (i, e) in es.iter().enumerate() {
        let (code, with) = get(&s, &proof_url(e, true));
        assert_eq!(code, 200, "{with}");
        verify_proof(&with, e, i as i64, &key);
        let (code, without) = get(&s, &proof_url(e, false));
        assert_eq!((code, &without), (200, &with));
    }

    // 400: bad or missing parameters.
    let tx = es[0]["tx_id"].as_str().unwrap();
    for (url, needle) in [
        (
            "/api/v3/ledger/proof".to_string(),
            "missing parameter tx_id",
        ),
        (
            "/api/v3/ledger/proof?tx_id=xyz".to_string(),
            "64 hex digits",
        ),
        (
            format!("/api/v3/ledger/proof?tx_id={}", &tx[..62]),
            "64 hex digits",
        ),
        (
            format!("/api/v3/ledger/proof?tx_id={tx}&wait=61"),
            "at most 60",
        ),
        (
            format!("/api/v3/ledger/proof?tx_id={tx}&height=-1"),
            "height",
        ),
        (
            format!("/api/v3/ledger/proof?tx_id={tx}&branch=00"),
            "32 hex digits",
        ),
        (
            format!("/api/v3/ledger/proof?tx_id={tx}&txid=1"),
            "unknown field",
        ),
    ] {
        let (code, v) = get(&s, &url);
        assert_eq!(
            (code, v["reason"].as_str()),
            (400, Some("invalid")),
            "{url}: {v}"
        );
        assert!(v["error"].as_str().unwrap().contains(needle), "{url}: {v}");
    }
    // 404 not_found: an unknown tx_id, and a position holding another row.
    let (code, v) = get(
        &s,
        &format!("/api/v3/ledger/proof?tx_id={}", "ab".repeat(32)),
    );
    assert_eq!(
        (code, v["reason"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let wrong = format!(
        "/api/v3/ledger/proof?tx_id={}&branch={}&height=0&index=0",
        es[1]["tx_id"].as_str().unwrap(),
        es[1]["branch"].as_str().unwrap()
    );
    let (code, v) = get(&s, &wrong);
    assert_eq!(
        (code, v["reason"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap().contains("does not have tx_id"),
        "{v}"
    );
}

#[test]
fn checkpoints_and_consistency_let_an_auditor_check_the_ledger_only_grew() {
    let (_d, s) = start(FLAGS);
    let key = node_key(&s);
    let (code, v) = get(&s, "/api/v3/ledger/checkpoints/latest");
    assert_eq!((code, v["reason"].as_str()), (404, Some("not_found")));
    let mut written = 0;
    for (round, n) in [5usize, 9, 3, 12].into_iter().enumerate() {
        write(&s, &lines(written, n));
        written += n;
        if round == 2 {
            // A second table: a branch that is new in a later checkpoint.
            let r = agent()
                .post(&s.url("/api/v3/write_lp?db=fleet"))
                .send_string("doors,room=a open=true 1")
                .unwrap();
            assert_eq!(r.status(), 204);
        }
        assert_eq!(flush(&s), round as u64);
    }

    // The list, paged; each checkpoint checked from its bytes.
    let (code, page1) = get(&s, "/api/v3/ledger/checkpoints?limit=3");
    assert_eq!(code, 200, "{page1}");
    assert_eq!(page1["count"], 4);
    assert_eq!(page1["next_from"], 3);
    let (_, page2) = get(&s, "/api/v3/ledger/checkpoints?from=3&limit=3");
    assert_eq!(page2["next_from"], Value::Null);
    let all: Vec<Value> = page1["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["checkpoints"].as_array().unwrap())
        .cloned()
        .collect();
    assert_eq!(all.len(), 4);
    let mut prev = [0u8; 32];
    for (i, c) in all.iter().enumerate() {
        let header = CheckpointHeader::decode(&unhex(&c["header_hex"])).unwrap();
        assert_eq!(header.epoch, i as u64);
        assert_eq!(c["epoch"], i as u64);
        assert_eq!(h(&c["hash"]), header.hash());
        assert_eq!((h(&c["prev"]), header.prev), (prev, prev));
        assert_eq!(h(&c["branches_root"]), header.branches_root);
        assert_eq!(c["branch_count"], header.branch_count);
        assert_eq!(c["time"], header.time);
        assert_eq!(h(&c["validators"]), header.validators);
        let entries: Vec<BranchEntry> = c["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| BranchEntry {
                branch: unhex(&e["branch"]).try_into().unwrap(),
                size: e["size"].as_u64().unwrap(),
                root: h(&e["root"]),
            })
            .collect();
        assert_eq!(
            branches_root(&entries),
            header.branches_root,
            "epoch {i}: entries"
        );
        let sig = &c["signatures"][0];
        assert_eq!(h(&sig["key"]), key);
        let sig: [u8; 64] = unhex(&sig["sig"]).try_into().unwrap();
        annals_format::sign::verify(&key, &header.hash(), &sig).expect("checkpoint signature");
        let (code, one) = get(&s, &format!("/api/v3/ledger/checkpoints/{i}"));
        assert_eq!((code, &one), (200, c));
        prev = header.hash();
    }
    assert_eq!(get(&s, "/api/v3/ledger/checkpoints/latest").1, all[3]);
    assert_eq!(all[1]["branch_count"], 1);
    assert_eq!(all[2]["branch_count"], 2);
    let (code, v) = get(&s, "/api/v3/ledger/checkpoints/9");
    assert_eq!((code, v["reason"].as_str()), (404, Some("not_found")));
    assert_eq!(get(&s, "/api/v3/ledger/checkpoints/x").0, 400);
    assert_eq!(get(&s, "/api/v3/ledger/checkpoints?limit=0").0, 400);

    // Consistency of one branch between the sizes two checkpoints name.
    let readings = all[0]["entries"][0].clone();
    let branch = readings["branch"].as_str().unwrap();
    let last = all[3]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["branch"] == branch)
        .unwrap()
        .clone();
    let (from, to) = (
        readings["size"].as_u64().unwrap(),
        last["size"].as_u64().unwrap(),
    );
    assert!(from < to);
    let (code, c) = get(
        &s,
        &format!("/api/v3/ledger/consistency?branch={branch}&from={from}&to={to}"),
    );
    assert_eq!(code, 200, "{c}");
    assert_eq!(
        (h(&c["from_root"]), h(&c["to_root"])),
        (h(&readings["root"]), h(&last["root"]))
    );
    assert!(verify_consistency(
        from,
        to,
        &h(&c["from_root"]),
        &h(&c["to_root"]),
        &hashes(&c["path"])
    ));
    // Between two epochs: every branch of the older one, and the branch new since.
    for (a, b) in [(0u64, 3u64), (1, 2), (2, 3), (3, 3)] {
        let (code, v) = get(
            &s,
            &format!("/api/v3/ledger/consistency?from_epoch={a}&to_epoch={b}"),
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(h(&v["from_hash"]), h(&all[a as usize]["hash"]));
        let old = all[a as usize]["entries"].as_array().unwrap();
        let new = all[b as usize]["entries"].as_array().unwrap();
        let paths = v["branches"].as_array().unwrap();
        assert_eq!(paths.len(), old.len());
        for (p, e) in paths.iter().zip(old) {
            let n = new.iter().find(|n| n["branch"] == e["branch"]).unwrap();
            assert_eq!((&p["from"], &p["to"]), (&e["size"], &n["size"]));
            assert!(
                verify_consistency(
                    e["size"].as_u64().unwrap(),
                    n["size"].as_u64().unwrap(),
                    &h(&e["root"]),
                    &h(&n["root"]),
                    &hashes(&p["path"])
                ),
                "epochs {a}->{b}"
            );
        }
        let fresh: Vec<&Value> = new
            .iter()
            .filter(|n| old.iter().all(|e| e["branch"] != n["branch"]))
            .collect();
        assert_eq!(
            v["new_branches"]
                .as_array()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            fresh
        );
        assert_eq!(fresh.len(), usize::from(a < 2 && b >= 2));
    }
    // A forged root does not verify against the path the server gave.
    let (_, c) = get(
        &s,
        &format!("/api/v3/ledger/consistency?branch={branch}&from=1&to={to}"),
    );
    assert!(!verify_consistency(
        1,
        to,
        &[7; 32],
        &h(&c["to_root"]),
        &hashes(&c["path"])
    ));

    for (url, code, reason) in [
        (
            format!("/api/v3/ledger/consistency?branch={branch}&from=3&to=2"),
            400,
            "invalid",
        ),
        (
            format!("/api/v3/ledger/consistency?branch={branch}&from=0&to=999"),
            400,
            "invalid",
        ),
        (
            format!(
                "/api/v3/ledger/consistency?branch={}&from=0&to=1",
                "0".repeat(32)
            ),
            404,
            "not_found",
        ),
        (
            format!("/api/v3/ledger/consistency?branch={branch}&from=1"),
            400,
            "invalid",
        ),
        (
            "/api/v3/ledger/consistency?from_epoch=2&to_epoch=1".to_string(),
            400,
            "invalid",
        ),
        (
            "/api/v3/ledger/consistency?from_epoch=0&to_epoch=9".to_string(),
            404,
            "not_found",
        ),
        (
            format!("/api/v3/ledger/consistency?branch={branch}&from_epoch=0&to_epoch=1"),
            400,
            "invalid",
        ),
        ("/api/v3/ledger/consistency".to_string(), 400, "invalid"),
    ] {
        let (got, v) = get(&s, &url);
        assert_eq!(
            (got, v["reason"].as_str()),
            (code, Some(reason)),
            "{url}: {v}"
        );
    }
}

#[test]
fn ledger_proof_in_sql_matches_the_proof_endpoint() {
    let (_d, s) = start(FLAGS);
    let es = write(&s, &lines(0, 10));
    flush(&s);
    let es2 = write(&s, &lines(10, 2)); // an open block: NULL proofs
    let sql = "SELECT _tx_id, ledger_proof(_tx_id, _branch, _height, _index) AS p, ledger_proof(_branch, _height, _index) AS q FROM ledger('readings') ORDER BY _height, _index";
    let r = agent()
        .post(&s.url("/api/v3/query_sql"))
        .send_json(json!({"db": "fleet", "q": sql}))
        .unwrap();
    let rows: Vec<Value> = r.into_json().unwrap();
    assert_eq!(rows.len(), 12);
    for (row, e) in rows.iter().zip(es.iter().chain(&es2)) {
        assert_eq!(row["_tx_id"], e["tx_id"]);
        if es2.contains(e) {
            assert!(row.get("p").is_none() && row.get("q").is_none(), "{row}");
            continue;
        }
        let p: Value = serde_json::from_str(row["p"].as_str().unwrap()).unwrap();
        assert_eq!(row["p"], row["q"]);
        let (code, doc) = get(&s, &proof_url(e, true));
        assert_eq!((code, &p), (200, &doc));
    }
    // A position and a tx_id that disagree is an error, not a proof.
    let bad = format!("SELECT ledger_proof('{}', _branch, _height, _index) FROM ledger('readings') WHERE _height = 0 AND _index = 0", es[1]["tx_id"].as_str().unwrap());
    let r = agent()
        .post(&s.url("/api/v3/query_sql"))
        .send_json(json!({"db": "fleet", "q": bad}));
    match r {
        Err(ureq::Error::Status(code, resp)) => {
            assert!(code >= 400);
            assert!(resp.into_string().unwrap().contains("does not have tx_id"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn annals_proof_command_prints_and_saves_the_proof() {
    let (d, s) = start(FLAGS);
    let es = write(&s, &lines(0, 4));
    flush(&s);
    let e = &es[3];
    let host = s.url("");
    let out = Command::new(BIN)
        .args(["proof", e["tx_id"].as_str().unwrap(), "--host", &host])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, get(&s, &proof_url(e, true)).1);
    verify_proof(&printed, e, 3, &node_key(&s));

    let file = d.path().join("row.proof.json");
    let out = Command::new(BIN)
        .args([
            "proof",
            e["tx_id"].as_str().unwrap(),
            "--url",
            &host,
            "--output",
        ])
        .arg(&file)
        .args([
            "--branch",
            e["branch"].as_str().unwrap(),
            "--height",
            "0",
            "--index",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved, printed);

    // The binary form: the same bytes from the CLI and from the endpoint, under half the
    // JSON's size, and `annals verify` reads it with the node's key trusted.
    let bin_file = d.path().join("row.proof");
    let out = Command::new(BIN)
        .args(["proof", e["tx_id"].as_str().unwrap(), "--host", &host])
        .args(["--format", "binary", "--output"])
        .arg(&bin_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = std::fs::read(&bin_file).unwrap();
    assert!(bin.starts_with(b"APRF\x01"));
    assert!(bin.len() * 2 < serde_json::to_vec(&printed).unwrap().len());
    let r = agent()
        .get(&s.url(&format!("{}&format=binary", proof_url(e, true))))
        .call()
        .unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.annals.proof")
    );
    let mut served = Vec::new();
    r.into_reader().read_to_end(&mut served).unwrap();
    assert_eq!(served, bin);
    let keys = d.path().join("keys.txt");
    std::fs::write(&keys, format!("{}\n", to_hex(&node_key(&s)))).unwrap();
    let verify = || {
        Command::new(BIN)
            .arg("verify")
            .arg(&bin_file)
            .arg("--trust")
            .arg(&keys)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(e["tx_id"].as_str().unwrap()),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // One flipped bit, and it does not verify.
    let mut bad = bin.clone();
    bad[40] ^= 1;
    std::fs::write(&bin_file, &bad).unwrap();
    assert_ne!(verify().status.code(), Some(0));
    let (code, v) = get(&s, &format!("{}&format=xml", proof_url(e, true)));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("json or binary"),
        "{v}"
    );

    // No proof: exit 1 with the server's reason; bad arguments: exit 2.
    let open = write(&s, &lines(4, 1));
    let out = Command::new(BIN)
        .args(["proof", open[0]["tx_id"].as_str().unwrap(), "--host", &host])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_sealed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["proof", "nothex", "--host", &host])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

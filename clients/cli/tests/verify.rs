//! `annals verify` on the real binary: the published vector proof (structure only), a corrupted
//! copy, and a signed proof built here with the server's format crate (so the independent
//! verifier is checked against the server's encoders), under the right and wrong trust.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use annals_format::block::{tx_id, BlockHeader};
use annals_format::checkpoint::{validators_hash, BranchEntry, CheckpointHeader, Validator};
use annals_format::hash::leaf_hash;
use annals_format::merkle::{inclusion_path, root_of, LeafHashes};
use annals_format::row::{encode_row, ColumnRef, ValueRef};
use annals_format::sign::{sign, SigningKey};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_annals");

fn vector_proof() -> Value {
    let dir = std::env::var("ANNALS_SHARED_DIR")
        .unwrap_or_else(|_| format!("{}/../../../shared", common::package_dir()));
    let path = format!("{dir}/vectors/format-v1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["proof"].clone()
}

fn run(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("verify")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    (
        status.code().expect("exited"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// A signed proof of row 1 of a 3-row block at height 1 of a 2-block branch, in a checkpoint
/// over two branches signed by all three validators. Returns the document and the validator
/// keys.
fn signed_proof() -> (Value, Vec<SigningKey>) {
    let node = SigningKey::from_bytes(&[7; 32]);
    let validators: Vec<SigningKey> = (1..=3u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    let table = "fleet/readings";
    let branch = [0x42u8; 16];
    let rows: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let truck = format!("truck_{i}");
            let cols = [
                ColumnRef {
                    name: "fuel",
                    value: ValueRef::F64(0.1 * f64::from(i)),
                },
                ColumnRef {
                    name: "odometer",
                    value: ValueRef::U64(u64::MAX - i as u64),
                },
                ColumnRef {
                    name: "truck",
                    value: ValueRef::Tag(&truck),
                },
            ];
            let mut out = Vec::new();
            encode_row(
                &mut out,
                table,
                1_700_000_000_000_000_000 + i64::from(i),
                &cols,
            )
            .unwrap();
            out
        })
        .collect();
    let leaves: Vec<_> = rows.iter().map(|r| leaf_hash(r)).collect();
    let first = BlockHeader {
        table: table.into(),
        branch,
        height: 0,
        prev: [0; 32],
        rows_root: [1; 32],
        row_count: 1,
        time_min: 0,
        time_max: 0,
        context: [0; 32],
        sealed_at: 5,
    };
    let header = BlockHeader {
        height: 1,
        prev: first.hash(),
        rows_root: root_of(&leaves),
        row_count: 3,
        time_min: 1_700_000_000_000_000_000,
        time_max: 1_700_000_000_000_000_002,
        sealed_at: 1_700_000_001_000_000_000,
        ..first.clone()
    };
    // The branch log's leaf data are the block hashes.
    let block_hashes = [leaf_hash(&first.hash()), leaf_hash(&header.hash())];
    let entries = [
        BranchEntry {
            branch,
            size: 2,
            root: root_of(&block_hashes),
        },
        BranchEntry {
            branch: [0x99; 16],
            size: 1,
            root: [3; 32],
        },
    ];
    let entry_leaves: Vec<_> = entries.iter().map(|e| leaf_hash(&e.encode())).collect();
    let set: Vec<Validator> = validators
        .iter()
        .map(|k| Validator {
            pubkey: k.verifying_key().to_bytes(),
            power: 1,
        })
        .collect();
    let cp = CheckpointHeader {
        epoch: 3,
        prev: [9; 32],
        branches_root: root_of(&entry_leaves),
        branch_count: 2,
        time: 1_700_000_002_000_000_000,
        validators: validators_hash(&set),
    };
    let hexes = |v: Vec<[u8; 32]>| v.iter().map(hex::encode).collect::<Vec<_>>();
    let keysig = |k: &SigningKey, digest: &[u8; 32]| json!({"key": hex::encode(k.verifying_key().to_bytes()), "sig": hex::encode(sign(k, digest))});
    let doc = json!({
        "format": "annals-proof/1",
        "row": {"table": table, "time": 1_700_000_000_000_000_001i64, "columns": [
            {"name": "truck", "kind": "tag", "value": "truck_1"},
            {"name": "odometer", "kind": "u64", "value": u64::MAX - 1},
            {"name": "fuel", "kind": "f64", "value": 0.1},
        ]},
        "row_hex": hex::encode(&rows[1]),
        "tx_id": hex::encode(tx_id(&branch, 1, 1, &leaves[1])),
        "block": {
            "header_hex": hex::encode(header.encode()),
            "index": 1,
            "path": hexes(inclusion_path(&mut LeafHashes(&leaves), 1, 3).unwrap()),
            "signature": keysig(&node, &header.hash()),
        },
        "branch": {"size": 2, "path": hexes(inclusion_path(&mut LeafHashes(&block_hashes), 1, 2).unwrap())},
        "checkpoint": {
            "header_hex": hex::encode(cp.encode()),
            "entry_hex": hex::encode(entries[0].encode()),
            "entry_index": 0,
            "path": hexes(inclusion_path(&mut LeafHashes(&entry_leaves), 0, 2).unwrap()),
            "signatures": validators.iter().map(|k| keysig(k, &cp.hash())).collect::<Vec<_>>(),
        },
    });
    (doc, validators)
}

#[test]
fn vector_proof_structure_only_and_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let proof = vector_proof();
    let path = write(dir.path(), "proof.json", &proof.to_string());
    let (code, out, err) = run(&[&path, "--structure-only"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("proof structure OK"), "{out}");
    assert!(out.contains("quorum NOT checked"), "{out}");
    assert!(out.contains(proof["tx_id"].as_str().unwrap()), "{out}");

    // Standard input, JSON output.
    let (code, out, _) = run(
        &["-", "--structure-only", "--json"],
        Some(&proof.to_string()),
    );
    assert_eq!(code, 0, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["valid"].clone(), r["final"].clone()),
        (json!(true), json!(false))
    );
    let cols = r["row"]["columns"].as_array().unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["fleet", "moving", "name", "note", "odometer", "status", "velocity"]
    );
    assert_eq!(cols[4]["value"], json!(u64::MAX));
    assert_eq!(cols[6]["value"], json!(12.5));

    // One hex digit of the row's transaction id changed.
    let mut bad = proof.clone();
    let tx = bad["tx_id"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", &tx[..63], if tx.ends_with('0') { '1' } else { '0' });
    bad["tx_id"] = json!(flipped);
    let path = write(dir.path(), "bad.json", &bad.to_string());
    let (code, out, _) = run(&[&path, "--structure-only"], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("verification failed at step tx_id: "),
        "{out}"
    );
    let (code, out, _) = run(&[&path, "--structure-only", "--json"], None);
    assert_eq!(code, 1);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["valid"].clone(), r["step"].clone()),
        (json!(false), json!("tx_id"))
    );

    // A change to the row itself is caught where the row is re-encoded.
    let mut bad = proof.clone();
    bad["row"]["time"] = json!(1_700_000_000_034_000_001i64);
    let path = write(dir.path(), "bad2.json", &bad.to_string());
    let (code, out, _) = run(&[&path, "--structure-only"], None);
    assert_eq!(code, 1);
    assert!(out.contains("at step row_encoding"), "{out}");
}

#[test]
fn signed_proof_with_right_and_wrong_trust() {
    let dir = tempfile::tempdir().unwrap();
    let (doc, validators) = signed_proof();
    let proof = write(dir.path(), "proof.json", &doc.to_string());
    let keys: Vec<String> = validators
        .iter()
        .map(|k| hex::encode(k.verifying_key().to_bytes()))
        .collect();

    let json_trust = json!({"validators": keys.iter().map(|k| json!({"key": k, "power": 1})).collect::<Vec<_>>()});
    let json_trust = write(dir.path(), "trust.json", &json_trust.to_string());
    let (code, out, err) = run(&[&proof, "--trust", &json_trust], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("proof OK: the row is in checkpoint 3 signed by a quorum"),
        "{out}"
    );
    assert!(
        out.contains("quorum       3 trusted validators, power 3 of 3"),
        "{out}"
    );
    for k in &keys {
        assert!(out.contains(k), "{out}");
    }

    let text_trust = format!(
        "# the three validators\n{}\n{}  # second\n\n{}\n",
        keys[2], keys[0], keys[1]
    );
    let text_trust = write(dir.path(), "trust.txt", &text_trust);
    let (code, out, _) = run(&[&proof, "--trust", &text_trust, "--json"], None);
    assert_eq!(code, 0, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["final"], json!(true));
    assert_eq!(r["quorum"]["signed_power"], json!(3));
    assert_eq!(r["checkpoint"]["epoch"], json!(3));
    assert_eq!(r["tx_id"], doc["tx_id"]);

    // Another set: two of the three keys, or one key replaced.
    let two = write(
        dir.path(),
        "two.txt",
        &format!("{}\n{}\n", keys[0], keys[1]),
    );
    let stranger = hex::encode(
        SigningKey::from_bytes(&[0x55; 32])
            .verifying_key()
            .to_bytes(),
    );
    let other = write(
        dir.path(),
        "other.txt",
        &format!("{}\n{}\n{stranger}\n", keys[0], keys[1]),
    );
    for t in [&two, &other] {
        let (code, out, _) = run(&[&proof, "--trust", t], None);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.starts_with("verification failed at step validators: "),
            "{out}"
        );
    }

    // The right set, but only two of three signatures: exactly 2/3 is not final.
    let mut short = doc.clone();
    short["checkpoint"]["signatures"]
        .as_array_mut()
        .unwrap()
        .pop();
    let short = write(dir.path(), "short.json", &short.to_string());
    let (code, out, _) = run(&[&short, "--trust", &json_trust], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("verification failed at step quorum: "),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let proof = write(dir.path(), "proof.json", &vector_proof().to_string());
    // Neither a trust file nor an explicit --structure-only.
    let (code, _, err) = run(&[&proof], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--trust"), "{err}");
    let bad_trust = write(dir.path(), "bad.txt", "not a key\n");
    let (code, _, err) = run(&[&proof, "--trust", &bad_trust], None);
    assert_eq!(code, 2);
    assert!(err.contains("line 1"), "{err}");
    let (code, _, err) = run(&[&proof, "--trust", "/nonexistent/keys"], None);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    let (code, _, err) = run(&["/nonexistent/proof.json", "--structure-only"], None);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    // The help documents the trust file.
    let out = Command::new(BIN)
        .args(["verify", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("{\"validators\": [{\"key\""), "{help}");
    assert!(help.contains("one Ed25519 public key"), "{help}");
}

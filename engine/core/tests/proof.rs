//! Proofs of rows (`annals-proof/1`): built by the engine for rows in finished block files and
//! in sealed blocks still in memory, and checked here step by step with `annals-format` code
//! and the test's own row encodings, as a third-party verifier would.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use annals_engine::proof::{self, LocationHint, Proof, ProofError, RowLocation};
use annals_engine::Engine;
use annals_format::block::{tx_id, BlockHeader};
use annals_format::checkpoint::{BranchEntry, CheckpointHeader};
use annals_format::hash::{hash_from_hex, leaf_hash, to_hex, Hash};
use annals_format::merkle::{verify_consistency, verify_inclusion};
use annals_format::row::{encode_row, ColumnRef, Kind, ValueRef};
use common::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn points(rng: &mut StdRng, n: usize, seq: &mut i64) -> Vec<Point> {
    (0..n)
        .map(|_| {
            *seq += 1;
            let p = match rng.gen_range(0..3) {
                0 => Point::new("temp")
                    .tag("host", &format!("h{}", rng.gen_range(0..5)))
                    .field("celsius", Val::F64(rng.gen_range(-40.0..60.0)))
                    .field("raw", Val::I64(rng.gen_range(-1000..1000))),
                1 => Point::new("power")
                    .tag("feed", &format!("f{}", rng.gen_range(0..4)))
                    .field("watts", Val::U64(rng.gen()))
                    .field("ok", Val::Bool(rng.gen())),
                _ => Point::new("door")
                    .tag("room", if rng.gen() { "a b" } else { "c" })
                    .field("note", Val::Str(format!("n\"{}\"", rng.gen_range(0..9))))
                    .field(
                        "tiny",
                        Val::F64([5e-324, -0.0, 0.1, 1e300, f64::MAX][rng.gen_range(0..5)]),
                    ),
            };
            p.at(1_700_000_000_000_000_000 + *seq * 1_000)
        })
        .collect()
}

fn hex32(v: &Value) -> Hash {
    hash_from_hex(v.as_str().expect("hex string")).expect("32 bytes of hex")
}

fn path(v: &Value) -> Vec<Hash> {
    v.as_array().expect("path list").iter().map(hex32).collect()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

/// Encodes a proof's `row` object independently of the engine.
fn encode_json_row(row: &Value) -> Vec<u8> {
    let cols: Vec<(String, Kind, Value)> = row["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                Kind::from_name(c["kind"].as_str().unwrap()).expect("known kind"),
                c["value"].clone(),
            )
        })
        .collect();
    let mut refs: Vec<ColumnRef<'_>> = cols
        .iter()
        .map(|(name, kind, v)| ColumnRef {
            name,
            value: match kind {
                Kind::Tag => ValueRef::Tag(v.as_str().unwrap()),
                Kind::Str => ValueRef::Str(v.as_str().unwrap()),
                Kind::F64 => ValueRef::F64(v.as_f64().unwrap()),
                Kind::I64 => ValueRef::I64(v.as_i64().unwrap()),
                Kind::U64 => ValueRef::U64(v.as_u64().unwrap()),
                Kind::Bool => ValueRef::Bool(v.as_bool().unwrap()),
            },
        })
        .collect();
    refs.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut out = Vec::new();
    encode_row(
        &mut out,
        row["table"].as_str().unwrap(),
        row["time"].as_i64().unwrap(),
        &refs,
    )
    .unwrap();
    out
}

/// FORMAT.md's verifier, step by step, on the JSON text of a proof; `expected` is the
/// encoding the test wrote and `entry` its receipt.
fn verify_document(text: &str, expected: &[u8], entry: &Entry, node_key: &[u8; 32]) {
    let d: Value = serde_json::from_str(text).expect("proof is JSON");
    assert_eq!(d["format"], "annals-proof/1");
    let row_hex = bytes(&d["row_hex"]);
    assert_eq!(
        encode_json_row(&d["row"]),
        row_hex,
        "row encodes to row_hex"
    );
    assert_eq!(row_hex, expected, "row_hex is the row the test wrote");
    let header = BlockHeader::decode(&bytes(&d["block"]["header_hex"])).expect("header decodes");
    let index = d["block"]["index"].as_u64().unwrap();
    let leaf = leaf_hash(&row_hex);
    assert!(
        verify_inclusion(
            &leaf,
            index,
            header.row_count.into(),
            &path(&d["block"]["path"]),
            &header.rows_root
        ),
        "row inclusion under rows_root"
    );
    let tx = tx_id(&header.branch, header.height, index as u32, &leaf);
    assert_eq!(to_hex(&tx), d["tx_id"].as_str().unwrap(), "tx_id");
    assert_eq!(to_hex(&tx), entry.tx_id, "tx_id is the receipt's");
    assert_eq!(
        (to_hex(&header.branch), header.height, index as u32),
        (entry.branch.clone(), entry.height, entry.index),
        "position is the receipt's"
    );
    let sig = &d["block"]["signature"];
    assert_eq!(hex32(&sig["key"]), *node_key);
    let block_sig: [u8; 64] = bytes(&sig["sig"]).try_into().unwrap();
    annals_format::sign::verify(node_key, &header.hash(), &block_sig).expect("block signature");
    let e = BranchEntry::decode(&bytes(&d["checkpoint"]["entry_hex"])).expect("entry decodes");
    assert_eq!(e.branch, header.branch, "entry names the block's branch");
    let size = d["branch"]["size"].as_u64().unwrap();
    assert_eq!(size, e.size);
    assert!(
        verify_inclusion(
            &leaf_hash(&header.hash()),
            header.height,
            size,
            &path(&d["branch"]["path"]),
            &e.root
        ),
        "block inclusion in the branch log"
    );
    let cp = CheckpointHeader::decode(&bytes(&d["checkpoint"]["header_hex"]))
        .expect("checkpoint decodes");
    assert!(
        verify_inclusion(
            &leaf_hash(&e.encode()),
            d["checkpoint"]["entry_index"].as_u64().unwrap(),
            cp.branch_count.into(),
            &path(&d["checkpoint"]["path"]),
            &cp.branches_root
        ),
        "entry inclusion under branches_root"
    );
    let sigs = d["checkpoint"]["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(hex32(&sigs[0]["key"]), *node_key);
    let cp_sig: [u8; 64] = bytes(&sigs[0]["sig"]).try_into().unwrap();
    annals_format::sign::verify(node_key, &cp.hash(), &cp_sig).expect("checkpoint signature");
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The field set FORMAT.md gives, exactly (no more, no less).
fn assert_format_fields(d: &Value) {
    assert_eq!(
        keys(d),
        set(&[
            "format",
            "row",
            "row_hex",
            "tx_id",
            "block",
            "branch",
            "checkpoint"
        ])
    );
    assert_eq!(keys(&d["row"]), set(&["table", "time", "columns"]));
    for c in d["row"]["columns"].as_array().unwrap() {
        assert_eq!(keys(c), set(&["name", "kind", "value"]));
        assert!(
            ["tag", "f64", "i64", "u64", "bool", "string"].contains(&c["kind"].as_str().unwrap())
        );
    }
    assert_eq!(
        keys(&d["block"]),
        set(&["header_hex", "index", "path", "signature"])
    );
    assert_eq!(keys(&d["block"]["signature"]), set(&["key", "sig"]));
    assert_eq!(keys(&d["branch"]), set(&["size", "path"]));
    assert_eq!(
        keys(&d["checkpoint"]),
        set(&[
            "header_hex",
            "entry_hex",
            "entry_index",
            "path",
            "signatures"
        ])
    );
    // Hex is lowercase.
    for h in [
        &d["row_hex"],
        &d["tx_id"],
        &d["block"]["header_hex"],
        &d["checkpoint"]["header_hex"],
    ] {
        let s = h.as_str().unwrap();
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{s}"
        );
    }
}

fn branch_of(e: &Entry) -> [u8; 16] {
    let mut b = [0u8; 16];
    hex::decode_to_slice(&e.branch, &mut b).unwrap();
    b
}

fn hint(e: &Entry) -> LocationHint {
    LocationHint {
        branch: Some(branch_of(e)),
        height: Some(e.height),
        index: Some(e.index),
    }
}

/// Waits until the latest checkpoint covers every sealed block (the checkpointer runs on its
/// interval).
fn wait_checkpoint_covers_heads(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let heads = engine.branch_heads();
        if let Some(cp) = engine.latest_checkpoint() {
            let covered = heads.iter().all(|(b, h)| {
                cp.entries
                    .iter()
                    .any(|e| e.branch == *b && e.size == h.size)
            });
            if covered {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covered the sealed blocks within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn proofs_of_rows_in_files_and_in_sealed_memory_blocks_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 3, 7);
    cfg.checkpoint_interval = Duration::from_millis(30);
    let engine = open(cfg);
    let node_key = engine.public_key();
    let mut rng = StdRng::seed_from_u64(7);
    let mut seq = 0;
    let mut written: Vec<(Point, Entry)> = Vec::new();

    // Phase 1: rows that end up in finished block files.
    for _ in 0..6 {
        let pts = points(&mut rng, 40, &mut seq);
        let es = write(&engine, &pts);
        written.extend(pts.into_iter().zip(es));
    }
    engine.flush().expect("a checkpoint");
    // Phase 2: full blocks are sealed (7 rows) but their files (21 rows) stay open; the rest
    // of each branch's rows stay in open blocks.
    for _ in 0..4 {
        let pts = points(&mut rng, 25, &mut seq);
        let es = write(&engine, &pts);
        written.extend(pts.into_iter().zip(es));
    }
    // Sealing is asynchronous: wait until every full block is in its branch log.
    let full: HashMap<String, u64> = written.iter().fold(HashMap::new(), |mut m, (_, e)| {
        let n = m.entry(e.branch.clone()).or_default();
        *n = (*n).max(e.height + u64::from(e.index == 6));
        m
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !full.iter().all(|(b, n)| {
        engine
            .branch_heads()
            .get(&branch_of(
                &written.iter().find(|(_, e)| &e.branch == b).unwrap().1,
            ))
            .is_some_and(|h| h.size >= *n)
    }) {
        assert!(
            Instant::now() < deadline,
            "full blocks were not sealed within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_checkpoint_covers_heads(&engine);

    // Classify every written row by where its block is now.
    let snap = engine.snapshot();
    let in_file: BTreeSet<([u8; 16], u64)> = snap
        .files()
        .flat_map(|f| f.blocks.iter().map(move |b| (f.branch, b.header.height)))
        .collect();
    let mem_sealed: BTreeSet<([u8; 16], u64)> = snap
        .mem_blocks()
        .filter(|m| m.sealed().is_some())
        .map(|m| (m.branch, m.height))
        .collect();
    let open: BTreeSet<([u8; 16], u64)> = snap
        .mem_blocks()
        .filter(|m| m.sealed().is_none())
        .map(|m| (m.branch, m.height))
        .collect();
    assert!(
        !mem_sealed.is_empty(),
        "the test needs sealed blocks still in memory"
    );
    assert!(!open.is_empty(), "the test needs open blocks");

    let (mut from_files, mut from_mem, mut pending) = (0, 0, 0);
    let mut order: Vec<usize> = (0..written.len()).collect();
    order.shuffle(&mut rng);
    for &i in &order {
        let (p, e) = &written[i];
        let key = (branch_of(e), e.height);
        let id = hash_from_hex(&e.tx_id).unwrap();
        // Half with the receipt's position, half found from the tx_id alone.
        let h = if i % 2 == 0 {
            hint(e)
        } else {
            LocationHint::default()
        };
        match proof::prove_tx(&engine, &id, &h) {
            Ok(pr) => {
                assert!(!open.contains(&key), "a proof for a row of an open block");
                if in_file.contains(&key) {
                    from_files += 1;
                } else {
                    assert!(mem_sealed.contains(&key));
                    from_mem += 1;
                }
                let text = serde_json::to_string(&pr.to_json()).unwrap();
                verify_document(&text, &p.encoding(), e, &node_key);
                // The document reads back to the same proof, and the engine's own check agrees.
                let back = Proof::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
                assert_eq!(back, pr);
                back.verify(&[node_key]).unwrap();
            }
            Err(ProofError::NotSealed(msg)) => {
                assert!(
                    open.contains(&key),
                    "row of a sealed block called open: {msg}"
                );
                assert!(msg.contains("still open"), "{msg}");
                pending += 1;
            }
            Err(other) => panic!("row {} of {}: {other}", e.index, e.table),
        }
    }
    assert!(
        from_files > 100 && from_mem > 10 && pending > 0,
        "{from_files} {from_mem} {pending}"
    );

    // A tx_id that is nowhere, and a receipt position with another row's tx_id.
    let nowhere = [0x5a; 32];
    assert!(matches!(
        proof::prove_tx(&engine, &nowhere, &LocationHint::default()),
        Err(ProofError::NotFound(_))
    ));
    let (a, b) = (&written[0].1, &written[1].1);
    match proof::prove_tx(&engine, &hash_from_hex(&b.tx_id).unwrap(), &hint(a)) {
        Err(ProofError::NotFound(m)) => assert!(m.contains("does not have tx_id"), "{m}"),
        other => panic!("a mismatched position must be refused: {other:?}"),
    }
    let bad_index = LocationHint {
        index: Some(10_000),
        ..hint(a)
    };
    assert!(matches!(
        proof::prove_tx(&engine, &hash_from_hex(&a.tx_id).unwrap(), &bad_index),
        Err(ProofError::NotFound(_))
    ));
    let no_block = RowLocation {
        branch: branch_of(a),
        height: 999,
        index: 0,
    };
    assert!(matches!(
        proof::build(&engine, &no_block),
        Err(ProofError::NotFound(_))
    ));

    // After a flush every row is provable.
    engine.flush().expect("a checkpoint");
    for (p, e) in written.iter().step_by(3) {
        let pr = proof::prove_tx(&engine, &hash_from_hex(&e.tx_id).unwrap(), &hint(e))
            .expect("provable after flush");
        verify_document(
            &serde_json::to_string(&pr.to_json()).unwrap(),
            &p.encoding(),
            e,
            &node_key,
        );
    }
}

#[test]
fn rows_of_sealed_blocks_wait_for_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 1, 4));
    let mut seq = 0;
    let pts = points(&mut StdRng::seed_from_u64(1), 4, &mut seq);
    // One table only, so the 4 rows fill one block exactly.
    let pts: Vec<Point> = pts
        .into_iter()
        .map(|mut p| {
            p.measurement = "temp".into();
            p.tags = vec![("host".into(), "h".into())];
            p.fields = vec![("celsius".into(), Val::F64(1.5))];
            p
        })
        .collect();
    let es = write(&engine, &pts);
    let id = hash_from_hex(&es[2].tx_id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.branch_heads().values().all(|h| h.size == 0) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // Sealed, but the checkpoint interval (an hour) has not passed.
    match proof::prove_tx(&engine, &id, &LocationHint::default()) {
        Err(e @ ProofError::NotCheckpointed(_)) => {
            assert_eq!(e.reason(), "not_checkpointed");
            assert!(e.is_pending());
        }
        other => panic!("expected not_checkpointed, got {other:?}"),
    }
    engine.flush();
    let pr = proof::prove_tx(&engine, &id, &LocationHint::default()).unwrap();
    verify_document(
        &serde_json::to_string(&pr.to_json()).unwrap(),
        &pts[2].encoding(),
        &es[2],
        &engine.public_key(),
    );
}

#[test]
fn document_shape_matches_format_md_and_the_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 2, 5));
    let mut seq = 0;
    let pts = points(&mut StdRng::seed_from_u64(3), 30, &mut seq);
    let es = write(&engine, &pts);
    engine.flush();
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/../../../shared/vectors/format-v1.json",
            package_dir()
        ))
        .or_else(|_| {
            std::fs::read_to_string(format!(
                "{}/vectors/format-v1.json",
                std::env::var("ANNALS_SHARED_DIR").unwrap_or_default()
            ))
        })
        .expect("shared/vectors/format-v1.json"),
    )
    .unwrap();
    let vector = &vectors["proof"];
    // The vector's row (columns unsorted) encodes to its row_hex with the engine's reader too.
    assert_eq!(
        proof::encode_row_json(&vector["row"]).unwrap(),
        bytes(&vector["row_hex"])
    );
    for (p, e) in pts.iter().zip(&es) {
        let pr = proof::prove_tx(&engine, &hash_from_hex(&e.tx_id).unwrap(), &hint(e)).unwrap();
        let d = pr.to_json();
        assert_format_fields(&d);
        // Every field of the vector's document is there, with the same JSON type.
        fn same_shape(a: &Value, b: &Value, at: &str) {
            match (a, b) {
                (Value::Object(x), Value::Object(y)) => {
                    for (k, v) in y {
                        let w = x.get(k).unwrap_or_else(|| panic!("{at}.{k} missing"));
                        same_shape(w, v, &format!("{at}.{k}"));
                    }
                }
                (Value::Array(_), Value::Array(_)) => {}
                (x, y) => assert_eq!(
                    std::mem::discriminant(x),
                    std::mem::discriminant(y),
                    "{at}: {x} vs {y}"
                ),
            }
        }
        same_shape(&d, vector, "proof");
        // Row values keep their JSON kinds: integers stay integers, floats round-trip.
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(
            encode_json_row(&serde_json::from_str::<Value>(&text).unwrap()["row"]),
            p.encoding()
        );
        for c in d["row"]["columns"].as_array().unwrap() {
            match c["kind"].as_str().unwrap() {
                "i64" => assert!(c["value"].is_i64()),
                "u64" => assert!(c["value"].is_u64()),
                "f64" => assert!(c["value"].is_number()),
                "bool" => assert!(c["value"].is_boolean()),
                _ => assert!(c["value"].is_string()),
            }
        }
    }
    // A changed value or path is caught, and the failing step is named.
    let e = &es[0];
    let pr = proof::prove_tx(&engine, &hash_from_hex(&e.tx_id).unwrap(), &hint(e)).unwrap();
    let mut d = pr.to_json();
    d["row"]["time"] = Value::from(d["row"]["time"].as_i64().unwrap() + 1);
    assert!(Proof::from_json(&d).unwrap_err().contains("row_hex"));
    let mut bad = pr.clone();
    bad.block_path[0][0] ^= 1;
    assert!(bad
        .verify(&[engine.public_key()])
        .unwrap_err()
        .contains("rows_root"));
    let mut bad = pr.clone();
    bad.branch_size += 1;
    assert!(bad.verify(&[engine.public_key()]).is_err());
    assert!(pr.verify(&[[9; 32]]).unwrap_err().contains("trusted"));
}

#[test]
fn consistency_paths_between_checkpoints_verify() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 2, 3));
    let mut seq = 0;
    let mut rng = StdRng::seed_from_u64(11);
    let mut epochs = Vec::new();
    for round in 0..5 {
        write(&engine, &points(&mut rng, 10 + round * 7, &mut seq));
        epochs.push(engine.flush().expect("checkpoint"));
    }
    let cps = engine.checkpoints();
    assert_eq!(engine.checkpoint_count(), cps.len() as u64);
    assert_eq!(
        engine
            .checkpoints_from(2, 2)
            .iter()
            .map(|c| c.header.epoch)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    for (i, a) in cps.iter().enumerate() {
        for b in &cps[i..] {
            for ea in &a.entries {
                let eb = b
                    .entries
                    .iter()
                    .find(|e| e.branch == ea.branch)
                    .expect("branches never disappear");
                let c = proof::consistency(&engine, &ea.branch, ea.size, eb.size).unwrap();
                assert_eq!((c.from_root, c.to_root), (ea.root, eb.root));
                assert!(verify_consistency(
                    ea.size, eb.size, &ea.root, &eb.root, &c.path
                ));
            }
        }
    }
    let (b, head) = engine.branch_heads().into_iter().next().unwrap();
    assert!(matches!(
        proof::consistency(&engine, &b, 2, 1),
        Err(ProofError::Invalid(_))
    ));
    assert!(matches!(
        proof::consistency(&engine, &b, 0, head.size + 1),
        Err(ProofError::Invalid(_))
    ));
    assert!(matches!(
        proof::consistency(&engine, &[0; 16], 0, 0),
        Err(ProofError::NotFound(_))
    ));
}

/// Blocks longer than a proof piece: a row's proof reads only its piece, and is the very
/// document the whole-block path builds, for rows of every piece including a short last one.
/// A stored piece root changed on disk is caught by the proof and by the audit.
#[test]
fn proofs_of_rows_of_large_blocks_read_one_piece() {
    use annals_engine::proof::BlockProofs;
    use annals_storage::block_file::PROOF_CHUNK_ROWS;

    let dir = tempfile::tempdir().unwrap();
    let block_rows = 3 * PROOF_CHUNK_ROWS + 37;
    let mut cfg = config(dir.path(), 1, block_rows);
    cfg.file_rows = (block_rows * 2) as u64;
    let engine = open(cfg.clone());
    let pts: Vec<Point> = (0..block_rows * 2 + 100)
        .map(|i| {
            Point::new("temp")
                .tag("host", &format!("h{}", i % 7))
                .field("celsius", Val::F64(i as f64 / 8.0))
                .field("n", Val::I64(i as i64))
                .at(1_700_000_000_000_000_000 + i as i64)
        })
        .collect();
    let es = write(&engine, &pts);
    engine.flush().expect("a checkpoint");
    let snap = engine.snapshot();
    let in_files: BTreeSet<([u8; 16], u64)> = snap
        .files()
        .flat_map(|f| f.blocks.iter().map(move |b| (f.branch, b.header.height)))
        .collect();
    assert!(in_files.len() >= 2, "the test needs finished files");
    assert!(snap
        .files()
        .all(|f| f.blocks.iter().all(
            |b| b.chunk_roots.len() == (b.header.row_count as usize).div_ceil(PROOF_CHUNK_ROWS)
        )));
    let cp = engine.latest_checkpoint().map(std::sync::Arc::new);
    let mut checked = 0;
    for (p, e) in pts.iter().zip(&es) {
        let key = (branch_of(e), e.height);
        if !in_files.contains(&key) || (e.index % 23 != 0 && e.index as usize + 1 != block_rows) {
            continue;
        }
        let piece = BlockProofs::open_piece(&engine, &snap, cp.clone(), &key.0, key.1, e.index)
            .unwrap()
            .expect("a file block with piece roots");
        let whole = BlockProofs::open(&engine, &snap, cp.clone(), &key.0, key.1).unwrap();
        assert_eq!(piece.tx_id(e.index), whole.tx_id(e.index));
        let pr = piece.proof(e.index).unwrap();
        assert_eq!(pr, whole.proof(e.index).unwrap(), "row {}", e.index);
        verify_document(
            &serde_json::to_string(&pr.to_json()).unwrap(),
            &p.encoding(),
            e,
            &engine.public_key(),
        );
        // A row outside the piece read is not answered from it.
        let other = (e.index as usize + PROOF_CHUNK_ROWS) % block_rows;
        assert!(
            piece.proof(other as u32).is_err()
                || other / PROOF_CHUNK_ROWS == e.index as usize / PROOF_CHUNK_ROWS
        );
        checked += 1;
    }
    assert!(checked > 40, "{checked}");
    engine.shutdown();
    drop(engine);

    // Change one hex digit of a stored piece root (same length: the file still opens).
    let file = block_files(dir.path())
        .into_iter()
        .next()
        .expect("a block file");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(15)
        .position(|w| w == b"\"chunk_roots\":\"")
        .expect("piece roots in the footer")
        + 15
        + 70;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&file, &bytes).unwrap();
    let report = annals_engine::audit::audit(dir.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("piece roots")),
        "{report:?}"
    );
    let engine = open(cfg);
    let snap = engine.snapshot();
    let f = snap
        .files()
        .find(|f| f.path == file)
        .expect("the file is served");
    let b = &f.blocks[0];
    match proof::build(
        &engine,
        &RowLocation {
            branch: f.branch,
            height: b.header.height,
            index: 0,
        },
    ) {
        Err(ProofError::Corrupt(m)) => assert!(m.contains("rows_root"), "{m}"),
        other => panic!("a changed piece root must be refused: {other:?}"),
    }
}

/// The package's directory: the one `cargo test` names when it runs this binary (so a test
/// binary reused from another checkout's build reads this checkout's files), else the one it
/// was built in.
fn package_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

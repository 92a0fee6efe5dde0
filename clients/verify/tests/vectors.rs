//! The verifier reproduces `shared/vectors/format-v1.json` exactly, and its `proof` document
//! passes every structural step and fails at the right step under every single-bit change.

extern crate alloc;

mod support;

use annals_verify::*;
use support::doc_json::{arr, g, h, hashes, num, s, trow, J};
use support::tamper::{check_all, mutations, Expect};
use support::V;

fn vectors() -> J {
    let dir = std::env::var("ANNALS_SHARED_DIR")
        .unwrap_or_else(|_| format!("{}/../../../shared", package_dir()));
    let path = format!("{dir}/vectors/format-v1.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    support::doc_json::parse(&text).unwrap()
}

fn leaves(v: &J) -> Vec<Vec<u8>> {
    arr(v).iter().map(|x| support::unhex(s(x))).collect()
}

/// The crate's public `Row` for a vector row (columns sorted as FORMAT.md requires).
fn row(r: &J) -> Row {
    let t = trow(r);
    let mut columns: Vec<Column> = t
        .cols
        .iter()
        .map(|c| Column {
            name: c.name.clone(),
            value: match &c.v {
                V::Tag(s) => Value::Tag(s.clone()),
                V::Str(s) => Value::Str(s.clone()),
                V::F64(x) => Value::F64(*x),
                V::I64(x) => Value::I64(*x),
                V::U64(x) => Value::U64(*x),
                V::Bool(b) => Value::Bool(*b),
            },
        })
        .collect();
    columns.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Row {
        table: t.table,
        time: t.time,
        columns,
    }
}

#[test]
fn mth_vectors() {
    let v = vectors();
    for t in arr(g(&v, "mth")) {
        let l = leaves(g(t, "leaves_hex"));
        assert_eq!(mth(&l), h(g(t, "root")), "{} leaves", l.len());
    }
}

#[test]
fn inclusion_vectors() {
    let v = vectors();
    for t in arr(g(&v, "inclusion")) {
        let l = leaves(g(t, "leaves_hex"));
        let i: u64 = num(g(t, "index"));
        let p = hashes(g(t, "path"));
        let root = mth(&l);
        assert!(
            verify_inclusion(&leaf_hash(&l[i as usize]), i, l.len() as u64, &p, &root),
            "index {i}"
        );
        // The test-side path builder agrees with the published path.
        let lh: Vec<Hash> = l.iter().map(|d| leaf_hash(d)).collect();
        assert_eq!(support::path(&lh, i as usize), p);
        assert!(!verify_inclusion(
            &leaf_hash(&l[i as usize]),
            i,
            l.len() as u64,
            &p[1..],
            &root
        ));
    }
}

#[test]
fn consistency_vectors() {
    let v = vectors();
    for t in arr(g(&v, "consistency")) {
        let l = leaves(g(t, "leaves_hex"));
        let (m, n): (u64, u64) = (num(g(t, "size1")), num(g(t, "size2")));
        let p = hashes(g(t, "path"));
        let (r1, r2) = (mth(&l[..m as usize]), mth(&l[..n as usize]));
        assert!(verify_consistency(m, n, &r1, &r2, &p), "{m} -> {n}");
        assert!(!verify_consistency(m, n, &r2, &r1, &p));
        let lh: Vec<Hash> = l.iter().map(|d| leaf_hash(d)).collect();
        assert_eq!(support::consistency(&lh[..n as usize], m as usize), p);
    }
}

#[test]
fn row_vectors() {
    let v = vectors();
    for t in arr(g(&v, "rows")) {
        let enc = row(g(t, "row")).encode().unwrap();
        assert_eq!(support::hex(&enc), s(g(t, "encoding")));
        assert_eq!(leaf_hash(&enc), h(g(t, "leaf_hash")));
        assert_eq!(support::encode_row(&trow(g(t, "row"))), enc);
    }
}

#[test]
fn block_vector() {
    let v = vectors();
    let b = g(&v, "block");
    let f = g(b, "fields");
    let bytes = support::unhex(s(g(b, "header_hex")));
    let hd = BlockHeader::decode(&bytes).unwrap();
    assert_eq!(hd.table, s(g(f, "table")).as_bytes());
    assert_eq!(support::hex(&hd.branch), s(g(f, "branch")));
    assert_eq!(hd.height, num::<u64>(g(f, "height")));
    assert_eq!(hd.prev, h(g(f, "prev")));
    assert_eq!(hd.rows_root, h(g(f, "rows_root")));
    assert_eq!(hd.row_count, num::<u32>(g(f, "row_count")));
    assert_eq!(hd.time_min, num::<i64>(g(f, "time_min")));
    assert_eq!(hd.time_max, num::<i64>(g(f, "time_max")));
    assert_eq!(hd.context, h(g(f, "context")));
    assert_eq!(hd.sealed_at, num::<i64>(g(f, "sealed_at")));
    assert_eq!(block_hash(&bytes), h(g(b, "block_hash")));
    // rows: "the first row of 'rows', twice".
    let row0 = support::unhex(s(g(&arr(g(&v, "rows"))[0], "encoding")));
    assert_eq!(mth(&[&row0, &row0]), hd.rows_root);
    assert_eq!(
        tx_id(&hd.branch, hd.height, 1, &leaf_hash(&row0)),
        h(g(b, "tx_id_of_index_1"))
    );
}

#[test]
fn checkpoint_vector() {
    let v = vectors();
    let c = g(&v, "checkpoint");
    let bytes = support::unhex(s(g(c, "header_hex")));
    assert_eq!(checkpoint_hash(&bytes), h(g(c, "checkpoint_hash")));
    let cp = CheckpointHeader::decode(&bytes).unwrap();
    let entries = leaves(g(c, "entries_hex"));
    assert_eq!(cp.branches_root, mth(&entries));
    assert_eq!(cp.branch_count as usize, entries.len());
    assert_eq!((cp.epoch, cp.prev, cp.validators), (0, [0; 32], [0; 32]));
    let e = BranchEntry::decode(&entries[0]).unwrap();
    let block_hash = h(g(g(&v, "block"), "block_hash"));
    // The block's branch log holds one leaf, the block hash: its root is H(0x00 || block_hash).
    assert_eq!((e.size, e.root), (1, mth(&[block_hash])));
    assert_eq!(e.root, leaf_hash(&block_hash));
    // With no signatures it is never final under a real trust set.
    let t = Trust::validators([Validator {
        key: support::key_of(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])),
        power: 1,
    }])
    .unwrap();
    assert_eq!(
        verify_checkpoint(&bytes, &[], &t).unwrap_err().step(),
        Step::Validators
    );
    let info = verify_checkpoint(&bytes, &[], &Trust::structure_only()).unwrap();
    assert_eq!(
        (info.hash, info.branch_count, info.quorum),
        (h(g(c, "checkpoint_hash")), 1, None)
    );
}

#[test]
fn proof_vector_verifies_structurally() {
    let v = vectors();
    let p = g(&v, "proof");
    let doc = support::doc_json::doc(p);
    // Our writer reproduces the document field for field.
    assert_eq!(
        support::doc_json::parse(doc.to_json().as_bytes()).unwrap(),
        *p
    );
    let ok = verify_proof(doc.to_json().as_bytes(), &Trust::structure_only()).unwrap();
    assert_eq!(ok.row, row(g(&arr(g(&v, "rows"))[0], "row")));
    assert_eq!(ok.tx_id, h(g(p, "tx_id")));
    assert_eq!(ok.tx_id, h(g(g(&v, "block"), "tx_id_of_index_1")));
    assert_eq!(ok.block_hash, h(g(g(&v, "block"), "block_hash")));
    assert_eq!((ok.height, ok.index, ok.branch_size), (0, 1, 1));
    assert_eq!(
        ok.checkpoint.hash,
        h(g(g(&v, "checkpoint"), "checkpoint_hash"))
    );
    assert_eq!(
        (ok.block_signer, ok.attestation.clone(), ok.is_final()),
        (None, None, false)
    );
    // Pretty-printed with other whitespace, it is the same document.
    let pretty = doc.to_json().replace(',', ",\n  ").replace(':', " : ");
    assert_eq!(
        verify_proof(pretty.as_bytes(), &Trust::structure_only()).unwrap(),
        ok
    );
    // It has no block signature and no checkpoint signatures: trusted verification refuses it.
    let t = Trust::validators([Validator {
        key: support::key_of(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])),
        power: 1,
    }])
    .unwrap();
    assert_eq!(
        verify_proof(doc.to_json().as_bytes(), &t)
            .unwrap_err()
            .step(),
        Step::BlockSignature
    );
}

#[test]
fn proof_vector_binary_form() {
    let v = vectors();
    let doc = support::doc_json::doc(g(&v, "proof"));
    let path = format!("{}/../../docs/vectors/proof-bin-v1.json", package_dir());
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let pinned = support::doc_json::parse(&text).unwrap();
    let bytes = support::unhex(s(g(&pinned, "binary_hex")));
    // The test model, written from docs/PROOF-BINARY.md, writes exactly the pinned bytes.
    assert_eq!(doc.to_binary().unwrap(), bytes);
    assert_eq!(bytes.len(), num::<usize>(g(&pinned, "binary_bytes")));
    assert!(bytes.starts_with(&PROOF_BIN_MAGIC));
    // Both forms prove the same thing.
    let t = Trust::structure_only();
    assert_eq!(
        verify_proof(&bytes, &t).unwrap(),
        verify_proof(doc.to_json().as_bytes(), &t).unwrap()
    );
    // Every prefix and every extra byte is refused at `parse`.
    for end in 0..bytes.len() {
        let e = verify_proof(&bytes[..end], &t).unwrap_err();
        assert_eq!(e.step(), Step::Parse, "prefix of {end} bytes: {e}");
    }
    let mut long = bytes.clone();
    long.push(0);
    let e = verify_proof(&long, &t).unwrap_err();
    assert!(e.detail().contains("1 bytes after"), "{e}");
    // Another version of the binary form is refused by name.
    let mut v2 = bytes.clone();
    v2[4] = 2;
    let e = verify_proof(&v2, &t).unwrap_err();
    assert_eq!(e.step(), Step::Parse);
    assert!(e.detail().contains("annals-proof-bin/1"), "{e}");
    // A row_hex that does not decode as a row fails at row_encoding, naming the field.
    let mut bad = doc.clone();
    bad.row_hex[0] = 2;
    let e = verify_proof(&bad.to_binary().unwrap(), &t).unwrap_err();
    assert_eq!(e.step(), Step::RowEncoding, "{e}");
    assert!(e.detail().contains("version 2"), "{e}");
}

#[test]
fn proof_vector_every_bit_change() {
    let v = vectors();
    let doc = support::doc_json::doc(g(&v, "proof"));
    let n = check_all(&doc, &Trust::structure_only());
    assert!(n > 5000, "{n} mutations");
    // Structure-only mode cannot tell a re-signed checkpoint: exactly the checkpoint's epoch,
    // prev, time and validators bits pass (8 + 32 + 8 + 32 bytes), nothing else.
    let mut passing: Vec<String> = Vec::new();
    mutations(&doc, false, &mut |label, _, expect| {
        if expect == Expect::Pass {
            passing.push(label)
        }
    });
    assert_eq!(passing.len(), (8 + 32 + 8 + 32) * 8, "{passing:?}");
    assert!(passing
        .iter()
        .all(|l| l.starts_with("checkpoint.header_hex")));
}

#[test]
fn proof_vector_every_truncation_and_junk() {
    let v = vectors();
    let text = support::doc_json::doc(g(&v, "proof")).to_json();
    for end in 0..text.len() {
        let e = verify_proof(&text.as_bytes()[..end], &Trust::structure_only()).unwrap_err();
        assert_eq!(e.step(), Step::Parse, "prefix of {end} bytes: {e}");
    }
    for extra in [",", "x", "{}", "\"\""] {
        let t = format!("{text}{extra}");
        assert_eq!(
            verify_proof(t.as_bytes(), &Trust::structure_only())
                .unwrap_err()
                .step(),
            Step::Parse
        );
    }
    // An unknown field, a duplicate field, uppercase hex: refused, not ignored.
    for bad in [
        text.replacen("{\"format\"", "{\"extra\":1,\"format\"", 1),
        text.replacen("\"format\"", "\"tx_id\":\"00\",\"format\"", 1),
        text.replacen(
            &support::hex(&support::doc_json::doc(g(&v, "proof")).tx_id),
            &support::hex(&support::doc_json::doc(g(&v, "proof")).tx_id).to_uppercase(),
            1,
        ),
    ] {
        let e = verify_proof(bad.as_bytes(), &Trust::structure_only()).unwrap_err();
        assert_eq!(e.step(), Step::Parse, "{e}");
    }
}

/// The package's directory: the one `cargo test` names when it runs this binary (so a test
/// binary reused from another checkout's build reads this checkout's files), else the one it
/// was built in.
fn package_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

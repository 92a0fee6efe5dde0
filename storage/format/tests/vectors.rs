//! Reproduces `shared/vectors/format-v1.json` byte for byte.

use annals_format::block::{block_hash_of_encoding, tx_id, BlockHeader};
use annals_format::checkpoint::{branches_root, BranchEntry, CheckpointHeader};
use annals_format::hash::{hash_from_hex, leaf_hash, to_hex, Hash};
use annals_format::merkle::{
    consistency_path, inclusion_path, root_of_data, verify_consistency, verify_inclusion,
    LeafHashes,
};
use annals_format::row::{decode_row, encode_row, ColumnRef, Kind, ValueRef};
use serde_json::Value;

fn vectors() -> Value {
    let dir = std::env::var("ANNALS_SHARED_DIR")
        .unwrap_or_else(|_| format!("{}/../../../shared", package_dir()));
    let path = format!("{dir}/vectors/format-v1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn h(v: &Value) -> Hash {
    hash_from_hex(v.as_str().unwrap()).unwrap()
}

fn leaves(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| hex::decode(x.as_str().unwrap()).unwrap())
        .collect()
}

fn leaf_hashes(v: &Value) -> Vec<Hash> {
    leaves(v).iter().map(|d| leaf_hash(d)).collect()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(h).collect()
}

/// Encodes a vector row (columns in arbitrary order in the JSON, sorted here).
fn encode_json_row(row: &Value) -> Vec<u8> {
    let strings: Vec<(String, Kind, Value)> = row["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                Kind::from_name(c["kind"].as_str().unwrap()).unwrap(),
                c["value"].clone(),
            )
        })
        .collect();
    let mut cols: Vec<ColumnRef<'_>> = strings
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
    cols.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut out = Vec::new();
    encode_row(
        &mut out,
        row["table"].as_str().unwrap(),
        row["time"].as_i64().unwrap(),
        &cols,
    )
    .unwrap();
    out
}

#[test]
fn mth_vectors() {
    let v = vectors();
    for case in v["mth"].as_array().unwrap() {
        let d = leaves(&case["leaves_hex"]);
        assert_eq!(to_hex(&root_of_data(&d)), case["root"].as_str().unwrap());
    }
}

#[test]
fn inclusion_vectors() {
    let v = vectors();
    for case in v["inclusion"].as_array().unwrap() {
        let l = leaf_hashes(&case["leaves_hex"]);
        let idx = case["index"].as_u64().unwrap();
        let expect = hashes(&case["path"]);
        let got = inclusion_path(&mut LeafHashes(&l), idx, l.len() as u64).unwrap();
        assert_eq!(got, expect, "index {idx}");
        let root = annals_format::merkle::root_of(&l);
        assert!(verify_inclusion(
            &l[idx as usize],
            idx,
            l.len() as u64,
            &got,
            &root
        ));
    }
}

#[test]
fn consistency_vectors() {
    let v = vectors();
    for case in v["consistency"].as_array().unwrap() {
        let l = leaf_hashes(&case["leaves_hex"]);
        let (m, n) = (
            case["size1"].as_u64().unwrap(),
            case["size2"].as_u64().unwrap(),
        );
        let expect = hashes(&case["path"]);
        let got = consistency_path(&mut LeafHashes(&l[..n as usize]), m, n).unwrap();
        assert_eq!(got, expect, "{m} -> {n}");
        let r1 = annals_format::merkle::root_of(&l[..m as usize]);
        let r2 = annals_format::merkle::root_of(&l[..n as usize]);
        assert!(verify_consistency(m, n, &r1, &r2, &got));
    }
}

#[test]
fn row_vectors() {
    let v = vectors();
    for case in v["rows"].as_array().unwrap() {
        let enc = encode_json_row(&case["row"]);
        assert_eq!(hex::encode(&enc), case["encoding"].as_str().unwrap());
        assert_eq!(
            to_hex(&leaf_hash(&enc)),
            case["leaf_hash"].as_str().unwrap()
        );
        // And the decoder reads it back to the same encoding.
        let dec = decode_row(&enc).unwrap().to_owned_row();
        assert_eq!(dec.encode().unwrap(), enc);
    }
}

#[test]
fn block_vector() {
    let v = vectors();
    let b = &v["block"];
    let f = &b["fields"];
    let row = encode_json_row(&v["rows"][0]["row"]);
    let rows_root = root_of_data(&[row.clone(), row.clone()]);
    assert_eq!(to_hex(&rows_root), f["rows_root"].as_str().unwrap());
    let mut branch = [0u8; 16];
    hex::decode_to_slice(f["branch"].as_str().unwrap(), &mut branch).unwrap();
    let header = BlockHeader {
        table: f["table"].as_str().unwrap().into(),
        branch,
        height: f["height"].as_u64().unwrap(),
        prev: h(&f["prev"]),
        rows_root,
        row_count: f["row_count"].as_u64().unwrap() as u32,
        time_min: f["time_min"].as_i64().unwrap(),
        time_max: f["time_max"].as_i64().unwrap(),
        context: h(&f["context"]),
        sealed_at: f["sealed_at"].as_i64().unwrap(),
    };
    let enc = header.encode();
    assert_eq!(hex::encode(&enc), b["header_hex"].as_str().unwrap());
    assert_eq!(BlockHeader::decode(&enc).unwrap(), header);
    assert_eq!(to_hex(&header.hash()), b["block_hash"].as_str().unwrap());
    assert_eq!(block_hash_of_encoding(&enc), header.hash());
    let t = tx_id(&branch, 0, 1, &leaf_hash(&row));
    assert_eq!(to_hex(&t), b["tx_id_of_index_1"].as_str().unwrap());
}

#[test]
fn checkpoint_vector() {
    let v = vectors();
    let c = &v["checkpoint"];
    let entries: Vec<BranchEntry> = c["entries_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| BranchEntry::decode(&hex::decode(e.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    for (e, hx) in entries.iter().zip(c["entries_hex"].as_array().unwrap()) {
        assert_eq!(hex::encode(e.encode()), hx.as_str().unwrap());
    }
    // The entry names the block of the block vector: a branch log of size 1 has root H(0x00 || block_hash).
    assert_eq!(entries[0].size, 1);
    assert_eq!(entries[0].root, leaf_hash(&h(&v["block"]["block_hash"])));
    let header =
        CheckpointHeader::decode(&hex::decode(c["header_hex"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(header.branches_root, branches_root(&entries));
    assert_eq!(header.branch_count as usize, entries.len());
    assert_eq!(
        hex::encode(header.encode()),
        c["header_hex"].as_str().unwrap()
    );
    assert_eq!(
        to_hex(&header.hash()),
        c["checkpoint_hash"].as_str().unwrap()
    );
}

#[test]
fn proof_vector_verifies_step_by_step() {
    let v = vectors();
    let p = &v["proof"];
    let row = encode_json_row(&p["row"]);
    assert_eq!(hex::encode(&row), p["row_hex"].as_str().unwrap());
    let header =
        BlockHeader::decode(&hex::decode(p["block"]["header_hex"].as_str().unwrap()).unwrap())
            .unwrap();
    let index = p["block"]["index"].as_u64().unwrap();
    let lh = leaf_hash(&row);
    assert!(verify_inclusion(
        &lh,
        index,
        header.row_count as u64,
        &hashes(&p["block"]["path"]),
        &header.rows_root
    ));
    assert_eq!(
        to_hex(&tx_id(&header.branch, header.height, index as u32, &lh)),
        p["tx_id"].as_str().unwrap()
    );
    let entry =
        BranchEntry::decode(&hex::decode(p["checkpoint"]["entry_hex"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(entry.branch, header.branch);
    assert!(verify_inclusion(
        &leaf_hash(&header.hash()),
        header.height,
        p["branch"]["size"].as_u64().unwrap(),
        &hashes(&p["branch"]["path"]),
        &entry.root
    ));
    let cp = CheckpointHeader::decode(
        &hex::decode(p["checkpoint"]["header_hex"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert!(verify_inclusion(
        &leaf_hash(&entry.encode()),
        p["checkpoint"]["entry_index"].as_u64().unwrap(),
        cp.branch_count as u64,
        &hashes(&p["checkpoint"]["path"]),
        &cp.branches_root
    ));
}

/// The package's directory: the one `cargo test` names when it runs this binary (so a test
/// binary reused from another checkout's build reads this checkout's files), else the one it
/// was built in.
fn package_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

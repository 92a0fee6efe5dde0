//! The ledger-format work per row and per block, on TSBS `iot` rows:
//! - canonical row encoding (`encode_row`) and its BLAKE3 leaf hash (`leaf_hash`), rows/s;
//! - the Merkle root of a 16384-row block (`merkle::root_of`), leaves/s;
//! - `tx_id`, one inclusion path generated from in-memory leaf hashes and verified, and one
//!   Ed25519 signature of a block hash (what the sealer does per block).

mod common;

use std::hint::black_box;
use std::time::Duration;

use annals_format::hash::{leaf_hash, Hash};
use annals_format::merkle::{inclusion_path, root_of, verify_inclusion, LeafHashes};
use annals_format::row::{encode_row, ColumnRef, ValueRef};
use annals_format::sign::{self, SigningKey};
use annals_format::{tx_id, BlockHeader};
use annals_lp::{FieldValue, Line, ParseOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Rows of a default block (`--block-rows`).
const BLOCK_ROWS: usize = 16_384;

/// A parsed line as the engine encodes it: `<db>/<measurement>`, time, columns sorted by name.
struct Row<'a> {
    table: String,
    time: i64,
    cols: Vec<ColumnRef<'a>>,
}

fn rows_of<'a>(lines: &'a [Line<'a>]) -> Vec<Row<'a>> {
    lines
        .iter()
        .map(|l| {
            let mut cols: Vec<ColumnRef<'a>> = l
                .tags
                .iter()
                .map(|(k, v)| ColumnRef {
                    name: k,
                    value: ValueRef::Tag(v),
                })
                .chain(l.fields.iter().map(|(k, v)| ColumnRef {
                    name: k,
                    value: match v {
                        FieldValue::F64(x) => ValueRef::F64(*x),
                        FieldValue::I64(x) => ValueRef::I64(*x),
                        FieldValue::U64(x) => ValueRef::U64(*x),
                        FieldValue::Bool(x) => ValueRef::Bool(*x),
                        FieldValue::Str(s) => ValueRef::Str(s),
                    },
                }))
                .collect();
            cols.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
            Row {
                table: format!("{}/{}", common::DB, l.measurement),
                time: l.time_ns,
                cols,
            }
        })
        .collect()
}

fn encode_all(out: &mut Vec<u8>, offsets: &mut Vec<usize>, rows: &[Row<'_>]) {
    out.clear();
    offsets.clear();
    offsets.push(0);
    for r in rows {
        encode_row(out, &r.table, r.time, &r.cols).expect("sorted, unique columns");
        offsets.push(out.len());
    }
}

fn rows(c: &mut Criterion) {
    let body = common::iot_body();
    let lines =
        annals_lp::parse_all(&body, &ParseOptions::default()).expect("generated lines parse");
    let rows = rows_of(&lines);
    let (mut enc, mut offsets) = (Vec::with_capacity(rows.len() * 400), Vec::new());
    encode_all(&mut enc, &mut offsets, &rows);
    eprintln!(
        "row encoding: {} rows, {} bytes encoded ({} per row), {} bytes of line protocol",
        rows.len(),
        enc.len(),
        enc.len() / rows.len(),
        body.len()
    );

    let mut group = c.benchmark_group("row");
    // ~1-3 ms per iteration: 30 samples fit the 3 s budget.
    group.sample_size(30);
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function("encode_row", |b| {
        b.iter(|| {
            encode_all(&mut enc, &mut offsets, black_box(&rows));
            black_box(enc.len())
        })
    });
    group.bench_function("leaf_hash", |b| {
        b.iter(|| {
            let mut acc = 0u8;
            for w in offsets.windows(2) {
                acc ^= leaf_hash(black_box(&enc[w[0]..w[1]]))[0];
            }
            acc
        })
    });
    let mut hashes: Vec<Hash> = Vec::with_capacity(rows.len());
    // The rows of a batch side by side in the SIMD lanes, as the ingest paths hash them.
    let offsets32: Vec<u32> = offsets.iter().map(|&o| o as u32).collect();
    group.bench_function("leaf_hashes_many", |b| {
        b.iter(|| {
            hashes.clear();
            annals_format::hash::many::leaf_hashes(black_box(&enc), &offsets32, &mut hashes);
            black_box(hashes.len())
        })
    });
    group.bench_function("encode_row+leaf_hash", |b| {
        b.iter(|| {
            enc.clear();
            hashes.clear();
            for r in black_box(&rows) {
                let before = enc.len();
                encode_row(&mut enc, &r.table, r.time, &r.cols).expect("sorted, unique columns");
                hashes.push(leaf_hash(&enc[before..]));
            }
            black_box(hashes.len())
        })
    });
    group.finish();
}

/// Leaf hashes of the first [`BLOCK_ROWS`] rows of the stream.
fn block_leaf_hashes() -> Vec<Hash> {
    let bodies = common::iot_bodies(BLOCK_ROWS, 1);
    let lines =
        annals_lp::parse_all(&bodies[0], &ParseOptions::default()).expect("generated lines parse");
    let rows = rows_of(&lines);
    let mut out = Vec::new();
    rows.iter()
        .map(|r| {
            out.clear();
            encode_row(&mut out, &r.table, r.time, &r.cols).expect("sorted, unique columns");
            leaf_hash(&out)
        })
        .collect()
}

fn merkle(c: &mut Criterion) {
    let leaves = block_leaf_hashes();
    assert_eq!(leaves.len(), BLOCK_ROWS);
    let root = root_of(&leaves);

    let mut group = c.benchmark_group("merkle");
    group.throughput(Throughput::Elements(leaves.len() as u64));
    group.bench_function("root_of_16384", |b| b.iter(|| root_of(black_box(&leaves))));

    // One proof per iteration, walking over the leaves so every path shape is visited.
    group.throughput(Throughput::Elements(1));
    let size = leaves.len() as u64;
    let mut i = 0u64;
    group.bench_function("inclusion_path_16384", |b| {
        b.iter(|| {
            i = (i + 7919) % size;
            inclusion_path(&mut LeafHashes(black_box(&leaves)), i, size).expect("index in range")
        })
    });
    let paths: Vec<(u64, Vec<Hash>)> = (0..256u64)
        .map(|k| {
            let idx = (k * 7919) % size;
            (
                idx,
                inclusion_path(&mut LeafHashes(&leaves), idx, size).expect("index in range"),
            )
        })
        .collect();
    let mut k = 0usize;
    group.bench_function("verify_inclusion_16384", |b| {
        b.iter(|| {
            k = (k + 1) % paths.len();
            let (idx, path) = &paths[k];
            assert!(verify_inclusion(
                &leaves[*idx as usize],
                *idx,
                size,
                black_box(path),
                &root
            ));
        })
    });
    group.bench_function("inclusion_path+verify_16384", |b| {
        b.iter(|| {
            i = (i + 7919) % size;
            let path = inclusion_path(&mut LeafHashes(black_box(&leaves)), i, size)
                .expect("index in range");
            assert!(verify_inclusion(&leaves[i as usize], i, size, &path, &root));
        })
    });
    group.finish();

    let mut group = c.benchmark_group("block");
    group.throughput(Throughput::Elements(1));
    let branch = [7u8; 16];
    let mut j = 0usize;
    group.bench_function("tx_id", |b| {
        b.iter(|| {
            j = (j + 1) % leaves.len();
            tx_id(black_box(&branch), 42, j as u32, &leaves[j])
        })
    });
    let header = BlockHeader {
        table: format!("{}/readings", common::DB),
        branch,
        height: 42,
        prev: [1u8; 32],
        rows_root: root,
        row_count: BLOCK_ROWS as u32,
        time_min: 1_451_606_400_000_000_000,
        time_max: 1_451_606_410_000_000_000,
        context: [2u8; 32],
        sealed_at: 1_700_000_000_000_000_000,
    };
    let block_hash = header.hash();
    // A fixed key: signing is deterministic and needs no randomness.
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let pubkey = key.verifying_key().to_bytes();
    group.bench_function("header_hash", |b| b.iter(|| black_box(&header).hash()));
    group.bench_function("ed25519_sign", |b| {
        b.iter(|| sign::sign(&key, black_box(&block_hash)))
    });
    let sig = sign::sign(&key, &block_hash);
    group.bench_function("ed25519_verify", |b| {
        b.iter(|| sign::verify(&pubkey, black_box(&block_hash), &sig).expect("valid signature"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = rows, merkle
}
criterion_main!(benches);

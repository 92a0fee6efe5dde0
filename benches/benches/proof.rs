//! Proofs among many rows: build time and size of an `annals-proof/1` document for a random row,
//! verification time with the independent verifier (`annals-verify`), and audit throughput.
//!
//! Setup ingests `ANNALS_BENCH_PROOF_ROWS` rows (default 10,000,000) of the TSBS `iot` stream
//! (1000 trucks) into an engine with default settings (2 shards, 16,384-row blocks), then
//! flushes: every row is in a finished block file under the last checkpoint. With
//! `ANNALS_BENCH_PROOF_DIR=DIR` the data directory is kept and reused by later runs.
//!
//! - `proof/build`: [`proof::build`] for a random (branch, height, index) of the ledger, as the
//!   HTTP API does when a receipt's position is given.
//! - `proof/verify`: `annals_verify::verify_proof` on such documents with the node's key trusted
//!   (the row, every path, the block signature and the checkpoint quorum);
//!   `proof/verify_same_checkpoint`: the same through an `annals_verify::Verifier` that checks
//!   the quorum of a checkpoint once for all the proofs under it (every block signature is
//!   still checked); `proof/verify_known_block`: a `Verifier` that also checks each block's
//!   signature once, so a row of a block it has seen costs only its hashes and paths. The
//!   `verify_binary*` variants read the binary form (`annals-proof-bin/1`) of the same proofs.
//! - Proof build time: the first proof of a block checks its signature (one Ed25519 verify);
//!   later proofs of that block do not, and `proof/build` mostly measures those.
//! - `audit/full`: `annals audit` of the whole directory (rows/s), one pass per sample.
//!
//! Document sizes (JSON, gzip'd JSON, and the raw bytes it carries) are printed once.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_bench::tsbs::IotConfig;
use annals_engine::proof::{self, RowLocation};
use annals_engine::{Engine, EngineConfig, SystemClock};
use annals_verify::{Trust, Validator};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use rand::{Rng, SeedableRng};

/// Random rows proven per measurement pass.
const SAMPLE_ROWS: usize = 512;

fn target_rows() -> u64 {
    std::env::var("ANNALS_BENCH_PROOF_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// Ingests `rows` TSBS rows from 2 threads and flushes.
fn load(engine: &Engine, rows: u64) {
    let cfg = IotConfig::new(1000, Duration::from_secs(48 * 3600), 1).expect("valid scale");
    let batches = Mutex::new(cfg.batches(common::BODY_LINES));
    let written = AtomicUsize::new(0);
    let opts = common::prepare_options();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                if written.load(Ordering::Relaxed) as u64 >= rows {
                    return;
                }
                let Some(batch) = batches.lock().unwrap().next() else {
                    return;
                };
                let mut prepared = engine
                    .prepare(common::DB, &batch.body, &opts)
                    .expect("body prepares");
                let pending = loop {
                    match engine.submit(prepared) {
                        Ok(p) => break p,
                        Err(back) => {
                            prepared = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                };
                let out = futures_executor::block_on(pending.wait()).expect("durable");
                written.fetch_add(out.rows, Ordering::Relaxed);
            });
        }
    });
    engine.flush().expect("a checkpoint");
    eprintln!(
        "proof bench: loaded {} rows in {:.1} s",
        written.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
}

fn open(dir: &Path) -> Engine {
    let cfg = EngineConfig::new(dir);
    let engine = Engine::open(cfg, Arc::new(SystemClock)).expect("engine opens");
    let marker = dir.join("bench-loaded");
    if !marker.exists() {
        load(&engine, target_rows());
        std::fs::write(&marker, b"").expect("marker");
    }
    engine
}

/// Every finished block as (branch, height, rows).
fn blocks(engine: &Engine) -> Vec<([u8; 16], u64, u32)> {
    engine
        .snapshot()
        .files()
        .flat_map(|f| {
            f.blocks
                .iter()
                .map(move |b| (f.branch, b.header.height, b.header.row_count))
        })
        .collect()
}

fn random_rows(blocks: &[([u8; 16], u64, u32)], n: usize, seed: u64) -> Vec<RowLocation> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (branch, height, rows) = blocks[rng.gen_range(0..blocks.len())];
            RowLocation {
                branch,
                height,
                index: rng.gen_range(0..rows),
            }
        })
        .collect()
}

fn hex_bytes(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s)
            if s.len() >= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            s.len() / 2
        }
        serde_json::Value::Array(a) => a.iter().map(hex_bytes).sum(),
        serde_json::Value::Object(o) => o.values().map(hex_bytes).sum(),
        _ => 0,
    }
}

fn print_sizes(engine: &Engine, rows: &[RowLocation]) {
    let (mut json, mut gz, mut raw, mut max) = (0usize, 0usize, 0usize, 0usize);
    let (mut bin, mut bin_max) = (0usize, 0usize);
    for loc in rows {
        let p = proof::build(engine, loc).expect("provable");
        let b = p.to_binary().len();
        bin += b;
        bin_max = bin_max.max(b);
        let doc = p.to_json();
        let text = serde_json::to_string(&doc).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        gz += enc.finish().unwrap().len();
        json += text.len();
        max = max.max(text.len());
        raw += hex_bytes(&doc);
    }
    let n = rows.len();
    eprintln!(
        "proof bench: document size over {n} rows: JSON mean {} B (max {max} B), gzip'd mean {} B, \
         hex fields carry {} B of hashes, headers and signatures; binary form mean {} B (max {bin_max} B)",
        json / n,
        gz / n,
        raw / n,
        bin / n
    );
}

fn bench(c: &mut Criterion) {
    let keep = std::env::var_os("ANNALS_BENCH_PROOF_DIR");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = keep.as_deref().map_or(tmp.path(), Path::new);
    std::fs::create_dir_all(dir).expect("data dir");
    let engine = open(dir);
    let blocks = blocks(&engine);
    let total: u64 = blocks.iter().map(|b| u64::from(b.2)).sum();
    eprintln!(
        "proof bench: {total} rows in {} blocks of {} branches",
        blocks.len(),
        blocks
            .iter()
            .map(|b| b.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    let rows = random_rows(&blocks, SAMPLE_ROWS, 7);
    print_sizes(&engine, &rows[..64]);

    let mut group = c.benchmark_group("proof");
    group.throughput(Throughput::Elements(1));
    let mut k = 0;
    group.bench_function("build", |b| {
        b.iter(|| {
            k = (k + 1) % rows.len();
            proof::build(&engine, &rows[k]).expect("provable")
        })
    });
    let proofs: Vec<proof::Proof> = rows[..64]
        .iter()
        .map(|l| proof::build(&engine, l).unwrap())
        .collect();
    let docs: Vec<Vec<u8>> = proofs
        .iter()
        .map(|p| serde_json::to_vec(&p.to_json()).unwrap())
        .collect();
    let bins: Vec<Vec<u8>> = proofs.iter().map(proof::Proof::to_binary).collect();
    let trust = Trust::validators([Validator {
        key: engine.public_key(),
        power: 1,
    }])
    .expect("node key");
    let mut k = 0;
    group.bench_function("verify", |b| {
        b.iter(|| {
            k = (k + 1) % docs.len();
            annals_verify::verify_proof(&docs[k], &trust).expect("verifies")
        })
    });
    group.bench_function("verify_binary", |b| {
        b.iter(|| {
            k = (k + 1) % bins.len();
            annals_verify::verify_proof(&bins[k], &trust).expect("verifies")
        })
    });
    // An auditor checking many rows under one checkpoint checks its quorum once; each row's
    // block signature is still checked (no block memo).
    for (name, set) in [
        ("verify_same_checkpoint", &docs),
        ("verify_binary_same_checkpoint", &bins),
    ] {
        let mut verifier = annals_verify::Verifier::with_block_memo(&trust, 0);
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % set.len();
                verifier.verify_proof(&set[k]).expect("verifies")
            })
        });
    }
    // ... and each block's signature once: what remains per row is hashing and paths.
    for (name, set) in [
        ("verify_known_block", &docs),
        ("verify_binary_known_block", &bins),
    ] {
        let mut verifier = annals_verify::Verifier::new(&trust);
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % set.len();
                verifier.verify_proof(&set[k]).expect("verifies")
            })
        });
    }
    group.finish();
    engine.shutdown();

    let mut group = c.benchmark_group("audit");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(total));
    group.bench_function("full", |b| {
        b.iter(|| {
            let r = annals_engine::audit::audit(dir).expect("audit runs");
            assert!(r.ok(), "the bench's ledger audits clean");
            r
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

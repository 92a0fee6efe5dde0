//! The real engine's proofs, checked by the independent verifier.
//!
//! An engine with several shards and tables (so many branches) ingests random rows in phases,
//! with a checkpoint after each; thousands of random rows are then proven, under the latest
//! checkpoint and under older ones, and every document must pass `verify_proof` with the node's
//! key as the trusted validator set. A few real documents then go through every single-bit
//! change of every field (`support::tamper`) and must fail at the step that field belongs to.
//!
//! The engine is a dev-dependency only: the verifier itself shares no code with it.

extern crate alloc;

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_engine::proof::{self, BlockProofs, LocationHint, RowLocation};
use annals_engine::{Engine, EngineConfig, ManualClock, PrepareOptions, ReceiptForm};
use annals_lp::ParseOptions;
use annals_verify::{verify_proof, Step, Trust, Validator};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::tamper::check_all;

const DB: &str = "fleet";

/// A row the test wrote, with its place in the ledger from the receipt.
#[derive(Debug, Clone)]
struct Written {
    branch: [u8; 16],
    height: u64,
    index: u32,
    tx_id: String,
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let v = support::unhex(s);
    v.try_into().expect("length")
}

/// Random TSBS-like lines: three tables, a few series each, every field kind, some absent.
fn lines(rng: &mut StdRng, n: usize, t: &mut i64) -> String {
    let mut body = String::new();
    for _ in 0..n {
        *t += rng.gen_range(1..1_000_000_000);
        let truck = rng.gen_range(0..12);
        let line = match rng.gen_range(0..3) {
            0 => format!(
                "readings,name=truck_{truck},fleet={} latitude={:?},longitude={:?},velocity={}i {}",
                ["East", "West", "North"][truck % 3],
                rng.gen_range(-90.0..90.0f64),
                rng.gen_range(-180.0..180.0f64),
                rng.gen_range(0..120),
                t
            ),
            1 => format!(
                "diagnostics,name=truck_{truck} fuel_state={:?},status={}u,ok={} {}",
                rng.gen::<f64>(),
                rng.gen_range(0..5u64),
                rng.gen_bool(0.5),
                t
            ),
            _ => format!(
                "notes,name=truck_{truck} text=\"stop {} \\\"ü\\\"\" {}",
                rng.gen_range(0..1000),
                t
            ),
        };
        body.push_str(&line);
        body.push('\n');
    }
    body
}

fn write(engine: &Engine, body: &str) -> Vec<Written> {
    let opts = PrepareOptions {
        parse: ParseOptions::default(),
        accept_partial: false,
    };
    let mut prepared = engine
        .prepare(DB, body.as_bytes(), &opts)
        .expect("valid lines");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pending = loop {
        match engine.submit(prepared) {
            Ok(p) => break p,
            Err(back) => {
                assert!(Instant::now() < deadline, "queues stayed full for 20 s");
                prepared = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let out = futures_executor::block_on(pending.wait()).expect("write accepted");
    let r = out.receipt(ReceiptForm::Full);
    r["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| Written {
            branch: unhex(e["branch"].as_str().unwrap()),
            height: e["height"].as_u64().unwrap(),
            index: e["index"].as_u64().unwrap() as u32,
            tx_id: e["tx_id"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn open(dir: &std::path::Path) -> Engine {
    let mut c = EngineConfig::new(dir);
    c.shards = 3;
    c.block_rows = 37;
    c.file_rows = 37 * 4;
    c.block_age = Duration::from_secs(3600);
    c.file_age = Duration::from_secs(3600);
    c.checkpoint_interval = Duration::from_secs(3600);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    Engine::open(c, clock).expect("engine opens")
}

fn trust(engine: &Engine) -> Trust {
    Trust::validators([Validator {
        key: engine.public_key(),
        power: 1,
    }])
    .expect("a valid key")
}

/// An engine holding rows in many blocks of many branches under several checkpoints.
fn ledger(dir: &std::path::Path, rng: &mut StdRng) -> (Engine, Vec<(Written, u64)>) {
    let engine = open(dir);
    let mut t = 1_700_000_000_000_000_000;
    let mut written = Vec::new();
    for _phase in 0..6 {
        for _ in 0..4 {
            let n = rng.gen_range(50..400);
            written.extend(write(&engine, &lines(rng, n, &mut t)));
        }
        engine.flush().expect("a checkpoint");
    }
    let last = engine
        .latest_checkpoint()
        .expect("a checkpoint")
        .header
        .epoch;
    // The first epoch that covers each row: the earliest checkpoint whose entry for the row's
    // branch is longer than its height.
    let cps = engine.checkpoints_from(0, usize::MAX);
    let covered: Vec<(Written, u64)> = written
        .into_iter()
        .map(|w| {
            let first = cps
                .iter()
                .find(|c| {
                    c.entries
                        .iter()
                        .any(|e| e.branch == w.branch && e.size > w.height)
                })
                .map_or(last, |c| c.header.epoch);
            (w, first)
        })
        .collect();
    (engine, covered)
}

#[test]
fn thousands_of_random_rows_verify_under_latest_and_older_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (engine, mut rows) = ledger(dir.path(), &mut rng);
    let trust = trust(&engine);
    let branches: std::collections::BTreeSet<_> = rows.iter().map(|(w, _)| w.branch).collect();
    let blocks: std::collections::BTreeSet<_> =
        rows.iter().map(|(w, _)| (w.branch, w.height)).collect();
    let cps = engine.checkpoints_from(0, usize::MAX);
    assert!(
        rows.len() > 3_000 && branches.len() >= 9 && blocks.len() > 80 && cps.len() >= 6,
        "{} rows, {} branches, {} blocks, {} checkpoints",
        rows.len(),
        branches.len(),
        blocks.len(),
        cps.len()
    );

    rows.shuffle(&mut rng);
    let latest = engine.latest_checkpoint().unwrap().header.epoch;
    let (mut n_latest, mut n_older) = (0, 0);
    let mut memo = annals_verify::Verifier::with_block_memo(&trust, 16);
    for (w, first) in rows.iter().take(2_500) {
        // Half by tx_id alone (with the receipt's position as the hint), half by location.
        let p = if rng.gen_bool(0.5) {
            let hint = LocationHint {
                branch: Some(w.branch),
                height: Some(w.height),
                index: Some(w.index),
            };
            proof::prove_tx(&engine, &unhex(&w.tx_id), &hint)
        } else {
            proof::build(
                &engine,
                &RowLocation {
                    branch: w.branch,
                    height: w.height,
                    index: w.index,
                },
            )
        }
        .unwrap_or_else(|e| panic!("row {w:?}: {e}"));
        let text = serde_json::to_string(&p.to_json()).unwrap();
        let v = verify_proof(text.as_bytes(), &trust)
            .unwrap_or_else(|e| panic!("row {w:?} under epoch {latest}: {e}"));
        assert!(v.is_final());
        assert_eq!(support::hex(&v.tx_id), w.tx_id);
        assert_eq!(v.checkpoint.epoch, latest);
        // The binary form proves the same, through a verifier that remembers checkpoints
        // and block signatures, in at most half the bytes.
        let bin = p.to_binary();
        assert!(
            bin.len() * 2 <= text.len(),
            "{} vs {}",
            bin.len(),
            text.len()
        );
        assert_eq!(
            memo.verify_proof(&bin)
                .unwrap_or_else(|e| panic!("row {w:?}, binary form: {e}")),
            v
        );
        n_latest += 1;

        // The same row under an older checkpoint that already covered it.
        if *first < latest {
            let epoch = rng.gen_range(*first..latest);
            let cp = engine.checkpoints_from(epoch, 1).pop().unwrap();
            assert_eq!(cp.header.epoch, epoch);
            let snap = engine.snapshot();
            let bp = BlockProofs::open(&engine, &snap, Some(Arc::new(cp)), &w.branch, w.height)
                .unwrap_or_else(|e| panic!("row {w:?} under epoch {epoch}: {e}"));
            let text = serde_json::to_string(&bp.proof(w.index).unwrap().to_json()).unwrap();
            let v = verify_proof(text.as_bytes(), &trust)
                .unwrap_or_else(|e| panic!("row {w:?} under epoch {epoch}: {e}"));
            assert_eq!(v.checkpoint.epoch, epoch);
            n_older += 1;
        }
    }
    assert!(n_latest == 2_500 && n_older > 500, "{n_latest} {n_older}");

    // A key that is not the node's: every document fails at `validators`.
    let stranger = Trust::validators([Validator {
        key: support::key_of(&ed25519_dalek::SigningKey::from_bytes(&[9; 32])),
        power: 1,
    }])
    .unwrap();
    let (w, _) = &rows[0];
    let p = proof::build(
        &engine,
        &RowLocation {
            branch: w.branch,
            height: w.height,
            index: w.index,
        },
    )
    .unwrap();
    let text = serde_json::to_string(&p.to_json()).unwrap();
    let err = verify_proof(text.as_bytes(), &stranger).unwrap_err();
    assert_eq!(err.step(), Step::Validators, "{err}");
}

#[test]
fn every_bit_of_real_engine_proofs_fails_at_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0xb17);
    let (engine, rows) = ledger(dir.path(), &mut rng);
    let trust = trust(&engine);
    // One row of each table: every field kind goes through the mutations.
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for (w, _) in &rows {
        let p = proof::build(
            &engine,
            &RowLocation {
                branch: w.branch,
                height: w.height,
                index: w.index,
            },
        )
        .unwrap();
        let json = p.to_json();
        let table = json["row"]["table"].as_str().unwrap().to_owned();
        if !seen.insert(table) {
            continue;
        }
        let text = serde_json::to_string(&json).unwrap();
        let doc = support::doc_json::doc(&support::doc_json::parse(text.as_bytes()).unwrap());
        // The test model writes the same document the engine wrote, in both forms.
        verify_proof(doc.to_json().as_bytes(), &trust).expect("the model's rendering verifies");
        assert_eq!(doc.to_binary().unwrap(), p.to_binary());
        total += check_all(&doc, &trust);
        total += check_all(&doc, &Trust::structure_only());
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3);
    assert!(total > 30_000, "{total} mutations");
}

//! Integration tests of the ingest path: what a user of the ledger relies on after a write is
//! acknowledged. Every check reads the data back from the files (block files, branch logs,
//! checkpoint log) and compares with encodings and hashes computed here from FORMAT.md.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use annals_engine::error::WriteError;
use annals_engine::PendingWrite;
use annals_format::block::BlockHeader;
use annals_format::checkpoint::BranchEntry;
use annals_format::hash::{leaf_hash, to_hex, ZERO_HASH};
use annals_format::merkle::{inclusion_path, verify_inclusion, LeafHashes};
use annals_format::row::{decode_row, Kind, ValueRef};
use annals_storage::block_file::{row_encodings, BlockFileReader};
use annals_storage::branch_log::BranchLog;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A mixed workload: three tables, a dozen series, out-of-order and missing timestamps, and
/// each line carrying a random non-empty subset of its table's fields.
fn workload(rng: &mut StdRng, n: usize, seq: &mut i64) -> Vec<Point> {
    (0..n)
        .map(|_| {
            *seq += 1;
            let host = format!("h{}", rng.gen_range(0..6));
            let (m, fields): (&str, Vec<(&str, Val)>) = match rng.gen_range(0..3) {
                0 => (
                    "temp",
                    vec![
                        ("celsius", Val::F64(rng.gen_range(-40.0..60.0))),
                        ("raw", Val::I64(rng.gen_range(-1000..1000))),
                        ("ok", Val::Bool(rng.gen())),
                    ],
                ),
                1 => (
                    "power",
                    vec![
                        ("watts", Val::U64(rng.gen())),
                        ("label", Val::Str(format!("feed {}", rng.gen_range(0..9)))),
                    ],
                ),
                _ => (
                    "door",
                    vec![
                        ("open", Val::Bool(rng.gen())),
                        ("count", Val::I64(*seq)),
                        (
                            "note",
                            Val::Str(if rng.gen() {
                                String::new()
                            } else {
                                "a \"quoted\" \\ note".into()
                            }),
                        ),
                    ],
                ),
            };
            let mut p = Point::new(m).tag("host", &host);
            if rng.gen_bool(0.5) {
                p = p.tag("region", if rng.gen() { "north" } else { "south east" });
            }
            let keep: Vec<bool> = loop {
                let k: Vec<bool> = fields.iter().map(|_| rng.gen_bool(0.6)).collect();
                if k.iter().any(|&b| b) {
                    break k;
                }
            };
            for ((name, v), k) in fields.into_iter().zip(keep) {
                if k {
                    p = p.field(name, v);
                }
            }
            // Out of order, sometimes equal, sometimes absent (the request's default time).
            if rng.gen_bool(0.9) {
                p = p
                    .at(1_700_000_000_000_000_000 + rng.gen_range(-1_000_000i64..1_000_000) * 1000);
            }
            p
        })
        .collect()
}

/// Checks each receipt entry against the ledger and against FORMAT.md.
fn check_entries_stored(ledger: &BTreeMap<String, StoredRow>, points: &[Point], entries: &[Entry]) {
    assert_eq!(points.len(), entries.len());
    for (p, e) in points.iter().zip(entries) {
        let enc = p.encoding();
        assert_eq!(e.table, p.table());
        assert_eq!(
            e.tx_id,
            expected_tx_id(e, &enc),
            "receipt tx_id of line {} follows FORMAT.md",
            e.line
        );
        let stored = ledger
            .get(&e.tx_id)
            .unwrap_or_else(|| panic!("tx_id of line {} ({}) is not stored", e.line, e.tx_id));
        assert_eq!(
            stored.encoding, enc,
            "line {}: stored row differs from its canonical encoding",
            e.line
        );
        assert_eq!(
            (&stored.branch, stored.height, stored.index),
            (&e.branch, e.height, e.index)
        );
        assert_eq!(stored.table, p.table());
    }
}

#[test]
fn rows_across_many_blocks_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let block_rows = 8;
    let engine = open(config(dir.path(), 2, block_rows));
    let mut rng = StdRng::seed_from_u64(7);
    let mut seq = 0;
    let mut points = Vec::new();
    let mut receipts = Vec::new();
    for n in [40, 1, 37, 64, 9, 50] {
        let batch = workload(&mut rng, n, &mut seq);
        receipts.extend(write(&engine, &batch));
        points.extend(batch);
    }
    assert!(engine.flush().is_some(), "flush writes a checkpoint");
    engine.shutdown();

    let ledger = ledger(dir.path());
    assert_eq!(
        ledger.len(),
        points.len(),
        "every row stored once, nothing else"
    );
    check_entries_stored(&ledger, &points, &receipts);
    let mut want: Vec<Vec<u8>> = points.iter().map(Point::encoding).collect();
    want.sort();
    assert_eq!(encodings(&ledger), want);

    // Requests were acknowledged one after another, so per branch the rows fill blocks of
    // exactly `block_rows` in arrival order; a chunk crossing a block boundary continues at
    // index 0 of the next height.
    assert_consecutive_positions(&receipts, block_rows, &HashMap::new());
    let branches: BTreeSet<&str> = receipts.iter().map(|e| e.branch.as_str()).collect();
    let tables: BTreeSet<&str> = receipts.iter().map(|e| e.table.as_str()).collect();
    assert_eq!(tables.len(), 3);
    assert!(
        branches.len() >= 4,
        "three tables over two shards use several branches: {branches:?}"
    );
    let max_height = ledger.values().map(|r| r.height).max().unwrap();
    assert!(max_height >= 3, "rows span many blocks");
    let crossings = receipts
        .windows(2)
        .filter(|w| w[0].branch == w[1].branch && w[1].index == 0 && w[1].height == w[0].height + 1)
        .count();
    assert!(
        crossings > 0,
        "some request crossed a block boundary inside one branch"
    );

    let report = audit_ok(dir.path());
    assert_eq!(report.rows_checked, points.len() as u64);
    assert_eq!(
        report.blocks_pending, 0,
        "shutdown leaves every logged block in a finished file"
    );
    assert!(
        report.block_files > branches.len(),
        "files roll at file_rows"
    );
}

#[test]
fn reopen_continues_heights_keeps_tx_ids_and_chains_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let block_rows = 5;
    let cfg = config(dir.path(), 2, block_rows);
    let mut rng = StdRng::seed_from_u64(11);
    let mut seq = 0;

    let engine = open(cfg.clone());
    let pubkey = engine.public_key();
    let first = workload(&mut rng, 33, &mut seq);
    let first_receipt = write(&engine, &first);
    let second = workload(&mut rng, 12, &mut seq);
    let second_receipt = write(&engine, &second);
    engine.shutdown();
    let epoch_before = engine
        .latest_checkpoint()
        .expect("shutdown checkpoints")
        .header
        .epoch;
    drop(engine);
    let before = ledger(dir.path());
    assert_eq!(before.len(), 45);
    let sizes_before: HashMap<String, u64> = branch_dirs(dir.path())
        .into_iter()
        .map(|(b, d)| (to_hex(&b), BranchLog::open_read_only(&d, b).unwrap().size()))
        .collect();

    // Second life: same key, heights continue after every logged block.
    let engine = open(cfg.clone());
    assert_eq!(
        engine.public_key(),
        pubkey,
        "the node key survives a restart"
    );
    assert!(!engine.created_key());
    let rec = engine.recovery().clone();
    assert!(rec.damaged.is_empty(), "{:?}", rec.damaged);
    assert_eq!(
        rec.blocks_resealed, 0,
        "a clean shutdown leaves nothing to reseal"
    );
    assert_eq!(rec.block_files, block_files(dir.path()).len());
    assert_eq!(
        engine.latest_checkpoint().unwrap().header.epoch,
        epoch_before
    );
    let third = workload(&mut rng, 29, &mut seq);
    let third_receipt = write(&engine, &third);
    assert_consecutive_positions(&third_receipt, block_rows, &sizes_before);
    engine.shutdown();
    let epoch_after = engine.latest_checkpoint().unwrap().header.epoch;
    assert_eq!(
        epoch_after,
        epoch_before + 1,
        "one more checkpoint for the new blocks"
    );
    drop(engine);

    let after = ledger(dir.path());
    assert_eq!(after.len(), 45 + 29);
    assert_rows_kept(&before, &after, "after reopen");
    let positions: BTreeSet<(&str, u64, u32)> = after
        .values()
        .map(|r| (r.branch.as_str(), r.height, r.index))
        .collect();
    assert_eq!(
        positions.len(),
        after.len(),
        "no (branch, height, index) holds two rows"
    );
    check_entries_stored(&after, &first, &first_receipt);
    check_entries_stored(&after, &second, &second_receipt);
    check_entries_stored(&after, &third, &third_receipt);
    for e in &third_receipt {
        assert!(
            e.height >= sizes_before.get(&e.branch).copied().unwrap_or(0),
            "height reused after reopen: {e:?}"
        );
    }
    let cps = verify_checkpoints(dir.path(), &pubkey);
    assert_eq!(cps.len() as u64, epoch_after + 1);
    let report = audit_ok(dir.path());
    assert_eq!(report.rows_checked, 74);
    assert_eq!(report.checkpoints, epoch_after + 1);

    // Third life without writes: nothing moved, so no new checkpoint and no new block.
    let engine = open(cfg.clone());
    engine.flush();
    engine.shutdown();
    assert_eq!(
        engine.latest_checkpoint().unwrap().header.epoch,
        epoch_after
    );
    drop(engine);
    assert_eq!(ledger(dir.path()).len(), 74);

    // The shard count is fixed at creation: rows are routed by it.
    let mut other = cfg;
    other.shards = 3;
    let err = annals_engine::Engine::open(
        other,
        std::sync::Arc::new(annals_engine::ManualClock::new(CLOCK_NS)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("2 shards"), "{err}");
}

/// Every row of `before` is in `after` under its `tx_id`, at the same position, unchanged.
fn assert_rows_kept(
    before: &BTreeMap<String, StoredRow>,
    after: &BTreeMap<String, StoredRow>,
    when: &str,
) {
    for (tx, row) in before {
        let now = after
            .get(tx)
            .unwrap_or_else(|| panic!("row {tx} lost {when}"));
        assert_eq!(
            (&now.branch, now.height, now.index, &now.encoding),
            (&row.branch, row.height, row.index, &row.encoding)
        );
    }
}

fn catalog_snapshot(engine: &annals_engine::Engine) -> Vec<(String, Vec<(String, Kind)>)> {
    engine
        .catalog()
        .tables()
        .iter()
        .map(|t| (t.name.clone(), t.columns.clone()))
        .collect()
}

#[test]
fn type_conflict_refuses_whole_request_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 2, 4));
    let good = Point::new("m")
        .tag("host", "a")
        .field("v", Val::F64(1.5))
        .field("n", Val::I64(1))
        .at(100);
    write(&engine, std::slice::from_ref(&good));
    let catalog = catalog_snapshot(&engine);
    let catalog_file = std::fs::read(dir.path().join("catalog.json")).unwrap();

    // (body, line the conflict is reported at, words the message must name)
    let refused: &[(&str, usize, &[&str])] = &[
        // A valid line for a new table before the conflict: the new table must not appear.
        (
            "m2,host=b x=1 200\nm,host=a v=2i 300",
            2,
            &["\"v\"", "f64", "i64"],
        ),
        // New column on an accepted-looking first line, conflict on the second.
        (
            "m,host=a v=2,extra=5i 300\nm,host=a n=2.5 400",
            2,
            &["\"n\"", "i64", "f64"],
        ),
        // A field used as a tag, a tag used as a field.
        ("m,v=up n=3i 500", 1, &["\"v\"", "tag"]),
        ("m host=\"a\" 600", 1, &["\"host\"", "tag", "string"]),
        // Integer kinds are distinct.
        ("m,host=a n=1u 700", 1, &["\"n\"", "u64"]),
        // Two lines of one request disagreeing about a new table's column.
        ("m3 x=1i 800\nm3 x=1u 900", 2, &["\"x\"", "i64", "u64"]),
        (
            "m3 y=true 800\nm3 y=\"true\" 900",
            2,
            &["\"y\"", "bool", "string"],
        ),
    ];
    for (body, line, words) in refused {
        match write_with(&engine, body, false) {
            Err(WriteError::Conflict { line: l, source }) => {
                assert_eq!(l, *line, "{body:?}");
                let msg = source.to_string();
                for w in *words {
                    assert!(
                        msg.contains(w),
                        "message {msg:?} for {body:?} should name {w}"
                    );
                }
            }
            other => panic!("{body:?} should be refused as a kind conflict, got {other:?}"),
        }
        assert_eq!(
            catalog_snapshot(&engine),
            catalog,
            "refused request {body:?} changed the catalog"
        );
        assert_eq!(
            std::fs::read(dir.path().join("catalog.json")).unwrap(),
            catalog_file
        );
    }
    engine.shutdown();
    drop(engine);
    let stored = ledger(dir.path());
    assert_eq!(
        encodings(&stored),
        vec![good.encoding()],
        "only the accepted row is stored"
    );
    audit_ok(dir.path());
}

#[test]
fn schema_evolution_keeps_earlier_rows_without_new_columns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 4);
    let engine = open(cfg.clone());
    let mut points = Vec::new();
    // 6 rows with `a` only, then 6 with `a` and the new `b`: block 1 mixes both schemas.
    let v1: Vec<Point> = (0..6)
        .map(|i| {
            Point::new("m")
                .tag("host", "x")
                .field("a", Val::I64(i))
                .at(10 + i)
        })
        .collect();
    let v2: Vec<Point> = (0..6)
        .map(|i| {
            Point::new("m")
                .tag("host", "x")
                .field("a", Val::I64(i))
                .field("b", Val::F64(i as f64 / 2.0))
                .at(20 + i)
        })
        .collect();
    // Then only `b` and a new tag: `a` absent in these rows.
    let v3: Vec<Point> = (0..3)
        .map(|i| {
            Point::new("m")
                .tag("host", "x")
                .tag("zone", "z1")
                .field("b", Val::F64(-1.0))
                .at(30 + i)
        })
        .collect();
    for batch in [&v1, &v2, &v3] {
        write(&engine, batch);
        points.extend(batch.iter().cloned());
    }
    let t = engine.catalog().table("plant/m").unwrap();
    assert_eq!(
        t.columns,
        vec![
            ("host".into(), Kind::Tag),
            ("a".into(), Kind::I64),
            ("b".into(), Kind::F64),
            ("zone".into(), Kind::Tag)
        ]
    );
    engine.shutdown();
    drop(engine);

    // Evolution continues after a restart (the catalog is reloaded).
    let engine = open(cfg);
    let v4: Vec<Point> = (0..2)
        .map(|i| {
            Point::new("m")
                .tag("host", "y")
                .field("c", Val::Str("late".into()))
                .at(40 + i)
        })
        .collect();
    write(&engine, &v4);
    points.extend(v4.iter().cloned());
    assert_eq!(
        engine.catalog().table("plant/m").unwrap().column("c"),
        Some((4, Kind::Str))
    );
    engine.shutdown();
    drop(engine);

    let stored = ledger(dir.path());
    let mut want: Vec<Vec<u8>> = points.iter().map(Point::encoding).collect();
    want.sort();
    assert_eq!(
        encodings(&stored),
        want,
        "every row stored exactly as written: absent columns stay absent"
    );
    for r in stored.values() {
        let row = decode_row(&r.encoding).unwrap();
        let names: Vec<&str> = row.columns.iter().map(|c| c.name).collect();
        let time = row.time;
        match time {
            10..=15 => assert_eq!(names, ["a", "host"], "row written before `b` existed"),
            20..=25 => assert_eq!(names, ["a", "b", "host"]),
            30..=32 => assert_eq!(
                names,
                ["b", "host", "zone"],
                "`a` was not written on these rows"
            ),
            40..=41 => assert_eq!(names, ["c", "host"]),
            t => panic!("unexpected row time {t}"),
        }
    }
    // Block 1 holds rows of both schemas.
    let mixed: BTreeSet<i64> = stored
        .values()
        .filter(|r| r.height == 1)
        .map(|r| decode_row(&r.encoding).unwrap().time)
        .collect();
    assert_eq!(mixed, BTreeSet::from([14, 15, 20, 21]));
    audit_ok(dir.path());
}

#[test]
fn every_column_kind_round_trips_with_edge_values() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 1, 3));
    let points = vec![
        Point::new("k")
            .tag("host", "a b,c=d\\e")
            .field("f", Val::F64(-0.0))
            .field("i", Val::I64(i64::MIN))
            .field("u", Val::U64(u64::MAX))
            .field("b", Val::Bool(true))
            .field("s", Val::Str("he said \"hi\" \\ ok".into()))
            .at(-1_000_000_000),
        Point::new("k")
            .tag("host", "Grüße ✓")
            .field("f", Val::F64(1.5e300))
            .field("i", Val::I64(i64::MAX))
            .at(0),
        Point::new("k")
            .tag("host", "z")
            .field("f", Val::F64(5e-324))
            .field("u", Val::U64(0))
            .field("s", Val::Str(String::new())),
        Point::new("k")
            .tag("host", "z")
            .field("b", Val::Bool(false))
            .field("Zeta", Val::I64(-1))
            .field("_x", Val::F64(0.1))
            .at(1),
        Point::new("k")
            .tag("host", "z")
            .tag("A", "upper")
            .field("f", Val::F64(f64::MAX))
            .at(2),
    ];
    write(&engine, &points);
    let t = engine.catalog().table("plant/k").unwrap();
    let kinds: BTreeMap<&str, Kind> = t.columns.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("host", Kind::Tag),
            ("A", Kind::Tag),
            ("f", Kind::F64),
            ("i", Kind::I64),
            ("u", Kind::U64),
            ("b", Kind::Bool),
            ("s", Kind::Str),
            ("Zeta", Kind::I64),
            ("_x", Kind::F64)
        ])
    );
    engine.shutdown();
    drop(engine);
    let stored = ledger(dir.path());
    let mut want: Vec<Vec<u8>> = points.iter().map(Point::encoding).collect();
    want.sort();
    assert_eq!(encodings(&stored), want);
    // Spot-check decoded values: -0.0 keeps its sign bit, extremes survive Arrow and Parquet.
    let first = stored
        .values()
        .find(|r| decode_row(&r.encoding).unwrap().time == -1_000_000_000)
        .unwrap();
    let row = decode_row(&first.encoding).unwrap();
    let col = |n: &str| row.columns.iter().find(|c| c.name == n).unwrap().value;
    assert!(matches!(col("f"), ValueRef::F64(x) if x.to_bits() == (-0.0f64).to_bits()));
    assert_eq!(col("host"), ValueRef::Tag("a b,c=d\\e"));
    assert_eq!(col("i"), ValueRef::I64(i64::MIN));
    assert_eq!(col("u"), ValueRef::U64(u64::MAX));
    assert_eq!(col("s"), ValueRef::Str("he said \"hi\" \\ ok"));
    audit_ok(dir.path());
}

#[test]
fn partial_acceptance_writes_good_lines_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 2, 4));
    let body = [
        "m,host=a v=1 100",         // 1 ok
        "m,host=a v= 200",          // 2 parse error: no value
        "# a comment",              // 3 skipped
        "m,host=b v=3 300",         // 4 ok
        "m,host=c w=1i,v=4i 400",   // 5 kind conflict with line 1 (v is f64); w must not be added
        "",                         // 6 blank
        "other,host=a s=\"x\" 500", // 7 ok
        "m,host=d v=5 12x",         // 8 parse error: bad timestamp
    ]
    .join("\n");
    let good = [
        Point::new("m")
            .tag("host", "a")
            .field("v", Val::F64(1.0))
            .at(100),
        Point::new("m")
            .tag("host", "b")
            .field("v", Val::F64(3.0))
            .at(300),
        Point::new("other")
            .tag("host", "a")
            .field("s", Val::Str("x".into()))
            .at(500),
    ];

    // Without partial acceptance the whole request is refused at its first bad line.
    match write_with(&engine, &body, false) {
        Err(WriteError::Parse { line: 2, .. }) => {}
        other => panic!("expected a parse error at line 2, got {other:?}"),
    }
    assert!(
        engine.catalog().tables().is_empty(),
        "a refused request creates no table"
    );

    let out = write_with(&engine, &body, true).expect("partial write accepted");
    assert_eq!(out.rows, 3);
    let mut rejected: Vec<usize> = out.rejected.iter().map(|(l, _)| *l).collect();
    rejected.sort();
    assert_eq!(rejected, [2, 5, 8]);
    let msg5 = &out.rejected.iter().find(|(l, _)| *l == 5).unwrap().1;
    assert!(
        msg5.contains("\"v\"") && msg5.contains("f64") && msg5.contains("i64"),
        "{msg5}"
    );
    let receipt = out.receipt(annals_engine::ReceiptForm::Full);
    let mut receipt_rejected: Vec<u64> = receipt["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    receipt_rejected.sort();
    assert_eq!(receipt_rejected, [2, 5, 8]);
    assert!(receipt["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| !r["error"].as_str().unwrap().is_empty()));
    // The count form: rows and rejections, nothing per row.
    let count = out.receipt(annals_engine::ReceiptForm::Count);
    assert_eq!(count["receipt"], "count");
    assert_eq!(count["rows"], 3);
    assert_eq!(count["rejected"], receipt["rejected"]);
    assert!(count.get("entries").is_none() && count.get("runs").is_none());
    let entries = entries(&out);
    assert_eq!(
        entries.iter().map(|e| e.line).collect::<Vec<_>>(),
        [1, 4, 7]
    );
    for (e, p) in entries.iter().zip(&good) {
        assert_eq!(e.tx_id, expected_tx_id(e, &p.encoding()));
    }
    let m = engine.catalog().table("plant/m").unwrap();
    assert_eq!(m.column("v").map(|c| c.1), Some(Kind::F64));
    assert!(
        m.column("w").is_none(),
        "a column only a rejected line named was added"
    );

    // Every line bad: refused, each line reported, nothing written.
    match write_with(&engine, "m,host=a v=1i\nm v=\nm,host=b v=\"s\"", true) {
        Err(WriteError::Lines(lines)) => assert_eq!(
            lines.iter().map(|l| l.0).collect::<BTreeSet<_>>(),
            BTreeSet::from([1, 2, 3])
        ),
        other => panic!("expected every line rejected, got {other:?}"),
    }
    engine.shutdown();
    drop(engine);
    let stored = ledger(dir.path());
    let mut want: Vec<Vec<u8>> = good.iter().map(Point::encoding).collect();
    want.sort();
    assert_eq!(
        encodings(&stored),
        want,
        "exactly the good lines are stored"
    );
    for e in &entries {
        assert!(stored.contains_key(&e.tx_id));
    }
    audit_ok(dir.path());
}

#[test]
fn back_pressure_refuses_submits_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2, 16);
    cfg.queue_depth = 1;
    let engine = open(cfg);
    let threads = 4usize;
    let per_thread = 150usize;
    let point = |t: usize, i: usize, k: usize| {
        Point::new("flood")
            .tag("dev", &format!("d{t}-{k}"))
            .field("seq", Val::I64((t * 1_000_000 + i * 10 + k) as i64))
            .at(i as i64)
    };

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (accepted, refused, peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = engine
                    .queue_depths()
                    .into_iter()
                    .max()
                    .unwrap_or(0)
                    .max(peak);
                std::thread::yield_now();
            }
            peak
        });
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let engine = &engine;
                s.spawn(move || {
                    let mut accepted: Vec<(Vec<Point>, PendingWrite)> = Vec::new();
                    let mut refused = Vec::new();
                    for i in 0..per_thread {
                        // Three series per request: most requests touch both shards.
                        let pts: Vec<Point> = (0..3).map(|k| point(t, i, k)).collect();
                        let prepared = engine
                            .prepare(DB, body(&pts).as_bytes(), &opts(false))
                            .unwrap();
                        match engine.submit(prepared) {
                            Ok(p) => accepted.push((pts, p)),
                            Err(back) => refused.push((pts, back)),
                        }
                    }
                    (accepted, refused)
                })
            })
            .collect();
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for w in workers {
            let (a, r) = w.join().unwrap();
            accepted.extend(a);
            refused.extend(r);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (accepted, refused, sampler.join().unwrap())
    });
    assert!(
        !refused.is_empty(),
        "a flood against queue depth 1 must be refused sometimes"
    );
    assert!(!accepted.is_empty());
    assert!(
        peak <= 1,
        "a shard queue held {peak} requests with queue_depth 1"
    );

    let mut durable: Vec<Vec<u8>> = Vec::new();
    for (pts, pending) in accepted {
        let out = block_on(pending.wait()).expect("accepted write becomes durable");
        assert_eq!(out.rows, pts.len());
        durable.extend(pts.iter().map(Point::encoding));
    }
    // Slots are given back right after the acknowledgements (see the test below).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while engine.queue_depths() != [0, 0] {
        assert!(
            std::time::Instant::now() < deadline,
            "a slot was never given back: {:?}",
            engine.queue_depths()
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    // A refused request comes back untouched: half are retried and must be written as they
    // were prepared, the other half are dropped and must never appear.
    let mut dropped: Vec<Vec<u8>> = Vec::new();
    for (n, (pts, prepared)) in refused.into_iter().enumerate() {
        if n % 2 == 1 {
            dropped.extend(pts.iter().map(Point::encoding));
            continue;
        }
        let mut prepared = prepared;
        let pending = loop {
            match engine.submit(prepared) {
                Ok(p) => break p,
                Err(back) => {
                    prepared = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        block_on(pending.wait()).expect("retried write becomes durable");
        durable.extend(pts.iter().map(Point::encoding));
    }
    engine.shutdown();
    drop(engine);

    let stored = ledger(dir.path());
    durable.sort();
    assert_eq!(
        encodings(&stored),
        durable,
        "exactly the accepted rows are stored"
    );
    let stored_set: BTreeSet<Vec<u8>> = stored.values().map(|r| r.encoding.clone()).collect();
    assert!(
        dropped.iter().all(|d| !stored_set.contains(d)),
        "a refused, never retried row was stored"
    );
    audit_ok(dir.path());
}

#[test]
fn a_sequential_client_is_never_refused_by_its_own_acknowledged_request() {
    // queue_depth 1 means one request in flight per shard. A client that waits for each
    // acknowledgement before sending the next never has more than one, so it must never be
    // told the queue is full (HTTP 503).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 16);
    cfg.queue_depth = 1;
    let engine = open(cfg);
    let mut refused = 0;
    for i in 0..200 {
        let p = Point::new("seq")
            .tag("d", "x")
            .field("v", Val::I64(i))
            .at(i);
        let prepared = engine
            .prepare(DB, p.line().as_bytes(), &opts(false))
            .unwrap();
        match engine.submit(prepared) {
            Ok(w) => {
                block_on(w.wait()).unwrap();
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(refused, 0, "{refused} of 200 sequential writes refused");
}

#[test]
fn checkpoints_commit_to_branch_heads_and_every_proof_step_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let block_rows = 5;
    let (engine, clock) = open_with_clock(config(dir.path(), 2, block_rows));
    let pubkey = engine.public_key();
    let mut rng = StdRng::seed_from_u64(3);
    let mut seq = 0;
    let mut round_of_height: HashMap<(String, u64), i64> = HashMap::new();
    let mut epochs = Vec::new();
    for round in 0..3i64 {
        let now = CLOCK_NS + round * 1_000_000_000;
        clock.set(now);
        let receipt = write(&engine, &workload(&mut rng, 23, &mut seq));
        for e in &receipt {
            round_of_height.insert((e.branch.clone(), e.height), now);
        }
        let epoch = engine.flush().expect("flush checkpoints");
        epochs.push(epoch);
        let cp = engine.latest_checkpoint().unwrap();
        assert_eq!(cp.header.epoch, epoch);
        assert_eq!(cp.header.time, now, "checkpoint time is the node clock");
        let heads: Vec<BranchEntry> = engine
            .branch_heads()
            .iter()
            .map(|(b, h)| BranchEntry {
                branch: *b,
                size: h.size,
                root: h.root,
            })
            .collect();
        assert_eq!(
            cp.entries, heads,
            "round {round}: the checkpoint names every branch head"
        );
        // Nothing moved: flushing again writes no checkpoint.
        assert_eq!(engine.flush(), Some(epoch));
    }
    assert_eq!(epochs, [0, 1, 2]);
    engine.shutdown();
    drop(engine);

    let records = verify_checkpoints(dir.path(), &pubkey);
    assert_eq!(records.len(), 3);
    // Every block: header chained, signed and equal to its branch log's record; every row:
    // included under rows_root at its index; times, counts, context and sealing time as sealed.
    let context = *blake3::hash(annals_engine::jsonld::default_context().as_bytes()).as_bytes();
    let logs: BTreeMap<String, BranchLog> = branch_dirs(dir.path())
        .into_iter()
        .map(|(b, d)| (to_hex(&b), BranchLog::open_read_only(&d, b).unwrap()))
        .collect();
    let mut blocks_seen = 0;
    for file in block_files(dir.path()) {
        let reader = BlockFileReader::open(&file).unwrap();
        for b in reader.blocks() {
            let h = BlockHeader::decode(&b.header).unwrap();
            let log = &logs[&to_hex(&h.branch)];
            let (logged, bytes, sig) = log.header(h.height).unwrap();
            assert_eq!(bytes, b.header);
            assert_eq!(sig.as_slice(), b.signature.as_slice());
            annals_format::sign::verify(&pubkey, &h.hash(), &sig)
                .expect("block signed by the node");
            let prev = if h.height == 0 {
                ZERO_HASH
            } else {
                log.block_hash(h.height - 1).unwrap()
            };
            assert_eq!(
                logged.prev, prev,
                "block {} chained to its predecessor",
                h.height
            );
            assert_eq!(h.context, context);
            assert_eq!(
                Some(&h.sealed_at),
                round_of_height.get(&(to_hex(&h.branch), h.height)),
                "sealed in the round it was filled"
            );
            let rows = row_encodings(
                &h.table,
                &reader.read_row_group(b.row_group as usize).unwrap(),
            )
            .unwrap();
            assert_eq!(rows.len(), h.row_count as usize);
            assert!(rows.len() <= block_rows && !rows.is_empty());
            let times: Vec<i64> = rows.iter().map(|r| decode_row(r).unwrap().time).collect();
            assert_eq!(
                (h.time_min, h.time_max),
                (*times.iter().min().unwrap(), *times.iter().max().unwrap())
            );
            let leaves: Vec<_> = rows.iter().map(|r| leaf_hash(r)).collect();
            for i in 0..leaves.len() {
                let path = inclusion_path(&mut LeafHashes(&leaves), i as u64, leaves.len() as u64)
                    .unwrap();
                assert!(verify_inclusion(
                    &leaves[i],
                    i as u64,
                    leaves.len() as u64,
                    &path,
                    &h.rows_root
                ));
            }
            blocks_seen += 1;
        }
    }
    let logged: u64 = logs.values().map(|l| l.size()).sum();
    assert_eq!(
        blocks_seen, logged,
        "every logged block is in exactly one block file"
    );
    let report = audit_ok(dir.path());
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.rows_checked, 69);
}

/// Rows so wide that one block's worth of them would not fit in one WAL frame (64 MiB): the
/// writer must split them over several frames rather than fail (and poison the shard).
#[test]
fn rows_wider_than_a_wal_frame_are_split_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 1, 1024));
    let blob = "x".repeat(60_000);
    let mut body = String::new();
    for i in 0..80 {
        body.push_str(&format!("wide,dev=d{i}"));
        for f in 0..15 {
            body.push_str(if f == 0 { " " } else { "," });
            body.push_str(&format!("s{f}=\"{blob}\""));
        }
        body.push_str(&format!(" {}\n", 1_700_000_000_000_000_000i64 + i));
    }
    assert!(
        body.len() > 64 << 20,
        "the request is larger than one WAL frame"
    );
    let out = write_with(&engine, &body, false).expect("wide rows are written");
    assert_eq!(out.rows, 80);
    engine.shutdown();
    drop(engine);
    // Reopen (replays nothing after a clean stop) and read every row back.
    let engine = open(config(dir.path(), 1, 1024));
    engine.shutdown();
    let ledger = ledger(dir.path());
    assert_eq!(ledger.len(), 80);
    assert!(ledger.values().all(|r| r.encoding.len() > 15 * 60_000));
}

/// A sealer that cannot write its block file stops its shard loudly: the failure is reported
/// (for `/health`), later writes to the shard are refused, and nothing acknowledged is lost
/// (the rows stay in the WAL and are recovered once the cause is removed).
#[test]
fn a_failed_sealer_is_reported_and_refuses_writes_without_losing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let point = |i: i64| {
        Point::new("m")
            .tag("host", "a")
            .field("v", Val::I64(i))
            .at(i)
    };
    let engine = open(config(dir.path(), 1, 4));
    write(&engine, &[point(1)]);
    engine.flush();
    assert!(engine.failure().is_none());
    // Sabotage: the branch's block directory becomes a file.
    let (branch, _) = branch_dirs(dir.path()).into_iter().next().unwrap();
    let blocks = dir.path().join("blocks").join(to_hex(&branch));
    std::fs::remove_dir_all(&blocks).unwrap();
    std::fs::write(&blocks, b"not a directory").unwrap();
    // Four more rows fill a block; acknowledged (durable in the WAL), then sealing fails.
    write(&engine, &[point(2), point(3), point(4), point(5)]);
    engine.flush();
    let failure = engine.failure().expect("the sealer failure is reported");
    assert!(failure.contains("shard 0"), "{failure}");
    assert!(
        write_with(&engine, &body(&[point(6)]), false).is_err(),
        "the stopped shard refuses writes"
    );
    engine.shutdown();
    drop(engine);
    // Cause removed: the next start rebuilds the block from the WAL; every acknowledged row is there.
    std::fs::remove_file(&blocks).unwrap();
    std::fs::create_dir(&blocks).unwrap();
    let engine = open(config(dir.path(), 1, 4));
    engine.shutdown();
    drop(engine);
    assert_eq!(ledger(dir.path()).len(), 5);
}

/// The writer logs a run of rows as Arrow columns or as canonical encodings, whichever is
/// smaller: dense rows as columns, sparse rows of a wide table (nulls cost columns bytes, not
/// encodings) as encodings. A crash image with both kinds in its WAL and no block sealed replays
/// into exactly the rows, positions and `tx_id`s the node itself stored.
#[test]
fn a_crash_image_replays_rows_logged_as_columns_and_as_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 1, 1024));
    let dense: Vec<Point> = (0..60)
        .map(|i| {
            Point::new("dense")
                .tag("host", &format!("h{}", i % 4))
                .field("celsius", Val::F64(i as f64 * 0.25))
                .field("n", Val::I64(i))
                .field("note", Val::Str(format!("reading {i}")))
                .at(i)
        })
        .collect();
    let sparse: Vec<Point> = (0..60)
        .map(|i| {
            Point::new("sparse")
                .tag("host", "h0")
                .field(&format!("f{}", i % 60), Val::U64(i as u64))
                .at(i)
        })
        .collect();
    let dense_receipt = write(&engine, &dense);
    let sparse_receipt = write(&engine, &sparse);
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    engine.shutdown();
    drop(engine);
    let stored = ledger(dir.path());
    assert_eq!(stored.len(), 120);
    check_entries_stored(&stored, &dense, &dense_receipt);
    check_entries_stored(&stored, &sparse, &sparse_receipt);

    // The image's WAL holds both record kinds (the first payload byte: 1 encodings, 4 columns).
    let mut kinds = BTreeSet::new();
    for shard in std::fs::read_dir(image.path().join("wal")).unwrap() {
        let cfg = annals_storage::wal::WalConfig {
            read_only: true,
            ..Default::default()
        };
        annals_storage::wal::replay_with(&shard.unwrap().path(), &cfg, |_, payload| {
            kinds.insert(payload[0]);
            Ok::<(), String>(())
        })
        .unwrap();
    }
    assert!(kinds.contains(&1) && kinds.contains(&4), "{kinds:?}");
    assert!(
        block_files(image.path()).is_empty(),
        "nothing was sealed yet"
    );

    let engine = open(config(image.path(), 1, 1024));
    engine.shutdown();
    drop(engine);
    let replayed = ledger(image.path());
    assert_eq!(replayed.len(), stored.len());
    assert_rows_kept(&stored, &replayed, "in replay");
    audit_ok(image.path());
}

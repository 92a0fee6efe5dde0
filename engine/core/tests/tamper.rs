//! Tamper detection: every change to a stopped node's files that alters what the ledger says
//! must be reported by `audit`, and `Engine::open` must not paper over it.
//!
//! Each test builds a small ledger, stops it, and damages a copy (the untouched original must
//! audit clean, so the copy's problems come from the damage alone).

mod common;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals_engine::audit::{audit, AuditReport};
use annals_format::block::BlockHeader;
use annals_storage::block_file::row_encodings;
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, UInt32Array};
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tempfile::TempDir;

const BLOCK_ROWS: usize = 4;

/// A stopped ledger: one shard, two tables, blocks of 4 rows, files of 3 blocks; three
/// requests of 12 rows per table, each flushed (so 3 checkpoints, and every branch has 9 full
/// blocks in 3 files).
fn base() -> TempDir {
    build_base(false)
}

/// The same ledger as [`base`], copied while the node still runs (after its last flush): what a
/// crash at that moment leaves, with every block still in the WAL. A clean shutdown retires
/// the WAL, so only such an image can rebuild lost block files.
fn live_image() -> TempDir {
    build_base(true)
}

fn build_base(live: bool) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 1, BLOCK_ROWS));
    for chunk in 0..3 {
        let pts: Vec<Point> = (0..12)
            .flat_map(|i| {
                let t = (chunk * 12 + i) as i64;
                [
                    Point::new("temp")
                        .tag("host", &format!("h{}", i % 3))
                        .field("celsius", Val::F64(t as f64 * 0.5))
                        .at(t),
                    Point::new("door")
                        .tag("room", "r1")
                        .field("open", Val::Bool(i % 2 == 0))
                        .field("n", Val::I64(t))
                        .at(t),
                ]
            })
            .collect();
        write(&engine, &pts);
        assert_eq!(engine.flush(), Some(chunk as u64));
    }
    if live {
        let image = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), image.path());
        engine.shutdown();
        return image;
    }
    engine.shutdown();
    drop(engine);
    let r = audit_ok(dir.path());
    assert_eq!(
        (
            r.rows_checked,
            r.blocks_checked,
            r.blocks_pending,
            r.checkpoints
        ),
        (72, 18, 0, 3)
    );
    dir
}

/// A copy of `src` damaged by `damage`, and the audit of the copy.
fn tampered(src: &Path, damage: impl FnOnce(&Path)) -> (TempDir, AuditReport) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(src, copy.path());
    damage(copy.path());
    let report = audit(copy.path()).expect("audit runs on a damaged directory");
    (copy, report)
}

fn assert_reported(r: &AuditReport, what: &str, location_part: &str) {
    assert!(!r.ok(), "{what}: audit found nothing wrong");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location.contains(location_part)),
        "{what}: no problem located in {location_part}: {:#?}",
        r.problems
    );
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The first block file holding three full blocks (the first file of a branch).
fn full_file(dir: &Path) -> PathBuf {
    block_files(dir)
        .into_iter()
        .find(|f| file_name(f) == "000000000000.parquet")
        .expect("a branch's first file")
}

/// Rewrites a block file as a clean Parquet file with the same `annals.*` footer metadata
/// (headers and signatures), after `edit` changed its row groups (one batch per row group).
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<RecordBatch>)) {
    let reader = annals_storage::block_file::BlockFileReader::open(path).unwrap();
    let mut batches: Vec<RecordBatch> = (0..reader.row_groups())
        .map(|i| reader.read_row_group(i).unwrap())
        .collect();
    let kv: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|k| k.key.starts_with("annals."))
        .collect();
    assert_eq!(kv.len(), 2, "annals.format and annals.blocks");
    edit(&mut batches);
    let tmp = path.with_extension("rewritten");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(BLOCK_ROWS))
        .build();
    let mut w = ArrowWriter::try_new(
        File::create(&tmp).unwrap(),
        reader.schema().clone(),
        Some(props),
    )
    .unwrap();
    for b in &batches {
        w.write(b).unwrap();
        w.flush().unwrap();
    }
    for k in kv {
        w.append_key_value_metadata(k);
    }
    w.close().unwrap();
    std::fs::rename(&tmp, path).unwrap();
    // The forgery is a well-formed block file: only re-hashing the rows can tell.
    annals_storage::block_file::BlockFileReader::open(path)
        .expect("rewritten file opens as a block file");
}

/// Byte offsets where each record of a `blocks.log` (or `checkpoints.log`) starts.
fn record_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        out.push(at as u64);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 12 + len;
    }
    assert_eq!(at, bytes.len(), "records tile the file");
    out
}

fn first_blocks_log(dir: &Path) -> PathBuf {
    branch_dirs(dir)[0].1.join("blocks.log")
}

#[test]
fn untouched_copy_audits_clean() {
    let base = base();
    let (_copy, r) = tampered(base.path(), |_| {});
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.rows_checked, 72);
    assert!(r.checkpoints >= 1);
}

/// Every row of every block of a block file, as canonical encodings; `None` if unreadable.
fn file_rows(path: &Path) -> Option<Vec<Vec<Vec<u8>>>> {
    let r = annals_storage::block_file::BlockFileReader::open(path).ok()?;
    (0..r.row_groups())
        .map(|i| {
            let h = BlockHeader::decode(&r.blocks()[i].header).ok()?;
            row_encodings(&h.table, &r.read_row_group(i).ok()?).ok()
        })
        .collect()
}

/// What flipping each byte of the column chunks of row group 1 of a branch's first block file
/// does: `(offsets, changed, reader_panicked)` where `changed` are the flips after which the
/// file yields other rows or none, and `reader_panicked` those on which reading panicked.
/// `check` runs on the damaged copy after every flip with (offset, rows changed).
fn flip_every_chunk_byte(mut check: impl FnMut(&Path, u64, bool)) -> (u64, u64, Vec<u64>) {
    let base = base();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(base.path(), copy.path());
    let file = full_file(copy.path());
    let original = file_rows(&file).unwrap();
    let md = ParquetRecordBatchReaderBuilder::try_new(File::open(&file).unwrap())
        .unwrap()
        .metadata()
        .clone();
    let rg = md.row_group(1);
    let ranges: Vec<(u64, u64)> = (0..rg.num_columns())
        .map(|c| rg.column(c).byte_range())
        .collect();
    let (mut total, mut changed, mut panicked) = (0, 0, Vec::new());
    for (start, len) in ranges {
        for at in start..start + len {
            total += 1;
            flip_byte(&file, at);
            match std::panic::catch_unwind(|| file_rows(&file)) {
                Err(_) => {
                    panicked.push(at);
                    check(copy.path(), at, true);
                }
                Ok(rows) => {
                    let differs = rows.as_ref() != Some(&original);
                    changed += differs as u64;
                    check(copy.path(), at, differs);
                }
            }
            flip_byte(&file, at);
        }
    }
    assert!(audit(copy.path()).unwrap().ok(), "every flip was undone");
    (total, changed, panicked)
}

#[test]
fn audit_reports_every_flipped_byte_that_changes_a_blocks_rows() {
    // Flip, one at a time, every byte of a block's column chunks (data and dictionary pages
    // with their headers). A flip that changes the rows the file yields, or makes them
    // unreadable, must be reported; bytes that carry no row data (statistics, bit-packing
    // padding) may change unnoticed but must be a minority. Flips on which the Parquet reader
    // panics are left to `audit_never_panics_on_a_flipped_byte`.
    let mut missed = Vec::new();
    let (total, changed, panicked) = flip_every_chunk_byte(|dir, at, differs| {
        let reader_panics = std::panic::catch_unwind(|| file_rows(&full_file(dir))).is_err();
        if differs && !reader_panics && audit(dir).unwrap().ok() {
            missed.push(at);
        }
    });
    assert!(
        missed.is_empty(),
        "flips at {missed:?} changed a block's rows and audit found nothing"
    );
    assert!(
        changed * 2 > total,
        "only {changed} of {total} flipped bytes changed the rows ({} panicked)",
        panicked.len()
    );
}

#[test]
fn audit_never_panics_on_a_flipped_byte() {
    // Some flips make the Parquet decoder panic; audit must still answer, and report them.
    let (mut crashed, mut silent) = (Vec::new(), Vec::new());
    let (_, _, reader_panicked) = flip_every_chunk_byte(|dir, at, _| {
        let reader_panics = std::panic::catch_unwind(|| file_rows(&full_file(dir))).is_err();
        match std::panic::catch_unwind(|| audit(dir)) {
            Err(_) => crashed.push(at),
            Ok(r) if reader_panics && r.as_ref().is_ok_and(|r| r.ok()) => silent.push(at),
            Ok(_) => {}
        }
    });
    assert!(
        crashed.is_empty(),
        "audit panicked on a block file with a flipped byte at offsets {crashed:?}"
    );
    assert!(
        silent.is_empty(),
        "flips at {silent:?} make the block unreadable and audit found nothing"
    );
    assert!(
        !reader_panicked.is_empty(),
        "no flip reaches the decoder panic any more: this test checks nothing"
    );
}

#[test]
fn audit_detects_a_truncated_block_file() {
    let base = base();
    let file = full_file(base.path());
    let rel = file.strip_prefix(base.path()).unwrap().to_owned();
    for keep in [0.5, 0.99] {
        let (_copy, r) = tampered(base.path(), |d| {
            let f = OpenOptions::new().write(true).open(d.join(&rel)).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len((len as f64 * keep) as u64).unwrap();
        });
        assert_reported(&r, &format!("truncated to {keep}"), &file_name(&file));
    }
}

#[test]
fn a_clean_rewrite_without_changes_audits_clean() {
    // Control for the forgeries below: the rewriting itself is not what audit objects to.
    let base = base();
    let rel = full_file(base.path())
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    let (_copy, r) = tampered(base.path(), |d| rewrite(&d.join(&rel), |_| {}));
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.rows_checked, 72);
}

#[test]
fn audit_detects_forged_values_reordered_rows_and_swapped_row_groups() {
    let base = base();
    let file = full_file(base.path());
    let rel = file.strip_prefix(base.path()).unwrap().to_owned();
    type Edit = Box<dyn Fn(&mut Vec<RecordBatch>)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "one value changed",
            Box::new(|batches| {
                let b = &batches[1];
                let cols: Vec<ArrayRef> = b
                    .columns()
                    .iter()
                    .map(|a| match a.data_type() {
                        DataType::Float64 => {
                            let v = a.as_primitive::<Float64Type>();
                            let out: Float64Array = v
                                .iter()
                                .enumerate()
                                .map(|(i, x)| if i == 2 { x.map(|x| x + 0.25) } else { x })
                                .collect();
                            Arc::new(out) as ArrayRef
                        }
                        DataType::Int64 => {
                            let v = a.as_primitive::<arrow::datatypes::Int64Type>();
                            let out: arrow::array::Int64Array = v
                                .iter()
                                .enumerate()
                                .map(|(i, x)| if i == 2 { x.map(|x| x + 1) } else { x })
                                .collect();
                            Arc::new(out) as ArrayRef
                        }
                        _ => a.clone(),
                    })
                    .collect();
                batches[1] = RecordBatch::try_new(b.schema(), cols).unwrap();
            }),
        ),
        (
            "two rows of a block swapped",
            Box::new(|batches| {
                let b = &batches[0];
                let idx = UInt32Array::from(vec![1u32, 0, 2, 3]);
                let cols: Vec<ArrayRef> = b
                    .columns()
                    .iter()
                    .map(|a| arrow::compute::take(a, &idx, None).unwrap())
                    .collect();
                batches[0] = RecordBatch::try_new(b.schema(), cols).unwrap();
            }),
        ),
        (
            "row groups of two blocks swapped",
            Box::new(|batches| batches.swap(0, 1)),
        ),
        (
            "a block's rows replaced by another block's",
            Box::new(|batches| {
                batches[2] = batches[0].clone();
            }),
        ),
    ];
    for (what, edit) in edits {
        let (_copy, r) = tampered(base.path(), |d| rewrite(&d.join(&rel), |b| edit(b)));
        assert_reported(&r, what, &file_name(&file));
        assert!(
            r.problems
                .iter()
                .any(|p| p.message.contains("rows_root") || p.message.contains("time range")),
            "{what}: {:#?}",
            r.problems
        );
    }
}

#[test]
fn audit_detects_a_flipped_byte_in_a_branch_log() {
    let base = base();
    let log = first_blocks_log(base.path());
    let rel = log.strip_prefix(base.path()).unwrap().to_owned();
    let branch_dir = file_name(log.parent().unwrap());
    let offsets = record_offsets(&log);
    assert_eq!(offsets.len(), 9);
    let len = std::fs::metadata(&log).unwrap().len();
    // A byte in the first record (valid records follow: corruption), one in a middle record's
    // signature, and one in the last record (looks like a torn write and is cut by a reader).
    for (what, at) in [
        ("first record", offsets[0] + 20),
        ("middle record", offsets[4] - 1),
        ("last record", len - 10),
    ] {
        let (_copy, r) = tampered(base.path(), |d| flip_byte(&d.join(&rel), at));
        assert_reported(&r, what, &branch_dir);
    }
}

#[test]
fn audit_detects_a_re_checksummed_forged_header_in_a_branch_log() {
    let base = base();
    let log = first_blocks_log(base.path());
    let rel = log.strip_prefix(base.path()).unwrap().to_owned();
    let last = *record_offsets(&log).last().unwrap() as usize;
    let (_copy, r) = tampered(base.path(), |d| {
        let path = d.join(&rel);
        let mut bytes = std::fs::read(&path).unwrap();
        let payload = bytes[last + 12..].to_vec();
        let header_len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
        let mut h = BlockHeader::decode(&payload[4..4 + header_len]).unwrap();
        h.time_max += 1;
        let mut forged = payload[..4].to_vec();
        forged.extend_from_slice(&h.encode());
        forged.extend_from_slice(&payload[4 + header_len..]);
        assert_eq!(forged.len(), payload.len());
        let sum = xxhash_rust::xxh3::xxh3_64(
            &[&(forged.len() as u32).to_le_bytes()[..], &forged].concat(),
        );
        bytes[last + 4..last + 12].copy_from_slice(&sum.to_le_bytes());
        bytes[last + 12..].copy_from_slice(&forged);
        std::fs::write(&path, bytes).unwrap();
        // tree.hashes is derived data: a forger recomputes it (an empty one is rebuilt on open).
        std::fs::write(path.with_file_name("tree.hashes"), b"").unwrap();
        // The forged record is well-formed: the log opens with it.
        let (b, dir) = branch_dirs(d).into_iter().next().unwrap();
        let opened = annals_storage::branch_log::BranchLog::open_read_only(&dir, b).unwrap();
        assert_eq!(opened.size(), 9);
        assert_eq!(opened.header(8).unwrap().0.time_max, h.time_max);
    });
    assert!(
        r.problems.iter().any(|p| p.message.contains("signature")),
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.message.contains("differs from the branch log")),
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.location.contains("checkpoints.log")),
        "{:#?}",
        r.problems
    );
}

#[test]
fn audit_detects_a_branch_log_cut_at_a_record_boundary() {
    let base = base();
    let log = first_blocks_log(base.path());
    let rel = log.strip_prefix(base.path()).unwrap().to_owned();
    let last = *record_offsets(&log).last().unwrap();
    let (_copy, r) = tampered(base.path(), |d| {
        OpenOptions::new()
            .write(true)
            .open(d.join(&rel))
            .unwrap()
            .set_len(last)
            .unwrap();
    });
    // The block file still holds block 8 and the checkpoint names size 9.
    assert!(
        r.problems
            .iter()
            .any(|p| p.message.contains("beyond its branch log")),
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.location.contains("checkpoints.log")),
        "{:#?}",
        r.problems
    );
}

#[test]
fn audit_detects_damaged_tree_hashes_and_a_damaged_earlier_checkpoint() {
    let base = base();
    let tree = branch_dirs(base.path())[0]
        .1
        .join("tree.hashes")
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    let (_copy, r) = tampered(base.path(), |d| flip_byte(&d.join(&tree), 40));
    assert_reported(&r, "tree.hashes", &file_name(tree.parent().unwrap()));

    // Epoch 0's `prev` field: later records follow, so this is corruption, not a torn write.
    let (_copy, r) = tampered(base.path(), |d| flip_byte(&d.join("checkpoints.log"), 30));
    assert_reported(&r, "checkpoints.log epoch 0", "checkpoints.log");
}

#[test]
fn audit_detects_a_damaged_latest_checkpoint() {
    let base = base();
    let offsets = record_offsets(&base.path().join("checkpoints.log"));
    assert_eq!(offsets.len(), 3);
    // Epoch 2's `prev` field: the newest signed checkpoint, possibly already in proofs.
    let (_copy, r) = tampered(base.path(), |d| {
        flip_byte(&d.join("checkpoints.log"), offsets[2] + 30)
    });
    assert_eq!(r.checkpoints, 2, "the damaged record is not counted");
    assert_reported(&r, "checkpoints.log epoch 2", "checkpoints.log");
}

/// Simulates a node whose WAL segments were trimmed (every block in a finished file).
fn remove_wal(dir: &Path) {
    std::fs::remove_dir_all(dir.join("wal")).unwrap();
}

fn try_open(dir: &Path) -> Result<annals_engine::Engine, annals_engine::EngineError> {
    annals_engine::Engine::open(
        config(dir, 1, BLOCK_ROWS),
        Arc::new(annals_engine::ManualClock::new(CLOCK_NS)),
    )
}

fn truncate_half(path: &Path) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
}

fn cut_last_record(log: &Path) {
    let last = *record_offsets(log).last().unwrap();
    OpenOptions::new()
        .write(true)
        .open(log)
        .unwrap()
        .set_len(last)
        .unwrap();
}

/// A row for the table of branch `branch` of the base ledger.
fn row_for(ledger: &std::collections::BTreeMap<String, StoredRow>, branch: &str) -> Point {
    let table = &ledger.values().find(|r| r.branch == branch).unwrap().table;
    if table.ends_with("/temp") {
        Point::new("temp")
            .tag("host", "h0")
            .field("celsius", Val::F64(1.0))
            .at(99)
    } else {
        Point::new("door")
            .tag("room", "r1")
            .field("n", Val::I64(99))
            .at(99)
    }
}

#[test]
fn open_rebuilds_damaged_or_deleted_block_files_and_a_cut_branch_log_from_the_wal() {
    let base = live_image();
    let original = ledger(base.path());
    let file = full_file(base.path())
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    let log = first_blocks_log(base.path())
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    // (damage, block files reported damaged, blocks rebuilt from the WAL); `None` where
    // either recovery path is right (a cut log tail can come back from the block file
    // footers or from the WAL).
    let cases: Vec<(&str, Damage<'_>, Option<usize>, Option<bool>)> = vec![
        (
            "truncated block file",
            Box::new(|d: &Path| truncate_half(&d.join(&file))),
            Some(1),
            Some(true),
        ),
        (
            "deleted block file",
            Box::new(|d: &Path| std::fs::remove_file(d.join(&file)).unwrap()),
            Some(0),
            Some(true),
        ),
        (
            "branch log cut by one record",
            Box::new(|d: &Path| cut_last_record(&d.join(&log))),
            None,
            None,
        ),
    ];
    for (what, damage, damaged, rebuilt) in cases {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(base.path(), copy.path());
        damage(copy.path());
        let engine = try_open(copy.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let rec = engine.recovery().clone();
        if let Some(n) = damaged {
            assert_eq!(rec.damaged.len(), n, "{what}: {:?}", rec.damaged);
        }
        if let Some(r) = rebuilt {
            assert_eq!(rec.blocks_resealed > 0, r, "{what}: {rec:?}");
        }
        engine.shutdown();
        drop(engine);
        let healed = ledger(copy.path());
        assert_eq!(healed.len(), original.len(), "{what}");
        for (tx, row) in &original {
            let now = &healed[tx];
            assert_eq!(
                (&now.branch, now.height, now.index, &now.encoding),
                (&row.branch, row.height, row.index, &row.encoding)
            );
        }
        for (b, dir) in branch_dirs(copy.path()) {
            let size = annals_storage::branch_log::BranchLog::open_read_only(&dir, b)
                .unwrap()
                .size();
            assert_eq!(size, 9, "{what}: every branch log whole again");
        }
        let r = audit(copy.path()).unwrap();
        assert!(r.ok(), "{what}: {:#?}", r.problems);
    }
}

#[test]
fn open_without_the_wal_reports_a_damaged_block_file_and_keeps_positions_unique() {
    let base = base();
    let file = full_file(base.path());
    let rel = file.strip_prefix(base.path()).unwrap().to_owned();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(base.path(), copy.path());
    truncate_half(&copy.path().join(&rel));
    remove_wal(copy.path());

    let engine = try_open(copy.path()).expect("a damaged block file is reported, not fatal");
    let damaged = &engine.recovery().damaged;
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert!(damaged[0].contains(&file_name(&file)), "{damaged:?}");
    // The node keeps writing, after every logged block.
    let entries = write(
        &engine,
        &[
            Point::new("temp")
                .tag("host", "h0")
                .field("celsius", Val::F64(1.0))
                .at(99),
            Point::new("door")
                .tag("room", "r1")
                .field("n", Val::I64(99))
                .at(99),
        ],
    );
    assert!(
        entries.iter().all(|e| e.height == 9 && e.index == 0),
        "{entries:?}"
    );
    engine.shutdown();
    drop(engine);
    // The damage is still reported: nothing was silently repaired or dropped.
    let r = audit(copy.path()).unwrap();
    assert_reported(&r, "after restart", &file_name(&file));
}

#[test]
fn open_refuses_a_deleted_block_file_that_the_wal_cannot_rebuild() {
    let base = base();
    let rel = full_file(base.path())
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(base.path(), copy.path());
    std::fs::remove_file(copy.path().join(&rel)).unwrap();
    remove_wal(copy.path());
    let err =
        try_open(copy.path()).expect_err("blocks in the branch log, in no file and not in the WAL");
    assert!(err.to_string().contains("block 0 of branch"), "{err}");
}

#[test]
fn audit_detects_a_deleted_block_file() {
    let base = base();
    let rel = full_file(base.path())
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    let (_copy, r) = tampered(base.path(), |d| {
        std::fs::remove_file(d.join(&rel)).unwrap();
        remove_wal(d);
    });
    assert_eq!(
        r.blocks_pending, 3,
        "the three blocks of the deleted file are in no file"
    );
    // Nothing can rebuild those blocks: 12 acknowledged rows are gone and audit must say so.
    assert!(!r.ok(), "12 acknowledged rows deleted and audit is ok");
}

#[test]
fn open_refuses_a_corrupt_branch_log() {
    let base = base();
    let log = first_blocks_log(base.path())
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(base.path(), copy.path());
    flip_byte(&copy.path().join(&log), 20);
    let err = try_open(copy.path()).expect_err("a corrupt branch log");
    assert!(err.to_string().contains("blocks.log"), "{err}");
}

#[test]
fn open_with_a_branch_log_behind_its_block_files_never_reuses_a_height() {
    // The last record of a branch log is lost (cut at a record boundary, e.g. a restored
    // backup), the WAL no longer holds the block, but its block file does, signed, the latest
    // checkpoint commits to it and receipts for its rows were handed out. Reusing its height
    // for new rows gives two different signed blocks, and two rows, one position.
    let base = base();
    let log = first_blocks_log(base.path());
    let branch = file_name(log.parent().unwrap());
    let rel = log.strip_prefix(base.path()).unwrap().to_owned();
    let before = ledger(base.path());
    let copy = tempfile::tempdir().unwrap();
    copy_dir(base.path(), copy.path());
    cut_last_record(&copy.path().join(&rel));
    remove_wal(copy.path());

    let engine = match try_open(copy.path()) {
        Err(_) => return, // refusing to start is a correct answer
        Ok(e) => e,
    };
    let e = write(&engine, &[row_for(&before, &branch)]).remove(0);
    engine.shutdown();
    drop(engine);
    let taken: Vec<u64> = before
        .values()
        .filter(|r| r.branch == e.branch)
        .map(|r| r.height)
        .collect();
    assert!(
        !taken.contains(&e.height),
        "new row placed at height {} of branch {}, which a stored, signed block already holds",
        e.height,
        e.branch
    );
    let r = audit(copy.path()).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
}

#[test]
fn audit_detects_a_missing_or_changed_json_ld_context() {
    use annals_engine::jsonld::{context_hash, context_path, default_context};
    let base = base();
    let hash = context_hash(default_context().as_bytes());
    assert_eq!(
        audit_ok(base.path()).contexts_checked,
        1,
        "both tables name the default"
    );
    let rel = context_path(base.path(), &hash)
        .strip_prefix(base.path())
        .unwrap()
        .to_owned();
    // Deleted: every block names a context nobody can resolve any more.
    let (_copy, r) = tampered(base.path(), |d| std::fs::remove_file(d.join(&rel)).unwrap());
    assert_reported(&r, "deleted context", "blocks.log height 0");
    assert!(
        r.problems.iter().any(|p| p.message.contains("is missing")),
        "{:#?}",
        r.problems
    );
    // Changed (one meaning swapped for another): the file no longer hashes to its name.
    let (_copy, r) = tampered(base.path(), |d| {
        let forged = default_context().replace("sosa:resultTime", "sosa:phenomenonTime");
        std::fs::write(d.join(&rel), forged).unwrap();
    });
    assert_reported(&r, "changed context", &file_name(&rel));
    assert_reported(&r, "changed context", "blocks.log height 0");
}

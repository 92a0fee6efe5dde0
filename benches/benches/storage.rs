//! The durable structures of `annals-storage`, fed with TSBS `iot` data:
//! - WAL: 1 MiB batches of rows records (one per prepared chunk, as a shard writer logs them)
//!   appended, then one `sync` (fdatasync) per batch, bytes/s; and the same without fsync;
//! - WAL records: a chunk's rows encoded as a rows record (canonical encodings) and as a batch
//!   record (Arrow IPC; by one encoder, as a writer does, and with the schema message built
//!   for each record), and a batch record decoded, per row, with each form's bytes printed;
//! - branch log: appending one block header (+ signature), with and without its fsync, per block;
//! - block file: one sealed 16384-row block written as a Parquet row group (Snappy) into an open
//!   file: as one batch, as the 14 chunks the sealer gets it in, and as those chunks joined
//!   first; and a whole one-block file (create, write, footer, fsync, rename, directory fsync).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use annals_engine::prepare::Chunk;
use annals_engine::walrec;
use annals_format::merkle::root_of;
use annals_format::BlockHeader;
use annals_storage::block_file::BlockFileWriter;
use annals_storage::branch_log::BranchLog;
use annals_storage::wal::{Wal, WalConfig};
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Bytes of WAL payload per sync.
const WAL_BATCH_BYTES: usize = 1 << 20;
/// Rows of a default block (`--block-rows`).
const BLOCK_ROWS: usize = 16_384;

/// Every chunk of the first `bodies` bodies of `lines` lines, prepared for `shards` shards.
fn chunks(bodies: usize, lines: usize, shards: usize) -> Vec<Chunk> {
    common::prepared_chunks(bodies, lines, shards)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

fn wal(c: &mut Criterion) {
    // WAL rows records of real chunks (2 shards, 2 tables: ~1250 rows, ~300 KB each) until the
    // batch holds 1 MiB.
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0usize;
    for (i, chunk) in chunks(4, common::BODY_LINES, 2).iter().enumerate() {
        if batch_bytes >= WAL_BATCH_BYTES {
            break;
        }
        let mut f = Vec::with_capacity(chunk.enc.len() + 4 * chunk.rows() + 64);
        walrec::encode_rows(
            &mut f,
            &[i as u8; 16],
            0,
            0,
            (0..chunk.rows()).map(|r| chunk.encoding(r)),
        );
        batch_bytes += f.len();
        frames.push(f);
    }
    assert!(
        batch_bytes >= WAL_BATCH_BYTES,
        "not enough chunks for a 1 MiB batch"
    );
    eprintln!("wal: batch of {} frames, {batch_bytes} bytes", frames.len());

    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Bytes(batch_bytes as u64));
    for (name, no_sync) in [("append_1MiB+sync", false), ("append_1MiB_no_sync", true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wal = Wal::open(
            dir.path(),
            WalConfig {
                no_sync,
                ..WalConfig::default()
            },
        )
        .expect("WAL opens");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for f in &frames {
                        wal.append(black_box(f)).expect("append");
                    }
                    wal.sync().expect("sync");
                    spent += start.elapsed();
                    // Keep the directory small, as the engine's trim does; not timed.
                    let current = wal.current_segment();
                    if current > 0 {
                        wal.remove_segments_before(current).expect("trim");
                    }
                }
                spent
            })
        });
    }
    group.finish();
}

/// `chunk` as a rows record, into `out`.
fn rows_record(chunk: &Chunk, out: &mut Vec<u8>) {
    out.clear();
    walrec::encode_rows(
        out,
        &[0; 16],
        0,
        0,
        (0..chunk.rows()).map(|r| chunk.encoding(r)),
    );
}

/// `chunk` as a batch record, into `out`.
fn batch_record(encoder: &mut walrec::BatchEncoder, chunk: &Chunk, out: &mut Vec<u8>) {
    out.clear();
    encoder
        .encode(out, &[0; 16], 0, 0, &chunk.table.name, &chunk.batch)
        .expect("batch encodes");
}

fn wal_records(c: &mut Criterion) {
    let chunks = chunks(4, common::BODY_LINES, 2);
    let rows: usize = chunks.iter().map(Chunk::rows).sum();
    let mut out = Vec::new();
    let mut rows_bytes = 0usize;
    let mut records: Vec<Vec<u8>> = Vec::with_capacity(chunks.len());
    let mut encoder = walrec::BatchEncoder::default();
    for chunk in &chunks {
        rows_record(chunk, &mut out);
        rows_bytes += out.len();
        let mut record = Vec::new();
        batch_record(&mut encoder, chunk, &mut record);
        records.push(record);
    }
    let batch_bytes: usize = records.iter().map(Vec::len).sum();
    eprintln!(
        "wal records: {} chunks, {rows} rows; rows records {rows_bytes} bytes ({:.1} per row), batch records {batch_bytes} bytes ({:.1} per row)",
        chunks.len(),
        rows_bytes as f64 / rows as f64,
        batch_bytes as f64 / rows as f64
    );
    let mut group = c.benchmark_group("wal_record");
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("rows", |b| {
        b.iter(|| {
            for chunk in &chunks {
                rows_record(chunk, &mut out);
                black_box(&out);
            }
        })
    });
    group.bench_function("batch", |b| {
        // One encoder, as a writer keeps: each table's schema message is built once.
        b.iter(|| {
            for chunk in &chunks {
                batch_record(&mut encoder, chunk, &mut out);
                black_box(&out);
            }
        })
    });
    group.bench_function("batch_schema_each_time", |b| {
        b.iter(|| {
            for chunk in &chunks {
                batch_record(&mut walrec::BatchEncoder::default(), chunk, &mut out);
                black_box(&out);
            }
        })
    });
    group.bench_function("batch_decode", |b| {
        b.iter(|| {
            for r in &records {
                black_box(walrec::decode(r).expect("record decodes"));
            }
        })
    });
    group.finish();
}

/// The next header of `log`, as the sealer builds it.
fn next_header(log: &BranchLog, rows_root: &[u8; 32]) -> BlockHeader {
    let height = log.size();
    BlockHeader {
        table: format!("{}/readings", common::DB),
        branch: log.branch(),
        height,
        prev: log.head_hash(),
        rows_root: *rows_root,
        row_count: BLOCK_ROWS as u32,
        time_min: 1_451_606_400_000_000_000 + height as i64,
        time_max: 1_451_606_410_000_000_000 + height as i64,
        context: [2u8; 32],
        sealed_at: 1_700_000_000_000_000_000 + height as i64,
    }
}

fn branch_log(c: &mut Criterion) {
    // The log does not check signatures (the sealer signs, audits verify): a fixed one will do,
    // so only the log is measured.
    let signature = [5u8; 64];
    let rows_root = [3u8; 32];
    let mut group = c.benchmark_group("branch_log");
    group.throughput(Throughput::Elements(1));
    for (name, sync) in [("append+sync", true), ("append", false)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = BranchLog::open(dir.path(), [1u8; 16]).expect("branch log opens");
        group.bench_function(name, |b| {
            b.iter(|| {
                let header = next_header(&log, &rows_root);
                log.append(black_box(&header), &signature).expect("append");
                if sync {
                    log.sync().expect("sync");
                }
            })
        });
        eprintln!("branch_log {name}: {} blocks appended", log.size());
    }
    group.finish();
}

fn block_file(c: &mut Criterion) {
    // One table's rows of a ~33,000-line request on one shard: more than a block of `readings`.
    let chunk = chunks(1, 2 * BLOCK_ROWS + 1000, 1)
        .into_iter()
        .find(|c| c.table.name.ends_with("/readings"))
        .expect("a readings chunk");
    assert!(chunk.rows() >= BLOCK_ROWS, "{} rows", chunk.rows());
    let batch = chunk.batch.slice(0, BLOCK_ROWS);
    let schema = batch.schema();
    let header = BlockHeader {
        table: chunk.table.name.clone(),
        branch: [1u8; 16],
        height: 0,
        prev: [0u8; 32],
        rows_root: root_of(&chunk.leaf_hashes[..BLOCK_ROWS]),
        row_count: BLOCK_ROWS as u32,
        time_min: chunk.times[..BLOCK_ROWS]
            .iter()
            .copied()
            .min()
            .expect("rows"),
        time_max: chunk.times[..BLOCK_ROWS]
            .iter()
            .copied()
            .max()
            .expect("rows"),
        context: chunk.table.context_hash,
        sealed_at: 1_700_000_000_000_000_000,
    };
    let signature = [5u8; 64];

    let mut group = c.benchmark_group("block_file");
    group.throughput(Throughput::Elements(BLOCK_ROWS as u64));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = 0usize;
    // The block as one batch (`write_block_16384`), and the same number of rows as the sealer
    // gets them: the `readings` chunks of 5000-line requests on two shards (about 1,250 rows
    // each, each with its own tag dictionaries), written as they are (`parts`) and joined into
    // one batch first (`parts_joined`, what the sealer did before it handed the chunks over).
    let mut parts: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    for c in chunks(16, common::BODY_LINES, 2) {
        let fits = parts.first().is_none_or(|p| p.schema() == c.batch.schema());
        if rows < BLOCK_ROWS && c.table.name.ends_with("/readings") && fits {
            let take = c.rows().min(BLOCK_ROWS - rows);
            parts.push(c.batch.slice(0, take));
            rows += take;
        }
    }
    assert_eq!(rows, BLOCK_ROWS, "enough readings rows for a block");
    eprintln!("block_file: the sealer's block in {} parts", parts.len());
    let whole = [batch.clone()];
    for (name, parts, join) in [
        ("write_block_16384", &whole[..], false),
        ("write_block_16384_parts", &parts[..], false),
        ("write_block_16384_parts_joined", &parts[..], true),
    ] {
        let parts_schema = parts[0].schema();
        let mut file_bytes = 0usize;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                files += 1;
                let mut w = BlockFileWriter::create(
                    dir.path(),
                    &format!("{files:08}"),
                    parts_schema.clone(),
                    BLOCK_ROWS,
                )
                .expect("block file created");
                let start = Instant::now();
                for _ in 0..iters {
                    if join {
                        let joined =
                            arrow::compute::concat_batches(&parts_schema, black_box(parts))
                                .expect("parts join");
                        w.write_block(std::slice::from_ref(&joined), &header, &signature, &[])
                    } else {
                        w.write_block(black_box(parts), &header, &signature, &[])
                    }
                    .expect("block written");
                }
                let spent = start.elapsed();
                file_bytes = w.bytes_written() / iters as usize;
                let (path, _) = w.finish().expect("file finished");
                std::fs::remove_file(path).expect("file removed");
                spent
            })
        });
        eprintln!("block_file: {name}: {file_bytes} bytes per 16384-row block");
    }
    group.bench_function("one_block_file_16384", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                files += 1;
                let start = Instant::now();
                let mut w = BlockFileWriter::create(
                    dir.path(),
                    &format!("{files:08}"),
                    schema.clone(),
                    BLOCK_ROWS,
                )
                .expect("block file created");
                w.write_block(
                    black_box(std::slice::from_ref(&batch)),
                    &header,
                    &signature,
                    &[],
                )
                .expect("block written");
                let (path, _) = w.finish().expect("file finished");
                spent += start.elapsed();
                std::fs::remove_file(path).expect("file removed");
            }
            spent
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = wal, wal_records, branch_log, block_file
}
criterion_main!(benches);

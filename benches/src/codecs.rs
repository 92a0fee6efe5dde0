//! `annals-bench codecs`: what the block files' Parquet compression costs a scan.
//!
//! Reads the row groups of the given block files, writes them again under each codec (with
//! the block writer's other settings: pages of 1024 rows, page statistics, one row group per
//! block), then decodes column sets the way a scan does: from a file handle, and from bytes
//! in memory (as a mapped file gives them). One thread, best of `runs`. Prints a markdown table.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

/// Rows per page, as the block writer sets them.
const PAGE_ROWS: usize = 1024;

fn properties(codec: Compression) -> WriterProperties {
    WriterProperties::builder()
        .set_write_batch_size(PAGE_ROWS)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_compression(codec)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Every row group of `path`, as batches.
fn row_groups(path: &Path) -> Result<Vec<Vec<RecordBatch>>> {
    let data = Bytes::from(std::fs::read(path).with_context(|| path.display().to_string())?);
    let meta = ArrowReaderMetadata::load(&data, Default::default())?;
    let mut out = Vec::new();
    for rg in 0..meta.metadata().num_row_groups() {
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(data.clone(), meta.clone())
            .with_row_groups(vec![rg])
            .build()?;
        out.push(reader.collect::<std::result::Result<Vec<_>, _>>()?);
    }
    Ok(out)
}

/// Decodes `columns` of every row group of `files`; rows decoded.
fn decode(files: &[(PathBuf, Bytes)], columns: &[&str], from_bytes: bool) -> Result<usize> {
    let mut rows = 0;
    for (path, data) in files {
        let meta = ArrowReaderMetadata::load(data, Default::default())?;
        let roots: Vec<usize> = columns
            .iter()
            .filter_map(|c| meta.schema().index_of(c).ok())
            .collect();
        let mask = ProjectionMask::roots(meta.parquet_schema(), roots);
        for rg in 0..meta.metadata().num_row_groups() {
            let batches: Box<dyn Iterator<Item = _>> = if from_bytes {
                Box::new(
                    ParquetRecordBatchReaderBuilder::new_with_metadata(data.clone(), meta.clone())
                        .with_row_groups(vec![rg])
                        .with_projection(mask.clone())
                        .with_batch_size(8192)
                        .build()?,
                )
            } else {
                Box::new(
                    ParquetRecordBatchReaderBuilder::new_with_metadata(
                        File::open(path)?,
                        meta.clone(),
                    )
                    .with_row_groups(vec![rg])
                    .with_projection(mask.clone())
                    .with_batch_size(8192)
                    .build()?,
                )
            };
            for b in batches {
                rows += b?.num_rows();
            }
        }
    }
    Ok(rows)
}

pub(crate) fn run(
    files: &[PathBuf],
    column_sets: &[String],
    out_dir: &Path,
    runs: usize,
) -> Result<()> {
    let mut groups = Vec::new();
    for f in files {
        groups.push(row_groups(f)?);
    }
    let codecs = [
        ("zstd(1)", Compression::ZSTD(ZstdLevel::try_new(1)?)),
        ("lz4_raw", Compression::LZ4_RAW),
        ("snappy", Compression::SNAPPY),
        ("none", Compression::UNCOMPRESSED),
    ];
    let sets: Vec<Vec<&str>> = column_sets
        .iter()
        .map(|s| s.split(',').map(str::trim).collect())
        .collect();
    println!("| codec | MiB | columns | from | ms (1 thread) | rows |");
    println!("|---|---:|---|---|---:|---:|");
    for (name, codec) in codecs {
        let dir = out_dir.join(name.replace(['(', ')'], ""));
        std::fs::create_dir_all(&dir)?;
        let mut written = Vec::new();
        let mut bytes = 0u64;
        for (i, rgs) in groups.iter().enumerate() {
            let Some(schema) = rgs.iter().flatten().next().map(|b| b.schema()) else {
                continue;
            };
            let path = dir.join(format!("{i}.parquet"));
            let mut w =
                ArrowWriter::try_new(File::create(&path)?, schema, Some(properties(codec)))?;
            for rg in rgs {
                for b in rg {
                    w.write(b)?;
                }
                w.flush()?;
            }
            w.close()?;
            bytes += std::fs::metadata(&path)?.len();
            let data = Bytes::from(std::fs::read(&path)?);
            written.push((path, data));
        }
        for cols in &sets {
            for from_bytes in [false, true] {
                let mut best = f64::MAX;
                let mut rows = 0;
                for _ in 0..runs.max(1) {
                    let t = Instant::now();
                    rows = decode(&written, cols, from_bytes)?;
                    best = best.min(t.elapsed().as_secs_f64() * 1e3);
                }
                println!(
                    "| {name} | {:.1} | {} | {} | {best:.1} | {rows} |",
                    bytes as f64 / (1 << 20) as f64,
                    cols.join(", "),
                    if from_bytes { "memory" } else { "file" },
                );
            }
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

//! `gen --format parquet`: the TSBS iot workload as one Parquet file per table
//! (`DIR/readings.parquet`, `DIR/diagnostics.parquet`), from the same generated lines as the
//! line-protocol output.
//!
//! The stream is generated [`CHUNK_LINES`] lines at a time; each chunk is parsed by annals' own
//! line-protocol parser into one Arrow batch per table ([`flight::lp_to_arrow`], the batches
//! `flight` and `compare` send by `DoPut`), projected onto the table's fixed schema and handed
//! to that table's [`ArrowWriter`], which closes a row group every [`ROW_GROUP_ROWS_MAX`] rows.
//! Memory is one chunk plus one open row group per table, whatever the scale.
//!
//! Schema, fixed per table up front from the TSBS iot definition ([`tsbs::TABLES`]): a file's
//! schema is written before its first row group, and the union of columns a stream has is only
//! known once it ends, so it is not taken from the data. Columns are ordered as `DoPut`
//! batches order them: the tags by name (`Utf8`, nullable, with the field metadata
//! `annals.kind = "tag"`, so a file can be sent to annals by `DoPut` as it is), the fields by
//! name (`Float64`, `status` `Int64`, nullable), then `time` (`Timestamp(Nanosecond)` without
//! a time zone, never null: the type annals' tables and its Parquet export use). A tag or
//! field a line lacks (a cleared tag, a null field) is null. Rows keep the order of the line
//! stream, late rows included; nothing is sorted. Compression: Snappy, as annals' own
//! `format=parquet` export.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals_bench::tsbs::{self, FieldType, GenStats, IotConfig, TableColumns};
use anyhow::{bail, ensure, Context, Result};
use arrow::array::{new_null_array, ArrayRef};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::flight::{self, KIND_KEY, KIND_TAG, TIME_COLUMN};

/// Lines generated and converted at a time.
pub(crate) const CHUNK_LINES: usize = 10_000;
/// Rows of one table buffered before its row group is written.
pub(crate) const ROW_GROUP_ROWS_MAX: usize = 128 * 1024;

/// The Arrow schema of `table`'s Parquet file (see the module doc).
pub(crate) fn table_schema(table: &TableColumns) -> SchemaRef {
    let tag_meta = HashMap::from([(KIND_KEY.to_owned(), KIND_TAG.to_owned())]);
    let mut tags: Vec<&str> = table.tags.to_vec();
    tags.sort_unstable();
    let mut fields: Vec<(&str, FieldType)> = table.fields.to_vec();
    fields.sort_unstable_by_key(|(name, _)| *name);
    let mut columns: Vec<Field> = tags
        .into_iter()
        .map(|t| Field::new(t, DataType::Utf8, true).with_metadata(tag_meta.clone()))
        .collect();
    columns.extend(fields.into_iter().map(|(name, ty)| {
        let data_type = match ty {
            FieldType::Float => DataType::Float64,
            FieldType::Integer => DataType::Int64,
        };
        Field::new(name, data_type, true)
    }));
    columns.push(Field::new(
        TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        false,
    ));
    Arc::new(Schema::new(columns))
}

/// `batch` with `schema`'s columns: its own where it has them, nulls where it lacks them.
/// Fails on a column the schema does not have or of another type.
fn project(batch: &RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    let have = batch.schema();
    for field in have.fields() {
        let Ok(want) = schema.field_with_name(field.name()) else {
            bail!(
                "table {table}: column {:?} is not in its fixed schema",
                field.name()
            );
        };
        ensure!(
            want.data_type() == field.data_type(),
            "table {table}: column {:?} is {}, its fixed schema says {}",
            field.name(),
            field.data_type(),
            want.data_type()
        );
    }
    let rows = batch.num_rows();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => new_null_array(f.data_type(), rows),
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns)
        .with_context(|| format!("table {table}: projecting a batch onto the fixed schema"))
}

/// One table's file being written.
#[derive(Debug)]
struct TableFile {
    schema: SchemaRef,
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

/// What [`write`] wrote.
#[derive(Debug)]
pub(crate) struct ParquetOutput {
    /// Per table, in [`tsbs::TABLES`] order: the file, its rows and its row groups.
    pub(crate) files: Vec<(PathBuf, u64, usize)>,
    pub(crate) stats: GenStats,
}

/// Generates `cfg`'s workload into `dir/<table>.parquet` (the directory is created if
/// missing; existing files are replaced), row groups of at most `row_group_rows` rows.
pub(crate) fn write(cfg: &IotConfig, dir: &Path, row_group_rows: usize) -> Result<ParquetOutput> {
    ensure!(row_group_rows > 0, "row groups need at least one row");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut files = tsbs::TABLES
        .iter()
        .map(|t| {
            let schema = table_schema(t);
            let path = dir.join(format!("{}.parquet", t.table));
            let file =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            let writer = ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))
                .with_context(|| format!("starting {}", path.display()))?;
            Ok((
                t.table,
                TableFile {
                    schema,
                    path,
                    writer,
                    rows: 0,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut chunks = cfg.batches(CHUNK_LINES);
    for (i, chunk) in chunks.by_ref().enumerate() {
        let tables = flight::lp_to_arrow(&chunk.body).with_context(|| format!("chunk {i}"))?;
        for tb in tables {
            let Some((_, out)) = files.iter_mut().find(|(name, _)| *name == tb.table) else {
                bail!("table {:?} is not in the TSBS iot schema", tb.table);
            };
            let batch = project(&tb.batch, &out.schema, &tb.table)?;
            out.writer
                .write(&batch)
                .with_context(|| format!("writing {}", out.path.display()))?;
            out.rows += batch.num_rows() as u64;
        }
    }
    let stats = chunks.stats();
    let mut written = Vec::with_capacity(files.len());
    for (_, out) in files {
        let meta = out
            .writer
            .close()
            .with_context(|| format!("finishing {}", out.path.display()))?;
        ensure!(
            meta.file_metadata().num_rows() as u64 == out.rows,
            "{}: the footer counts {} rows, {} were written",
            out.path.display(),
            meta.file_metadata().num_rows(),
            out.rows
        );
        written.push((out.path, out.rows, meta.num_row_groups()));
    }
    let total: u64 = written.iter().map(|(_, rows, _)| rows).sum();
    ensure!(
        total == stats.emitted,
        "{total} rows written to Parquet, {} lines generated",
        stats.emitted
    );
    Ok(ParquetOutput {
        files: written,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampNanosecondType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::time::Duration;

    /// Rows per table in the line protocol of `cfg`.
    fn lp_rows(cfg: &IotConfig) -> HashMap<String, u64> {
        let mut rows = HashMap::new();
        let mut gen = cfg.generator();
        let mut line = Vec::new();
        while gen.next_line(&mut line) {
            let table = line.split(|&b| b == b',').next().unwrap();
            *rows
                .entry(String::from_utf8(table.to_vec()).unwrap())
                .or_default() += 1;
            line.clear();
        }
        rows
    }

    #[test]
    fn generated_parquet_reads_back_with_every_row_and_the_fixed_columns() {
        let cfg = IotConfig::new(5, Duration::from_secs(3600), 7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Small row groups, so a file has several and rows cross chunk boundaries.
        let out = write(&cfg, dir.path(), 1000).unwrap();
        let want = lp_rows(&cfg);
        assert_eq!(out.stats.emitted, want.values().sum::<u64>());
        assert!(out.stats.null_fields > 0 && out.stats.late > 0, "irregular");

        let mut files = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        files.sort();
        assert_eq!(files, ["diagnostics.parquet", "readings.parquet"]);

        let expected_columns = [
            (
                "readings",
                vec![
                    "device_version",
                    "driver",
                    "fleet",
                    "fuel_capacity",
                    "load_capacity",
                    "model",
                    "name",
                    "nominal_fuel_consumption",
                    "elevation",
                    "fuel_consumption",
                    "grade",
                    "heading",
                    "latitude",
                    "longitude",
                    "velocity",
                    "time",
                ],
            ),
            (
                "diagnostics",
                vec![
                    "device_version",
                    "driver",
                    "fleet",
                    "fuel_capacity",
                    "load_capacity",
                    "model",
                    "name",
                    "nominal_fuel_consumption",
                    "current_load",
                    "fuel_state",
                    "status",
                    "time",
                ],
            ),
        ];
        for (table, columns) in expected_columns {
            let path = dir.path().join(format!("{table}.parquet"));
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                .unwrap()
                .with_batch_size(4096);
            assert!(reader.metadata().num_row_groups() > 1, "{table}");
            let schema = reader.schema().clone();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names, columns, "{table}");
            for f in schema.fields() {
                let expected = match f.name().as_str() {
                    "time" => DataType::Timestamp(TimeUnit::Nanosecond, None),
                    "status" => DataType::Int64,
                    n if tsbs::TAG_KEYS.contains(&n) => DataType::Utf8,
                    _ => DataType::Float64,
                };
                assert_eq!(f.data_type(), &expected, "{table}.{}", f.name());
                assert_eq!(f.is_nullable(), f.name() != "time", "{table}.{}", f.name());
                let is_tag = f.metadata().get(KIND_KEY).map(String::as_str) == Some(KIND_TAG);
                assert_eq!(is_tag, tsbs::TAG_KEYS.contains(&f.name().as_str()));
            }
            let (mut rows, mut nulls, mut first_time) = (0u64, 0usize, i64::MAX);
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                rows += batch.num_rows() as u64;
                nulls += batch
                    .columns()
                    .iter()
                    .map(|c| c.null_count())
                    .sum::<usize>();
                let time = batch
                    .column_by_name("time")
                    .unwrap()
                    .as_primitive::<TimestampNanosecondType>();
                first_time = first_time.min(time.values().iter().copied().min().unwrap());
            }
            assert_eq!(rows, want[table], "{table}");
            assert!(nulls > 0, "{table}: null fields and cleared tags are nulls");
            assert_eq!(first_time, cfg.start_ns, "{table}");
            let written = out.files.iter().find(|(p, _, _)| *p == path).unwrap();
            assert_eq!(written.1, rows);
        }
    }

    #[test]
    fn columns_outside_the_schema_are_refused() {
        let schema = table_schema(&tsbs::TABLES[1]);
        let tables = flight::lp_to_arrow(b"diagnostics,name=t status=1.5 1\n").unwrap();
        let err = project(&tables[0].batch, &schema, "diagnostics").unwrap_err();
        assert!(format!("{err:#}").contains("status"), "{err:#}");
        let tables = flight::lp_to_arrow(b"diagnostics,name=t speed=1 1\n").unwrap();
        let err = project(&tables[0].batch, &schema, "diagnostics").unwrap_err();
        assert!(format!("{err:#}").contains("speed"), "{err:#}");
    }
}

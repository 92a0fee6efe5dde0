//! Block files: many sealed blocks of one branch in one Parquet file, one row group per block.
//!
//! A file is written under a `.tmp` name while blocks are appended, then finished (footer with
//! key-value metadata `annals.format = "1"` and `annals.blocks`, the JSON list of the blocks'
//! headers and signatures in row-group order), fsynced and renamed to its final name, and the
//! directory fsynced. A `.tmp` file is therefore never a durable file: after a crash it is
//! deleted and its blocks are rebuilt from the WAL, which the engine keeps until the rename.
//!
//! The Arrow schema of a block is derived from the ledger column kinds ([`arrow_type`]):
//! `time` is `Timestamp(ns)`, tags are `Dictionary(Int32, Utf8)`, fields are `Float64`,
//! `Int64`, `UInt64`, `Boolean` or `Utf8`. [`row_encodings`] turns a block's rows back into
//! canonical row encodings, which is what an audit re-hashes.
//!
//! A row group is written column by column: tag columns by annals (`tag_chunk.rs`: their Arrow
//! dictionary becomes the Parquet one), the others by parquet-rs's Arrow column writers.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals_format::block::BlockHeader;
use annals_format::row::{encode_row, ColumnRef, Kind, ValueRef};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampNanosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::metadata::{KeyValue, PageIndexPolicy, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::tag_filter::TagFilter;

/// Name of the time column in every block.
pub const TIME_COLUMN: &str = "time";
/// Key-value metadata key holding the format version.
pub const META_FORMAT: &str = "annals.format";
/// Key-value metadata key holding the blocks' headers and signatures.
pub const META_BLOCKS: &str = "annals.blocks";
/// Suffix of a file still being written.
pub const TMP_SUFFIX: &str = ".parquet.tmp";
/// Suffix of a finished file.
pub const FILE_SUFFIX: &str = ".parquet";
/// Rows per proof piece: each block lists the Merkle roots of its consecutive pieces of this
/// many rows ([`BlockEntry::chunk_roots`]), so the proof of one row reads and hashes the rows
/// of its piece only, never the whole block.
pub const PROOF_CHUNK_ROWS: usize = 256;
/// Largest dictionary page of a field column (parquet-rs writes fields; tags have their own
/// chunks): 2,048 distinct 8-byte values. A column with more distinct values in a block falls
/// back to `PLAIN` from there on. parquet-rs's default, 1 MiB, never fell back within a
/// 16,384-row block, so a column of distinct values (coordinates, counters) was interned row
/// by row into a dictionary larger than its values, only to write more bytes: a block of TSBS
/// `readings` is written 18–26 % faster and is 8.6 % smaller with this limit, and columns of a
/// few hundred values (readings quantised to a step) keep their dictionary
/// (docs/PERFORMANCE.md, "Sealing without joins").
pub const FIELD_DICTIONARY_BYTES_MAX: usize = 16 << 10;
/// Rows per Parquet data page: a proof's piece of rows lies in one page per column (pages
/// start at multiples of this), and the page index lets the reader skip the others. One
/// exception: parquet-rs cuts a string field's page where it falls back from its dictionary,
/// which for long values happens mid-page (the page after it then ends on the next multiple).
pub const PAGE_ROWS: usize = 1024;

/// Errors reading or writing block files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockFileError {
    #[error("block file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("block file {path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("block file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("block of table {table}: column {column:?} has unsupported type {data_type}")]
    Schema {
        table: String,
        column: String,
        data_type: DataType,
    },
}

/// The Arrow type of a ledger column kind.
pub fn arrow_type(kind: Kind) -> DataType {
    match kind {
        Kind::Tag => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        Kind::F64 => DataType::Float64,
        Kind::I64 => DataType::Int64,
        Kind::U64 => DataType::UInt64,
        Kind::Bool => DataType::Boolean,
        Kind::Str => DataType::Utf8,
    }
}

/// The ledger kind of an Arrow column, if it is one this format writes.
pub fn kind_of(data_type: &DataType) -> Option<Kind> {
    Some(match data_type {
        DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => Kind::Tag,
        DataType::Float64 => Kind::F64,
        DataType::Int64 => Kind::I64,
        DataType::UInt64 => Kind::U64,
        DataType::Boolean => Kind::Bool,
        DataType::Utf8 => Kind::Str,
        _ => return None,
    })
}

/// The `time` column's field.
pub fn time_field() -> Field {
    Field::new(
        TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        false,
    )
}

/// An Arrow schema for a table whose columns are `(name, kind)` in table order.
pub fn table_schema<'a>(columns: impl IntoIterator<Item = (&'a str, Kind)>) -> SchemaRef {
    let mut fields = vec![time_field()];
    fields.extend(
        columns
            .into_iter()
            .map(|(n, k)| Field::new(n, arrow_type(k), true)),
    );
    Arc::new(Schema::new(fields))
}

/// One block as listed in a file's footer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// Encoded header (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub header: Vec<u8>,
    /// Ed25519 signature of the block hash (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// Row group holding the block's rows.
    pub row_group: u32,
    /// Which tag values the block holds (absent: unknown, every block may hold any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<crate::tag_filter::TagFilter>,
    /// The Merkle roots of the block's consecutive [`PROOF_CHUNK_ROWS`]-row pieces, 32 bytes
    /// each, concatenated (hex in JSON); `rows_root` is their Merkle root. Empty: not recorded
    /// (files written before it existed), proofs then read the whole block.
    #[serde(default, with = "hex_bytes", skip_serializing_if = "Vec::is_empty")]
    pub chunk_roots: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Writes blocks of one branch into one Parquet file.
pub struct BlockFileWriter {
    tmp_path: PathBuf,
    final_path: PathBuf,
    writer: SerializedFileWriter<BufWriter<File>>,
    /// The column writers of each new row group (the Arrow schema and the writer settings).
    columns: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    blocks: Vec<BlockEntry>,
    rows: u64,
}

impl std::fmt::Debug for BlockFileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockFileWriter")
            .field("path", &self.final_path)
            .field("blocks", &self.blocks.len())
            .field("rows", &self.rows)
            .finish()
    }
}

/// Writer settings: one row group per block, Snappy, page statistics for pruning, pages of
/// [`PAGE_ROWS`] rows (with the offset index Parquet always writes, a reader can seek to them).
///
/// Snappy rather than zstd(1): on TSBS rows, float and time columns decode 2.4× faster and tag
/// columns 1.2× faster, for 11 % more bytes (docs/PERFORMANCE.md, "Block file compression").
/// Readers take any codec Parquet names, so files written with zstd before stay readable.
///
/// Tag columns (dictionary-encoded) get no statistics. A branch holds every series of its
/// shard, so a block's or a page's smallest and largest tag values span nearly all of them
/// and prune nothing (annals prunes tags with each block's tag filter instead), while
/// computing them compared every tag value twice: about a tenth of the sealer's time on TSBS
/// rows.
fn writer_properties(block_rows_max: usize, schema: &Schema) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_write_batch_size(PAGE_ROWS)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(FIELD_DICTIONARY_BYTES_MAX)
        .set_max_row_group_row_count(Some(block_rows_max.max(1 << 20)))
        .set_statistics_enabled(EnabledStatistics::Page);
    for f in schema.fields() {
        if matches!(f.data_type(), DataType::Dictionary(..)) {
            b = b.set_column_statistics_enabled(
                ColumnPath::new(vec![f.name().clone()]),
                EnabledStatistics::None,
            );
        }
    }
    b.build()
}

/// Hands one page's rows to a column writer in one write, so that the page is one mini-batch
/// of parquet-rs's (which closes the page after it, and checks for dictionary fallback only
/// then): the pieces are joined when the page spans several parts.
fn write_page(
    writer: &mut ArrowColumnWriter,
    field: &Field,
    page: &[ArrayRef],
) -> Result<(), parquet::errors::ParquetError> {
    let joined;
    let array = match page {
        [one] => one,
        _ => {
            let pieces: Vec<&dyn Array> = page.iter().map(AsRef::as_ref).collect();
            joined = arrow::compute::concat(&pieces)?;
            &joined
        }
    };
    for leaf in compute_leaves(field, array)? {
        writer.write(&leaf)?;
    }
    Ok(())
}

impl BlockFileWriter {
    /// Creates `<dir>/<stem>.parquet.tmp`, to become `<dir>/<stem>.parquet` on [`finish`](Self::finish).
    pub fn create(
        dir: &Path,
        stem: &str,
        schema: SchemaRef,
        block_rows_max: usize,
    ) -> Result<Self, BlockFileError> {
        let tmp_path = dir.join(format!("{stem}{TMP_SUFFIX}"));
        let final_path = dir.join(format!("{stem}{FILE_SUFFIX}"));
        if final_path.exists() {
            // Finished files are never replaced: this would mean a height is being reused.
            return Err(BlockFileError::Corrupt {
                path: final_path,
                reason: "a finished block file with this name already exists".into(),
            });
        }
        let file = File::create(&tmp_path).map_err(|source| BlockFileError::Io {
            path: tmp_path.clone(),
            source,
        })?;
        // The Arrow writer sets the file up (Parquet schema, the Arrow schema in the footer);
        // row groups are then written column by column (`write_block`).
        let (writer, columns) = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            schema.clone(),
            Some(writer_properties(block_rows_max, &schema)),
        )
        .and_then(ArrowWriter::into_serialized_writer)
        .map_err(|source| BlockFileError::Parquet {
            path: tmp_path.clone(),
            source,
        })?;
        Ok(Self {
            tmp_path,
            final_path,
            writer,
            columns,
            schema,
            blocks: Vec::new(),
            rows: 0,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }
    pub fn rows(&self) -> u64 {
        self.rows
    }
    pub fn bytes_written(&self) -> usize {
        self.writer.bytes_written()
    }
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Appends one block as one row group. `parts` are the block's rows in order (the chunks
    /// it was written in, or one batch), each with this file's schema, `row_count` rows of
    /// the header in all; `chunk_roots` are the roots of its [`PROOF_CHUNK_ROWS`]-row pieces
    /// (`annals_format::merkle::chunk_roots`), or empty. The file's bytes do not depend on how
    /// the rows are cut into parts.
    pub fn write_block(
        &mut self,
        parts: &[RecordBatch],
        header: &BlockHeader,
        signature: &[u8; 64],
        chunk_roots: &[annals_format::hash::Hash],
    ) -> Result<u32, BlockFileError> {
        assert!(
            chunk_roots.is_empty()
                || chunk_roots.len() == (header.row_count as usize).div_ceil(PROOF_CHUNK_ROWS),
            "one chunk root per piece"
        );
        assert!(
            parts.iter().all(|p| p.schema() == self.schema),
            "block schema differs from the file's"
        );
        let rows: usize = parts.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(
            rows, header.row_count as usize,
            "block rows differ from its header"
        );
        let row_group = self.blocks.len() as u32;
        let tags = self
            .write_row_group(parts, row_group as usize)
            .map_err(|source| BlockFileError::Parquet {
                path: self.tmp_path.clone(),
                source,
            })?;
        assert_eq!(
            self.writer.flushed_row_groups().len(),
            row_group as usize + 1,
            "one row group per block"
        );
        self.blocks.push(BlockEntry {
            header: header.encode(),
            signature: signature.to_vec(),
            row_group,
            tags,
            chunk_roots: chunk_roots.concat(),
        });
        self.rows += rows as u64;
        Ok(row_group)
    }

    /// Writes `parts` as row group `index`, a column at a time: tag columns through
    /// [`crate::tag_chunk`] (the parts' Arrow dictionaries become the Parquet one), every
    /// other column through parquet-rs's Arrow column writer, fed one page of [`PAGE_ROWS`]
    /// rows at a time ([`write_page`]) so that its pages are those of the whole block written
    /// at once, without joining the parts into one batch first. Returns the block's tag filter,
    /// built from the distinct values the tag chunks found (the same filter as
    /// [`TagFilter::of_batch`]).
    fn write_row_group(
        &mut self,
        parts: &[RecordBatch],
        index: usize,
    ) -> Result<Option<TagFilter>, parquet::errors::ParquetError> {
        let mut pairs: HashSet<(&str, &str)> = HashSet::new();
        let writers = self.columns.create_column_writers(index)?;
        let descrs = self.writer.schema_descr().columns().to_vec();
        debug_assert_eq!(descrs.len(), self.schema.fields().len(), "a flat schema");
        let mut group = self.writer.next_row_group()?;
        let mut column: Vec<&dyn Array> = Vec::with_capacity(parts.len());
        for (c, ((field, mut writer), descr)) in self
            .schema
            .fields()
            .iter()
            .zip(writers)
            .zip(&descrs)
            .enumerate()
        {
            column.clear();
            column.extend(parts.iter().map(|p| p.column(c).as_ref()));
            if let Some(chunk) = crate::tag_chunk::encode(descr, &column, PAGE_ROWS)? {
                pairs.extend(chunk.distinct.iter().map(|&v| (field.name().as_str(), v)));
                group.append_column(&chunk.bytes, chunk.close)?;
                continue;
            }
            // The pieces of the page being filled, written when it is full (or the parts end).
            let mut page: Vec<ArrayRef> = Vec::new();
            let mut page_len = 0usize;
            for array in parts.iter().map(|p| p.column(c)) {
                let mut off = 0;
                while off < array.len() {
                    let len = (PAGE_ROWS - page_len).min(array.len() - off);
                    page.push(array.slice(off, len));
                    off += len;
                    page_len += len;
                    if page_len == PAGE_ROWS {
                        write_page(&mut writer, field, &page)?;
                        page.clear();
                        page_len = 0;
                    }
                }
            }
            if !page.is_empty() {
                write_page(&mut writer, field, &page)?;
            }
            writer.close()?.append_to_row_group(&mut group)?;
        }
        group.close()?;
        Ok(TagFilter::build(&pairs))
    }

    /// Writes the footer, fsyncs, renames to the final name and fsyncs the directory.
    /// Returns the final path and the blocks it holds.
    pub fn finish(mut self) -> Result<(PathBuf, Vec<BlockEntry>), BlockFileError> {
        let blocks_json = serde_json::to_string(&self.blocks).expect("block entries serialize");
        self.writer
            .append_key_value_metadata(KeyValue::new(META_FORMAT.to_owned(), "1".to_owned()));
        self.writer
            .append_key_value_metadata(KeyValue::new(META_BLOCKS.to_owned(), blocks_json));
        let tmp = self.tmp_path.clone();
        self.writer
            .finish()
            .map_err(|source| BlockFileError::Parquet {
                path: tmp.clone(),
                source,
            })?;
        let buf = self.writer.inner_mut();
        buf.flush().map_err(|source| BlockFileError::Io {
            path: tmp.clone(),
            source,
        })?;
        buf.get_ref()
            .sync_all()
            .map_err(|source| BlockFileError::Io {
                path: tmp.clone(),
                source,
            })?;
        drop(self.writer);
        std::fs::rename(&tmp, &self.final_path).map_err(|source| BlockFileError::Io {
            path: tmp.clone(),
            source,
        })?;
        if let Some(dir) = self.final_path.parent() {
            fsutil::fsync_dir(dir).map_err(|source| BlockFileError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok((self.final_path, self.blocks))
    }
}

/// A finished block file opened for reading.
#[derive(Debug)]
pub struct BlockFileReader {
    path: PathBuf,
    blocks: Vec<BlockEntry>,
    schema: SchemaRef,
    row_groups: usize,
    metadata: Arc<ParquetMetaData>,
    bytes: u64,
}

impl BlockFileReader {
    /// Opens a file and reads its footer. Fails if the footer, the metadata or the row-group
    /// count is not what a finished block file has.
    pub fn open(path: &Path) -> Result<Self, BlockFileError> {
        let corrupt = |reason: String| BlockFileError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(|source| BlockFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| {
            BlockFileError::Parquet {
                path: path.to_owned(),
                source,
            }
        })?;
        let meta = builder.metadata();
        let kv = meta
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
        match get(META_FORMAT).as_deref() {
            Some("1") => {}
            other => {
                return Err(corrupt(format!(
                    "missing or unknown {META_FORMAT}: {other:?}"
                )))
            }
        }
        let blocks: Vec<BlockEntry> = serde_json::from_str(
            &get(META_BLOCKS).ok_or_else(|| corrupt(format!("missing {META_BLOCKS}")))?,
        )
        .map_err(|e| corrupt(format!("{META_BLOCKS}: {e}")))?;
        let row_groups = meta.num_row_groups();
        if blocks.len() != row_groups {
            return Err(corrupt(format!(
                "{} blocks listed but {row_groups} row groups",
                blocks.len()
            )));
        }
        for (i, b) in blocks.iter().enumerate() {
            if b.row_group as usize != i {
                return Err(corrupt(format!(
                    "block {i} names row group {}",
                    b.row_group
                )));
            }
            if b.signature.len() != 64 {
                return Err(corrupt(format!(
                    "block {i}: signature of {} bytes",
                    b.signature.len()
                )));
            }
            let h = BlockHeader::decode(&b.header)
                .map_err(|e| corrupt(format!("block {i}: header: {e}")))?;
            let pieces = (h.row_count as usize).div_ceil(PROOF_CHUNK_ROWS);
            if !b.chunk_roots.is_empty() && b.chunk_roots.len() != pieces * 32 {
                return Err(corrupt(format!(
                    "block {i}: {} bytes of chunk roots for {pieces} pieces",
                    b.chunk_roots.len()
                )));
            }
            let rows = meta.row_group(i).num_rows();
            if rows != h.row_count as i64 {
                return Err(corrupt(format!(
                    "row group {i} has {rows} rows, its header says {}",
                    h.row_count
                )));
            }
        }
        let schema = builder.schema().clone();
        let metadata = builder.metadata().clone();
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            blocks,
            schema,
            row_groups,
            metadata,
            bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn blocks(&self) -> &[BlockEntry] {
        &self.blocks
    }
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    pub fn row_groups(&self) -> usize {
        self.row_groups
    }
    /// The parsed Parquet footer.
    pub fn metadata(&self) -> &Arc<ParquetMetaData> {
        &self.metadata
    }
    /// File size when opened.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads the rows of one row group as one batch.
    pub fn read_row_group(&self, row_group: usize) -> Result<RecordBatch, BlockFileError> {
        let perr = |source| BlockFileError::Parquet {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(|source| BlockFileError::Io {
            path: self.path.clone(),
            source,
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(perr)?
            .with_row_groups(vec![row_group])
            .with_batch_size(usize::MAX >> 8)
            .build()
            .map_err(|source| BlockFileError::Parquet {
                path: self.path.clone(),
                source,
            })?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b.map_err(|e| BlockFileError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?);
        }
        arrow::compute::concat_batches(&self.schema, &batches).map_err(|e| {
            BlockFileError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })
    }
}

/// A finished block file opened for reads of a few rows at a time (the rows of one proof
/// piece): mapped into memory, with its footer and page index loaded once, so a read costs
/// no system call and no copy of the pages it skips or the ones it decodes.
///
/// Finished block files are immutable: written under a temporary name, synced, then renamed,
/// and never written again (a removed file stays readable through the mapping). Truncating
/// one in place under a running node is the one thing a mapping cannot survive (the read
/// faults); `annals audit` is the tool for damaged files, and reads its own copy.
#[derive(Debug, Clone)]
pub struct PageReader {
    path: PathBuf,
    data: bytes::Bytes,
    meta: ArrowReaderMetadata,
}

impl PageReader {
    /// Maps `path` and reads its footer with the page index.
    #[allow(unsafe_code)]
    pub fn open(path: &Path) -> Result<PageReader, BlockFileError> {
        let io = |source| BlockFileError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only, and a finished block file is never written again
        // (see the type's doc): its bytes cannot change under the mapping. Truncation by
        // another process would fault the read (SIGBUS), never return other bytes.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let data = bytes::Bytes::from_owner(map);
        let meta = ArrowReaderMetadata::load(
            &data,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .map_err(|source| BlockFileError::Parquet {
            path: path.to_owned(),
            source,
        })?;
        Ok(PageReader {
            path: path.to_owned(),
            data,
            meta,
        })
    }

    /// The file's Arrow schema.
    pub fn schema(&self) -> &SchemaRef {
        self.meta.schema()
    }

    /// The rows of row group `row_group`.
    pub fn row_count(&self, row_group: usize) -> Result<usize, BlockFileError> {
        self.meta
            .metadata()
            .row_groups()
            .get(row_group)
            .map(|g| g.num_rows() as usize)
            .ok_or_else(|| BlockFileError::Corrupt {
                path: self.path.clone(),
                reason: format!("no row group {row_group}"),
            })
    }

    /// A reader of row group `row_group` in batches of up to `batch_size` rows: of the named
    /// columns (names the file lacks are left out), or of all of them; of the rows `selection`
    /// picks, or of all of them. Pages are decoded straight from the mapping; values a
    /// selection skips are skipped in the encoded page, not decoded.
    pub fn row_group_reader(
        &self,
        row_group: usize,
        columns: Option<&[&str]>,
        selection: Option<RowSelection>,
        batch_size: usize,
    ) -> Result<ParquetRecordBatchReader, BlockFileError> {
        self.row_count(row_group)?;
        let schema = self.meta.schema();
        let roots: Vec<usize> = match columns {
            Some(names) => names
                .iter()
                .filter_map(|n| schema.index_of(n).ok())
                .collect(),
            None => (0..schema.fields().len()).collect(),
        };
        let mask = ProjectionMask::roots(self.meta.parquet_schema(), roots);
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(
            self.data.clone(),
            self.meta.clone(),
        )
        .with_row_groups(vec![row_group])
        .with_projection(mask)
        .with_batch_size(batch_size.max(1));
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        builder.build().map_err(|source| BlockFileError::Parquet {
            path: self.path.clone(),
            source,
        })
    }

    /// Rows `rows` of row group `row_group`, decoding only the data pages that hold them.
    pub fn read_rows(
        &self,
        row_group: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<RecordBatch, BlockFileError> {
        let path = &self.path;
        let perr = |source| BlockFileError::Parquet {
            path: path.to_owned(),
            source,
        };
        let total = self.row_count(row_group)?;
        if rows.start > rows.end || rows.end > total {
            return Err(BlockFileError::Corrupt {
                path: path.to_owned(),
                reason: format!("rows {rows:?} of row group {row_group} with {total} rows"),
            });
        }
        let mut selectors = vec![
            RowSelector::skip(rows.start),
            RowSelector::select(rows.len()),
        ];
        if rows.end < total {
            selectors.push(RowSelector::skip(total - rows.end));
        }
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
            self.data.clone(),
            self.meta.clone(),
        )
        .with_row_groups(vec![row_group])
        .with_row_selection(RowSelection::from(selectors))
        .with_batch_size(rows.len().max(1))
        .build()
        .map_err(perr)?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b.map_err(|e| BlockFileError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?);
        }
        let schema = self.meta.schema().clone();
        let batch = arrow::compute::concat_batches(&schema, &batches).map_err(|e| {
            BlockFileError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })?;
        if batch.num_rows() != rows.len() {
            return Err(BlockFileError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "read {} rows of row group {row_group}, wanted {}",
                    batch.num_rows(),
                    rows.len()
                ),
            });
        }
        Ok(batch)
    }
}

/// The canonical row encodings of a block's rows, in order: what `rows_root` is computed over.
pub fn row_encodings(table: &str, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, BlockFileError> {
    enum Col<'a> {
        Tag(
            &'a arrow::array::DictionaryArray<Int32Type>,
            &'a StringArray,
        ),
        F64(&'a Float64Array),
        I64(&'a Int64Array),
        U64(&'a UInt64Array),
        Bool(&'a BooleanArray),
        Str(&'a StringArray),
    }
    let schema = batch.schema();
    let time_idx = schema
        .index_of(TIME_COLUMN)
        .map_err(|_| BlockFileError::Schema {
            table: table.to_owned(),
            column: TIME_COLUMN.to_owned(),
            data_type: DataType::Null,
        })?;
    let times = batch
        .column(time_idx)
        .as_primitive_opt::<arrow::datatypes::TimestampNanosecondType>()
        .ok_or_else(|| BlockFileError::Schema {
            table: table.to_owned(),
            column: TIME_COLUMN.into(),
            data_type: batch.column(time_idx).data_type().clone(),
        })?;
    let times: &TimestampNanosecondArray = times;
    // Columns sorted by name: the canonical order.
    let mut cols: Vec<(&str, &ArrayRef)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| f.name() != TIME_COLUMN)
        .map(|(f, a)| (f.name().as_str(), a))
        .collect();
    cols.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut typed: Vec<(&str, Col<'_>)> = Vec::with_capacity(cols.len());
    for (name, a) in &cols {
        let bad = || BlockFileError::Schema {
            table: table.to_owned(),
            column: (*name).to_owned(),
            data_type: a.data_type().clone(),
        };
        let c = match kind_of(a.data_type()).ok_or_else(bad)? {
            Kind::Tag => {
                let d = a.as_dictionary::<Int32Type>();
                let values = d.values().as_string_opt::<i32>().ok_or_else(bad)?;
                Col::Tag(d, values)
            }
            Kind::F64 => Col::F64(a.as_primitive()),
            Kind::I64 => Col::I64(a.as_primitive()),
            Kind::U64 => Col::U64(a.as_primitive()),
            Kind::Bool => Col::Bool(a.as_boolean()),
            Kind::Str => Col::Str(a.as_string()),
        };
        typed.push((name, c));
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut refs: Vec<ColumnRef<'_>> = Vec::with_capacity(typed.len());
    for row in 0..batch.num_rows() {
        if times.is_null(row) {
            return Err(BlockFileError::Corrupt {
                path: PathBuf::new(),
                reason: format!("row {row} of {table} has no time"),
            });
        }
        refs.clear();
        for (name, c) in &typed {
            let value = match c {
                Col::Tag(d, values) => d.key(row).map(|k| ValueRef::Tag(values.value(k))),
                Col::F64(a) => a.is_valid(row).then(|| ValueRef::F64(a.value(row))),
                Col::I64(a) => a.is_valid(row).then(|| ValueRef::I64(a.value(row))),
                Col::U64(a) => a.is_valid(row).then(|| ValueRef::U64(a.value(row))),
                Col::Bool(a) => a.is_valid(row).then(|| ValueRef::Bool(a.value(row))),
                Col::Str(a) => a.is_valid(row).then(|| ValueRef::Str(a.value(row))),
            };
            if let Some(value) = value {
                refs.push(ColumnRef { name, value });
            }
        }
        let mut enc = Vec::with_capacity(64 + refs.len() * 24);
        encode_row(&mut enc, table, times.value(row), &refs).map_err(|e| {
            BlockFileError::Corrupt {
                path: PathBuf::new(),
                reason: format!("row {row}: {e}"),
            }
        })?;
        out.push(enc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Float64Array, TimestampNanosecondArray};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn tag_columns_are_written_without_statistics_and_the_others_with() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                TIME_COLUMN,
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new(
                "truck",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("speed", DataType::Float64, true),
        ]));
        let props = writer_properties(1000, &schema);
        let path = |c: &str| ColumnPath::new(vec![c.to_owned()]);
        assert_eq!(
            props.statistics_enabled(&path("truck")),
            EnabledStatistics::None
        );
        assert_eq!(
            props.statistics_enabled(&path("speed")),
            EnabledStatistics::Page
        );
        assert_eq!(
            props.statistics_enabled(&path(TIME_COLUMN)),
            EnabledStatistics::Page
        );

        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![3, 1, 2])),
                Arc::new(
                    vec![Some("b"), Some("a"), None]
                        .into_iter()
                        .collect::<DictionaryArray<Int32Type>>(),
                ),
                Arc::new(Float64Array::from(vec![1.5, -2.0, 0.0])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let data = bytes::Bytes::from(out);
        let file = SerializedFileReader::new(data.clone()).unwrap();
        let rg = file.metadata().row_group(0);
        assert!(
            rg.column(1).statistics().is_none(),
            "tag column has statistics"
        );
        let time = rg.column(0).statistics().expect("time statistics");
        assert_eq!(time.min_bytes_opt(), Some(&1i64.to_le_bytes()[..]));
        assert_eq!(time.max_bytes_opt(), Some(&3i64.to_le_bytes()[..]));
        assert!(
            rg.column(2).statistics().is_some(),
            "field column lacks statistics"
        );
        // The rows themselves read back unchanged.
        let mut back = ParquetRecordBatchReaderBuilder::try_new(data)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(back.next().unwrap().unwrap(), batch);
    }

    /// The header of a test block of `rows` rows at `height` (table `t`, times from 0).
    fn test_header(height: u64, rows: usize) -> BlockHeader {
        BlockHeader {
            table: "t".into(),
            branch: [1; 16],
            height,
            prev: [0; 32],
            rows_root: [0; 32],
            row_count: rows as u32,
            time_min: 0,
            time_max: rows as i64 - 1,
            context: [0; 32],
            sealed_at: 0,
        }
    }

    /// A tag column as strings, row by row (`None` for null), whatever its dictionary.
    fn tag_strings(a: &ArrayRef) -> Vec<Option<String>> {
        let d = a.as_dictionary::<Int32Type>();
        let values = d.values().as_string::<i32>();
        (0..d.len())
            .map(|r| d.key(r).map(|k| values.value(k).to_owned()))
            .collect()
    }

    #[test]
    fn tag_columns_read_back_row_for_row_in_every_shape() {
        // Tag chunks are encoded by annals (crate::tag_chunk), not parquet-rs: every shape a
        // block's tag column takes must read back exactly, whole and by row range (the page
        // index). Shapes: several pages and a short last one; nulls, none, and all but one;
        // one value (bit width 0); many values (wide indices); duplicate and unused dictionary
        // slots (a block's dictionary is its chunks' concatenated); long repeats (RLE runs).
        let dir = tempfile::tempdir().unwrap();
        let tag_type = arrow_type(Kind::Tag);
        let schema = Arc::new(Schema::new(vec![
            time_field(),
            Field::new("a", tag_type.clone(), true),
            Field::new("b", tag_type.clone(), true),
            Field::new("c", tag_type.clone(), true),
            Field::new("d", tag_type.clone(), true),
            Field::new("v", DataType::Float64, true),
        ]));
        let mut w =
            BlockFileWriter::create(dir.path(), "000000000000", schema.clone(), 5000).unwrap();
        let mut seed = 11u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let mut written = Vec::new();
        for (height, rows) in [3000usize, 1, 1024, 2049].into_iter().enumerate() {
            // a: 100 trucks, some rows null; dictionary with duplicates and unused slots.
            let slots: Vec<String> = (0..300).map(|i| format!("truck_{}", i % 120)).collect();
            let keys: Vec<Option<i32>> = (0..rows)
                .map(|_| (next(10) != 0).then(|| next(300) as i32))
                .collect();
            let a = DictionaryArray::<Int32Type>::try_new(
                keys.into_iter().collect(),
                Arc::new(StringArray::from(slots)),
            )
            .unwrap();
            // b: one value, never null.
            let b: DictionaryArray<Int32Type> = (0..rows).map(|_| Some("fleet-east")).collect();
            // c: long repeats of a few values, no nulls.
            let c: DictionaryArray<Int32Type> = (0..rows)
                .map(|r| Some(["x", "yy", "zzz"][(r / 37) % 3]))
                .collect();
            // d: null but for one row; 5000 distinct values possible.
            let only = format!("only-{height}");
            let d: DictionaryArray<Int32Type> = (0..rows)
                .map(|r| (r == rows / 2).then_some(only.as_str()))
                .collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(TimestampNanosecondArray::from_iter_values(0..rows as i64)),
                    Arc::new(a),
                    Arc::new(b),
                    Arc::new(c),
                    Arc::new(d),
                    Arc::new(Float64Array::from_iter_values((0..rows).map(|r| r as f64))),
                ],
            )
            .unwrap();
            let header = test_header(height as u64, rows);
            w.write_block(std::slice::from_ref(&batch), &header, &[0; 64], &[])
                .unwrap();
            written.push(batch);
        }
        let (path, _) = w.finish().unwrap();

        let file = BlockFileReader::open(&path).unwrap();
        let pages = PageReader::open(&path).unwrap();
        for (g, batch) in written.iter().enumerate() {
            let back = file.read_row_group(g).unwrap();
            assert_eq!(back.num_rows(), batch.num_rows());
            for c in 1..=4 {
                assert_eq!(
                    tag_strings(back.column(c)),
                    tag_strings(batch.column(c)),
                    "row group {g}, column {c}"
                );
            }
            assert_eq!(back.column(5), batch.column(5));
            let n = batch.num_rows();
            for range in [0..n, n / 3..n, n.saturating_sub(5)..n, 0..n.min(1)] {
                let part = pages.read_rows(g, range.clone()).unwrap();
                for c in 1..=4 {
                    assert_eq!(
                        tag_strings(part.column(c)),
                        tag_strings(&batch.column(c).slice(range.start, range.len())),
                        "row group {g}, column {c}, rows {range:?}"
                    );
                }
            }
            assert_eq!(
                file.blocks()[g].tags,
                TagFilter::of_batch(batch),
                "row group {g}"
            );
            // The canonical rows (what the audit re-hashes) are those of the written batch.
            assert_eq!(
                row_encodings("t", &back).unwrap(),
                row_encodings("t", batch).unwrap()
            );
        }
        // Column a's dictionary page holds each used value once (of 300 slots, 120 values),
        // then come its data pages of PAGE_ROWS rows: 3 in the first block.
        let raw = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert!(raw.metadata().row_group(0).column(1).statistics().is_none());
        let pages: Vec<_> = raw
            .get_row_group(0)
            .unwrap()
            .get_column_page_reader(1)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(pages.len(), 4);
        assert_eq!(
            pages[0].page_type(),
            parquet::basic::PageType::DICTIONARY_PAGE
        );
        assert!(
            (100..=120).contains(&pages[0].num_values()),
            "{} values",
            pages[0].num_values()
        );
        assert_eq!(
            pages[1..]
                .iter()
                .map(|p| p.num_values())
                .collect::<Vec<_>>(),
            [1024, 1024, 952]
        );
    }

    #[test]
    fn a_block_written_in_parts_is_the_block_written_whole() {
        // The sealer hands a block over as the chunks it was written in, each with its own
        // dictionaries; the file must be byte for byte the one the joined batch makes. Parts
        // of 1, 700, 1500, 2000 and 2800 rows (page boundaries inside and between parts); a
        // tag column with nulls and one without; a nullable float column; a string column
        // of distinct values, which falls back from its dictionary mid-block; booleans.
        let dir = tempfile::tempdir().unwrap();
        let tag_type = arrow_type(Kind::Tag);
        let schema = Arc::new(Schema::new(vec![
            time_field(),
            Field::new("a", tag_type.clone(), true),
            Field::new("b", tag_type, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let mut start = 0usize;
        let parts: Vec<RecordBatch> = [1usize, 700, 1500, 2000, 2800]
            .iter()
            .map(|&rows| {
                let r = start..start + rows;
                start += rows;
                let names: Vec<Option<String>> = r
                    .clone()
                    .map(|i| (i % 7 != 3).then(|| format!("truck_{}", (i * 31) % 97)))
                    .collect();
                let a: DictionaryArray<Int32Type> = names.iter().map(Option::as_deref).collect();
                let b: DictionaryArray<Int32Type> = r
                    .clone()
                    .map(|i| Some(["x", "yy"][(i / 300) % 2]))
                    .collect();
                let s: StringArray = r
                    .clone()
                    .map(|i| (i % 5 != 0).then(|| format!("{i:0>300}")))
                    .collect();
                let ok: BooleanArray = r.clone().map(|i| Some(i % 3 == 0)).collect();
                let v: Float64Array = r
                    .clone()
                    .map(|i| (i % 11 != 0).then_some((i % 50) as f64 * 0.5))
                    .collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(TimestampNanosecondArray::from_iter_values(
                            r.map(|i| i as i64),
                        )),
                        Arc::new(a),
                        Arc::new(b),
                        Arc::new(s),
                        Arc::new(ok),
                        Arc::new(v),
                    ],
                )
                .unwrap()
            })
            .collect();
        let whole = arrow::compute::concat_batches(&schema, &parts).unwrap();
        let header = test_header(0, whole.num_rows());
        let write = |name: &str, parts: &[RecordBatch]| {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            let mut w =
                BlockFileWriter::create(&sub, "000000000000", schema.clone(), 16384).unwrap();
            w.write_block(parts, &header, &[0; 64], &[]).unwrap();
            std::fs::read(w.finish().unwrap().0).unwrap()
        };
        let from_parts = write("parts", &parts);
        let from_whole = write("whole", std::slice::from_ref(&whole));
        assert!(from_parts == from_whole, "the files differ");

        // Every data page but the last holds PAGE_ROWS rows, but where the string column falls
        // back from its dictionary: parquet-rs cuts the write of its long values to the
        // dictionary's remaining bytes and closes the page at the fallback (in both files).
        let path = dir.path().join("parts/000000000000.parquet");
        let raw = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let pages = |c: usize| -> Vec<(u32, parquet::basic::Encoding)> {
            raw.get_row_group(0)
                .unwrap()
                .get_column_page_reader(c)
                .unwrap()
                .map(Result::unwrap)
                .filter(|p| p.page_type() != parquet::basic::PageType::DICTIONARY_PAGE)
                .map(|p| (p.num_values(), p.encoding()))
                .collect()
        };
        for c in [0, 1, 2, 4, 5] {
            let rows: Vec<u32> = pages(c).iter().map(|p| p.0).collect();
            assert_eq!(
                rows,
                [1024, 1024, 1024, 1024, 1024, 1024, 857],
                "column {c}"
            );
        }
        let strings = pages(3);
        assert_eq!(strings.iter().map(|p| p.0 as usize).sum::<usize>(), 7001);
        use parquet::basic::Encoding::{PLAIN, RLE_DICTIONARY};
        assert_eq!(strings[0].1, RLE_DICTIONARY);
        assert_eq!(strings.last().unwrap().1, PLAIN, "{strings:?}");
        let back = BlockFileReader::open(&path)
            .unwrap()
            .read_row_group(0)
            .unwrap();
        assert_eq!(back.num_rows(), whole.num_rows());
        assert_eq!(
            row_encodings("t", &back).unwrap(),
            row_encodings("t", &whole).unwrap()
        );
    }

    #[test]
    fn field_dictionaries_stop_at_their_limit() {
        // A field column of few values keeps its dictionary through the block; one of
        // distinct values (more than FIELD_DICTIONARY_BYTES_MAX of them) falls back to PLAIN
        // pages once its dictionary is full, and both read back unchanged.
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            time_field(),
            Field::new("few", DataType::Float64, true),
            Field::new("many", DataType::Float64, true),
        ]));
        let rows = 16384;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampNanosecondArray::from_iter_values(0..rows as i64)),
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|r| (r % 300) as f64 * 0.1),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|r| r as f64 * 1.000_001),
                )),
            ],
        )
        .unwrap();
        let header = test_header(0, rows);
        let mut w = BlockFileWriter::create(dir.path(), "000000000000", schema, rows).unwrap();
        w.write_block(std::slice::from_ref(&batch), &header, &[0; 64], &[])
            .unwrap();
        let (path, _) = w.finish().unwrap();
        let raw = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let data_page_encodings = |c: usize| -> Vec<parquet::basic::Encoding> {
            raw.get_row_group(0)
                .unwrap()
                .get_column_page_reader(c)
                .unwrap()
                .map(Result::unwrap)
                .filter(|p| p.page_type() != parquet::basic::PageType::DICTIONARY_PAGE)
                .map(|p| p.encoding())
                .collect()
        };
        use parquet::basic::Encoding::{PLAIN, RLE_DICTIONARY};
        assert_eq!(data_page_encodings(1), [RLE_DICTIONARY; 16]);
        let many = data_page_encodings(2);
        let dict_pages = (FIELD_DICTIONARY_BYTES_MAX / 8).div_ceil(PAGE_ROWS);
        assert_eq!(many[..dict_pages], vec![RLE_DICTIONARY; dict_pages]);
        assert_eq!(many[dict_pages..], vec![PLAIN; 16 - dict_pages]);
        let back = BlockFileReader::open(&path)
            .unwrap()
            .read_row_group(0)
            .unwrap();
        assert_eq!(back.schema().fields(), batch.schema().fields());
        assert_eq!(back.columns(), batch.columns());
    }
}

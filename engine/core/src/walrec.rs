//! What a shard writes into its WAL: row runs and seal decisions.
//!
//! ```text
//! rows := 1:u8 | branch:16 | height:u64 | first_index:u32 | count:u32 | (len:u32 | row) * count
//! batch := 4:u8 | branch:16 | height:u64 | first_index:u32 | count:u32 | table:str | ipc
//! seal := 2:u8 | branch:16 | height:u64 | row_count:u32 | sealed_at:i64 | context:32
//! request := 3:u8 | key:str | body_hash:u64 | default_time:i64 | part:u16 | parts:u16 | nchunks:u16
//!            | (nruns:u32 | (branch:16 | height:u64 | first_index:u32 | count:u32) * nruns) * nchunks
//! ```
//! A request record follows the rows records of one shard's part of a request that carried an
//! `Idempotency-Key`, in the same group commit: if it is durable, so are the rows it lists.
//! Rows are canonical row encodings (the table is inside each), so replay needs nothing else.
//! A batch record holds the same rows as Arrow columns instead: `ipc` (the rest of the record)
//! is an Arrow IPC stream of one record batch of `count` rows in the block's schema (tags as
//! `Dictionary(Int32, Utf8)`), and `table` the database-qualified name the canonical encodings
//! carry. The writer logs a run of rows as whichever of the two is smaller: columns are about a
//! quarter of the bytes of dense sensor rows, whose canonical encodings repeat every column's
//! name, while a sparse row of a wide table is smaller as its encoding, which omits nulls.
//! Decoding turns a batch record back into the canonical encodings
//! ([`annals_storage::block_file::row_encodings`], the encoding `rows_root` is checked
//! against), so replay and audit read one form. A build from before batch records stops at one
//! with "unknown WAL record type 4" instead of misreading it.
//! A seal record fixes everything of the header that is not derived from the rows, so a block
//! rebuilt from the WAL after a crash has exactly the hash it had before.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use annals_format::block::BranchId;
use annals_format::hash::Hash;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{
    write_message, DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
};
use arrow::record_batch::RecordBatch;

use crate::receipt::Run;

const TAG_ROWS: u8 = 1;
const TAG_SEAL: u8 = 2;
const TAG_REQUEST: u8 = 3;
const TAG_BATCH: u8 = 4;

/// A decoded WAL record.
#[derive(Debug, PartialEq)]
pub enum WalRecord<'a> {
    Rows {
        branch: BranchId,
        height: u64,
        first_index: u32,
        /// Borrowed from a rows record, built from a batch record.
        rows: Vec<Cow<'a, [u8]>>,
    },
    Seal {
        branch: BranchId,
        height: u64,
        row_count: u32,
        sealed_at: i64,
        context: Hash,
    },
    Request {
        key: &'a str,
        body_hash: u64,
        /// Time given to lines without a timestamp: a retry must prepare with the same.
        default_time: i64,
        part: u16,
        parts: u16,
        runs: Vec<Vec<Run>>,
    },
}

/// Appends a request record: the positions one shard gave a keyed request's part.
pub fn encode_request(
    out: &mut Vec<u8>,
    key: &str,
    body_hash: u64,
    default_time: i64,
    part: u16,
    parts: u16,
    runs: &[Vec<Run>],
) {
    out.push(TAG_REQUEST);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&body_hash.to_le_bytes());
    out.extend_from_slice(&default_time.to_le_bytes());
    out.extend_from_slice(&part.to_le_bytes());
    out.extend_from_slice(&parts.to_le_bytes());
    out.extend_from_slice(&(runs.len() as u16).to_le_bytes());
    for chunk in runs {
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        for r in chunk {
            out.extend_from_slice(&r.branch);
            out.extend_from_slice(&r.height.to_le_bytes());
            out.extend_from_slice(&r.first_index.to_le_bytes());
            out.extend_from_slice(&r.count.to_le_bytes());
        }
    }
}

/// Bytes of the rows record [`encode_rows`] writes for `count` rows of `row_bytes` bytes in all.
pub fn rows_record_len(count: usize, row_bytes: usize) -> usize {
    1 + std::mem::size_of::<BranchId>() + 8 + 4 + 4 + 4 * count + row_bytes
}

/// The part rows and batch records share: type, then where the run of `count` rows goes.
fn run_header(
    out: &mut Vec<u8>,
    tag: u8,
    branch: &BranchId,
    height: u64,
    first_index: u32,
    count: usize,
) {
    out.push(tag);
    out.extend_from_slice(branch);
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&first_index.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
}

/// Appends a rows record to `out` for `rows` (each a canonical encoding).
pub fn encode_rows<'r>(
    out: &mut Vec<u8>,
    branch: &BranchId,
    height: u64,
    first_index: u32,
    rows: impl ExactSizeIterator<Item = &'r [u8]>,
) {
    run_header(out, TAG_ROWS, branch, height, first_index, rows.len());
    for r in rows {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
}

/// End of an Arrow IPC stream: continuation marker, then a zero length.
const IPC_EOS: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// Builds batch records. It keeps each table's encoded schema message instead of building the
/// schema's flatbuffer, field by field, for every record: about an eighth of a record's cost for
/// chunks of 1,250 TSBS rows (`--bench storage -- wal_record`, `batch` against
/// `batch_schema_each_time`). The stream is the one `StreamWriter` writes (a test compares them
/// byte for byte). Holds one entry per table a writer has logged rows of.
#[derive(Default)]
pub struct BatchEncoder {
    /// Per table: its schema, the encoded schema message and its count of dictionary fields.
    schemas: HashMap<String, (SchemaRef, Vec<u8>, usize)>,
    context: IpcWriteContext,
}

impl std::fmt::Debug for BatchEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchEncoder")
            .field("schemas", &self.schemas.len())
            .finish()
    }
}

impl BatchEncoder {
    /// Appends a batch record to `out` for `batch`, rows of `table` (database-qualified).
    ///
    /// # Errors
    /// What Arrow's IPC encoder reports; `out` may then hold part of a record and must be
    /// discarded.
    pub fn encode(
        &mut self,
        out: &mut Vec<u8>,
        branch: &BranchId,
        height: u64,
        first_index: u32,
        table: &str,
        batch: &RecordBatch,
    ) -> Result<(), ArrowError> {
        run_header(
            out,
            TAG_BATCH,
            branch,
            height,
            first_index,
            batch.num_rows(),
        );
        out.extend_from_slice(&(table.len() as u32).to_le_bytes());
        out.extend_from_slice(table.as_bytes());
        let options = IpcWriteOptions::default();
        let generator = IpcDataGenerator::default();
        let schema = batch.schema();
        let cached = self
            .schemas
            .get(table)
            .is_some_and(|(s, _, _)| Arc::ptr_eq(s, &schema) || **s == *schema);
        if !cached {
            let mut tracker = DictionaryTracker::new(false);
            let message =
                generator.schema_to_bytes_with_dictionary_tracker(&schema, &mut tracker, &options);
            let mut bytes = Vec::new();
            write_message(&mut bytes, message, &options)?;
            let dictionaries = tracker.dict_id().len();
            self.schemas
                .insert(table.to_owned(), (schema, bytes, dictionaries));
        }
        let (_, schema_message, dictionaries) = &self.schemas[table];
        out.extend_from_slice(schema_message);
        // The schema message numbered the dictionary fields 0, 1, ... in field order; the
        // batch's dictionaries must carry the same ids.
        let mut tracker = DictionaryTracker::new(false);
        for _ in 0..*dictionaries {
            tracker.next_dict_id();
        }
        let (dicts, encoded) =
            generator.encode(batch, &mut tracker, &options, &mut self.context)?;
        for d in dicts {
            write_message(&mut *out, d, &options)?;
        }
        write_message(&mut *out, encoded, &options)?;
        out.extend_from_slice(&IPC_EOS);
        Ok(())
    }
}

/// Reads a batch record's IPC stream: exactly one record batch of `count` rows.
fn decode_batch(ipc: &[u8], count: usize) -> Result<RecordBatch, String> {
    // The reader does not insist on the end-of-stream marker.
    if !ipc.ends_with(&IPC_EOS) {
        return Err("batch record's IPC stream has no end marker".into());
    }
    let mut r = StreamReader::try_new(ipc, None).map_err(|e| format!("batch record: {e}"))?;
    let batch = match r.next() {
        Some(b) => b.map_err(|e| format!("batch record: {e}"))?,
        None => return Err("batch record holds no record batch".into()),
    };
    if r.next().is_some() {
        return Err("batch record holds more than one record batch".into());
    }
    if batch.num_rows() != count {
        return Err(format!(
            "batch record names {count} rows, its batch has {}",
            batch.num_rows()
        ));
    }
    Ok(batch)
}

/// Appends a seal record to `out`.
pub fn encode_seal(
    out: &mut Vec<u8>,
    branch: &BranchId,
    height: u64,
    row_count: u32,
    sealed_at: i64,
    context: &Hash,
) {
    out.push(TAG_SEAL);
    out.extend_from_slice(branch);
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&row_count.to_le_bytes());
    out.extend_from_slice(&sealed_at.to_le_bytes());
    out.extend_from_slice(context);
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err(format!(
            "record truncated: needed {n} bytes, {} left",
            buf.len()
        ));
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Ok(a)
}

fn arr<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], String> {
    Ok(take(buf, N)?.try_into().expect("length checked"))
}

/// Reads what [`run_header`] wrote after the type: branch, height, first index, row count.
fn read_run_header(b: &mut &[u8]) -> Result<(BranchId, u64, u32, usize), String> {
    Ok((
        arr::<16>(b)?,
        u64::from_le_bytes(arr(b)?),
        u32::from_le_bytes(arr(b)?),
        u32::from_le_bytes(arr(b)?) as usize,
    ))
}

/// Decodes one record; the WAL checksum already vouched for the bytes, so an error here means
/// a bug or a foreign file and is reported as corruption.
pub fn decode(mut buf: &[u8]) -> Result<WalRecord<'_>, String> {
    let b = &mut buf;
    let rec = match take(b, 1)?[0] {
        TAG_ROWS => {
            let (branch, height, first_index, count) = read_run_header(b)?;
            let mut rows = Vec::with_capacity(count.min(b.len() / 4));
            for _ in 0..count {
                let len = u32::from_le_bytes(arr(b)?) as usize;
                rows.push(Cow::Borrowed(take(b, len)?));
            }
            WalRecord::Rows {
                branch,
                height,
                first_index,
                rows,
            }
        }
        TAG_BATCH => {
            let (branch, height, first_index, count) = read_run_header(b)?;
            let len = u32::from_le_bytes(arr(b)?) as usize;
            let table = std::str::from_utf8(take(b, len)?)
                .map_err(|_| "batch record's table is not UTF-8".to_string())?;
            let ipc = std::mem::take(b);
            let batch = decode_batch(ipc, count)?;
            let rows = annals_storage::block_file::row_encodings(table, &batch)
                .map_err(|e| format!("batch record: {e}"))?;
            WalRecord::Rows {
                branch,
                height,
                first_index,
                rows: rows.into_iter().map(Cow::Owned).collect(),
            }
        }
        TAG_SEAL => WalRecord::Seal {
            branch: arr::<16>(b)?,
            height: u64::from_le_bytes(arr(b)?),
            row_count: u32::from_le_bytes(arr(b)?),
            sealed_at: i64::from_le_bytes(arr(b)?),
            context: arr::<32>(b)?,
        },
        TAG_REQUEST => {
            let len = u32::from_le_bytes(arr(b)?) as usize;
            let key = std::str::from_utf8(take(b, len)?)
                .map_err(|_| "request key is not UTF-8".to_string())?;
            let body_hash = u64::from_le_bytes(arr(b)?);
            let default_time = i64::from_le_bytes(arr(b)?);
            let part = u16::from_le_bytes(arr(b)?);
            let parts = u16::from_le_bytes(arr(b)?);
            let nchunks = u16::from_le_bytes(arr(b)?) as usize;
            let mut runs = Vec::with_capacity(nchunks);
            for _ in 0..nchunks {
                let n = u32::from_le_bytes(arr(b)?) as usize;
                let mut chunk = Vec::with_capacity(n.min(b.len() / 32));
                for _ in 0..n {
                    chunk.push(Run {
                        branch: arr::<16>(b)?,
                        height: u64::from_le_bytes(arr(b)?),
                        first_index: u32::from_le_bytes(arr(b)?),
                        count: u32::from_le_bytes(arr(b)?),
                    });
                }
                runs.push(chunk);
            }
            WalRecord::Request {
                key,
                body_hash,
                default_time,
                part,
                parts,
                runs,
            }
        }
        t => return Err(format!("unknown WAL record type {t}")),
    };
    if !b.is_empty() {
        return Err(format!("{} trailing bytes in WAL record", b.len()));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        let rows: Vec<&[u8]> = vec![b"abc", b"", b"defg"];
        encode_rows(&mut out, &[7; 16], 3, 10, rows.iter().copied());
        let rows: Vec<Cow<'_, [u8]>> = rows.into_iter().map(Cow::Borrowed).collect();
        assert_eq!(out.len(), rows_record_len(3, 7));
        assert_eq!(
            decode(&out).unwrap(),
            WalRecord::Rows {
                branch: [7; 16],
                height: 3,
                first_index: 10,
                rows
            }
        );
        let mut out = Vec::new();
        encode_seal(&mut out, &[1; 16], 4, 99, -5, &[9; 32]);
        assert_eq!(
            decode(&out).unwrap(),
            WalRecord::Seal {
                branch: [1; 16],
                height: 4,
                row_count: 99,
                sealed_at: -5,
                context: [9; 32]
            }
        );
        out.push(0);
        assert!(decode(&out).is_err());
        let runs = vec![
            vec![Run {
                branch: [2; 16],
                height: 5,
                first_index: 3,
                count: 7,
            }],
            vec![],
        ];
        let mut out = Vec::new();
        encode_request(&mut out, "db\0k", 42, -7, 1, 3, &runs);
        assert_eq!(
            decode(&out).unwrap(),
            WalRecord::Request {
                key: "db\0k",
                body_hash: 42,
                default_time: -7,
                part: 1,
                parts: 3,
                runs
            }
        );
        assert!(decode(&out[..10]).is_err());
    }

    /// A chunk as the writer has it: built by the ingest path, every column kind, with nulls.
    fn chunk(rows: usize) -> (crate::prepare::Chunk, tempfile::TempDir) {
        use annals_format::row::{ColumnRef, Kind, ValueRef};
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::Catalog::open(dir.path()).unwrap();
        let cols = [
            ("device", Kind::Tag),
            ("site", Kind::Tag),
            ("temp", Kind::F64),
            ("count", Kind::I64),
            ("seq", Kind::U64),
            ("ok", Kind::Bool),
            ("note", Kind::Str),
        ];
        let schema = catalog.ensure("db/t", &cols).unwrap();
        let mut b = crate::prepare::ChunkBuilder::new(schema, rows);
        let names: Vec<String> = (0..rows).map(|i| format!("dev-{}", i % 7)).collect();
        let notes: Vec<String> = (0..rows).map(|i| "n".repeat(i % 5)).collect();
        for i in 0..rows {
            let mut c = vec![ColumnRef {
                name: "device",
                value: ValueRef::Tag(&names[i]),
            }];
            if i % 3 != 0 {
                c.push(ColumnRef {
                    name: "site",
                    value: ValueRef::Tag(if i % 2 == 0 { "north" } else { "south" }),
                });
            }
            c.push(ColumnRef {
                name: "temp",
                value: ValueRef::F64(if i == 4 { -0.0 } else { i as f64 * 0.5 }),
            });
            if i % 4 != 1 {
                c.push(ColumnRef {
                    name: "count",
                    value: ValueRef::I64(-(i as i64)),
                });
            }
            c.push(ColumnRef {
                name: "seq",
                value: ValueRef::U64(u64::MAX - i as u64),
            });
            c.push(ColumnRef {
                name: "ok",
                value: ValueRef::Bool(i % 2 == 0),
            });
            if i % 5 != 2 {
                c.push(ColumnRef {
                    name: "note",
                    value: ValueRef::Str(&notes[i]),
                });
            }
            c.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
            b.push(i as u32 + 1, 1_000 + i as i64, &c);
        }
        (b.finish().0, dir)
    }

    #[test]
    fn a_batch_record_decodes_to_the_canonical_encodings_of_its_rows() {
        let (chunk, _dir) = chunk(40);
        for (off, len) in [(0, 40), (5, 17), (39, 1)] {
            let mut out = Vec::new();
            let slice = chunk.batch.slice(off, len);
            BatchEncoder::default()
                .encode(&mut out, &[3; 16], 8, 11, "db/t", &slice)
                .unwrap();
            let rows: Vec<Cow<'_, [u8]>> = (off..off + len)
                .map(|i| Cow::Borrowed(chunk.encoding(i)))
                .collect();
            assert_eq!(
                decode(&out).unwrap(),
                WalRecord::Rows {
                    branch: [3; 16],
                    height: 8,
                    first_index: 11,
                    rows
                },
                "rows {off}..{}",
                off + len
            );
        }
    }

    #[test]
    fn a_damaged_batch_record_is_an_error() {
        let (chunk, _dir) = chunk(10);
        let mut out = Vec::new();
        BatchEncoder::default()
            .encode(&mut out, &[3; 16], 0, 0, "db/t", &chunk.batch)
            .unwrap();
        // Cut anywhere, or a wrong row count, or a second batch: each is reported, none panics.
        for cut in 1..out.len() {
            assert!(decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong = out.clone();
        wrong[29..33].copy_from_slice(&9u32.to_le_bytes());
        assert!(decode(&wrong).unwrap_err().contains("names 9 rows"));
        let mut two = Vec::new();
        BatchEncoder::default()
            .encode(&mut two, &[3; 16], 0, 0, "db/t", &chunk.batch)
            .unwrap();
        let header = 1 + 16 + 8 + 4 + 4 + 4 + 4;
        let mut w =
            arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &chunk.batch.schema()).unwrap();
        w.write(&chunk.batch).unwrap();
        w.write(&chunk.batch).unwrap();
        w.finish().unwrap();
        two.truncate(header);
        two.extend_from_slice(&w.into_inner().unwrap());
        assert!(decode(&two).unwrap_err().contains("more than one"));
    }

    /// The encoder's cached schema message gives the stream Arrow's own writer writes, for a
    /// table's first record and for later ones, each slice with its own dictionaries.
    #[test]
    fn a_batch_record_holds_the_stream_arrows_writer_writes() {
        let (chunk, _dir) = chunk(30);
        let mut encoder = BatchEncoder::default();
        for (off, len) in [(0, 30), (3, 11), (29, 1), (0, 30)] {
            let slice = chunk.batch.slice(off, len);
            let mut out = Vec::new();
            encoder
                .encode(&mut out, &[1; 16], 2, 3, "db/t", &slice)
                .unwrap();
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &slice.schema()).unwrap();
            w.write(&slice).unwrap();
            w.finish().unwrap();
            let header = 1 + 16 + 8 + 4 + 4 + 4 + "db/t".len();
            assert_eq!(
                &out[header..],
                &w.into_inner().unwrap()[..],
                "rows {off}+{len}"
            );
        }
        assert_eq!(encoder.schemas.len(), 1);
    }
}

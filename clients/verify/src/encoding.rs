//! FORMAT.md byte layouts the verifier needs: it *encodes* rows (to compare with `row_hex`) and
//! *decodes* block headers, branch entries and checkpoint headers. Little-endian throughout.

use alloc::string::String;
use alloc::vec::Vec;

use crate::merkle::{hash_parts, BLOCK_HEADER, CHECKPOINT, TX_ID};
use crate::Hash;

/// The only format version this verifier reads.
pub const FORMAT_VERSION: u8 = 1;
/// Encoded size of a branch entry: `branch:16 | size:u64 | root:32`.
pub const ENTRY_LEN: usize = 16 + 8 + 32;
/// Encoded size of a checkpoint header.
pub const CHECKPOINT_LEN: usize = 1 + 8 + 32 + 32 + 4 + 8 + 32;

/// One column value, by kind (FORMAT.md "Row").
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// kind 1
    Tag(String),
    /// kind 2, IEEE-754 bits
    F64(f64),
    /// kind 3
    I64(i64),
    /// kind 4
    U64(u64),
    /// kind 5
    Bool(bool),
    /// kind 6, a string field
    Str(String),
}

impl Value {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Value::Tag(_) => 1,
            Value::F64(_) => 2,
            Value::I64(_) => 3,
            Value::U64(_) => 4,
            Value::Bool(_) => 5,
            Value::Str(_) => 6,
        }
    }

    /// The kind's name in a proof document: `tag f64 i64 u64 bool string`.
    pub fn kind_name(&self) -> &'static str {
        ["tag", "f64", "i64", "u64", "bool", "string"][usize::from(self.kind() - 1)]
    }
}

/// A named column value.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub value: Value,
}

/// A row as a proof document states it. Columns are kept sorted by name (bytewise).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `<db>/<table>`.
    pub table: String,
    /// Nanoseconds since the Unix epoch.
    pub time: i64,
    pub columns: Vec<Column>,
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let len = u32::try_from(s.len()).map_err(|_| String::from("a string is longer than 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Row {
    /// The canonical row encoding. Columns must be sorted and unique (checked).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        for w in self.columns.windows(2) {
            if w[0].name.as_bytes() >= w[1].name.as_bytes() {
                return Err(alloc::format!("column {:?} appears twice", w[1].name));
            }
        }
        let ncols = u16::try_from(self.columns.len()).map_err(|_| {
            alloc::format!("{} columns; a row holds at most 65535", self.columns.len())
        })?;
        let mut out = Vec::new();
        out.push(FORMAT_VERSION);
        put_str(&mut out, &self.table)?;
        out.extend_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&ncols.to_le_bytes());
        for c in &self.columns {
            put_str(&mut out, &c.name)?;
            out.push(c.value.kind());
            match &c.value {
                Value::Tag(s) | Value::Str(s) => put_str(&mut out, s)?,
                Value::F64(x) => out.extend_from_slice(&x.to_bits().to_le_bytes()),
                Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::Bool(b) => out.push(u8::from(*b)),
            }
        }
        Ok(out)
    }

    /// Reads a row encoding (the binary proof form states the row only as its bytes). Strict:
    /// version 1, UTF-8 strings, known kinds, `bool` 0 or 1, nothing after the last column.
    /// Column order is not checked here; [`Row::encode`] refuses unsorted or repeated names, and
    /// the `row_encoding` step compares the re-encoding with these bytes.
    pub fn decode(bytes: &[u8]) -> Result<Row, String> {
        let mut r = Reader { b: bytes };
        r.version()?;
        let table = r.str("table")?;
        let time = r.i64("time")?;
        let ncols = u16::from_le_bytes(r.array("ncols")?);
        let mut columns = Vec::with_capacity(usize::from(ncols));
        for i in 0..ncols {
            let name = r.str("column name")?;
            let what = alloc::format!("value of column {i} ({name:?})");
            let value = match r.array::<1>("column kind")?[0] {
                1 => Value::Tag(r.str(&what)?),
                2 => Value::F64(f64::from_bits(r.u64(&what)?)),
                3 => Value::I64(r.i64(&what)?),
                4 => Value::U64(r.u64(&what)?),
                5 => match r.array::<1>(&what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(alloc::format!("has bool {b} in column {name:?}")),
                },
                6 => Value::Str(r.str(&what)?),
                k => return Err(alloc::format!("has unknown kind {k} in column {name:?}")),
            };
            columns.push(Column { name, value });
        }
        r.finish()?;
        Ok(Row {
            table,
            time,
            columns,
        })
    }
}

/// `tx_id = H(0x03 || branch || height:u64 || index:u32 || leaf_hash)`.
pub fn tx_id(branch: &[u8; 16], height: u64, index: u32, leaf_hash: &Hash) -> Hash {
    hash_parts(
        TX_ID,
        &[
            branch,
            &height.to_le_bytes(),
            &index.to_le_bytes(),
            leaf_hash,
        ],
    )
}

/// `H(0x02 || header)` of an encoded block header.
pub fn block_hash(header: &[u8]) -> Hash {
    hash_parts(BLOCK_HEADER, &[header])
}

/// `H(0x04 || checkpoint)` of an encoded checkpoint header.
pub fn checkpoint_hash(header: &[u8]) -> Hash {
    hash_parts(CHECKPOINT, &[header])
}

/// Reads fixed-width little-endian fields; every shortfall names the field.
pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(alloc::format!("ends before its {what}"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn version(&mut self) -> Result<(), String> {
        match self.array::<1>("version")?[0] {
            FORMAT_VERSION => Ok(()),
            v => Err(alloc::format!(
                "has version {v}; this verifier reads version {FORMAT_VERSION}"
            )),
        }
    }
    /// A FORMAT.md `str`: `u32` byte length, then UTF-8.
    fn str(&mut self, what: &str) -> Result<String, String> {
        let len = self.u32(what)?;
        let bytes = self.take(usize::try_from(len).unwrap_or(usize::MAX), what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| alloc::format!("has a {what} that is not UTF-8"))
    }
    pub(crate) fn finish(&self) -> Result<(), String> {
        match self.b.len() {
            0 => Ok(()),
            n => Err(alloc::format!("has {n} bytes after its last field")),
        }
    }
}

/// A decoded block header (FORMAT.md "Block").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// The table's bytes as stored (compared with the row's table, never interpreted).
    pub table: Vec<u8>,
    pub branch: [u8; 16],
    pub height: u64,
    pub prev: Hash,
    pub rows_root: Hash,
    pub row_count: u32,
    pub time_min: i64,
    pub time_max: i64,
    pub context: Hash,
    pub sealed_at: i64,
}

impl BlockHeader {
    /// Decodes exactly one header; the error says which field is missing or what is extra.
    pub fn decode(bytes: &[u8]) -> Result<BlockHeader, String> {
        let mut r = Reader { b: bytes };
        r.version()?;
        let len = r.u32("table length")?;
        let table = r
            .take(usize::try_from(len).unwrap_or(usize::MAX), "table")?
            .to_vec();
        let h = BlockHeader {
            table,
            branch: r.array("branch")?,
            height: r.u64("height")?,
            prev: r.array("prev")?,
            rows_root: r.array("rows_root")?,
            row_count: r.u32("row_count")?,
            time_min: r.i64("time_min")?,
            time_max: r.i64("time_max")?,
            context: r.array("context")?,
            sealed_at: r.i64("sealed_at")?,
        };
        r.finish()?;
        Ok(h)
    }
}

/// One branch's log state inside a checkpoint: `branch:16 | size:u64 | root:32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchEntry {
    pub branch: [u8; 16],
    pub size: u64,
    pub root: Hash,
}

impl BranchEntry {
    pub fn decode(bytes: &[u8]) -> Result<BranchEntry, String> {
        let mut r = Reader { b: bytes };
        let e = BranchEntry {
            branch: r.array("branch")?,
            size: r.u64("size")?,
            root: r.array("root")?,
        };
        r.finish()?;
        Ok(e)
    }
}

/// A decoded checkpoint header (FORMAT.md "Checkpoint").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub epoch: u64,
    pub prev: Hash,
    pub branches_root: Hash,
    pub branch_count: u32,
    pub time: i64,
    /// The validator-set hash the checkpoint names.
    pub validators: Hash,
}

impl CheckpointHeader {
    pub fn decode(bytes: &[u8]) -> Result<CheckpointHeader, String> {
        let mut r = Reader { b: bytes };
        r.version()?;
        let c = CheckpointHeader {
            epoch: r.u64("epoch")?,
            prev: r.array("prev")?,
            branches_root: r.array("branches_root")?,
            branch_count: r.u32("branch_count")?,
            time: r.i64("time")?,
            validators: r.array("validators")?,
        };
        r.finish()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn repeated_or_unsorted_columns_are_refused() {
        let col = |n: &str| Column {
            name: String::from(n),
            value: Value::Bool(true),
        };
        let mut row = Row {
            table: String::from("db/t"),
            time: 0,
            columns: vec![col("a"), col("a")],
        };
        assert!(row.encode().unwrap_err().contains("twice"));
        row.columns = vec![col("b"), col("a")];
        assert!(row.encode().is_err());
        row.columns = vec![col("a"), col("b")];
        assert!(row.encode().is_ok());
    }

    #[test]
    fn headers_refuse_wrong_version_short_and_long_input() {
        let mut cp = [0u8; CHECKPOINT_LEN];
        cp[0] = 1;
        assert!(CheckpointHeader::decode(&cp).is_ok());
        assert!(CheckpointHeader::decode(&cp[..CHECKPOINT_LEN - 1])
            .unwrap_err()
            .contains("validators"));
        let mut long = cp.to_vec();
        long.push(0);
        assert!(CheckpointHeader::decode(&long)
            .unwrap_err()
            .contains("1 bytes after"));
        cp[0] = 2;
        assert!(CheckpointHeader::decode(&cp)
            .unwrap_err()
            .contains("version 2"));
        assert!(BranchEntry::decode(&[0u8; ENTRY_LEN]).is_ok());
        assert!(BranchEntry::decode(&[0u8; ENTRY_LEN + 1]).is_err());
        assert!(BlockHeader::decode(&[1, 255, 255, 255, 255])
            .unwrap_err()
            .contains("table"));
    }
}

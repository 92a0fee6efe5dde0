//! The canonical row encoding: the leaf data of a block.
//!
//! ```text
//! row  := version:u8 = 1 | table:str | time:i64 | ncols:u16 | col * ncols
//! col  := name:str | kind:u8 | value
//! ```
//! Columns are sorted bytewise by name, each name once; absent (null) columns are omitted.

use crate::codec::{put_str, Reader};
use crate::hash::{leaf_hash, Hash};
use crate::{FormatError, FORMAT_VERSION};

/// Most columns a row may carry (the `ncols` field is a `u16`).
pub const COLUMNS_MAX: usize = u16::MAX as usize;

/// A column's kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    Tag = 1,
    F64 = 2,
    I64 = 3,
    U64 = 4,
    Bool = 5,
    Str = 6,
}

impl Kind {
    pub fn from_u8(b: u8) -> Result<Kind, FormatError> {
        Ok(match b {
            1 => Kind::Tag,
            2 => Kind::F64,
            3 => Kind::I64,
            4 => Kind::U64,
            5 => Kind::Bool,
            6 => Kind::Str,
            other => return Err(FormatError::Kind(other)),
        })
    }

    /// The name used in proof documents and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tag => "tag",
            Kind::F64 => "f64",
            Kind::I64 => "i64",
            Kind::U64 => "u64",
            Kind::Bool => "bool",
            Kind::Str => "string",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "tag" => Kind::Tag,
            "f64" => Kind::F64,
            "i64" => Kind::I64,
            "u64" => Kind::U64,
            "bool" => Kind::Bool,
            "string" => Kind::Str,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed column value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Tag(&'a str),
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    Str(&'a str),
}

impl ValueRef<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            ValueRef::Tag(_) => Kind::Tag,
            ValueRef::F64(_) => Kind::F64,
            ValueRef::I64(_) => Kind::I64,
            ValueRef::U64(_) => Kind::U64,
            ValueRef::Bool(_) => Kind::Bool,
            ValueRef::Str(_) => Kind::Str,
        }
    }

    pub fn to_owned_value(&self) -> OwnedValue {
        match *self {
            ValueRef::Tag(s) => OwnedValue::Tag(s.to_owned()),
            ValueRef::F64(v) => OwnedValue::F64(v),
            ValueRef::I64(v) => OwnedValue::I64(v),
            ValueRef::U64(v) => OwnedValue::U64(v),
            ValueRef::Bool(v) => OwnedValue::Bool(v),
            ValueRef::Str(s) => OwnedValue::Str(s.to_owned()),
        }
    }
}

/// A borrowed column: name and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColumnRef<'a> {
    pub name: &'a str,
    pub value: ValueRef<'a>,
}

/// An owned column value.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    Tag(String),
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    Str(String),
}

impl OwnedValue {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            OwnedValue::Tag(s) => ValueRef::Tag(s),
            OwnedValue::F64(v) => ValueRef::F64(*v),
            OwnedValue::I64(v) => ValueRef::I64(*v),
            OwnedValue::U64(v) => ValueRef::U64(*v),
            OwnedValue::Bool(v) => ValueRef::Bool(*v),
            OwnedValue::Str(s) => ValueRef::Str(s),
        }
    }
}

/// An owned column.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedColumn {
    pub name: String,
    pub value: OwnedValue,
}

/// An owned row, as decoded from its canonical encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedRow {
    pub table: String,
    pub time: i64,
    pub columns: Vec<OwnedColumn>,
}

impl OwnedRow {
    /// Sorts columns by name (bytewise) so the row can be encoded.
    pub fn sort_columns(&mut self) {
        self.columns
            .sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    }

    pub fn column_refs(&self) -> Vec<ColumnRef<'_>> {
        self.columns
            .iter()
            .map(|c| ColumnRef {
                name: &c.name,
                value: c.value.as_ref(),
            })
            .collect()
    }

    /// Canonical encoding; the columns must already be sorted and unique.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        encode_row(&mut out, &self.table, self.time, &self.column_refs())?;
        Ok(out)
    }
}

/// Checks `<db>/<table>`: a database of `[A-Za-z0-9_-]+`, a non-empty table.
pub fn validate_table_name(table: &str) -> Result<(), FormatError> {
    let ok = match table.split_once('/') {
        Some((db, t)) => {
            !db.is_empty()
                && !t.is_empty()
                && db
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(FormatError::TableName(table.to_owned()))
    }
}

/// Appends the canonical encoding of a row to `out`.
///
/// `cols` must be sorted bytewise by name with no name twice; anything else is an error, never
/// a silently different encoding. On error `out` is left as it was.
pub fn encode_row(
    out: &mut Vec<u8>,
    table: &str,
    time: i64,
    cols: &[ColumnRef<'_>],
) -> Result<(), FormatError> {
    if cols.len() > COLUMNS_MAX {
        return Err(FormatError::TooLong {
            what: "column list",
            len: cols.len(),
            max: COLUMNS_MAX,
        });
    }
    for w in cols.windows(2) {
        if w[0].name.as_bytes() >= w[1].name.as_bytes() {
            return Err(FormatError::ColumnOrder {
                prev: w[0].name.to_owned(),
                next: w[1].name.to_owned(),
            });
        }
    }
    out.push(FORMAT_VERSION);
    put_str(out, table);
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(&(cols.len() as u16).to_le_bytes());
    for c in cols {
        put_column(out, c);
    }
    Ok(())
}

/// `name:str | kind:u8 | value`.
#[inline]
fn put_column(out: &mut Vec<u8>, c: &ColumnRef<'_>) {
    put_str(out, c.name);
    out.push(c.value.kind() as u8);
    match c.value {
        ValueRef::Tag(s) | ValueRef::Str(s) => put_str(out, s),
        ValueRef::F64(v) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        ValueRef::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        ValueRef::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        ValueRef::Bool(v) => out.push(v as u8),
    }
}

/// Appends the canonical encoding of a row whose columns the caller already knows to be sorted
/// bytewise by name and unique (for example because they follow a sort done once for many rows
/// of the same shape). Checked in debug builds only; a wrong order would produce bytes that
/// [`decode_row`] and every audit reject.
pub fn encode_row_presorted<'c>(
    out: &mut Vec<u8>,
    table: &str,
    time: i64,
    ncols: usize,
    cols: impl Iterator<Item = ColumnRef<'c>>,
) {
    assert!(ncols <= COLUMNS_MAX, "too many columns");
    out.push(FORMAT_VERSION);
    put_str(out, table);
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(&(ncols as u16).to_le_bytes());
    let mut written = 0usize;
    #[cfg(debug_assertions)]
    let mut prev: Option<&str> = None;
    for c in cols {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                prev.is_none_or(|p| p.as_bytes() < c.name.as_bytes()),
                "columns not sorted: {prev:?} then {:?}",
                c.name
            );
            prev = Some(c.name);
        }
        put_column(out, &c);
        written += 1;
    }
    assert_eq!(written, ncols, "column count");
}

/// The parts of the row encoding for writers that fill many rows a column at a time (the Arrow
/// ingest path): size every row first ([`RowHead::encoded_len`] plus [`ColumnPrefix::encoded_len`] of
/// each column it has), write each row's head into its slot ([`RowHead::write`]), then each
/// column, in canonical (name) order, at the row's cursor ([`ColumnPrefix::write`]). The
/// result is byte for byte what [`encode_row`] gives; the caller keeps the column order.
#[derive(Debug, Clone)]
pub struct RowHead {
    /// `version | table:str`, the same for every row of the table.
    start: Vec<u8>,
}

impl RowHead {
    pub fn new(table: &str) -> RowHead {
        let mut start = Vec::with_capacity(1 + 4 + table.len());
        start.push(FORMAT_VERSION);
        put_str(&mut start, table);
        RowHead { start }
    }

    /// Bytes of a row before its first column: version, table, time and column count.
    pub fn encoded_len(&self) -> usize {
        self.start.len() + 8 + 2
    }

    /// Writes the head of a row of `ncols` columns into `slot` ([`RowHead::encoded_len`]
    /// bytes).
    #[inline]
    pub fn write(&self, slot: &mut [u8], time: i64, ncols: u16) {
        let n = self.start.len();
        slot[..n].copy_from_slice(&self.start);
        slot[n..n + 8].copy_from_slice(&time.to_le_bytes());
        slot[n + 8..n + 10].copy_from_slice(&ncols.to_le_bytes());
    }
}

/// The `name:str | kind:u8` that starts every value of one column.
#[derive(Debug, Clone)]
pub struct ColumnPrefix {
    bytes: Vec<u8>,
    /// Strings and tags carry a `u32` length before their bytes.
    sized: bool,
}

impl ColumnPrefix {
    pub fn new(name: &str, kind: Kind) -> ColumnPrefix {
        let mut bytes = Vec::with_capacity(4 + name.len() + 1);
        put_str(&mut bytes, name);
        bytes.push(kind as u8);
        ColumnPrefix {
            bytes,
            sized: matches!(kind, Kind::Tag | Kind::Str),
        }
    }

    /// Encoded length of this column holding a value of `value_len` bytes (the UTF-8 length
    /// of a string or tag, 8 for a number, 1 for a bool).
    #[inline]
    pub fn encoded_len(&self, value_len: usize) -> usize {
        self.bytes.len() + if self.sized { 4 } else { 0 } + value_len
    }

    /// Writes this column with `value` (a string's UTF-8 bytes, or a number's or bool's
    /// little-endian bytes) at `at` in `enc`; returns where the next column starts.
    ///
    /// Always inlined: it runs once per column of every row, and compiled as a call its
    /// register saves took a third of its time.
    #[inline(always)]
    pub fn write(&self, enc: &mut [u8], at: usize, value: &[u8]) -> usize {
        let mut at = at;
        put_short(&mut enc[at..], &self.bytes);
        at += self.bytes.len();
        if self.sized {
            enc[at..at + 4].copy_from_slice(&(value.len() as u32).to_le_bytes());
            at += 4;
        }
        put_short(&mut enc[at..], value);
        at + value.len()
    }
}

/// Copies `src` to the start of `dst` (at least as long). Column names and tag values are
/// mostly under 32 bytes, and a row has a dozen or more of them: a slice of up to 32 bytes is
/// copied as two overlapping fixed-size pieces, which compile to a few moves in place, rather
/// than through a call to `memcpy` (a tenth of the time of preparing a record batch went to
/// those calls).
#[inline(always)]
fn put_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    let dst = &mut dst[..n];
    match n {
        0 => {}
        1..=3 => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        8..=15 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
        16..=32 => {
            dst[..16].copy_from_slice(&src[..16]);
            dst[n - 16..].copy_from_slice(&src[n - 16..]);
        }
        _ => dst.copy_from_slice(src),
    }
}

/// A row decoded without copying: strings borrow from the encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRef<'a> {
    pub table: &'a str,
    pub time: i64,
    pub columns: Vec<ColumnRef<'a>>,
}

impl RowRef<'_> {
    pub fn to_owned_row(&self) -> OwnedRow {
        OwnedRow {
            table: self.table.to_owned(),
            time: self.time,
            columns: self
                .columns
                .iter()
                .map(|c| OwnedColumn {
                    name: c.name.to_owned(),
                    value: c.value.to_owned_value(),
                })
                .collect(),
        }
    }
}

/// Decodes a canonical row, rejecting anything [`encode_row`] would not have produced.
pub fn decode_row(bytes: &[u8]) -> Result<RowRef<'_>, FormatError> {
    let mut r = Reader::new(bytes);
    let version = r.u8("row version")?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            what: "row",
            version,
        });
    }
    let table = r.str("row table")?;
    let time = r.i64("row time")?;
    let ncols = r.u16("row column count")? as usize;
    let mut columns: Vec<ColumnRef<'_>> = Vec::with_capacity(ncols.min(bytes.len() / 6 + 1));
    for _ in 0..ncols {
        let name = r.str("column name")?;
        if let Some(prev) = columns.last() {
            if prev.name.as_bytes() >= name.as_bytes() {
                return Err(FormatError::ColumnOrder {
                    prev: prev.name.to_owned(),
                    next: name.to_owned(),
                });
            }
        }
        let value = match Kind::from_u8(r.u8("column kind")?)? {
            Kind::Tag => ValueRef::Tag(r.str("tag value")?),
            Kind::Str => ValueRef::Str(r.str("string value")?),
            Kind::F64 => ValueRef::F64(f64::from_bits(r.u64("f64 value")?)),
            Kind::I64 => ValueRef::I64(r.i64("i64 value")?),
            Kind::U64 => ValueRef::U64(r.u64("u64 value")?),
            Kind::Bool => match r.u8("bool value")? {
                0 => ValueRef::Bool(false),
                1 => ValueRef::Bool(true),
                b => return Err(FormatError::Bool(b)),
            },
        };
        columns.push(ColumnRef { name, value });
    }
    r.finish("row")?;
    Ok(RowRef {
        table,
        time,
        columns,
    })
}

/// The leaf hash of a row encoding, `H(0x00 || row)`.
pub fn row_leaf_hash(encoding: &[u8]) -> Hash {
    leaf_hash(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn put_short_copies_exactly_the_slice_for_every_length() {
        for n in 0..=80usize {
            let src: Vec<u8> = (0..n).map(|i| i as u8 ^ 0xa5).collect();
            let mut dst = vec![0xeeu8; n + 8];
            put_short(&mut dst, &src);
            assert_eq!(&dst[..n], &src[..], "length {n}");
            assert!(
                dst[n..].iter().all(|&b| b == 0xee),
                "length {n}: wrote past the end"
            );
        }
    }

    fn value_strategy() -> impl Strategy<Value = OwnedValue> {
        prop_oneof![
            ".{0,12}".prop_map(OwnedValue::Tag),
            any::<u64>().prop_map(|b| OwnedValue::F64(f64::from_bits(b))),
            any::<i64>().prop_map(OwnedValue::I64),
            any::<u64>().prop_map(OwnedValue::U64),
            any::<bool>().prop_map(OwnedValue::Bool),
            ".{0,20}".prop_map(OwnedValue::Str),
        ]
    }

    fn row_strategy() -> impl Strategy<Value = OwnedRow> {
        (
            "[a-z0-9_-]{1,8}/.{1,10}",
            any::<i64>(),
            proptest::collection::btree_map(".{1,8}", value_strategy(), 0..12),
        )
            .prop_map(|(table, time, cols)| OwnedRow {
                table,
                time,
                // BTreeMap<String> iterates in bytewise order, which is the canonical order.
                columns: cols
                    .into_iter()
                    .map(|(name, value)| OwnedColumn { name, value })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn column_at_a_time_writer_gives_the_encoding(row in row_strategy()) {
            let enc = row.encode().unwrap();
            let head = RowHead::new(&row.table);
            let cols: Vec<(ColumnPrefix, Vec<u8>)> = row
                .columns
                .iter()
                .map(|c| {
                    let value = match &c.value {
                        OwnedValue::Tag(s) | OwnedValue::Str(s) => s.as_bytes().to_vec(),
                        OwnedValue::F64(v) => v.to_bits().to_le_bytes().to_vec(),
                        OwnedValue::I64(v) => v.to_le_bytes().to_vec(),
                        OwnedValue::U64(v) => v.to_le_bytes().to_vec(),
                        OwnedValue::Bool(v) => vec![u8::from(*v)],
                    };
                    (ColumnPrefix::new(&c.name, c.value.as_ref().kind()), value)
                })
                .collect();
            let len = head.encoded_len() + cols.iter().map(|(p, v)| p.encoded_len(v.len())).sum::<usize>();
            prop_assert_eq!(len, enc.len());
            let mut out = vec![0u8; len];
            head.write(&mut out, row.time, cols.len() as u16);
            let mut at = head.encoded_len();
            for (p, v) in &cols {
                at = p.write(&mut out, at, v);
            }
            prop_assert_eq!(at, len);
            prop_assert_eq!(out, enc);
        }

        #[test]
        fn encode_decode_round_trips(row in row_strategy()) {
            let enc = row.encode().unwrap();
            let dec = decode_row(&enc).unwrap();
            let back = dec.to_owned_row();
            // Compare through encodings: NaN payloads compare unequal as f64 but equal as bits.
            prop_assert_eq!(back.encode().unwrap(), enc);
        }

        #[test]
        fn any_truncation_is_rejected(row in row_strategy(), cut in any::<prop::sample::Index>()) {
            let enc = row.encode().unwrap();
            let at = cut.index(enc.len());
            prop_assert!(decode_row(&enc[..at]).is_err());
        }

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_row(&bytes);
        }
    }

    #[test]
    fn unsorted_or_repeated_columns_are_refused() {
        let a = ColumnRef {
            name: "b",
            value: ValueRef::I64(1),
        };
        let b = ColumnRef {
            name: "a",
            value: ValueRef::I64(1),
        };
        let mut out = Vec::new();
        assert!(matches!(
            encode_row(&mut out, "d/t", 0, &[a, b]),
            Err(FormatError::ColumnOrder { .. })
        ));
        assert!(matches!(
            encode_row(&mut out, "d/t", 0, &[a, a]),
            Err(FormatError::ColumnOrder { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn trailing_bytes_and_bad_bools_are_refused() {
        let row = OwnedRow {
            table: "d/t".into(),
            time: 1,
            columns: vec![OwnedColumn {
                name: "on".into(),
                value: OwnedValue::Bool(true),
            }],
        };
        let mut enc = row.encode().unwrap();
        enc.push(0);
        assert!(matches!(
            decode_row(&enc),
            Err(FormatError::Trailing { .. })
        ));
        enc.pop();
        *enc.last_mut().unwrap() = 2;
        assert_eq!(decode_row(&enc), Err(FormatError::Bool(2)));
    }

    #[test]
    fn table_names() {
        assert!(validate_table_name("bench/readings").is_ok());
        assert!(validate_table_name("my-db_1/a b/c").is_ok());
        for bad in ["readings", "/t", "db/", "d b/t", "dé/t"] {
            assert!(validate_table_name(bad).is_err(), "{bad}");
        }
    }
}

//! Arrow record batches in: the bulk ingest path (Flight `DoPut`).
//!
//! [`prepare_arrow`] turns one [`RecordBatch`] for one table into the same [`Prepared`] request
//! that [`crate::prepare::prepare`] makes from line protocol: the same table schema evolution and
//! kind-conflict errors (the [`Catalog`]), the same series hash and shard, the same canonical
//! row encoding and leaf hash. A row written as line protocol and the same row written as Arrow
//! are the same ledger row (`engine/core/tests/arrow_ingest.rs` checks it).
//!
//! ## Batch shape
//! - `time`: `Timestamp(unit, _)` (any unit, converted to nanoseconds) or `Int64` nanoseconds;
//!   required, never null, within [`TIME_NS_MIN`]..=[`TIME_NS_MAX`].
//! - Tags: columns whose field metadata has `annals.kind = "tag"` (or InfluxDB 3's
//!   `iox::column::type = "iox::column_type::tag"`), of type `Utf8`, `LargeUtf8`, `Utf8View` or
//!   a dictionary of those with any integer key. A null tag is an absent tag.
//! - Fields: every other column. `Float64`/`Float32` → f64, `Int8..Int64` → i64,
//!   `UInt8..UInt64` → u64, `Boolean` → bool, `Utf8`/`LargeUtf8`/`Utf8View` (or a dictionary of
//!   them) → string. A null field is an absent field; a column of type `Null` is ignored. Any
//!   other type is refused, naming the column and its type.
//!
//! ## Rules (those of line protocol, see `annals-lp`)
//! Table, tag and field names are 1..=`name_len_max` bytes, none is `time` (but the time
//! column), none twice, without line breaks (line protocol cannot carry them); at most
//! `tags_max` tag and `fields_max` field columns; tag values are non-empty, at most
//! `tag_value_len_max` bytes and without line breaks; floats are finite; strings are at most
//! `string_len_max` bytes; every row has at least one non-null field. Limits come from
//! [`PrepareOptions::parse`]. A column that is null in every row is as absent as in line
//! protocol: it adds nothing to the table's schema and its kind is not checked.
//!
//! Errors name the 0-based row of the batch and the column ([`WriteError::Batch`],
//! [`WriteError::BatchConflict`]). The whole batch is refused on the first error (partial
//! acceptance is not offered for batches). A [`ChunkOrigin`]'s `lines` hold each row's 0-based
//! index in the batch, so receipts name rows as errors do.
//!
//! ## Cost
//! Checks and conversions run a column at a time (casts to the table's Arrow types, one pass
//! per column for value checks). So does the canonical row encoding: each row's length, then
//! each column written at every row's cursor, with the column's name and kind bytes encoded
//! once; a column without nulls is written without a validity test per row. Tag columns are
//! taken together as one tuple per row ([`crate::arrow_tags`], hashed and compared a column
//! at a time): each distinct tuple gets its dictionary keys and its series hash once, so per
//! row there is a hash of its tag values and the leaf hash (computed for the batch at once).
//! The chunk's Arrow columns are the input's columns, converted once and gathered per shard
//! with `take`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use annals_format::hash::Hash;
use annals_format::row::{ColumnPrefix, ColumnRef, Kind, RowHead, ValueRef};
use annals_lp::{Limits, TIME_NS_MAX, TIME_NS_MIN};
use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, DictionaryArray, StringArray,
    TimestampNanosecondArray, UInt32Array,
};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Int32Type, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::arrow_tags::TagTuples;
use crate::catalog::{Catalog, SchemaError, TableSchema};
use crate::engine::Engine;
use crate::error::{EngineError, WriteError};
use crate::prepare::{
    series_hash, validate_db, Chunk, ChunkOrigin, Prehashed, PrepareOptions, Prepared, ShardPart,
};

/// Most rows one batch may carry (a Flight client sends larger inputs as several batches).
pub const BATCH_ROWS_MAX: usize = 1 << 20;
/// Field metadata key that marks a tag column (value [`KIND_TAG`]).
pub const KIND_KEY: &str = "annals.kind";
/// Value of [`KIND_KEY`] for a tag column.
pub const KIND_TAG: &str = "tag";
/// InfluxDB 3's field metadata key for a column's role (value [`IOX_TAG`] for a tag).
pub const IOX_TYPE_KEY: &str = "iox::column::type";
/// Value of [`IOX_TYPE_KEY`] for a tag column.
pub const IOX_TAG: &str = "iox::column_type::tag";
/// Name of the timestamp column.
pub const TIME_COLUMN: &str = "time";

impl Engine {
    /// Validates and prepares one Arrow batch for `db`.`table` (same rules as line protocol).
    ///
    /// No side effects but new columns in the catalog; see [`crate::arrow_ingest`] for the
    /// batch shape and the rules. Submit the result with [`Engine::submit`].
    pub fn prepare_arrow(
        &self,
        db: &str,
        table: &str,
        batch: &RecordBatch,
        opts: &PrepareOptions,
    ) -> Result<Prepared, WriteError> {
        prepare_arrow(self.catalog(), self.config().shards, db, table, batch, opts)
    }
}

fn column_error(row: Option<usize>, column: &str, message: impl Into<String>) -> WriteError {
    WriteError::Batch {
        row,
        column: Some(column.to_owned()),
        message: message.into(),
    }
}

fn batch_error(row: Option<usize>, message: impl Into<String>) -> WriteError {
    WriteError::Batch {
        row,
        column: None,
        message: message.into(),
    }
}

/// Whether a name or tag value holds something line protocol cannot carry.
fn has_line_break(s: &str) -> bool {
    s.bytes().any(|b| b == b'\n' || b == b'\r')
}

fn check_name(what: &str, name: &str, limits: &Limits) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("empty {what} name"));
    }
    if name.len() > limits.name_len_max {
        return Err(format!(
            "{what} name is {} bytes long, over the limit of {} bytes",
            name.len(),
            limits.name_len_max
        ));
    }
    if has_line_break(name) {
        return Err(format!("{what} name contains a line break"));
    }
    Ok(())
}

fn is_tag(field: &Field) -> bool {
    let m = field.metadata();
    m.get(KIND_KEY).is_some_and(|v| v == KIND_TAG)
        || m.get(IOX_TYPE_KEY).is_some_and(|v| v == IOX_TAG)
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The ledger kind of an input column, or why it has none.
fn kind_of(field: &Field) -> Result<Kind, String> {
    let t = field.data_type();
    let stringy =
        is_string(t) || matches!(t, DataType::Dictionary(k, v) if k.is_integer() && is_string(v));
    if is_tag(field) {
        return if stringy {
            Ok(Kind::Tag)
        } else {
            Err(format!(
                "tag columns must be Utf8, LargeUtf8, Utf8View or a dictionary of them, not {t}"
            ))
        };
    }
    Ok(match t {
        DataType::Float64 | DataType::Float32 => Kind::F64,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Kind::I64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => Kind::U64,
        DataType::Boolean => Kind::Bool,
        _ if stringy => Kind::Str,
        _ => {
            return Err(format!(
                "type {t} has no line-protocol equivalent (use Float64, Int64, UInt64, Boolean or Utf8; mark tags with metadata {KIND_KEY}={KIND_TAG})"
            ))
        }
    })
}

/// One non-time column with at least one value, converted to its table type.
struct Col<'b> {
    name: &'b str,
    kind: Kind,
    /// The column as the table stores it (`annals_storage::block_file::arrow_type`).
    array: ArrayRef,
    /// Logical validity (dictionary values included); `None`: no nulls.
    valid: Option<NullBuffer>,
    /// First row with a value.
    first: usize,
    /// Position in the input (for the order new columns are added in).
    input: usize,
}

impl Col<'_> {
    #[inline]
    fn is_valid(&self, row: usize) -> bool {
        self.valid.as_ref().is_none_or(|v| v.is_valid(row))
    }
}

/// Typed view of a [`Col`] for the row loop.
#[derive(Clone, Copy)]
enum Access<'a> {
    Tag(&'a [i32], &'a StringArray),
    F64(&'a [f64]),
    I64(&'a [i64]),
    U64(&'a [u64]),
    Bool(&'a BooleanBuffer),
    Str(&'a StringArray),
}

impl<'a> Access<'a> {
    fn of(col: &'a Col<'_>) -> Access<'a> {
        let a = &col.array;
        match col.kind {
            Kind::Tag => {
                let d = a.as_dictionary::<Int32Type>();
                Access::Tag(d.keys().values(), d.values().as_string::<i32>())
            }
            Kind::F64 => Access::F64(a.as_primitive::<arrow::datatypes::Float64Type>().values()),
            Kind::I64 => Access::I64(a.as_primitive::<arrow::datatypes::Int64Type>().values()),
            Kind::U64 => Access::U64(a.as_primitive::<arrow::datatypes::UInt64Type>().values()),
            Kind::Bool => Access::Bool(a.as_boolean().values()),
            Kind::Str => Access::Str(a.as_string::<i32>()),
        }
    }

    /// The value of a valid row.
    #[inline]
    fn get(&self, row: usize) -> ValueRef<'a> {
        match self {
            Access::Tag(keys, values) => ValueRef::Tag(values.value(keys[row] as usize)),
            Access::F64(v) => ValueRef::F64(v[row]),
            Access::I64(v) => ValueRef::I64(v[row]),
            Access::U64(v) => ValueRef::U64(v[row]),
            Access::Bool(v) => ValueRef::Bool(v.value(row)),
            Access::Str(v) => ValueRef::Str(v.value(row)),
        }
    }
}

/// The `time` column as nanoseconds.
fn times_of(batch: &RecordBatch) -> Result<Vec<i64>, WriteError> {
    let schema = batch.schema();
    let mut found = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() == TIME_COLUMN);
    let Some((i, field)) = found.next() else {
        return Err(column_error(
            None,
            TIME_COLUMN,
            "missing: every batch needs a time column (Timestamp or Int64 nanoseconds)",
        ));
    };
    if found.next().is_some() {
        return Err(column_error(None, TIME_COLUMN, "appears more than once"));
    }
    let a = batch.column(i);
    if let Some(n) = a.logical_nulls() {
        if let Some(row) = (0..a.len()).find(|&r| n.is_null(r)) {
            return Err(column_error(
                Some(row),
                TIME_COLUMN,
                "null time: every row needs a timestamp",
            ));
        }
    }
    let (raw, per_unit): (&[i64], i64) = match field.data_type() {
        DataType::Int64 => (a.as_primitive::<arrow::datatypes::Int64Type>().values(), 1),
        DataType::Timestamp(unit, _) => {
            let per = match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            };
            let v = match unit {
                TimeUnit::Second => a
                    .as_primitive::<arrow::datatypes::TimestampSecondType>()
                    .values()
                    .as_ref(),
                TimeUnit::Millisecond => a
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                    .values()
                    .as_ref(),
                TimeUnit::Microsecond => a
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .values()
                    .as_ref(),
                TimeUnit::Nanosecond => a
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                    .values()
                    .as_ref(),
            };
            (v, per)
        }
        other => {
            return Err(column_error(
                None,
                TIME_COLUMN,
                format!("type {other} is not a time (use Timestamp or Int64 nanoseconds)"),
            ))
        }
    };
    let mut out = Vec::with_capacity(raw.len());
    for (row, &t) in raw.iter().enumerate() {
        match t
            .checked_mul(per_unit)
            .filter(|ns| (TIME_NS_MIN..=TIME_NS_MAX).contains(ns))
        {
            Some(ns) => out.push(ns),
            None => {
                return Err(column_error(
                    Some(row),
                    TIME_COLUMN,
                    format!("timestamp {t} is out of range (nanoseconds must lie in {TIME_NS_MIN}..={TIME_NS_MAX})"),
                ))
            }
        }
    }
    Ok(out)
}

/// Converts a column to its table type and checks its values (column at a time). `None`: no
/// row has a value.
fn convert<'b>(
    field: &'b Field,
    input: usize,
    array: &ArrayRef,
    kind: Kind,
    limits: &Limits,
) -> Result<Option<Col<'b>>, WriteError> {
    let name = field.name().as_str();
    if array.logical_null_count() == array.len() {
        return Ok(None);
    }
    let target = annals_storage::block_file::arrow_type(kind);
    let converted = if array.data_type() == &target {
        array.clone()
    } else {
        cast(array, &target).map_err(|e| {
            column_error(
                None,
                name,
                format!("cannot convert {} to {target}: {e}", array.data_type()),
            )
        })?
    };
    let valid = converted.logical_nulls().filter(|n| n.null_count() > 0);
    let is_valid = |r: usize| valid.as_ref().is_none_or(|v| v.is_valid(r));
    let first = (0..converted.len())
        .find(|&r| is_valid(r))
        .expect("a column with a value has a first value");
    match kind {
        Kind::Tag => {
            let d: &DictionaryArray<Int32Type> = converted.as_dictionary();
            let values = d.values().as_string::<i32>();
            // Check each dictionary value once, then which rows use a bad one.
            let bad: Vec<Option<String>> = (0..values.len())
                .map(|k| {
                    if values.is_null(k) {
                        return None;
                    }
                    let v = values.value(k);
                    if v.is_empty() {
                        Some("empty tag value (make the tag null instead)".to_owned())
                    } else if v.len() > limits.tag_value_len_max {
                        Some(format!(
                            "tag value is {} bytes long, over the limit of {} bytes",
                            v.len(),
                            limits.tag_value_len_max
                        ))
                    } else if has_line_break(v) {
                        Some("tag value contains a line break".to_owned())
                    } else {
                        None
                    }
                })
                .collect();
            if bad.iter().any(Option::is_some) {
                let keys = d.keys().values();
                if let Some(row) =
                    (0..keys.len()).find(|&r| is_valid(r) && bad[keys[r] as usize].is_some())
                {
                    let msg = bad[keys[row] as usize].clone().expect("bad value");
                    return Err(column_error(Some(row), name, msg));
                }
            }
        }
        Kind::F64 => {
            let v = converted
                .as_primitive::<arrow::datatypes::Float64Type>()
                .values();
            if let Some(row) = (0..v.len()).find(|&r| !v[r].is_finite() && is_valid(r)) {
                return Err(column_error(
                    Some(row),
                    name,
                    format!("float {} is not finite (NaN and infinities are refused, as in line protocol)", v[row]),
                ));
            }
        }
        Kind::Str => {
            let s = converted.as_string::<i32>();
            let offsets = s.value_offsets();
            let max = limits.string_len_max;
            if let Some(row) =
                (0..s.len()).find(|&r| (offsets[r + 1] - offsets[r]) as usize > max && is_valid(r))
            {
                return Err(column_error(
                    Some(row),
                    name,
                    format!(
                        "string is {} bytes long, over the limit of {max} bytes",
                        s.value(row).len()
                    ),
                ));
            }
        }
        Kind::I64 | Kind::U64 | Kind::Bool => {}
    }
    Ok(Some(Col {
        name,
        kind,
        array: converted,
        valid,
        first,
        input,
    }))
}

/// The first row with no non-null field, if any.
fn row_without_field(cols: &[Col<'_>], rows: usize) -> Option<usize> {
    let mut any: Option<BooleanBuffer> = None;
    for c in cols.iter().filter(|c| c.kind != Kind::Tag) {
        match &c.valid {
            None => return None,
            Some(v) => {
                any = Some(match any {
                    None => v.inner().clone(),
                    Some(a) => &a | v.inner(),
                })
            }
        }
    }
    match any {
        None => (rows > 0).then_some(0),
        Some(a) => (0..rows).find(|&r| !a.value(r)),
    }
}

/// Adds the batch's columns to the table (or checks them); kind conflicts name the first row
/// that has the column.
fn table_schema(
    catalog: &Catalog,
    name: &str,
    cols: &[Col<'_>],
) -> Result<Arc<TableSchema>, WriteError> {
    // New columns are added in the order line protocol would add them for the same rows
    // written in order, tags then fields in input order: by first row, then tags first.
    let mut order: Vec<usize> = (0..cols.len()).collect();
    order.sort_by_key(|&i| (cols[i].first, cols[i].kind != Kind::Tag, cols[i].input));
    let wanted: Vec<(&str, Kind)> = order
        .iter()
        .map(|&i| (cols[i].name, cols[i].kind))
        .collect();
    let row_of = |column: &str| {
        cols.iter()
            .find(|c| c.name == column)
            .map_or(0, |c| c.first)
    };
    let conflict = |source: SchemaError| {
        let row = match &source {
            SchemaError::KindConflict { column, .. } => row_of(column),
            _ => 0,
        };
        WriteError::BatchConflict { row, source }
    };
    if let Some(t) = catalog.table(name) {
        if Catalog::check(&t, &wanted).map_err(conflict)?.is_empty() {
            return Ok(t);
        }
    }
    catalog.ensure(name, &wanted).map_err(|e| match e {
        EngineError::Schema(source) => conflict(source),
        other => WriteError::Engine(other),
    })
}

/// One shard's rows while the batch is encoded.
struct ShardRows {
    rows: Vec<u32>,
    enc: Vec<u8>,
    offsets: Vec<u32>,
    /// Where the next column of each row goes in `enc`.
    cursor: Vec<usize>,
    leaf_hashes: Vec<Hash>,
    times: Vec<i64>,
    newest: HashMap<u64, (i64, u32), Prehashed>,
}

impl ShardRows {
    fn new(cap: usize) -> Self {
        let mut offsets = Vec::with_capacity(cap + 1);
        offsets.push(0);
        Self {
            rows: Vec::with_capacity(cap),
            enc: Vec::new(),
            offsets,
            cursor: Vec::new(),
            leaf_hashes: Vec::with_capacity(cap),
            times: Vec::with_capacity(cap),
            newest: HashMap::default(),
        }
    }
}

/// Writes column `col` of each of `rows` (those where it has a value) at the row's cursor in
/// `enc`, and moves the cursor past it.
#[inline]
fn fill<V: AsRef<[u8]>>(
    rows: &[u32],
    enc: &mut [u8],
    cursor: &mut [usize],
    prefix: &ColumnPrefix,
    col: &Col<'_>,
    value: impl Fn(usize) -> V,
) {
    if col.valid.is_none() {
        for (at, &row) in cursor.iter_mut().zip(rows) {
            *at = prefix.write(enc, *at, value(row as usize).as_ref());
        }
        return;
    }
    for (k, &row) in rows.iter().enumerate() {
        let row = row as usize;
        if col.is_valid(row) {
            cursor[k] = prefix.write(enc, cursor[k], value(row).as_ref());
        }
    }
}

/// Validates and prepares one Arrow batch for `db`.`table` against the catalog; see the module
/// documentation for the rules.
pub fn prepare_arrow(
    catalog: &Catalog,
    shards: usize,
    db: &str,
    table: &str,
    batch: &RecordBatch,
    opts: &PrepareOptions,
) -> Result<Prepared, WriteError> {
    validate_db(db)?;
    let limits = &opts.parse.limits;
    if opts.accept_partial {
        return Err(batch_error(
            None,
            "partial acceptance is not offered for record batches: fix or drop the bad rows",
        ));
    }
    check_name("table", table, limits).map_err(|m| batch_error(None, m))?;
    let n = batch.num_rows();
    if n == 0 {
        return Err(WriteError::Empty);
    }
    if n > BATCH_ROWS_MAX {
        return Err(batch_error(
            None,
            format!("batch has {n} rows, over the limit of {BATCH_ROWS_MAX}; send smaller batches"),
        ));
    }

    // Column-level checks: names, kinds, limits on counts.
    let schema = batch.schema();
    let mut kinds: Vec<Option<Kind>> = Vec::with_capacity(schema.fields().len());
    let mut names: HashSet<&str> = HashSet::with_capacity(schema.fields().len());
    let (mut tags, mut fields) = (0usize, 0usize);
    for field in schema.fields() {
        let name = field.name().as_str();
        if name == TIME_COLUMN {
            kinds.push(None);
            continue;
        }
        let what = if is_tag(field) { "tag" } else { "field" };
        check_name(what, name, limits).map_err(|m| column_error(None, name, m))?;
        if !names.insert(name) {
            return Err(column_error(None, name, "appears more than once"));
        }
        if field.data_type() == &DataType::Null {
            kinds.push(None);
            continue;
        }
        let kind = kind_of(field).map_err(|m| column_error(None, name, m))?;
        if kind == Kind::Tag {
            tags += 1;
        } else {
            fields += 1;
        }
        kinds.push(Some(kind));
    }
    if tags > limits.tags_max {
        return Err(batch_error(
            None,
            format!("{tags} tag columns, over the limit of {}", limits.tags_max),
        ));
    }
    if fields > limits.fields_max {
        return Err(batch_error(
            None,
            format!(
                "{fields} field columns, over the limit of {}",
                limits.fields_max
            ),
        ));
    }

    let times = times_of(batch)?;
    // Tag columns a row at a time: distinct tuples numbered, dictionaries built per tuple.
    let tag_inputs: Vec<usize> = (0..kinds.len())
        .filter(|&i| kinds[i] == Some(Kind::Tag))
        .collect();
    let tuples = TagTuples::build(
        &tag_inputs
            .iter()
            .map(|&i| batch.column(i))
            .collect::<Vec<_>>(),
        n,
    )
    .map_err(|(c, e)| {
        let i = tag_inputs[c];
        let t = batch.column(i).data_type();
        column_error(
            None,
            schema.field(i).name(),
            format!("cannot convert {t} to Dictionary(Int32, Utf8): {e}"),
        )
    })?;
    let mut cols: Vec<Col<'_>> = Vec::with_capacity(kinds.len());
    for (i, (field, kind)) in schema.fields().iter().zip(&kinds).enumerate() {
        if let Some(kind) = kind {
            let array = match tag_inputs.binary_search(&i) {
                Ok(t) => &tuples.columns[t],
                Err(_) => batch.column(i),
            };
            if let Some(c) = convert(field, i, array, *kind, limits)? {
                cols.push(c);
            }
        }
    }
    if let Some(row) = row_without_field(&cols, n) {
        return Err(batch_error(
            Some(row),
            "no fields: every row needs at least one non-null field",
        ));
    }

    let full = format!("{db}/{table}");
    let schema = table_schema(catalog, &full, &cols)?;

    // Canonical order: bytewise by name, as the row encoding sorts columns.
    cols.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let access: Vec<Access<'_>> = cols.iter().map(Access::of).collect();
    let tag_cols: Vec<usize> = (0..cols.len())
        .filter(|&i| cols[i].kind == Kind::Tag)
        .collect();

    // The rows of each shard, by series hash.
    let shards = shards.max(1);
    let name = schema.name.as_str();
    let mut out: Vec<ShardRows> = (0..shards)
        .map(|_| {
            ShardRows::new(if shards == 1 {
                n
            } else {
                n / shards + n / 8 + 16
            })
        })
        .collect();
    // The series hash depends on the tags alone: once per tag tuple.
    let tuple_series: Vec<u64> = tuples
        .first_row
        .iter()
        .map(|&row| {
            let row = row as usize;
            series_hash(
                name,
                tag_cols
                    .iter()
                    .filter(|&&i| cols[i].is_valid(row))
                    .map(|&i| ColumnRef {
                        name: cols[i].name,
                        value: access[i].get(row),
                    }),
            )
        })
        .collect();
    // The newest row of each tuple, then of each series: the greatest (time, position), so a
    // later row with the same time wins, as in line protocol.
    let mut newest_of_tuple: Vec<(i64, u32)> = vec![(i64::MIN, 0); tuple_series.len()];
    for (row, &time) in times.iter().enumerate() {
        let t = tuples.tuple_of[row] as usize;
        let s = &mut out[(tuple_series[t] % shards as u64) as usize];
        let at = s.rows.len() as u32;
        s.rows.push(row as u32);
        s.times.push(time);
        newest_of_tuple[t] = newest_of_tuple[t].max((time, at));
    }
    for (&series, &newest) in tuple_series.iter().zip(&newest_of_tuple) {
        let s = &mut out[(series % shards as u64) as usize];
        let e = s.newest.entry(series).or_insert(newest);
        *e = (*e).max(newest);
    }

    // Canonical encodings, a column at a time (`annals_format::row::RowHead` and
    // `ColumnPrefix`): each row's length first, then its head, then each column (in canonical
    // order) at the row's cursor. The same bytes as `encode_row` (the arrow_ingest tests
    // compare them with line protocol's).
    let row_head = RowHead::new(name);
    let head = row_head.encoded_len();
    let prefixes: Vec<ColumnPrefix> = cols
        .iter()
        .map(|c| ColumnPrefix::new(c.name, c.kind))
        .collect();
    let mut lens: Vec<u32> = vec![head as u32; n];
    let mut ncols: Vec<u16> = vec![0; n];
    for ((c, a), prefix) in cols.iter().zip(&access).zip(&prefixes) {
        let valid = |row: usize| c.is_valid(row);
        let mut add = |row: usize, len: u32| {
            lens[row] += len;
            ncols[row] += 1;
        };
        match a {
            Access::Tag(keys, values) => {
                // The encoded length of each dictionary value, once.
                let offs = values.value_offsets();
                let key_len: Vec<u32> = offs
                    .windows(2)
                    .map(|w| prefix.encoded_len((w[1] - w[0]) as usize) as u32)
                    .collect();
                for (row, &k) in keys.iter().enumerate() {
                    if valid(row) {
                        add(row, key_len[k as usize]);
                    }
                }
            }
            Access::Str(values) => {
                let offs = values.value_offsets();
                for row in 0..n {
                    if valid(row) {
                        add(
                            row,
                            prefix.encoded_len((offs[row + 1] - offs[row]) as usize) as u32,
                        );
                    }
                }
            }
            Access::F64(_) | Access::I64(_) | Access::U64(_) | Access::Bool(_) => {
                let width = if matches!(a, Access::Bool(_)) { 1 } else { 8 };
                let len = prefix.encoded_len(width) as u32;
                if c.valid.is_none() {
                    for (l, k) in lens.iter_mut().zip(ncols.iter_mut()) {
                        *l += len;
                        *k += 1;
                    }
                } else {
                    for row in 0..n {
                        if valid(row) {
                            add(row, len);
                        }
                    }
                }
            }
        }
    }
    for s in &mut out {
        let mut total = 0u32;
        for &row in &s.rows {
            total += lens[row as usize];
            s.offsets.push(total);
        }
        s.enc = vec![0; total as usize];
        s.cursor = Vec::with_capacity(s.rows.len());
        for (k, &row) in s.rows.iter().enumerate() {
            let at = s.offsets[k] as usize;
            row_head.write(&mut s.enc[at..at + head], s.times[k], ncols[row as usize]);
            s.cursor.push(at + head);
        }
    }
    for ((c, a), prefix) in cols.iter().zip(&access).zip(&prefixes) {
        for s in &mut out {
            let (rows, enc, cursor) = (&s.rows[..], &mut s.enc[..], &mut s.cursor[..]);
            match *a {
                Access::Tag(keys, values) => fill(rows, enc, cursor, prefix, c, |r| {
                    values.value(keys[r] as usize).as_bytes()
                }),
                Access::Str(values) => {
                    fill(rows, enc, cursor, prefix, c, |r| values.value(r).as_bytes())
                }
                Access::F64(v) => fill(rows, enc, cursor, prefix, c, |r| {
                    v[r].to_bits().to_le_bytes()
                }),
                Access::I64(v) => fill(rows, enc, cursor, prefix, c, |r| v[r].to_le_bytes()),
                Access::U64(v) => fill(rows, enc, cursor, prefix, c, |r| v[r].to_le_bytes()),
                Access::Bool(v) => fill(rows, enc, cursor, prefix, c, |r| [u8::from(v.value(r))]),
            }
        }
    }
    for s in &mut out {
        debug_assert!(s.offsets[1..]
            .iter()
            .zip(&s.cursor)
            .all(|(&to, &c)| to as usize == c));
        annals_format::hash::many::leaf_hashes(&s.enc, &s.offsets, &mut s.leaf_hashes);
    }

    // Arrow columns per shard, in the table's schema.
    let mut parts = Vec::new();
    let mut origins = Vec::new();
    for (shard, s) in out.into_iter().enumerate() {
        if s.rows.is_empty() {
            continue;
        }
        let whole = s.rows.len() == n;
        let indices = (!whole).then(|| UInt32Array::from(s.rows.clone()));
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len() + 1);
        arrays.push(Arc::new(TimestampNanosecondArray::from(s.times.clone())));
        for (cname, kind) in &schema.columns {
            let array = match cols.iter().find(|c| c.name == cname) {
                Some(c) => match &indices {
                    None => c.array.clone(),
                    Some(ix) => take(&c.array, ix, None)
                        .map_err(|e| WriteError::Engine(EngineError::storage(e)))?,
                },
                None => {
                    new_null_array(&annals_storage::block_file::arrow_type(*kind), s.rows.len())
                }
            };
            arrays.push(array);
        }
        let batch = RecordBatch::try_new(schema.arrow.clone(), arrays)
            .map_err(|e| WriteError::Engine(EngineError::storage(e)))?;
        debug_assert_eq!(batch.num_rows(), s.leaf_hashes.len());
        let leaf_hashes = Arc::new(s.leaf_hashes);
        let origin = ChunkOrigin {
            table: schema.name.clone(),
            lines: s.rows,
            leaf_hashes: leaf_hashes.clone(),
        };
        let chunk = Chunk {
            table: schema.clone(),
            batch,
            enc: s.enc,
            offsets: s.offsets,
            leaf_hashes,
            times: s.times,
            newest: s.newest.into_iter().map(|(k, (t, r))| (k, t, r)).collect(),
        };
        parts.push(ShardPart {
            shard,
            chunks: vec![chunk],
            request: None,
        });
        origins.push(vec![origin]);
    }
    Ok(Prepared {
        parts,
        origins,
        rows: n,
        rejected: Vec::new(),
    })
}

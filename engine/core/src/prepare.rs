//! Turning a line-protocol request into per-shard, per-table chunks, before anything is queued.
//!
//! Runs on the caller's thread (an HTTP connection task), so parsing, schema checks, canonical
//! encoding, leaf hashing and Arrow building all happen in parallel across connections; a
//! shard's writer only assigns positions, logs and acknowledges. The request is validated as a
//! whole first: a refused request writes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use annals_format::hash::Hash;
use annals_format::row::{encode_row, encode_row_presorted, ColumnRef, Kind, ValueRef};
use annals_lp::{FieldValue, Line, ParseOptions, Parser};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use xxhash_rust::xxh3::Xxh3;

use crate::catalog::{Catalog, SchemaError, TableSchema};
use crate::error::WriteError;

/// What a parse error says, without its line number (kept beside it in [`WriteError::Lines`]).
fn without_line(e: &annals_lp::LineError) -> String {
    match e.column() {
        Some(c) => format!("column {c}: {}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Longest database name.
pub const DB_NAME_MAX: usize = 64;

/// Checks a database name: 1-64 of `A-Z a-z 0-9 _ -`.
pub fn validate_db(db: &str) -> Result<(), WriteError> {
    if db.is_empty()
        || db.len() > DB_NAME_MAX
        || !db
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(WriteError::Database(db.to_owned()));
    }
    Ok(())
}

/// Rows of one table bound for one shard, ready for the writer.
#[derive(Debug)]
pub struct Chunk {
    pub table: Arc<TableSchema>,
    /// The rows as Arrow columns in the table's schema at preparation time.
    pub batch: RecordBatch,
    /// Canonical row encodings, concatenated; row `i` is `enc[offsets[i]..offsets[i + 1]]`.
    pub enc: Vec<u8>,
    pub offsets: Vec<u32>,
    /// Shared with the request's [`ChunkOrigin`], which needs them for `tx_id`s.
    pub leaf_hashes: Arc<Vec<Hash>>,
    pub times: Vec<i64>,
    /// The newest row of each series in the chunk, for the last-value cache.
    pub newest: crate::last_values::Newest,
}

impl Chunk {
    pub fn rows(&self) -> usize {
        self.leaf_hashes.len()
    }
    pub fn encoding(&self, i: usize) -> &[u8] {
        &self.enc[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// Where each row of a chunk came from, kept by the requester for its receipt.
#[derive(Debug, Clone)]
pub struct ChunkOrigin {
    pub table: String,
    /// Where each row came from: its 1-based input line (line protocol) or its 0-based row
    /// index in the batch (`Engine::prepare_arrow`).
    pub lines: Vec<u32>,
    /// Leaf hash of each row (to compute `tx_id`s once positions are known), shared with the
    /// chunk.
    pub leaf_hashes: Arc<Vec<Hash>>,
}

/// All rows of a request bound for one shard.
#[derive(Debug)]
pub struct ShardPart {
    pub shard: usize,
    pub chunks: Vec<Chunk>,
    /// Set for requests with an `Idempotency-Key`: the writer logs the part's positions.
    pub request: Option<RequestTag>,
}

/// Identifies one shard's part of a keyed request in the WAL.
#[derive(Debug, Clone)]
pub struct RequestTag {
    pub key: Arc<str>,
    pub body_hash: u64,
    pub default_time_ns: i64,
    pub part: u16,
    pub parts: u16,
}

/// A validated request.
#[derive(Debug)]
pub struct Prepared {
    pub parts: Vec<ShardPart>,
    /// Parallel to `parts[i].chunks[j]`.
    pub origins: Vec<Vec<ChunkOrigin>>,
    pub rows: usize,
    /// Lines refused under partial acceptance.
    pub rejected: Vec<(usize, String)>,
}

/// What a write asks for beyond the body.
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    pub parse: ParseOptions,
    /// Write the valid lines and report the others, instead of refusing the whole request.
    pub accept_partial: bool,
}

enum ColBuilder {
    Tag(StringDictionaryBuilder<Int32Type>),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl ColBuilder {
    fn new(kind: Kind, cap: usize) -> Self {
        match kind {
            Kind::Tag => ColBuilder::Tag(StringDictionaryBuilder::with_capacity(cap, 64, 1024)),
            Kind::F64 => ColBuilder::F64(Float64Builder::with_capacity(cap)),
            Kind::I64 => ColBuilder::I64(Int64Builder::with_capacity(cap)),
            Kind::U64 => ColBuilder::U64(UInt64Builder::with_capacity(cap)),
            Kind::Bool => ColBuilder::Bool(BooleanBuilder::with_capacity(cap)),
            Kind::Str => ColBuilder::Str(StringBuilder::with_capacity(cap, cap * 8)),
        }
    }
    fn append(&mut self, v: ValueRef<'_>) {
        match (self, v) {
            (ColBuilder::Tag(b), ValueRef::Tag(s)) => {
                b.append_value(s);
            }
            (ColBuilder::F64(b), ValueRef::F64(x)) => b.append_value(x),
            (ColBuilder::I64(b), ValueRef::I64(x)) => b.append_value(x),
            (ColBuilder::U64(b), ValueRef::U64(x)) => b.append_value(x),
            (ColBuilder::Bool(b), ValueRef::Bool(x)) => b.append_value(x),
            (ColBuilder::Str(b), ValueRef::Str(s)) => b.append_value(s),
            _ => unreachable!("kinds were checked against the schema"),
        }
    }
    fn append_null(&mut self) {
        match self {
            ColBuilder::Tag(b) => b.append_null(),
            ColBuilder::F64(b) => b.append_null(),
            ColBuilder::I64(b) => b.append_null(),
            ColBuilder::U64(b) => b.append_null(),
            ColBuilder::Bool(b) => b.append_null(),
            ColBuilder::Str(b) => b.append_null(),
        }
    }
    fn finish(&mut self) -> ArrayRef {
        match self {
            ColBuilder::Tag(b) => Arc::new(b.finish()),
            ColBuilder::F64(b) => Arc::new(b.finish()),
            ColBuilder::I64(b) => Arc::new(b.finish()),
            ColBuilder::U64(b) => Arc::new(b.finish()),
            ColBuilder::Bool(b) => Arc::new(b.finish()),
            ColBuilder::Str(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds one [`Chunk`] row by row.
pub struct ChunkBuilder {
    table: Arc<TableSchema>,
    time: TimestampNanosecondBuilder,
    cols: Vec<ColBuilder>,
    filled: Vec<u32>,
    enc: Vec<u8>,
    offsets: Vec<u32>,
    leaf_hashes: Vec<Hash>,
    times: Vec<i64>,
    lines: Vec<u32>,
    /// Series hash → (time, row) of its newest row so far.
    newest: HashMap<u64, (i64, u32), Prehashed>,
}

impl std::fmt::Debug for ChunkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuilder")
            .field("table", &self.table.name)
            .field("rows", &self.times.len())
            .finish()
    }
}

impl ChunkBuilder {
    pub fn new(table: Arc<TableSchema>, cap: usize) -> Self {
        let cols = table
            .columns
            .iter()
            .map(|(_, k)| ColBuilder::new(*k, cap))
            .collect();
        let n = table.columns.len();
        Self {
            table,
            time: TimestampNanosecondBuilder::with_capacity(cap),
            cols,
            filled: vec![0; n],
            enc: Vec::with_capacity(cap * 200),
            offsets: vec![0],
            leaf_hashes: Vec::with_capacity(cap),
            times: Vec::with_capacity(cap),
            lines: Vec::with_capacity(cap),
            newest: HashMap::default(),
        }
    }

    pub fn rows(&self) -> usize {
        self.times.len()
    }

    /// Adds a row whose columns are sorted by name. Every column must exist in the schema with
    /// its kind (checked by the caller); a violation is a bug and panics.
    pub fn push(&mut self, line: u32, time: i64, cols: &[ColumnRef<'_>]) {
        encode_row(&mut self.enc, &self.table.name, time, cols).expect("columns sorted and unique");
        let table = self.table.clone();
        let indexed = cols.iter().map(|c| {
            (
                *c,
                table
                    .column(c.name)
                    .expect("column checked against the schema")
                    .0,
            )
        });
        self.push_encoded(line, time, indexed, None);
    }

    /// Adds a parsed line whose [`Shape`] (canonical order and schema positions) is known.
    fn push_shaped(&mut self, line: &Line<'_>, shape: &Shape, series: u64) {
        let sorted = || shape.perm.iter().map(|&p| input_column(line, p));
        encode_row_presorted(
            &mut self.enc,
            &self.table.name,
            line.time_ns,
            shape.perm.len(),
            sorted(),
        );
        self.push_encoded(
            line.line_number as u32,
            line.time_ns,
            sorted().zip(shape.idx.iter().copied()),
            Some(series),
        );
    }

    /// Records the row just encoded at the end of `enc` and appends its columns (with their
    /// schema positions) to the Arrow builders; columns the row lacks get nulls.
    fn push_encoded<'c>(
        &mut self,
        line: u32,
        time: i64,
        cols: impl Iterator<Item = (ColumnRef<'c>, usize)>,
        series: Option<u64>,
    ) {
        let stamp = self.times.len() as u32 + 1;
        if let Some(s) = series {
            let row = self.times.len() as u32;
            let e = self.newest.entry(s).or_insert((time, row));
            if time >= e.0 {
                *e = (time, row);
            }
        }
        self.offsets.push(self.enc.len() as u32);
        self.times.push(time);
        self.lines.push(line);
        self.time.append_value(time);
        for (c, i) in cols {
            debug_assert_eq!(self.table.columns[i].0, c.name);
            debug_assert_eq!(self.table.columns[i].1, c.value.kind());
            self.cols[i].append(c.value);
            self.filled[i] = stamp;
        }
        for (i, b) in self.cols.iter_mut().enumerate() {
            if self.filled[i] != stamp {
                b.append_null();
            }
        }
    }

    /// Finishes the chunk and the requester's record of where its rows came from.
    pub fn finish(mut self) -> (Chunk, ChunkOrigin) {
        // Every row's leaf hash at once: the rows share the SIMD lanes (annals_format::hash::many).
        annals_format::hash::many::leaf_hashes(&self.enc, &self.offsets, &mut self.leaf_hashes);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.cols.len() + 1);
        arrays.push(Arc::new(self.time.finish()));
        for c in &mut self.cols {
            arrays.push(c.finish());
        }
        debug_assert!(arrays.iter().all(|a| a.len() == self.times.len()));
        let batch = RecordBatch::try_new(self.table.arrow.clone(), arrays)
            .expect("arrays match the table schema");
        let leaf_hashes = Arc::new(self.leaf_hashes);
        let origin = ChunkOrigin {
            table: self.table.name.clone(),
            lines: self.lines,
            leaf_hashes: leaf_hashes.clone(),
        };
        let chunk = Chunk {
            table: self.table,
            batch,
            enc: self.enc,
            offsets: self.offsets,
            leaf_hashes,
            times: self.times,
            newest: self
                .newest
                .into_iter()
                .map(|(s, (t, r))| (s, t, r))
                .collect(),
        };
        (chunk, origin)
    }
}

/// The shard of a series: its [`series_hash`] modulo the shard count.
pub fn shard_of<'c>(
    table: &str,
    sorted_cols: impl IntoIterator<Item = ColumnRef<'c>>,
    shards: usize,
) -> usize {
    (series_hash(table, sorted_cols) % shards as u64) as usize
}

/// Hashes a `u64` key that is already a hash (xxh3: a series hash, a tag tuple's hash) with
/// a keyed 64-bit finalizer, for maps looked up once per row: far cheaper than SipHash.
///
/// The key is random per process. The keys come from client data, and xxh3 is not keyed, so
/// a client could search for tag values whose hashes share their low bits. Used as they are,
/// those hashes would pile into one probe sequence of the map. The input is xored with the
/// key and then goes through the murmur3 64-bit finalizer, a bijection in which every output
/// bit depends on every input bit, so only full 64-bit collisions still collide, and which
/// inputs share low output bits depends on the unknown key. (A single folded multiply was
/// tried first; for some keys it left inputs that differ only in their high bits in a third
/// of the buckets they should spread over.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prehashed {
    key: u64,
}

/// A random key drawn once per process, for hashes of client data that must not let a client
/// choose colliding inputs (this map's, and tag values' in `crate::arrow_tags`).
pub(crate) fn process_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x616e_6e61_6c73_u64)
    })
}

impl Default for Prehashed {
    fn default() -> Self {
        Prehashed { key: process_key() }
    }
}

impl Prehashed {
    #[cfg(test)]
    fn with_key(key: u64) -> Self {
        Prehashed { key }
    }
}

impl std::hash::BuildHasher for Prehashed {
    type Hasher = PrehashedU64;
    fn build_hasher(&self) -> PrehashedU64 {
        PrehashedU64 {
            key: self.key,
            state: 0,
        }
    }
}

/// The [`std::hash::Hasher`] of [`Prehashed`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrehashedU64 {
    key: u64,
    state: u64,
}

impl std::hash::Hasher for PrehashedU64 {
    fn finish(&self) -> u64 {
        let mut x = self.state ^ self.key;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with it; fold anything else in rather than panic.
        for &b in bytes {
            self.state = self.state.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.state ^= v;
    }
}

#[cfg(test)]
mod prehashed_tests {
    use std::hash::BuildHasher;

    use super::Prehashed;

    /// Distinct low 12 bits of the hashes of `keys` (4096 of them; a random function gives
    /// about 4096 * (1 - 1/e) = 2589, with a spread of about 30).
    fn distinct_low_bits(b: Prehashed, keys: impl Iterator<Item = u64>) -> usize {
        let mut low: Vec<u64> = keys.map(|k| b.hash_one(k) & 0xFFF).collect();
        low.sort_unstable();
        low.dedup();
        low.len()
    }

    #[test]
    fn low_bit_collisions_do_not_survive_any_key() {
        // Keys equal in all but 12 bits, used as they are, would share a bucket; whatever the
        // process key, they must spread about as a random function would. The process keys
        // come from a fixed generator (splitmix64) so that the test is deterministic, plus
        // the edge keys and this process's own.
        let mut seed = 0x5EED_u64;
        let mut process_keys = vec![0, 1, u64::MAX, 1 << 63];
        for _ in 0..300 {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            process_keys.push(z ^ (z >> 31));
        }
        for key in process_keys {
            let b = Prehashed::with_key(key);
            for shift in [0u32, 12, 20, 32, 40, 52] {
                let n = distinct_low_bits(b, (0..4096u64).map(|i| (i << shift) ^ 0xABCD_0000_0000));
                assert!(
                    n > 2400,
                    "key {key:#x}, bits {shift}..: only {n} distinct low 12 bits"
                );
            }
        }
        let n = distinct_low_bits(
            Prehashed::default(),
            (0..4096u64).map(|i| (i << 48) | 0xABCD),
        );
        assert!(n > 2400, "process key: only {n} distinct low 12 bits");
        // Deterministic within a process, as a map needs.
        let b = Prehashed::default();
        assert_eq!(b.hash_one(7u64), Prehashed::default().hash_one(7u64));
    }
}

/// Identifies a series: xxh3 of the table and its tags in canonical (sorted) order; other
/// columns are ignored.
pub fn series_hash<'c>(table: &str, sorted_cols: impl IntoIterator<Item = ColumnRef<'c>>) -> u64 {
    let mut h = Xxh3::new();
    h.update(table.as_bytes());
    for c in sorted_cols {
        if let ValueRef::Tag(v) = c.value {
            h.update(&[0]);
            h.update(c.name.as_bytes());
            h.update(&[1]);
            h.update(v.as_bytes());
        }
    }
    h.digest()
}

fn value_of<'b>(v: &'b FieldValue<'_>) -> ValueRef<'b> {
    match v {
        FieldValue::F64(x) => ValueRef::F64(*x),
        FieldValue::I64(x) => ValueRef::I64(*x),
        FieldValue::U64(x) => ValueRef::U64(*x),
        FieldValue::Bool(x) => ValueRef::Bool(*x),
        FieldValue::Str(s) => ValueRef::Str(s),
    }
}

/// Column names and kinds of a line in input order (tags, then fields), with the canonical
/// (sorted) order and, once the schema is final, each column's schema position. Consecutive
/// lines of a table almost always share a shape, so the per-column work (kind checks, sorting,
/// schema lookups) is done once per shape instead of once per line.
#[derive(Debug, Default)]
struct Shape {
    cols: Vec<(String, Kind)>,
    perm: Vec<usize>,
    idx: Vec<usize>,
}

impl Shape {
    fn matches(&self, line: &Line<'_>) -> bool {
        if line.tags.len() + line.fields.len() != self.cols.len() {
            return false;
        }
        let t = line.tags.len();
        line.tags
            .iter()
            .zip(&self.cols)
            .all(|((k, _), (n, kind))| *kind == Kind::Tag && n == k)
            && line
                .fields
                .iter()
                .zip(&self.cols[t..])
                .all(|((k, v), (n, kind))| *kind == value_of(v).kind() && n == k)
    }

    fn of(line: &Line<'_>, schema: Option<&TableSchema>) -> Shape {
        let mut cols: Vec<(String, Kind)> = Vec::with_capacity(line.tags.len() + line.fields.len());
        cols.extend(line.tags.iter().map(|(k, _)| (k.to_string(), Kind::Tag)));
        cols.extend(
            line.fields
                .iter()
                .map(|(k, v)| (k.to_string(), value_of(v).kind())),
        );
        let mut perm: Vec<usize> = (0..cols.len()).collect();
        perm.sort_unstable_by(|&a, &b| cols[a].0.as_bytes().cmp(cols[b].0.as_bytes()));
        let idx = match schema {
            Some(s) => perm
                .iter()
                .map(|&p| s.column(&cols[p].0).expect("schema has every column").0)
                .collect(),
            None => Vec::new(),
        };
        Shape { cols, perm, idx }
    }

    /// The shape of `line` if every column exists in `schema` with the same kind.
    fn within(line: &Line<'_>, schema: &TableSchema) -> Option<Shape> {
        let tags_ok = line
            .tags
            .iter()
            .all(|(k, _)| schema.column(k).is_some_and(|(_, kind)| kind == Kind::Tag));
        let fields_ok = line.fields.iter().all(|(k, v)| {
            schema
                .column(k)
                .is_some_and(|(_, kind)| kind == value_of(v).kind())
        });
        (tags_ok && fields_ok).then(|| Shape::of(line, Some(schema)))
    }
}

/// The column at input position `p` of a line (tags first, then fields).
#[inline]
fn input_column<'b>(line: &'b Line<'_>, p: usize) -> ColumnRef<'b> {
    match line.tags.get(p) {
        Some((k, v)) => ColumnRef {
            name: k,
            value: ValueRef::Tag(v),
        },
        None => {
            let (k, v) = &line.fields[p - line.tags.len()];
            ColumnRef {
                name: k,
                value: value_of(v),
            }
        }
    }
}

/// Chunk builders by (table, shard) for one request.
struct Chunks {
    shards: usize,
    cap: usize,
    builders: Vec<Option<ChunkBuilder>>,
}

impl Chunks {
    fn new(shards: usize, tables: usize, cap: usize) -> Self {
        Self {
            shards,
            cap,
            builders: (0..shards * tables).map(|_| None).collect(),
        }
    }

    fn push(&mut self, schema: &Arc<TableSchema>, ti: usize, line: &Line<'_>, shape: &Shape) {
        let series = series_hash(
            &schema.name,
            shape.perm.iter().map(|&p| input_column(line, p)),
        );
        let shard = (series % self.shards as u64) as usize;
        let slot = ti * self.shards + shard;
        if slot >= self.builders.len() {
            self.builders.resize_with(slot + 1, || None);
        }
        self.builders[slot]
            .get_or_insert_with(|| ChunkBuilder::new(schema.clone(), self.cap))
            .push_shaped(line, shape, series);
    }

    /// Per-shard parts (ascending shard), each with its chunks in table order.
    fn finish(self) -> (Vec<ShardPart>, Vec<Vec<ChunkOrigin>>) {
        let shards = self.shards;
        let mut parts: Vec<ShardPart> = Vec::new();
        let mut origins: Vec<Vec<ChunkOrigin>> = Vec::new();
        let mut by_shard: Vec<Vec<ChunkBuilder>> = (0..shards).map(|_| Vec::new()).collect();
        for (slot, b) in self.builders.into_iter().enumerate() {
            if let Some(b) = b {
                by_shard[slot % shards].push(b);
            }
        }
        for (shard, builders) in by_shard.into_iter().enumerate() {
            if builders.is_empty() {
                continue;
            }
            let (chunks, o): (Vec<Chunk>, Vec<ChunkOrigin>) =
                builders.into_iter().map(ChunkBuilder::finish).unzip();
            parts.push(ShardPart {
                shard,
                chunks,
                request: None,
            });
            origins.push(o);
        }
        (parts, origins)
    }
}

/// The common case in one pass and without keeping parsed lines: every line's table exists
/// and has all of the line's columns with the same kinds. Returns `None` as soon as a line
/// needs more (a new table or column, or a kind conflict), so [`prepare`] takes the general
/// path, which reports conflicts and adds columns.
fn prepare_known(
    catalog: &Catalog,
    shards: usize,
    db: &str,
    body: &[u8],
    opts: &PrepareOptions,
) -> Result<Option<Prepared>, WriteError> {
    struct Known {
        measurement: String,
        schema: Arc<TableSchema>,
        shape: Shape,
    }
    let mut tables: Vec<Known> = Vec::new();
    let mut chunks = Chunks::new(
        shards,
        0,
        (body.len() / 200 / shards.max(1)).clamp(16, 1 << 16),
    );
    let mut parser = Parser::new(body, &opts.parse);
    let mut line = Line::default();
    let mut rows = 0usize;
    loop {
        match parser.next_into(&mut line) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                return Err(WriteError::Parse {
                    line: e.line(),
                    message: e.to_string(),
                })
            }
        }
        let m: &str = &line.measurement;
        let ti = match tables.iter().position(|t| t.measurement == m) {
            Some(i) => i,
            None => {
                let Some(schema) = catalog.table(&format!("{db}/{m}")) else {
                    return Ok(None);
                };
                tables.push(Known {
                    measurement: m.to_owned(),
                    schema,
                    shape: Shape::default(),
                });
                tables.len() - 1
            }
        };
        let t = &mut tables[ti];
        if !t.shape.matches(&line) {
            match Shape::within(&line, &t.schema) {
                Some(s) => t.shape = s,
                None => return Ok(None),
            }
        }
        chunks.push(&t.schema, ti, &line, &t.shape);
        rows += 1;
    }
    if rows == 0 {
        return Err(WriteError::Empty);
    }
    let (parts, origins) = chunks.finish();
    Ok(Some(Prepared {
        parts,
        origins,
        rows,
        rejected: Vec::new(),
    }))
}

/// Parses, validates and prepares a whole request against the catalog.
pub fn prepare(
    catalog: &Catalog,
    shards: usize,
    db: &str,
    body: &[u8],
    opts: &PrepareOptions,
) -> Result<Prepared, WriteError> {
    validate_db(db)?;
    if !opts.accept_partial {
        if let Some(p) = prepare_known(catalog, shards, db, body, opts)? {
            return Ok(p);
        }
    }
    let mut rejected: Vec<(usize, String)> = Vec::new();

    // Pass 1: parse every line.
    let mut lines: Vec<Line<'_>> = Vec::new();
    let mut parser = Parser::new(body, &opts.parse);
    loop {
        let mut line = Line::default();
        match parser.next_into(&mut line) {
            Ok(true) => lines.push(line),
            Ok(false) => break,
            Err(e) => {
                if !opts.accept_partial {
                    return Err(WriteError::Parse {
                        line: e.line(),
                        message: e.to_string(),
                    });
                }
                rejected.push((e.line(), without_line(&e)));
            }
        }
    }

    // Pass 2: group by table and check kinds against the schema and within the request.
    struct TableWork<'l> {
        measurement: &'l str,
        name: String,
        current: Option<Arc<TableSchema>>,
        new_cols: Vec<(&'l str, Kind)>,
        new_index: HashMap<&'l str, Kind>,
        checked: Shape,
    }
    let mut tables: Vec<TableWork<'_>> = Vec::new();
    let mut line_table: Vec<u32> = Vec::with_capacity(lines.len());
    let mut ok: Vec<bool> = vec![true; lines.len()];
    for (li, line) in lines.iter().enumerate() {
        let m: &str = &line.measurement;
        let ti = match tables.iter().position(|t| t.measurement == m) {
            Some(i) => i,
            None => {
                let name = format!("{db}/{m}");
                let current = catalog.table(&name);
                tables.push(TableWork {
                    measurement: m,
                    name,
                    current,
                    new_cols: Vec::new(),
                    new_index: HashMap::new(),
                    checked: Shape::default(),
                });
                tables.len() - 1
            }
        };
        line_table.push(ti as u32);
        let tw = &mut tables[ti];
        if tw.checked.matches(line) {
            continue;
        }
        let check = |name: &'_ str, kind: Kind| -> Result<(), SchemaError> {
            if let Some(t) = &tw.current {
                if let Some((_, k)) = t.column(name) {
                    if k != kind {
                        return Err(SchemaError::KindConflict {
                            table: tw.name.clone(),
                            column: name.to_owned(),
                            existing: k,
                            attempted: kind,
                        });
                    }
                    return Ok(());
                }
            }
            if let Some(&k) = tw.new_index.get(name) {
                if k != kind {
                    return Err(SchemaError::KindConflict {
                        table: tw.name.clone(),
                        column: name.to_owned(),
                        existing: k,
                        attempted: kind,
                    });
                }
            }
            Ok(())
        };
        let mut err = None;
        for (k, _) in &line.tags {
            if let Err(e) = check(k, Kind::Tag) {
                err = Some(e);
                break;
            }
        }
        if err.is_none() {
            for (k, v) in &line.fields {
                if let Err(e) = check(k, value_of(v).kind()) {
                    err = Some(e);
                    break;
                }
            }
        }
        if let Some(source) = err {
            if !opts.accept_partial {
                return Err(WriteError::Conflict {
                    line: line.line_number,
                    source,
                });
            }
            rejected.push((line.line_number, source.to_string()));
            ok[li] = false;
            continue;
        }
        // Record the columns this line adds.
        let known = |n: &str| tw.current.as_ref().is_some_and(|t| t.column(n).is_some());
        for (k, _) in &line.tags {
            let k: &str = k;
            if !known(k) && !tw.new_index.contains_key(k) {
                tw.new_index.insert(k, Kind::Tag);
                tw.new_cols.push((k, Kind::Tag));
            }
        }
        for (k, v) in &line.fields {
            let k: &str = k;
            if !known(k) && !tw.new_index.contains_key(k) {
                let kind = value_of(v).kind();
                tw.new_index.insert(k, kind);
                tw.new_cols.push((k, kind));
            }
        }
        tw.checked = Shape::of(line, None);
    }
    let accepted = ok.iter().filter(|&&b| b).count();
    if accepted == 0 {
        return Err(if rejected.is_empty() {
            WriteError::Empty
        } else {
            WriteError::Lines(rejected)
        });
    }

    // Pass 3: publish new columns (nothing is written yet if this fails).
    let mut schemas: Vec<Arc<TableSchema>> = Vec::with_capacity(tables.len());
    for tw in &tables {
        let schema = match (&tw.current, tw.new_cols.is_empty()) {
            (Some(t), true) => t.clone(),
            _ => catalog
                .ensure(&tw.name, &tw.new_cols)
                .map_err(|e| match e {
                    crate::error::EngineError::Schema(source) => {
                        let line = lines
                            .iter()
                            .zip(&line_table)
                            .find(|(_, &t)| tables[t as usize].name == tw.name)
                            .map(|(l, _)| l.line_number)
                            .unwrap_or(0);
                        WriteError::Conflict { line, source }
                    }
                    other => WriteError::Engine(other),
                })?,
        };
        schemas.push(schema);
    }

    // Pass 4: encode, hash and build chunks per (shard, table).
    let mut chunks = Chunks::new(shards, tables.len(), (accepted / shards.max(1)).max(16));
    let mut shapes: Vec<Shape> = (0..tables.len()).map(|_| Shape::default()).collect();
    for (li, line) in lines.iter().enumerate() {
        if !ok[li] {
            continue;
        }
        let ti = line_table[li] as usize;
        let schema = &schemas[ti];
        let shape = &mut shapes[ti];
        if !shape.matches(line) {
            *shape = Shape::of(line, Some(schema));
        }
        chunks.push(schema, ti, line, shape);
    }
    let (parts, origins) = chunks.finish();
    Ok(Prepared {
        parts,
        origins,
        rows: accepted,
        rejected,
    })
}

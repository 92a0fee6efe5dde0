//! Arrow record batch ingest (`Engine::prepare_arrow`, the Flight `DoPut` path): the same rows
//! written as line protocol into one engine and as Arrow into another must give the same
//! ledger (encodings, leaf hashes, shards, positions, table schemas), and every rule of line
//! protocol must refuse the same bad input, naming the row and column.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use annals_engine::arrow_ingest::{IOX_TAG, IOX_TYPE_KEY, KIND_KEY, KIND_TAG};
use annals_engine::catalog::SchemaError;
use annals_engine::error::WriteError;
use annals_engine::prepare::Prepared;
use annals_engine::{Engine, WriteOutcome};
use annals_format::hash::leaf_hash;
use annals_format::row::Kind;
use arrow::array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float32Array, Float64Array, Int32Array,
    Int64Array, LargeStringArray, NullArray, StringArray, StringViewArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray, UInt64Array,
    UInt8Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int8Type, Schema};
use arrow::record_batch::RecordBatch;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a test batch carries its tag columns.
#[derive(Debug, Clone, Copy)]
enum TagStyle {
    /// `Utf8` with `annals.kind = tag`.
    Utf8,
    /// `Dictionary(Int8, Utf8)` with InfluxDB 3's `iox::column::type`.
    Dict8,
    /// `LargeUtf8` with `annals.kind = tag`.
    Large,
}

/// How a test batch carries its fields (the same ledger kinds either way).
#[derive(Debug, Clone, Copy)]
enum FieldStyle {
    /// Float64, Int64, UInt64, Boolean, Utf8.
    Exact,
    /// Float32 (values chosen to be exact), Int32, UInt8, Boolean, Utf8View.
    Narrow,
}

fn tag_field(name: &str, t: DataType, style: TagStyle) -> Field {
    let (k, v) = match style {
        TagStyle::Dict8 => (IOX_TYPE_KEY, IOX_TAG),
        _ => (KIND_KEY, KIND_TAG),
    };
    Field::new(name, t, true).with_metadata(HashMap::from([(k.to_owned(), v.to_owned())]))
}

/// The points of one measurement as one batch: `time`, then every tag and every field in the
/// order the points first name them (so the catalog grows as it does from the same lines),
/// null where a point lacks it. Points without a time get [`DEFAULT_TIME_NS`].
fn to_batch(points: &[Point], tags: TagStyle, fields: FieldStyle) -> RecordBatch {
    let mut tag_names: Vec<String> = Vec::new();
    let mut field_names: Vec<(String, Val)> = Vec::new();
    for p in points {
        for (k, _) in &p.tags {
            if !tag_names.contains(k) {
                tag_names.push(k.clone());
            }
        }
        for (k, v) in &p.fields {
            if !field_names.iter().any(|(n, _)| n == k) {
                field_names.push((k.clone(), v.clone()));
            }
        }
    }
    let mut schema_fields = vec![Field::new(
        "time",
        DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
        false,
    )];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(TimestampNanosecondArray::from(
        points
            .iter()
            .map(|p| p.time.unwrap_or(DEFAULT_TIME_NS))
            .collect::<Vec<_>>(),
    ))];
    for k in &tag_names {
        let vals: Vec<Option<&str>> = points
            .iter()
            .map(|p| p.tags.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()))
            .collect();
        let (t, a): (DataType, ArrayRef) = match tags {
            TagStyle::Utf8 => (DataType::Utf8, Arc::new(StringArray::from(vals))),
            TagStyle::Large => (DataType::LargeUtf8, Arc::new(LargeStringArray::from(vals))),
            TagStyle::Dict8 => {
                let d: DictionaryArray<Int8Type> = vals.into_iter().collect();
                (d.data_type().clone(), Arc::new(d))
            }
        };
        schema_fields.push(tag_field(k, t, tags));
        arrays.push(a);
    }
    for (k, example) in &field_names {
        let get = |p: &Point| {
            p.fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let vals: Vec<Option<Val>> = points.iter().map(get).collect();
        let a: ArrayRef = match (example, fields) {
            (Val::F64(_), FieldStyle::Exact) => Arc::new(Float64Array::from_iter(
                vals.iter().map(|v| v.as_ref().map(f64_of)),
            )),
            (Val::F64(_), FieldStyle::Narrow) => Arc::new(Float32Array::from_iter(
                vals.iter().map(|v| v.as_ref().map(|v| f64_of(v) as f32)),
            )),
            (Val::I64(_), FieldStyle::Exact) => Arc::new(Int64Array::from_iter(
                vals.iter().map(|v| v.as_ref().map(i64_of)),
            )),
            (Val::I64(_), FieldStyle::Narrow) => Arc::new(Int32Array::from_iter(
                vals.iter().map(|v| v.as_ref().map(|v| i64_of(v) as i32)),
            )),
            (Val::U64(_), FieldStyle::Exact) => Arc::new(UInt64Array::from_iter(
                vals.iter().map(|v| v.as_ref().map(u64_of)),
            )),
            (Val::U64(_), FieldStyle::Narrow) => Arc::new(UInt8Array::from_iter(
                vals.iter().map(|v| v.as_ref().map(|v| u64_of(v) as u8)),
            )),
            (Val::Bool(_), _) => Arc::new(BooleanArray::from_iter(vals.iter().map(|v| {
                v.as_ref().map(|v| match v {
                    Val::Bool(b) => *b,
                    other => panic!("not a bool: {other:?}"),
                })
            }))),
            (Val::Str(_), FieldStyle::Exact) => Arc::new(StringArray::from_iter(
                vals.iter().map(|v| v.as_ref().map(str_of)),
            )),
            (Val::Str(_), FieldStyle::Narrow) => Arc::new(StringViewArray::from_iter(
                vals.iter().map(|v| v.as_ref().map(str_of)),
            )),
        };
        schema_fields.push(Field::new(k, a.data_type().clone(), true));
        arrays.push(a);
    }
    RecordBatch::try_new(Arc::new(Schema::new(schema_fields)), arrays).expect("test batch")
}

fn f64_of(v: &Val) -> f64 {
    match v {
        Val::F64(x) => *x,
        other => panic!("not a float: {other:?}"),
    }
}
fn i64_of(v: &Val) -> i64 {
    match v {
        Val::I64(x) => *x,
        other => panic!("not an integer: {other:?}"),
    }
}
fn u64_of(v: &Val) -> u64 {
    match v {
        Val::U64(x) => *x,
        other => panic!("not an unsigned integer: {other:?}"),
    }
}
fn str_of(v: &Val) -> String {
    match v {
        Val::Str(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Random points of two measurements: optional tags, random non-empty subsets of fields,
/// values that survive the narrow Arrow types exactly (f32-exact floats, i32, u8).
fn points(rng: &mut StdRng, measurement: &str, n: usize, seq: &mut i64) -> Vec<Point> {
    (0..n)
        .map(|_| {
            *seq += 1;
            let mut p = Point::new(measurement);
            if rng.gen_bool(0.9) {
                p = p.tag("host", &format!("h{}", rng.gen_range(0..7)));
            }
            if rng.gen_bool(0.5) {
                p = p.tag("region", if rng.gen() { "north" } else { "south east" });
            }
            let fields = [
                (
                    "celsius",
                    Val::F64(rng.gen_range(-400i32..600) as f64 / 4.0),
                ),
                ("raw", Val::I64(rng.gen_range(-100_000..100_000))),
                ("watts", Val::U64(rng.gen_range(0..256))),
                ("ok", Val::Bool(rng.gen())),
                (
                    "note",
                    Val::Str(if rng.gen() {
                        String::new()
                    } else {
                        format!("a \"quoted\" \\ note {}", *seq)
                    }),
                ),
            ];
            let keep: Vec<bool> = loop {
                let k: Vec<bool> = fields.iter().map(|_| rng.gen_bool(0.5)).collect();
                if k.iter().any(|&b| b) {
                    break k;
                }
            };
            for ((name, v), k) in fields.into_iter().zip(keep) {
                if k {
                    p = p.field(name, v);
                }
            }
            // Out of order and sometimes equal, as a device's buffered readings are.
            p.at(CLOCK_NS + rng.gen_range(-1_000i64..1_000) * 1_000_000)
        })
        .collect()
}

/// Prepares and submits one batch (retrying while queues are full, at most 10 s) and waits
/// until it is durable.
fn write_arrow(
    engine: &Engine,
    table: &str,
    batch: &RecordBatch,
) -> Result<WriteOutcome, WriteError> {
    let prepared = engine.prepare_arrow(DB, table, batch, &opts(false))?;
    common::submit_and_wait(engine, prepared)
}

/// A stored row's `(height, index, encoding)`.
type Placed = (u64, u32, Vec<u8>);

/// Every stored row grouped by branch, each branch as its `(height, index, encoding)` rows,
/// the branches in a canonical order. Branch ids hash the node key, so two engines name the
/// same branch differently; what must agree is which rows share a branch and where they sit.
fn ledger_by_branch(dir: &std::path::Path) -> Vec<(String, Vec<Placed>)> {
    let mut by: BTreeMap<String, Vec<Placed>> = BTreeMap::new();
    let mut tables: HashMap<String, String> = HashMap::new();
    for r in ledger(dir).into_values() {
        tables.insert(r.branch.clone(), r.table.clone());
        by.entry(r.branch)
            .or_default()
            .push((r.height, r.index, r.encoding));
    }
    let mut out: Vec<(String, Vec<Placed>)> = by
        .into_iter()
        .map(|(b, mut rows)| {
            rows.sort();
            (tables[&b].clone(), rows)
        })
        .collect();
    out.sort();
    out
}

fn catalog_columns(engine: &Engine) -> Vec<(String, Vec<(String, Kind)>)> {
    engine
        .catalog()
        .tables()
        .iter()
        .map(|t| (t.name.clone(), t.columns.clone()))
        .collect()
}

/// A chunk's Arrow columns with tags as plain strings (dictionaries may be laid out
/// differently and still hold the same values).
fn plain(batch: &RecordBatch) -> Vec<(String, ArrayRef)> {
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| {
            let a = match a.data_type() {
                DataType::Dictionary(_, _) => cast(a, &DataType::Utf8).expect("tags cast"),
                _ => a.clone(),
            };
            (f.name().clone(), a)
        })
        .collect()
}

fn assert_same_prepared(lp: &Prepared, arrow: &Prepared) {
    assert_eq!(lp.rows, arrow.rows);
    assert_eq!(lp.parts.len(), arrow.parts.len(), "same shards touched");
    for (a, b) in lp.parts.iter().zip(&arrow.parts) {
        assert_eq!(a.shard, b.shard, "same shard per series");
        assert_eq!(a.chunks.len(), b.chunks.len());
        for (ca, cb) in a.chunks.iter().zip(&b.chunks) {
            assert_eq!(ca.table.name, cb.table.name);
            assert_eq!(ca.enc, cb.enc, "same canonical encodings in the same order");
            assert_eq!(ca.offsets, cb.offsets);
            assert_eq!(ca.leaf_hashes, cb.leaf_hashes);
            assert_eq!(ca.times, cb.times);
            let mut na = ca.newest.clone();
            let mut nb = cb.newest.clone();
            na.sort();
            nb.sort();
            assert_eq!(na, nb, "same newest row per series");
            assert_eq!(ca.batch.schema(), cb.batch.schema(), "same Arrow schema");
            assert_eq!(plain(&ca.batch), plain(&cb.batch), "same Arrow values");
            for i in 0..ca.rows() {
                assert_eq!(leaf_hash(cb.encoding(i)), cb.leaf_hashes[i]);
            }
        }
    }
}

#[test]
fn prepared_chunks_equal_those_of_the_same_lines() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut seq = 0;
    for (tags, fields) in [
        (TagStyle::Utf8, FieldStyle::Exact),
        (TagStyle::Dict8, FieldStyle::Narrow),
        (TagStyle::Large, FieldStyle::Exact),
    ] {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (lp_engine, arrow_engine) = (
            open(config(da.path(), 3, 64)),
            open(config(db.path(), 3, 64)),
        );
        // The first request creates the table (general path), the next ones find it (fast path).
        for n in [200, 57, 1] {
            let pts = points(&mut rng, "temp", n, &mut seq);
            let lp = lp_engine
                .prepare(DB, body(&pts).as_bytes(), &opts(false))
                .expect("lines prepare");
            let arrow = arrow_engine
                .prepare_arrow(DB, "temp", &to_batch(&pts, tags, fields), &opts(false))
                .expect("batch prepares");
            assert_same_prepared(&lp, &arrow);
            assert_eq!(
                catalog_columns(&lp_engine),
                catalog_columns(&arrow_engine),
                "{tags:?}/{fields:?}: the table grows the same way"
            );
        }
    }
}

#[test]
fn the_newest_row_of_a_series_is_the_last_of_its_greatest_time() {
    // Series a: rows 0, 2 and 3, rows 2 and 3 at the same, greatest time: row 3 is newest.
    // Series b: rows 1 and 4, row 1 newer. The chunk's rows are in input order (one shard).
    let at = |host: &str, t: i64, v: f64| {
        Point::new("temp")
            .tag("host", host)
            .field("celsius", Val::F64(v))
            .at(CLOCK_NS + t)
    };
    let pts = [
        at("a", 10, 1.0),
        at("b", 50, 2.0),
        at("a", 30, 3.0),
        at("a", 30, 4.0),
        at("b", 20, 5.0),
    ];
    for tags in [TagStyle::Utf8, TagStyle::Dict8] {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (lp_engine, arrow_engine) = (
            open(config(da.path(), 1, 64)),
            open(config(db.path(), 1, 64)),
        );
        let lp = lp_engine
            .prepare(DB, body(&pts).as_bytes(), &opts(false))
            .expect("lines prepare");
        let arrow = arrow_engine
            .prepare_arrow(
                DB,
                "temp",
                &to_batch(&pts, tags, FieldStyle::Exact),
                &opts(false),
            )
            .expect("batch prepares");
        assert_same_prepared(&lp, &arrow);
        let chunk = &arrow.parts[0].chunks[0];
        let mut newest: Vec<(i64, u32)> = chunk.newest.iter().map(|&(_, t, r)| (t, r)).collect();
        newest.sort();
        assert_eq!(newest, [(CLOCK_NS + 30, 3), (CLOCK_NS + 50, 1)], "{tags:?}");
    }
}

#[test]
fn same_rows_as_line_protocol_store_the_same_ledger() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let block_rows = 16;
    let lp_engine = open(config(da.path(), 2, block_rows));
    let arrow_engine = open(config(db.path(), 2, block_rows));
    let mut rng = StdRng::seed_from_u64(5);
    let mut seq = 0;
    let mut total = 0;
    for (i, n) in [30usize, 1, 45, 17, 64].into_iter().enumerate() {
        let m = if i % 2 == 0 { "temp" } else { "door" };
        let pts = points(&mut rng, m, n, &mut seq);
        let lp = write_with(&lp_engine, &body(&pts), false).expect("lines written");
        let out = write_arrow(
            &arrow_engine,
            m,
            &to_batch(&pts, TagStyle::Dict8, FieldStyle::Exact),
        )
        .expect("batch written");
        assert_eq!(out.rows, n);
        assert_eq!(lp.rows, n);
        // Receipts name rows by their 0-based index in the batch; each row once.
        let mut rows: Vec<u32> = out
            .chunks
            .iter()
            .flat_map(|(o, _)| o.lines.iter().copied())
            .collect();
        rows.sort();
        assert_eq!(rows, (0..n as u32).collect::<Vec<_>>());
        for (o, _) in &out.chunks {
            for (row, leaf) in o.lines.iter().zip(o.leaf_hashes.iter()) {
                assert_eq!(*leaf, leaf_hash(&pts[*row as usize].encoding()));
            }
        }
        total += n;
    }
    assert_eq!(catalog_columns(&lp_engine), catalog_columns(&arrow_engine));
    assert!(lp_engine.flush().is_some());
    assert!(arrow_engine.flush().is_some());
    lp_engine.shutdown();
    arrow_engine.shutdown();

    let a = ledger_by_branch(da.path());
    let b = ledger_by_branch(db.path());
    assert_eq!(a.iter().map(|(_, r)| r.len()).sum::<usize>(), total);
    assert!(
        a.len() >= 3,
        "two tables over two shards: {} branches",
        a.len()
    );
    assert_eq!(a, b, "same rows in the same branches at the same positions");
    audit_ok(da.path());
    let report = audit_ok(db.path());
    assert_eq!(report.rows_checked, total as u64);
}

/// A batch with columns given as `(name, is_tag, array)` and a nanosecond `time` column.
fn batch_of(times: Vec<i64>, cols: Vec<(&str, bool, ArrayRef)>) -> RecordBatch {
    let mut fields = vec![Field::new(
        "time",
        DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
        false,
    )];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(TimestampNanosecondArray::from(times))];
    for (name, tag, a) in cols {
        fields.push(if tag {
            tag_field(name, a.data_type().clone(), TagStyle::Utf8)
        } else {
            Field::new(name, a.data_type().clone(), true)
        });
        arrays.push(a);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("test batch")
}

fn t(n: usize) -> Vec<i64> {
    (0..n as i64).map(|i| CLOCK_NS + i).collect()
}

/// `(row, column)` of a batch error, and its message.
fn batch_err(r: Result<Prepared, WriteError>) -> (Option<usize>, Option<String>, String) {
    match r {
        Err(e @ WriteError::Batch { .. }) => {
            let text = e.to_string();
            let WriteError::Batch { row, column, .. } = e else {
                unreachable!()
            };
            (row, column, text)
        }
        Err(other) => panic!("expected a batch error, got {other:?}"),
        Ok(_) => panic!("expected a batch error, the batch was accepted"),
    }
}

#[test]
fn bad_values_are_refused_naming_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 2, 64));
    let o = opts(false);
    let host = || -> ArrayRef { Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) };
    let prep = |b: &RecordBatch| engine.prepare_arrow(DB, "m", b, &o);

    let nan: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, f64::NAN]));
    let (row, col, text) = batch_err(prep(&batch_of(
        t(4),
        vec![("host", true, host()), ("x", false, nan)],
    )));
    assert_eq!((row, col.as_deref()), (Some(3), Some("x")));
    assert!(
        text.contains("row 3") && text.contains("not finite"),
        "{text}"
    );

    let inf: ArrayRef = Arc::new(Float32Array::from(vec![1.0, f32::INFINITY, 3.0, 4.0]));
    let (row, col, _) = batch_err(prep(&batch_of(t(4), vec![("x", false, inf)])));
    assert_eq!((row, col.as_deref()), (Some(1), Some("x")));

    // A NaN in a null slot is no value at all.
    let masked: ArrayRef = Arc::new(Float64Array::new(
        vec![1.0, f64::NAN, 3.0, 4.0].into(),
        Some(arrow::buffer::NullBuffer::from(vec![
            true, false, true, true,
        ])),
    ));
    let y: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 4]));
    prep(&batch_of(t(4), vec![("x", false, masked), ("y", false, y)]))
        .expect("a null is an absent field, whatever its slot holds");

    let empty_tag: ArrayRef = Arc::new(StringArray::from(vec!["a", "", "c", "d"]));
    let x: ArrayRef = Arc::new(Float64Array::from(vec![1.0; 4]));
    let (row, col, text) = batch_err(prep(&batch_of(
        t(4),
        vec![("host", true, empty_tag), ("x", false, x.clone())],
    )));
    assert_eq!((row, col.as_deref()), (Some(1), Some("host")));
    assert!(text.contains("empty tag value"), "{text}");

    let long = "v".repeat(annals_lp::TAG_VALUE_LEN_MAX + 1);
    let d: DictionaryArray<Int8Type> = vec![Some("a"), None, Some(long.as_str()), Some("a")]
        .into_iter()
        .collect();
    let (row, col, _) = batch_err(prep(&batch_of(
        t(4),
        vec![("host", true, Arc::new(d)), ("x", false, x.clone())],
    )));
    assert_eq!((row, col.as_deref()), (Some(2), Some("host")));

    let big = "s".repeat(annals_lp::STRING_LEN_MAX + 1);
    let s: ArrayRef = Arc::new(StringArray::from(vec!["ok", "ok", "ok", big.as_str()]));
    let (row, col, _) = batch_err(prep(&batch_of(t(4), vec![("s", false, s)])));
    assert_eq!((row, col.as_deref()), (Some(3), Some("s")));

    let lf: ArrayRef = Arc::new(StringArray::from(vec!["a", "b\nc", "c", "d"]));
    let (row, col, _) = batch_err(prep(&batch_of(
        t(4),
        vec![("host", true, lf), ("x", false, x.clone())],
    )));
    assert_eq!((row, col.as_deref()), (Some(1), Some("host")));

    // Row 2 has no field (its only field is null): line protocol refuses such a line too.
    let y: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(4)]));
    let (row, col, text) = batch_err(prep(&batch_of(
        t(4),
        vec![("host", true, host()), ("y", false, y)],
    )));
    assert_eq!((row, col), (Some(2), None));
    assert!(text.contains("no fields"), "{text}");
    let (row, _, _) = batch_err(prep(&batch_of(t(4), vec![("host", true, host())])));
    assert_eq!(row, Some(0), "tags alone are no row");

    // Time: null, out of range, missing, of a wrong type; other units are converted.
    let tf = || Field::new("time", DataType::Int64, true);
    let times: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)]));
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            tf(),
            Field::new("x", DataType::Float64, true),
        ])),
        vec![times, x.clone()],
    )
    .unwrap();
    let (row, col, _) = batch_err(prep(&b));
    assert_eq!((row, col.as_deref()), (Some(1), Some("time")));
    let secs: ArrayRef = Arc::new(TimestampSecondArray::from(vec![1, 2, i64::MAX / 10, 4]));
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("time", secs.data_type().clone(), false),
            Field::new("x", DataType::Float64, true),
        ])),
        vec![secs, x.clone()],
    )
    .unwrap();
    let (row, col, text) = batch_err(prep(&b));
    assert_eq!((row, col.as_deref()), (Some(2), Some("time")), "{text}");
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)])),
        vec![x.clone()],
    )
    .unwrap();
    let (row, col, _) = batch_err(prep(&b));
    assert_eq!((row, col.as_deref()), (None, Some("time")));
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("time", DataType::Utf8, false),
            Field::new("x", DataType::Float64, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["1", "2", "3", "4"])),
            x.clone(),
        ],
    )
    .unwrap();
    assert_eq!(batch_err(prep(&b)).1.as_deref(), Some("time"));

    // Types without a line-protocol kind, tags that are not strings, bad names.
    let date: ArrayRef = Arc::new(arrow::array::Date32Array::from(vec![1, 2, 3, 4]));
    let (row, col, text) = batch_err(prep(&batch_of(
        t(4),
        vec![("x", false, x.clone()), ("day", false, date)],
    )));
    assert_eq!((row, col.as_deref()), (None, Some("day")));
    assert!(text.contains("Date32"), "{text}");
    let (_, col, _) = batch_err(prep(&batch_of(t(4), vec![("n", true, x.clone())])));
    assert_eq!(col.as_deref(), Some("n"));
    let (_, col, _) = batch_err(prep(&batch_of(
        t(4),
        vec![("x", false, x.clone()), ("x", false, x.clone())],
    )));
    assert_eq!(col.as_deref(), Some("x"));
    let (_, col, _) = batch_err(prep(&batch_of(
        t(4),
        vec![("x", false, x.clone()), ("time", false, x.clone())],
    )));
    assert_eq!(col.as_deref(), Some("time"));
    let (_, col, _) = batch_err(prep(&batch_of(t(4), vec![("", false, x.clone())])));
    assert_eq!(col.as_deref(), Some(""));
    let long_name = "n".repeat(annals_lp::NAME_LEN_MAX + 1);
    let (_, col, _) = batch_err(prep(&batch_of(
        t(4),
        vec![(long_name.as_str(), false, x.clone())],
    )));
    assert_eq!(col, Some(long_name));
    let ok = batch_of(t(4), vec![("x", false, x.clone())]);
    assert!(matches!(
        engine.prepare_arrow(DB, "", &ok, &o),
        Err(WriteError::Batch { .. })
    ));
    assert!(matches!(
        engine.prepare_arrow("bad db", "m", &ok, &o),
        Err(WriteError::Database(_))
    ));
    assert!(matches!(
        engine.prepare_arrow(DB, "m", &ok.slice(0, 0), &o),
        Err(WriteError::Empty)
    ));
    assert!(matches!(
        engine.prepare_arrow(DB, "m", &ok, &opts(true)),
        Err(WriteError::Batch { .. })
    ));

    // As with line protocol, a refused batch may have added its table and columns to the
    // catalog (preparation's only side effect); no row was written.
    engine
        .prepare_arrow(DB, "m", &ok, &o)
        .expect("a good batch prepares");
    assert!(engine.catalog().table(&format!("{DB}/m")).is_some());
}

#[test]
fn kind_conflicts_and_absent_columns_follow_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path(), 2, 64));
    write_with(&engine, "m,host=a x=1.5,n=2i 1", false).expect("lines written");
    let before = catalog_columns(&engine);

    // `n` is i64 in the table; a batch with it as f64 is refused at its first value.
    let x: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]));
    let n: ArrayRef = Arc::new(Float64Array::from(vec![None, Some(2.0), Some(3.0)]));
    let new: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let b = batch_of(
        t(3),
        vec![
            ("x", false, x.clone()),
            ("fresh", false, new),
            ("n", false, n),
        ],
    );
    match engine.prepare_arrow(DB, "m", &b, &opts(false)) {
        Err(WriteError::BatchConflict {
            row,
            source:
                SchemaError::KindConflict {
                    column,
                    existing,
                    attempted,
                    ..
                },
        }) => {
            assert_eq!((row, column.as_str()), (1, "n"));
            assert_eq!((existing, attempted), (Kind::I64, Kind::F64));
        }
        other => panic!("expected a kind conflict, got {other:?}"),
    }
    assert_eq!(
        catalog_columns(&engine),
        before,
        "a refused batch adds no column"
    );

    // `host` is a tag: the same name as a field conflicts.
    let host: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
    let b = batch_of(t(3), vec![("x", false, x.clone()), ("host", false, host)]);
    assert!(matches!(
        engine.prepare_arrow(DB, "m", &b, &opts(false)),
        Err(WriteError::BatchConflict { row: 0, .. })
    ));

    // A column null in every row is absent, as a field missing from every line: its kind is
    // not checked and it adds nothing; a Null-typed column likewise.
    let all_null: ArrayRef = Arc::new(Float64Array::from(vec![None, None, None]));
    let none: ArrayRef = Arc::new(NullArray::new(3));
    let b = batch_of(
        t(3),
        vec![
            ("x", false, x.clone()),
            ("n", false, all_null.clone()),
            ("ghost", false, all_null),
            ("void", false, none),
        ],
    );
    let out = write_arrow(&engine, "m", &b).expect("batch written");
    assert_eq!(out.rows, 3);
    assert_eq!(catalog_columns(&engine), before);

    // Timestamps in milliseconds are converted as `precision=ms` converts line protocol.
    let ms: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_700_000_000_123]));
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("time", ms.data_type().clone(), false),
            tag_field("host", DataType::Utf8, TagStyle::Utf8),
            Field::new("x", DataType::Float64, true),
        ])),
        vec![
            ms,
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Float64Array::from(vec![0.25])),
        ],
    )
    .unwrap();
    let p = engine
        .prepare_arrow(DB, "m", &b, &opts(false))
        .expect("batch prepares");
    let want = Point::new("m")
        .tag("host", "a")
        .field("x", Val::F64(0.25))
        .at(1_700_000_000_123_000_000)
        .encoding();
    assert_eq!(p.parts[0].chunks[0].encoding(0), &want[..]);
}

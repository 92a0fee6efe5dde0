//! Arrow batch ingest vs line protocol, rows/s of request preparation on the same rows:
//! `annals_engine::prepare::prepare` on a body of 10 000 TSBS `iot` `readings` lines against
//! `annals_engine::arrow_ingest::prepare_arrow` on the same rows as one Arrow batch (tags as
//! `Dictionary(Int32, Utf8)`, as Flight clients send them, and as plain `Utf8`), both against a
//! warmed catalog. This is the work a connection task does per request before anything is
//! queued (checks, canonical encoding, leaf and series hashing, Arrow chunks per shard); the
//! Flight `DoPut` path replaces parsing with column-at-a-time checks.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use annals_engine::arrow_ingest::{prepare_arrow, KIND_KEY, KIND_TAG};
use annals_engine::catalog::Catalog;
use annals_engine::prepare::prepare;
use annals_engine::EngineConfig;
use annals_lp::{FieldValue, Line};
use arrow::array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, StringArray,
    TimestampNanosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Rows per request on both paths.
const ROWS: usize = 10_000;
const TABLE: &str = "readings";

/// The first [`ROWS`] `readings` lines of the TSBS stream, as one line-protocol body.
fn readings_body() -> Vec<u8> {
    let mut out = Vec::new();
    let mut rows = 0;
    for body in common::iot_bodies(common::BODY_LINES, 8) {
        for line in body.split_inclusive(|&b| b == b'\n') {
            if rows < ROWS && line.starts_with(b"readings,") {
                out.extend_from_slice(line);
                rows += 1;
            }
        }
    }
    assert_eq!(
        rows, ROWS,
        "the stream has {ROWS} readings lines in 8 bodies"
    );
    out
}

/// The same rows as one batch: `time`, tags (in the order lines first name them), fields;
/// null where a line lacks a tag or field.
fn to_batch(body: &[u8], dict_tags: bool) -> RecordBatch {
    let lines = annals_lp::parse_all(body, &common::prepare_options().parse).expect("body parses");
    let mut tags: Vec<String> = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    for l in &lines {
        for (k, _) in &l.tags {
            if !tags.iter().any(|t| t == k.as_ref()) {
                tags.push(k.to_string());
            }
        }
        for (k, _) in &l.fields {
            if !fields.iter().any(|f| f == k.as_ref()) {
                fields.push(k.to_string());
            }
        }
    }
    let tag_of = |l: &Line<'_>, k: &str| -> Option<String> {
        l.tags
            .iter()
            .find(|(n, _)| n.as_ref() == k)
            .map(|(_, v)| v.to_string())
    };
    let field_of = |l: &Line<'_>, k: &str| -> Option<FieldValue<'static>> {
        l.fields
            .iter()
            .find(|(n, _)| n.as_ref() == k)
            .map(|(_, v)| v.clone().into_owned())
    };
    let mut schema = vec![Field::new(
        "time",
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        false,
    )];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(TimestampNanosecondArray::from(
        lines.iter().map(|l| l.time_ns).collect::<Vec<_>>(),
    ))];
    let tag_meta = HashMap::from([(KIND_KEY.to_owned(), KIND_TAG.to_owned())]);
    for k in &tags {
        let vals: Vec<Option<String>> = lines.iter().map(|l| tag_of(l, k)).collect();
        let a: ArrayRef = if dict_tags {
            let d: DictionaryArray<Int32Type> = vals.iter().map(|v| v.as_deref()).collect();
            Arc::new(d)
        } else {
            Arc::new(StringArray::from_iter(vals.iter().map(|v| v.as_deref())))
        };
        schema.push(Field::new(k, a.data_type().clone(), true).with_metadata(tag_meta.clone()));
        arrays.push(a);
    }
    for k in &fields {
        let vals: Vec<Option<FieldValue<'static>>> = lines.iter().map(|l| field_of(l, k)).collect();
        let first = vals.iter().flatten().next().expect("a field has a value");
        let a: ArrayRef = match first {
            FieldValue::F64(_) => Arc::new(Float64Array::from_iter(vals.iter().map(|v| match v {
                Some(FieldValue::F64(x)) => Some(*x),
                _ => None,
            }))),
            FieldValue::I64(_) => Arc::new(Int64Array::from_iter(vals.iter().map(|v| match v {
                Some(FieldValue::I64(x)) => Some(*x),
                _ => None,
            }))),
            FieldValue::U64(_) => Arc::new(UInt64Array::from_iter(vals.iter().map(|v| match v {
                Some(FieldValue::U64(x)) => Some(*x),
                _ => None,
            }))),
            FieldValue::Bool(_) => {
                Arc::new(BooleanArray::from_iter(vals.iter().map(|v| match v {
                    Some(FieldValue::Bool(x)) => Some(*x),
                    _ => None,
                })))
            }
            FieldValue::Str(_) => Arc::new(StringArray::from_iter(vals.iter().map(|v| match v {
                Some(FieldValue::Str(s)) => Some(s.to_string()),
                _ => None,
            }))),
        };
        schema.push(Field::new(k, a.data_type().clone(), true));
        arrays.push(a);
    }
    RecordBatch::try_new(Arc::new(Schema::new(schema)), arrays).expect("batch of the rows")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = Catalog::open(dir.path()).expect("empty catalog opens");
    let shards = EngineConfig::new(dir.path()).shards;
    let body = readings_body();
    let dict = to_batch(&body, true);
    let plain = to_batch(&body, false);
    let opts = common::prepare_options();
    // Warm up: the table and all its columns exist; both paths store the same rows.
    let lp = prepare(&catalog, shards, common::DB, &body, &opts).expect("body prepares");
    let arrow =
        prepare_arrow(&catalog, shards, common::DB, TABLE, &dict, &opts).expect("batch prepares");
    assert_eq!(lp.rows, ROWS);
    assert_eq!(arrow.rows, ROWS);
    let hashes = |p: &annals_engine::prepare::Prepared| {
        let mut v: Vec<_> = p
            .parts
            .iter()
            .flat_map(|s| s.chunks.iter().flat_map(|c| c.leaf_hashes.iter().copied()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        hashes(&lp),
        hashes(&arrow),
        "both paths prepare the same rows"
    );
    drop((lp, arrow));

    let mut group = c.benchmark_group("ingest_arrow");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("line_protocol_10000_readings", |b| {
        b.iter(|| prepare(&catalog, shards, common::DB, black_box(&body), &opts).expect("prepares"))
    });
    group.bench_function("arrow_dict_tags_10000_readings", |b| {
        b.iter(|| {
            prepare_arrow(&catalog, shards, common::DB, TABLE, black_box(&dict), &opts)
                .expect("prepares")
        })
    });
    group.bench_function("arrow_utf8_tags_10000_readings", |b| {
        b.iter(|| {
            prepare_arrow(
                &catalog,
                shards,
                common::DB,
                TABLE,
                black_box(&plain),
                &opts,
            )
            .expect("prepares")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);

//! Request preparation rows/s: `annals_engine::prepare::prepare` on one 5000-line TSBS `iot`
//! body against a warmed catalog (both tables exist with every column). This is the work an
//! HTTP connection task does per request before anything is queued: parse, schema checks,
//! canonical encoding, leaf hashing, series hashing to a shard and Arrow building.

mod common;

use std::hint::black_box;
use std::time::Duration;

use annals_engine::catalog::Catalog;
use annals_engine::prepare::prepare;
use annals_engine::EngineConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = Catalog::open(dir.path()).expect("empty catalog opens");
    // The engine's default shard count.
    let shards = EngineConfig::new(dir.path()).shards;
    let body = common::iot_body();
    let opts = common::prepare_options();
    // Warm up: creates both tables and all their columns (writes catalog.json once).
    let first = prepare(&catalog, shards, common::DB, &body, &opts).expect("body prepares");
    let rows = first.rows as u64;
    assert_eq!(rows, common::lines_in(&body));
    drop(first);

    let mut group = c.benchmark_group("prepare");
    group.throughput(Throughput::Elements(rows));
    group.bench_function("tsbs_iot_5000_lines", |b| {
        b.iter(|| {
            prepare(&catalog, shards, common::DB, black_box(&body), &opts).expect("body prepares")
        })
    });
    // Partial acceptance takes the general path (parse all lines first, then check and build),
    // which every request with a new table or column also takes.
    let partial = annals_engine::PrepareOptions {
        accept_partial: true,
        ..opts.clone()
    };
    group.bench_function("tsbs_iot_5000_lines_general_path", |b| {
        b.iter(|| {
            prepare(&catalog, shards, common::DB, black_box(&body), &partial)
                .expect("body prepares")
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

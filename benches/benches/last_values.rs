//! The last-value cache's share of a writer's turn: `LastValues::update` with the chunks that
//! line protocol prepares from TSBS `iot` bodies (readings and diagnostics, each shard's chunk
//! of each body in turn), compaction included (a table's entries are copied into one batch
//! once as many rows as the cache holds, at least 16,384, have come in). Throughput counts the
//! rows of the chunks offered.

mod common;

use std::hint::black_box;
use std::time::Duration;

use annals_engine::catalog::Catalog;
use annals_engine::last_values::LastValues;
use annals_engine::prepare::{prepare, Chunk};
use annals_engine::EngineConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Bodies of [`common::BODY_LINES`] lines prepared up front, then offered round and round.
const BODIES: usize = 32;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = Catalog::open(dir.path()).expect("empty catalog opens");
    let shards = EngineConfig::new(dir.path()).shards;
    let opts = common::prepare_options();
    let mut chunks: Vec<(usize, Chunk)> = Vec::new();
    for body in common::iot_bodies(common::BODY_LINES, BODIES) {
        let prepared = prepare(&catalog, shards, common::DB, &body, &opts).expect("body prepares");
        for part in prepared.parts {
            chunks.extend(part.chunks.into_iter().map(|c| (part.shard, c)));
        }
    }
    let rows: usize = chunks.iter().map(|(_, c)| c.rows()).sum();
    let mut group = c.benchmark_group("last_values");
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("update_tsbs_chunks", |b| {
        let cache = LastValues::new(shards, 1, Vec::<String>::new());
        b.iter(|| {
            for (shard, chunk) in &chunks {
                cache.update(
                    *shard,
                    &chunk.table.name,
                    &chunk.table.arrow,
                    black_box(&chunk.batch),
                    &chunk.newest,
                );
            }
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

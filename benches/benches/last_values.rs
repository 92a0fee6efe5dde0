//! The last-value cache's share of a writer's turn: `LastValues::update` with the chunks that
//! line protocol prepares from TSBS `iot` bodies (readings and diagnostics, each shard's chunk
//! of each body in turn), compaction included (a table's entries are copied into one batch
//! once as many rows as the cache holds, at least 16,384, have come in). Throughput counts the
//! rows of the chunks offered.

mod common;

use std::hint::black_box;
use std::time::Duration;

use annals_engine::last_values::LastValues;
use annals_engine::EngineConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Bodies of [`common::BODY_LINES`] lines prepared up front, then offered round and round.
const BODIES: usize = 32;

fn bench(c: &mut Criterion) {
    // The default shard count (the data directory is not used).
    let shards = EngineConfig::new("").shards;
    let chunks = common::prepared_chunks(BODIES, common::BODY_LINES, shards);
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

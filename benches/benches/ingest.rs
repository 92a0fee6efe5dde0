//! End-to-end in-process ingest rows/s: an [`Engine`] with default settings (2 shards, 16384-row
//! blocks, fsync per writer turn) and 4 client threads, each taking the next 5000-line TSBS
//! `iot` body, preparing it, submitting it (retrying after 1 ms while a shard queue is full)
//! and waiting until it is durable. One iteration writes [`BODIES_PER_ITER`] bodies; sealing,
//! block files, branch logs and checkpoints run on the engine's own threads meanwhile, so
//! their cost shows up as far as they compete for the 2 cores.
//!
//! `no_sync` runs the same with `unsafe_no_sync` (no fsync anywhere) to show what the disk
//! costs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_engine::{Engine, EngineConfig, PrepareOptions, SystemClock};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

/// Client threads, as `annals-bench load --connections 4`.
const THREADS: usize = 4;
/// Bodies written per iteration (80,000 lines).
const BODIES_PER_ITER: usize = 16;
/// Distinct bodies cycled through, so consecutive iterations write different rows.
const BODIES_POOL: usize = 4 * BODIES_PER_ITER;
/// Submissions of one body refused for a full queue before the bench gives up.
const RETRIES_MAX: u32 = 10_000;

/// Writes `bodies[first..first + BODIES_PER_ITER]` (cyclically) from [`THREADS`] threads.
fn write_round(engine: &Engine, bodies: &[Vec<u8>], first: usize, opts: &PrepareOptions) -> u64 {
    let next = AtomicUsize::new(0);
    let rows = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= BODIES_PER_ITER {
                    return;
                }
                let body = &bodies[(first + k) % bodies.len()];
                let mut prepared = engine
                    .prepare(common::DB, body, opts)
                    .expect("body prepares");
                let mut retries = 0;
                let pending = loop {
                    match engine.submit(prepared) {
                        Ok(p) => break p,
                        Err(back) => {
                            retries += 1;
                            assert!(retries < RETRIES_MAX, "shard queues stayed full");
                            prepared = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                };
                let outcome = futures_executor::block_on(pending.wait()).expect("write is durable");
                rows.fetch_add(outcome.rows, Ordering::Relaxed);
            });
        }
    });
    rows.into_inner() as u64
}

fn bench(c: &mut Criterion) {
    let bodies = common::iot_bodies(common::BODY_LINES, BODIES_POOL);
    assert!(bodies
        .iter()
        .all(|b| common::lines_in(b) == common::BODY_LINES as u64));
    let rows_per_iter = (BODIES_PER_ITER * common::BODY_LINES) as u64;
    let opts = common::prepare_options();

    let mut group = c.benchmark_group("ingest");
    // Iterations take ~0.1-0.5 s: flat sampling keeps 10 samples within the 10 s budget.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(rows_per_iter));
    for (name, no_sync) in [
        ("4_threads_5000_lines", false),
        ("4_threads_5000_lines_no_sync", true),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = EngineConfig::new(dir.path());
        cfg.unsafe_no_sync = no_sync;
        let engine = Engine::open(cfg, Arc::new(SystemClock)).expect("engine opens");
        // Create both tables (and catalog.json) before measuring.
        write_round(&engine, &bodies[..1], 0, &opts);
        let mut round = 0usize;
        let mut total_rows = 0u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let rows = write_round(&engine, &bodies, round * BODIES_PER_ITER, &opts);
                    assert_eq!(rows, rows_per_iter);
                    total_rows += rows;
                    round += 1;
                }
                start.elapsed()
            })
        });
        engine.shutdown();
        eprintln!("ingest {name}: {round} rounds, {total_rows} rows written");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Line-protocol parsing throughput (bytes/s) of `annals_lp::Parser::next_into` over one
//! 5000-line TSBS `iot` body, reusing one `Line` as the ingest path does; and routing
//! (lines/s): `annals_engine::prepare::shard_of` (xxh3 series hash of the table and its sorted
//! tags, modulo the shard count) for the same 5000 parsed lines.

mod common;

use std::hint::black_box;
use std::time::Duration;

use annals_engine::prepare::shard_of;
use annals_engine::EngineConfig;
use annals_format::row::{ColumnRef, ValueRef};
use annals_lp::{Line, ParseOptions, Parser};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn parse(c: &mut Criterion) {
    let body = common::iot_body();
    let lines = common::lines_in(&body);
    let opts = ParseOptions::default();
    let mut group = c.benchmark_group("lp_parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("tsbs_iot_5000_lines", |b| {
        b.iter(|| {
            let mut parser = Parser::new(black_box(&body), &opts);
            let mut line = Line::new();
            let mut n = 0u64;
            while parser.next_into(&mut line).expect("generated lines parse") {
                n += line.fields.len() as u64;
                black_box(&line);
            }
            black_box(n)
        })
    });
    group.finish();
    // Lines/s follows from the same run: the body's lines over the time per iteration.
    eprintln!("lp_parse: body {} bytes, {lines} lines", body.len());
}

fn route(c: &mut Criterion) {
    let body = common::iot_body();
    let opts = ParseOptions::default();
    // Parsed once: (table, tags sorted by key, as the engine hashes them).
    let mut series: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut parser = Parser::new(&body, &opts);
    let mut line = Line::new();
    while parser.next_into(&mut line).expect("generated lines parse") {
        let mut tags: Vec<(String, String)> = line
            .tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tags.sort();
        series.push((line.measurement.to_string(), tags));
    }
    let shards = EngineConfig::new(std::env::temp_dir()).shards;
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(series.len() as u64));
    group.bench_function("shard_of_5000_lines", |b| {
        b.iter(|| {
            let mut per_shard = vec![0u32; shards];
            for (table, tags) in black_box(&series) {
                let cols = tags.iter().map(|(k, v)| ColumnRef {
                    name: k,
                    value: ValueRef::Tag(v),
                });
                per_shard[shard_of(table, cols, shards)] += 1;
            }
            per_shard
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = parse, route
}
criterion_main!(benches);

//! Line-protocol parsing throughput (bytes/s) of `annals_lp::Parser::next_into` over one
//! 5000-line TSBS `iot` body, reusing one `Line` as the ingest path does.

mod common;

use std::hint::black_box;
use std::time::Duration;

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

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = parse
}
criterion_main!(benches);

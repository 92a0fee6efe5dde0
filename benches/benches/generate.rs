//! Line generation throughput of the TSBS iot workload (lines/s), so the load client and
//! in-process benchmarks know the generator is not their bottleneck.

use std::time::Duration;

use annals_bench::tsbs::{IotConfig, Irregularities};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn generate(c: &mut Criterion) {
    let mut group = c.benchmark_group("tsbs_iot_generate");
    for (name, irregularities) in [
        ("tsbs", Irregularities::TSBS),
        ("regular", Irregularities::NONE),
    ] {
        // 20 trucks x 1 h = 14,400 line slots per iteration.
        let mut cfg = IotConfig::new(20, Duration::from_secs(3600), 1).expect("valid scale");
        cfg.irregularities = irregularities;
        let lines = {
            let mut gen = cfg.generator();
            let mut sink = Vec::new();
            while gen.next_line(&mut sink) {}
            gen.stats().emitted
        };
        group.throughput(Throughput::Elements(lines));
        let mut buf = Vec::with_capacity(1 << 20);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut gen = cfg.generator();
                let mut n = 0;
                loop {
                    buf.clear();
                    let got = gen.fill(&mut buf, 1000);
                    if got == 0 {
                        break;
                    }
                    n += got;
                    black_box(&buf);
                }
                assert_eq!(n as u64, lines);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);

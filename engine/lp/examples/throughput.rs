//! Quick single-threaded throughput check on TSBS-iot-like lines (not a benchmark suite: the
//! criterion benches live in the workspace's `benches/`).
//!
//! ```text
//! cargo run --release -p annals-lp --example throughput [lines]
//! ```

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use annals_lp::{Line, ParseOptions, Parser};

const FLEETS: [&str; 5] = ["East", "West", "North", "South", "Central"];
const DRIVERS: [&str; 6] = ["Albert", "Derek", "Rodney", "Seth", "Trish", "Zack"];
const MODELS: [&str; 3] = ["F-150", "G-2000", "H-2"];

/// TSBS `readings` lines with varying names and values, nanosecond timestamps.
fn readings(lines: usize) -> String {
    let mut out = String::with_capacity(lines * 260);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..lines {
        let truck = i % 4000;
        let r = next();
        writeln!(
            out,
            "readings,name=truck_{truck},fleet={},driver={},model={},device_version=v2.{},\
             load_capacity=1500,fuel_capacity=150,nominal_fuel_consumption=12 \
             latitude={}.{:02},longitude={}.{:02},elevation={},velocity={},heading={},grade={},\
             fuel_consumption={}.{} {}",
            FLEETS[truck % 5],
            DRIVERS[truck % 6],
            MODELS[truck % 3],
            truck % 4,
            r % 90,
            (r >> 8) % 100,
            (r >> 16) % 180,
            (r >> 24) % 100,
            (r >> 32) % 500,
            (r >> 40) % 100,
            (r >> 44) % 360,
            (r >> 52) % 10,
            (r >> 56) % 50,
            (r >> 60) % 10,
            1_451_606_400_000_000_000i64 + (i as i64 / 4000) * 10_000_000_000,
        )
        .unwrap();
    }
    out
}

/// Lines with escapes in every position, typed fields and strings: the allocating path.
fn escaped(lines: usize) -> String {
    let mut out = String::with_capacity(lines * 150);
    for i in 0..lines {
        writeln!(
            out,
            "weather\\ station,city=New\\ York,note=a\\,b\\=c,plain=x{} temp={}.5,count={}i,\
             big={}u,ok=t,msg=\"said \\\"hi\\\" #{}\",path=\"C:\\\\tmp\" {}",
            i % 100,
            i % 40,
            i,
            i * 3,
            i,
            1_700_000_000_000_000_000i64 + i as i64,
        )
        .unwrap();
    }
    out
}

/// Parses `input` seven times with `next_into`; returns the best time of the last six, in
/// seconds (the first round warms the caches).
fn best_of(input: &str, lines: usize, fields_per_line: usize) -> f64 {
    let opts = ParseOptions::default();
    let mut best = f64::MAX;
    for round in 0..7 {
        let start = Instant::now();
        let mut parser = Parser::new(input.as_bytes(), &opts);
        let mut line = Line::new();
        let mut n = 0usize;
        let mut fields = 0usize;
        while parser.next_into(&mut line).expect("valid input") {
            n += 1;
            fields += line.fields.len();
            black_box(&line);
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!((n, fields), (lines, lines * fields_per_line));
        if round > 0 {
            best = best.min(secs);
        }
    }
    best
}

fn report(name: &str, input: &str, lines: usize, fields_per_line: usize) {
    let best = best_of(input, lines, fields_per_line);
    println!(
        "{name}: {lines} lines, {:.1} MB, {:.0} B/line; best of 6: {:.1} ms = {:.0} MB/s, \
         {:.2} M lines/s, {:.0} ns/line",
        input.len() as f64 / 1e6,
        input.len() as f64 / lines as f64,
        best * 1e3,
        input.len() as f64 / best / 1e6,
        lines as f64 / best / 1e6,
        best * 1e9 / lines as f64
    );
}

fn main() {
    let lines: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    report("tsbs-iot readings", &readings(lines), lines, 7);
    report("escape-heavy", &escaped(lines), lines, 6);
}

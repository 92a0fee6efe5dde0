//! Parses arbitrary bytes with every precision and with tiny limits, and checks what every
//! returned line must satisfy. Each accepted line is also written back with escapes and
//! parsed again, which must give the same line: the parser and the escaping rules agree.

#![no_main]

use std::fmt::Write as _;

use annals_lp::{FieldValue, Limits, Line, ParseOptions, Parser, Precision};
use libfuzzer_sys::fuzz_target;

const PRECISIONS: [Precision; 7] = [
    Precision::Auto,
    Precision::Nanoseconds,
    Precision::Microseconds,
    Precision::Milliseconds,
    Precision::Seconds,
    Precision::Minutes,
    Precision::Hours,
];

const TINY: Limits = Limits {
    name_len_max: 8,
    tag_value_len_max: 8,
    string_len_max: 8,
    tags_max: 2,
    fields_max: 3,
    line_len_max: 64,
};

fuzz_target!(|data: &[u8]| {
    for precision in PRECISIONS {
        for limits in [Limits::default(), TINY] {
            let opts = ParseOptions {
                precision,
                default_time_ns: 0,
                limits,
            };
            run(data, &opts);
        }
    }
});

fn run(data: &[u8], opts: &ParseOptions) {
    let mut parser = Parser::new(data, opts);
    let mut line = Line::new();
    let mut last_line = 0;
    loop {
        match parser.next_into(&mut line) {
            Ok(false) => break,
            Ok(true) => {
                assert!(line.line_number > last_line);
                last_line = line.line_number;
                check(&line, opts);
                round_trip(&line);
            }
            Err(e) => {
                assert!(e.line() > last_line, "error lines must increase");
                last_line = e.line();
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

fn check(line: &Line<'_>, opts: &ParseOptions) {
    let l = &opts.limits;
    assert!(!line.measurement.is_empty(), "empty measurement");
    assert!(!line.fields.is_empty(), "no fields");
    assert!(line.measurement.len() <= l.name_len_max);
    assert!(line.tags.len() <= l.tags_max && line.fields.len() <= l.fields_max);
    let mut names = std::collections::HashSet::new();
    for (k, v) in &line.tags {
        assert!(!k.is_empty() && !v.is_empty() && k != "time");
        assert!(k.len() <= l.name_len_max && v.len() <= l.tag_value_len_max);
        assert!(names.insert(&**k), "repeated name {k:?}");
    }
    for (k, v) in &line.fields {
        assert!(!k.is_empty() && k != "time" && k.len() <= l.name_len_max);
        assert!(names.insert(&**k), "repeated name {k:?}");
        match v {
            FieldValue::F64(f) => assert!(f.is_finite()),
            FieldValue::Str(s) => assert!(s.len() <= l.string_len_max),
            _ => {}
        }
    }
    assert!(
        line.time_ns == opts.default_time_ns
            || (annals_lp::TIME_NS_MIN..=annals_lp::TIME_NS_MAX).contains(&line.time_ns)
    );
}

fn escape(out: &mut String, s: &str, escapes: &[char]) {
    for c in s.chars() {
        if c == '\\' || escapes.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

fn round_trip(line: &Line<'_>) {
    let mut out = String::new();
    escape(&mut out, &line.measurement, &[',', ' ']);
    for (k, v) in &line.tags {
        out.push(',');
        escape(&mut out, k, &[',', '=', ' ']);
        out.push('=');
        escape(&mut out, v, &[',', '=', ' ']);
    }
    for (i, (k, v)) in line.fields.iter().enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        escape(&mut out, k, &[',', '=', ' ']);
        out.push('=');
        match v {
            FieldValue::F64(f) => write!(out, "{f}").unwrap(),
            FieldValue::I64(n) => write!(out, "{n}i").unwrap(),
            FieldValue::U64(n) => write!(out, "{n}u").unwrap(),
            FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            FieldValue::Str(s) => {
                out.push('"');
                escape(&mut out, s, &['"']);
                out.push('"');
            }
        }
    }
    write!(out, " {}", line.time_ns).unwrap();
    let opts = ParseOptions::default();
    let again = annals_lp::parse_all(out.as_bytes(), &opts)
        .unwrap_or_else(|e| panic!("re-parsing {out:?}: {e}"));
    assert_eq!(again.len(), 1, "{out:?}");
    let again = &again[0];
    assert_eq!(again.measurement, line.measurement);
    assert_eq!(again.tags, line.tags);
    assert_eq!(again.fields.len(), line.fields.len());
    for ((k1, v1), (k2, v2)) in again.fields.iter().zip(&line.fields) {
        assert_eq!(k1, k2);
        match (v1, v2) {
            (FieldValue::F64(a), FieldValue::F64(b)) => assert_eq!(a.to_bits(), b.to_bits()),
            _ => assert_eq!(v1, v2),
        }
    }
    assert_eq!(again.time_ns, line.time_ns);
}

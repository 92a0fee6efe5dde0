//! Property tests: random valid lines written by an escaping writer parse back to exactly the
//! values they were written from; arbitrary bytes never panic and only yield lines that keep
//! the documented invariants.

use std::borrow::Cow;
use std::fmt::Write as _;

use proptest::prelude::*;

use crate::{FieldValue, Line, ParseOptions, Parser, Precision, TIME_NS_MAX, TIME_NS_MIN};

/// Characters that stress escaping and UTF-8 handling; any other char (but `\n`) can also
/// appear.
const TRICKY: &[char] = &[
    ',', '=', ' ', '\\', '"', '\'', '#', '\t', '\r', 'é', '🚀', 'ж', 'a', 'Z', '0', '_', '-', '.',
];

fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
    let c = prop_oneof![
        4 => proptest::sample::select(TRICKY),
        1 => any::<char>().prop_filter("no line breaks", |c| *c != '\n'),
    ];
    proptest::collection::vec(c, min..max).prop_map(|v| v.into_iter().collect())
}

fn name() -> impl Strategy<Value = String> {
    text(1, 10).prop_filter("time is reserved", |s| s != "time")
}

/// A measurement can start with neither `#` (a comment) nor a tab (leading whitespace):
/// InfluxDB cannot express those either.
fn measurement() -> impl Strategy<Value = String> {
    name().prop_filter("not a comment or indentation", |s| {
        !s.starts_with('#') && !s.starts_with('\t')
    })
}

fn value() -> impl Strategy<Value = FieldValue<'static>> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(FieldValue::F64),
        (-1e6f64..1e6).prop_map(FieldValue::F64),
        any::<i64>().prop_map(FieldValue::I64),
        any::<u64>().prop_map(FieldValue::U64),
        any::<bool>().prop_map(FieldValue::Bool),
        text(0, 20).prop_map(|s| FieldValue::Str(Cow::Owned(s))),
    ]
}

/// What a line should parse to, plus how to spell it.
#[derive(Debug, Clone)]
struct Model {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, FieldValue<'static>)>,
    time: Option<i64>,
    /// Picks number formats, boolean spellings and the number of separating spaces.
    style: u64,
}

fn model() -> impl Strategy<Value = Model> {
    (
        measurement(),
        proptest::collection::vec((name(), text(1, 10)), 0..6),
        proptest::collection::vec((name(), value()), 1..8),
        proptest::option::of(TIME_NS_MIN..=TIME_NS_MAX),
        any::<u64>(),
    )
        .prop_map(|(measurement, tags, fields, time, style)| {
            // Names must be distinct across tags and fields: keep the first of each.
            let mut seen = std::collections::HashSet::new();
            let fields: Vec<_> = fields
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect();
            let tags = tags
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect();
            Model {
                measurement,
                tags,
                fields,
                time,
                style,
            }
        })
}

/// Writes `s` with a backslash before `\` and each of `escapes`. Escaping `\` is what keeps
/// a name ending in a backslash from swallowing the separator after it.
fn escape(out: &mut String, s: &str, escapes: &[char]) {
    for c in s.chars() {
        if c == '\\' || escapes.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

fn write_line(out: &mut String, m: &Model) {
    let mut style = m.style;
    let mut pick = |n: u64| {
        let v = style % n;
        style = (style / n) ^ style.rotate_left(17);
        v
    };
    escape(out, &m.measurement, &[',', ' ']);
    for (k, v) in &m.tags {
        out.push(',');
        escape(out, k, &[',', '=', ' ']);
        out.push('=');
        escape(out, v, &[',', '=', ' ']);
    }
    for _ in 0..=pick(3) {
        out.push(' ');
    }
    for (i, (k, v)) in m.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(out, k, &[',', '=', ' ']);
        out.push('=');
        match v {
            FieldValue::F64(f) => match pick(3) {
                0 => write!(out, "{f}").unwrap(),
                1 => write!(out, "{f:e}").unwrap(),
                _ => write!(out, "{f:E}").unwrap(),
            },
            FieldValue::I64(n) => write!(out, "{n}i").unwrap(),
            FieldValue::U64(n) => write!(out, "{n}u").unwrap(),
            FieldValue::Bool(b) => {
                let spellings = if *b {
                    ["t", "T", "true", "True", "TRUE"]
                } else {
                    ["f", "F", "false", "False", "FALSE"]
                };
                out.push_str(spellings[pick(5) as usize]);
            }
            FieldValue::Str(s) => {
                out.push('"');
                escape(out, s, &['"']);
                out.push('"');
            }
        }
    }
    if let Some(t) = m.time {
        for _ in 0..=pick(2) {
            out.push(' ');
        }
        write!(out, "{t}").unwrap();
    }
}

/// Exact equality, floats compared bit for bit (so -0.0 is not 0.0).
fn same_value(a: &FieldValue<'_>, b: &FieldValue<'_>) -> bool {
    match (a, b) {
        (FieldValue::F64(x), FieldValue::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn assert_matches(line: &Line<'_>, m: &Model, default_time: i64) {
    assert_eq!(line.measurement, m.measurement);
    let tags: Vec<(&str, &str)> = line.tags.iter().map(|(k, v)| (&**k, &**v)).collect();
    let want: Vec<(&str, &str)> = m.tags.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(tags, want);
    assert_eq!(line.fields.len(), m.fields.len());
    for ((k, v), (wk, wv)) in line.fields.iter().zip(&m.fields) {
        assert_eq!(k, wk);
        assert!(same_value(v, wv), "{k:?}: parsed {v:?}, wrote {wv:?}");
    }
    assert_eq!(line.time_ns, m.time.unwrap_or(default_time));
}

/// The invariants every parsed line keeps (see the crate docs).
fn check_invariants(line: &Line<'_>, opts: &ParseOptions) {
    assert!(!line.measurement.is_empty());
    assert!(!line.fields.is_empty());
    assert!(line.tags.len() <= opts.limits.tags_max);
    assert!(line.fields.len() <= opts.limits.fields_max);
    let mut names = std::collections::HashSet::new();
    for (k, v) in &line.tags {
        assert!(!k.is_empty() && !v.is_empty() && k != "time");
        assert!(names.insert(&**k), "repeated {k:?}");
    }
    for (k, v) in &line.fields {
        assert!(!k.is_empty() && k != "time");
        assert!(names.insert(&**k), "repeated {k:?}");
        if let FieldValue::F64(f) = v {
            assert!(f.is_finite());
        }
    }
    assert!(
        line.time_ns == opts.default_time_ns || (TIME_NS_MIN..=TIME_NS_MAX).contains(&line.time_ns)
    );
}

const PRECISIONS: [Precision; 7] = [
    Precision::Auto,
    Precision::Nanoseconds,
    Precision::Microseconds,
    Precision::Milliseconds,
    Precision::Seconds,
    Precision::Minutes,
    Precision::Hours,
];

/// How many items a parser must yield for `input`: one per line that is neither blank nor a
/// (valid UTF-8) comment.
fn expected_items(input: &[u8]) -> usize {
    input
        .split(|&b| b == b'\n')
        .filter(|raw| {
            let lead = raw.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
            let rest = &raw[lead..];
            let trail = rest
                .iter()
                .rev()
                .take_while(|b| matches!(b, b' ' | b'\t' | b'\r'))
                .count();
            if rest.len() == trail {
                return false;
            }
            std::str::from_utf8(raw).is_err() || rest[0] != b'#'
        })
        .count()
}

fn fuzz_once(input: &[u8]) {
    for precision in PRECISIONS {
        let opts = ParseOptions {
            precision,
            default_time_ns: -7,
            ..ParseOptions::default()
        };
        let mut parser = Parser::new(input, &opts);
        let mut line = Line::new();
        let mut items = 0;
        let mut last_line = 0;
        loop {
            match parser.next_into(&mut line) {
                Ok(false) => break,
                Ok(true) => {
                    check_invariants(&line, &opts);
                    assert!(line.line_number > last_line);
                    last_line = line.line_number;
                }
                Err(e) => {
                    assert!(e.line() > last_line);
                    last_line = e.line();
                    let _ = e.to_string();
                }
            }
            items += 1;
        }
        assert_eq!(items, expected_items(input));
    }
}

const LP_BYTES: &[u8] = b"mf ,=\\\"\n\r\t#-.019eEiutTfF\xc3\xa9\xff";

proptest! {
    #[test]
    fn written_lines_parse_back_exactly(
        models in proptest::collection::vec(model(), 1..6),
        separators in proptest::collection::vec(0u8..4, 6),
    ) {
        let default_time = 1_234;
        let mut input = String::new();
        let mut line_numbers = Vec::new();
        let mut n = 0;
        for (m, sep) in models.iter().zip(&separators) {
            // Blank lines and comments between lines must not disturb numbering.
            match sep {
                1 => { input.push_str("# comment, with = \"quotes\"\n"); n += 1; }
                2 => { input.push_str("  \t\n"); n += 1; }
                _ => {}
            }
            write_line(&mut input, m);
            n += 1;
            line_numbers.push(n);
            input.push_str(if *sep == 3 { "\r\n" } else { "\n" });
        }
        let opts = ParseOptions { default_time_ns: default_time, ..ParseOptions::default() };
        let mut parser = Parser::new(input.as_bytes(), &opts);
        let mut line = Line::new();
        for (m, want_number) in models.iter().zip(&line_numbers) {
            match parser.next_into(&mut line) {
                Ok(true) => {}
                other => panic!("{other:?} for {input:?}"),
            }
            assert_eq!(line.line_number, *want_number);
            assert_matches(&line, m, default_time);
        }
        prop_assert!(!parser.next_into(&mut line).unwrap());
    }

    #[test]
    fn timestamps_follow_the_precision(ts in any::<i64>(), p in proptest::sample::select(&PRECISIONS[..])) {
        let input = format!("m f=1 {ts}");
        let opts = ParseOptions { precision: p, ..ParseOptions::default() };
        let got = crate::parse_all(input.as_bytes(), &opts).map(|l| l[0].time_ns);
        match p.to_nanos(ts) {
            Some(ns) => prop_assert_eq!(got, Ok(ns)),
            None => {
                let out_of_range = matches!(
                    got.unwrap_err().kind(),
                    crate::ErrorKind::TimestampOutOfRange { .. }
                );
                prop_assert!(out_of_range);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_once(&input);
    }

    #[test]
    fn line_protocol_like_bytes_never_panic(
        input in proptest::collection::vec(proptest::sample::select(LP_BYTES), 0..200)
    ) {
        fuzz_once(&input);
    }

    #[test]
    fn mutated_valid_lines_never_panic(
        m in model(),
        edits in proptest::collection::vec((any::<usize>(), proptest::sample::select(LP_BYTES)), 1..4),
    ) {
        let mut s = String::new();
        write_line(&mut s, &m);
        let mut input = s.into_bytes();
        for (at, byte) in edits {
            let at = at % (input.len() + 1);
            input.insert(at, byte);
        }
        fuzz_once(&input);
    }
}

//! Edge cases of every rule, one test per rule. Inputs are written as raw strings so what you
//! read is what the parser sees.

use std::borrow::Cow;

use crate::{
    parse_all, ErrorKind, FieldValue, Limits, Line, LineError, ParseOptions, Parser, Precision,
    TIME_NS_MAX, TIME_NS_MIN,
};

const TSBS: &str = "readings,name=truck_12,fleet=South,driver=Trish,model=H-2,device_version=v2.3,load_capacity=1500,fuel_capacity=150,nominal_fuel_consumption=12 latitude=52.31,longitude=4.72,elevation=124,velocity=71,heading=221,grade=0,fuel_consumption=25 1451606400000000000";

fn with(precision: Precision) -> ParseOptions {
    ParseOptions {
        precision,
        default_time_ns: 42,
        ..ParseOptions::default()
    }
}

fn one_with<'a>(input: &'a str, opts: &ParseOptions) -> Line<'a> {
    let mut lines =
        parse_all(input.as_bytes(), opts).unwrap_or_else(|e| panic!("{input:?} failed: {e}"));
    assert_eq!(lines.len(), 1, "{input:?}");
    lines.pop().unwrap()
}

fn one(input: &str) -> Line<'_> {
    one_with(input, &with(Precision::Nanoseconds))
}

fn err_with(input: &str, opts: &ParseOptions) -> LineError {
    match parse_all(input.as_bytes(), opts) {
        Ok(lines) => panic!("{input:?} parsed: {lines:?}"),
        Err(e) => e,
    }
}

fn err(input: &str) -> LineError {
    err_with(input, &with(Precision::Nanoseconds))
}

fn kind(input: &str) -> ErrorKind {
    err(input).into_kind()
}

fn s(v: &str) -> String {
    v.to_owned()
}

#[allow(clippy::ptr_arg)] // the point is to look at the Cow, not the str
fn is_borrowed(c: &Cow<'_, str>) -> bool {
    matches!(c, Cow::Borrowed(_))
}

#[test]
fn tsbs_line_parses_fully_and_without_copies() {
    let line = one(TSBS);
    assert_eq!(line.line_number, 1);
    assert_eq!(line.measurement, "readings");
    let tags: Vec<(&str, &str)> = line.tags.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(
        tags,
        [
            ("name", "truck_12"),
            ("fleet", "South"),
            ("driver", "Trish"),
            ("model", "H-2"),
            ("device_version", "v2.3"),
            ("load_capacity", "1500"),
            ("fuel_capacity", "150"),
            ("nominal_fuel_consumption", "12"),
        ]
    );
    let fields: Vec<(&str, FieldValue<'_>)> =
        line.fields.iter().map(|(k, v)| (&**k, v.clone())).collect();
    assert_eq!(
        fields,
        [
            ("latitude", FieldValue::F64(52.31)),
            ("longitude", FieldValue::F64(4.72)),
            ("elevation", FieldValue::F64(124.0)),
            ("velocity", FieldValue::F64(71.0)),
            ("heading", FieldValue::F64(221.0)),
            ("grade", FieldValue::F64(0.0)),
            ("fuel_consumption", FieldValue::F64(25.0)),
        ]
    );
    assert_eq!(line.time_ns, 1_451_606_400_000_000_000);
    assert!(is_borrowed(&line.measurement));
    assert!(line
        .tags
        .iter()
        .all(|(k, v)| is_borrowed(k) && is_borrowed(v)));
    assert!(line.fields.iter().all(|(k, _)| is_borrowed(k)));
}

#[test]
fn measurement_escapes() {
    assert_eq!(one(r"my\ Table f=1").measurement, "my Table");
    assert_eq!(one(r"a\,b,t=1 f=1").measurement, "a,b");
    assert_eq!(one(r"a\\ f=1").measurement, r"a\");
    assert_eq!(one(r"a\\\ b f=1").measurement, r"a\ b");
    // `=` and quotes need no escape in a measurement, and `\=` is not an escape there.
    assert_eq!(one(r"a=b f=1").measurement, "a=b");
    assert_eq!(one(r"a\=b f=1").measurement, r"a\=b");
    assert_eq!(one(r#""m"'x' f=1"#).measurement, r#""m"'x'"#);
    // A backslash before an ordinary character stays, and costs no copy.
    let line = one(r"a\b f=1");
    assert_eq!(line.measurement, r"a\b");
    assert!(is_borrowed(&line.measurement));
    assert!(!is_borrowed(&one(r"a\ b f=1").measurement));
    // A measurement may start with an escaped space (not trimmed as leading whitespace).
    assert_eq!(one(r"\ m f=1").measurement, " m");
}

#[test]
fn tag_escapes() {
    let line = one(r"m,tag\ Key1=tag\ Value1,a\,b=c\=d,e\=f=g\,h f=1");
    assert_eq!(line.tag("tag Key1"), Some("tag Value1"));
    assert_eq!(line.tag("a,b"), Some("c=d"));
    assert_eq!(line.tag("e=f"), Some("g,h"));
    // Escaped backslash right before a separator ends the value with one backslash.
    let line = one(r"m,k=v\\,k2=w\\ f=1");
    assert_eq!(line.tag("k"), Some(r"v\"));
    assert_eq!(line.tag("k2"), Some(r"w\"));
    // Quotes are literal in tags.
    assert_eq!(one(r#"m,k="v" f=1"#).tag("k"), Some(r#""v""#));
    // An escaped space swallows the separator, so the rest becomes part of the value.
    assert_eq!(kind(r"m,k=v\ f"), ErrorKind::MissingFields);
    assert_eq!(
        kind(r"m,k=v\ f=1"),
        ErrorKind::UnescapedEquals { key: s("k") }
    );
    // A backslash at the very end of a tag value is literal.
    assert_eq!(kind(r"m,k=v\"), ErrorKind::MissingFields);
}

#[test]
fn field_key_escapes() {
    let line = one(r"m f\ k\=\,x=1,\\=2");
    assert_eq!(line.field("f k=,x"), Some(&FieldValue::F64(1.0)));
    assert_eq!(line.field(r"\"), Some(&FieldValue::F64(2.0)));
}

#[test]
fn string_field_escapes() {
    let f = |input: &'static str| match one(input).fields.into_iter().next().unwrap().1 {
        FieldValue::Str(s) => s.into_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        f(r#"m s="\"string\" within a string""#),
        r#""string" within a string"#
    );
    assert_eq!(f(r#"m s="a\\""#), r"a\");
    assert_eq!(f(r#"m s="a\\\"b""#), r#"a\"b"#);
    assert_eq!(f(r#"m s="\\\\""#), r"\\");
    assert_eq!(f(r#"m s="a\nb\t""#), r"a\nb\t");
    assert_eq!(f(r#"m s="C:\path\to""#), r"C:\path\to");
    assert_eq!(f(r#"m s="a,b c=d e""#), "a,b c=d e");
    assert_eq!(f(r#"m s="""#), "");
    assert_eq!(f(r#"m s="'single'""#), "'single'");
    // No escapes: borrowed.
    match &one(r#"m s="C:\path" 1"#).fields[0].1 {
        FieldValue::Str(c) => assert!(is_borrowed(c)),
        other => panic!("{other:?}"),
    }
    // Strings next to other fields and the timestamp.
    let line = one(r#"m a="x y",b=1i,c="z\"" 5"#);
    assert_eq!(line.field("a"), Some(&FieldValue::Str("x y".into())));
    assert_eq!(line.field("b"), Some(&FieldValue::I64(1)));
    assert_eq!(line.field("c"), Some(&FieldValue::Str(r#"z""#.into())));
    assert_eq!(line.time_ns, 5);
    // A trailing backslash escapes the closing quote: unterminated.
    assert!(matches!(
        kind(r#"m s="abc\""#),
        ErrorKind::UnterminatedString { .. }
    ));
}

#[test]
fn unicode_names_and_values() {
    let line = one("myTable,tagKey=🍭 fieldKey=\"Launch 🚀\" 1556813561098000000");
    assert_eq!(line.tag("tagKey"), Some("🍭"));
    assert_eq!(
        line.field("fieldKey"),
        Some(&FieldValue::Str("Launch 🚀".into()))
    );
    let line = one("温度,城市=東京 値=1,température=-3.5");
    assert_eq!(line.measurement, "温度");
    assert_eq!(line.tag("城市"), Some("東京"));
    assert_eq!(line.field("température"), Some(&FieldValue::F64(-3.5)));
    let line = one(r"é\ ü,ключ=зна\,чение 键\=x=1i");
    assert_eq!(line.measurement, "é ü");
    assert_eq!(line.tag("ключ"), Some("зна,чение"));
    assert_eq!(line.field("键=x"), Some(&FieldValue::I64(1)));
    // A backslash before a multi-byte character is literal.
    assert_eq!(one(r"m\é f=1").measurement, r"m\é");
}

#[test]
fn every_value_type() {
    let line = one(
        "m a=1,b=1.0,c=-1.5e10,d=1E5,e=.5,f=123i,g=-9223372036854775808i,h=9223372036854775807i,\
         i=0u,j=18446744073709551615u,k=\"s\",l=t,m=T,n=true,o=True,p=TRUE,q=f,r=F,s=false,\
         u=False,v=FALSE,w=-0,x=1e-5",
    );
    let want = [
        FieldValue::F64(1.0),
        FieldValue::F64(1.0),
        FieldValue::F64(-1.5e10),
        FieldValue::F64(1e5),
        FieldValue::F64(0.5),
        FieldValue::I64(123),
        FieldValue::I64(i64::MIN),
        FieldValue::I64(i64::MAX),
        FieldValue::U64(0),
        FieldValue::U64(u64::MAX),
        FieldValue::Str("s".into()),
        FieldValue::Bool(true),
        FieldValue::Bool(true),
        FieldValue::Bool(true),
        FieldValue::Bool(true),
        FieldValue::Bool(true),
        FieldValue::Bool(false),
        FieldValue::Bool(false),
        FieldValue::Bool(false),
        FieldValue::Bool(false),
        FieldValue::Bool(false),
        FieldValue::F64(-0.0),
        FieldValue::F64(1e-5),
    ];
    let got: Vec<FieldValue<'_>> = line.fields.into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, want);
}

#[test]
fn invalid_numbers_and_booleans() {
    let e = err("m ok=1\nm ok=2\nm speed=12x3i");
    assert_eq!(e.line(), 3);
    assert_eq!(e.column(), Some(9));
    assert_eq!(
        e.kind(),
        &ErrorKind::InvalidInteger {
            key: s("speed"),
            token: s("12x3i")
        }
    );
    assert!(e
        .to_string()
        .starts_with(r#"line 3, column 9: field "speed": invalid integer "12x3i""#));
    for input in [
        "m f=1.2.3",
        "m f=-inf",
        "m f=inf",
        "m f=NaN",
        "m f=+1",
        "m f=1e",
        "m f=1_0",
    ] {
        assert!(
            matches!(kind(input), ErrorKind::InvalidFloat { .. }),
            "{input}"
        );
    }
    assert_eq!(
        kind("m f=1e400"),
        ErrorKind::FloatOutOfRange {
            key: s("f"),
            token: s("1e400")
        }
    );
    assert!(matches!(kind("m f=-1u"), ErrorKind::InvalidUnsigned { .. }));
    assert!(matches!(
        kind("m f=1.5u"),
        ErrorKind::InvalidUnsigned { .. }
    ));
    assert!(matches!(kind("m f=1.5i"), ErrorKind::InvalidInteger { .. }));
    assert_eq!(
        kind("m f=9223372036854775808i"),
        ErrorKind::IntegerOverflow {
            key: s("f"),
            token: s("9223372036854775808i"),
            ty: "i64"
        }
    );
    assert!(matches!(
        kind("m f=-9223372036854775809i"),
        ErrorKind::IntegerOverflow { ty: "i64", .. }
    ));
    assert!(matches!(
        kind("m f=18446744073709551616u"),
        ErrorKind::IntegerOverflow { ty: "u64", .. }
    ));
    assert_eq!(
        kind("m f=tru"),
        ErrorKind::BadBoolean {
            key: s("f"),
            token: s("tru")
        }
    );
    assert!(matches!(kind("m f=tRUE"), ErrorKind::BadBoolean { .. }));
    assert!(matches!(
        kind("m f=abc"),
        ErrorKind::InvalidFieldValue { .. }
    ));
    assert!(matches!(
        kind("m f='x'"),
        ErrorKind::InvalidFieldValue { .. }
    ));
}

#[test]
fn structural_errors_with_positions() {
    // (input, kind, 1-based column)
    let cases: Vec<(&str, ErrorKind, usize)> = vec![
        (",t=1 f=1", ErrorKind::EmptyMeasurement, 1),
        ("  ,t=1 f=1", ErrorKind::EmptyMeasurement, 3),
        ("m", ErrorKind::MissingFields, 2),
        ("m,t=1", ErrorKind::MissingFields, 6),
        ("m,t=1   ", ErrorKind::MissingFields, 6),
        ("m,=v f=1", ErrorKind::EmptyTagKey, 3),
        ("m, f=1", ErrorKind::EmptyTagKey, 3),
        ("m,t=1, f=1", ErrorKind::EmptyTagKey, 7),
        ("m,t f=1", ErrorKind::MissingTagEquals { key: s("t") }, 4),
        ("m,t", ErrorKind::MissingTagEquals { key: s("t") }, 4),
        ("m,t= f=1", ErrorKind::EmptyTagValue { key: s("t") }, 5),
        ("m,t=,u=1 f=1", ErrorKind::EmptyTagValue { key: s("t") }, 5),
        ("m,t=a=b f=1", ErrorKind::UnescapedEquals { key: s("t") }, 6),
        ("m =1", ErrorKind::EmptyFieldKey, 3),
        ("m f=1,", ErrorKind::EmptyFieldKey, 7),
        ("m f=1,,g=2", ErrorKind::EmptyFieldKey, 7),
        ("m ,f=1", ErrorKind::EmptyFieldKey, 3),
        ("m f", ErrorKind::MissingFieldEquals { key: s("f") }, 4),
        ("m f 123", ErrorKind::MissingFieldEquals { key: s("f") }, 4),
        ("m f=1,g", ErrorKind::MissingFieldEquals { key: s("g") }, 8),
        ("m f=", ErrorKind::MissingFieldValue { key: s("f") }, 5),
        ("m f=,g=1", ErrorKind::MissingFieldValue { key: s("f") }, 5),
        ("m f= 123", ErrorKind::MissingFieldValue { key: s("f") }, 5),
        (
            "m f=\"abc",
            ErrorKind::UnterminatedString { key: s("f") },
            5,
        ),
        (
            "m f=\"a\"b",
            ErrorKind::ExpectedSeparator {
                key: s("f"),
                found: 'b',
            },
            8,
        ),
        (
            "m f=\"a\"é",
            ErrorKind::ExpectedSeparator {
                key: s("f"),
                found: 'é',
            },
            8,
        ),
        ("m f=1,f=2", ErrorKind::DuplicateField { key: s("f") }, 7),
        ("m,t=1,t=2 f=1", ErrorKind::DuplicateTag { key: s("t") }, 7),
        ("m,x=1 x=2", ErrorKind::TagFieldConflict { key: s("x") }, 7),
        ("m,time=1 f=1", ErrorKind::ReservedTime { what: "tag" }, 3),
        ("m time=1", ErrorKind::ReservedTime { what: "field" }, 3),
        (
            "m f=1 12a",
            ErrorKind::InvalidTimestamp { token: s("12a") },
            7,
        ),
        (
            "m f=1 1.5",
            ErrorKind::InvalidTimestamp { token: s("1.5") },
            7,
        ),
        (
            "m f=1 +5",
            ErrorKind::InvalidTimestamp { token: s("+5") },
            7,
        ),
        ("m f=1 -", ErrorKind::InvalidTimestamp { token: s("-") }, 7),
        (
            "m f=1 g=2",
            ErrorKind::InvalidTimestamp { token: s("g=2") },
            7,
        ),
        (
            "m f=1 123 456",
            ErrorKind::TrailingGarbage { text: s("456") },
            11,
        ),
        (
            "m f=1 123\tx",
            ErrorKind::TrailingGarbage { text: s("x") },
            11,
        ),
    ];
    for (input, want, column) in cases {
        let e = err(input);
        assert_eq!(e.kind(), &want, "{input:?}");
        assert_eq!(e.line(), 1, "{input:?}");
        assert_eq!(e.column(), Some(column), "{input:?}: {e}");
    }
}

#[test]
fn time_is_reserved_only_as_exact_tag_or_field_key() {
    assert_eq!(one("time f=1").measurement, "time");
    assert!(one("m,Time=1 TIME=1,times=2").field("TIME").is_some());
    assert_eq!(one("m,t=time f=\"time\"").tag("t"), Some("time"));
    // A backslash before a letter is literal, so `ti\me` is not `time`.
    assert_eq!(one(r"m ti\me=1").fields[0].0, r"ti\me");
}

#[test]
fn invalid_utf8_names_line_and_byte() {
    let input = b"m f=1\nm,t=\xff f=1\nm f=2";
    let e = parse_all(input, &ParseOptions::default()).unwrap_err();
    assert_eq!(e.line(), 2);
    assert_eq!(e.column(), Some(5));
    assert_eq!(e.kind(), &ErrorKind::InvalidUtf8);
    // Truncated multi-byte sequence at the end of a string value.
    let e = parse_all(b"m s=\"\xe2\x82\"", &ParseOptions::default()).unwrap_err();
    assert_eq!((e.line(), e.kind()), (1, &ErrorKind::InvalidUtf8));
    // Comments must be UTF-8 too.
    let e = parse_all(b"# caf\xe9\nm f=1", &ParseOptions::default()).unwrap_err();
    assert_eq!((e.line(), e.column()), (1, Some(6)));
}

#[test]
fn comments_blank_lines_and_crlf() {
    let input = "\n\n# comment\n   # indented comment\n\t\n  \r\nm f=1\r\n\r\nm f=2\r\n#last";
    let lines = parse_all(input.as_bytes(), &ParseOptions::default()).unwrap();
    let got: Vec<(usize, f64)> = lines
        .iter()
        .map(|l| match l.fields[0].1 {
            FieldValue::F64(v) => (l.line_number, v),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(got, [(7, 1.0), (9, 2.0)]);
    // \r is dropped before the timestamp and string values are unaffected.
    assert_eq!(one("m s=\"a\" 12\r").time_ns, 12);
    // Leading whitespace, runs of spaces between sections and trailing whitespace are fine.
    let line = one("  \tm,t=1   f=1,g=2    123  \t");
    assert_eq!((line.fields.len(), line.time_ns), (2, 123));
    // A '#' later in the line is data.
    assert_eq!(one("m#1,t=#2 f=\"#3\"").measurement, "m#1");
    // Empty input and input of only comments.
    assert!(parse_all(b"", &ParseOptions::default()).unwrap().is_empty());
    assert!(parse_all(b"#x\n\n", &ParseOptions::default())
        .unwrap()
        .is_empty());
    // A string value cannot span lines: the line break ends it.
    let mut p = Parser::new(b"m s=\"a\nb\" 1\nm f=1", &ParseOptions::default());
    let mut line = Line::new();
    let e = p.next_into(&mut line).unwrap_err();
    assert_eq!(
        (e.line(), e.kind()),
        (1, &ErrorKind::UnterminatedString { key: s("s") })
    );
    assert_eq!(p.next_into(&mut line).unwrap_err().line(), 2);
    assert!(p.next_into(&mut line).unwrap());
    assert_eq!(line.line_number, 3);
}

#[test]
fn partial_acceptance_collects_every_error_and_every_good_line() {
    let input = "m f=1\nm f=x\n\nm,t f=1\nm f=2 3\nm\n";
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for item in Parser::new(input.as_bytes(), &ParseOptions::default()) {
        match item {
            Ok(line) => good.push(line.line_number),
            Err(e) => bad.push(e.line()),
        }
    }
    assert_eq!(good, [1, 5]);
    assert_eq!(bad, [2, 4, 6]);
    // parse_all stops at the first error.
    assert_eq!(err(input).line(), 2);
}

#[test]
fn precision_conversions() {
    use Precision::*;
    let t = |p: Precision, input: &str| one_with(input, &with(p)).time_ns;
    assert_eq!(t(Nanoseconds, "m f=1 1"), 1);
    assert_eq!(t(Microseconds, "m f=1 1"), 1_000);
    assert_eq!(t(Milliseconds, "m f=1 1"), 1_000_000);
    assert_eq!(t(Seconds, "m f=1 1"), 1_000_000_000);
    assert_eq!(t(Minutes, "m f=1 1"), 60_000_000_000);
    assert_eq!(t(Hours, "m f=1 1"), 3_600_000_000_000);
    assert_eq!(t(Seconds, "m f=1 -2"), -2_000_000_000);
    assert_eq!(t(Seconds, "m f=1 0"), 0);
    // No timestamp: the default, whatever the precision.
    assert_eq!(t(Seconds, "m f=1"), 42);
    assert_eq!(t(Auto, "m f=1   "), 42);
    // Auto guesses per line.
    let input =
        "m f=1 1708976567\nm f=1 1708976567123\nm f=1 1708976567123456\nm f=1 1708976567123456789";
    let lines = parse_all(input.as_bytes(), &with(Auto)).unwrap();
    let got: Vec<i64> = lines.iter().map(|l| l.time_ns).collect();
    assert_eq!(
        got,
        [
            1_708_976_567_000_000_000,
            1_708_976_567_123_000_000,
            1_708_976_567_123_456_000,
            1_708_976_567_123_456_789
        ]
    );
    // Overflow after applying the precision.
    let e = err_with("m f=1 9223372037", &with(Seconds));
    assert_eq!(
        e.kind(),
        &ErrorKind::TimestampOutOfRange {
            token: s("9223372037"),
            precision: Seconds
        }
    );
    assert_eq!(e.column(), Some(7));
    assert_eq!(t(Seconds, "m f=1 9223372036"), 9_223_372_036_000_000_000);
    assert!(matches!(
        err_with("m f=1 -9223372037", &with(Seconds)).kind(),
        ErrorKind::TimestampOutOfRange { .. }
    ));
    assert!(matches!(
        err_with("m f=1 2562048", &with(Hours)).kind(),
        ErrorKind::TimestampOutOfRange { .. }
    ));
    // Beyond i64 before any precision.
    assert!(matches!(
        kind("m f=1 9223372036854775808"),
        ErrorKind::TimestampOutOfRange { .. }
    ));
    // InfluxDB's range, in nanoseconds.
    assert_eq!(t(Nanoseconds, "m f=1 -9223372036854775806"), TIME_NS_MIN);
    assert_eq!(t(Nanoseconds, "m f=1 9223372036854775806"), TIME_NS_MAX);
    for edge in [
        "-9223372036854775808",
        "-9223372036854775807",
        "9223372036854775807",
    ] {
        let input = format!("m f=1 {edge}");
        assert!(
            matches!(kind(&input), ErrorKind::TimestampOutOfRange { .. }),
            "{edge}"
        );
    }
    assert!(matches!(
        err_with("m f=1 -9223372036854775808", &with(Auto)).kind(),
        ErrorKind::TimestampOutOfRange {
            precision: Nanoseconds,
            ..
        }
    ));
}

#[test]
fn limits_are_enforced_with_the_configured_values() {
    let limits = Limits {
        name_len_max: 4,
        tag_value_len_max: 3,
        string_len_max: 5,
        tags_max: 2,
        fields_max: 3,
        line_len_max: 39,
    };
    let opts = ParseOptions {
        limits,
        ..ParseOptions::default()
    };
    let ok = "mmmm,kkkk=vvv,t2=v ffff=\"sssss\",g=1,h=2";
    assert_eq!(ok.len(), 39);
    assert_eq!(one_with(ok, &opts).fields.len(), 3);
    let bad = |input: &str| err_with(input, &opts).into_kind();
    assert_eq!(
        bad("mmmmm f=1"),
        ErrorKind::NameTooLong {
            what: "measurement",
            name: s("mmmmm"),
            len: 5,
            max: 4
        }
    );
    assert!(matches!(
        bad("m,kkkkk=v f=1"),
        ErrorKind::NameTooLong {
            what: "tag key",
            ..
        }
    ));
    assert!(matches!(
        bad("m fffff=1"),
        ErrorKind::NameTooLong {
            what: "field key",
            ..
        }
    ));
    // Lengths count after unescaping: four characters, five bytes escaped.
    assert_eq!(one_with(r"m\ mm f=1", &opts).measurement, "m mm");
    assert_eq!(
        bad("m,k=vvvv f=1"),
        ErrorKind::TagValueTooLong {
            key: s("k"),
            len: 4,
            max: 3
        }
    );
    assert_eq!(
        bad("m f=\"ssssss\""),
        ErrorKind::StringTooLong {
            key: s("f"),
            len: 6,
            max: 5
        }
    );
    assert_eq!(one_with(r#"m f="ss\"ss""#, &opts).fields.len(), 1);
    assert_eq!(bad("m,a=1,b=2,c=3 f=1"), ErrorKind::TooManyTags { max: 2 });
    assert_eq!(
        bad("m f=1,g=2,h=3,i=4"),
        ErrorKind::TooManyFields { max: 3 }
    );
    let e = err_with("m f=1 1234567890123456789012345678901234", &opts);
    assert_eq!(e.kind(), &ErrorKind::LineTooLong { len: 40, max: 39 });
    assert_eq!((e.line(), e.column()), (1, None));
}

#[test]
fn default_limits_hold_at_their_edges() {
    let opts = ParseOptions::default();
    let name = "n".repeat(crate::NAME_LEN_MAX);
    let field = "f".repeat(crate::NAME_LEN_MAX);
    let input = format!("{name},{name}=v {field}=1");
    assert_eq!(one(&input).measurement.len(), 256);
    assert!(matches!(
        err_with(&format!("{name}n f=1"), &opts).kind(),
        ErrorKind::NameTooLong {
            len: 257,
            max: 256,
            ..
        }
    ));
    let tags: String = (0..crate::TAGS_MAX).map(|i| format!(",t{i}=v")).collect();
    let fields: Vec<String> = (0..crate::FIELDS_MAX).map(|i| format!("f{i}=1")).collect();
    let input = format!("m{tags} {}", fields.join(","));
    let line = one_with(&input, &opts);
    assert_eq!((line.tags.len(), line.fields.len()), (256, 1024));
    assert_eq!(
        err_with(&format!("m{tags},x=1 f=1"), &opts).into_kind(),
        ErrorKind::TooManyTags { max: 256 }
    );
    assert_eq!(
        err_with(&format!("m f=1,{}", fields.join(",")), &opts).into_kind(),
        ErrorKind::TooManyFields { max: 1024 }
    );
    // A repeat among many names is still found (this takes the sorting path).
    let e = err_with(
        &format!("m{tags} {},t100=1", fields[..500].join(",")),
        &opts,
    );
    assert_eq!(e.kind(), &ErrorKind::TagFieldConflict { key: s("t100") });
    let big = format!("m s=\"{}\"", "x".repeat(crate::STRING_LEN_MAX));
    assert!(one_with(&big, &opts).field("s").is_some());
    let too_big = format!("m s=\"{}\"", "x".repeat(crate::STRING_LEN_MAX + 1));
    assert!(matches!(
        err_with(&too_big, &opts).kind(),
        ErrorKind::StringTooLong { .. }
    ));
    let line_max = format!("m f=1 {}", "1".repeat(crate::LINE_LEN_MAX));
    assert!(matches!(
        err_with(&line_max, &opts).kind(),
        ErrorKind::LineTooLong { .. }
    ));
}

#[test]
fn next_into_reuses_the_line_buffers() {
    let input = format!("{TSBS}\n{TSBS}\n{TSBS}\n");
    let mut parser = Parser::new(input.as_bytes(), &ParseOptions::default());
    let mut line = Line::new();
    assert!(parser.next_into(&mut line).unwrap());
    let (tags_ptr, fields_ptr) = (line.tags.as_ptr(), line.fields.as_ptr());
    let (tags_cap, fields_cap) = (line.tags.capacity(), line.fields.capacity());
    for n in 2..=3 {
        assert!(parser.next_into(&mut line).unwrap());
        assert_eq!(line.line_number, n);
        assert_eq!(line.tags.len(), 8);
        assert_eq!(
            (line.tags.as_ptr(), line.tags.capacity()),
            (tags_ptr, tags_cap)
        );
        assert_eq!(
            (line.fields.as_ptr(), line.fields.capacity()),
            (fields_ptr, fields_cap)
        );
    }
    assert!(!parser.next_into(&mut line).unwrap());
    assert!(!parser.next_into(&mut line).unwrap());
    assert_eq!(parser.line_number(), 3);
}

#[test]
fn error_messages_cut_long_user_text() {
    let key = "k".repeat(200);
    let e = err(&format!("m {key}=x"));
    match e.kind() {
        ErrorKind::InvalidFieldValue { key, .. } => {
            assert_eq!(key.len(), crate::ERROR_SNIPPET_LEN_MAX + 3)
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().len() < 400);
}

#[test]
fn owned_lines_outlive_the_input() {
    let line = {
        let input = String::from(r#"m\ x,t=a\,b s="q\\\"" 7"#);
        one(&input).into_owned()
    };
    assert_eq!(line.measurement, "m x");
    assert_eq!(line.tag("t"), Some("a,b"));
    assert_eq!(line.field("s"), Some(&FieldValue::Str(r#"q\""#.into())));
    assert_eq!(line.field("s").map(FieldValue::type_name), Some("string"));
}

//! Query answers from every peer in one shape, and their comparison.
//!
//! Each peer answers in its own format (annals and PostgreSQL as CSV, DuckDB as JSON from its
//! Python driver, InfluxDB as its `/query` JSON). Every cell becomes `None` (SQL NULL) or a
//! canonical string: timestamps as `ts:<microseconds since the epoch>` whatever their text form,
//! booleans as `true`/`false`, anything else as sent. Two cells agree when their strings are
//! equal or both are numbers within [`FLOAT_TOLERANCE`] of each other (sums and averages add
//! in another order on each peer; `5000` and `5000.0` are the same number). Rows are sorted
//! before comparing (numbers numerically), so a peer's row order does not matter.

use std::cmp::Ordering;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Relative tolerance for numbers.
pub(crate) const FLOAT_TOLERANCE: f64 = 1e-9;
/// Differences listed per query and peer before the rest are only counted.
const DIFFS_SHOWN_MAX: usize = 3;

/// One cell: NULL or its canonical text.
pub(crate) type Cell = Option<String>;
/// The rows of one answer.
pub(crate) type Rows = Vec<Vec<Cell>>;

/// Canonical form of one text cell (CSV and InfluxDB tags): empty is NULL.
pub(crate) fn canon_text(s: &str) -> Cell {
    match s {
        "" => None,
        "t" | "true" => Some("true".into()),
        "f" | "false" => Some("false".into()),
        _ => Some(parse_timestamp_us(s).map_or_else(|| s.to_owned(), ts_cell)),
    }
}

/// The canonical cell of a timestamp in microseconds.
pub(crate) fn ts_cell(us: i64) -> String {
    format!("ts:{us}")
}

/// Canonical form of one JSON value (DuckDB driver: timestamps are `{"ts_us": n}`).
pub(crate) fn canon_json(v: &Value) -> Result<Cell> {
    Ok(match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => canon_text(s),
        Value::Object(o) => match o.get("ts_us").and_then(Value::as_i64) {
            Some(us) => Some(ts_cell(us)),
            None => bail!("unexpected JSON object in an answer: {v}"),
        },
        Value::Array(_) => bail!("unexpected JSON array in an answer: {v}"),
    })
}

/// Microseconds since the epoch of `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z|+00|+00:00]` (UTC
/// only), or `None` when `s` is not such a timestamp.
pub(crate) fn parse_timestamp_us(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<9}", &frac[..digits]);
        let nanos: i64 = padded.parse().ok()?;
        if nanos % 1000 != 0 {
            // Finer than a microsecond: not every peer can hold it; compare as text.
            return None;
        }
        micros = nanos / 1000;
        rest = &frac[digits..];
    }
    if !matches!(rest, "" | "Z" | "+00" | "+00:00") {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000) + micros)
}

/// Days since 1970-01-01 of a Gregorian date (Howard Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses CSV (RFC 4180 quoting) with a header line; returns the rows without the header.
pub(crate) fn parse_csv(text: &str) -> Result<Rows> {
    let mut rows = Vec::new();
    let mut row: Vec<Cell> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = text.chars().peekable();
    let mut header = true;
    let end_field = |field: &mut String, was_quoted: &mut bool, row: &mut Vec<Cell>| {
        // A quoted empty string is an empty string, not NULL; no peer sends one here.
        let cell = if *was_quoted && field.is_empty() {
            Some(String::new())
        } else {
            canon_text(field)
        };
        row.push(cell);
        field.clear();
        *was_quoted = false;
    };
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                was_quoted = true;
            }
            ',' => end_field(&mut field, &mut was_quoted, &mut row),
            '\r' => {}
            '\n' => {
                end_field(&mut field, &mut was_quoted, &mut row);
                if !header {
                    rows.push(std::mem::take(&mut row));
                }
                row.clear();
                header = false;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        bail!("CSV answer ends inside a quoted field");
    }
    if !field.is_empty() || !row.is_empty() {
        end_field(&mut field, &mut was_quoted, &mut row);
        if !header {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The rows of one query in the DuckDB driver's JSON (`{"<name>": {"rows": [[...]]}}`).
pub(crate) fn duckdb_rows(all: &Value, name: &str) -> Result<Rows> {
    let rows = all[name]["rows"]
        .as_array()
        .with_context(|| format!("DuckDB driver output has no rows for {name}"))?;
    rows.iter()
        .map(|row| {
            row.as_array()
                .context("DuckDB row is not an array")?
                .iter()
                .map(canon_json)
                .collect()
        })
        .collect()
}

fn as_number(c: &Cell) -> Option<f64> {
    c.as_deref()?.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn cell_cmp(a: &Cell, b: &Cell) -> Ordering {
    match (as_number(a), as_number(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

fn cells_agree(a: &Cell, b: &Cell) -> bool {
    if a == b {
        return true;
    }
    match (as_number(a), as_number(b)) {
        (Some(x), Some(y)) => {
            let scale = x.abs().max(y.abs());
            (x - y).abs() <= FLOAT_TOLERANCE * scale || (x - y).abs() < 1e-12
        }
        _ => false,
    }
}

fn sorted(rows: &Rows) -> Rows {
    let mut rows = rows.clone();
    rows.sort_by(|a, b| {
        a.iter()
            .zip(b)
            .map(|(x, y)| cell_cmp(x, y))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.len().cmp(&b.len()))
    });
    rows
}

fn show(row: &[Cell]) -> String {
    let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
    format!("({})", cells.join(", "))
}

/// `None` when `theirs` holds the same rows as `ours` (after sorting both), else what differs.
pub(crate) fn differences(ours: &Rows, theirs: &Rows) -> Option<String> {
    let (a, b) = (sorted(ours), sorted(theirs));
    let mut out = Vec::new();
    if a.len() != b.len() {
        out.push(format!("{} rows against {}", b.len(), a.len()));
    }
    let mut differing = 0;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| cells_agree(p, q));
        if !same {
            differing += 1;
            if differing <= DIFFS_SHOWN_MAX {
                out.push(format!("row {i}: {} against {}", show(y), show(x)));
            }
        }
    }
    if differing > DIFFS_SHOWN_MAX {
        out.push(format!(
            "{} more differing rows",
            differing - DIFFS_SHOWN_MAX
        ));
    }
    (!out.is_empty()).then(|| out.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_peer_form_are_the_same_cell() {
        let want = Some(ts_cell(1_451_606_410_000_000));
        for s in [
            "2016-01-01 00:00:10",
            "2016-01-01T00:00:10",
            "2016-01-01T00:00:10Z",
            "2016-01-01 00:00:10+00",
            "2016-01-01T00:00:10.000000000",
            "2016-01-01 00:00:10.000+00:00",
        ] {
            assert_eq!(canon_text(s), want, "{s}");
        }
        assert_eq!(
            canon_json(&serde_json::json!({"ts_us": 1_451_606_410_000_000i64})).unwrap(),
            want
        );
        assert_eq!(
            parse_timestamp_us("2016-01-01 00:00:10.5"),
            Some(1_451_606_410_500_000)
        );
        assert_eq!(parse_timestamp_us("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp_us("2016-01-01 00:00:10+01"), None);
        assert_eq!(parse_timestamp_us("truck_1"), None);
        assert_eq!(canon_text("v1.0"), Some("v1.0".into()));
    }

    #[test]
    fn csv_quotes_nulls_and_header() {
        let rows = parse_csv("a,b,c\n1,,\"x,\"\"y\"\"\"\n2,t,z\n").unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), None, Some("x,\"y\"".into())],
                vec![Some("2".into()), Some("true".into()), Some("z".into())],
            ]
        );
        assert!(parse_csv("a\n\"open").is_err());
        assert!(parse_csv("a,b\n").unwrap().is_empty());
    }

    #[test]
    fn numbers_agree_within_tolerance_and_order_does_not_matter() {
        let r = |v: &[&str]| -> Vec<Cell> { v.iter().map(|s| canon_text(s)).collect() };
        let ours = vec![
            r(&["truck_1", "5000.0", "0.30000000000000004"]),
            r(&["truck_2", "1", ""]),
        ];
        let theirs = vec![r(&["truck_2", "1", ""]), r(&["truck_1", "5000", "0.3"])];
        assert_eq!(differences(&ours, &theirs), None);
        let off = vec![r(&["truck_2", "1", ""]), r(&["truck_1", "5000", "0.31"])];
        let diff = differences(&ours, &off).expect("0.31 is not 0.3");
        assert!(diff.contains("0.31"), "{diff}");
        let short = vec![r(&["truck_2", "1", ""])];
        assert!(differences(&ours, &short)
            .unwrap()
            .contains("1 rows against 2"));
        let null = vec![r(&["truck_2", "1", "0"]), r(&["truck_1", "5000", "0.3"])];
        assert!(differences(&ours, &null).is_some(), "NULL is not 0");
    }
}

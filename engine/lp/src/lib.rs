//! # annals-lp: InfluxDB line protocol in, typed rows out
//!
//! This crate owns the parsing of InfluxDB line protocol (v1/v2/v3 semantics) into [`Line`]s:
//! measurement, tags, typed fields and a timestamp in nanoseconds. It is on the ingest hot
//! path: [`Parser::next_into`] reuses one [`Line`], borrows every name and value from the
//! input, and allocates only for a token that contains escapes.
//!
//! It must never: do I/O, read a clock (lines without a timestamp get the caller's
//! [`ParseOptions::default_time_ns`]), panic on any input, use `unsafe`, or depend on another
//! annals crate. Every externally supplied byte is adversarial (DESIGN.md): the parser is
//! property-tested and fuzzed (`fuzz/`).
//!
//! ## The format
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, one line per `\n`
//! (`\r\n` accepted). Blank lines and lines whose first non-blank character is `#` are skipped.
//! Leading and trailing spaces and tabs are ignored; sections are separated by one or more
//! spaces.
//! - Escapes (backslash): measurement `\,` `\ `; tag keys, tag values and field keys `\,` `\=`
//!   `\ `; string values `\"`. Everywhere `\\` is one backslash, and a backslash before any
//!   other character is kept as written (`a\b` is `a\b`), as InfluxDB documents.
//! - Field values: float `1`, `-1.5`, `1E5`, `.5` (finite only: `inf`/`NaN` and values
//!   overflowing f64 are refused); integer `-12i` (i64); unsigned `12u` (u64); string
//!   `"..."`; boolean `t T true True TRUE f F false False FALSE`.
//! - Timestamp: `-?[0-9]+` in the request's [`Precision`] (`auto` guesses per line as
//!   InfluxDB 3 does, see [`Precision::guess`]), converted to nanoseconds with overflow checked
//!   and required to lie in [`TIME_NS_MIN`]..=[`TIME_NS_MAX`] (InfluxDB's documented range).
//! - Input must be UTF-8; an invalid byte fails its line.
//!
//! ## Where annals is stricter than InfluxDB
//! Each of these fails the line with an [`ErrorKind`] rather than guessing:
//! - a repeated field key ([`ErrorKind::DuplicateField`]; InfluxDB keeps the last value, which
//!   hides client bugs), a repeated tag key, or a name used as both tag and field;
//! - a tag or field named `time` (our timestamp column);
//! - anything over the [`Limits`].
//!
//! Line breaks inside values are not supported (InfluxDB's docs say so too): `\n` always ends a
//! line, so a string value with a raw line break is reported as unterminated.
//!
//! ## Limits (per line; configurable in [`Limits`])
//! | what | default |
//! | --- | --- |
//! | measurement, tag key, field key | [`NAME_LEN_MAX`] = 256 bytes |
//! | tag value | [`TAG_VALUE_LEN_MAX`] = 1024 bytes |
//! | string field value | [`STRING_LEN_MAX`] = 64 KiB |
//! | tags | [`TAGS_MAX`] = 256 |
//! | fields | [`FIELDS_MAX`] = 1024 |
//! | line | [`LINE_LEN_MAX`] = 1 MiB |
//!
//! The caller bounds the size of a whole request; the parser's memory beyond the input is one
//! [`Line`] and a few reused vectors.
//!
//! ## Errors
//! A [`LineError`] names the 1-based line, the 1-based byte column when one position is to
//! blame, and what is wrong, e.g. `line 3, column 31: field "speed": invalid integer "12x3i"
//! (...)`. User text quoted in errors is cut to [`ERROR_SNIPPET_LEN_MAX`] bytes.
//!
//! ## Invariants of every returned [`Line`]
//! Non-empty measurement; at least one field; non-empty keys and tag values; all tag keys and
//! field keys distinct and none named `time`; finite floats; lengths and counts within the
//! limits; `time_ns` within [`TIME_NS_MIN`]..=[`TIME_NS_MAX`] or equal to the default.

mod error;
mod keys;
mod line;
mod number;
mod options;
mod parser;
mod scan;

pub use error::{ErrorKind, LineError, ERROR_SNIPPET_LEN_MAX};
pub use line::{FieldValue, Line};
pub use options::{
    Limits, ParseOptions, Precision, FIELDS_MAX, LINE_LEN_MAX, NAME_LEN_MAX, STRING_LEN_MAX,
    TAGS_MAX, TAG_VALUE_LEN_MAX, TIME_NS_MAX, TIME_NS_MIN,
};
pub use parser::Parser;

/// Parses a whole request, stopping at the first bad line (a request is accepted or refused
/// whole). Use [`Parser`] to collect every error or to reuse one [`Line`].
pub fn parse_all<'a>(input: &'a [u8], opts: &ParseOptions) -> Result<Vec<Line<'a>>, LineError> {
    let mut parser = Parser::new(input, opts);
    let mut lines = Vec::new();
    loop {
        let mut line = Line::new();
        if !parser.next_into(&mut line)? {
            return Ok(lines);
        }
        lines.push(line);
    }
}

//! The parser: splits the input into lines and parses each into a reused [`Line`].

use std::borrow::Cow;

use crate::error::{snippet, ErrorKind, LineError};
use crate::keys::KeyCheck;
use crate::line::{FieldValue, Line};
use crate::number::{parse_i64, parse_value_into, DigitsError, ValueError};
use crate::options::ParseOptions;
use crate::scan::{
    find_newline, scan, scan_string, unescape, KEY, KEY_ESCAPES, MEASUREMENT, MEASUREMENT_ESCAPES,
    STRING_ESCAPES, VALUE,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// A problem at a byte index of the line (0-based; shown 1-based).
type Failure = (usize, ErrorKind);

/// Parses line protocol from a byte slice, one line at a time.
///
/// A line that fails to parse is consumed: the next call goes on with the following line, so a
/// caller can collect every error of a request (partial acceptance) or stop at the first.
///
/// ```
/// use annals_lp::{FieldValue, Line, ParseOptions, Parser};
///
/// let input = b"# a comment\ncpu,host=a usage=0.5,count=3i 1700000000000000000\n";
/// let mut parser = Parser::new(input, &ParseOptions::default());
/// let mut line = Line::new();
/// assert!(parser.next_into(&mut line)?);
/// assert_eq!(line.line_number, 2);
/// assert_eq!(line.measurement, "cpu");
/// assert_eq!(line.tag("host"), Some("a"));
/// assert_eq!(line.field("count"), Some(&FieldValue::I64(3)));
/// assert_eq!(line.time_ns, 1_700_000_000_000_000_000);
/// assert!(!parser.next_into(&mut line)?);
/// # Ok::<(), annals_lp::LineError>(())
/// ```
#[derive(Debug)]
pub struct Parser<'a> {
    input: &'a [u8],
    /// Start of the next line to read.
    pos: usize,
    /// Number of the last line read (0 before the first).
    line_number: usize,
    opts: ParseOptions,
    keys: KeyCheck,
}

impl<'a> Parser<'a> {
    /// A parser over `input` (a whole request body). Lines end at `\n`; a `\r` before it is
    /// dropped.
    pub fn new(input: &'a [u8], opts: &ParseOptions) -> Self {
        Self {
            input,
            pos: 0,
            line_number: 0,
            opts: *opts,
            keys: KeyCheck::default(),
        }
    }

    /// Parses the next line that is not blank or a comment into `line`, reusing its vectors:
    /// in steady state nothing is allocated unless a name or string contains escapes.
    /// Returns `Ok(false)` at the end of the input.
    ///
    /// On error, `line` holds unspecified partial content, and the bad line has been consumed:
    /// call again to go on with the next one.
    pub fn next_into(&mut self, line: &mut Line<'a>) -> Result<bool, LineError> {
        while self.pos < self.input.len() {
            let start = self.pos;
            let end = find_newline(self.input, start).unwrap_or(self.input.len());
            self.pos = end + 1;
            self.line_number += 1;
            let input: &'a [u8] = self.input;
            match self.parse_raw(&input[start..end], line) {
                Ok(true) => return Ok(true),
                Ok(false) => continue,
                Err((at, kind)) => {
                    return Err(LineError::new(self.line_number, at.map(|a| a + 1), kind))
                }
            }
        }
        Ok(false)
    }

    /// Number of the last line read, parsed or not (blank and comment lines count).
    pub fn line_number(&self) -> usize {
        self.line_number
    }

    /// The options this parser was made with.
    pub fn options(&self) -> &ParseOptions {
        &self.opts
    }

    /// One raw line without its `\n`: `Ok(false)` if blank or a comment.
    fn parse_raw(
        &mut self,
        raw: &'a [u8],
        line: &mut Line<'a>,
    ) -> Result<bool, (Option<usize>, ErrorKind)> {
        let max = self.opts.limits.line_len_max;
        if raw.len() > max {
            return Err((
                None,
                ErrorKind::LineTooLong {
                    len: raw.len(),
                    max,
                },
            ));
        }
        let mut lead = 0;
        while lead < raw.len() && matches!(raw[lead], b' ' | b'\t') {
            lead += 1;
        }
        // Trailing whitespace (and the \r of \r\n) never carries meaning: a valid line ends
        // with a field value or a timestamp, and neither can end in unescaped whitespace.
        let mut end = raw.len();
        while end > lead && matches!(raw[end - 1], b' ' | b'\t' | b'\r') {
            end -= 1;
        }
        if lead == end {
            return Ok(false);
        }
        let s = std::str::from_utf8(raw)
            .map_err(|e| (Some(e.valid_up_to()), ErrorKind::InvalidUtf8))?;
        if raw[lead] == b'#' {
            return Ok(false);
        }
        line.line_number = self.line_number;
        self.parse_line(&s[..end], lead, line)
            .map(|()| true)
            .map_err(|(at, kind)| (Some(at), kind))
    }

    /// Parses `s` (trimmed at the end) from byte `i` (past leading whitespace).
    ///
    /// Tags and fields are written into the line's existing elements where there are some and
    /// pushed only past them; the vectors are cut to size at the end. Besides saving the drop
    /// of every element per line, this avoids building each pair on the stack and copying it
    /// into the vector, which costs a store-forwarding stall per pair (measured: about 10% of
    /// the time of a TSBS line).
    fn parse_line(&mut self, s: &'a str, mut i: usize, line: &mut Line<'a>) -> Result<(), Failure> {
        let b = s.as_bytes();
        let len = b.len();
        let limits = self.opts.limits;
        self.keys.clear();

        // Measurement.
        let (end, escaped) = scan(b, i, MEASUREMENT);
        if end == i {
            return Err((i, ErrorKind::EmptyMeasurement));
        }
        if escaped {
            line.measurement = unescape(&s[i..end], MEASUREMENT_ESCAPES);
        } else {
            line.measurement = Cow::Borrowed(&s[i..end]);
        }
        if line.measurement.len() > limits.name_len_max {
            let max = limits.name_len_max;
            return Err((i, name_too_long("measurement", &line.measurement, max)));
        }
        i = end;

        // Tag set: `,key=value` until a space or the end.
        let mut n_tags = 0;
        while i < len && b[i] == b',' {
            let key_start = i + 1;
            let (key_end, escaped) = scan(b, key_start, KEY);
            if key_end == key_start {
                return Err((key_start, ErrorKind::EmptyTagKey));
            }
            if n_tags == limits.tags_max {
                return Err((
                    key_start,
                    ErrorKind::TooManyTags {
                        max: limits.tags_max,
                    },
                ));
            }
            let (key, value) = slot(&mut line.tags, n_tags, || {
                (Cow::Borrowed(""), Cow::Borrowed(""))
            });
            if escaped {
                *key = unescape(&s[key_start..key_end], KEY_ESCAPES);
            } else {
                *key = Cow::Borrowed(&s[key_start..key_end]);
            }
            if key_end == len || b[key_end] != b'=' {
                return Err((key_end, ErrorKind::MissingTagEquals { key: snippet(key) }));
            }
            check_name(key, "tag key", key_start, limits.name_len_max)?;
            if *key == "time" {
                return Err((key_start, ErrorKind::ReservedTime { what: "tag" }));
            }
            let value_start = key_end + 1;
            let (value_end, escaped) = scan(b, value_start, KEY);
            if value_end == value_start {
                return Err((value_start, ErrorKind::EmptyTagValue { key: snippet(key) }));
            }
            if value_end < len && b[value_end] == b'=' {
                return Err((value_end, ErrorKind::UnescapedEquals { key: snippet(key) }));
            }
            if escaped {
                *value = unescape(&s[value_start..value_end], KEY_ESCAPES);
            } else {
                *value = Cow::Borrowed(&s[value_start..value_end]);
            }
            if value.len() > limits.tag_value_len_max {
                return Err((
                    value_start,
                    ErrorKind::TagValueTooLong {
                        key: snippet(key),
                        len: value.len(),
                        max: limits.tag_value_len_max,
                    },
                ));
            }
            let (done, this) = line.tags.split_at(n_tags);
            self.keys
                .tag(&this[0].0, key_start, done)
                .map_err(|e| (key_start, e))?;
            n_tags += 1;
            i = value_end;
        }
        line.tags.truncate(n_tags);

        // Field set, after one or more spaces.
        while i < len && b[i] == b' ' {
            i += 1;
        }
        if i == len {
            return Err((i, ErrorKind::MissingFields));
        }
        let mut n_fields = 0;
        loop {
            let key_start = i;
            let (key_end, escaped) = scan(b, key_start, KEY);
            if key_end == key_start {
                return Err((key_start, ErrorKind::EmptyFieldKey));
            }
            if n_fields == limits.fields_max {
                return Err((
                    key_start,
                    ErrorKind::TooManyFields {
                        max: limits.fields_max,
                    },
                ));
            }
            let (key, value) = slot(&mut line.fields, n_fields, || {
                (Cow::Borrowed(""), FieldValue::Bool(false))
            });
            if escaped {
                *key = unescape(&s[key_start..key_end], KEY_ESCAPES);
            } else {
                *key = Cow::Borrowed(&s[key_start..key_end]);
            }
            if key_end == len || b[key_end] != b'=' {
                return Err((key_end, ErrorKind::MissingFieldEquals { key: snippet(key) }));
            }
            check_name(key, "field key", key_start, limits.name_len_max)?;
            if *key == "time" {
                return Err((key_start, ErrorKind::ReservedTime { what: "field" }));
            }
            i = key_end + 1;
            if i < len && b[i] == b'"' {
                let Some((close, escaped)) = scan_string(b, i + 1) else {
                    return Err((i, ErrorKind::UnterminatedString { key: snippet(key) }));
                };
                let raw = &s[i + 1..close];
                if escaped {
                    *value = FieldValue::Str(unescape(raw, STRING_ESCAPES));
                } else {
                    *value = FieldValue::Str(Cow::Borrowed(raw));
                }
                if let FieldValue::Str(text) = value {
                    if text.len() > limits.string_len_max {
                        return Err((
                            i,
                            ErrorKind::StringTooLong {
                                key: snippet(key),
                                len: text.len(),
                                max: limits.string_len_max,
                            },
                        ));
                    }
                }
                i = close + 1;
                if i < len && b[i] != b',' && b[i] != b' ' {
                    let found = s[i..].chars().next().unwrap_or('\u{fffd}');
                    return Err((
                        i,
                        ErrorKind::ExpectedSeparator {
                            key: snippet(key),
                            found,
                        },
                    ));
                }
            } else {
                let (value_end, _) = scan(b, i, VALUE);
                if value_end == i {
                    return Err((i, ErrorKind::MissingFieldValue { key: snippet(key) }));
                }
                let tok = &s[i..value_end];
                parse_value_into(tok, value).map_err(|e| (i, value_error(e, key, tok)))?;
                i = value_end;
            }
            let (done, this) = line.fields.split_at(n_fields);
            self.keys
                .field(&this[0].0, key_start, &line.tags, done)
                .map_err(|e| (key_start, e))?;
            n_fields += 1;
            if i < len && b[i] == b',' {
                i += 1;
                continue;
            }
            break;
        }
        line.fields.truncate(n_fields);
        self.keys.finish(&line.tags, &line.fields)?;

        // Optional timestamp, after one or more spaces.
        while i < len && b[i] == b' ' {
            i += 1;
        }
        if i == len {
            line.time_ns = self.opts.default_time_ns;
            return Ok(());
        }
        let ts_start = i;
        while i < len && !matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        let tok = &s[ts_start..i];
        line.time_ns = self.timestamp(tok).map_err(|e| (ts_start, e))?;
        while i < len && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i < len {
            return Err((
                i,
                ErrorKind::TrailingGarbage {
                    text: snippet(&s[i..]),
                },
            ));
        }
        Ok(())
    }

    /// A timestamp token in the request's precision, as nanoseconds.
    #[inline]
    fn timestamp(&self, tok: &str) -> Result<i64, ErrorKind> {
        let precision = self.opts.precision;
        let ts = parse_i64(tok.as_bytes()).map_err(|e| match e {
            DigitsError::Invalid => ErrorKind::InvalidTimestamp {
                token: snippet(tok),
            },
            DigitsError::Range => ErrorKind::TimestampOutOfRange {
                token: snippet(tok),
                precision,
            },
        })?;
        precision
            .to_nanos(ts)
            .ok_or_else(|| ErrorKind::TimestampOutOfRange {
                token: snippet(tok),
                precision: precision.resolve(ts),
            })
    }
}

impl<'a> Iterator for Parser<'a> {
    type Item = Result<Line<'a>, LineError>;

    /// Allocates a new [`Line`] per item; use [`Parser::next_into`] on hot paths.
    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Line::new();
        match self.next_into(&mut line) {
            Ok(true) => Some(Ok(line)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// The element at `n` (at most one past the end), pushed from `fresh` if not there yet.
#[inline(always)]
fn slot<T>(v: &mut Vec<T>, n: usize, fresh: impl FnOnce() -> T) -> &mut T {
    debug_assert!(n <= v.len());
    if n == v.len() {
        v.push(fresh());
    }
    &mut v[n]
}

#[inline]
fn check_name(name: &str, what: &'static str, start: usize, max: usize) -> Result<(), Failure> {
    if name.len() > max {
        return Err((start, name_too_long(what, name, max)));
    }
    Ok(())
}

#[cold]
fn name_too_long(what: &'static str, name: &str, max: usize) -> ErrorKind {
    ErrorKind::NameTooLong {
        what,
        name: snippet(name),
        len: name.len(),
        max,
    }
}

#[cold]
fn value_error(e: ValueError, key: &str, tok: &str) -> ErrorKind {
    let key = snippet(key);
    let token = snippet(tok);
    match e {
        ValueError::Float => ErrorKind::InvalidFloat { key, token },
        ValueError::FloatRange => ErrorKind::FloatOutOfRange { key, token },
        ValueError::Integer => ErrorKind::InvalidInteger { key, token },
        ValueError::Unsigned => ErrorKind::InvalidUnsigned { key, token },
        ValueError::IntegerRange => ErrorKind::IntegerOverflow {
            key,
            token,
            ty: "i64",
        },
        ValueError::UnsignedRange => ErrorKind::IntegerOverflow {
            key,
            token,
            ty: "u64",
        },
        ValueError::Boolean => ErrorKind::BadBoolean { key, token },
        ValueError::Other => ErrorKind::InvalidFieldValue { key, token },
    }
}

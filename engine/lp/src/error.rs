//! The error a rejected line produces: where it is ([`LineError`]) and what is wrong ([`ErrorKind`]).

use std::fmt;

use crate::options::Precision;

/// Longest piece of user input (a key, a token) quoted in an error message, in bytes.
///
/// Errors are logged and sent back to clients; a 1 MiB string value must not become a 1 MiB
/// error message. Longer pieces are cut at a character boundary and end in `...`.
pub const ERROR_SNIPPET_LEN_MAX: usize = 64;

/// A line that could not be parsed: its 1-based line number, the 1-based byte column where the
/// problem was found (when one position is to blame), and what is wrong.
///
/// Displays as `line 3, column 31: field "speed": invalid integer "12x3i"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {kind}", ColumnSuffix(*.column))]
pub struct LineError {
    line: usize,
    column: Option<usize>,
    kind: ErrorKind,
}

impl LineError {
    pub(crate) fn new(line: usize, column: Option<usize>, kind: ErrorKind) -> Self {
        Self { line, column, kind }
    }

    /// 1-based line number in the input (blank and comment lines count).
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based byte column within the line, counting from the line's first byte.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// What is wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Takes the kind out, dropping the position.
    pub fn into_kind(self) -> ErrorKind {
        self.kind
    }
}

struct ColumnSuffix(Option<usize>);

impl fmt::Display for ColumnSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(c) => write!(f, ", column {c}"),
            None => Ok(()),
        }
    }
}

/// What is wrong with a line. Keys and tokens quoted here are cut to
/// [`ERROR_SNIPPET_LEN_MAX`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The line is not valid UTF-8; the column is the first bad byte.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// The line is longer than `Limits::line_len_max`.
    #[error("line is {len} bytes long, over the limit of {max} bytes")]
    LineTooLong {
        /// Length of the line in bytes, without its line break.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The line starts with `,` or a space where the measurement name should be.
    #[error("empty measurement name")]
    EmptyMeasurement,
    /// The line ends after the measurement and tags.
    #[error("no fields: a line needs at least one field after the measurement and tags, as in `cpu,host=a usage=1`")]
    MissingFields,
    /// `,=v` or a trailing `,` in the tag set.
    #[error("empty tag key")]
    EmptyTagKey,
    /// A tag key not followed by `=`.
    #[error("tag {key:?}: missing '=' and value")]
    MissingTagEquals {
        /// The tag key.
        key: String,
    },
    /// `k=` with nothing after it: InfluxDB forbids empty tag values (omit the tag instead).
    #[error("tag {key:?}: empty value (omit the tag instead)")]
    EmptyTagValue {
        /// The tag key.
        key: String,
    },
    /// A second `=` in a tag value.
    #[error("tag {key:?}: value contains an unescaped '=' (write it as \\=)")]
    UnescapedEquals {
        /// The tag key.
        key: String,
    },
    /// `,=1` or a trailing `,` in the field set.
    #[error("empty field key")]
    EmptyFieldKey,
    /// A field key not followed by `=`.
    #[error("field {key:?}: missing '=' and value")]
    MissingFieldEquals {
        /// The field key.
        key: String,
    },
    /// `k=` with nothing after it.
    #[error("field {key:?}: missing value")]
    MissingFieldValue {
        /// The field key.
        key: String,
    },
    /// A string value with no closing `"` before the end of the line.
    #[error("field {key:?}: unterminated string (no closing '\"' before the end of the line; line breaks are not allowed in values)")]
    UnterminatedString {
        /// The field key.
        key: String,
    },
    /// Something other than `,`, a space or the end of the line after a string value.
    #[error("field {key:?}: expected ',' or ' ' after the closing '\"', found {found:?}")]
    ExpectedSeparator {
        /// The field key.
        key: String,
        /// The character found.
        found: char,
    },
    /// Not a decimal float (`1`, `-1.5`, `2e10`); `inf` and `NaN` are refused as InfluxDB does.
    #[error("field {key:?}: invalid float {token:?} (expected a finite decimal number such as 1, -1.5 or 2e10)")]
    InvalidFloat {
        /// The field key.
        key: String,
        /// The value as written.
        token: String,
    },
    /// A float too large for f64 (it would become infinite).
    #[error("field {key:?}: float {token:?} is out of range for f64")]
    FloatOutOfRange {
        /// The field key.
        key: String,
        /// The value as written.
        token: String,
    },
    /// Not `-?[0-9]+i`.
    #[error("field {key:?}: invalid integer {token:?} (expected digits with an optional leading '-' and a trailing 'i', as in -12i)")]
    InvalidInteger {
        /// The field key.
        key: String,
        /// The value as written.
        token: String,
    },
    /// Not `[0-9]+u`.
    #[error("field {key:?}: invalid unsigned integer {token:?} (expected digits and a trailing 'u', as in 12u)")]
    InvalidUnsigned {
        /// The field key.
        key: String,
        /// The value as written.
        token: String,
    },
    /// An `i` value outside i64 or a `u` value outside u64.
    #[error("field {key:?}: integer {token:?} is out of range for {ty}")]
    IntegerOverflow {
        /// The field key.
        key: String,
        /// The value as written.
        token: String,
        /// `"i64"` or `"u64"`.
        ty: &'static str,
    },
    /// Starts like a boolean but is not one of the ten accepted spellings.
    #[error("field {key:?}: invalid boolean {token:?} (expected t, T, true, True, TRUE, f, F, false, False or FALSE)")]
    BadBoolean {
        /// The field key.
        key: String,
        /// The value as written.
        token: String,
    },
    /// Not a number, boolean or double-quoted string.
    #[error("field {key:?}: invalid value {token:?} (expected a number, an integer such as 1i or 1u, a boolean, or a double-quoted string)")]
    InvalidFieldValue {
        /// The field key.
        key: String,
        /// The value as written.
        token: String,
    },
    /// The same field key twice in one line. InfluxDB keeps the last one; annals refuses the
    /// line so a client bug does not silently lose a value.
    #[error("field {key:?} appears more than once in the line")]
    DuplicateField {
        /// The field key.
        key: String,
    },
    /// The same tag key twice in one line.
    #[error("tag {key:?} appears more than once in the line")]
    DuplicateTag {
        /// The tag key.
        key: String,
    },
    /// A field with the same name as a tag: both would become one column.
    #[error("{key:?} is used both as a tag and as a field")]
    TagFieldConflict {
        /// The shared name.
        key: String,
    },
    /// A tag or field named `time`: that is the timestamp column.
    #[error("a {what} cannot be named \"time\": that is the timestamp column")]
    ReservedTime {
        /// `"tag"` or `"field"`.
        what: &'static str,
    },
    /// The timestamp is not `-?[0-9]+`.
    #[error("invalid timestamp {token:?} (expected an integer such as 1465839830100400200)")]
    InvalidTimestamp {
        /// The timestamp as written.
        token: String,
    },
    /// The timestamp does not fit in i64 nanoseconds once the precision is applied, or falls
    /// outside [`crate::TIME_NS_MIN`]..=[`crate::TIME_NS_MAX`].
    #[error("timestamp {token:?} at precision {precision} is out of range (nanoseconds must lie in -9223372036854775806..=9223372036854775806)")]
    TimestampOutOfRange {
        /// The timestamp as written.
        token: String,
        /// The precision it was read at (the guessed one for `auto`).
        precision: Precision,
    },
    /// Text after the timestamp.
    #[error("unexpected text after the timestamp: {text:?}")]
    TrailingGarbage {
        /// The text.
        text: String,
    },
    /// A measurement name, tag key or field key longer than `Limits::name_len_max`.
    #[error("{what} {name:?} is {len} bytes long, over the limit of {max} bytes")]
    NameTooLong {
        /// `"measurement"`, `"tag key"` or `"field key"`.
        what: &'static str,
        /// The start of the name.
        name: String,
        /// Length in bytes after unescaping.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A tag value longer than `Limits::tag_value_len_max`.
    #[error("tag {key:?}: value is {len} bytes long, over the limit of {max} bytes")]
    TagValueTooLong {
        /// The tag key.
        key: String,
        /// Length in bytes after unescaping.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A string field value longer than `Limits::string_len_max`.
    #[error("field {key:?}: string is {len} bytes long, over the limit of {max} bytes")]
    StringTooLong {
        /// The field key.
        key: String,
        /// Length in bytes after unescaping.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// More tags than `Limits::tags_max`.
    #[error("more than {max} tags in the line")]
    TooManyTags {
        /// The limit in force.
        max: usize,
    },
    /// More fields than `Limits::fields_max`.
    #[error("more than {max} fields in the line")]
    TooManyFields {
        /// The limit in force.
        max: usize,
    },
}

/// Copies at most [`ERROR_SNIPPET_LEN_MAX`] bytes of `s` (cut at a character boundary) for an
/// error message.
#[cold]
pub(crate) fn snippet(s: &str) -> String {
    if s.len() <= ERROR_SNIPPET_LEN_MAX {
        return s.to_owned();
    }
    let mut end = ERROR_SNIPPET_LEN_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 3);
    out.push_str(&s[..end]);
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_line_column_and_message() {
        let e = LineError::new(
            3,
            Some(31),
            ErrorKind::InvalidInteger {
                key: "speed".into(),
                token: "12x3i".into(),
            },
        );
        let s = e.to_string();
        assert!(
            s.starts_with("line 3, column 31: field \"speed\": invalid integer \"12x3i\""),
            "{s}"
        );
        let e = LineError::new(7, None, ErrorKind::MissingFields);
        assert!(e.to_string().starts_with("line 7: no fields"), "{e}");
    }

    #[test]
    fn snippet_cuts_long_input_at_a_char_boundary() {
        assert_eq!(snippet("short"), "short");
        let long = "é".repeat(100); // 200 bytes, 2 per char
        let s = snippet(&long);
        assert!(s.ends_with("..."));
        assert_eq!(s.len(), ERROR_SNIPPET_LEN_MAX + 3);
        let odd = format!("a{}", "é".repeat(100)); // boundary at 64 is mid-char
        let s = snippet(&odd);
        assert_eq!(s.len(), ERROR_SNIPPET_LEN_MAX - 1 + 3);
    }
}

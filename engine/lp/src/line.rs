//! A parsed line: measurement, tags, typed fields and a timestamp in nanoseconds.

use std::borrow::Cow;

/// A field value, typed as line protocol writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// `1`, `-1.5`, `2e10`: always finite.
    F64(f64),
    /// `1i`.
    I64(i64),
    /// `1u`.
    U64(u64),
    /// `t`, `true`, `F`, ...
    Bool(bool),
    /// `"..."`, unescaped; borrowed from the input unless it contained `\"` or `\\`.
    Str(Cow<'a, str>),
}

impl FieldValue<'_> {
    /// Copies any borrowed string so the value outlives the input.
    pub fn into_owned(self) -> FieldValue<'static> {
        match self {
            FieldValue::F64(v) => FieldValue::F64(v),
            FieldValue::I64(v) => FieldValue::I64(v),
            FieldValue::U64(v) => FieldValue::U64(v),
            FieldValue::Bool(v) => FieldValue::Bool(v),
            FieldValue::Str(s) => FieldValue::Str(Cow::Owned(s.into_owned())),
        }
    }

    /// The type's name as InfluxDB documents it: `float`, `integer`, `uinteger`, `boolean`,
    /// `string`.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::F64(_) => "float",
            FieldValue::I64(_) => "integer",
            FieldValue::U64(_) => "uinteger",
            FieldValue::Bool(_) => "boolean",
            FieldValue::Str(_) => "string",
        }
    }
}

/// One parsed line. Names and values borrow from the input unless they contained escapes.
///
/// Invariants of a line returned by the parser: the measurement is non-empty; there is at
/// least one field; tag keys, tag values and field keys are non-empty; no two names among the
/// tag keys and field keys are equal; no tag or field is named `time`; floats are finite;
/// `time_ns` lies in [`crate::TIME_NS_MIN`]..=[`crate::TIME_NS_MAX`] unless it is the
/// caller's default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Line<'a> {
    /// 1-based line number in the input (blank and comment lines count).
    pub line_number: usize,
    /// The measurement (table) name, unescaped.
    pub measurement: Cow<'a, str>,
    /// Tag keys and values, unescaped, in input order.
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Field keys (unescaped) and values, in input order.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// The timestamp in nanoseconds with the precision applied, or the default time.
    pub time_ns: i64,
}

impl Line<'_> {
    /// An empty line to pass to [`crate::Parser::next_into`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies every borrowed name and value so the line outlives the input.
    pub fn into_owned(self) -> Line<'static> {
        Line {
            line_number: self.line_number,
            measurement: Cow::Owned(self.measurement.into_owned()),
            tags: self
                .tags
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
            fields: self
                .fields
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                .collect(),
            time_ns: self.time_ns,
        }
    }

    /// The value of the tag `key`, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The value of the field `key`, if present.
    pub fn field(&self, key: &str) -> Option<&FieldValue<'_>> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

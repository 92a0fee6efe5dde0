//! Unquoted field values and timestamps.
//!
//! Grammar (what InfluxDB accepts, and nothing more):
//! - float: `-?` then digits with at most one `.` (at least one digit), then optionally
//!   `e|E`, `+|-`?, digits. `inf`, `NaN`, a leading `+`, hex and `_` are refused.
//! - integer: `-?[0-9]+i`; unsigned: `[0-9]+u`; timestamp: `-?[0-9]+`.
//! - boolean: `t T true True TRUE f F false False FALSE`.

use crate::line::FieldValue;

/// Why an unquoted value was refused; the parser adds the key and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueError {
    Float,
    FloatRange,
    Integer,
    Unsigned,
    IntegerRange,
    UnsignedRange,
    Boolean,
    Other,
}

/// Parses an unquoted field value (non-empty) into `out`, which is left as it was on error.
///
/// Writing into the caller's slot, rather than returning the value, lets the parser fill a
/// pushed `Vec` element in place (see the parser's tag and field loops).
#[inline]
pub(crate) fn parse_value_into(tok: &str, out: &mut FieldValue<'_>) -> Result<(), ValueError> {
    let b = tok.as_bytes();
    let Some((&last, body)) = b.split_last() else {
        return Err(ValueError::Other);
    };
    match b[0] {
        b'0'..=b'9' | b'-' | b'.' | b'+' => match last {
            b'i' => match parse_i64(body) {
                Ok(v) => *out = FieldValue::I64(v),
                Err(DigitsError::Invalid) => return Err(ValueError::Integer),
                Err(DigitsError::Range) => return Err(ValueError::IntegerRange),
            },
            b'u' => match parse_u64(body) {
                Ok(v) => *out = FieldValue::U64(v),
                Err(DigitsError::Invalid) => return Err(ValueError::Unsigned),
                Err(DigitsError::Range) => return Err(ValueError::UnsignedRange),
            },
            _ => *out = FieldValue::F64(parse_f64(tok)?),
        },
        b't' | b'T' | b'f' | b'F' => match tok {
            "t" | "T" | "true" | "True" | "TRUE" => *out = FieldValue::Bool(true),
            "f" | "F" | "false" | "False" | "FALSE" => *out = FieldValue::Bool(false),
            _ => return Err(ValueError::Boolean),
        },
        _ if is_non_finite_word(tok) => return Err(ValueError::Float),
        _ => return Err(ValueError::Other),
    }
    Ok(())
}

/// [`parse_value_into`] returning the value.
#[cfg(test)]
pub(crate) fn parse_value(tok: &str) -> Result<FieldValue<'static>, ValueError> {
    let mut v = FieldValue::Bool(false);
    parse_value_into(tok, &mut v).map(|()| v)
}

fn is_non_finite_word(tok: &str) -> bool {
    ["inf", "infinity", "nan"]
        .iter()
        .any(|w| tok.eq_ignore_ascii_case(w))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DigitsError {
    Invalid,
    Range,
}

/// `[0-9]+` as u64. A non-digit anywhere wins over overflow, so `99999999999999999999x` is
/// reported as invalid rather than out of range.
#[inline]
pub(crate) fn parse_u64(b: &[u8]) -> Result<u64, DigitsError> {
    if b.is_empty() {
        return Err(DigitsError::Invalid);
    }
    if b.len() <= 19 {
        // At most 19 digits: below 10^19 < u64::MAX, no overflow possible.
        let mut v: u64 = 0;
        for &c in b {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return Err(DigitsError::Invalid);
            }
            v = v * 10 + u64::from(d);
        }
        return Ok(v);
    }
    let mut v: u64 = 0;
    let mut overflow = false;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(DigitsError::Invalid);
        }
        match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d))) {
            Some(n) => v = n,
            None => overflow = true,
        }
    }
    if overflow {
        Err(DigitsError::Range)
    } else {
        Ok(v)
    }
}

/// `-?[0-9]+` as i64, including `i64::MIN`.
#[inline]
pub(crate) fn parse_i64(b: &[u8]) -> Result<i64, DigitsError> {
    match b.split_first() {
        Some((b'-', digits)) => {
            let m = parse_u64(digits)?;
            if m > i64::MIN.unsigned_abs() {
                return Err(DigitsError::Range);
            }
            Ok(0i64.wrapping_sub_unsigned(m))
        }
        _ => i64::try_from(parse_u64(b)?).map_err(|_| DigitsError::Range),
    }
}

/// Powers of ten exactly representable in f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses a float after checking it against the grammar. Short decimals (up to 15 digits and
/// a decimal exponent within ±22) take Clinger's fast path: both operands are exact, so the
/// single multiplication or division rounds correctly. Everything else goes to `str::parse`,
/// which also rounds correctly.
#[inline]
pub(crate) fn parse_f64(tok: &str) -> Result<f64, ValueError> {
    let b = tok.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i = 1;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    while i < b.len() && b[i].is_ascii_digit() {
        if digits < 19 {
            mantissa = mantissa * 10 + u64::from(b[i] - b'0');
        }
        digits += 1;
        i += 1;
    }
    let mut fraction_digits = 0usize;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            if digits < 19 {
                mantissa = mantissa * 10 + u64::from(b[i] - b'0');
            }
            digits += 1;
            fraction_digits += 1;
            i += 1;
        }
    }
    if digits == 0 {
        return Err(ValueError::Float);
    }
    let mut exponent: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let exponent_negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            // Saturate: anything past this is 0 or infinite anyway, decided by str::parse.
            exponent = (exponent * 10 + i64::from(b[i] - b'0')).min(1_000_000);
            i += 1;
        }
        if i == start {
            return Err(ValueError::Float);
        }
        if exponent_negative {
            exponent = -exponent;
        }
    }
    if i != b.len() {
        return Err(ValueError::Float);
    }
    if digits <= 15 {
        let e = exponent - fraction_digits as i64;
        if (-22..=22).contains(&e) {
            let m = mantissa as f64;
            let v = if e < 0 {
                m / POW10[(-e) as usize]
            } else {
                m * POW10[e as usize]
            };
            // Checked against the grammar above: no rounding surprises, only finite values.
            return Ok(if negative { -v } else { v });
        }
    }
    match tok.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(ValueError::FloatRange),
        // The grammar above is a subset of what str::parse accepts.
        Err(_) => Err(ValueError::Float),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_in_every_accepted_form() {
        for (tok, want) in [
            ("1", 1.0),
            ("-1", -1.0),
            ("1.0", 1.0),
            ("1.", 1.0),
            (".5", 0.5),
            ("-.5", -0.5),
            ("-1.5e10", -1.5e10),
            ("1E5", 1e5),
            ("1e+5", 1e5),
            ("1e-5", 1e-5),
            ("1.e5", 1e5),
            ("0", 0.0),
            ("007", 7.0),
            ("52.31", 52.31),
            ("-1.234456e+78", -1.234456e78),
            (
                "123456789012345678901234567890",
                123456789012345678901234567890.0,
            ),
            ("0.1", 0.1),
            ("1e-400", 0.0),
            ("1.7976931348623157e308", f64::MAX),
            ("4.9e-324", 4.9e-324),
        ] {
            assert_eq!(parse_f64(tok), Ok(want), "{tok}");
            assert_eq!(parse_value(tok), Ok(FieldValue::F64(want)), "{tok}");
        }
        assert!(parse_f64("-0").unwrap().is_sign_negative());
    }

    #[test]
    fn fast_path_agrees_with_str_parse() {
        // Every short decimal the fast path takes must match the correctly rounded result.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mantissa = state % 1_000_000_000_000_000;
            let point = (state >> 50) % 16;
            let s = mantissa.to_string();
            let tok = if (point as usize) < s.len() {
                format!("{}.{}", &s[..point as usize], &s[point as usize..])
            } else {
                s
            };
            for t in [tok.clone(), format!("{tok}e{}", (state >> 40) % 20)] {
                assert_eq!(parse_f64(&t), Ok(t.parse::<f64>().unwrap()), "{t}");
            }
        }
    }

    #[test]
    fn refuses_what_influxdb_refuses() {
        for tok in [
            "-", ".", "-.", "+1", "1e", "1e+", "1.2.3", "1..", "1e5.0", "0x10", "1_000", "1,0",
            "12x3", "1f", "--1", "1-", "e5", "-e5", "-inf", "+inf",
        ] {
            assert_eq!(parse_f64(tok), Err(ValueError::Float), "{tok}");
        }
        for tok in ["inf", "INF", "Infinity", "NaN", "nan"] {
            assert_eq!(parse_value(tok), Err(ValueError::Float), "{tok}");
        }
        assert_eq!(parse_f64("1e400"), Err(ValueError::FloatRange));
        assert_eq!(parse_f64("-1e99999999999"), Err(ValueError::FloatRange));
        assert_eq!(parse_value("abc"), Err(ValueError::Other));
        assert_eq!(parse_value("\"x"), Err(ValueError::Other));
    }

    #[test]
    fn integers_signed_and_unsigned_with_range() {
        assert_eq!(parse_value("0i"), Ok(FieldValue::I64(0)));
        assert_eq!(parse_value("-12485903i"), Ok(FieldValue::I64(-12485903)));
        assert_eq!(
            parse_value("9223372036854775807i"),
            Ok(FieldValue::I64(i64::MAX))
        );
        assert_eq!(
            parse_value("-9223372036854775808i"),
            Ok(FieldValue::I64(i64::MIN))
        );
        assert_eq!(
            parse_value("9223372036854775808i"),
            Err(ValueError::IntegerRange)
        );
        assert_eq!(
            parse_value("-9223372036854775809i"),
            Err(ValueError::IntegerRange)
        );
        assert_eq!(
            parse_value("99999999999999999999999i"),
            Err(ValueError::IntegerRange)
        );
        assert_eq!(parse_value("0u"), Ok(FieldValue::U64(0)));
        assert_eq!(
            parse_value("18446744073709551615u"),
            Ok(FieldValue::U64(u64::MAX))
        );
        assert_eq!(
            parse_value("18446744073709551616u"),
            Err(ValueError::UnsignedRange)
        );
        for tok in [
            "i",
            "-i",
            "+1i",
            "1.5i",
            "1e5i",
            "12x3i",
            "1 i",
            "--1i",
            "99999999999999999999x9i",
        ] {
            let want = if tok == "i" {
                ValueError::Other
            } else {
                ValueError::Integer
            };
            assert_eq!(parse_value(tok), Err(want), "{tok}");
        }
        for tok in ["-1u", "+1u", "1.0u", "1xu"] {
            assert_eq!(parse_value(tok), Err(ValueError::Unsigned), "{tok}");
        }
    }

    #[test]
    fn booleans_exactly_the_ten_spellings() {
        for t in ["t", "T", "true", "True", "TRUE"] {
            assert_eq!(parse_value(t), Ok(FieldValue::Bool(true)), "{t}");
        }
        for f in ["f", "F", "false", "False", "FALSE"] {
            assert_eq!(parse_value(f), Ok(FieldValue::Bool(false)), "{f}");
        }
        for bad in ["tru", "tRue", "truee", "fals", "FaLse", "ff", "yes"] {
            let want = if bad == "yes" {
                ValueError::Other
            } else {
                ValueError::Boolean
            };
            assert_eq!(parse_value(bad), Err(want), "{bad}");
        }
    }

    #[test]
    fn i64_digits_for_timestamps() {
        assert_eq!(parse_i64(b"1451606400000000000"), Ok(1451606400000000000));
        assert_eq!(parse_i64(b"-1"), Ok(-1));
        assert_eq!(parse_i64(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), Err(DigitsError::Range));
        assert_eq!(parse_i64(b""), Err(DigitsError::Invalid));
        assert_eq!(parse_i64(b"-"), Err(DigitsError::Invalid));
        assert_eq!(parse_i64(b"+1"), Err(DigitsError::Invalid));
        assert_eq!(parse_i64(b"1.5"), Err(DigitsError::Invalid));
    }
}

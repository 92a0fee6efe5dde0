//! Parse options: timestamp precision and limits.

use std::fmt;

/// Default for [`Limits::name_len_max`]: measurement names, tag keys and field keys, in bytes.
pub const NAME_LEN_MAX: usize = 256;
/// Default for [`Limits::tag_value_len_max`], in bytes.
pub const TAG_VALUE_LEN_MAX: usize = 1024;
/// Default for [`Limits::string_len_max`]: string field values, in bytes.
pub const STRING_LEN_MAX: usize = 64 * 1024;
/// Default for [`Limits::tags_max`]: tags in one line.
pub const TAGS_MAX: usize = 256;
/// Default for [`Limits::fields_max`]: fields in one line.
pub const FIELDS_MAX: usize = 1024;
/// Default for [`Limits::line_len_max`]: bytes in one line, without its line break.
pub const LINE_LEN_MAX: usize = 1024 * 1024;

/// Earliest timestamp accepted, in nanoseconds: InfluxDB's documented minimum. `i64::MIN` and
/// `i64::MIN + 1` are left free for use as sentinels, as InfluxDB does.
pub const TIME_NS_MIN: i64 = i64::MIN + 2;
/// Latest timestamp accepted, in nanoseconds: InfluxDB's documented maximum.
pub const TIME_NS_MAX: i64 = i64::MAX - 1;

/// The unit of the timestamps in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Guess per line from the magnitude, as InfluxDB 3 does; see [`Precision::guess`].
    Auto,
    /// Nanoseconds (`ns`), the line protocol default.
    #[default]
    Nanoseconds,
    /// Microseconds (`us`).
    Microseconds,
    /// Milliseconds (`ms`).
    Milliseconds,
    /// Seconds (`s`).
    Seconds,
    /// Minutes (`m`, InfluxDB v1 only).
    Minutes,
    /// Hours (`h`, InfluxDB v1 only).
    Hours,
}

impl Precision {
    /// Reads a precision as the InfluxDB v1, v2 and v3 write APIs name it: `ns`/`n`/`nanosecond`,
    /// `us`/`u`/`µs`/`μs`/`microsecond`, `ms`/`millisecond`, `s`/`second`, `m`/`minute`,
    /// `h`/`hour`, `auto`. Case-sensitive, like InfluxDB (`M` is not minutes). A trailing `s` is
    /// accepted on the long names (`seconds`).
    pub fn parse(s: &str) -> Option<Precision> {
        let long = s.strip_suffix('s').unwrap_or(s);
        Some(match s {
            "ns" | "n" => Precision::Nanoseconds,
            "us" | "u" | "µs" | "μs" | "µ" | "μ" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            "auto" => Precision::Auto,
            _ => match long {
                "nanosecond" => Precision::Nanoseconds,
                "microsecond" => Precision::Microseconds,
                "millisecond" => Precision::Milliseconds,
                "second" => Precision::Seconds,
                "minute" => Precision::Minutes,
                "hour" => Precision::Hours,
                _ => return None,
            },
        })
    }

    /// Nanoseconds in one unit; `None` for [`Precision::Auto`], which has no single unit.
    pub fn nanos_per_unit(self) -> Option<i64> {
        Some(match self {
            Precision::Auto => return None,
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60 * 1_000_000_000,
            Precision::Hours => 3_600 * 1_000_000_000,
        })
    }

    /// The precision InfluxDB 3 guesses for a timestamp written with `precision=auto`
    /// (`influxdb3_types::write::Precision::guess_precision`): with `n = |ts| / 10^9`,
    /// `n < 5` is seconds, `n < 5_000` milliseconds, `n < 5_000_000` microseconds, otherwise
    /// nanoseconds. So any time after about 1970-01-01T01:23 in its own unit is read right,
    /// until the year 2128. Never returns `Auto`.
    pub fn guess(ts: i64) -> Precision {
        let n = ts.unsigned_abs() / 1_000_000_000;
        if n < 5 {
            Precision::Seconds
        } else if n < 5_000 {
            Precision::Milliseconds
        } else if n < 5_000_000 {
            Precision::Microseconds
        } else {
            Precision::Nanoseconds
        }
    }

    /// The precision a timestamp is read at: itself, or the guess for `Auto`.
    pub fn resolve(self, ts: i64) -> Precision {
        match self {
            Precision::Auto => Precision::guess(ts),
            p => p,
        }
    }

    /// Converts a timestamp in this precision to nanoseconds. `None` when the result leaves
    /// [`TIME_NS_MIN`]..=[`TIME_NS_MAX`].
    pub fn to_nanos(self, ts: i64) -> Option<i64> {
        let unit = self.resolve(ts).nanos_per_unit()?;
        ts.checked_mul(unit)
            .filter(|ns| (TIME_NS_MIN..=TIME_NS_MAX).contains(ns))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::Nanoseconds => "ns",
            Precision::Microseconds => "us",
            Precision::Milliseconds => "ms",
            Precision::Seconds => "s",
            Precision::Minutes => "m",
            Precision::Hours => "h",
        })
    }
}

/// Bounds on what one line may contain. Lengths are in bytes; name and value lengths are
/// measured after unescaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Measurement names, tag keys and field keys. Default [`NAME_LEN_MAX`].
    pub name_len_max: usize,
    /// Tag values. Default [`TAG_VALUE_LEN_MAX`].
    pub tag_value_len_max: usize,
    /// String field values. Default [`STRING_LEN_MAX`].
    pub string_len_max: usize,
    /// Tags per line. Default [`TAGS_MAX`].
    pub tags_max: usize,
    /// Fields per line. Default [`FIELDS_MAX`].
    pub fields_max: usize,
    /// A whole line, without its line break. Default [`LINE_LEN_MAX`].
    pub line_len_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            name_len_max: NAME_LEN_MAX,
            tag_value_len_max: TAG_VALUE_LEN_MAX,
            string_len_max: STRING_LEN_MAX,
            tags_max: TAGS_MAX,
            fields_max: FIELDS_MAX,
            line_len_max: LINE_LEN_MAX,
        }
    }
}

/// How to read a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Unit of the timestamps written in the lines. Default nanoseconds.
    pub precision: Precision,
    /// Time given to lines without a timestamp, in nanoseconds (usually the request's arrival
    /// time, read by the caller from its clock; this crate never reads one).
    pub default_time_ns: i64,
    /// Bounds on each line.
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_v1_v2_v3_spellings() {
        use Precision::*;
        let cases = [
            ("ns", Nanoseconds),
            ("n", Nanoseconds),
            ("nanosecond", Nanoseconds),
            ("nanoseconds", Nanoseconds),
            ("us", Microseconds),
            ("u", Microseconds),
            ("µs", Microseconds), // U+00B5 micro sign
            ("μs", Microseconds), // U+03BC greek mu
            ("microsecond", Microseconds),
            ("ms", Milliseconds),
            ("millisecond", Milliseconds),
            ("s", Seconds),
            ("second", Seconds),
            ("seconds", Seconds),
            ("m", Minutes),
            ("minute", Minutes),
            ("h", Hours),
            ("hour", Hours),
            ("auto", Auto),
        ];
        for (s, p) in cases {
            assert_eq!(Precision::parse(s), Some(p), "{s}");
        }
        for bad in ["", "NS", "M", "sec", "d", "autos", "nss", " s", "mss"] {
            assert_eq!(Precision::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        use Precision::*;
        for p in [
            Auto,
            Nanoseconds,
            Microseconds,
            Milliseconds,
            Seconds,
            Minutes,
            Hours,
        ] {
            assert_eq!(Precision::parse(&p.to_string()), Some(p));
        }
    }

    #[test]
    fn guess_matches_influxdb3_thresholds() {
        use Precision::*;
        // One real instant, 2024-02-26T19:42:47Z, in each unit.
        assert_eq!(Precision::guess(1_708_976_567), Seconds);
        assert_eq!(Precision::guess(1_708_976_567_000), Milliseconds);
        assert_eq!(Precision::guess(1_708_976_567_000_000), Microseconds);
        assert_eq!(Precision::guess(1_708_976_567_000_000_000), Nanoseconds);
        // Exact boundaries: |ts| / 1e9 < 5, < 5_000, < 5_000_000.
        assert_eq!(Precision::guess(4_999_999_999), Seconds);
        assert_eq!(Precision::guess(5_000_000_000), Milliseconds);
        assert_eq!(Precision::guess(4_999_999_999_999), Milliseconds);
        assert_eq!(Precision::guess(5_000_000_000_000), Microseconds);
        assert_eq!(Precision::guess(4_999_999_999_999_999), Microseconds);
        assert_eq!(Precision::guess(5_000_000_000_000_000), Nanoseconds);
        // Negative times use the magnitude; i64::MIN must not overflow.
        assert_eq!(Precision::guess(-1_708_976_567), Seconds);
        assert_eq!(Precision::guess(-1_708_976_567_000), Milliseconds);
        assert_eq!(Precision::guess(i64::MIN), Nanoseconds);
        assert_eq!(Precision::guess(0), Seconds);
    }

    #[test]
    fn to_nanos_multiplies_and_checks_range() {
        use Precision::*;
        assert_eq!(Seconds.to_nanos(2), Some(2_000_000_000));
        assert_eq!(Milliseconds.to_nanos(-2), Some(-2_000_000));
        assert_eq!(Microseconds.to_nanos(3), Some(3_000));
        assert_eq!(Nanoseconds.to_nanos(7), Some(7));
        assert_eq!(Minutes.to_nanos(1), Some(60_000_000_000));
        assert_eq!(Hours.to_nanos(2), Some(7_200_000_000_000));
        assert_eq!(
            Auto.to_nanos(1_708_976_567),
            Some(1_708_976_567_000_000_000)
        );
        assert_eq!(
            Auto.to_nanos(1_708_976_567_123),
            Some(1_708_976_567_123_000_000)
        );
        // Largest whole seconds that fit, and one more.
        let s_max = i64::MAX / 1_000_000_000;
        assert_eq!(Seconds.to_nanos(s_max), Some(s_max * 1_000_000_000));
        assert_eq!(Seconds.to_nanos(s_max + 1), None);
        assert_eq!(Seconds.to_nanos(-s_max - 1), None);
        assert_eq!(Hours.to_nanos(2_562_048), None);
        // InfluxDB's documented range excludes the two lowest values and the highest.
        assert_eq!(Nanoseconds.to_nanos(TIME_NS_MIN), Some(TIME_NS_MIN));
        assert_eq!(Nanoseconds.to_nanos(TIME_NS_MAX), Some(TIME_NS_MAX));
        assert_eq!(Nanoseconds.to_nanos(i64::MIN), None);
        assert_eq!(Nanoseconds.to_nanos(i64::MIN + 1), None);
        assert_eq!(Nanoseconds.to_nanos(i64::MAX), None);
    }
}

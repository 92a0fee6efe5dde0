//! Byte scanning: line breaks, token ends, escapes.
//!
//! Every byte that ends a token is ASCII, so every index these functions return is a UTF-8
//! character boundary of a `str` they were given; slicing there cannot panic.

use std::borrow::Cow;

/// Ends a measurement name: `,` ` ` (and `\` starts an escape).
pub(crate) const MEASUREMENT: u8 = 1;
/// Ends a tag key, tag value or field key: `,` `=` ` ` (and `\` starts an escape).
pub(crate) const KEY: u8 = 2;
/// Ends an unquoted field value: `,` ` `. Backslashes are not special there.
pub(crate) const VALUE: u8 = 4;

/// Characters a backslash escapes in a measurement name (besides `\` itself).
pub(crate) const MEASUREMENT_ESCAPES: &[u8] = b", ";
/// Characters a backslash escapes in tag keys, tag values and field keys (besides `\`).
pub(crate) const KEY_ESCAPES: &[u8] = b",= ";
/// Characters a backslash escapes in a string field value (besides `\`).
pub(crate) const STRING_ESCAPES: &[u8] = b"\"";

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b',' as usize] = MEASUREMENT | KEY | VALUE;
    t[b' ' as usize] = MEASUREMENT | KEY | VALUE;
    t[b'=' as usize] = KEY;
    t[b'\\' as usize] = MEASUREMENT | KEY;
    t
};

/// Index of the first `\n` at or after `from`, eight bytes at a time.
#[inline]
pub(crate) fn find_newline(b: &[u8], from: usize) -> Option<usize> {
    let rest = b.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut offset = from;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let found = bytes_equal(u64::from_le_bytes(word), b'\n');
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'\n')
        .map(|p| offset + p)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `word` equal to `c`. The lowest set bit is exact; bits above
/// it may be false positives (a borrow), so only the lowest is used, and the OR of several
/// such masks keeps that property.
#[inline(always)]
fn bytes_equal(word: u64, c: u8) -> u64 {
    let x = word ^ (ONES * u64::from(c));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// High bits marking bytes of `word` whose class is in `mask` (lowest one exact).
#[inline(always)]
fn specials(word: u64, mask: u8) -> u64 {
    let mut m = bytes_equal(word, b',') | bytes_equal(word, b' ');
    if mask & KEY != 0 {
        m |= bytes_equal(word, b'=');
    }
    if mask & (KEY | MEASUREMENT) != 0 {
        m |= bytes_equal(word, b'\\');
    }
    m
}

/// Scans from `i` to the first byte whose class is in `mask`, stepping over a backslash and
/// the byte after it when `\` is in the class. Returns the end and whether a backslash was
/// seen. Eight bytes at a time while eight remain, then byte by byte.
#[inline(always)]
pub(crate) fn scan(b: &[u8], mut i: usize, mask: u8) -> (usize, bool) {
    let mut escaped = false;
    loop {
        if let Some(chunk) = b.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let found = specials(u64::from_le_bytes(word), mask);
            if found == 0 {
                i += 8;
                continue;
            }
            i += (found.trailing_zeros() / 8) as usize;
        } else {
            while i < b.len() && CLASS[b[i] as usize] & mask == 0 {
                i += 1;
            }
            if i >= b.len() {
                return (b.len(), escaped);
            }
        }
        if b[i] != b'\\' {
            return (i, escaped);
        }
        escaped = true;
        i += 2;
    }
}

/// Scans a string value's body from `i` (just after the opening quote) to its closing quote.
/// Returns the index of the closing quote and whether a backslash was seen; `None` if the
/// line ends first.
#[inline]
pub(crate) fn scan_string(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    while i < b.len() {
        match b[i] {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// Removes the backslash from `\\` and from `\c` for every `c` in `escapes`; a backslash before
/// any other character (or at the end) is kept literally, as InfluxDB does. Borrows when there
/// is nothing to remove.
///
/// This pairs with [`scan`]: both read `\\` as one escaped backslash, so the byte after a
/// backslash that `scan` stepped over is never the start of another escape here.
#[cold]
pub(crate) fn unescape<'a>(raw: &'a str, escapes: &[u8]) -> Cow<'a, str> {
    let b = raw.as_bytes();
    let mut out = String::new();
    let mut copied = 0; // raw[..copied] is in `out` (or nothing has been removed yet)
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\\' && (b[i + 1] == b'\\' || escapes.contains(&b[i + 1])) {
            if out.capacity() == 0 {
                out.reserve(raw.len());
            }
            out.push_str(&raw[copied..i]);
            copied = i + 1; // keep the escaped character, drop the backslash
            i += 2;
        } else {
            i += 1;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(raw);
    }
    out.push_str(&raw[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_newline_finds_the_first_in_every_position() {
        for len in 0..40 {
            for at in 0..len {
                let mut v = vec![b'a'; len];
                v[at] = b'\n';
                if at + 3 < len {
                    v[at + 3] = b'\n';
                }
                // Bytes that trip naive word tricks: 0x0b is '\n' + 1, 0x8a has the high bit.
                if at > 0 {
                    v[at - 1] = 0x0b;
                }
                if at + 1 < len && at + 1 != at + 3 {
                    v[at + 1] = 0x8a;
                }
                for from in 0..=at {
                    assert_eq!(
                        find_newline(&v, from),
                        Some(at),
                        "len {len} at {at} from {from}"
                    );
                }
                assert_eq!(find_newline(&v, len), None);
            }
            assert_eq!(find_newline(&vec![b'x'; len], 0), None);
        }
        assert_eq!(find_newline(b"ab", 5), None);
    }

    #[test]
    fn scan_stops_at_class_and_steps_over_escapes() {
        assert_eq!(scan(b"cpu,host=a", 0, MEASUREMENT), (3, false));
        assert_eq!(scan(b"cp\\,u x", 0, MEASUREMENT), (5, true));
        assert_eq!(scan(b"a=b", 0, MEASUREMENT), (3, false));
        assert_eq!(scan(b"a=b", 0, KEY), (1, false));
        assert_eq!(scan(b"a\\=b=c", 0, KEY), (4, true));
        assert_eq!(scan(b"a\\\\=b", 0, KEY), (3, true));
        assert_eq!(scan(b"ab\\", 0, KEY), (3, true)); // trailing backslash: to the end
        assert_eq!(scan(b"1\\2,", 0, VALUE), (3, false)); // not special in values
    }

    /// Byte-at-a-time scan, the obvious way, to check the word-at-a-time one against.
    fn scan_reference(b: &[u8], mut i: usize, mask: u8) -> (usize, bool) {
        let mut escaped = false;
        while i < b.len() {
            if CLASS[b[i] as usize] & mask != 0 {
                if b[i] != b'\\' {
                    return (i, escaped);
                }
                escaped = true;
                i += 1;
            }
            i += 1;
        }
        (b.len(), escaped)
    }

    #[test]
    fn word_scan_agrees_with_bytewise_scan() {
        let alphabet = b"ab,= \\\"\xc3\xa9\x80\xff\x0bxyz0123456789";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            // Mostly ordinary bytes, so tokens run across word boundaries.
            let input: Vec<u8> = (0..len)
                .map(|k| {
                    let r = state.rotate_left(k as u32 * 7);
                    if r % 10 < 2 {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        b'a' + (r >> 16) as u8 % 26
                    }
                })
                .collect();
            for from in 0..=len {
                for mask in [MEASUREMENT, KEY, VALUE] {
                    assert_eq!(
                        scan(&input, from, mask),
                        scan_reference(&input, from, mask),
                        "{:?} from {from} mask {mask}",
                        String::from_utf8_lossy(&input)
                    );
                }
            }
        }
    }

    #[test]
    fn scan_string_finds_the_unescaped_quote() {
        assert_eq!(scan_string(b"\"abc\" x", 1), Some((4, false)));
        assert_eq!(scan_string(b"\"a\\\"b\"", 1), Some((5, true)));
        assert_eq!(scan_string(b"\"a\\\\\"", 1), Some((4, true)));
        assert_eq!(scan_string(b"\"a\\\"", 1), None);
        assert_eq!(scan_string(b"\"abc", 1), None);
        assert_eq!(scan_string(b"\"abc\\", 1), None);
    }

    #[test]
    fn unescape_follows_influxdb() {
        let u = |s: &str, e: &[u8]| unescape(s, e).into_owned();
        assert_eq!(u(r"a\,b\ c", MEASUREMENT_ESCAPES), "a,b c");
        assert_eq!(u(r"a\=b", MEASUREMENT_ESCAPES), r"a\=b");
        assert_eq!(u(r"a\=b", KEY_ESCAPES), "a=b");
        assert_eq!(u(r#"say \"hi\""#, STRING_ESCAPES), r#"say "hi""#);
        assert_eq!(u(r"\n\t", STRING_ESCAPES), r"\n\t");
        // The docs' table: \ -> \, \\ -> \, \\\ -> \\, \\\\ -> \\, \\\\\ -> \\\.
        for (raw, want) in [
            (r"\", r"\"),
            (r"\\", r"\"),
            (r"\\\", r"\\"),
            (r"\\\\", r"\\"),
            (r"\\\\\", r"\\\"),
            (r"\\\\\\", r"\\\"),
        ] {
            assert_eq!(u(raw, KEY_ESCAPES), want, "{raw}");
            assert_eq!(u(raw, STRING_ESCAPES), want, "{raw}");
        }
        assert_eq!(u(r"é\ ü", KEY_ESCAPES), "é ü");
        assert_eq!(u(r"\é", KEY_ESCAPES), r"\é");
        assert!(matches!(unescape(r"a\b", KEY_ESCAPES), Cow::Borrowed(_)));
        assert!(matches!(unescape(r"a\,b", KEY_ESCAPES), Cow::Owned(_)));
    }
}

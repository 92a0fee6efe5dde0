//! Refusing repeated names within a line: a tag key twice, a field key twice, or a name used as
//! both tag and field (all would land in one column).
//!
//! Typical lines have a handful of names, so the check runs while parsing: each name sets one
//! bit of a 64-bit mask picked by a cheap fingerprint, and only a name whose bit is already set
//! is compared with the earlier names. Past [`INLINE_NAMES_MAX`] names the mask is mostly full,
//! so the check switches to sorting all names once at the end of the line: O(n log n) however
//! many names an adversarial line holds.

use std::borrow::Cow;

use crate::error::{snippet, ErrorKind};
use crate::line::FieldValue;

/// Names checked one by one as they are parsed; later ones are checked by sorting.
pub(crate) const INLINE_NAMES_MAX: usize = 24;

/// Reusable state for one parser: no allocation per line once the vectors have grown.
#[derive(Debug, Default)]
pub(crate) struct KeyCheck {
    mask: u64,
    /// Byte index in the line of every name, tags first then fields, for error columns.
    starts: Vec<u32>,
    deferred: bool,
    order: Vec<u32>,
}

type Tags<'a> = [(Cow<'a, str>, Cow<'a, str>)];
type Fields<'a> = [(Cow<'a, str>, FieldValue<'a>)];

impl KeyCheck {
    pub(crate) fn clear(&mut self) {
        self.mask = 0;
        self.starts.clear();
        self.deferred = false;
    }

    /// Checks a tag key about to be pushed after `tags`.
    #[inline]
    pub(crate) fn tag(
        &mut self,
        key: &str,
        start: usize,
        tags: &Tags<'_>,
    ) -> Result<(), ErrorKind> {
        self.starts.push(start as u32);
        if tags.len() >= INLINE_NAMES_MAX {
            self.deferred = true;
            return Ok(());
        }
        if self.collides(key) && tags.iter().any(|(k, _)| k == key) {
            return Err(ErrorKind::DuplicateTag { key: snippet(key) });
        }
        Ok(())
    }

    /// Checks a field key about to be pushed after `fields`.
    #[inline]
    pub(crate) fn field(
        &mut self,
        key: &str,
        start: usize,
        tags: &Tags<'_>,
        fields: &Fields<'_>,
    ) -> Result<(), ErrorKind> {
        self.starts.push(start as u32);
        if tags.len() + fields.len() >= INLINE_NAMES_MAX {
            self.deferred = true;
            return Ok(());
        }
        if self.collides(key) {
            if tags.iter().any(|(k, _)| k == key) {
                return Err(ErrorKind::TagFieldConflict { key: snippet(key) });
            }
            if fields.iter().any(|(k, _)| k == key) {
                return Err(ErrorKind::DuplicateField { key: snippet(key) });
            }
        }
        Ok(())
    }

    /// Sets the name's bit; true if it was set already (a possible repeat).
    #[inline(always)]
    fn collides(&mut self, key: &str) -> bool {
        let bit = 1u64 << fingerprint(key.as_bytes());
        let seen = self.mask & bit != 0;
        self.mask |= bit;
        seen
    }

    /// Finishes the line: if names were deferred, sorts all of them and looks for neighbours
    /// that are equal. Returns the error and the byte index of the later name.
    pub(crate) fn finish(
        &mut self,
        tags: &Tags<'_>,
        fields: &Fields<'_>,
    ) -> Result<(), (usize, ErrorKind)> {
        if !self.deferred {
            return Ok(());
        }
        let n_tags = tags.len();
        let name = |i: u32| -> &str {
            let i = i as usize;
            if i < n_tags {
                &tags[i].0
            } else {
                &fields[i - n_tags].0
            }
        };
        self.order.clear();
        self.order.extend(0..(n_tags + fields.len()) as u32);
        self.order
            .sort_unstable_by(|&a, &b| name(a).cmp(name(b)).then(a.cmp(&b)));
        let mut found: Option<(u32, u32)> = None;
        for w in self.order.windows(2) {
            if name(w[0]) == name(w[1]) && found.is_none_or(|(_, later)| w[1] < later) {
                found = Some((w[0], w[1]));
            }
        }
        let Some((earlier, later)) = found else {
            return Ok(());
        };
        let key = snippet(name(later));
        let kind = match (earlier as usize) < n_tags {
            true if (later as usize) < n_tags => ErrorKind::DuplicateTag { key },
            true => ErrorKind::TagFieldConflict { key },
            false => ErrorKind::DuplicateField { key },
        };
        Err((self.starts[later as usize] as usize, kind))
    }
}

/// Six bits from a name's length and three of its bytes.
#[inline(always)]
fn fingerprint(k: &[u8]) -> u32 {
    let n = k.len();
    let (first, mid, last) = match n {
        0 => (0, 0, 0),
        _ => (k[0], k[n / 2], k[n - 1]),
    };
    let x = n as u64 | u64::from(first) << 16 | u64::from(mid) << 24 | u64::from(last) << 32;
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&'static str]) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        names
            .iter()
            .map(|n| (Cow::Borrowed(*n), Cow::Borrowed("v")))
            .collect()
    }
    fn fields(names: &[&'static str]) -> Vec<(Cow<'static, str>, FieldValue<'static>)> {
        names
            .iter()
            .map(|n| (Cow::Borrowed(*n), FieldValue::Bool(true)))
            .collect()
    }

    /// Runs the checks the parser runs, name by name; returns the error and the index of the
    /// offending name.
    fn check(t: &[&'static str], f: &[&'static str]) -> Result<(), (usize, ErrorKind)> {
        let mut kc = KeyCheck::default();
        kc.clear();
        let mut tv = Vec::new();
        for (i, name) in t.iter().enumerate() {
            kc.tag(name, i, &tv).map_err(|e| (i, e))?;
            tv.extend(tags(&[*name]));
        }
        let mut fv = Vec::new();
        for (j, name) in f.iter().enumerate() {
            kc.field(name, t.len() + j, &tv, &fv)
                .map_err(|e| (t.len() + j, e))?;
            fv.extend(fields(&[*name]));
        }
        kc.finish(&tv, &fv)
    }

    #[test]
    fn distinct_names_pass_small_and_large() {
        assert_eq!(check(&["a", "b"], &["c", "d"]), Ok(()));
        let many: Vec<&'static str> = (0..300)
            .map(|i| &*Box::leak(format!("k{i}").into_boxed_str()))
            .collect();
        assert_eq!(check(&many[..100], &many[100..]), Ok(()));
    }

    #[test]
    fn repeats_are_found_with_the_right_kind_and_position() {
        let dup_tag = |k: &str| ErrorKind::DuplicateTag { key: k.into() };
        let dup_field = |k: &str| ErrorKind::DuplicateField { key: k.into() };
        let conflict = |k: &str| ErrorKind::TagFieldConflict { key: k.into() };
        assert_eq!(check(&["a", "b", "a"], &["x"]), Err((2, dup_tag("a"))));
        assert_eq!(check(&["a"], &["x", "y", "x"]), Err((3, dup_field("x"))));
        assert_eq!(check(&["a", "b"], &["b"]), Err((2, conflict("b"))));
        // Same on the sorting path: well past INLINE_NAMES_MAX names.
        let many: Vec<&'static str> = (0..200)
            .map(|i| &*Box::leak(format!("k{i}").into_boxed_str()))
            .collect();
        let mut t = many[..100].to_vec();
        t.push("k5");
        assert_eq!(check(&t, &["x"]), Err((100, dup_tag("k5"))));
        let mut f = many[100..].to_vec();
        f.push("k150");
        assert_eq!(check(&many[..100], &f), Err((200, dup_field("k150"))));
        let mut f = many[100..].to_vec();
        f.push("k7");
        assert_eq!(check(&many[..100], &f), Err((200, conflict("k7"))));
        // The earliest repeat in input order is the one reported.
        let mut f = many[100..].to_vec();
        f.push("k180");
        f.push("k120");
        f[50] = "zz";
        f[60] = "zz";
        assert_eq!(check(&many[..100], &f), Err((160, dup_field("zz"))));
    }

    #[test]
    fn names_that_share_a_fingerprint_are_still_told_apart() {
        // Same length, first, middle and last byte: same fingerprint, different names.
        assert_eq!(fingerprint(b"axbyc"), fingerprint(b"azbwc"));
        assert_eq!(check(&["axbyc"], &["azbwc"]), Ok(()));
    }
}

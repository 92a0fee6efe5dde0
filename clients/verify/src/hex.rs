//! Lowercase hex (FORMAT.md: "Hex is lowercase"). Uppercase is refused so that one byte string
//! has exactly one spelling.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Displays bytes as lowercase hex without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The value of each lowercase hex digit, [`NOT_HEX`] for every other byte.
const NIBBLES: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const NOT_HEX: u8 = 0xff;

/// Decodes `s` (`2 * out.len()` lowercase hex digits) into `out`.
fn decode_into(s: &[u8], out: &mut [u8]) -> Result<(), String> {
    for (i, (pair, o)) in s.chunks_exact(2).zip(out.iter_mut()).enumerate() {
        let (h, l) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        if h == NOT_HEX || l == NOT_HEX {
            return Err(alloc::format!(
                "not lowercase hex at character {}",
                2 * i + usize::from(h != NOT_HEX)
            ));
        }
        *o = h << 4 | l;
    }
    Ok(())
}

/// Decodes lowercase hex of any even length.
pub(crate) fn decode_hex_vec(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(alloc::format!("odd number of hex digits ({})", b.len()));
    }
    let mut out = alloc::vec![0u8; b.len() / 2];
    decode_into(b, &mut out)?;
    Ok(out)
}

/// Decodes exactly `N` bytes of lowercase hex.
pub(crate) fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N {
        return Err(alloc::format!(
            "expected {} hex digits, found {}",
            2 * N,
            s.len()
        ));
    }
    let mut out = [0u8; N];
    decode_into(s.as_bytes(), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_only_and_exact_lengths() {
        assert_eq!(decode_hex_vec("00ff10").unwrap(), [0x00, 0xff, 0x10]);
        assert_eq!(decode_hex::<2>("abcd").unwrap(), [0xab, 0xcd]);
        assert!(decode_hex_vec("0F").is_err());
        assert!(decode_hex_vec("0").is_err());
        assert!(decode_hex_vec("0g").unwrap_err().contains("character 1"));
        assert!(decode_hex::<2>("abcdef").is_err());
        assert_eq!(alloc::format!("{}", Hex(&[0xab, 0x01])), "ab01");
    }
}

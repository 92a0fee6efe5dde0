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

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes lowercase hex of any even length.
pub(crate) fn decode_hex_vec(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(alloc::format!("odd number of hex digits ({})", b.len()));
    }
    b.chunks(2)
        .enumerate()
        .map(|(i, pair)| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(alloc::format!(
                "not lowercase hex at character {}",
                2 * i + usize::from(nibble(pair[0]).is_some())
            )),
        })
        .collect()
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
    let v = decode_hex_vec(s)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&v);
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

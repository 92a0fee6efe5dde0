//! Byte sizes on the command line: `1048576`, `512MiB`, `2GiB`, `64KB`.

/// Parses a byte count with an optional unit: `B`, `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024),
/// `KB`/`MB`/`GB`/`TB` (powers of 1000); `K`/`M`/`G`/`T` alone mean the binary units.
pub(crate) fn parse(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MiB or 1073741824"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?}: use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn units() {
        assert_eq!(parse("1048576").unwrap(), 1 << 20);
        assert_eq!(parse("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse("2g").unwrap(), 2 << 30);
        assert_eq!(parse("64KB").unwrap(), 64_000);
        assert_eq!(parse(" 3 mib ").unwrap(), 3 << 20);
        assert!(parse("MiB").is_err());
        assert!(parse("12 parsecs").is_err());
        assert!(parse("99999999999999999999").is_err());
    }
}

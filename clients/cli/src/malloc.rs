//! glibc's allocator settings for `annals serve`.
//!
//! Ingest allocates and frees column buffers of tens to hundreds of KiB per batch on every
//! connection thread, and the sealers and writers do the same per block. By default glibc
//! adjusts its thresholds as it goes: freed memory at the top of a thread's heap is given back
//! to the kernel once it passes the trim threshold (128 KiB at first), and the next batch's
//! buffers fault those pages in again, zeroed. The server fixes both thresholds at the highest
//! values glibc's own adjustment would reach on a 64-bit system (`docs/PERFORMANCE.md`,
//! "Allocator thresholds"): requests under 32 MiB come from the heaps, and a heap keeps up to
//! 64 MiB of free memory at its top for reuse. Setting one threshold stops glibc adjusting
//! the other, so both are set.
//!
//! An operator who sets malloc tunables in `GLIBC_TUNABLES` keeps them: the server then
//! leaves the allocator as configured.

/// Requests at least this large get their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of a heap kept for reuse, at most.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 << 20;

/// What [`tune_for_server`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tuning {
    /// Both thresholds set.
    Set,
    /// `GLIBC_TUNABLES` names malloc settings: left as the operator gave them.
    Operator,
    /// glibc refused a value (the allocator keeps its own adjustment).
    Refused,
    /// Not glibc: nothing to set.
    #[cfg_attr(all(target_os = "linux", target_env = "gnu"), allow(dead_code))]
    Unsupported,
}

/// Whether `GLIBC_TUNABLES` (its value given) sets any malloc tunable.
fn operator_sets_malloc(tunables: Option<&str>) -> bool {
    tunables.is_some_and(|t| t.split(':').any(|kv| kv.starts_with("glibc.malloc.")))
}

/// Sets the thresholds; call before the server starts its threads.
pub(crate) fn tune_for_server() -> Tuning {
    if operator_sets_malloc(std::env::var("GLIBC_TUNABLES").ok().as_deref()) {
        return Tuning::Operator;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> Tuning {
    // SAFETY: mallopt only sets allocator parameters; both values are within the ranges
    // glibc accepts (the mapping threshold at most half of a thread heap's 64 MiB).
    #[allow(unsafe_code)]
    let took = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    };
    if took {
        Tuning::Set
    } else {
        Tuning::Refused
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> Tuning {
    Tuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_thresholds() {
        let want = if cfg!(all(target_os = "linux", target_env = "gnu")) {
            Tuning::Set
        } else {
            Tuning::Unsupported
        };
        assert_eq!(set_thresholds(), want);
    }

    #[test]
    fn malloc_tunables_of_the_operator_are_kept() {
        assert!(!operator_sets_malloc(None));
        assert!(!operator_sets_malloc(Some("")));
        assert!(!operator_sets_malloc(Some("glibc.rtld.nns=2")));
        assert!(operator_sets_malloc(Some("glibc.malloc.trim_threshold=1")));
        assert!(operator_sets_malloc(Some(
            "glibc.rtld.nns=2:glibc.malloc.arena_max=2"
        )));
    }
}

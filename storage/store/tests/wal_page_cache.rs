//! The WAL lets go of the page cache of what it has synced (Linux only).
//!
//! Residency is read with `fincore` (util-linux). A second test checks the opposite case
//! (`no_sync`, whose pages are dirty and stay cached), so a `fincore` that saw nothing would
//! fail it rather than let the first test pass for the wrong reason.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

use annals_storage::wal::{replay, segment_file_name, Wal, WalConfig};

/// Bytes of `path` in the page cache.
fn resident_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) must be installed to run this test");
    assert!(out.status.success(), "fincore failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .parse()
        .expect("fincore prints a byte count")
}

/// A directory on the disk the build uses (not a tmpfs, where pages are the storage itself).
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// Appends `frames` frames of `bytes` each, syncing after every one, and returns the segment.
fn write(dir: &Path, cfg: WalConfig, frames: usize, bytes: usize) -> std::path::PathBuf {
    let mut wal = Wal::open(dir, cfg).expect("open");
    for i in 0..frames {
        wal.append(&vec![i as u8; bytes]).expect("append");
        wal.sync().expect("sync");
    }
    dir.join(segment_file_name(wal.current_segment()))
}

#[test]
fn synced_pages_leave_the_page_cache_and_replay_still_reads_them() {
    let dir = disk_dir();
    // 8 frames of 1 MiB + 3 bytes: the segment does not end on a page boundary.
    let segment = write(dir.path(), WalConfig::default(), 8, (1 << 20) + 3);
    let len = std::fs::metadata(&segment).expect("metadata").len();
    assert!(len > 8 << 20);
    let resident = resident_bytes(&segment);
    // Only the page the next write would extend may stay.
    assert!(
        resident <= 4096,
        "{resident} of {len} bytes of a synced WAL segment are still cached"
    );

    // Released pages are read back from disk: every frame replays intact.
    let mut seen = Vec::new();
    replay(dir.path(), |_, p: &[u8]| {
        assert!(p.iter().all(|&b| b == p[0]));
        seen.push((p[0], p.len()));
        Ok::<(), std::io::Error>(())
    })
    .expect("replay");
    let expected: Vec<(u8, usize)> = (0..8).map(|i| (i as u8, (1 << 20) + 3)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn unsynced_pages_stay_cached() {
    let dir = disk_dir();
    let cfg = WalConfig {
        no_sync: true,
        ..WalConfig::default()
    };
    let segment = write(dir.path(), cfg, 8, 1 << 20);
    let len = std::fs::metadata(&segment).expect("metadata").len();
    let resident = resident_bytes(&segment);
    assert!(
        resident >= len / 2,
        "fincore sees only {resident} of {len} freshly written (dirty) bytes cached"
    );
}

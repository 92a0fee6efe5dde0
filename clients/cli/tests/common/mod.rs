//! Shared by the process tests of the ledger API, device attestations and JSON-LD: the binary,
//! flags that leave sealing and checkpoints to the test, an HTTP agent, a server on a temporary
//! data directory, and a write that returns its receipt.
#![allow(dead_code)] // each test file uses a subset

use std::time::Duration;

use annals_tests::Server;
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_annals");

/// The package's directory: the one `cargo test` names when it runs the test (so a test binary
/// reused from another checkout's build reads this checkout's files), else the one it was
/// built in.
pub(crate) fn package_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// `shards` shards, blocks of 4 rows and files of 8; nothing is sealed by age and no
/// checkpoint comes by itself, so tests decide with `/api/v3/flush`.
pub(crate) const fn manual_flags(shards: &'static str) -> [&'static str; 12] {
    [
        "--shards",
        shards,
        "--block-rows",
        "4",
        "--block-age",
        "1h",
        "--file-rows",
        "8",
        "--file-age",
        "1h",
        "--checkpoint-interval",
        "1h",
    ]
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(90))
        .build()
}

/// A server on a fresh temporary data directory (kept alive by the returned guard).
pub(crate) fn start(flags: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(BIN.as_ref(), &dir.path().join("data"), flags).unwrap();
    (dir, s)
}

/// Writes lines to db `fleet` and returns the receipt's entries, in line order.
pub(crate) fn write_receipt(s: &Server, lines: &str) -> Vec<Value> {
    let r = agent()
        .post(&s.url("/api/v3/write_lp?db=fleet&receipt=true"))
        .send_string(lines)
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.into_json().unwrap();
    v["entries"].as_array().unwrap().clone()
}

//! `annals-bench compare` end to end at a tiny scale, as a correctness check (not timed): the
//! harness starts annals, InfluxDB 1.x and PostgreSQL itself, loads the same rows into each
//! (into annals twice: line protocol, then Arrow Flight `DoPut` into a second database),
//! runs the TSBS iot queries on annals, DuckDB, PostgreSQL and InfluxDB, and must find every
//! answer equal. A missing peer (influxd, PostgreSQL's initdb/postgres/psql, Python's duckdb)
//! fails the test: CI installs them (`.ci/run`).
//!
//! The annals binary is the workspace's debug build beside this test's executable
//! (`target/debug/annals`, built by `cargo test --workspace` or `cargo build --workspace`).

use std::path::PathBuf;
use std::process::Command;

/// The workspace's `annals` binary, next to `target/debug/deps/<this test>`.
fn annals_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("annals");
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build --workspace`",
        bin.display()
    );
    bin
}

#[test]
fn every_peer_gives_annals_answers() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_annals-bench"))
        .args([
            "compare",
            "--trucks",
            "10",
            "--duration",
            "4h",
            "--runs",
            "1",
            "--connections",
            "2",
            "--batch-lines",
            "1000",
        ])
        .arg("--annals-bin")
        .arg(annals_bin())
        .arg("--dir")
        .arg(work.path())
        .output()
        .expect("running annals-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "annals-bench compare failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(
            "every answer agrees (8 queries on annals, DuckDB and PostgreSQL, 4 on InfluxDB)"
        ),
        "{stderr}"
    );
    // One row per query in the report, each saying its answers agree.
    for name in [
        "last_location",
        "low_fuel",
        "high_load",
        "stationary_trucks",
        "long_driving_sessions",
        "average_load",
        "daily_activity",
        "breakdown_frequency",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no report row for {name}:\n{stdout}"));
        assert!(row.ends_with("| agree |"), "{row}");
    }
    assert!(stdout.contains("#### Ingest"), "{stdout}");
    // annals took the same rows again by Arrow Flight DoPut into its second database, and
    // both databases hold every generated row.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("| annals (Arrow Flight DoPut) | ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("annals Arrow Flight `DoPut` ÷ annals line protocol: "),
        "{stdout}"
    );
    for table in ["readings", "diagnostics"] {
        assert!(
            stderr.contains(&format!("annals: {table}: "))
                && stderr.contains(" rows in both bench and bench_arrow"),
            "{stderr}"
        );
    }
    assert!(stdout.contains("PostgreSQL"), "{stdout}");
    // The harness removed every server's files.
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

//! `annals audit`: exit 0 only when everything in the data directory checks out.

use std::path::Path;
use std::process::ExitCode;

pub(crate) fn run(data_dir: &Path, json: bool) -> ExitCode {
    let report = match annals_engine::audit::audit(data_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("annals audit: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        println!(
            "branches {}  blocks {} ({} checked in {} files, {} pending in WAL)  rows {}  checkpoints {}  contexts {}",
            report.branches,
            report.blocks_in_logs,
            report.blocks_checked,
            report.block_files,
            report.blocks_pending,
            report.rows_checked,
            report.checkpoints,
            report.contexts_checked
        );
        for p in &report.problems {
            println!("PROBLEM {}: {}", p.location, p.message);
        }
        println!(
            "{}",
            if report.ok() {
                "audit: OK"
            } else {
                "audit: FAILED"
            }
        );
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! The markdown table of `annals-bench flight`.

use super::put::Timed;
use super::{Figures, FlightOptions, ARROW_DB, LP_DB, STREAM_SQL};

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One row of the table.
fn print_row(step: &str, t: &Timed, counted: &str) {
    println!(
        "| {step} | {} | {:.2} | {} | {:.1} | {counted} | {:.2} | {:.2} |",
        grouped(t.rows),
        t.elapsed.as_secs_f64(),
        grouped(t.rows_per_sec().round() as u64),
        t.mb_per_sec(),
        t.server_cpu_secs,
        t.server_cpu_secs * 1e6 / t.rows.max(1) as f64,
    );
}

pub(super) fn print_table(opts: &FlightOptions, f: &Figures) {
    let iot = &opts.iot;
    let args: Vec<String> = std::env::args().collect();
    let lp = Timed {
        rows: f.lp.rows,
        bytes: f.lp.raw_bytes,
        elapsed: f.lp.elapsed,
        server_cpu_secs: f.lp_cpu_secs,
    };
    let put = &f.put.timed;
    println!();
    println!(
        "### Line protocol vs Arrow Flight, TSBS iot: {} trucks x {} steps of 10 s",
        iot.trucks, iot.steps
    );
    println!();
    println!("`{}`", args.join(" "));
    println!();
    println!(
        "{} rows (seed {}{}) into {}, one server for the whole run ({} cores, shared with this \
         client). Line protocol: {} bodies of up to {} lines ({:.1} MB{}), `POST \
         /api/v3/write_lp` into `{LP_DB}` over {} HTTP/1.1 connections. Flight: the same bodies \
         as {} Arrow batches (one per table and body; {:.1} MB of uncompressed IPC, tags {}), \
         up to {} per `DoPut` call ({} calls, {} closed early by a change of columns) into \
         `{ARROW_DB}` over {} HTTP/2 connections, \
         every `PutResult` read. Each side's input was built before its clock started; Flight \
         ran second, on the server already holding the line-protocol rows. Query rows stream \
         `{STREAM_SQL}` from `{ARROW_DB}`.",
        grouped(lp.rows),
        iot.seed,
        if iot.irregularities == annals_bench::tsbs::Irregularities::NONE {
            ", regular"
        } else {
            ", TSBS irregularities"
        },
        f.server,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        f.lp_requests,
        opts.batch_lines,
        f.lp.raw_bytes as f64 / 1e6,
        if opts.gzip { ", gzipped" } else { "" },
        opts.connections,
        f.put.batches,
        put.bytes as f64 / 1e6,
        match opts.arrow_tags {
            super::ArrowTags::Utf8 => "`Utf8`",
            super::ArrowTags::Dict => "`Dictionary(Int32, Utf8)`",
        },
        opts.batches_per_call,
        f.put.calls,
        f.put.schema_cuts,
        opts.connections,
    );
    println!();
    println!("| step | rows | s | rows/s | MB/s | MB of | server CPU s | server CPU µs/row |");
    println!("|---|---:|---:|---:|---:|---|---:|---:|");
    print_row("ingest: line protocol (HTTP)", &lp, "line protocol");
    print_row("ingest: Arrow Flight `DoPut`", put, "Arrow IPC");
    print_row(
        &format!("query: Flight `DoGet`, median of {}", f.get_runs),
        &f.get,
        "Arrow IPC",
    );
    print_row(
        "query: HTTP `query_sql?format=json`, one run",
        &f.json,
        "JSON",
    );
    println!();
    let ratio = put.rows_per_sec() / lp.rows_per_sec();
    // CPU time is counted in 10 ms ticks: a short load may show none.
    let cpu_ratio = if lp.server_cpu_secs > 0.0 && put.rows > 0 && lp.rows > 0 {
        let per_row = |t: &Timed| t.server_cpu_secs / t.rows as f64;
        format!("{:.2}x", per_row(put) / per_row(&lp))
    } else {
        "n/a (too short to measure)".to_owned()
    };
    println!(
        "**DoPut / line protocol: {ratio:.2}x rows/s** (target: at least 2x, {}); server CPU per \
         row {cpu_ratio}. Server peak RSS {:.0} MiB (`VmHWM`, whole run).",
        if ratio >= 2.0 { "met" } else { "not met" },
        f.peak_rss as f64 / (1 << 20) as f64,
    );
    println!();
    println!(
        "`DoPut` asks for the row count of each batch (`annals-receipt: count`), no row's \
         position; the line-protocol requests ask for no receipt. The `DoGet` figure follows \
         one warm-up run."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}

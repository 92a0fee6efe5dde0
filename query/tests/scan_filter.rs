//! Filters evaluated inside the scan (query/src/scan.rs, `ScanFilter`): the same answers as
//! with `annals.scan_filters` off, on rows in block files and in memory, with nulls, with
//! columns that older blocks lack, with and without other columns to read, and never with
//! the ledger columns (whose `_index` numbers every row of a block).

mod common;

use annals_query::{QueryConfig, QueryService};
use common::{q, write};

/// 10 trucks × 30 steps. Every 4th row has no `lat`, every 9th no driver; fuel falls over
/// time. The second half of the steps adds a field (`load`) and a tag (`model`) that the
/// first half's blocks lack.
fn body(steps: std::ops::Range<i64>) -> String {
    let mut out = String::new();
    for step in steps {
        for t in 0..10i64 {
            let i = step * 10 + t;
            let mut line = format!(
                "readings,name=truck_{t},fleet={}",
                ["East", "West"][(t % 2) as usize]
            );
            if i % 9 != 0 {
                line.push_str(&format!(",driver=d{}", t % 4));
            }
            if step >= 15 {
                line.push_str(&format!(",model=m{}", t % 3));
            }
            line.push_str(&format!(" fuel={}", 100 - step * 3 - t));
            if i % 4 != 0 {
                line.push_str(&format!(",lat={}.25", t + step));
            }
            if step >= 15 {
                line.push_str(&format!(",load={}", (i * 7) % 13));
            }
            let time = 1_451_606_400_000_000_000 + i * 10_000_000_000;
            out.push_str(&format!("{line} {time}\n"));
        }
    }
    out
}

/// Each with an `ORDER BY` that makes the answer one table.
const QUERIES: [&str; 12] = [
    // A field filter: the tags and time are read for the passing rows only.
    "SELECT name, driver, fleet, fuel, time FROM readings WHERE fuel < 30 ORDER BY time",
    // Nulls in the filter's column.
    "SELECT name, lat, time FROM readings WHERE lat IS NULL ORDER BY time",
    "SELECT name, lat, time FROM readings WHERE lat > 20 ORDER BY time",
    // A column the older blocks lack: null there.
    "SELECT name, fuel, load, time FROM readings WHERE load IS NULL ORDER BY time",
    "SELECT name, model, load, time FROM readings WHERE load > 6 ORDER BY time",
    // Only the filter's own columns: nothing else to read.
    "SELECT fuel FROM readings WHERE fuel < 40 AND fuel > 20 ORDER BY fuel",
    // The other column is missing from the older blocks.
    "SELECT name, model, time FROM readings WHERE fuel > 60 ORDER BY time",
    // A tag filter and a time filter (both also prune blocks).
    "SELECT name, fuel, time FROM readings WHERE driver IN ('d1', 'd3') AND time >= to_timestamp(1451606400 + 1500) ORDER BY time",
    // A filter that passes every row, and one that passes none.
    "SELECT count(*), sum(fuel) FROM readings WHERE fuel > -1000",
    "SELECT count(*) FROM readings WHERE fuel > 1000",
    // Aggregation over the passing rows.
    "SELECT fleet, count(*), min(lat), max(time) FROM readings WHERE lat < 15 GROUP BY fleet ORDER BY fleet",
    // The ledger columns are read: no filtering in the scan, every `_index` as before.
    "SELECT name, _height, _index, _tx_id FROM ledger('readings') WHERE fuel < 30 ORDER BY _height, _index",
];

const OFF: &str = "SET annals.scan_filters = false; ";

async fn check(s: &QueryService) {
    for sql in QUERIES {
        let plan = q(s, &format!("EXPLAIN {sql}")).await;
        let scan_line = plan
            .lines()
            .find(|l| l.contains("LedgerScanExec"))
            .unwrap_or_else(|| panic!("{sql}\n{plan}"));
        assert_eq!(
            scan_line.contains("filter="),
            !sql.contains("ledger("),
            "{sql}\n{plan}"
        );
        let off_plan = q(s, &format!("{OFF}EXPLAIN {sql}")).await;
        assert!(!off_plan.contains("filter="), "{off_plan}");
        let got = q(s, sql).await;
        let expected = q(s, &format!("{OFF}{sql}")).await;
        assert_eq!(got, expected, "{sql}");
        assert!(got.lines().count() > 4, "{sql}\n{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_in_the_scan_give_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::engine(dir.path(), 16, 64);
    let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
    // Half the rows before `load` and `model` exist; most end in block files.
    write(&e, &body(0..15)).await;
    write(&e, &body(15..30)).await;
    check(&s).await;
    // Everything sealed into files.
    e.flush().unwrap();
    check(&s).await;
    // Rows still in memory beside the files.
    write(&e, &body(30..33)).await;
    check(&s).await;

    // A volatile filter stays above the scan; the rest of the conjunction goes in.
    let sql = "SELECT name FROM readings WHERE random() < 2.0 AND fuel < 30";
    let plan = q(&s, &format!("EXPLAIN {sql}")).await;
    let scan_line = plan.lines().find(|l| l.contains("LedgerScanExec")).unwrap();
    assert!(scan_line.contains("filter=fuel@"), "{plan}");
    assert!(!scan_line.contains("random"), "{plan}");
    e.shutdown();
}

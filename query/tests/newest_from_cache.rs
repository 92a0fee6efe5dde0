//! "Newest row per tag" from the last-value cache (query/src/from_cache.rs): the same answers as
//! the scan, on rows in block files and in memory, with several series per key, tags that
//! are missing, rows that arrive out of order, and across a restart (cold cache, then seeded by
//! a `last_values()` query or by `QueryService::warm_last_values`).

mod common;

use annals_query::{QueryConfig, QueryService};
use common::{q, write};

/// 12 trucks in 3 fleets, two drivers each over time (so a truck has two series), 40 steps in
/// shuffled order; every 7th row has no driver, every 11th no fleet; fuel falls over time.
fn body() -> String {
    let mut lines = Vec::new();
    for step in 0..40i64 {
        for t in 0..12i64 {
            let i = step * 12 + t;
            let mut tags = format!("readings,name=truck_{t}");
            if i % 11 != 0 {
                tags.push_str(&format!(
                    ",fleet={}",
                    ["East", "North", "South"][(t % 3) as usize]
                ));
            }
            if i % 7 != 0 {
                tags.push_str(&format!(",driver=d{}", (t + step / 20) % 5));
            }
            // Unique times; the order of steps is shuffled below.
            let time = 1_451_606_400_000_000_000 + (step * 12 + t) * 10_000_000_000;
            lines.push((
                (step * 17) % 40,
                format!(
                    "{tags} fuel={},lat={}.5 {time}",
                    100 - step * 2 - t,
                    t + step
                ),
            ));
        }
    }
    lines.sort_by_key(|(k, _)| *k);
    lines.into_iter().map(|(_, l)| l + "\n").collect()
}

const QUERIES: [&str; 4] = [
    // last_location
    "SELECT name, driver, lat, time FROM (
       SELECT name, driver, lat, time,
              row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
       FROM readings WHERE fleet = 'South' AND name IS NOT NULL) AS latest
     WHERE rn = 1 ORDER BY name",
    // Keyed by a tag two trucks share, with a tag IN filter and a null check.
    "SELECT fleet, name, fuel, time FROM (
       SELECT fleet, name, fuel, time,
              row_number() OVER (PARTITION BY fleet ORDER BY time DESC) AS rn
       FROM readings WHERE driver IN ('d1', 'd2') OR driver IS NULL) AS latest
     WHERE rn = 1 ORDER BY fleet",
    // Keyed by a tag that is sometimes missing.
    "SELECT driver, name, fuel, time FROM (
       SELECT driver, name, fuel, time,
              row_number() OVER (PARTITION BY driver ORDER BY time DESC) AS rn
       FROM readings WHERE name <> 'truck_0') AS latest
     WHERE rn = 1 ORDER BY driver",
    // A condition on the window's result beside rn = 1.
    "SELECT name, fuel, time FROM (
       SELECT name, fuel, time,
              row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
       FROM readings WHERE fleet <> 'East') AS latest
     WHERE rn = 1 AND fuel < 30 ORDER BY name",
];

/// Not answerable from the cache: a field or time in the filter, the oldest row, a field key,
/// an order by something other than `time`, a volatile filter.
const SCANNED: [&str; 6] = [
    "SELECT name, v FROM (SELECT name, v, row_number() OVER (PARTITION BY name ORDER BY v DESC) AS rn FROM (SELECT name, 0 - CAST(time AS BIGINT) AS v FROM readings WHERE fleet = 'South')) WHERE rn = 1 ORDER BY name",
    "SELECT name, time FROM (SELECT name, time, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn FROM readings WHERE name IS NOT NULL AND random() < 0.5) WHERE rn = 1 ORDER BY name",
    "SELECT name, fuel FROM (SELECT name, fuel, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn FROM readings WHERE fuel < 30) WHERE rn = 1 ORDER BY name",
    "SELECT name, fuel FROM (SELECT name, fuel, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn FROM readings WHERE time < to_timestamp(1451606400 + 600)) WHERE rn = 1 ORDER BY name",
    "SELECT name, fuel FROM (SELECT name, fuel, row_number() OVER (PARTITION BY name ORDER BY time ASC) AS rn FROM readings) WHERE rn = 1 ORDER BY name",
    "SELECT lat, fuel FROM (SELECT lat, fuel, row_number() OVER (PARTITION BY lat ORDER BY time DESC) AS rn FROM readings) WHERE rn = 1 ORDER BY lat",
];

const OFF: &str = "SET annals.newest_from_last_values = false; ";

async fn check(s: &QueryService, from_cache: bool) {
    for sql in QUERIES {
        let plan = q(s, &format!("EXPLAIN {sql}")).await;
        assert_eq!(
            !plan.contains("LedgerScanExec"),
            from_cache,
            "{sql}\n{plan}"
        );
        let off_plan = q(s, &format!("{OFF}EXPLAIN {sql}")).await;
        assert!(off_plan.contains("LedgerScanExec"), "{off_plan}");
        let got = q(s, sql).await;
        let expected = q(s, &format!("{OFF}{sql}")).await;
        assert_eq!(got, expected, "{sql}");
        assert!(got.lines().count() > 6, "{got}");
    }
    for sql in SCANNED {
        let plan = q(s, &format!("EXPLAIN {sql}")).await;
        assert!(plan.contains("LedgerScanExec"), "{sql}\n{plan}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_per_tag_from_the_cache_equals_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::engine(dir.path(), 16, 64);
    let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
    write(&e, &body()).await;
    check(&s, true).await;

    // Newer rows for a few trucks, and an older one (out of order) that must not win.
    write(
        &e,
        "readings,name=truck_2,fleet=South,driver=d4 fuel=1,lat=0.5 1451616000000000000\n\
         readings,name=truck_5,fleet=South,driver=d9 fuel=2,lat=0.5 1451616000000000000\n\
         readings,name=truck_8,fleet=South fuel=3,lat=0.5 1451500000000000000\n",
    )
    .await;
    check(&s, true).await;
    let last = q(&s, QUERIES[0]).await;
    // The newer rows win (one of a new series), the late one does not.
    assert!(last.contains("| truck_5  | d9     | 0.5  |"), "{last}");
    assert!(last.contains("| truck_8  |        | 47.5 |"), "{last}");

    // As of a checkpoint the scan is used: the cache is live.
    let cp = e.flush().unwrap();
    let plan = q(
        &s,
        &format!("SET annals.as_of_epoch = {cp}; EXPLAIN {}", QUERIES[0]),
    )
    .await;
    assert!(plan.contains("LedgerScanExec"), "{plan}");

    // After a restart the cache is cold until last_values() seeds it.
    e.shutdown();
    drop(s);
    drop(e);
    let e = common::engine(dir.path(), 16, 64);
    let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
    let cold = q(&s, &format!("EXPLAIN {}", QUERIES[0])).await;
    assert!(cold.contains("LedgerScanExec"), "{cold}");
    q(&s, "SELECT count(*) FROM last_values('readings')").await;
    check(&s, true).await;
    assert_eq!(q(&s, QUERIES[0]).await, last);

    // Or every table seeded at once, as `annals serve` does in the background after a start.
    e.shutdown();
    drop(s);
    drop(e);
    let e = common::engine(dir.path(), 16, 64);
    let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
    assert_eq!(
        e.last_values().cold_tables(),
        vec!["db/readings".to_string()]
    );
    let (seeded, failed) = s.warm_last_values().await;
    assert_eq!((seeded, failed.len()), (1, 0));
    assert_eq!(s.warm_last_values().await.0, 0);
    assert!(e.last_values().cold_tables().is_empty());
    check(&s, true).await;
    assert_eq!(q(&s, QUERIES[0]).await, last);
    e.shutdown();
}

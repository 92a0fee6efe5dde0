//! End-to-end SQL over an in-process engine: memtable and sealed blocks, pruning, time travel.

mod common;

use annals_query::{QueryConfig, QueryService};
use common::{q, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_visible_from_memory_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::engine(dir.path(), 4, 8);
    let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
    let mut body = String::new();
    for i in 0..30 {
        body.push_str(&format!(
            "m,host=h{} v={i}i {}\n",
            i % 3,
            1_000_000_000i64 * (i + 1)
        ));
    }
    write(&e, &body).await;
    let by_host = q(
        &s,
        "SELECT host, count(*) AS n, sum(v) AS s FROM m GROUP BY host ORDER BY host",
    )
    .await;
    assert!(by_host.contains("| h0   | 10 | 135 |"), "{by_host}");
    assert!(by_host.contains("| h2   | 10 | 155 |"), "{by_host}");
    let ranged = q(
        &s,
        "SELECT count(*) AS n FROM m WHERE time >= to_timestamp(10) AND time < to_timestamp(20)",
    )
    .await;
    assert!(ranged.contains("| 10 |"), "{ranged}");
    let explain = q(&s, "EXPLAIN ANALYZE SELECT count(*) FROM m WHERE time >= to_timestamp(10) AND time < to_timestamp(20)").await;
    assert!(explain.contains("blocks=5 of 8 (3 pruned)"), "{explain}");
    let ledger = q(
        &s,
        "SELECT _height, _index, length(_tx_id) AS l FROM ledger('m') ORDER BY time LIMIT 1",
    )
    .await;
    assert!(ledger.contains("| 0       | 0      | 64 |"), "{ledger}");
    let blocks = q(
        &s,
        "SELECT count(*) AS n, sum(row_count) AS r FROM system.blocks",
    )
    .await;
    assert!(blocks.contains("| 8 | 30 |"), "{blocks}");
    let cp = e.flush().unwrap();
    write(&e, "m,host=h9 v=1i 99000000000\n").await;
    let old = q(
        &s,
        &format!("SET annals.as_of_epoch = {cp}; SELECT count(*) AS n FROM m"),
    )
    .await;
    assert!(old.contains("| 30 |"), "{old}");
    let now = q(&s, "SELECT count(*) AS n FROM m").await;
    assert!(now.contains("| 31 |"), "{now}");
    let last = q(&s, "SELECT host, v FROM last_values('m') ORDER BY host").await;
    assert!(
        last.contains("| h0   | 27 |") && last.contains("| h9   | 1  |"),
        "{last}"
    );
    let queries = q(
        &s,
        "SELECT count(*) AS n FROM system.queries WHERE state = 'done'",
    )
    .await;
    assert!(queries.contains("| 8 |"), "{queries}");
    e.shutdown();
}

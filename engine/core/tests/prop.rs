//! Property: for any small workload, any block size and any shard count, what a flushed and
//! stopped node stores is exactly what was acknowledged, every receipt `tx_id` is stored at its
//! position, positions fill blocks in arrival order, and the audit finds nothing wrong.

mod common;

use std::collections::HashMap;

use common::*;
use proptest::prelude::*;

/// Field names fix their kind across tables, so random workloads never conflict.
fn value(kind: usize) -> BoxedStrategy<Val> {
    match kind {
        0 => prop_oneof![
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
            Just(-0.0),
            Just(0.1)
        ]
        .prop_map(Val::F64)
        .boxed(),
        1 => any::<i64>().prop_map(Val::I64).boxed(),
        2 => any::<u64>().prop_map(Val::U64).boxed(),
        3 => any::<bool>().prop_map(Val::Bool).boxed(),
        _ => "[a-z \"\\\\,=é✓]{0,8}".prop_map(Val::Str).boxed(),
    }
}

const FIELDS: [&str; 5] = ["f", "i", "u", "b", "s"];

fn point() -> impl Strategy<Value = Point> {
    (
        0..3usize,
        "[a-z0-9 ,=\\\\]{1,6}",
        proptest::option::of(prop_oneof![Just("north"), Just("south"), Just("a b")]),
        // Field subset (non-empty) with values.
        (1u8..32).prop_flat_map(|mask| {
            let picked: Vec<usize> = (0..5).filter(|k| mask & (1 << k) != 0).collect();
            picked
                .into_iter()
                .map(|k| value(k).prop_map(move |v| (k, v)))
                .collect::<Vec<_>>()
        }),
        proptest::option::of(-1_000_000_000_000i64..1_000_000_000_000),
    )
        .prop_map(|(table, host, region, fields, time)| {
            let mut p = Point::new(["alpha", "beta", "gamma"][table]).tag("host", &host);
            if let Some(r) = region {
                p = p.tag("region", r);
            }
            for (k, v) in fields {
                p = p.field(FIELDS[k], v);
            }
            p.time = time;
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn stored_rows_equal_written_rows(
        requests in proptest::collection::vec(proptest::collection::vec(point(), 1..30), 1..5),
        block_rows in 1usize..20,
        shards in 1usize..=3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Content, not power-loss durability, is the property: skip fsync to stay fast.
        let mut cfg = config(dir.path(), shards, block_rows);
        cfg.unsafe_no_sync = true;
        let engine = open(cfg);
        let mut receipts = Vec::new();
        let mut written = Vec::new();
        for req in &requests {
            let entries = write(&engine, req);
            for (e, p) in entries.iter().zip(req) {
                prop_assert_eq!(&e.tx_id, &expected_tx_id(e, &p.encoding()));
            }
            receipts.extend(entries);
            written.extend(req.iter().map(Point::encoding));
        }
        prop_assert!(engine.flush().is_some());
        engine.shutdown();
        drop(engine);

        let stored = ledger(dir.path());
        written.sort();
        prop_assert_eq!(encodings(&stored), written);
        for e in &receipts {
            let row = stored.get(&e.tx_id);
            prop_assert!(row.is_some(), "receipt tx_id {} not stored", e.tx_id);
            let row = row.unwrap();
            prop_assert_eq!((&row.branch, row.height, row.index), (&e.branch, e.height, e.index));
        }
        assert_consecutive_positions(&receipts, block_rows, &HashMap::new());
        let report = audit_ok(dir.path());
        prop_assert_eq!(report.rows_checked, stored.len() as u64);
        prop_assert_eq!(report.blocks_pending, 0);
    }
}

//! JSON-LD contexts in block headers: a block carries `H(context)` of its table at sealing; a
//! context set later changes the blocks sealed after it, never the ones before; it survives a
//! restart and a crash (blocks rebuilt from the WAL hash as before); audit finds each one.

mod common;

use std::path::Path;

use annals_engine::jsonld::{context_hash, context_path, default_context};
use annals_format::hash::Hash;
use annals_storage::branch_log::BranchLog;
use common::*;

const BLOCK_ROWS: usize = 4;
const CTX: &[u8] = br#"{"@context": {"sosa": "http://www.w3.org/ns/sosa/", "Observation": "sosa:Observation", "celsius": "urn:example:celsius"}}"#;

fn points(from: i64, n: i64) -> Vec<Point> {
    (from..from + n)
        .map(|t| {
            Point::new("temp")
                .tag("host", "h1")
                .field("celsius", Val::F64(t as f64))
                .at(t)
        })
        .collect()
}

/// The `context` of every block in the (single) branch log of a stopped data directory.
fn header_contexts(dir: &Path) -> Vec<Hash> {
    let branches = branch_dirs(dir);
    assert_eq!(branches.len(), 1, "one shard, one table: one branch");
    let (id, path) = &branches[0];
    let log = BranchLog::open_read_only(path, *id).unwrap();
    (0..log.size())
        .map(|h| log.header(h).unwrap().0.context)
        .collect()
}

#[test]
fn blocks_sealed_after_a_context_is_set_carry_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("{DB}/temp");
    let default = context_hash(default_context().as_bytes());
    let new = context_hash(CTX);

    let engine = open(config(dir.path(), 1, BLOCK_ROWS));
    write(&engine, &points(0, BLOCK_ROWS as i64)); // block 0: full, sealed with the default
    write(&engine, &points(10, 2)); // block 1: open
    let t = engine.catalog().set_context(&table, CTX).unwrap();
    assert_eq!(t.context_hash, new);
    write(&engine, &points(20, 2)); // block 1 fills and is sealed now: the new context
    write(&engine, &points(30, 1)); // block 2: open until the flush
    engine.flush();
    engine.shutdown();
    drop(engine);
    assert_eq!(header_contexts(dir.path()), vec![default, new, new]);
    assert_eq!(std::fs::read(context_path(dir.path(), &new)).unwrap(), CTX);
    let r = audit_ok(dir.path());
    assert_eq!(r.contexts_checked, 2);

    // A restart keeps the table's context; an invalid one is refused and changes nothing.
    let engine = open(config(dir.path(), 1, BLOCK_ROWS));
    let t = engine.catalog().table(&table).unwrap();
    assert_eq!((t.context_hash, t.context.as_bytes()), (new, CTX));
    let err = engine
        .catalog()
        .set_context(&table, b"{\"@context\": 1}")
        .unwrap_err();
    assert!(err.to_string().contains("\"@context\" must be"), "{err}");
    write(&engine, &points(40, BLOCK_ROWS as i64)); // block 3: sealed with the new context
                                                    // Back to the default: later blocks name it again, earlier ones keep theirs.
    engine
        .catalog()
        .set_context(&table, default_context().as_bytes())
        .unwrap();
    // A crash image while block 3 is only in the WAL and an unfinished block file (files hold
    // 12 rows): rebuilt at the next open, it must hash as logged, so it must take its context
    // from its seal record, not from the catalog (which now says default).
    std::thread::sleep(std::time::Duration::from_millis(500)); // let the sealer go idle
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    write(&engine, &points(50, BLOCK_ROWS as i64)); // block 4: the default again
    engine.shutdown();
    drop(engine);
    assert_eq!(
        header_contexts(dir.path()),
        vec![default, new, new, new, default]
    );
    audit_ok(dir.path());

    let engine = open(config(image.path(), 1, BLOCK_ROWS));
    assert!(
        engine.recovery().blocks_resealed > 0,
        "{:?}",
        engine.recovery()
    );
    engine.shutdown();
    drop(engine);
    assert_eq!(header_contexts(image.path()), vec![default, new, new, new]);
    audit_ok(image.path());
}

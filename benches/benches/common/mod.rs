//! Inputs shared by the in-process benchmarks: request bodies cut from the TSBS `iot` stream,
//! exactly as `annals-bench load` would send them.

#![allow(dead_code)] // each bench target uses a different subset

use std::time::Duration;

use annals_bench::tsbs::IotConfig;
use annals_engine::catalog::Catalog;
use annals_engine::prepare::{prepare, Chunk};
use annals_engine::PrepareOptions;
use annals_lp::ParseOptions;

/// Lines per request body, as `annals-bench load --batch-lines 5000`.
pub(crate) const BODY_LINES: usize = 5000;
/// Database every bench writes to.
pub(crate) const DB: &str = "bench";

/// The TSBS `iot` workload the README describes (100 trucks, seed 1, TSBS irregularities),
/// cut into bodies of `lines` lines; the first `count` bodies.
pub(crate) fn iot_bodies(lines: usize, count: usize) -> Vec<Vec<u8>> {
    let cfg = IotConfig::new(100, Duration::from_secs(24 * 3600), 1).expect("valid scale");
    let bodies: Vec<Vec<u8>> = cfg.batches(lines).take(count).map(|b| b.body).collect();
    assert_eq!(
        bodies.len(),
        count,
        "the workload has {count} bodies of {lines} lines"
    );
    bodies
}

/// One body of [`BODY_LINES`] lines: the first request of the stream.
pub(crate) fn iot_body() -> Vec<u8> {
    iot_bodies(BODY_LINES, 1).pop().expect("one body")
}

/// Lines in a body (every generated line ends in `\n`).
pub(crate) fn lines_in(body: &[u8]) -> u64 {
    body.iter().filter(|&&b| b == b'\n').count() as u64
}

/// What the HTTP layer passes for a plain `/write?precision=ns` request.
pub(crate) fn prepare_options() -> PrepareOptions {
    PrepareOptions {
        parse: ParseOptions::default(),
        accept_partial: false,
    }
}

/// Every chunk of the first `bodies` bodies of `lines` lines, prepared as line protocol for
/// `shards` shards into one fresh catalog, each with its shard.
pub(crate) fn prepared_chunks(bodies: usize, lines: usize, shards: usize) -> Vec<(usize, Chunk)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = Catalog::open(dir.path()).expect("empty catalog opens");
    let opts = prepare_options();
    let mut chunks = Vec::new();
    for body in iot_bodies(lines, bodies) {
        let prepared = prepare(&catalog, shards, DB, &body, &opts).expect("body prepares");
        for part in prepared.parts {
            chunks.extend(part.chunks.into_iter().map(|c| (part.shard, c)));
        }
    }
    chunks
}

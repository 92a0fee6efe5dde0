//! Helpers of the in-process query tests: an engine with small blocks and files, writes that
//! wait for their acknowledgement, and queries printed as tables.

use std::sync::Arc;
use std::time::Duration;

use annals_engine::{Engine, EngineConfig, PrepareOptions, SystemClock};
use annals_query::{QueryRequest, QueryService};
use arrow::util::pretty::pretty_format_batches;

/// Two shards, blocks of `block_rows` rows, files of `file_rows`; nothing sealed or
/// checkpointed by age.
pub(crate) fn engine(dir: &std::path::Path, block_rows: usize, file_rows: u64) -> Arc<Engine> {
    let mut c = EngineConfig::new(dir);
    c.shards = 2;
    c.block_rows = block_rows;
    c.block_age = Duration::from_secs(3600);
    c.file_age = Duration::from_secs(3600);
    c.checkpoint_interval = Duration::from_secs(3600);
    c.file_rows = file_rows;
    Arc::new(Engine::open(c, Arc::new(SystemClock)).unwrap())
}

/// Writes line protocol into database `db` and waits until it is acknowledged.
pub(crate) async fn write(e: &Engine, body: &str) {
    let p = e
        .prepare("db", body.as_bytes(), &PrepareOptions::default())
        .unwrap();
    e.submit(p).unwrap().wait().await.unwrap();
}

/// Runs `sql` on database `db`; the answer as a pretty table.
pub(crate) async fn q(s: &QueryService, sql: &str) -> String {
    let out = s
        .sql(&QueryRequest {
            db: "db".into(),
            sql: sql.into(),
            as_of_epoch: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&out.collect().await.unwrap())
        .unwrap()
        .to_string()
}

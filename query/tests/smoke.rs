//! End-to-end SQL over an in-process engine: memtable and sealed blocks, pruning, time travel.

use std::sync::Arc;
use std::time::Duration;

use annals_engine::{Engine, EngineConfig, PrepareOptions, SystemClock};
use annals_query::{QueryConfig, QueryRequest, QueryService};
use arrow::util::pretty::pretty_format_batches;

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let mut c = EngineConfig::new(dir);
    c.shards = 2;
    c.block_rows = 4;
    c.block_age = Duration::from_secs(3600);
    c.file_age = Duration::from_secs(3600);
    c.checkpoint_interval = Duration::from_secs(3600);
    c.file_rows = 8;
    Arc::new(Engine::open(c, Arc::new(SystemClock)).unwrap())
}

async fn write(e: &Engine, body: &str) {
    let p = e.prepare("db", body.as_bytes(), &PrepareOptions::default()).unwrap();
    e.submit(p).unwrap().wait().await.unwrap();
}

async fn q(s: &QueryService, sql: &str) -> String {
    let out = s
        .sql(&QueryRequest { db: "db".into(), sql: sql.into(), as_of_epoch: None })
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&out.collect().await.unwrap()).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_visible_from_memory_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
    let mut body = String::new();
    for i in 0..30 {
        body.push_str(&format!("m,host=h{} v={i}i {}\n", i % 3, 1_000_000_000i64 * (i + 1)));
    }
    write(&e, &body).await;
    println!("{}", q(&s, "SELECT host, count(*), sum(v) FROM m GROUP BY host ORDER BY host").await);
    println!("{}", q(&s, "SELECT count(*) FROM m WHERE time >= to_timestamp(10) AND time < to_timestamp(20)").await);
    println!("{}", q(&s, "EXPLAIN ANALYZE SELECT count(*) FROM m WHERE time >= to_timestamp(10) AND time < to_timestamp(20)").await);
    println!("{}", q(&s, "EXPLAIN SELECT v FROM m WHERE host = 'h1'").await);
    println!("{}", q(&s, "SELECT * FROM ledger('m') ORDER BY time LIMIT 3").await);
    println!("{}", q(&s, "SELECT table_name, branch, height, state, row_count FROM system.blocks ORDER BY branch, height").await);
    let cp = e.flush().unwrap();
    write(&e, "m,host=h9 v=1i 99000000000\n").await;
    println!("{}", q(&s, &format!("SET annals.as_of_epoch = {cp}; SELECT count(*) FROM m")).await);
    println!("{}", q(&s, "SELECT count(*) FROM m").await);
    println!("{}", q(&s, "SELECT * FROM system.checkpoints").await);
    println!("{}", q(&s, "SELECT id, state, query FROM system.queries").await);
    e.shutdown();
}

//! `system.*` tables: the ledger's own structure, built fresh for every query.

use std::sync::Arc;

use annals_engine::engine::Engine;
use annals_format::hash::to_hex;
use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, StringArray, TimestampNanosecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::registry::QueryRegistry;

pub const SCHEMA: &str = "system";
const NAMES: [&str; 5] = ["tables", "blocks", "branches", "checkpoints", "queries"];

/// The `system` schema.
#[derive(Debug)]
pub struct SystemSchema {
    engine: Arc<Engine>,
    registry: Arc<QueryRegistry>,
}

impl SystemSchema {
    pub fn new(engine: Arc<Engine>, registry: Arc<QueryRegistry>) -> Self {
        Self { engine, registry }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        NAMES.iter().map(|s| s.to_string()).collect()
    }
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let which = match name {
            "tables" => Which::Tables,
            "blocks" => Which::Blocks,
            "branches" => Which::Branches,
            "checkpoints" => Which::Checkpoints,
            "queries" => Which::Queries,
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(SystemTable {
            which,
            engine: self.engine.clone(),
            registry: self.registry.clone(),
        })))
    }
    fn table_exist(&self, name: &str) -> bool {
        NAMES.contains(&name)
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Tables,
    Blocks,
    Branches,
    Checkpoints,
    Queries,
}

#[derive(Debug)]
struct SystemTable {
    which: Which,
    engine: Arc<Engine>,
    registry: Arc<QueryRegistry>,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, None)
}

fn f(name: &str, t: DataType, nullable: bool) -> Field {
    Field::new(name, t, nullable)
}

impl SystemTable {
    fn schema_of(which: Which) -> SchemaRef {
        use DataType::*;
        let fields = match which {
            Which::Tables => vec![
                f("db", Utf8, false),
                f("table_name", Utf8, false),
                f("column_name", Utf8, false),
                f("ordinal", UInt32, false),
                f("kind", Utf8, false),
                f("data_type", Utf8, false),
                f("context_hash", Utf8, false),
            ],
            Which::Blocks => vec![
                f("db", Utf8, false),
                f("table_name", Utf8, false),
                f("branch", Utf8, false),
                f("shard", UInt32, false),
                f("height", UInt64, false),
                f("state", Utf8, false),
                f("row_count", UInt64, false),
                f("time_min", ts(), true),
                f("time_max", ts(), true),
                f("prev", Utf8, true),
                f("rows_root", Utf8, true),
                f("context", Utf8, true),
                f("sealed_at", ts(), true),
                f("block_hash", Utf8, true),
                f("signature", Utf8, true),
                f("file", Utf8, true),
                f("row_group", UInt32, true),
                f("has_tag_filter", Boolean, false),
            ],
            Which::Branches => vec![
                f("branch", Utf8, false),
                f("db", Utf8, false),
                f("table_name", Utf8, false),
                f("shard", UInt32, false),
                f("size", UInt64, false),
                f("root", Utf8, false),
            ],
            Which::Checkpoints => vec![
                f("epoch", UInt64, false),
                f("hash", Utf8, false),
                f("prev", Utf8, false),
                f("branches_root", Utf8, false),
                f("branch_count", UInt32, false),
                f("time", ts(), false),
                f("validators", Utf8, false),
                f("signers", Utf8, false),
                f("signatures", UInt32, false),
            ],
            Which::Queries => vec![
                f("id", UInt64, false),
                f("db", Utf8, false),
                f("query", Utf8, false),
                f("state", Utf8, false),
                f("started", ts(), false),
                f("duration_ms", Int64, true),
                f("rows", UInt64, true),
                f("error", Utf8, true),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    fn batch(&self) -> Result<RecordBatch> {
        let schema = Self::schema_of(self.which);
        let cols: Vec<ArrayRef> = match self.which {
            Which::Tables => {
                let mut c = Cols::default();
                for t in self.engine.catalog().tables() {
                    let (db, name) = split(&t.name);
                    for (i, field) in t.arrow.fields().iter().enumerate() {
                        c.s[0].push(Some(db.to_string()));
                        c.s[1].push(Some(name.to_string()));
                        c.s[2].push(Some(field.name().clone()));
                        c.u32[0].push(Some(i as u32));
                        let kind = if i == 0 {
                            "time".to_string()
                        } else {
                            format!("{:?}", t.columns[i - 1].1).to_lowercase()
                        };
                        c.s[3].push(Some(kind));
                        c.s[4].push(Some(field.data_type().to_string()));
                        c.s[5].push(Some(to_hex(&t.context_hash)));
                    }
                }
                vec![
                    c.str(0),
                    c.str(1),
                    c.str(2),
                    c.u32(0),
                    c.str(3),
                    c.str(4),
                    c.str(5),
                ]
            }
            Which::Blocks => {
                let snap = self.engine.snapshot();
                let mut c = Cols::default();
                let mut tag = Vec::new();
                for file in snap.files() {
                    for b in &file.blocks {
                        let h = &b.header;
                        let (db, name) = split(&h.table);
                        c.s[0].push(Some(db.into()));
                        c.s[1].push(Some(name.into()));
                        c.s[2].push(Some(to_hex(&h.branch)));
                        c.u32[0].push(Some(file.shard as u32));
                        c.u64[0].push(Some(h.height));
                        c.s[3].push(Some("file".into()));
                        c.u64[1].push(Some(h.row_count as u64));
                        c.ts[0].push(Some(h.time_min));
                        c.ts[1].push(Some(h.time_max));
                        c.s[4].push(Some(to_hex(&h.prev)));
                        c.s[5].push(Some(to_hex(&h.rows_root)));
                        c.s[6].push(Some(to_hex(&h.context)));
                        c.ts[2].push(Some(h.sealed_at));
                        c.s[7].push(Some(to_hex(&h.hash())));
                        c.s[8].push(Some(to_hex(&b.signature)));
                        c.s[9].push(Some(file.path.display().to_string()));
                        c.u32[1].push(Some(b.row_group as u32));
                        tag.push(b.tags.is_some());
                    }
                }
                for m in snap.mem_blocks() {
                    let (db, name) = split(&m.table);
                    let chunks = m.chunks();
                    let rows: usize = chunks.iter().map(|c| c.num_rows()).sum();
                    let (lo, hi) = crate::table::mem_time_bounds(&chunks);
                    c.s[0].push(Some(db.into()));
                    c.s[1].push(Some(name.into()));
                    c.s[2].push(Some(to_hex(&m.branch)));
                    c.u32[0].push(Some(m.shard as u32));
                    c.u64[0].push(Some(m.height));
                    c.s[3].push(Some("memory".into()));
                    c.u64[1].push(Some(rows as u64));
                    c.ts[0].push(lo);
                    c.ts[1].push(hi);
                    for i in 4..=9 {
                        c.s[i].push(None);
                    }
                    c.ts[2].push(None);
                    c.u32[1].push(None);
                    tag.push(false);
                }
                vec![
                    c.str(0),
                    c.str(1),
                    c.str(2),
                    c.u32(0),
                    c.u64(0),
                    c.str(3),
                    c.u64(1),
                    c.ts(0),
                    c.ts(1),
                    c.str(4),
                    c.str(5),
                    c.str(6),
                    c.ts(2),
                    c.str(7),
                    c.str(8),
                    c.str(9),
                    c.u32(1),
                    Arc::new(BooleanArray::from(tag)),
                ]
            }
            Which::Branches => {
                let mut c = Cols::default();
                for (b, h) in self.engine.branch_heads() {
                    let (db, name) = split(&h.table);
                    c.s[0].push(Some(to_hex(&b)));
                    c.s[1].push(Some(db.into()));
                    c.s[2].push(Some(name.into()));
                    c.u32[0].push(Some(h.shard as u32));
                    c.u64[0].push(Some(h.size));
                    c.s[3].push(Some(to_hex(&h.root)));
                }
                vec![c.str(0), c.str(1), c.str(2), c.u32(0), c.u64(0), c.str(3)]
            }
            Which::Checkpoints => {
                let mut c = Cols::default();
                for cp in self.engine.checkpoints() {
                    let h = &cp.header;
                    c.u64[0].push(Some(h.epoch));
                    c.s[0].push(Some(to_hex(&cp.hash())));
                    c.s[1].push(Some(to_hex(&h.prev)));
                    c.s[2].push(Some(to_hex(&h.branches_root)));
                    c.u32[0].push(Some(h.branch_count));
                    c.ts[0].push(Some(h.time));
                    c.s[3].push(Some(to_hex(&h.validators)));
                    let signers: Vec<String> =
                        cp.signatures.iter().map(|(k, _)| to_hex(k)).collect();
                    c.s[4].push(Some(signers.join(",")));
                    c.u32[1].push(Some(cp.signatures.len() as u32));
                }
                vec![
                    c.u64(0),
                    c.str(0),
                    c.str(1),
                    c.str(2),
                    c.u32(0),
                    c.ts(0),
                    c.str(3),
                    c.str(4),
                    c.u32(1),
                ]
            }
            Which::Queries => {
                let mut c = Cols::default();
                let mut dur = Vec::new();
                for q in self.registry.list() {
                    c.u64[0].push(Some(q.id));
                    c.s[0].push(Some(q.db));
                    c.s[1].push(Some(q.sql));
                    c.s[2].push(Some(q.state.to_string()));
                    c.ts[0].push(Some(q.started_ns));
                    dur.push(Some(q.duration_ms));
                    c.u64[1].push(q.rows);
                    c.s[3].push(q.error);
                }
                vec![
                    c.u64(0),
                    c.str(0),
                    c.str(1),
                    c.str(2),
                    c.ts(0),
                    Arc::new(Int64Array::from(dur)),
                    c.u64(1),
                    c.str(3),
                ]
            }
        };
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

/// `db/measurement` → (`db`, `measurement`).
pub fn split(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or(("", name))
}

#[derive(Default)]
struct Cols {
    s: [Vec<Option<String>>; 10],
    u32: [Vec<Option<u32>>; 2],
    u64: [Vec<Option<u64>>; 2],
    ts: [Vec<Option<i64>>; 3],
}

impl Cols {
    fn str(&mut self, i: usize) -> ArrayRef {
        Arc::new(StringArray::from(std::mem::take(&mut self.s[i])))
    }
    fn u32(&mut self, i: usize) -> ArrayRef {
        Arc::new(UInt32Array::from(std::mem::take(&mut self.u32[i])))
    }
    fn u64(&mut self, i: usize) -> ArrayRef {
        Arc::new(UInt64Array::from(std::mem::take(&mut self.u64[i])))
    }
    fn ts(&mut self, i: usize) -> ArrayRef {
        Arc::new(TimestampNanosecondArray::from(std::mem::take(
            &mut self.ts[i],
        )))
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Self::schema_of(self.which)
    }
    fn table_type(&self) -> TableType {
        TableType::View
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.batch()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema(),
            projection.cloned(),
        )?)
    }
}

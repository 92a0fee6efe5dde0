//! A measurement as a DataFusion table: sealed blocks (Parquet row groups) and blocks still in
//! memory, pruned by block statistics before any row is read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use annals_engine::catalog::TableSchema;
use annals_engine::engine::Engine;
use annals_engine::view::{BlockFile, MemBlock, Snapshot};
use annals_format::block::BranchId;
use arrow::array::{Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;

use crate::options::AnnalsOptions;
use crate::scan::{LedgerScanExec, OutCol, ScanFilter, ScanStats, Unit};
use annals_storage::tag_filter::TagFilter;

/// Ledger columns: present in `ledger('<table>')`, absent from the plain table.
pub const TX_ID: &str = "_tx_id";
pub const BRANCH: &str = "_branch";
pub const HEIGHT: &str = "_height";
pub const INDEX: &str = "_index";

/// One measurement of one database.
#[derive(Debug)]
pub struct LedgerTable {
    engine: Arc<Engine>,
    table: Arc<TableSchema>,
    schema: SchemaRef,
    ledger_columns: bool,
}

impl LedgerTable {
    /// `ledger_columns`: also expose `_tx_id`, `_branch`, `_height`, `_index`.
    pub fn new(engine: Arc<Engine>, table: Arc<TableSchema>, ledger_columns: bool) -> Self {
        let mut fields: Vec<Arc<Field>> = table.arrow.fields().iter().cloned().collect();
        if ledger_columns {
            fields.push(Arc::new(Field::new(TX_ID, DataType::Utf8, false)));
            fields.push(Arc::new(Field::new(BRANCH, DataType::Utf8, false)));
            fields.push(Arc::new(Field::new(HEIGHT, DataType::UInt64, false)));
            fields.push(Arc::new(Field::new(INDEX, DataType::UInt32, false)));
        }
        Self {
            engine,
            schema: Arc::new(Schema::new(fields)),
            table,
            ledger_columns,
        }
    }
    /// The measurement's schema (and JSON-LD context) this table reads.
    pub fn table_schema(&self) -> &Arc<TableSchema> {
        &self.table
    }

    /// Whether this is `ledger('m')` (with `_tx_id`, `_branch`, `_height`, `_index`).
    pub fn has_ledger_columns(&self) -> bool {
        self.ledger_columns
    }
}

/// Which blocks of each branch a query may see.
#[derive(Debug, Clone)]
pub enum Visibility {
    /// Everything acknowledged.
    Latest,
    /// As of a checkpoint: a branch's blocks below the size the checkpoint names.
    AsOf(HashMap<BranchId, u64>),
}

impl Visibility {
    pub fn for_session(engine: &Engine, state: &dyn Session) -> Result<Self> {
        let opts = state
            .config()
            .options()
            .extensions
            .get::<AnnalsOptions>()
            .cloned()
            .unwrap_or_default();
        match opts.as_of_epoch {
            None => Ok(Visibility::Latest),
            Some(epoch) => {
                let cp = engine.checkpoint(epoch).ok_or_else(|| {
                    let latest = engine.latest_checkpoint().map(|c| c.header.epoch);
                    DataFusionError::Plan(match latest {
                        Some(l) => format!("no checkpoint with epoch {epoch} (latest is {l})"),
                        None => format!("no checkpoint with epoch {epoch}: none written yet"),
                    })
                })?;
                Ok(Visibility::AsOf(
                    cp.entries.iter().map(|e| (e.branch, e.size)).collect(),
                ))
            }
        }
    }

    pub fn sees(&self, branch: &BranchId, height: u64) -> bool {
        match self {
            Visibility::Latest => true,
            Visibility::AsOf(m) => m.get(branch).is_some_and(|&size| height < size),
        }
    }

    pub fn includes_open(&self) -> bool {
        matches!(self, Visibility::Latest)
    }
}

/// The blocks of `table` that `vis` lets a query see, in (branch, height) order.
pub fn units_of(snapshot: &Snapshot, table: &str, vis: &Visibility) -> Vec<Unit> {
    let mut units = Vec::new();
    for f in snapshot.files().filter(|f| f.table == table) {
        for (i, b) in f.blocks.iter().enumerate() {
            if vis.sees(&f.branch, b.header.height) {
                units.push(Unit::File {
                    file: f.clone(),
                    block: i,
                });
            }
        }
    }
    for m in snapshot.mem_blocks().filter(|m| m.table == table) {
        if vis.sees(&m.branch, m.height) {
            let chunks = m.chunks();
            if chunks.iter().any(|c| c.num_rows() > 0) {
                units.push(Unit::Mem {
                    block: m.clone(),
                    chunks,
                });
            }
        }
    }
    units.sort_by_key(|u| (u.branch(), u.height()));
    units
}

#[async_trait]
impl TableProvider for LedgerTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to skip blocks; DataFusion still applies every filter to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let vis = Visibility::for_session(&self.engine, state)?;
        let snapshot = self.engine.snapshot();
        let mut units = units_of(&snapshot, &self.table.name, &vis);
        let total = units.len();

        // Block pruning over the data columns' filters (ledger columns carry no statistics).
        let data_schema = self.table.arrow.clone();
        let data_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| data_schema.field_with_name(&c.name).is_ok())
            })
            .cloned()
            .collect();
        let options = state.config().options().extensions.get::<AnnalsOptions>();
        let scan_filter = if options.is_none_or(|o| o.scan_filters) {
            conjunction(data_filters.iter().filter(|f| !f.is_volatile()).cloned())
        } else {
            None
        };
        if let (Some(pred), false) = (conjunction(data_filters), units.is_empty()) {
            let df_schema = DFSchema::try_from(data_schema.as_ref().clone())?;
            let phys = state.create_physical_expr(pred, &df_schema)?;
            let built = PruningPredicateBuilder::new()
                .with_file_schema(data_schema.clone())
                .try_build(phys);
            match built {
                Ok(pp) if !pp.always_true() => {
                    let stats = BlockStats::new(&units, &self.table);
                    let keep = pp.prune(&stats)?;
                    let mut k = keep.into_iter();
                    units.retain(|_| k.next().unwrap_or(true));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "no block pruning for these filters"),
            }
        }

        let out_fields: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let data_cols = data_schema.fields().len();
        let cols: Vec<OutCol> = out_fields
            .iter()
            .map(|&i| {
                if i < data_cols {
                    OutCol::Data(data_schema.field(i).name().clone())
                } else {
                    match self.schema.field(i).name().as_str() {
                        TX_ID => OutCol::TxId,
                        BRANCH => OutCol::Branch,
                        HEIGHT => OutCol::Height,
                        _ => OutCol::Index,
                    }
                }
            })
            .collect();
        debug_assert!(self.ledger_columns || cols.iter().all(|c| matches!(c, OutCol::Data(_))));
        let out_schema = Arc::new(self.schema.project(&out_fields)?);
        let stats = ScanStats {
            blocks_total: total,
            blocks_pruned: total - units.len(),
        };
        let partitions = state.config().target_partitions().max(1);
        let scan = LedgerScanExec::new(
            self.table.clone(),
            out_schema,
            cols,
            units,
            partitions,
            state.config().batch_size(),
            limit,
            stats,
        );
        // Evaluated in the scan as well as above it (see `crate::scan`).
        let mut scan = scan;
        if let Some(pred) = scan_filter {
            let df_schema = DFSchema::try_from(data_schema.as_ref().clone())?;
            match state
                .create_physical_expr(pred, &df_schema)
                .and_then(|e| ScanFilter::new(e, &data_schema))
            {
                Ok(Some(f)) => scan = scan.with_filter(f),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "filters left to DataFusion"),
            }
        }
        Ok(Arc::new(match vis {
            Visibility::Latest => scan.with_live(self.engine.clone()),
            Visibility::AsOf(_) => scan,
        }))
    }
}

/// Per-block statistics for [`PruningPredicate`]: exact time bounds from block headers (or the
/// rows, for blocks in memory), row counts, and tag membership from each block's tag filter.
struct BlockStats<'a> {
    units: &'a [Unit],
    table: &'a TableSchema,
}

impl<'a> BlockStats<'a> {
    fn new(units: &'a [Unit], table: &'a TableSchema) -> Self {
        Self { units, table }
    }

    fn time_bounds(&self) -> (Vec<Option<i64>>, Vec<Option<i64>>) {
        self.units
            .iter()
            .map(|u| match u {
                Unit::File { file, block } => {
                    let h = &file.blocks[*block].header;
                    (Some(h.time_min), Some(h.time_max))
                }
                Unit::Mem { chunks, .. } => mem_time_bounds(chunks),
            })
            .unzip()
    }
}

pub(crate) fn mem_time_bounds(
    chunks: &[arrow::record_batch::RecordBatch],
) -> (Option<i64>, Option<i64>) {
    let mut lo: Option<i64> = None;
    let mut hi: Option<i64> = None;
    for c in chunks {
        let Some(t) = c
            .column_by_name(annals_storage::block_file::TIME_COLUMN)
            .and_then(|a| a.as_any().downcast_ref::<TimestampNanosecondArray>())
        else {
            return (None, None);
        };
        if let Some(m) = arrow::compute::min(t) {
            lo = Some(lo.map_or(m, |l| l.min(m)));
        }
        if let Some(m) = arrow::compute::max(t) {
            hi = Some(hi.map_or(m, |h| h.max(m)));
        }
    }
    (lo, hi)
}

fn is_time(c: &Column) -> bool {
    c.name == annals_storage::block_file::TIME_COLUMN
}

impl PruningStatistics for BlockStats<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        is_time(column).then(|| {
            let (lo, _) = self.time_bounds();
            Arc::new(TimestampNanosecondArray::from(lo)) as ArrayRef
        })
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        is_time(column).then(|| {
            let (_, hi) = self.time_bounds();
            Arc::new(TimestampNanosecondArray::from(hi)) as ArrayRef
        })
    }

    fn num_containers(&self) -> usize {
        self.units.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        // Every row has a time.
        is_time(column)
            .then(|| Arc::new(UInt64Array::from(vec![0u64; self.units.len()])) as ArrayRef)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from(
            self.units
                .iter()
                .map(|u| u.rows() as u64)
                .collect::<Vec<_>>(),
        )))
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        let (_, kind) = self.table.column(&column.name)?;
        if kind != annals_format::row::Kind::Tag {
            return None;
        }
        let wanted: Vec<&str> = values
            .iter()
            .map(|v| match v {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => Some(s.as_str()),
                ScalarValue::Dictionary(_, inner) => match inner.as_ref() {
                    ScalarValue::Utf8(Some(s)) => Some(s.as_str()),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(
            self.units
                .iter()
                .map(|u| match u {
                    Unit::File { file, block } => {
                        let f: Option<&TagFilter> = file_tag_filter(file, *block);
                        match f {
                            // No listed value can be in the block: skip it.
                            Some(f) if !wanted.iter().any(|w| f.may_contain(&column.name, w)) => {
                                Some(false)
                            }
                            _ => None,
                        }
                    }
                    Unit::Mem { .. } => None,
                })
                .collect(),
        )
    }
}

fn file_tag_filter(file: &BlockFile, block: usize) -> Option<&TagFilter> {
    file.blocks[block].tags.as_ref()
}

#[allow(dead_code)]
fn _assert_send(_: &MemBlock) {}

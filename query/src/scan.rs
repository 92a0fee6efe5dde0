//! The scan of one measurement: blocks spread over partitions, each partition read on a
//! blocking thread (Parquet decoding is CPU work) and streamed back with bounded buffering.

use std::fmt;
use std::sync::Arc;

use annals_engine::catalog::TableSchema;
use annals_engine::engine::Engine;
use annals_engine::view::{BlockFile, MemBlock};
use annals_format::block::{tx_id, BranchId};
use annals_format::hash::{leaf_hash, to_hex};
use annals_storage::block_file::row_encodings;
use arrow::array::{new_null_array, ArrayRef, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;

/// Batches a partition may have decoded ahead of its consumer.
const READ_AHEAD: usize = 2;

/// One block to read.
#[derive(Debug, Clone)]
pub enum Unit {
    File {
        file: Arc<BlockFile>,
        block: usize,
    },
    /// A block in memory, with the chunks visible when the query was planned.
    Mem {
        block: Arc<MemBlock>,
        chunks: Vec<RecordBatch>,
    },
}

impl Unit {
    pub fn branch(&self) -> BranchId {
        match self {
            Unit::File { file, .. } => file.branch,
            Unit::Mem { block, .. } => block.branch,
        }
    }
    pub fn height(&self) -> u64 {
        match self {
            Unit::File { file, block } => file.blocks[*block].header.height,
            Unit::Mem { block, .. } => block.height,
        }
    }
    pub fn rows(&self) -> usize {
        match self {
            Unit::File { file, block } => file.blocks[*block].header.row_count as usize,
            Unit::Mem { chunks, .. } => chunks.iter().map(|c| c.num_rows()).sum(),
        }
    }
}

/// An output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutCol {
    Data(String),
    TxId,
    Branch,
    Height,
    Index,
}

/// Planning-time pruning figures, shown by `EXPLAIN` and `EXPLAIN ANALYZE`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanStats {
    pub blocks_total: usize,
    pub blocks_pruned: usize,
}

#[derive(Debug)]
struct Shared {
    table: Arc<TableSchema>,
    /// Set when the scan reads everything acknowledged (no `as_of_epoch`), so that the
    /// engine's last-value cache describes the same rows (see [`crate::from_cache`]).
    live: Option<Arc<Engine>>,
    schema: SchemaRef,
    cols: Vec<OutCol>,
    batch_size: usize,
    limit: Option<usize>,
}

/// Reads blocks of one measurement.
#[derive(Debug)]
pub struct LedgerScanExec {
    shared: Arc<Shared>,
    partitions: Vec<Vec<Unit>>,
    stats: ScanStats,
    metrics: ExecutionPlanMetricsSet,
    props: Arc<PlanProperties>,
}

impl LedgerScanExec {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: Arc<TableSchema>,
        schema: SchemaRef,
        cols: Vec<OutCol>,
        units: Vec<Unit>,
        target_partitions: usize,
        batch_size: usize,
        limit: Option<usize>,
        stats: ScanStats,
    ) -> Self {
        // Greedy balance by rows; a LIMIT without filters needs only the first blocks, so a
        // single partition reads them in order and stops early.
        let n = if limit.is_some() {
            1
        } else {
            target_partitions.min(units.len()).max(1)
        };
        let mut partitions: Vec<Vec<Unit>> = vec![Vec::new(); n];
        let mut load = vec![0usize; n];
        for u in units {
            let i = (0..n).min_by_key(|&i| load[i]).unwrap_or(0);
            load[i] += u.rows().max(1);
            partitions[i].push(u);
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let metrics = ExecutionPlanMetricsSet::new();
        MetricBuilder::new(&metrics)
            .global_counter("blocks_total")
            .add(stats.blocks_total);
        MetricBuilder::new(&metrics)
            .global_counter("blocks_pruned")
            .add(stats.blocks_pruned);
        Self {
            shared: Arc::new(Shared {
                table,
                live: None,
                schema,
                cols,
                batch_size: batch_size.max(1),
                limit,
            }),
            partitions,
            stats,
            metrics,
            props: Arc::new(props),
        }
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Reads everything acknowledged: the engine, when no `as_of_epoch` is set.
    pub fn with_live(mut self, engine: Arc<Engine>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("the scan's shared state is not handed out before execution")
            .live = Some(engine);
        self
    }

    /// The engine, when this scan reads everything acknowledged.
    pub fn live(&self) -> Option<&Arc<Engine>> {
        self.shared.live.as_ref()
    }

    pub fn table(&self) -> &Arc<TableSchema> {
        &self.shared.table
    }

    /// The output columns.
    pub fn columns(&self) -> &[OutCol] {
        &self.shared.cols
    }

    pub fn limit(&self) -> Option<usize> {
        self.shared.limit
    }
}

impl DisplayAs for LedgerScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols: Vec<String> = self
            .shared
            .cols
            .iter()
            .map(|c| match c {
                OutCol::Data(n) => n.clone(),
                OutCol::TxId => "_tx_id".into(),
                OutCol::Branch => "_branch".into(),
                OutCol::Height => "_height".into(),
                OutCol::Index => "_index".into(),
            })
            .collect();
        write!(
            f,
            "LedgerScanExec: table={}, blocks={} of {} ({} pruned), partitions={}, projection=[{}]",
            self.shared.table.name,
            self.stats.blocks_total - self.stats.blocks_pruned,
            self.stats.blocks_total,
            self.stats.blocks_pruned,
            self.partitions.len(),
            cols.join(", ")
        )?;
        if let Some(l) = self.shared.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LedgerScanExec {
    fn name(&self) -> &str {
        "LedgerScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "LedgerScanExec has no children".into(),
            ))
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let units = self
            .partitions
            .get(partition)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("no partition {partition}")))?;
        let shared = self.shared.clone();
        let rows_read = MetricBuilder::new(&self.metrics).counter("rows_read", partition);
        let blocks_read = MetricBuilder::new(&self.metrics).counter("blocks_read", partition);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut left = shared.limit;
            for u in units {
                if left == Some(0) {
                    break;
                }
                blocks_read.add(1);
                let sent = read_unit(&shared, &u, &mut left, &rows_read, &tx);
                if !sent {
                    break;
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
                .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.shared.schema.clone(),
            stream,
        )))
    }
}

/// Reads one block and sends its batches; false when the consumer is gone or an error was sent.
fn read_unit(
    shared: &Shared,
    unit: &Unit,
    left: &mut Option<usize>,
    rows_read: &Count,
    tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
) -> bool {
    let need_all = shared.cols.contains(&OutCol::TxId);
    let data_cols: Vec<&str> = shared
        .cols
        .iter()
        .filter_map(|c| match c {
            OutCol::Data(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let mut emit = |batch: RecordBatch, first_index: usize| -> bool {
        let mut batch = batch;
        if let Some(l) = left {
            if *l == 0 {
                return false;
            }
            if batch.num_rows() > *l {
                batch = batch.slice(0, *l);
            }
            *l -= batch.num_rows();
        }
        rows_read.add(batch.num_rows());
        let out = output_batch(shared, unit, &batch, first_index);
        let failed = out.is_err();
        tx.blocking_send(out).is_ok() && !failed
    };
    match unit {
        Unit::Mem { chunks, .. } => {
            let mut index = 0;
            for c in chunks {
                let n = c.num_rows();
                let mut off = 0;
                while off < n {
                    let take = (n - off).min(shared.batch_size);
                    if !emit(c.slice(off, take), index + off) {
                        return false;
                    }
                    off += take;
                }
                index += n;
            }
            true
        }
        Unit::File { file, block } => {
            let b = &file.blocks[*block];
            if data_cols.is_empty() && !need_all {
                // Nothing to decode: the header knows the row count.
                let n = b.header.row_count as usize;
                let mut off = 0;
                while off < n {
                    let take = (n - off).min(shared.batch_size);
                    let empty = RecordBatch::try_new_with_options(
                        Arc::new(arrow::datatypes::Schema::empty()),
                        vec![],
                        &RecordBatchOptions::new().with_row_count(Some(take)),
                    )
                    .expect("an empty batch with a row count");
                    if !emit(empty, off) {
                        return false;
                    }
                    off += take;
                }
                return true;
            }
            let reader = file.page_reader().and_then(|pages| {
                pages.row_group_reader(
                    b.row_group,
                    (!need_all).then_some(&data_cols[..]),
                    shared.batch_size,
                )
            });
            let reader = match reader {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(read_error(file, b.header.height, e.to_string())));
                    return false;
                }
            };
            let mut index = 0;
            for batch in reader {
                match batch {
                    Ok(batch) => {
                        let n = batch.num_rows();
                        if !emit(batch, index) {
                            return false;
                        }
                        index += n;
                    }
                    Err(e) => {
                        let _ =
                            tx.blocking_send(Err(read_error(file, b.header.height, e.to_string())));
                        return false;
                    }
                }
            }
            true
        }
    }
}

fn read_error(file: &BlockFile, height: u64, e: String) -> DataFusionError {
    DataFusionError::Execution(format!(
        "reading block {height} from {}: {e}",
        file.path.display()
    ))
}

/// Builds the output columns from a batch of a block (in the block's own schema, which may
/// lack columns added later: those are null) starting at row `first_index` of the block.
fn output_batch(
    shared: &Shared,
    unit: &Unit,
    batch: &RecordBatch,
    first_index: usize,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let branch = unit.branch();
    let height = unit.height();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(shared.cols.len());
    for (c, field) in shared.cols.iter().zip(shared.schema.fields()) {
        let a: ArrayRef = match c {
            OutCol::Data(name) => match batch.column_by_name(name) {
                Some(a) if a.data_type() == field.data_type() => a.clone(),
                Some(a) => arrow::compute::cast(a, field.data_type())?,
                None => new_null_array(field.data_type(), n),
            },
            OutCol::Branch => Arc::new(StringArray::from(vec![to_hex(&branch); n])),
            OutCol::Height => Arc::new(UInt64Array::from(vec![height; n])),
            OutCol::Index => Arc::new(UInt32Array::from_iter_values(
                (first_index..first_index + n).map(|i| i as u32),
            )),
            OutCol::TxId => {
                let enc = row_encodings(&shared.table.name, batch)
                    .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                Arc::new(StringArray::from_iter_values(enc.iter().enumerate().map(
                    |(i, e)| {
                        to_hex(&tx_id(
                            &branch,
                            height,
                            (first_index + i) as u32,
                            &leaf_hash(e),
                        ))
                    },
                )))
            }
        };
        cols.push(a);
    }
    Ok(RecordBatch::try_new_with_options(
        shared.schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

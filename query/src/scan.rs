//! The scan of one measurement: blocks spread over partitions, each partition read on a
//! blocking thread (Parquet decoding is CPU work) and streamed back with bounded buffering.
//!
//! A scan may carry a [`ScanFilter`] (the query's filters on data columns). A block file is then
//! read in two passes: the filter's columns for every row, then the other columns only for the
//! rows that passed, skipped in the encoded pages rather than decoded and thrown away. For a
//! selective filter on a field (`fuel_state < 0.1`) most of the decoding is skipped. The
//! filter stays in the plan above the scan too, so the scan's filtering is an optimization
//! only: it is never applied when the ledger columns are read, as `_index` and `_tx_id` number
//! every row of a block.

use std::fmt;
use std::sync::Arc;

use annals_engine::catalog::TableSchema;
use annals_engine::engine::Engine;
use annals_engine::view::{BlockFile, FileBlock, MemBlock};
use annals_format::block::{tx_id, BranchId};
use annals_format::hash::{leaf_hash, to_hex};
use annals_storage::block_file::row_encodings;
use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, StringArray, UInt32Array, UInt64Array,
};
use arrow::compute::{concat_batches, filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::utils::{collect_columns, reassign_expr_columns};
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
use parquet::arrow::arrow_reader::RowSelection;

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

/// A filter the scan evaluates itself (see the module docs).
#[derive(Debug, Clone)]
pub struct ScanFilter {
    /// The predicate, over `schema`.
    expr: Arc<dyn PhysicalExpr>,
    /// The columns the predicate reads, in the table's order.
    schema: SchemaRef,
}

impl ScanFilter {
    /// `expr`, a predicate over the table's data columns `table`; `None` when it reads no
    /// column (a constant is better left to DataFusion).
    pub fn new(expr: Arc<dyn PhysicalExpr>, table: &Schema) -> Result<Option<Self>> {
        let used = collect_columns(&expr);
        if used.is_empty() {
            return Ok(None);
        }
        let fields: Vec<Field> = table
            .fields()
            .iter()
            .filter(|f| used.iter().any(|c| c.name() == f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let expr = reassign_expr_columns(expr, &schema)?;
        Ok(Some(Self { expr, schema }))
    }

    /// The rows of `batch` (in `self.schema`) the predicate keeps; null counts as false.
    fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let v = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        let mask = v.as_boolean_opt().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "scan filter {} is not a predicate ({})",
                self.expr,
                v.data_type()
            ))
        })?;
        Ok(if mask.null_count() > 0 {
            prep_null_mask_filter(mask)
        } else {
            mask.clone()
        })
    }
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
    filter: Option<ScanFilter>,
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
                filter: None,
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

    /// Evaluates `filter` in the scan (see the module docs). Ignored when the scan reads
    /// ledger columns.
    pub fn with_filter(mut self, filter: ScanFilter) -> Self {
        if self
            .shared
            .cols
            .iter()
            .all(|c| matches!(c, OutCol::Data(_)))
        {
            Arc::get_mut(&mut self.shared)
                .expect("the scan's shared state is not handed out before execution")
                .filter = Some(filter);
        }
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
        if let Some(filter) = &self.shared.filter {
            write!(f, ", filter={}", filter.expr)?;
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
        let blocks_filtered =
            MetricBuilder::new(&self.metrics).counter("blocks_filtered", partition);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut left = shared.limit;
            let mut selective = Selective::default();
            for u in units {
                if left == Some(0) {
                    break;
                }
                blocks_read.add(1);
                let filter = shared.filter.as_ref().filter(|_| selective.worth_it());
                let mut passed = 0;
                let sent = read_unit(&shared, &u, filter, &mut left, &rows_read, &tx, &mut passed);
                if filter.is_some() {
                    blocks_filtered.add(1);
                    selective.record(u.rows(), passed);
                }
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

/// Blocks a partition reads without its filter, once the filter stopped paying, before it
/// tries the filter again.
const FILTER_PROBE_EVERY: usize = 8;

/// Whether a partition's scan filter pays: the two passes cost more than one when most rows
/// pass (`IS NOT NULL`, a time range that covers the block), so the filter is used while the
/// last block read with it dropped at least half its rows, and tried again every
/// [`FILTER_PROBE_EVERY`] blocks otherwise. Rows are the same either way.
#[derive(Debug)]
struct Selective {
    last_dropped_half: bool,
    since_probe: usize,
}

impl Default for Selective {
    fn default() -> Self {
        Self {
            last_dropped_half: true,
            since_probe: 0,
        }
    }
}

impl Selective {
    fn worth_it(&mut self) -> bool {
        if self.last_dropped_half {
            return true;
        }
        self.since_probe += 1;
        if self.since_probe >= FILTER_PROBE_EVERY {
            self.since_probe = 0;
            return true;
        }
        false
    }

    fn record(&mut self, rows: usize, passed: usize) {
        self.last_dropped_half = passed * 2 <= rows;
    }
}

/// Reads one block (through `filter` if given, counting the rows that pass in `passed`) and
/// sends its batches; false when the consumer is gone or an error was sent.
fn read_unit(
    shared: &Shared,
    unit: &Unit,
    filter: Option<&ScanFilter>,
    left: &mut Option<usize>,
    rows_read: &Count,
    tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    passed: &mut usize,
) -> bool {
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
        let out = output_batch(shared, unit, &batch, first_index);
        let failed = out.is_err();
        tx.blocking_send(out).is_ok() && !failed
    };
    let mut emit = |batch: RecordBatch, first_index: usize| -> bool {
        *passed += batch.num_rows();
        emit(batch, first_index)
    };
    let read = match unit {
        Unit::Mem { chunks, .. } => read_mem(shared, chunks, filter, rows_read, &mut emit),
        Unit::File { file, block } => read_file(shared, file, *block, filter, rows_read, &mut emit),
    };
    read.unwrap_or_else(|e| {
        let _ = tx.blocking_send(Err(e));
        false
    })
}

/// Where a block's batches go: `emit(batch, index of its first row in the block)`, false once
/// nothing more is wanted.
type Emit<'a> = dyn FnMut(RecordBatch, usize) -> bool + 'a;

/// The data columns the scan outputs.
fn data_columns(shared: &Shared) -> Vec<&str> {
    shared
        .cols
        .iter()
        .filter_map(|c| match c {
            OutCol::Data(n) => Some(n.as_str()),
            _ => None,
        })
        .collect()
}

fn read_mem(
    shared: &Shared,
    chunks: &[RecordBatch],
    filter: Option<&ScanFilter>,
    rows_read: &Count,
    emit: &mut Emit<'_>,
) -> Result<bool> {
    let mut index = 0;
    for c in chunks {
        let n = c.num_rows();
        let mut off = 0;
        while off < n {
            let take = (n - off).min(shared.batch_size);
            let mut part = c.slice(off, take);
            rows_read.add(take);
            if let Some(filter) = filter {
                let mask = filter.evaluate(&conform(&part, &filter.schema)?)?;
                part = filter_record_batch(&part, &mask)?;
            }
            // As from files: a slice whose rows all fail the filter sends nothing downstream.
            if part.num_rows() > 0 && !emit(part, index + off) {
                return Ok(false);
            }
            off += take;
        }
        index += n;
    }
    Ok(true)
}

fn read_file(
    shared: &Shared,
    file: &BlockFile,
    block: usize,
    filter: Option<&ScanFilter>,
    rows_read: &Count,
    emit: &mut Emit<'_>,
) -> Result<bool> {
    let b = &file.blocks[block];
    let err = |e: &dyn fmt::Display| read_error(file, b.header.height, e.to_string());
    if let Some(filter) = filter {
        return read_filtered(shared, filter, b, &err, file, rows_read, emit);
    }
    let need_all = shared.cols.contains(&OutCol::TxId);
    let data_cols = data_columns(shared);
    if data_cols.is_empty() && !need_all {
        // Nothing to decode: the header knows the row count.
        let n = b.header.row_count as usize;
        let mut off = 0;
        while off < n {
            let take = (n - off).min(shared.batch_size);
            let empty = RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(take)),
            )
            .expect("an empty batch with a row count");
            rows_read.add(take);
            if !emit(empty, off) {
                return Ok(false);
            }
            off += take;
        }
        return Ok(true);
    }
    let reader = file
        .page_reader()
        .and_then(|pages| {
            pages.row_group_reader(
                b.row_group,
                (!need_all).then_some(&data_cols[..]),
                None,
                shared.batch_size,
            )
        })
        .map_err(|e| err(&e))?;
    let mut index = 0;
    for batch in reader {
        let batch = batch.map_err(|e| err(&e))?;
        let n = batch.num_rows();
        rows_read.add(n);
        if !emit(batch, index) {
            return Ok(false);
        }
        index += n;
    }
    Ok(true)
}

/// Reads the rows of a block file that pass `filter`: its columns for every row, then the
/// other columns for the rows that passed only.
fn read_filtered(
    shared: &Shared,
    filter: &ScanFilter,
    b: &FileBlock,
    err: &dyn Fn(&dyn fmt::Display) -> DataFusionError,
    file: &BlockFile,
    rows_read: &Count,
    emit: &mut Emit<'_>,
) -> Result<bool> {
    let pages = file.page_reader().map_err(|e| err(&e))?;
    let names: Vec<&str> = filter
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let mut masks = Vec::new();
    let mut passed = Vec::new();
    let reader = pages
        .row_group_reader(b.row_group, Some(&names), None, shared.batch_size)
        .map_err(|e| err(&e))?;
    for batch in reader {
        let batch = conform(&batch.map_err(|e| err(&e))?, &filter.schema)?;
        rows_read.add(batch.num_rows());
        let mask = filter.evaluate(&batch)?;
        passed.push(filter_record_batch(&batch, &mask)?);
        masks.push(mask);
    }
    let n: usize = passed.iter().map(|p| p.num_rows()).sum();
    if n == 0 {
        return Ok(true);
    }
    let passed = concat_batches(&filter.schema, &passed)?;
    let rest: Vec<&str> = data_columns(shared)
        .into_iter()
        .filter(|c| filter.schema.index_of(c).is_err() && pages.schema().index_of(c).is_ok())
        .collect();
    let mut fields: Vec<Arc<Field>> = filter.schema.fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = passed.columns().to_vec();
    if !rest.is_empty() {
        let reader = pages
            .row_group_reader(
                b.row_group,
                Some(&rest),
                Some(RowSelection::from_filters(&masks)),
                n,
            )
            .map_err(|e| err(&e))?;
        let parts = reader.collect::<Result<Vec<_>, _>>().map_err(|e| err(&e))?;
        let got: usize = parts.iter().map(|p| p.num_rows()).sum();
        if got != n {
            return Err(err(&format!(
                "{got} rows of the other columns for the {n} that passed the filter"
            )));
        }
        if let Some(first) = parts.first() {
            let others = concat_batches(first.schema_ref(), &parts)?;
            fields.extend(others.schema().fields().iter().cloned());
            columns.extend(others.columns().iter().cloned());
        }
    }
    let all = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )?;
    let mut off = 0;
    while off < n {
        let take = (n - off).min(shared.batch_size);
        // The rows are no longer the block's consecutive rows: no ledger column is read with a
        // scan filter (see `LedgerScanExec::with_filter`), so the index is never used.
        if !emit(all.slice(off, take), 0) {
            return Ok(false);
        }
        off += take;
    }
    Ok(true)
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
            OutCol::Data(name) => data_column(batch, name, field)?,
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

/// Column `name` of a block's batch as `field` of the output: cast when the block has an
/// older type, nulls when the block predates the column.
fn data_column(batch: &RecordBatch, name: &str, field: &Field) -> Result<ArrayRef> {
    Ok(match batch.column_by_name(name) {
        Some(a) if a.data_type() == field.data_type() => a.clone(),
        Some(a) => arrow::compute::cast(a, field.data_type())?,
        None => new_null_array(field.data_type(), batch.num_rows()),
    })
}

/// A block's batch in `schema` (see [`data_column`]).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| data_column(batch, f.name(), f))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_left_out_while_most_rows_pass_and_tried_again_later() {
        let mut s = Selective::default();
        // Used from the start, and while it drops at least half the rows.
        assert!(s.worth_it());
        s.record(100, 50);
        assert!(s.worth_it());
        s.record(100, 3);
        assert!(s.worth_it());
        // Most rows passed: the next blocks are read in one pass, then the filter is probed.
        s.record(100, 51);
        let used: Vec<bool> = (0..2 * FILTER_PROBE_EVERY).map(|_| s.worth_it()).collect();
        let probes: Vec<usize> = (0..used.len()).filter(|&i| used[i]).collect();
        assert_eq!(
            probes,
            vec![FILTER_PROBE_EVERY - 1, 2 * FILTER_PROBE_EVERY - 1]
        );
        // A probe that drops most rows brings the filter back for every block.
        s.record(100, 10);
        assert!((0..FILTER_PROBE_EVERY).all(|_| s.worth_it()));
    }
}

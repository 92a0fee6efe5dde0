//! "Newest row per key" by a single pass that keeps one row per key.
//!
//! After [`crate::topn`], `row_number() OVER (PARTITION BY k ORDER BY time DESC) = 1` runs as
//! DataFusion's `PartitionedTopKExec` with K = 1 over a `RepartitionExec` that hashes every
//! input row by `k`. For K = 1 and one 64-bit ordering column (a table's `time`) both are more
//! than the question needs. [`NewestPerKeyExec`] scans each input partition keeping, per key,
//! the row with the greatest (or, ascending, least) value, as the engine's last-value cache
//! does at ingest. Then it merges the partitions' winners and emits them sorted as the
//! top-K operator would. [`NewestPerKey`] is the physical optimizer rule that swaps it in,
//! right after DataFusion's `WindowTopN`.
//!
//! Ties: `row_number` numbers tied rows in no defined order, so either row is a right
//! answer. This operator keeps the first one it reads.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::{
    cast, interleave_record_batch, lexsort_to_indices, take_record_batch, SortColumn,
};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, LexOrdering, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::partitioned_topk::{PartitionedTopKExec, WindowFnKind};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

/// Batches kept for their winning rows before the winners are copied into one batch.
const KEPT_BATCHES_MAX: usize = 64;

/// Replaces `PartitionedTopKExec(row_number, K = 1, order: one 64-bit column)` (and the hash
/// repartition under it) with [`NewestPerKeyExec`].
#[derive(Debug, Default)]
pub struct NewestPerKey;

impl PhysicalOptimizerRule for NewestPerKey {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_up(plan, rewrite)
    }

    fn name(&self) -> &str {
        "NewestPerKey"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A node's replacement, or `None` to keep it.
pub(crate) type Rewrite = fn(&Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>>;

/// Applies `rewrite` to every node of `plan`, children first; `None` keeps the node.
pub(crate) fn rewrite_up(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: Rewrite,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        Ok(match rewrite(&node)? {
            Some(new) => Transformed::yes(new),
            None => Transformed::no(node),
        })
    })
    .data()
}

fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(topk) = node.downcast_ref::<PartitionedTopKExec>() else {
        return Ok(None);
    };
    let keys = topk.partition_prefix_len();
    if topk.fetch() != 1
        || topk.fn_kind() != WindowFnKind::RowNumber
        || keys == 0
        || topk.expr().len() != keys + 1
    {
        return Ok(None);
    }
    let schema = topk.input().schema();
    let column = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Column>().map(Column::index);
    let mut key_cols = Vec::with_capacity(keys);
    for s in topk.expr().iter().take(keys) {
        match column(&s.expr) {
            Some(i) => key_cols.push(i),
            None => return Ok(None),
        }
    }
    let order = &topk.expr()[keys];
    let Some(order_col) = column(&order.expr) else {
        return Ok(None);
    };
    let field = schema.field(order_col);
    let wide = matches!(
        field.data_type(),
        DataType::Int64 | DataType::Timestamp(_, _)
    );
    if !wide || field.is_nullable() {
        return Ok(None);
    }
    // The repartition only brought each key's rows together, which this operator does itself.
    let input = match topk.input().downcast_ref::<RepartitionExec>() {
        Some(r) if matches!(r.partitioning(), Partitioning::Hash(..)) => Arc::clone(r.input()),
        _ => Arc::clone(topk.input()),
    };
    Ok(Some(Arc::new(NewestPerKeyExec::new(
        input,
        key_cols,
        order_col,
        order.options.descending,
        topk.expr().clone(),
    ))))
}

/// Per key, the row with the greatest (`descending`) or least value of one non-null 64-bit
/// column, sorted by `ordering` (the keys, then that column); one output partition.
#[derive(Debug)]
pub struct NewestPerKeyExec {
    input: Arc<dyn ExecutionPlan>,
    keys: Vec<usize>,
    order: usize,
    descending: bool,
    ordering: LexOrdering,
    props: Arc<PlanProperties>,
}

impl NewestPerKeyExec {
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        keys: Vec<usize>,
        order: usize,
        descending: bool,
        ordering: LexOrdering,
    ) -> Self {
        let eq = EquivalenceProperties::new_with_orderings(input.schema(), [ordering.clone()]);
        let props = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            keys,
            order,
            descending,
            ordering,
            props: Arc::new(props),
        }
    }
}

impl NewestPerKeyExec {
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The key columns (indices into the input's schema).
    pub fn keys(&self) -> &[usize] {
        &self.keys
    }

    /// Whether the greatest value wins (the newest row, for `ORDER BY time DESC`).
    pub fn descending(&self) -> bool {
        self.descending
    }

    /// The column ordered by (an index into the input's schema).
    pub fn order(&self) -> usize {
        self.order
    }
}

impl DisplayAs for NewestPerKeyExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schema = self.input.schema();
        let keys: Vec<&str> = self
            .keys
            .iter()
            .map(|&i| schema.field(i).name().as_str())
            .collect();
        write!(
            f,
            "NewestPerKeyExec: keys=[{}], {}={}",
            keys.join(", "),
            if self.descending { "max" } else { "min" },
            schema.field(self.order).name()
        )
    }
}

impl ExecutionPlan for NewestPerKeyExec {
    fn name(&self) -> &str {
        "NewestPerKeyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for s in self.ordering.iter() {
            if f(&s.expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input]: [Arc<dyn ExecutionPlan>; 1] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("NewestPerKeyExec has one child".into()))?;
        Ok(Arc::new(NewestPerKeyExec::new(
            input,
            self.keys.clone(),
            self.order,
            self.descending,
            self.ordering.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "NewestPerKeyExec has one partition, not {partition}"
            )));
        }
        let schema = self.input.schema();
        let input = Arc::clone(&self.input);
        let (keys, order, descending) = (self.keys.clone(), self.order, self.descending);
        let ordering = self.ordering.clone();
        let out_schema = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let parts = input.output_partitioning().partition_count();
            let mut tasks = Vec::with_capacity(parts);
            for p in 0..parts {
                let mut stream = input.execute(p, Arc::clone(&context))?;
                let mut newest = Newest::new(&schema, &keys, order, descending)?;
                tasks.push(SpawnedTask::spawn(async move {
                    while let Some(batch) = stream.next().await {
                        newest.push(&batch?)?;
                    }
                    newest.finish()
                }));
            }
            let mut merged = Newest::new(&schema, &keys, order, descending)?;
            for t in tasks {
                let local = t
                    .join()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
                if let Some(b) = local {
                    merged.push(&b)?;
                }
            }
            let Some(batch) = merged.finish()? else {
                return Ok(RecordBatch::new_empty(schema));
            };
            sorted(&batch, &ordering)
        })
        .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// `batch` sorted by `ordering` (whose expressions are columns of the batch).
fn sorted(batch: &RecordBatch, ordering: &LexOrdering) -> Result<RecordBatch> {
    let columns = ordering
        .iter()
        .map(|s| {
            Ok(SortColumn {
                values: s.expr.evaluate(batch)?.into_array(batch.num_rows())?,
                options: Some(s.options),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let indices = lexsort_to_indices(&columns, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

/// The winning row of each key so far.
struct Newest {
    keys: Vec<usize>,
    order: usize,
    descending: bool,
    converter: RowConverter,
    /// Key (row format) → index into `best`.
    groups: HashMap<Box<[u8]>, usize>,
    /// The same for a single dictionary-of-strings key, by value, and its null.
    dict_groups: HashMap<Box<str>, usize>,
    null_group: Option<usize>,
    /// Per key: ordering value, batch and row of the winner.
    best: Vec<(i64, usize, usize)>,
    /// Batches holding winners (`None` once they hold none), with how many each holds.
    batches: Vec<Option<RecordBatch>>,
    holds: Vec<usize>,
    kept: usize,
}

impl Newest {
    fn new(schema: &SchemaRef, keys: &[usize], order: usize, descending: bool) -> Result<Self> {
        let fields = keys
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        Ok(Self {
            keys: keys.to_vec(),
            order,
            descending,
            converter: RowConverter::new(fields)?,
            groups: HashMap::new(),
            dict_groups: HashMap::new(),
            null_group: None,
            best: Vec::new(),
            batches: Vec::new(),
            holds: Vec::new(),
            kept: 0,
        })
    }

    fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ids = self.group_ids(batch)?;
        let values = cast(batch.column(self.order), &DataType::Int64)?;
        let values = values.as_primitive::<Int64Type>().values();
        let id = self.batches.len();
        let mut held = 0usize;
        for (r, (&v, &g)) in values.iter().zip(&ids).enumerate() {
            if g == self.best.len() {
                self.best.push((v, id, r));
                held += 1;
                continue;
            }
            let (cur, b, _) = self.best[g];
            let wins = if self.descending { v > cur } else { v < cur };
            if wins {
                if b == id {
                    held -= 1;
                } else {
                    self.release(b);
                }
                self.best[g] = (v, id, r);
                held += 1;
            }
        }
        self.batches.push((held > 0).then(|| batch.clone()));
        self.holds.push(held);
        if held > 0 {
            self.kept += 1;
        }
        if self.kept > KEPT_BATCHES_MAX {
            self.compact()?;
        }
        Ok(())
    }

    /// The key index of every row of `batch`. A key seen for the first time gets the next
    /// index, `best.len()` at the time; the caller pushes its entry in that order.
    fn group_ids(&mut self, batch: &RecordBatch) -> Result<Vec<usize>> {
        let n = batch.num_rows();
        let mut ids = Vec::with_capacity(n);
        let mut next = self.best.len();
        if let [k] = self.keys[..] {
            let col = batch.column(k);
            if let Some(dict) = col.as_any_dictionary_opt() {
                if let Some(strings) = dict.values().as_string_opt::<i32>() {
                    if strings.is_empty() {
                        // A column of nulls (a tag none of these rows has) may come with no
                        // values at all: every row is the null key.
                        ids.resize(n, self.null_key(&mut next));
                        return Ok(ids);
                    }
                    // One key per dictionary value: look each value up once per batch, not
                    // once per row.
                    let nulls = col.logical_nulls();
                    let mut slot = vec![usize::MAX; strings.len()];
                    for (r, &key) in dict.normalized_keys().iter().enumerate() {
                        let g = if nulls.as_ref().is_some_and(|b| b.is_null(r)) {
                            self.null_key(&mut next)
                        } else {
                            if slot[key] == usize::MAX {
                                let value = strings.value(key);
                                slot[key] = match self.dict_groups.get(value) {
                                    Some(&g) => g,
                                    None => {
                                        self.dict_groups.insert(value.into(), next);
                                        next += 1;
                                        next - 1
                                    }
                                };
                            }
                            slot[key]
                        };
                        ids.push(g);
                    }
                    return Ok(ids);
                }
            }
        }
        let key_cols: Vec<_> = self
            .keys
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let rows = self.converter.convert_columns(&key_cols)?;
        for r in 0..n {
            let key = rows.row(r);
            let g = match self.groups.get(key.as_ref()) {
                Some(&g) => g,
                None => {
                    self.groups.insert(key.as_ref().into(), next);
                    next += 1;
                    next - 1
                }
            };
            ids.push(g);
        }
        Ok(ids)
    }

    /// The index of the null key of the dictionary path, assigning `next` the first time.
    fn null_key(&mut self, next: &mut usize) -> usize {
        *self.null_group.get_or_insert_with(|| {
            *next += 1;
            *next - 1
        })
    }

    /// One winner fewer in batch `b`; drops the batch when it holds none.
    fn release(&mut self, b: usize) {
        self.holds[b] -= 1;
        if self.holds[b] == 0 {
            self.batches[b] = None;
            self.kept -= 1;
        }
    }

    /// The winners, one row per key in the order keys were first seen.
    fn winners(&self) -> Result<Option<RecordBatch>> {
        if self.best.is_empty() {
            return Ok(None);
        }
        // Kept batches, renumbered densely.
        let mut slot = vec![usize::MAX; self.batches.len()];
        let mut kept: Vec<&RecordBatch> = Vec::with_capacity(self.kept);
        for (i, b) in self.batches.iter().enumerate() {
            if let Some(b) = b {
                slot[i] = kept.len();
                kept.push(b);
            }
        }
        let indices: Vec<(usize, usize)> =
            self.best.iter().map(|&(_, b, r)| (slot[b], r)).collect();
        Ok(Some(interleave_record_batch(&kept, &indices)?))
    }

    /// Copies the winners into one batch so that old batches can go.
    fn compact(&mut self) -> Result<()> {
        let Some(batch) = self.winners()? else {
            return Ok(());
        };
        for (k, e) in self.best.iter_mut().enumerate() {
            e.1 = 0;
            e.2 = k;
        }
        self.holds = vec![self.best.len()];
        self.batches = vec![Some(batch)];
        self.kept = 1;
        Ok(())
    }

    fn finish(self) -> Result<Option<RecordBatch>> {
        self.winners()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray,
        TimestampNanosecondArray,
    };
    use arrow::datatypes::{Field, Int32Type, Schema, TimeUnit};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use crate::topn::add_rules;
    use crate::topn::tests::run;

    fn context(newest: bool, rows: usize, batch: usize) -> SessionContext {
        let mut config = SessionConfig::new().with_target_partitions(2);
        config.options_mut().optimizer.enable_window_topn = true;
        let mut rules = PhysicalOptimizer::new().rules;
        add_rules(&mut rules, newest);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new("name", DataType::Utf8, true),
            Field::new("fleet", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new("t64", DataType::Int64, false),
            Field::new(
                "tag",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
        ]));
        // Unique times (a permutation), so the newest row of each key is one row; 37 names
        // (one in 41 rows NULL), 3 fleets, values with NULLs.
        let times: Vec<i64> = (0..rows).map(|i| ((i * 7919) % rows) as i64).collect();
        let names: Vec<Option<String>> = (0..rows)
            .map(|i| (i % 41 != 0).then(|| format!("s{}", i % 37)))
            .collect();
        let fleets: Vec<Option<&str>> = (0..rows).map(|i| Some(["a", "b", "c"][i % 3])).collect();
        let values: Vec<Option<f64>> = (0..rows)
            .map(|i| (i % 5 != 0).then_some(i as f64 / 4.0))
            .collect();
        // The names again as a dictionary in which every string appears twice (under two
        // keys), so that keys must be told apart by value.
        let tag_values = StringArray::from_iter_values((0..74).map(|k| format!("s{}", k % 37)));
        let tag_keys: Int32Array = (0..rows)
            .map(|i| (i % 41 != 0).then_some((i % 37 + 37 * (i % 2)) as i32))
            .collect();
        let tags = DictionaryArray::<Int32Type>::try_new(tag_keys, Arc::new(tag_values)).unwrap();
        let all = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampNanosecondArray::from(times.clone())),
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(fleets)),
                Arc::new(Float64Array::from(values)),
                Arc::new(Int64Array::from(times)),
                Arc::new(tags),
            ],
        )
        .unwrap();
        let mut parts = vec![Vec::new(), Vec::new()];
        let mut at = 0;
        while at < rows {
            let n = batch.min(rows - at);
            parts[(at / batch) % 2].push(all.slice(at, n));
            at += n;
        }
        let table = MemTable::try_new(schema, parts).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    #[tokio::test]
    async fn newest_row_per_key_equals_the_top_k_answer() {
        let queries = [
            "SELECT name, time, v FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn FROM t) WHERE rn = 1 ORDER BY name",
            "SELECT name, time FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time ASC) AS rn FROM t WHERE fleet = 'b') WHERE rn <= 1 ORDER BY name",
            "SELECT name, t64, v FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY t64 DESC) AS rn FROM t) WHERE 1 = rn ORDER BY name",
            "SELECT tag, time, v FROM (SELECT *, row_number() OVER (PARTITION BY tag ORDER BY time DESC) AS rn FROM t) WHERE rn = 1 ORDER BY tag",
        ];
        // Small batches, so that compaction (more than KEPT_BATCHES_MAX batches) happens too.
        for (rows, batch) in [(300, 150), (20_000, 64)] {
            for sql in queries {
                let (plan, rows_got) = run(&context(true, rows, batch), sql).await;
                assert!(plan.contains("NewestPerKeyExec"), "{sql}\n{plan}");
                assert!(!plan.contains("PartitionedTopKExec"), "{plan}");
                let (plain, expected) = run(&context(false, rows, batch), sql).await;
                assert!(plain.contains("PartitionedTopKExec"), "{plain}");
                assert_eq!(rows_got, expected, "{sql}");
            }
        }
    }

    #[test]
    fn a_dictionary_without_values_is_the_null_key() {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Int64, false),
            Field::new("tag", dict.clone(), true),
        ]));
        let batch = |times: Vec<i64>, tags: ArrayRef| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(times)), tags],
            )
            .unwrap()
        };
        let tags: DictionaryArray<Int32Type> =
            vec![Some("a"), None, Some("b")].into_iter().collect();
        let mut n = Newest::new(&schema, &[1], 0, true).unwrap();
        n.push(&batch(vec![1, 2, 3], Arc::new(tags))).unwrap();
        // A block older than the tag column: all nulls, and no dictionary values.
        n.push(&batch(vec![5, 4], arrow::array::new_null_array(&dict, 2)))
            .unwrap();
        let out = n.finish().unwrap().unwrap();
        let times = out.column(0).as_primitive::<Int64Type>().values().to_vec();
        let tags = out.column(1).as_any_dictionary();
        let mut got: Vec<(Option<String>, i64)> = (0..out.num_rows())
            .map(|r| {
                let tag = out.column(1).is_valid(r).then(|| {
                    let k = tags.normalized_keys()[r];
                    tags.values().as_string::<i32>().value(k).to_string()
                });
                (tag, times[r])
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [(None, 5), (Some("a".into()), 1), (Some("b".into()), 3)]
        );
    }

    #[tokio::test]
    async fn other_shapes_keep_the_top_k_operator() {
        let queries = [
            // K = 2; ORDER BY a nullable float; two ordering columns; rank().
            "SELECT name, time FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn FROM t) WHERE rn <= 2 ORDER BY name, time",
            "SELECT name, v FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY v DESC) AS rn FROM t WHERE v IS NOT NULL) WHERE rn = 1 ORDER BY name",
            "SELECT name, time FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC, v) AS rn FROM t) WHERE rn = 1 ORDER BY name",
            "SELECT name, time FROM (SELECT *, rank() OVER (PARTITION BY name ORDER BY time DESC) AS rk FROM t) WHERE rk = 1 ORDER BY name",
        ];
        for sql in queries {
            let (plan, rows) = run(&context(true, 300, 150), sql).await;
            assert!(!plan.contains("NewestPerKeyExec"), "{sql}\n{plan}");
            let (_, expected) = run(&context(false, 300, 150), sql).await;
            assert_eq!(rows, expected, "{sql}");
        }
    }
}

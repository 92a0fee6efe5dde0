//! "Newest row per series" queries without a full sort.
//!
//! `row_number() OVER (PARTITION BY name ORDER BY time DESC) ... WHERE rn = 1` is how sensor
//! users (and the TSBS queries) ask for the latest reading of every device. DataFusion plans it
//! as a sort of the whole input, unless its `WindowTopN` rule (enabled in every annals session)
//! replaces the sort with a per-partition top-K heap. That rule only recognises a filter that is
//! exactly `rn <= K` or `rn < K`; users write `rn = 1`, often with other conditions beside it.
//! [`RankFilterForTopN`] runs just before `WindowTopN` and rewrites such a filter into
//! `Filter(other conditions) ← Filter(rn <= 1)`: the same rows, since a ranking function's
//! value is never below 1, in a shape `WindowTopN` then turns into `PartitionedTopKExec`.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_expr::window::StandardWindowExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::ExecutionPlan;

/// Name of DataFusion's rule this one prepares for.
pub const WINDOW_TOPN: &str = "WindowTopN";

/// Puts [`RankFilterForTopN`] just before DataFusion's `WindowTopN` and, when `newest`,
/// [`crate::newest::NewestPerKey`] and [`crate::from_cache::NewestFromLastValues`] just after
/// it. Without `WindowTopN` in `rules` none of them has anything to work on, and nothing is
/// added.
pub fn add_rules(rules: &mut Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>, newest: bool) {
    let Some(at) = rules.iter().position(|r| r.name() == WINDOW_TOPN) else {
        return;
    };
    if newest {
        rules.insert(at + 1, Arc::new(crate::newest::NewestPerKey));
        rules.insert(at + 2, Arc::new(crate::from_cache::NewestFromLastValues));
    }
    rules.insert(at, Arc::new(RankFilterForTopN));
}

/// Rewrites `Filter(rn = 1 AND rest)` over a `row_number`/`rank` window into
/// `Filter(rest) ← Filter(rn <= 1)`; see the module docs.
#[derive(Debug, Default)]
pub struct RankFilterForTopN;

impl PhysicalOptimizerRule for RankFilterForTopN {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !config.optimizer.enable_window_topn {
            return Ok(plan);
        }
        plan.transform_down(|node| {
            Ok(match rewrite(&node)? {
                Some(new) => Transformed::yes(new),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "RankFilterForTopN"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(filter) = node.downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    if filter.projection().is_some() {
        return Ok(None);
    }
    let conjuncts = split_conjunction(filter.predicate());
    let Some(pos) = conjuncts
        .iter()
        .position(|c| ranks_first(c, filter.input()))
    else {
        return Ok(None);
    };
    let Some((col, _)) = equals_one(conjuncts[pos]) else {
        return Ok(None);
    };
    // A lone `rn <= K` is already in the shape WindowTopN wants; only rewrite `rn = 1`.
    let at_most_one: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        Arc::new(col.clone()),
        Operator::LtEq,
        Arc::new(Literal::new(ScalarValue::UInt64(Some(1)))),
    ));
    let inner: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(
        at_most_one,
        Arc::clone(filter.input()),
    )?);
    let rest: Vec<Arc<dyn PhysicalExpr>> = conjuncts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != pos)
        .map(|(_, c)| Arc::clone(c))
        .collect();
    if rest.is_empty() {
        return Ok(Some(inner));
    }
    Ok(Some(Arc::new(FilterExec::try_new(
        conjunction(rest),
        inner,
    )?)))
}

/// `Column = 1` or `1 = Column`, with the column and the literal.
fn equals_one(expr: &Arc<dyn PhysicalExpr>) -> Option<(&Column, &Literal)> {
    let binary = expr.downcast_ref::<BinaryExpr>()?;
    if *binary.op() != Operator::Eq {
        return None;
    }
    let (l, r) = (binary.left(), binary.right());
    let (col, lit) = match (l.downcast_ref::<Column>(), r.downcast_ref::<Literal>()) {
        (Some(c), Some(v)) => (c, v),
        _ => (r.downcast_ref::<Column>()?, l.downcast_ref::<Literal>()?),
    };
    let one = lit.value().data_type().is_integer()
        && lit
            .value()
            .cast_to(&arrow::datatypes::DataType::UInt64)
            .ok()
            == Some(ScalarValue::UInt64(Some(1)));
    one.then_some((col, lit))
}

/// Whether `expr` is `c = 1` where `c` is the output of a `row_number` or `rank` window over
/// `input` (through projections and repartitions).
fn ranks_first(expr: &Arc<dyn PhysicalExpr>, input: &Arc<dyn ExecutionPlan>) -> bool {
    let Some((col, _)) = equals_one(expr) else {
        return false;
    };
    let mut index = col.index();
    let mut current = Arc::clone(input);
    loop {
        if let Some(window) = current.downcast_ref::<BoundedWindowAggExec>() {
            let inputs = window.input().schema().fields().len();
            let Some(w) = index
                .checked_sub(inputs)
                .and_then(|i| window.window_expr().get(i))
            else {
                return false;
            };
            if w.partition_by().is_empty() {
                return false;
            }
            let Some(std) = w.as_any().downcast_ref::<StandardWindowExpr>() else {
                return false;
            };
            let f = std.get_standard_func_expr();
            let Some(udf) = f.as_any().downcast_ref::<WindowUDFExpr>() else {
                return false;
            };
            return matches!(udf.fun().name(), "row_number" | "rank");
        } else if let Some(p) = current.downcast_ref::<ProjectionExec>() {
            let Some(e) = p.expr().get(index) else {
                return false;
            };
            let Some(c) = e.expr.downcast_ref::<Column>() else {
                return false;
            };
            index = c.index();
            current = Arc::clone(p.input());
        } else if let Some(r) = current.downcast_ref::<RepartitionExec>() {
            current = Arc::clone(r.input());
        } else {
            return false;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn context(topn: bool) -> SessionContext {
        let mut config = SessionConfig::new().with_target_partitions(2);
        config.options_mut().optimizer.enable_window_topn = topn;
        let mut rules = PhysicalOptimizer::new().rules;
        add_rules(&mut rules, false);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("time", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
        ]));
        // 7 series, 300 rows, times not in order, a NULL name, ties on time.
        let n = 300;
        let names: Vec<Option<String>> = (0..n)
            .map(|i| (i % 41 != 0).then(|| format!("s{}", i % 7)))
            .collect();
        let times: Vec<i64> = (0..n).map(|i| (i * 37 % 101) as i64).collect();
        let values: Vec<f64> = (0..n).map(|i| i as f64 / 4.0).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(Int64Array::from(times)),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .unwrap();
        let (a, b) = (batch.slice(0, 150), batch.slice(150, 150));
        let table = MemTable::try_new(schema, vec![vec![a], vec![b]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    /// The physical plan of `sql` and its rows, both as text.
    pub(crate) async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        let rows = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        (shown, rows)
    }

    #[tokio::test]
    async fn rank_equals_one_uses_a_heap_per_partition_and_keeps_the_answer() {
        let queries = [
            // rn = 1 alone, other conditions beside it, the literal first, rank().
            "SELECT name, time, v FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC, v) AS rn FROM t) WHERE rn = 1 ORDER BY name",
            "SELECT name, time, v FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC, v) AS rn FROM t) WHERE rn = 1 AND v > 20 ORDER BY name",
            "SELECT name, time, v FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC, v) AS rn FROM t WHERE name IS NOT NULL) WHERE 1 = rn ORDER BY name",
            "SELECT name, time, v FROM (SELECT *, rank() OVER (PARTITION BY name ORDER BY time DESC) AS rk FROM t) WHERE rk = 1 ORDER BY name, v",
        ];
        for sql in queries {
            let (plan, rows) = run(&context(true), sql).await;
            assert!(plan.contains("PartitionedTopKExec"), "{sql}\n{plan}");
            let (plain, expected) = run(&context(false), sql).await;
            assert!(!plain.contains("PartitionedTopKExec"), "{plain}");
            assert_eq!(rows, expected, "{sql}");
        }
    }

    #[tokio::test]
    async fn other_filters_on_window_columns_are_left_alone() {
        let queries = [
            // rn = 2 is not "first"; dense_rank is not rewritten; no PARTITION BY.
            "SELECT name, time FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY time) AS rn FROM t) WHERE rn = 2 ORDER BY name",
            "SELECT name, time FROM (SELECT *, row_number() OVER (ORDER BY time, v) AS rn FROM t) WHERE rn = 1",
            "SELECT name, v FROM (SELECT *, sum(v) OVER (PARTITION BY name ORDER BY time) AS s FROM t) WHERE s = 1 ORDER BY name, v",
        ];
        for sql in queries {
            let (plan, rows) = run(&context(true), sql).await;
            assert!(!plan.contains("PartitionedTopKExec"), "{sql}\n{plan}");
            let (_, expected) = run(&context(false), sql).await;
            assert_eq!(rows, expected, "{sql}");
        }
    }
}

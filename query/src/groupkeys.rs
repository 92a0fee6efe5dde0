//! Grouping by tag columns without row-format keys.
//!
//! Tags are dictionary-encoded strings. DataFusion 55's column-wise group values
//! (`GroupValuesColumn`) take primitive and string columns but not dictionaries, so a
//! `GROUP BY name, date_bin(..)` falls back to `GroupValuesRows`: every row's keys are
//! re-encoded in Arrow's row format and compared as bytes. At 10M rows that was the largest
//! single cost of the TSBS grouping queries (`perf`: `GroupValuesRows::intern` 15 %, `memcmp`
//! 7 %, dictionary row encoding 2 %).
//!
//! [`DictionaryGroupKeys`] rewrites an aggregate that groups by tag columns,
//! `Aggregate(group by: tag, .., bucket)`, into
//! `Projection(annals_tag_value(key) AS tag, .., bucket, ..) ← Aggregate(group by: annals_tag_key(tag, ..) AS key, bucket)`:
//! all of its tag columns become one `UInt32` per distinct tuple of their values
//! ([`crate::tagkey`]), computed on dictionary indexes, and the projection turns the (few)
//! group keys back into the tags, so the plan's schema and every answer are unchanged.
//! `SET annals.tag_group_keys = false` turns this off.
//!
//! One tag beside another key (`GROUP BY name, date_bin(..)`), and every tag key without ids,
//! is grouped by string views instead (measured faster there; see the rule):
//! `Projection(CAST(tag AS Dictionary) AS tag, ..) ← Aggregate(group by: CAST(tag AS Utf8View) AS tag, .., bucket)`.
//! The cast builds one 16-byte view per row that points into the dictionary's values (tags of
//! up to 12 bytes are inline), and groups then compare column-wise.
//! `SET annals.view_group_keys = false` turns that off too.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DataFusionError, ExprSchema, Result};
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::options::AnnalsOptions;
use crate::tagkey::TagKeys;

/// See the module docs.
#[derive(Debug, Default)]
pub struct DictionaryGroupKeys;

/// A dictionary of strings: what grouping falls back to row format for.
fn is_string_dictionary(t: &DataType) -> bool {
    matches!(t, DataType::Dictionary(_, v)
        if matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
}

impl OptimizerRule for DictionaryGroupKeys {
    fn name(&self) -> &str {
        "annals_dictionary_group_keys"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let (ids, views) = config
            .options()
            .extensions
            .get::<AnnalsOptions>()
            .map_or((true, true), |o| (o.tag_group_keys, o.view_group_keys));
        let LogicalPlan::Aggregate(agg) = plan else {
            return Ok(Transformed::no(plan));
        };
        // Plain column keys only: grouping sets keep their own plan, and other expressions of
        // dictionary type are rare enough not to be worth the projection.
        if agg
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        let input_schema = agg.input.schema();
        let mut tags = Vec::new();
        for (i, e) in agg.group_expr.iter().enumerate() {
            if let Expr::Column(c) = e {
                if is_string_dictionary(input_schema.field_from_column(c)?.data_type()) {
                    tags.push(i);
                }
            }
        }
        if tags.is_empty() {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        // One tag beside another key (a time bucket) groups faster as views: at 10M rows,
        // stationary_trucks 228 ms with views and 248 ms with ids, long_driving_sessions 206
        // and 234 ms (most blocks bring a new dictionary, whose values are then looked up once
        // each). Several tags, or tags alone, group faster by ids: daily_activity 368 and
        // 452 ms, average_load 183 and 260 ms, GROUP BY name alone 121 and 136 ms.
        let one_tag_beside_others = tags.len() == 1 && agg.group_expr.len() > 1;
        if ids && !(views && one_tag_beside_others) {
            return tag_ids(agg, &tags).map(Transformed::yes);
        }
        // Views only beside another key (a time bucket, a field): tags alone have as many
        // groups as there are series at most, and there the dictionaries' hashes (computed once
        // per dictionary value) beat hashing every row's string (average_load at 10M rows:
        // 277 ms with row keys, 335 ms with views; stationary_trucks 272 ms and 233 ms).
        if !views || tags.len() == agg.group_expr.len() {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        let group_expr = agg
            .group_expr
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                Expr::Column(c) if tags.contains(&i) => {
                    Expr::Cast(Cast::new(Box::new(e.clone()), DataType::Utf8View))
                        .alias_qualified(c.relation.clone(), c.name.clone())
                }
                _ => e.clone(),
            })
            .collect();
        let inner = Aggregate::try_new(agg.input.clone(), group_expr, agg.aggr_expr.clone())?;
        // Same fields, same order, same qualifiers: cast back where the type changed.
        let exprs = agg
            .schema
            .iter()
            .zip(inner.schema.iter())
            .map(|((q, f), (iq, inf))| {
                let c = Expr::Column(Column::new(iq.cloned(), inf.name()));
                if f.data_type() == inf.data_type() {
                    c
                } else {
                    Expr::Cast(Cast::new(Box::new(c), f.data_type().clone()))
                        .alias_qualified(q.cloned(), f.name())
                }
            })
            .collect();
        let projection = Projection::try_new_with_schema(
            exprs,
            Arc::new(LogicalPlan::Aggregate(inner)),
            agg.schema.clone(),
        )?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

/// Name of the tag-tuple key in the rewritten aggregate.
const TAG_KEY: &str = "__annals_tags";

/// `Aggregate(group by: tags at positions tags, others)` into
/// `Projection(annals_tag_value(key) AS tag, .., others, aggregates) ← Aggregate(group by: annals_tag_key(tags) AS key, others)`.
fn tag_ids(agg: Aggregate, tags: &[usize]) -> Result<LogicalPlan> {
    let keys = TagKeys::new(tags.len());
    let key = keys
        .key(tags.iter().map(|&i| agg.group_expr[i].clone()).collect())
        .alias(TAG_KEY);
    let others = agg
        .group_expr
        .iter()
        .enumerate()
        .filter(|(i, _)| !tags.contains(i))
        .map(|(_, e)| e.clone());
    let group_expr: Vec<Expr> = std::iter::once(key).chain(others).collect();
    let inner = Aggregate::try_new(agg.input.clone(), group_expr, agg.aggr_expr.clone())?;
    // The inner fields after the key, in order: the other group keys, then the aggregates.
    let inner_schema = inner.schema.clone();
    let mut rest = inner_schema.iter().skip(1);
    let exprs = agg
        .schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| match tags.iter().position(|&t| t == i) {
            Some(t) => Ok(keys
                .value(
                    Expr::Column(Column::from_name(TAG_KEY)),
                    t,
                    f.data_type().clone(),
                )
                .alias_qualified(q.cloned(), f.name())),
            None => {
                let (iq, inf) = rest.next().ok_or_else(|| {
                    DataFusionError::Internal("tag group keys: field count".into())
                })?;
                Ok(Expr::Column(Column::new(iq.cloned(), inf.name())))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let projection = Projection::try_new_with_schema(
        exprs,
        Arc::new(LogicalPlan::Aggregate(inner)),
        agg.schema.clone(),
    )?;
    Ok(LogicalPlan::Projection(projection))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Float64Array, Int64Array};
    use arrow::datatypes::{Field, Int32Type, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn ctx(rule: bool) -> SessionContext {
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_option_extension(AnnalsOptions::default());
        let mut b = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if rule {
            b = b.with_optimizer_rule(Arc::new(DictionaryGroupKeys));
        }
        let ctx = SessionContext::new_with_state(b.build());
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", dict.clone(), true),
            Field::new("fleet", dict, true),
            Field::new("t", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
        ]));
        let names: DictionaryArray<Int32Type> = vec![
            Some("a"),
            Some("b"),
            None,
            Some("a"),
            Some("c"),
            None,
            Some("b"),
        ]
        .into_iter()
        .collect();
        let fleets: DictionaryArray<Int32Type> = vec![
            Some("x"),
            Some("x"),
            Some("y"),
            None,
            Some("y"),
            Some("y"),
            Some("x"),
        ]
        .into_iter()
        .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(names),
                Arc::new(fleets),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6, 17])),
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    None,
                    Some(3.0),
                    Some(4.0),
                    Some(5.0),
                    Some(6.0),
                    Some(7.0),
                ])),
            ],
        )
        .unwrap();
        // Two partitions, so the aggregate runs in partial and final modes.
        let t = MemTable::try_new(schema, vec![vec![batch.clone()], vec![batch]]).unwrap();
        ctx.register_table("r", Arc::new(t)).unwrap();
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let schema = format!("{:?}", df.schema().as_arrow());
        let batches = df.collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        (schema, text)
    }

    #[tokio::test]
    async fn same_answers_and_schema_with_column_wise_keys() {
        let queries = [
            "SELECT name, t % 2 AS k, count(*) AS n, sum(v) AS s FROM r GROUP BY name, t % 2 \
             ORDER BY name, k",
            "SELECT name, fleet, t / 10 AS b, avg(v) AS m FROM r GROUP BY name, fleet, t / 10 \
             HAVING count(*) > 0 ORDER BY name, fleet, b",
            "SELECT fleet, t % 2 AS k, count(DISTINCT name) AS d FROM r GROUP BY fleet, t % 2 \
             ORDER BY fleet, k",
            "SELECT r.name, x.k FROM r JOIN (SELECT name, count(*) AS k FROM r GROUP BY name) x \
             ON r.name = x.name ORDER BY r.name, x.k",
            "SELECT name, fleet, count(*) FROM r GROUP BY ROLLUP (name, fleet) ORDER BY 1, 2",
            "SELECT arrow_typeof(name) AS ty, t % 2 AS k, count(*) AS n FROM r GROUP BY name, t % 2 \
             ORDER BY n, ty, k",
            "SELECT fleet, name, count(*) AS n FROM r GROUP BY fleet, name ORDER BY fleet, name",
            "SELECT fleet, name, count(*) AS n FROM r GROUP BY fleet, name HAVING name = 'a' \
             ORDER BY fleet",
            "SELECT DISTINCT name, fleet FROM r WHERE v > 2 ORDER BY name, fleet",
            "SELECT f, count(*) FROM (SELECT fleet AS f, name, t / 10 AS b, sum(v) AS s FROM r \
             GROUP BY fleet, name, t / 10) GROUP BY f ORDER BY f",
        ];
        let without = ctx(false);
        let views = ctx(true);
        views
            .sql("SET annals.tag_group_keys = false")
            .await
            .unwrap();
        // Ids for every tag key, also one tag beside another key.
        let ids = ctx(true);
        ids.sql("SET annals.view_group_keys = false").await.unwrap();
        for with in [ctx(true), views, ids] {
            for q in queries {
                assert_eq!(run(&with, q).await, run(&without, q).await, "{q}");
            }
        }
    }

    async fn optimized(ctx: &SessionContext, sql: &str) -> String {
        let plan = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        format!("{}", plan.display_indent())
    }

    #[tokio::test]
    async fn plan_groups_by_one_key_per_tag_tuple_or_by_views() {
        let ctx = ctx(true);
        let sql = "SELECT name, fleet, t / 10 AS b, count(*) FROM r GROUP BY name, fleet, t / 10";
        let plan = optimized(&ctx, sql).await;
        assert!(
            plan.contains(
                "Aggregate: groupBy=[[annals_tag_key(r.name, r.fleet) AS __annals_tags, "
            ),
            "{plan}"
        );
        assert!(
            plan.starts_with("Projection: annals_tag_value(__annals_tags) AS name, annals_tag_value(__annals_tags) AS fleet"),
            "{plan}"
        );
        // Tags alone too.
        let plan = optimized(&ctx, "SELECT name, count(*) FROM r GROUP BY name").await;
        assert!(
            plan.contains("groupBy=[[annals_tag_key(r.name) AS __annals_tags]]"),
            "{plan}"
        );

        // One tag beside another key: views (ids once views are off).
        let sql = "SELECT name, t / 10 AS b, count(*) FROM r GROUP BY name, t / 10";
        let plan = optimized(&ctx, sql).await;
        assert!(
            plan.contains("groupBy=[[CAST(r.name AS Utf8View) AS name, "),
            "{plan}"
        );
        ctx.sql("SET annals.view_group_keys = false").await.unwrap();
        let plan = optimized(&ctx, sql).await;
        assert!(
            plan.contains("groupBy=[[annals_tag_key(r.name) AS __annals_tags, "),
            "{plan}"
        );
        ctx.sql("SET annals.view_group_keys = true").await.unwrap();

        ctx.sql("SET annals.tag_group_keys = false").await.unwrap();
        let plan = optimized(&ctx, sql).await;
        assert!(
            plan.contains("Aggregate: groupBy=[[CAST(r.name AS Utf8View) AS name, "),
            "{plan}"
        );
        assert!(
            plan.starts_with("Projection: CAST(r.name AS Dictionary(Int32, Utf8)) AS name"),
            "{plan}"
        );
        // Views: tags alone keep their dictionaries.
        let plan = optimized(
            &ctx,
            "SELECT name, fleet, count(*) FROM r GROUP BY name, fleet",
        )
        .await;
        assert!(
            plan.contains("Aggregate: groupBy=[[r.name, r.fleet]]"),
            "{plan}"
        );
        // And off by the session setting.
        ctx.sql("SET annals.view_group_keys = false").await.unwrap();
        let plan = optimized(&ctx, sql).await;
        assert!(plan.contains("Aggregate: groupBy=[[r.name, "), "{plan}");
    }
}

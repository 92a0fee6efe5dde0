//! "Newest row per tag" answered from the last-value cache instead of a scan.
//!
//! `row_number() OVER (PARTITION BY name ORDER BY time DESC) = 1` over a table, filtered by tags
//! only (`WHERE fleet = 'South' AND name IS NOT NULL`), is "where is every truck now". After
//! [`crate::newest::NewestPerKey`] its plan is
//! `NewestPerKeyExec(keys, max time) ← FilterExec(tag predicate) ← LedgerScanExec`.
//! [`NewestFromLastValues`] replaces the scan with the cached rows of the table (the newest
//! rows of every series, kept at ingest) and leaves the filter and `NewestPerKeyExec` as they
//! are, which then work on one row per series instead of the table's history.
//!
//! Why the answer is the same: a series is the table plus all its tags, so a predicate on tags
//! only, and every tag key, has one value per series. For each key value, the newest row
//! passing the filter belongs to some series that passes the filter and has that key; that
//! series' newest row is in the cache, passes the filter, has the key and is at least as new.
//! So the newest cached row per key is a newest row per key (ties between rows with the same
//! time may go either way, as `row_number` allows).
//!
//! It applies only when all of this holds, and the plan is left alone otherwise:
//! - the scan reads everything acknowledged (no `annals.as_of_epoch`: the cache is live), has
//!   no `LIMIT` and no ledger columns;
//! - the newest row by `time` wins (`ORDER BY time DESC`), every key is a tag, every filter
//!   between reads tags only and is not volatile (projections may sit between them too);
//! - the cache of the table is warm (seeded since the start, see `last_values()`).
//!
//! The cache is updated after rows are durable and before they are acknowledged, so the
//! answer includes every acknowledged row. `SET annals.newest_from_last_values = false` turns
//! the rule off.

use std::sync::Arc;

use annals_engine::catalog::TableSchema;
use annals_format::row::Kind;
use datafusion::common::config::ConfigOptions;
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::newest::NewestPerKeyExec;
use crate::options::AnnalsOptions;
use crate::scan::{LedgerScanExec, OutCol};

/// See the module docs.
#[derive(Debug, Default)]
pub struct NewestFromLastValues;

impl PhysicalOptimizerRule for NewestFromLastValues {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let enabled = config
            .extensions
            .get::<AnnalsOptions>()
            .is_none_or(|o| o.newest_from_last_values);
        if !enabled {
            return Ok(plan);
        }
        crate::newest::rewrite_up(plan, rewrite)
    }

    fn name(&self) -> &str {
        "NewestFromLastValues"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn is_tag(table: &TableSchema, name: &str) -> bool {
    matches!(table.column(name), Some((_, Kind::Tag)))
}

/// Maps column `idx` of the output of `nodes[0]` down through `nodes` (filters and
/// projections, each over the next) to a column of the node under the last one; `None` when a
/// projection computes it.
fn resolve(nodes: &[&Arc<dyn ExecutionPlan>], mut idx: usize) -> Option<usize> {
    for n in nodes {
        if let Some(p) = n.downcast_ref::<ProjectionExec>() {
            idx = p.expr().get(idx)?.expr.downcast_ref::<Column>()?.index();
        } else if let Some(f) = n.downcast_ref::<FilterExec>() {
            if let Some(proj) = f.projection() {
                idx = *proj.get(idx)?;
            }
        }
    }
    Some(idx)
}

fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(newest) = node.downcast_ref::<NewestPerKeyExec>() else {
        return Ok(None);
    };
    if !newest.descending() {
        return Ok(None);
    }
    // Down through filters and projections (row for row) to the scan.
    let mut chain: Vec<&Arc<dyn ExecutionPlan>> = Vec::new();
    let mut at = newest.input();
    let scan = loop {
        if let Some(f) = at.downcast_ref::<FilterExec>() {
            chain.push(at);
            at = f.input();
        } else if let Some(p) = at.downcast_ref::<ProjectionExec>() {
            chain.push(at);
            at = p.input();
        } else if let Some(s) = at.downcast_ref::<LedgerScanExec>() {
            break s;
        } else {
            return Ok(None);
        }
    };
    let Some(engine) = scan.live() else {
        return Ok(None);
    };
    let table = scan.table();
    if scan.limit().is_some() || !engine.last_values().is_warm(&table.name) {
        return Ok(None);
    }
    let mut names = Vec::with_capacity(scan.columns().len());
    for c in scan.columns() {
        match c {
            OutCol::Data(n) => names.push(n.as_str()),
            _ => return Ok(None),
        }
    }
    // A column of the scan's output that is a tag.
    let tag_at = |i: Option<usize>| {
        i.and_then(|i| names.get(i))
            .is_some_and(|n| is_tag(table, n))
    };
    if !newest.keys().iter().all(|&k| tag_at(resolve(&chain, k))) {
        return Ok(None);
    }
    // The cache keeps the newest rows by `time`: the order must be that column itself.
    let by_time = resolve(&chain, newest.order())
        .and_then(|i| names.get(i))
        .is_some_and(|n| *n == "time");
    if !by_time {
        return Ok(None);
    }
    for (level, node) in chain.iter().enumerate() {
        if let Some(f) = node.downcast_ref::<FilterExec>() {
            let below = &chain[level + 1..];
            // A volatile predicate (`random() < 0.1`) is not a property of the series.
            if is_volatile(f.predicate())
                || !collect_columns(f.predicate())
                    .iter()
                    .all(|c| tag_at(resolve(below, c.index())))
            {
                return Ok(None);
            }
        }
    }
    // The cached rows, with the table's schema, projected to the scan's columns.
    let full = table.arrow.clone();
    let mut projection = Vec::with_capacity(names.len());
    for n in &names {
        match full.index_of(n) {
            Ok(i) => projection.push(i),
            Err(_) => return Ok(None),
        }
    }
    let rows = engine
        .last_values()
        .read::<std::convert::Infallible>(&table.name, &full, &[], Ok)
        .unwrap_or_else(|never| match never {});
    let mut new: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[vec![rows]], full, Some(projection))?;
    let recompute = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
    for n in chain.iter().rev() {
        new = Arc::clone(n).replace_children(vec![new], recompute)?;
    }
    Ok(Some(
        Arc::clone(node).replace_children(vec![new], recompute)?,
    ))
}

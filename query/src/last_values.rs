//! `last_values('m' [, 'key column', ...])`: the newest rows of every series of a table, from
//! the engine's last-value cache (kept at ingest), so "where is every truck now" costs the
//! number of series, not the size of the history.
//!
//! Without key columns a series is the table plus all its tags, and up to the engine's
//! configured count of rows per series are returned. With key columns (tags), rows are grouped
//! by those columns instead and the newest `count` per group are returned; that is exact
//! because every group's newest rows are among its series' newest rows.
//!
//! After a restart the cache is cold: the first call seeds it with one query over the stored
//! rows (newest `count` per series), then every later call is served from memory.

use std::collections::HashMap;
use std::sync::Arc;

use annals_engine::catalog::TableSchema;
use annals_engine::engine::Engine;
use annals_engine::prepare::series_hash;
use annals_format::row::{ColumnRef, Kind, ValueRef};
use arrow::array::{Array, ArrayRef, AsArray, StringArray, TimestampNanosecondArray, UInt32Array};
use arrow::datatypes::{Int32Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{plan_err, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::options::AnnalsOptions;
use crate::service::table_arg;

pub fn register(ctx: &SessionContext, engine: &Arc<Engine>, db: &str) {
    ctx.register_udtf(
        "last_values",
        Arc::new(LastValuesFn {
            engine: engine.clone(),
            default_db: db.to_string(),
        }),
    );
}

#[derive(Debug)]
struct LastValuesFn {
    engine: Arc<Engine>,
    default_db: String,
}

impl TableFunctionImpl for LastValuesFn {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.is_empty() {
            return plan_err!("last_values() takes the table name, then optional key columns");
        }
        let table = table_arg(&self.engine, &self.default_db, "last_values", exprs)?;
        let mut keys = Vec::new();
        for e in &exprs[1..] {
            let Expr::Literal(ScalarValue::Utf8(Some(k)), _) = e else {
                return plan_err!("last_values(): key columns are given as strings");
            };
            match table.column(k) {
                Some((_, Kind::Tag)) => keys.push(k.clone()),
                Some(_) => return plan_err!("last_values(): key column '{k}' is not a tag"),
                None => return plan_err!("last_values(): no column '{k}' in the table"),
            }
        }
        Ok(Arc::new(LastValuesTable {
            engine: self.engine.clone(),
            table,
            keys,
        }))
    }
}

#[derive(Debug)]
struct LastValuesTable {
    engine: Arc<Engine>,
    table: Arc<TableSchema>,
    keys: Vec<String>,
}

#[async_trait]
impl TableProvider for LastValuesTable {
    fn schema(&self) -> SchemaRef {
        self.table.arrow.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let as_of = state
            .config()
            .options()
            .extensions
            .get::<AnnalsOptions>()
            .and_then(|o| o.as_of_epoch);
        if as_of.is_some() {
            return plan_err!(
                "last_values() answers from the live cache; it cannot run as of a checkpoint (unset annals.as_of_epoch)"
            );
        }
        let lv = self.engine.last_values();
        if !lv.is_warm(&self.table.name) {
            seed(&self.engine, &self.table, state).await?;
        }
        let schema = self.table.arrow.clone();
        let batch = lv.read(&self.table.name, &schema, &self.keys, |rows| {
            if self.keys.is_empty() {
                Ok(rows)
            } else {
                newest_per_key(&rows, &self.keys, lv.count())
            }
        })?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema,
            projection.cloned(),
        )?)
    }
}

/// Reads the newest `count` rows per series from storage into the cache.
pub(crate) async fn seed(
    engine: &Arc<Engine>,
    table: &Arc<TableSchema>,
    state: &dyn Session,
) -> Result<()> {
    let tags: Vec<String> = table
        .columns
        .iter()
        .filter(|(_, k)| *k == Kind::Tag)
        .map(|(n, _)| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    let count = engine.last_values().count();
    let (db, m) = crate::system::split(&table.name);
    let cols: Vec<String> = table
        .arrow
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name().replace('"', "\"\"")))
        .collect();
    let partition = if tags.is_empty() {
        String::new()
    } else {
        format!("PARTITION BY {}", tags.join(", "))
    };
    let sql = format!(
        "SELECT {cols} FROM (SELECT *, row_number() OVER ({partition} ORDER BY time DESC) AS __rn FROM \"{db}\".\"{m}\") WHERE __rn <= {count}",
        cols = cols.join(", "),
        db = db.replace('"', "\"\""),
        m = m.replace('"', "\"\""),
    );
    let ctx = SessionContext::new_with_state(
        state
            .as_any()
            .downcast_ref::<datafusion::execution::SessionState>()
            .ok_or_else(|| DataFusionError::Internal("unexpected session type".into()))?
            .clone(),
    );
    let df = ctx.sql(&sql).await?;
    let mut stream = df.execute_stream().await?;
    let mut batches = Vec::new();
    while let Some(b) = stream.next().await {
        batches.push(b?);
    }
    let batch = arrow::compute::concat_batches(&table.arrow, &batches)?;
    let shards = engine.config().shards as u64;
    let rows = series_of_rows(table, &batch)?
        .into_iter()
        .zip(times(&batch)?)
        .map(|(s, t)| ((s % shards) as usize, s, t))
        .collect::<Vec<_>>();
    engine.last_values().seed(&table.name, &batch, &rows);
    Ok(())
}

fn times(batch: &RecordBatch) -> Result<Vec<i64>> {
    let t = batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .ok_or_else(|| DataFusionError::Internal("time column is not ns timestamps".into()))?;
    Ok(t.values().to_vec())
}

/// The series hash of every row (as ingest computes it: table and non-null tags by name).
fn series_of_rows(table: &TableSchema, batch: &RecordBatch) -> Result<Vec<u64>> {
    let mut tag_cols: Vec<(&str, usize)> = table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, (_, k))| *k == Kind::Tag)
        .map(|(i, (n, _))| (n.as_str(), i + 1))
        .collect();
    tag_cols.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let dicts: Vec<(&str, &arrow::array::DictionaryArray<Int32Type>)> = tag_cols
        .iter()
        .map(|(n, i)| (*n, batch.column(*i).as_dictionary::<Int32Type>()))
        .collect();
    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let cols: Vec<ColumnRef<'_>> = dicts
            .iter()
            .filter(|(_, d)| d.is_valid(r))
            .map(|(n, d)| {
                let values: &StringArray = d.values().as_string();
                ColumnRef {
                    name: n,
                    value: ValueRef::Tag(values.value(d.keys().value(r) as usize)),
                }
            })
            .collect();
        out.push(series_hash(&table.name, cols));
    }
    Ok(out)
}

/// The newest `count` rows per distinct value of `keys`.
fn newest_per_key(batch: &RecordBatch, keys: &[String], count: usize) -> Result<RecordBatch> {
    let times = times(batch)?;
    let key_cols: Vec<ArrayRef> = keys
        .iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| DataFusionError::Plan(format!("no column '{k}'")))
        })
        .collect::<Result<_>>()?;
    // Keys as row-format bytes (nulls included), one allocation for all rows.
    let converter = arrow::row::RowConverter::new(
        key_cols
            .iter()
            .map(|c| arrow::row::SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&key_cols)?;
    let mut groups: HashMap<arrow::row::Row<'_>, Vec<usize>> = HashMap::new();
    for r in 0..batch.num_rows() {
        groups.entry(rows.row(r)).or_default().push(r);
    }
    let mut picks: Vec<u32> = Vec::new();
    for rows in groups.values_mut() {
        rows.sort_by_key(|&r| std::cmp::Reverse(times[r]));
        picks.extend(rows.iter().take(count).map(|&r| r as u32));
    }
    picks.sort_unstable();
    let idx = UInt32Array::from(picks);
    Ok(arrow::compute::take_record_batch(batch, &idx)?)
}

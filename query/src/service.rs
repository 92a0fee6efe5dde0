//! Runs SQL: one DataFusion session per request over the ledger's catalog, bounded by a shared
//! memory pool and a per-query timeout; every query is listed in `system.queries`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use annals_engine::catalog::TableSchema;
use annals_engine::engine::Engine;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ScalarValue;
use datafusion::datasource::source_as_provider;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::DFParser;
use futures::Stream;
use std::future::Future;

use crate::error::QueryError;
use crate::options::AnnalsOptions;
use crate::registry::{QueryGuard, QueryRegistry, QueryState};
use crate::system::{split, SystemSchema, SCHEMA as SYSTEM};
use crate::table::LedgerTable;

/// The catalog every session uses; schemas are databases.
pub const CATALOG: &str = "annals";

/// Bounds and defaults for queries.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory all running queries may hold together (sorts and aggregations spill or fail
    /// beyond it).
    pub memory_bytes: usize,
    /// A query running longer is cancelled.
    pub timeout: Duration,
    /// Partitions a scan is split into (0: one per core).
    pub target_partitions: usize,
    pub batch_size: usize,
    /// Ended queries kept in `system.queries`.
    pub history: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            timeout: Duration::from_secs(300),
            target_partitions: 0,
            batch_size: 8192,
            history: 100,
        }
    }
}

/// What a request asks for beyond the SQL.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub db: String,
    pub sql: String,
    /// Same as `SET annals.as_of_epoch = N` before the query.
    pub as_of_epoch: Option<u64>,
}

/// Runs queries against one engine.
#[derive(Debug)]
pub struct QueryService {
    engine: Arc<Engine>,
    cfg: QueryConfig,
    runtime: Arc<RuntimeEnv>,
    registry: Arc<QueryRegistry>,
}

impl QueryService {
    pub fn new(engine: Arc<Engine>, cfg: QueryConfig) -> Result<Self, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(cfg.memory_bytes)))
            .build_arc()
            .map_err(QueryError::from)?;
        Ok(Self {
            registry: Arc::new(QueryRegistry::new(cfg.history)),
            engine,
            cfg,
            runtime,
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn registry(&self) -> &Arc<QueryRegistry> {
        &self.registry
    }

    /// The databases (schemas) that exist: those with at least one table.
    pub fn databases(&self) -> BTreeSet<String> {
        databases(&self.engine)
    }

    /// A session whose unqualified table names are `db`'s measurements. Kept by clients that
    /// hold a connection (PG wire, Flight SQL) so `SET` persists between queries.
    pub fn session(&self, db: &str) -> SessionContext {
        let partitions = if self.cfg.target_partitions == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.cfg.target_partitions
        };
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, db)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_target_partitions(partitions)
            .with_batch_size(self.cfg.batch_size)
            .with_option_extension(AnnalsOptions::default());
        // "Newest row per series" (`row_number() ... = 1`): a heap per series instead of a sort
        // of the table (crate::topn), and with K = 1 over a time column one pass that keeps
        // the newest row per key (crate::newest).
        config.options_mut().optimizer.enable_window_topn = true;
        let mut rules = PhysicalOptimizer::new().rules;
        crate::topn::add_rules(&mut rules, true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime.clone())
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .with_optimizer_rule(Arc::new(crate::groupkeys::DictionaryGroupKeys))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog(
            CATALOG,
            Arc::new(LedgerCatalog {
                engine: self.engine.clone(),
                registry: self.registry.clone(),
            }),
        );
        ctx.register_udtf(
            "ledger",
            Arc::new(LedgerFn {
                engine: self.engine.clone(),
                default_db: db.to_string(),
            }),
        );
        crate::last_values::register(&ctx, &self.engine, db);
        crate::proof::register(&ctx, &self.engine);
        ctx
    }

    /// Seeds the last-value cache of every table that had rows before this start, so that
    /// `last_values()` and "newest row per tag" queries need no scan of their own. Meant to
    /// run in the background after a start: a query that comes first scans, or seeds the
    /// cache itself. Returns how many tables were seeded and the tables that failed (they stay
    /// cold; the others are still seeded).
    pub async fn warm_last_values(&self) -> (usize, Vec<(String, QueryError)>) {
        let mut seeded = 0;
        let mut failed = Vec::new();
        for table in self.engine.catalog().tables() {
            if self.engine.last_values().is_warm(&table.name) {
                continue;
            }
            let (db, _) = crate::system::split(&table.name);
            let state = self.session(db).state();
            match crate::last_values::seed(&self.engine, &table, &state).await {
                Ok(()) => seeded += 1,
                Err(e) => failed.push((table.name.clone(), e.into())),
            }
        }
        (seeded, failed)
    }

    /// Runs `req.sql` (one or more `;`-separated statements) and streams the last statement's
    /// result. Only queries and `SET` are allowed: nothing can change the ledger or write
    /// files through SQL.
    pub async fn sql(&self, req: &QueryRequest) -> Result<QueryOutput, QueryError> {
        if req.db != SYSTEM && !self.databases().contains(&req.db) {
            return Err(QueryError::DatabaseNotFound(req.db.clone()));
        }
        let ctx = self.session(&req.db);
        if let Some(e) = req.as_of_epoch {
            ctx.sql(&format!("SET annals.as_of_epoch = {e}"))
                .await
                .map_err(QueryError::from)?;
        }
        self.run(&ctx, &req.db, &req.sql).await
    }

    /// Runs SQL in an existing session (see [`QueryService::session`]).
    pub async fn run(
        &self,
        ctx: &SessionContext,
        db: &str,
        sql: &str,
    ) -> Result<QueryOutput, QueryError> {
        let guard = self.registry.start(db, sql, self.engine.clock().now_ns());
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let planned = tokio::time::timeout_at(deadline, plan_and_start(ctx, sql)).await;
        let (stream, tables) = match planned {
            Err(_) => {
                guard.finish(QueryState::TimedOut, None);
                return Err(QueryError::Timeout(self.cfg.timeout));
            }
            Ok(Err(e)) => {
                let e = QueryError::from(e);
                guard.finish(QueryState::Failed, Some(e.to_string()));
                return Err(e);
            }
            Ok(Ok(s)) => s,
        };
        let schema = stream.schema();
        Ok(QueryOutput {
            schema: schema.clone(),
            id: guard.id(),
            tables,
            stream: Box::pin(Guarded {
                inner: stream,
                schema,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                timeout: self.cfg.timeout,
                guard: Some(guard),
            }),
        })
    }
}

/// The measurements a plan reads (plain or through `ledger()`), each once, in plan order.
fn tables_read(plan: &LogicalPlan) -> Vec<Arc<TableSchema>> {
    let mut out: Vec<Arc<TableSchema>> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Ok(provider) = source_as_provider(&scan.source) {
                if let Some(t) = provider.downcast_ref::<LedgerTable>() {
                    let t = t.table_schema();
                    if !out.iter().any(|o| o.name == t.name) {
                        out.push(t.clone());
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

async fn plan_and_start(
    ctx: &SessionContext,
    sql: &str,
) -> Result<(SendableRecordBatchStream, Vec<Arc<TableSchema>>)> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(true);
    let mut statements = DFParser::parse_sql(sql)?;
    if statements.is_empty() {
        return plan_err!("no SQL statement given");
    }
    let last = statements.pop_back().expect("not empty");
    for st in statements {
        if unpins(ctx, &st) {
            continue;
        }
        let plan = ctx.state().statement_to_plan(st).await?;
        options.verify_plan(&plan)?;
        ctx.execute_logical_plan(plan).await?.collect().await?;
    }
    if unpins(ctx, &last) {
        let stream = ctx
            .sql("SELECT 1 WHERE false")
            .await?
            .execute_stream()
            .await?;
        return Ok((stream, Vec::new()));
    }
    let plan = ctx.state().statement_to_plan(last).await?;
    options.verify_plan(&plan)?;
    let tables = tables_read(&plan);
    let stream = ctx
        .execute_logical_plan(plan)
        .await?
        .execute_stream()
        .await?;
    Ok((stream, tables))
}

/// `RESET annals.as_of_epoch` and `SET annals.as_of_epoch = NULL | DEFAULT | 'latest'` unpin a
/// session (DataFusion's `SET` only takes values of the option's type and its `RESET` does
/// not reach extension options). Returns whether `st` was one of those.
fn unpins(ctx: &SessionContext, st: &datafusion::sql::parser::Statement) -> bool {
    let text = st.to_string().to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '=' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let unpin = match words.as_slice() {
        ["reset", "annals.as_of_epoch"] => true,
        ["set", "annals.as_of_epoch", "to" | "", v] | ["set", "annals.as_of_epoch", v] => {
            matches!(*v, "null" | "default" | "'latest'" | "latest")
        }
        _ => false,
    };
    if unpin {
        let state = ctx.state_ref();
        let mut state = state.write();
        if let Some(o) = state
            .config_mut()
            .options_mut()
            .extensions
            .get_mut::<AnnalsOptions>()
        {
            o.as_of_epoch = None;
        }
    }
    unpin
}

/// A running query's result.
pub struct QueryOutput {
    pub schema: SchemaRef,
    /// Its id in `system.queries`.
    pub id: u64,
    /// The measurements the query reads (plain or through `ledger()`), each once: what a
    /// JSON-LD export takes its context and tag columns from.
    pub tables: Vec<Arc<TableSchema>>,
    /// Ends with an error if the query fails or runs past its timeout; dropping it cancels
    /// the query.
    pub stream: SendableRecordBatchStream,
}

impl std::fmt::Debug for QueryOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryOutput").field("id", &self.id).finish()
    }
}

impl QueryOutput {
    /// Collects every batch.
    pub async fn collect(mut self) -> Result<Vec<RecordBatch>, QueryError> {
        use futures::StreamExt;
        let mut out = Vec::new();
        while let Some(b) = self.stream.next().await {
            out.push(b.map_err(QueryError::from)?);
        }
        Ok(out)
    }
}

struct Guarded {
    inner: SendableRecordBatchStream,
    schema: SchemaRef,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    guard: Option<QueryGuard>,
}

impl Stream for Guarded {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(_) = self.guard.as_ref() else {
            return Poll::Ready(None);
        };
        if self.deadline.as_mut().poll(cx).is_ready() {
            let t = self.timeout;
            if let Some(g) = self.guard.take() {
                g.finish(QueryState::TimedOut, None);
            }
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(
                QueryError::Timeout(t),
            )))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(g) = self.guard.as_mut() {
                    g.add_rows(b.num_rows());
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(g) = self.guard.take() {
                    g.finish(QueryState::Failed, Some(e.to_string()));
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(g) = self.guard.take() {
                    g.finish(QueryState::Done, None);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl RecordBatchStream for Guarded {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

pub(crate) fn databases(engine: &Engine) -> BTreeSet<String> {
    engine
        .catalog()
        .tables()
        .iter()
        .map(|t| split(&t.name).0.to_string())
        .collect()
}

/// Schemas: one per database, plus `system`.
#[derive(Debug)]
struct LedgerCatalog {
    engine: Arc<Engine>,
    registry: Arc<QueryRegistry>,
}

impl CatalogProvider for LedgerCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut v: Vec<String> = databases(&self.engine).into_iter().collect();
        v.push(SYSTEM.to_string());
        v
    }
    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SYSTEM {
            return Some(Arc::new(SystemSchema::new(
                self.engine.clone(),
                self.registry.clone(),
            )));
        }
        databases(&self.engine).contains(name).then(|| {
            Arc::new(DbSchema {
                engine: self.engine.clone(),
                db: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

/// A database's measurements.
#[derive(Debug)]
struct DbSchema {
    engine: Arc<Engine>,
    db: String,
}

#[async_trait]
impl SchemaProvider for DbSchema {
    fn table_names(&self) -> Vec<String> {
        let prefix = format!("{}/", self.db);
        self.engine
            .catalog()
            .tables()
            .iter()
            .filter_map(|t| t.name.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .engine
            .catalog()
            .table(&format!("{}/{name}", self.db))
            .map(|t| Arc::new(LedgerTable::new(self.engine.clone(), t, false)) as _))
    }
    fn table_exist(&self, name: &str) -> bool {
        self.engine
            .catalog()
            .table(&format!("{}/{name}", self.db))
            .is_some()
    }
}

/// Resolves a table-name argument (`'m'` or `'db.m'`) of a table function.
pub(crate) fn table_arg(
    engine: &Engine,
    default_db: &str,
    func: &str,
    args: &[Expr],
) -> Result<Arc<annals_engine::catalog::TableSchema>> {
    let name = match args.first() {
        Some(Expr::Literal(ScalarValue::Utf8(Some(s)), _)) => s.clone(),
        _ => {
            return plan_err!("{func}() takes the table name as a string, e.g. {func}('readings')");
        }
    };
    let full = match name.split_once('.') {
        Some((db, m)) => format!("{db}/{m}"),
        None => format!("{default_db}/{name}"),
    };
    engine
        .catalog()
        .table(&full)
        .ok_or_else(|| DataFusionError::Plan(format!("{func}(): table '{name}' not found")))
}

/// `ledger('m')`: the table with its ledger columns `_tx_id`, `_branch`, `_height`, `_index`.
#[derive(Debug)]
struct LedgerFn {
    engine: Arc<Engine>,
    default_db: String,
}

impl TableFunctionImpl for LedgerFn {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if args.exprs().len() != 1 {
            return plan_err!("ledger() takes one argument: the table name");
        }
        let t = table_arg(&self.engine, &self.default_db, "ledger", args.exprs())?;
        Ok(Arc::new(LedgerTable::new(self.engine.clone(), t, true)))
    }
}

#[allow(dead_code)]
fn _session_is_object_safe(_: &dyn Session) {}

//! Live subscriptions: the committed rows of one table, in commit order, from a cursor.
//!
//! **Committed** means covered by a signed checkpoint. Checkpoint `E` names, per branch, the
//! number of blocks it covers (`size`); the rows committed by `E` and not by an earlier
//! checkpoint `D` are, per branch `b`, the blocks with height in `[size_D(b), size_E(b))`.
//! Blocks are immutable and a checkpoint never shrinks a branch, so these sets never change:
//! reading them again after a restart gives the same rows with the same `_tx_id`s.
//!
//! **Order.** A [`Subscription`] moves from a checkpoint `done` (everything it covers has been
//! delivered) to a `target` checkpoint (the latest one when the step starts; several epochs
//! are taken in one step when a consumer catches up) and delivers the rows between them in
//! `(_branch, _height, _index)` order. Every batch carries the [`Cursor`] of its last row.
//!
//! **Cursor.** `done`, plus, inside a step, `target` and the position `(branch, height,
//! index)` of the last row delivered (index `u32::MAX`: the whole block). Rendered as an
//! opaque string (see [`Cursor`]'s `Display`): `start`, `<epoch>`, or
//! `<done|start>.<target>.<branch hex>.<height>.<index>`. Resuming from a cursor delivers
//! exactly the rows after it, so a consumer that stores the cursor of each batch it has
//! processed gets every committed row exactly once across disconnects and server restarts.
//! [`Start`] also takes `latest` (only rows committed from now on).
//!
//! **Filter.** An optional SQL boolean expression over the table's columns and the ledger
//! columns (`host = 'a' AND v > 3`), applied to every row; subqueries are refused. A filter
//! does not move the cursor backwards: rows it drops are skipped for good.
//!
//! **Bounds.** Pull only: nothing is read until the consumer asks for the next batch, and a
//! subscription holds at most one scan of [`PART_BLOCKS_MAX`] blocks with its read-ahead of
//! two batches of at most [`BATCH_ROWS_MAX`] rows. A slow consumer therefore costs no server
//! memory: it simply reads older (history) blocks when it comes back. At most
//! [`SUBSCRIPTIONS_MAX_DEFAULT`] subscriptions are open per process (see [`Slots`]).
//!
//! **Live.** When caught up, the subscription polls the latest checkpoint every
//! [`SubscribeOptions::poll`] (an atomic read under the checkpoint log's lock, never a lock
//! on the ingest path) and, every [`SubscribeOptions::heartbeat`] without new rows, yields a
//! [`Delivery::Progress`] with the current cursor (protocols send it as a keep-alive).
//!
//! **Schema.** The columns are the table's when the subscription opens, then `_tx_id`,
//! `_branch`, `_height`, `_index`; columns added later show up in a subscription opened
//! (resumed) after they were added.
//!
//! Must never: deliver a row that no checkpoint covers, deliver a row twice or skip one within
//! a subscription, or buffer rows for a consumer that does not read.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals_engine::catalog::TableSchema;
use annals_engine::engine::Engine;
use annals_format::block::BranchId;
use annals_format::hash::to_hex;
use arrow::array::{Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::datasource::TableProvider;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::ExecutionPlan;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::time::Instant;

use crate::scan::{LedgerScanExec, OutCol, ScanStats, Unit};
use crate::service::QueryService;
use crate::table::{LedgerTable, BRANCH, HEIGHT, INDEX, TX_ID};

/// Rows per delivered batch, at most.
pub const BATCH_ROWS_MAX: usize = 8192;
/// Blocks one scan reads before the next one takes a fresh snapshot: bounds what a stalled
/// consumer pins (blocks still in memory are pinned by the scan that lists them).
pub const PART_BLOCKS_MAX: usize = 64;
/// Default cap on open subscriptions in this process.
pub const SUBSCRIPTIONS_MAX_DEFAULT: usize = 256;
/// Longest accepted filter expression, in bytes.
pub const FILTER_BYTES_MAX: usize = 16 << 10;

/// Why a subscription could not be opened or continued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    #[error("database '{0}' not found")]
    DatabaseNotFound(String),
    #[error("table '{table}' not found in database '{db}'")]
    TableNotFound { db: String, table: String },
    #[error("bad cursor {cursor:?}: {reason}")]
    BadCursor { cursor: String, reason: String },
    #[error("bad filter: {0}")]
    BadFilter(String),
    #[error("too many open subscriptions ({0}); retry later")]
    TooMany(usize),
    /// A block a checkpoint covers is not readable (for instance a damaged block file).
    #[error("committed rows are not readable: {0}")]
    Missing(String),
    /// Reading blocks failed.
    #[error("reading committed rows: {0}")]
    Read(String),
}

/// A position in a subscription's stream; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Every row this checkpoint covers has been delivered; `None`: none yet.
    pub done: Option<u64>,
    /// Progress towards the next checkpoint, if a step is under way.
    pub within: Option<Within>,
}

/// Progress inside one step: rows committed after `done` and by `target`, delivered up to
/// and including `(branch, height, index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Within {
    pub target: u64,
    pub branch: BranchId,
    pub height: u64,
    /// `u32::MAX`: the whole block.
    pub index: u32,
}

impl Within {
    fn pos(&self) -> (BranchId, u64, u32) {
        (self.branch, self.height, self.index)
    }
}

impl Cursor {
    /// Before the first row.
    pub const START: Cursor = Cursor {
        done: None,
        within: None,
    };
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.done {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("start")?,
        }
        if let Some(w) = &self.within {
            write!(
                f,
                ".{}.{}.{}.{}",
                w.target,
                to_hex(&w.branch),
                w.height,
                w.index
            )?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let epoch = |p: &str| {
            p.parse::<u64>()
                .map_err(|_| format!("{p:?} is not a checkpoint epoch"))
        };
        let done = match parts[0] {
            "" | "start" | "beginning" => None,
            p => Some(epoch(p)?),
        };
        match parts.as_slice() {
            [_] => Ok(Cursor { done, within: None }),
            [_, target, branch, height, index] => {
                let target = epoch(target)?;
                if done.is_some_and(|d| d >= target) {
                    return Err("the target epoch must be after the done epoch".into());
                }
                let mut b = [0u8; 16];
                hex::decode_to_slice(branch, &mut b)
                    .map_err(|_| format!("{branch:?} is not a branch id (32 hex digits)"))?;
                Ok(Cursor {
                    done,
                    within: Some(Within {
                        target,
                        branch: b,
                        height: height
                            .parse()
                            .map_err(|_| format!("{height:?} is not a block height"))?,
                        index: index
                            .parse()
                            .map_err(|_| format!("{index:?} is not a row index"))?,
                    }),
                })
            }
            _ => {
                Err("expected `start`, `latest`, an epoch, or a cursor a subscription gave".into())
            }
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After a cursor (`start`, absent or empty: from the first committed row).
    After(Cursor),
    /// Only rows committed after the latest checkpoint at opening.
    Latest,
}

impl Start {
    /// Parses `from`: absent, empty, `start` or `beginning`; `latest`; an epoch `N` (rows
    /// committed after checkpoint `N`); or a cursor a subscription gave.
    pub fn parse(from: Option<&str>) -> Result<Start, SubscribeError> {
        let s = from.map(str::trim).unwrap_or("");
        if s == "latest" {
            return Ok(Start::Latest);
        }
        s.parse()
            .map(Start::After)
            .map_err(|reason| SubscribeError::BadCursor {
                cursor: s.to_string(),
                reason,
            })
    }
}

/// What to subscribe to.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub db: String,
    pub table: String,
    pub start: Start,
    /// A SQL boolean expression over the table's and the ledger columns.
    pub filter: Option<String>,
}

/// Shortest and longest heartbeat a subscriber may ask for, in seconds.
pub const HEARTBEAT_SECS_MIN: f64 = 0.1;
pub const HEARTBEAT_SECS_MAX: f64 = 300.0;

/// The heartbeat a subscriber asked for (`None`: the default), or why it is refused.
pub fn heartbeat_from_secs(secs: Option<f64>) -> Result<Duration, String> {
    match secs {
        None => Ok(SubscribeOptions::default().heartbeat),
        Some(s) if (HEARTBEAT_SECS_MIN..=HEARTBEAT_SECS_MAX).contains(&s) => {
            Ok(Duration::from_secs_f64(s))
        }
        Some(s) => Err(format!(
            "heartbeat {s} is out of range: give seconds from {HEARTBEAT_SECS_MIN} to \
             {HEARTBEAT_SECS_MAX}"
        )),
    }
}

/// Timing and limits.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// How often a caught-up subscription looks for a new checkpoint.
    pub poll: Duration,
    /// A [`Delivery::Progress`] comes after this long without a batch.
    pub heartbeat: Duration,
    /// The count of open subscriptions this one takes a place in.
    pub slots: Arc<Slots>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(100),
            heartbeat: Duration::from_secs(15),
            slots: Slots::process(),
        }
    }
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Committed rows (never empty) and the cursor to resume after them.
    Rows { batch: RecordBatch, cursor: Cursor },
    /// No new rows for a while; the cursor to resume from (it may have moved past rows the
    /// filter dropped).
    Progress { cursor: Cursor },
}

/// A cap on open subscriptions: every protocol of a process shares [`Slots::process`].
#[derive(Debug)]
pub struct Slots {
    open: AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// The process-wide count, capped at [`SUBSCRIPTIONS_MAX_DEFAULT`].
    pub fn process() -> Arc<Slots> {
        static PROCESS: std::sync::OnceLock<Arc<Slots>> = std::sync::OnceLock::new();
        PROCESS
            .get_or_init(|| Slots::new(SUBSCRIPTIONS_MAX_DEFAULT))
            .clone()
    }

    /// Subscriptions open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn take(self: &Arc<Self>) -> Result<Slot, SubscribeError> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(|_| Slot(self.clone()))
            .map_err(SubscribeError::TooMany)
    }
}

/// One place in a [`Slots`] count, given back on drop.
#[derive(Debug)]
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The block sizes of the step under way: per branch, `[lo, hi)`.
#[derive(Debug)]
struct Step {
    target: u64,
    lo: HashMap<BranchId, u64>,
    hi: HashMap<BranchId, u64>,
}

/// One scan over at most [`PART_BLOCKS_MAX`] blocks of the step.
struct Part {
    stream: SendableRecordBatchStream,
    /// The last block it reads.
    last: (BranchId, u64),
    /// Rows at or before this position were delivered before (a resumed block).
    skip: Option<(BranchId, u64, u32)>,
}

/// A live subscription to one table's committed rows. Dropping it stops every read.
pub struct Subscription {
    engine: Arc<Engine>,
    table: Arc<TableSchema>,
    schema: SchemaRef,
    cols: Vec<OutCol>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    task: Arc<TaskContext>,
    opts: SubscribeOptions,
    cursor: Cursor,
    step: Option<Step>,
    part: Option<Part>,
    last_sent: Instant,
    _slot: Slot,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("table", &self.table.name)
            .field("cursor", &self.cursor.to_string())
            .finish()
    }
}

impl Subscription {
    /// Checks the request (database, table, cursor, filter) and opens the subscription;
    /// nothing is read yet.
    pub async fn open(
        service: &QueryService,
        req: &SubscribeRequest,
        opts: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let engine = service.engine().clone();
        if !service.databases().contains(&req.db) {
            return Err(SubscribeError::DatabaseNotFound(req.db.clone()));
        }
        let table = engine
            .catalog()
            .table(&format!("{}/{}", req.db, req.table))
            .ok_or_else(|| SubscribeError::TableNotFound {
                db: req.db.clone(),
                table: req.table.clone(),
            })?;
        let latest = engine.latest_checkpoint().map(|c| c.header.epoch);
        let cursor = match req.start {
            Start::Latest => Cursor {
                done: latest,
                within: None,
            },
            Start::After(c) => {
                check_cursor(&c, latest)?;
                c
            }
        };
        let schema = LedgerTable::new(engine.clone(), table.clone(), true).schema();
        let data_cols = table.arrow.fields().len();
        let cols = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| match f.name().as_str() {
                _ if i < data_cols => OutCol::Data(f.name().clone()),
                TX_ID => OutCol::TxId,
                BRANCH => OutCol::Branch,
                HEIGHT => OutCol::Height,
                _ => OutCol::Index,
            })
            .collect();
        let ctx = service.session(&req.db);
        let predicate = match req.filter.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(sql) => Some(filter(&ctx, &schema, sql)?),
        };
        let slot = opts.slots.take()?;
        Ok(Subscription {
            engine,
            table,
            schema,
            cols,
            predicate,
            task: ctx.task_ctx(),
            cursor,
            step: None,
            part: None,
            last_sent: Instant::now(),
            opts,
            _slot: slot,
        })
    }

    /// The columns of every batch: the table's, then `_tx_id`, `_branch`, `_height`, `_index`.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Where the subscription stands: resuming from here delivers exactly what it has not
    /// delivered yet.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The next batch of committed rows, or a [`Delivery::Progress`] after
    /// [`SubscribeOptions::heartbeat`] without one. Waits for new checkpoints forever.
    /// Cancel-safe: state only changes after an await completes.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        loop {
            if let Some(part) = self.part.as_mut() {
                match part.stream.next().await {
                    Some(Ok(batch)) => {
                        if let Some(d) = self.deliver(batch)? {
                            return Ok(d);
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        self.part = None;
                        return Err(SubscribeError::Read(e.to_string()));
                    }
                    None => {
                        let (branch, height) = part.last;
                        let target = self.step.as_ref().map_or(0, |s| s.target);
                        self.cursor.within = Some(Within {
                            target,
                            branch,
                            height,
                            index: u32::MAX,
                        });
                        self.part = None;
                    }
                }
            }
            if self.last_sent.elapsed() >= self.opts.heartbeat {
                self.last_sent = Instant::now();
                return Ok(Delivery::Progress {
                    cursor: self.cursor,
                });
            }
            if self.step.is_none() && !self.begin_step()? {
                tokio::time::sleep(self.opts.poll).await;
                continue;
            }
            self.begin_part()?;
        }
    }

    /// The subscription as a stream (ends after the first error). Taking the next item is
    /// cancel-safe, so it can be raced against a timeout.
    pub fn into_stream(self) -> BoxStream<'static, Result<Delivery, SubscribeError>> {
        futures::stream::unfold(Some(self), |sub| async move {
            let mut sub = sub?;
            match sub.next().await {
                Ok(d) => Some((Ok(d), Some(sub))),
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }

    /// Starts the step towards the latest checkpoint (or the cursor's target); false when
    /// there is nothing new.
    fn begin_step(&mut self) -> Result<bool, SubscribeError> {
        let target = match self.cursor.within {
            Some(w) => w.target,
            None => match self.engine.latest_checkpoint().map(|c| c.header.epoch) {
                Some(l) if self.cursor.done.is_none_or(|d| l > d) => l,
                _ => return Ok(false),
            },
        };
        let sizes = |epoch: u64| -> Result<HashMap<BranchId, u64>, SubscribeError> {
            let cp = self
                .engine
                .checkpoint(epoch)
                .ok_or_else(|| SubscribeError::Missing(format!("checkpoint {epoch} is gone")))?;
            Ok(cp.entries.iter().map(|e| (e.branch, e.size)).collect())
        };
        let lo = match self.cursor.done {
            Some(d) => sizes(d)?,
            None => HashMap::new(),
        };
        let hi = sizes(target)?;
        self.step = Some(Step { target, lo, hi });
        Ok(true)
    }

    /// Lists the step's blocks after the cursor and starts scanning the first ones; ends the
    /// step when none are left.
    fn begin_part(&mut self) -> Result<(), SubscribeError> {
        let Some(step) = self.step.as_ref() else {
            return Ok(());
        };
        let after = self.cursor.within.map(|w| w.pos());
        let units = step_units(&self.engine, &self.table.name, step, after)?;
        if units.is_empty() {
            self.cursor = Cursor {
                done: Some(step.target),
                within: None,
            };
            self.step = None;
            return Ok(());
        }
        let take = units.len().min(PART_BLOCKS_MAX);
        let units: Vec<Unit> = units.into_iter().take(take).collect();
        let last = units
            .last()
            .map(|u| (u.branch(), u.height()))
            .expect("not empty");
        let skip = after.filter(|p| {
            units
                .first()
                .is_some_and(|u| (u.branch(), u.height()) == (p.0, p.1))
        });
        let blocks = units.len();
        let scan: Arc<dyn ExecutionPlan> = Arc::new(LedgerScanExec::new(
            self.table.clone(),
            self.schema.clone(),
            self.cols.clone(),
            units,
            1,
            BATCH_ROWS_MAX,
            None,
            ScanStats {
                blocks_total: blocks,
                blocks_pruned: 0,
            },
        ));
        let plan: Arc<dyn ExecutionPlan> = match &self.predicate {
            Some(p) => Arc::new(
                FilterExec::try_new(p.clone(), scan)
                    .map_err(|e| SubscribeError::BadFilter(e.to_string()))?,
            ),
            None => scan,
        };
        let stream = plan
            .execute(0, self.task.clone())
            .map_err(|e| SubscribeError::Read(e.to_string()))?;
        tracing::debug!(table = %self.table.name, blocks, cursor = %self.cursor, "subscription scan");
        self.part = Some(Part { stream, last, skip });
        Ok(())
    }

    /// Drops rows delivered before (a resumed block) and tags the rest with their cursor.
    fn deliver(&mut self, batch: RecordBatch) -> Result<Option<Delivery>, SubscribeError> {
        let target = self.step.as_ref().map_or(0, |s| s.target);
        let part = self.part.as_mut().expect("a part is being read");
        let mut batch = batch;
        if let Some(skip) = part.skip {
            let first_new = (0..batch.num_rows())
                .find(|&i| position(&batch, i).is_ok_and(|p| p > skip))
                .unwrap_or(batch.num_rows());
            if first_new < batch.num_rows() {
                part.skip = None;
            }
            batch = batch.slice(first_new, batch.num_rows() - first_new);
        }
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let (branch, height, index) = position(&batch, batch.num_rows() - 1)?;
        let cursor = Cursor {
            done: self.cursor.done,
            within: Some(Within {
                target,
                branch,
                height,
                index,
            }),
        };
        if let Some(prev) = self.cursor.within {
            // Positions only grow within a step; anything else would repeat rows.
            if prev.target == target && prev.pos() >= (branch, height, index) {
                return Err(SubscribeError::Read(format!(
                    "rows out of order: {} after {}",
                    cursor, self.cursor
                )));
            }
        }
        self.cursor = cursor;
        self.last_sent = Instant::now();
        Ok(Some(Delivery::Rows { batch, cursor }))
    }
}

/// A cursor must name checkpoints that exist.
fn check_cursor(c: &Cursor, latest: Option<u64>) -> Result<(), SubscribeError> {
    let bad = |reason: String| SubscribeError::BadCursor {
        cursor: c.to_string(),
        reason,
    };
    let newest = c.within.map(|w| w.target).or(c.done);
    match (newest, latest) {
        (Some(e), None) => Err(bad(format!(
            "it names checkpoint {e} but none has been written"
        ))),
        (Some(e), Some(l)) if e > l => Err(bad(format!(
            "it names checkpoint {e} but the latest is {l}"
        ))),
        _ => Ok(()),
    }
}

/// Parses and types the filter against the subscription's columns.
fn filter(
    ctx: &datafusion::prelude::SessionContext,
    schema: &SchemaRef,
    sql: &str,
) -> Result<Arc<dyn PhysicalExpr>, SubscribeError> {
    let bad = SubscribeError::BadFilter;
    if sql.len() > FILTER_BYTES_MAX {
        return Err(bad(format!("longer than {FILTER_BYTES_MAX} bytes")));
    }
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| bad(e.to_string()))?;
    let expr = ctx
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| bad(e.find_root().to_string()))?;
    let sub = expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })
        .unwrap_or(true);
    if sub {
        return Err(bad("subqueries are not allowed".into()));
    }
    let physical = ctx
        .state()
        .create_physical_expr(expr.clone(), &df_schema)
        .map_err(|e| bad(e.find_root().to_string()))?;
    let ty = physical
        .data_type(schema.as_ref())
        .or_else(|_| expr.get_type(&df_schema))
        .map_err(|e| bad(e.to_string()))?;
    if ty != DataType::Boolean {
        return Err(bad(format!("{sql:?} is {ty}, not a condition")));
    }
    Ok(physical)
}

/// The position of row `i`.
fn position(batch: &RecordBatch, i: usize) -> Result<(BranchId, u64, u32), SubscribeError> {
    let bad = || SubscribeError::Read("a batch without its ledger columns".into());
    let branch = batch
        .column_by_name(BRANCH)
        .and_then(|a| a.as_any().downcast_ref::<StringArray>())
        .ok_or_else(bad)?;
    let height = batch
        .column_by_name(HEIGHT)
        .and_then(|a| a.as_any().downcast_ref::<UInt64Array>())
        .ok_or_else(bad)?;
    let index = batch
        .column_by_name(INDEX)
        .and_then(|a| a.as_any().downcast_ref::<UInt32Array>())
        .ok_or_else(bad)?;
    if i >= batch.num_rows() || branch.is_null(i) {
        return Err(bad());
    }
    let mut b = [0u8; 16];
    hex::decode_to_slice(branch.value(i), &mut b).map_err(|_| bad())?;
    Ok((b, height.value(i), index.value(i)))
}

/// The step's blocks of `table` after position `after`, in `(branch, height)` order. Every
/// block the step covers must be there: a gap is an error, never a silent skip.
fn step_units(
    engine: &Engine,
    table: &str,
    step: &Step,
    after: Option<(BranchId, u64, u32)>,
) -> Result<Vec<Unit>, SubscribeError> {
    // The first height still to read of a branch (None: nothing left there).
    let first = |b: &BranchId| -> Option<u64> {
        let hi = *step.hi.get(b)?;
        let lo = step.lo.get(b).copied().unwrap_or(0);
        let from = match after {
            Some((ab, _, _)) if *b < ab => return None,
            Some((ab, ah, ai)) if *b == ab => {
                let h = if ai == u32::MAX { ah + 1 } else { ah };
                h.max(lo)
            }
            _ => lo,
        };
        (from < hi).then_some(from)
    };
    let wanted = |b: &BranchId, h: u64| first(b).is_some_and(|f| h >= f && h < step.hi[b]);
    let snapshot = engine.snapshot();
    let mut units = Vec::new();
    for f in snapshot.files().filter(|f| f.table == table) {
        for (i, blk) in f.blocks.iter().enumerate() {
            if wanted(&f.branch, blk.header.height) {
                units.push(Unit::File {
                    file: f.clone(),
                    block: i,
                });
            }
        }
    }
    for m in snapshot.mem_blocks().filter(|m| m.table == table) {
        if !wanted(&m.branch, m.height) {
            continue;
        }
        let chunks = m.chunks();
        let rows: usize = chunks.iter().map(|c| c.num_rows()).sum();
        if let Some((h, _)) = m.sealed() {
            if h.row_count as usize != rows {
                return Err(SubscribeError::Missing(format!(
                    "block {} of branch {} has {rows} visible rows of {}",
                    m.height,
                    to_hex(&m.branch),
                    h.row_count
                )));
            }
        }
        units.push(Unit::Mem {
            block: m.clone(),
            chunks,
        });
    }
    units.sort_by_key(|u| (u.branch(), u.height()));
    // Per branch, the heights must run from its first wanted height to the step's end.
    let mut expect: Option<(BranchId, u64)> = None;
    let check_end = |prev: Option<(BranchId, u64)>| -> Result<(), SubscribeError> {
        if let Some((b, next)) = prev {
            if next != step.hi[&b] {
                return Err(gap(&b, next));
            }
        }
        Ok(())
    };
    for u in &units {
        let (b, h) = (u.branch(), u.height());
        let next = match expect {
            Some((eb, n)) if eb == b => n,
            prev => {
                check_end(prev)?;
                first(&b).unwrap_or(h)
            }
        };
        if h != next {
            return Err(gap(&b, next));
        }
        expect = Some((b, h + 1));
    }
    check_end(expect)?;
    Ok(units)
}

fn gap(b: &BranchId, height: u64) -> SubscribeError {
    SubscribeError::Missing(format!(
        "block {height} of branch {} is committed but not readable (see /health for damaged \
         block files)",
        to_hex(b)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_engine::{EngineConfig, PrepareOptions, SystemClock};
    use arrow::array::Int64Array;

    use crate::QueryConfig;

    /// Blocks of 4 rows; checkpoints only on `flush()` unless `interval` is given, and files
    /// that stay open (blocks in memory) unless flushed.
    fn engine(dir: &std::path::Path, interval: Option<Duration>) -> Arc<Engine> {
        let mut c = EngineConfig::new(dir);
        c.shards = 2;
        c.block_rows = 4;
        c.block_age = Duration::from_secs(3600);
        c.file_age = Duration::from_secs(3600);
        c.file_rows = 1000;
        c.checkpoint_interval = interval.unwrap_or(Duration::from_secs(3600));
        Arc::new(Engine::open(c, Arc::new(SystemClock)).unwrap())
    }

    async fn write(e: &Engine, from: i64, n: i64) {
        let body: String = (from..from + n)
            .map(|i| format!("m,host=h{} v={i}i {}\n", i % 3, 1_000_000_000 * (i + 1)))
            .collect();
        let p = e
            .prepare("db", body.as_bytes(), &PrepareOptions::default())
            .unwrap();
        e.submit(p).unwrap().wait().await.unwrap();
    }

    fn flush(e: &Arc<Engine>) -> Option<u64> {
        e.flush()
    }

    fn req(start: Start, filter: Option<&str>) -> SubscribeRequest {
        SubscribeRequest {
            db: "db".into(),
            table: "m".into(),
            start,
            filter: filter.map(str::to_string),
        }
    }

    fn quick() -> SubscribeOptions {
        SubscribeOptions {
            poll: Duration::from_millis(10),
            heartbeat: Duration::from_millis(300),
            ..Default::default()
        }
    }

    /// Reads batches until `want` rows came (or a heartbeat shows nothing more is coming);
    /// returns each batch's `v` values and cursor.
    async fn read(sub: &mut Subscription, want: usize) -> Vec<(Vec<i64>, Cursor)> {
        let mut out = Vec::new();
        let mut n = 0;
        while n < want {
            let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("a delivery in time")
                .unwrap();
            match d {
                Delivery::Rows { batch, cursor } => {
                    let v = batch.column_by_name("v").unwrap();
                    let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
                    n += v.len();
                    out.push((v.values().to_vec(), cursor));
                }
                Delivery::Progress { .. } => break,
            }
        }
        out
    }

    fn values(batches: &[(Vec<i64>, Cursor)]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|(v, _)| v.iter().copied())
            .collect()
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = Cursor {
            done: Some(3),
            within: Some(Within {
                target: 9,
                branch: [0xab; 16],
                height: 17,
                index: 255,
            }),
        };
        let s = c.to_string();
        assert_eq!(s, format!("3.9.{}.17.255", "ab".repeat(16)));
        assert_eq!(s.parse::<Cursor>().unwrap(), c);
        let start = Cursor {
            done: None,
            within: c.within,
        };
        assert_eq!(start.to_string().parse::<Cursor>().unwrap(), start);
        assert_eq!("42".parse::<Cursor>().unwrap().done, Some(42));
        assert_eq!(Start::parse(None).unwrap(), Start::After(Cursor::START));
        assert_eq!(
            Start::parse(Some("start")).unwrap(),
            Start::After(Cursor::START)
        );
        assert_eq!(Start::parse(Some("latest")).unwrap(), Start::Latest);
        for bad in [
            "x",
            "-1",
            "1.2",
            "5.3.00.1.1",
            "1.2.zz.1.1",
            "1.2.00.1",
            "1.1.00.0.0",
        ] {
            assert!(
                matches!(
                    Start::parse(Some(bad)),
                    Err(SubscribeError::BadCursor { .. })
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_rows_once_in_order_across_a_resume() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), None);
        let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
        write(&e, 0, 30).await;
        flush(&e);
        write(&e, 30, 10).await; // acknowledged, not committed yet
        let mut sub = Subscription::open(&s, &req(Start::After(Cursor::START), None), quick())
            .await
            .unwrap();
        let first = read(&mut sub, 30).await;
        assert_eq!(values(&first).len(), 30, "only committed rows: {first:?}");
        // Resume from a cursor in the middle of the first step: the rest, exactly once.
        let half = first.len() / 2;
        let mid = first[half - 1].1;
        assert!(mid.within.is_some());
        drop(sub);
        flush(&e);
        write(&e, 40, 7).await;
        flush(&e);
        let mut sub = Subscription::open(&s, &req(Start::After(mid), None), quick())
            .await
            .unwrap();
        let rest = values(&read(&mut sub, 47).await);
        let mut all = values(&first[..half]);
        all.extend(&rest);
        let distinct: std::collections::HashSet<i64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "no row twice: {all:?}");
        all.sort_unstable();
        assert_eq!(all, (0..47).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_rows_from_blocks_in_memory_with_a_filter() {
        let dir = tempfile::tempdir().unwrap();
        // Checkpoints every 50 ms over sealed blocks whose files stay open (rows in memory).
        let e = engine(dir.path(), Some(Duration::from_millis(50)));
        let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
        write(&e, 0, 24).await;
        // Let a checkpoint cover those rows: `latest` starts after them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.latest_checkpoint().is_none() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut sub = Subscription::open(
            &s,
            &req(Start::Latest, Some("host = 'h1' AND v >= 0")),
            quick(),
        )
        .await
        .unwrap();
        write(&e, 100, 24).await; // 8 rows per host: whole blocks, sealed and checkpointed
        let got = values(&read(&mut sub, 8).await);
        let want: Vec<i64> = (100..124).filter(|i| i % 3 == 1).collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, want, "only new rows of h1");
        // Nothing more: the next delivery is a heartbeat carrying a cursor past them.
        match sub.next().await.unwrap() {
            Delivery::Progress { cursor } => assert!(cursor.done.is_some()),
            d => panic!("unexpected {d:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), None);
        let s = QueryService::new(e.clone(), QueryConfig::default()).unwrap();
        write(&e, 0, 4).await;
        let epoch = flush(&e).unwrap();
        let open = |r: SubscribeRequest| {
            let s = &s;
            async move { Subscription::open(s, &r, quick()).await.map(|_| ()) }
        };
        let mut r = req(Start::After(Cursor::START), None);
        r.db = "nope".into();
        assert!(matches!(
            open(r).await,
            Err(SubscribeError::DatabaseNotFound(_))
        ));
        let mut r = req(Start::After(Cursor::START), None);
        r.table = "nope".into();
        assert!(matches!(
            open(r).await,
            Err(SubscribeError::TableNotFound { .. })
        ));
        let future = Cursor {
            done: Some(epoch + 1),
            within: None,
        };
        assert!(matches!(
            open(req(Start::After(future), None)).await,
            Err(SubscribeError::BadCursor { .. })
        ));
        for f in ["v +", "nosuch = 1", "v + 1", "v IN (SELECT 1)"] {
            assert!(
                matches!(
                    open(req(Start::After(Cursor::START), Some(f))).await,
                    Err(SubscribeError::BadFilter(_))
                ),
                "{f}"
            );
        }
        // The cap counts open subscriptions.
        let opts = SubscribeOptions {
            slots: Slots::new(1),
            ..quick()
        };
        let r = req(Start::After(Cursor::START), None);
        let held = Subscription::open(&s, &r, opts.clone()).await.unwrap();
        assert!(matches!(
            Subscription::open(&s, &r, opts.clone()).await,
            Err(SubscribeError::TooMany(_))
        ));
        assert_eq!(opts.slots.open(), 1);
        drop(held);
        Subscription::open(&s, &r, opts).await.unwrap();
    }
}

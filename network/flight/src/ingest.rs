//! Flight ingest: Arrow record batches into a table, acknowledged once durable.
//!
//! Two ways in:
//! - Flight SQL `CommandStatementIngest` (ADBC `adbc_ingest`): table `target_table`, database
//!   from the `database` header or the command's `catalog`. The answer is the standard
//!   `DoPutUpdateResult` with the number of rows written.
//! - Plain `DoPut` with a path descriptor `[database, table]`: one `PutResult` per batch whose
//!   `app_metadata` is the JSON write receipt (the shape of the HTTP receipt; a row's `line` is
//!   its 0-based index in the batch).
//!   Full by default (every row's position and `tx_id`); request header `annals-receipt:
//!   compact` asks for the compact form (row count and runs), as HTTP's `receipt=compact`, and
//!   `annals-receipt: count` for the row count alone.
//!
//! Each batch goes through `Engine::prepare_arrow` (the rules of line protocol; tags are the
//! columns with field metadata `annals.kind = "tag"`, or named in the ingest option
//! `annals.tags` = `a,b`, or in a third path element `a,b` or `annals.tags=a,b`), then the
//! shard queues (waiting at most the write wait, then `ResourceExhausted`), then waits until
//! its rows are durable. Up to
//! [`IN_FLIGHT_MAX`] batches of one call are in the engine at once. A refused batch ends the
//! call with `InvalidArgument` naming the batch, row and column; the batches before it stay
//! written (each batch is all or nothing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_auth::{Action, Grant};
use annals_engine::{PendingWrite, PrepareOptions, ReceiptForm, WriteOutcome};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{Any, CommandStatementIngest, TableExistsOption, TableNotExistOption};
use arrow_flight::PutResult;
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status};

use crate::error::write_status;
use crate::sql::resolve_db;
use crate::{auth_status, grant_of, Boxed, FlightContext};

/// Batches of one call in the engine (submitted, not yet durable) at once.
pub(crate) const IN_FLIGHT_MAX: usize = 4;
/// Receipts of a plain `DoPut` waiting for the client to read them.
const RECEIPTS_QUEUED_MAX: usize = 8;
/// Ingest option (and third path element) naming tag columns: `annals.tags=a,b`.
pub(crate) const TAGS_OPTION: &str = "annals.tags";
/// Request header choosing the plain `DoPut` receipt: `full` (default: every row's position
/// and `tx_id`, as HTTP's `receipt=true`), `compact` (row count and runs, as `receipt=compact`)
/// or `count` (the row count alone).
pub(crate) const RECEIPT_HEADER: &str = "annals-receipt";

/// Where a call's batches go.
#[derive(Debug, Clone)]
struct Target {
    db: String,
    table: String,
    /// Columns to treat as tags besides those marked in their metadata.
    tags: Vec<String>,
    /// What each plain `DoPut` receipt holds.
    receipt: ReceiptForm,
}

fn check(grant: &Grant, db: &str) -> Result<(), Status> {
    grant
        .check(Action::Write, Some(db))
        .map_err(|e| auth_status(&e))
}

fn tag_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `batch` with the columns named in `tags` marked as tags.
fn mark_tags(batch: RecordBatch, tags: &[String]) -> Result<RecordBatch, Status> {
    if tags.is_empty() {
        return Ok(batch);
    }
    let schema = batch.schema();
    for t in tags {
        if schema.field_with_name(t).is_err() {
            return Err(Status::invalid_argument(format!(
                "{TAGS_OPTION} names column {t:?}, which the batch does not have"
            )));
        }
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if tags.iter().any(|t| t == f.name()) {
                let mut m = f.metadata().clone();
                m.insert(
                    annals_engine::arrow_ingest::KIND_KEY.to_owned(),
                    annals_engine::arrow_ingest::KIND_TAG.to_owned(),
                );
                f.as_ref().clone().with_metadata(m)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(schema, batch.columns().to_vec())
        .map_err(|e| Status::internal(e.to_string()))
}

/// Prepares one batch and hands it to the shard queues, waiting for space at most the write
/// wait. Returns the pending write (nothing to wait for when the batch has no rows).
async fn submit(
    ctx: &FlightContext,
    target: &Target,
    index: usize,
    batch: RecordBatch,
) -> Result<Option<PendingWrite>, Status> {
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let started = Instant::now();
    let batch = mark_tags(batch, &target.tags)?;
    let mut opts = PrepareOptions::default();
    opts.parse.default_time_ns = ctx.engine.clock().now_ns();
    let at = |s: Status| Status::new(s.code(), format!("batch {index}: {}", s.message()));
    let mut prepared = ctx
        .engine
        .prepare_arrow(&target.db, &target.table, &batch, &opts)
        .map_err(|e| at(write_status(&e)))?;
    let tables = prepared.origins.iter().flatten().map(|o| o.table.as_str());
    if let Err(e) = ctx.engine.attestations().check_unsigned(tables) {
        return Err(Status::permission_denied(e.to_string()));
    }
    let deadline = started + ctx.cfg.write_wait_max;
    let mut backoff = Duration::from_micros(500);
    loop {
        match ctx.engine.submit(prepared) {
            Ok(p) => return Ok(Some(p)),
            Err(back) => {
                if Instant::now() + backoff > deadline {
                    return Err(Status::resource_exhausted(format!(
                        "batch {index}: ingest queues are full; retry later"
                    )));
                }
                prepared = back;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
    }
}

type Durable = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(usize, Option<WriteOutcome>), Status>> + Send>,
>;

fn durable(index: usize, pending: Option<PendingWrite>) -> Durable {
    Box::pin(async move {
        match pending {
            None => Ok((index, None)),
            Some(p) => p.wait().await.map(|o| (index, Some(o))).map_err(|e| {
                let s = write_status(&e);
                Status::new(s.code(), format!("batch {index}: {}", s.message()))
            }),
        }
    })
}

/// Where a plain `DoPut` sends its receipts (`None`: Flight SQL ingest, which answers a count).
type Receipts = Option<tokio::sync::mpsc::Sender<Result<PutResult, Status>>>;

/// Counts a durable batch's rows and sends its receipt (waiting while the client is slow to
/// read them: back-pressure; a client that went away gets none, its rows stay written).
async fn finish(
    r: Result<(usize, Option<WriteOutcome>), Status>,
    rows: &mut u64,
    receipts: &Receipts,
    form: ReceiptForm,
) -> Result<(), Status> {
    let (i, outcome) = r?;
    *rows += outcome.as_ref().map_or(0, |o| o.rows as u64);
    if let Some(tx) = receipts {
        let mut receipt = match outcome {
            Some(o) => o.receipt(form),
            None => serde_json::json!({ "rows": 0 }),
        };
        receipt["batch"] = serde_json::json!(i);
        let bytes = serde_json::to_vec(&receipt).map_err(|e| Status::internal(e.to_string()))?;
        let _ = tx
            .send(Ok(PutResult {
                app_metadata: bytes.into(),
            }))
            .await;
    }
    Ok(())
}

/// Writes every batch of `input` to `target`, in order, each receipt once its batch is
/// durable. Returns the rows written.
async fn ingest(
    ctx: &FlightContext,
    target: &Target,
    input: PeekableFlightDataStream,
    receipts: Receipts,
) -> Result<u64, Status> {
    let mut batches = FlightRecordBatchStream::new_from_flight_data(
        input.map_err(arrow_flight::error::FlightError::from),
    );
    let mut in_flight = FuturesOrdered::new();
    let mut rows = 0u64;
    let mut index = 0usize;
    let mut first_err = None;
    let mut input_open = true;
    // Read the next batch while fewer than IN_FLIGHT_MAX are in the engine, and send each
    // receipt as soon as its batch is durable: a client may wait for the receipt of one
    // batch before it sends the next. Both `next()`s are cancel-safe.
    while input_open {
        tokio::select! {
            biased;
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = finish(r, &mut rows, &receipts, target.receipt).await {
                    first_err.get_or_insert(e);
                    input_open = false;
                }
            }
            next = batches.next(), if in_flight.len() < IN_FLIGHT_MAX => match next {
                None => input_open = false,
                Some(Err(e)) => {
                    first_err.get_or_insert(Status::invalid_argument(format!(
                        "batch {index}: cannot decode: {e}"
                    )));
                    input_open = false;
                }
                Some(Ok(batch)) => match submit(ctx, target, index, batch).await {
                    Ok(pending) => {
                        in_flight.push_back(durable(index, pending));
                        index += 1;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                        input_open = false;
                    }
                },
            },
        }
    }
    // Batches already submitted become durable whatever happens next: wait for them, so the
    // answer tells what was written.
    while let Some(r) = in_flight.next().await {
        if let Err(e) = finish(r, &mut rows, &receipts, target.receipt).await {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        None => Ok(rows),
        Some(e) if rows > 0 => Err(Status::new(
            e.code(),
            format!(
                "{} ({rows} rows of earlier batches were written)",
                e.message()
            ),
        )),
        Some(e) => Err(e),
    }
}

/// Flight SQL bulk ingest (`CommandStatementIngest`).
pub(crate) async fn statement_ingest(
    ctx: &FlightContext,
    cmd: CommandStatementIngest,
    request: Request<PeekableFlightDataStream>,
) -> Result<i64, Status> {
    let grant = grant_of(&request)?.clone();
    let db = resolve_db(ctx, request.metadata(), cmd.catalog.as_deref(), &grant)?;
    check(&grant, &db)?;
    if cmd.table.is_empty() {
        return Err(Status::invalid_argument("ingest needs a target table"));
    }
    if cmd.temporary {
        return Err(Status::invalid_argument(
            "temporary tables are not supported: every table is part of the ledger",
        ));
    }
    if cmd.transaction_id.is_some() {
        return Err(Status::invalid_argument("transactions are not supported"));
    }
    let exists = ctx
        .engine
        .catalog()
        .table(&format!("{db}/{}", cmd.table))
        .is_some();
    if let Some(opts) = &cmd.table_definition_options {
        match TableExistsOption::try_from(opts.if_exists) {
            Ok(TableExistsOption::Replace) => {
                return Err(Status::invalid_argument(
                    "the ledger is append-only: a table cannot be replaced (ingest in append mode)",
                ))
            }
            Ok(TableExistsOption::Fail) if exists => {
                return Err(Status::already_exists(format!(
                    "table {:?} exists in database {db:?} (ingest in append mode to add rows)",
                    cmd.table
                )))
            }
            _ => {}
        }
        if let Ok(TableNotExistOption::Fail) = TableNotExistOption::try_from(opts.if_not_exist) {
            if !exists {
                return Err(Status::not_found(format!(
                    "table {:?} does not exist in database {db:?}",
                    cmd.table
                )));
            }
        }
    }
    let target = Target {
        db,
        table: cmd.table.clone(),
        tags: cmd
            .options
            .get(TAGS_OPTION)
            .map(|s| tag_list(s))
            .unwrap_or_default(),
        // Flight SQL ingest answers a row count, not receipts.
        receipt: ReceiptForm::Count,
    };
    let rows = ingest(ctx, &target, request.into_inner(), None).await?;
    metrics::counter!("annals_flight_ingest_rows_total").increment(rows);
    i64::try_from(rows).map_err(|_| Status::internal("row count overflows i64"))
}

/// Plain `DoPut` with a path descriptor `[database, table]` (or `[database, table, tags]`).
pub(crate) async fn path_put(
    ctx: &Arc<FlightContext>,
    mut request: Request<PeekableFlightDataStream>,
    message: Any,
) -> Result<Response<Boxed<PutResult>>, Status> {
    let grant = grant_of(&request)?.clone();
    let first = request.get_mut().peek().await.cloned();
    let descriptor = match first {
        Some(Ok(d)) => d.flight_descriptor,
        Some(Err(e)) => return Err(e),
        None => None,
    };
    let Some(descriptor) = descriptor else {
        return Err(Status::invalid_argument(
            "DoPut needs a flight descriptor on its first message",
        ));
    };
    if descriptor.r#type != DescriptorType::Path as i32 {
        return Err(Status::unimplemented(format!(
            "DoPut command {:?} is not supported: use Flight SQL ingest or a path descriptor [database, table]",
            message.type_url
        )));
    }
    let (db, table, tags) = match descriptor.path.as_slice() {
        [db, table] => (db.clone(), table.clone(), Vec::new()),
        [db, table, tags] => {
            let list = tags
                .strip_prefix(TAGS_OPTION)
                .and_then(|t| t.strip_prefix('='))
                .unwrap_or(tags);
            (db.clone(), table.clone(), tag_list(list))
        }
        p => {
            return Err(Status::invalid_argument(format!(
                "DoPut path must be [database, table] or [database, table, \"tag1,tag2\"], got {} elements",
                p.len()
            )))
        }
    };
    check(&grant, &db)?;
    let receipt = match request
        .metadata()
        .get(RECEIPT_HEADER)
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("full") => ReceiptForm::Full,
        Some("compact") => ReceiptForm::Compact,
        Some("count") => ReceiptForm::Count,
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "{RECEIPT_HEADER}: {other:?} is not `full`, `compact` or `count`"
            )))
        }
    };
    let target = Target {
        db,
        table,
        tags,
        receipt,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<PutResult, Status>>(RECEIPTS_QUEUED_MAX);
    let ctx = ctx.clone();
    let input = request.into_inner();
    tokio::spawn(async move {
        match ingest(&ctx, &target, input, Some(tx.clone())).await {
            Ok(rows) => metrics::counter!("annals_flight_ingest_rows_total").increment(rows),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Response::new(Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::DataType;

    #[test]
    fn tags_from_option_are_marked() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(Float64Array::from(vec![1.0])),
            ],
        )
        .unwrap();
        let marked = mark_tags(b.clone(), &tag_list(" host, ")).unwrap();
        let f = marked.schema().field(0).clone();
        assert_eq!(
            f.metadata().get("annals.kind").map(String::as_str),
            Some("tag")
        );
        assert!(marked.schema().field(1).metadata().is_empty());
        let e = mark_tags(b, &["nope".into()]).unwrap_err();
        assert!(e.message().contains("nope"));
    }
}

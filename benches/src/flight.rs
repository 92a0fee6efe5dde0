//! `flight`: the same TSBS iot rows into one annals server over HTTP line protocol and over
//! Arrow Flight `DoPut`, then `SELECT * FROM readings` streamed back by Flight `DoGet` (and,
//! for context, once as JSON over HTTP); a markdown table at the end.
//!
//! Steps, on one `annals serve` started here (fresh temp dir, free loopback port):
//! 1. line protocol: every body to `/api/v3/write_lp` into database [`LP_DB`], as `load` sends
//!    it (`--connections` keep-alive HTTP/1.1 connections, `--gzip` honoured);
//! 2. Flight: the same generated bodies, each turned into one Arrow batch per table by annals'
//!    own line-protocol parser ([`lp_to_arrow`]), into database [`ARROW_DB`]: `--connections`
//!    gRPC connections to the HTTP port (h2c), each taking the next call from a shared index
//!    and streaming its batches of one table (`--batches-per-call`, fewer when the columns
//!    change: a `DoPut` stream has one schema) in one `DoPut` with the path descriptor
//!    `[database, table]`; every `PutResult` is read, and the rows the receipts acknowledge must
//!    add up to the rows sent;
//! 3. `SELECT count(*)` of each table in both databases (HTTP SQL) must equal the generated
//!    rows;
//! 4. one warm-up, then `--stream-runs` timed `DoGet` runs of [`STREAM_SQL`] on [`ARROW_DB`]
//!    (InfluxDB 3 JSON ticket), median reported; then one timed run of the same SQL as
//!    `/api/v3/query_sql?format=json`.
//!
//! Fairness: each side's input is built before its clock starts (line-protocol bodies, gzipped
//! with `--gzip`; Arrow batches converted and encoded into Flight IPC messages), so both clocks
//! measure the server and the wire, and both clients open their connections inside the clock.
//! Arrow batches are plain IPC (no compression), tags `Utf8` marked with the field metadata
//! `annals.kind = "tag"`, `time` `Timestamp(Nanosecond)`. The Flight side runs second on the same
//! server, which then already holds the line-protocol rows.
//!
//! Memory: one side's input is held at a time: at most [`load::INPUT_BYTES_MAX`] of line
//! protocol (checked by `load`), then at most as many bytes of Arrow IPC ([`ArrowWorkload`]).
//! Result streams are counted as they arrive, never collected.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_bench::tsbs::{IotConfig, LineBatch};
use annals_lp::{FieldValue, Line, ParseOptions, Parser};
use anyhow::{anyhow, bail, ensure, Context, Result};
use arrow::array::{
    ArrayBuilder as _, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampNanosecondArray, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightDescriptor, Ticket};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};

use crate::compare;
use crate::load::{self, Endpoint, LoadOptions, LoadReport, Workload};
use crate::query::post_query;
use crate::server::{self, Server};

/// Database the line-protocol side writes to.
pub(crate) const LP_DB: &str = "lp";
/// Database the Flight side writes to and streams from.
pub(crate) const ARROW_DB: &str = "arrow";
/// The query streamed back.
pub(crate) const STREAM_SQL: &str = "SELECT * FROM readings";
/// Arrow batches streamed in one `DoPut` call.
pub(crate) const BATCHES_PER_CALL_MAX: usize = 1024;
/// Timed `DoGet` runs.
pub(crate) const STREAM_RUNS_MAX: usize = 100;
/// Largest gRPC message a default server accepts or sends (annals-flight's
/// `MESSAGE_BYTES_MAX_DEFAULT`); one encoded batch must fit with room for its framing.
const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Room left in a message for the protobuf and gRPC framing around the IPC bytes.
const MESSAGE_FRAMING_MAX: usize = 64 << 10;
/// One whole-table query (a `DoGet` run or the JSON run) may take this long.
const QUERY_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Field metadata marking a tag column (annals-engine's `arrow_ingest::KIND_KEY` and
/// `KIND_TAG`; the benchmark binary talks to the server as any client would, so it does not
/// link the engine to read them).
const KIND_KEY: &str = "annals.kind";
const KIND_TAG: &str = "tag";
/// Name of the timestamp column.
const TIME_COLUMN: &str = "time";

/// What `annals-bench flight` runs.
#[derive(Debug)]
pub(crate) struct FlightOptions {
    pub(crate) iot: IotConfig,
    pub(crate) connections: usize,
    pub(crate) batch_lines: usize,
    pub(crate) gzip: bool,
    pub(crate) batches_per_call: usize,
    pub(crate) stream_runs: usize,
    pub(crate) annals_bin: Option<PathBuf>,
    pub(crate) work_dir: PathBuf,
    pub(crate) timeout: Duration,
}

impl FlightOptions {
    fn check(&self) -> Result<()> {
        if self.batches_per_call == 0 || self.batches_per_call > BATCHES_PER_CALL_MAX {
            bail!("--batches-per-call must be between 1 and {BATCHES_PER_CALL_MAX}");
        }
        if self.stream_runs == 0 || self.stream_runs > STREAM_RUNS_MAX {
            bail!("--stream-runs must be between 1 and {STREAM_RUNS_MAX}");
        }
        compare::check_scale(&self.iot)
    }
}

// ---------------------------------------------------------------------------------------------
// Line protocol to Arrow
// ---------------------------------------------------------------------------------------------

/// The rows of one table in one line-protocol body, as one Arrow batch.
#[derive(Debug)]
pub(crate) struct TableBatch {
    pub(crate) table: String,
    pub(crate) batch: RecordBatch,
}

/// One column being built; nulls stand for rows that lack it.
#[derive(Debug)]
enum Values {
    Tag(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl Values {
    /// An empty column of the kind of `v`.
    fn for_field(v: &FieldValue<'_>) -> Self {
        match v {
            FieldValue::F64(_) => Self::F64(Float64Builder::new()),
            FieldValue::I64(_) => Self::I64(Int64Builder::new()),
            FieldValue::U64(_) => Self::U64(UInt64Builder::new()),
            FieldValue::Bool(_) => Self::Bool(BooleanBuilder::new()),
            FieldValue::Str(_) => Self::Str(StringBuilder::new()),
        }
    }

    fn is_tag(&self) -> bool {
        matches!(self, Self::Tag(_))
    }

    fn len(&self) -> usize {
        match self {
            Self::Tag(b) | Self::Str(b) => b.len(),
            Self::F64(b) => b.len(),
            Self::I64(b) => b.len(),
            Self::U64(b) => b.len(),
            Self::Bool(b) => b.len(),
        }
    }

    /// Appends nulls until the column has `rows` values.
    fn pad_to(&mut self, rows: usize) {
        let n = rows - self.len();
        match self {
            Self::Tag(b) | Self::Str(b) => b.append_nulls(n),
            Self::F64(b) => b.append_nulls(n),
            Self::I64(b) => b.append_nulls(n),
            Self::U64(b) => b.append_nulls(n),
            Self::Bool(b) => b.append_nulls(n),
        }
    }

    /// Appends a field value; false if the column holds another kind.
    fn push_field(&mut self, v: &FieldValue<'_>) -> bool {
        match (self, v) {
            (Self::F64(b), FieldValue::F64(x)) => b.append_value(*x),
            (Self::I64(b), FieldValue::I64(x)) => b.append_value(*x),
            (Self::U64(b), FieldValue::U64(x)) => b.append_value(*x),
            (Self::Bool(b), FieldValue::Bool(x)) => b.append_value(*x),
            (Self::Str(b), FieldValue::Str(x)) => b.append_value(x),
            _ => return false,
        }
        true
    }

    /// What the column holds, for errors.
    fn kind(&self) -> &'static str {
        match self {
            Self::Tag(_) => "tag",
            Self::F64(_) => "float field",
            Self::I64(_) => "integer field",
            Self::U64(_) => "unsigned field",
            Self::Bool(_) => "boolean field",
            Self::Str(_) => "string field",
        }
    }

    /// The column's schema field (a tag marked with [`KIND_KEY`]) and its values.
    fn finish(self, name: &str) -> (Field, ArrayRef) {
        let tag = self.is_tag();
        let (data_type, array): (DataType, ArrayRef) = match self {
            Self::Tag(mut b) | Self::Str(mut b) => (DataType::Utf8, Arc::new(b.finish())),
            Self::F64(mut b) => (DataType::Float64, Arc::new(b.finish())),
            Self::I64(mut b) => (DataType::Int64, Arc::new(b.finish())),
            Self::U64(mut b) => (DataType::UInt64, Arc::new(b.finish())),
            Self::Bool(mut b) => (DataType::Boolean, Arc::new(b.finish())),
        };
        let mut field = Field::new(name, data_type, true);
        if tag {
            field =
                field.with_metadata(HashMap::from([(KIND_KEY.to_owned(), KIND_TAG.to_owned())]));
        }
        (field, array)
    }
}

/// The rows of one table, a column per tag and field seen so far.
#[derive(Debug)]
struct TableBuilder {
    table: String,
    time: Vec<i64>,
    /// Columns in the order they first appeared.
    columns: Vec<(String, Values)>,
    by_name: HashMap<String, usize>,
}

impl TableBuilder {
    fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            time: Vec::new(),
            columns: Vec::new(),
            by_name: HashMap::new(),
        }
    }

    /// The column `name`, made by `make` if new, padded with nulls to the current row.
    fn column(&mut self, name: &str, make: impl FnOnce() -> Values) -> &mut Values {
        let row = self.time.len();
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                self.columns.push((name.to_owned(), make()));
                self.by_name.insert(name.to_owned(), self.columns.len() - 1);
                self.columns.len() - 1
            }
        };
        let values = &mut self.columns[i].1;
        values.pad_to(row);
        values
    }

    /// Appends one parsed line of this table.
    fn push(&mut self, line: &Line<'_>) -> Result<()> {
        let at = line.line_number;
        for (key, value) in &line.tags {
            match self.column(key, || Values::Tag(StringBuilder::new())) {
                Values::Tag(b) => b.append_value(value),
                other => bail!(
                    "line {at}: {key:?} is a tag here but a {} in earlier lines",
                    other.kind()
                ),
            }
        }
        for (key, value) in &line.fields {
            let column = self.column(key, || Values::for_field(value));
            if !column.push_field(value) {
                bail!(
                    "line {at}: {key:?} is a {} field here but a {} in earlier lines",
                    value.type_name(),
                    column.kind()
                );
            }
        }
        self.time.push(line.time_ns);
        Ok(())
    }

    /// The batch: the tags by name, the fields by name, then `time`. The order does not
    /// depend on which line came first, so batches with the same columns have the same schema
    /// and can share a `DoPut` call.
    fn finish(mut self) -> Result<TableBatch> {
        let rows = self.time.len();
        self.columns
            .sort_by(|(a, va), (b, vb)| (!va.is_tag(), a).cmp(&(!vb.is_tag(), b)));
        let mut fields = Vec::with_capacity(self.columns.len() + 1);
        let mut arrays = Vec::with_capacity(self.columns.len() + 1);
        for (name, mut values) in self.columns {
            values.pad_to(rows);
            let (field, array) = values.finish(&name);
            fields.push(field);
            arrays.push(array);
        }
        fields.push(Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ));
        arrays.push(Arc::new(TimestampNanosecondArray::from(self.time)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .with_context(|| format!("building the Arrow batch of table {:?}", self.table))?;
        Ok(TableBatch {
            table: self.table,
            batch,
        })
    }
}

/// Parses one body with annals' line-protocol parser and returns one batch per table, in the
/// order the tables first appear: columns are the union of that table's tags (`Utf8`, marked
/// `annals.kind = "tag"`, by name) and fields (typed as written, by name) in the body, null
/// where a line lacks them, then `time` (`Timestamp(Nanosecond)`, never null).
pub(crate) fn lp_to_arrow(body: &[u8]) -> Result<Vec<TableBatch>> {
    let mut parser = Parser::new(body, &ParseOptions::default());
    let mut line = Line::new();
    let mut tables: Vec<TableBuilder> = Vec::new();
    while parser
        .next_into(&mut line)
        .context("the generated line protocol does not parse")?
    {
        let table = match tables.iter().position(|t| t.table == line.measurement) {
            Some(i) => &mut tables[i],
            None => {
                tables.push(TableBuilder::new(&line.measurement));
                tables.last_mut().expect("just pushed")
            }
        };
        table
            .push(&line)
            .with_context(|| format!("table {:?}", line.measurement))?;
    }
    tables.into_iter().map(TableBuilder::finish).collect()
}

// ---------------------------------------------------------------------------------------------
// The Flight input: IPC messages per DoPut call
// ---------------------------------------------------------------------------------------------

/// One `DoPut` call: the IPC messages of up to `--batches-per-call` batches of one table with
/// the same schema (a `DoPut` stream has one schema: the server's decoder refuses a second).
#[derive(Debug)]
struct Call {
    table: String,
    /// The schema message, carrying the path descriptor, then one message per batch.
    messages: Vec<FlightData>,
    batches: usize,
    rows: u64,
    /// Schema of the call's batches, once it has one.
    schema: Option<SchemaRef>,
}

impl Call {
    fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            messages: Vec::new(),
            batches: 0,
            rows: 0,
            schema: None,
        }
    }

    /// Whether a batch of `schema` may join the call.
    fn fits(&self, schema: &SchemaRef) -> bool {
        self.schema.as_ref().is_none_or(|s| s == schema)
    }

    /// Encodes `batch` onto the call; returns the IPC bytes (header and body) added.
    fn push(&mut self, db: &str, batch: &RecordBatch) -> Result<u64> {
        let schema = batch.schema();
        ensure!(
            self.fits(&schema),
            "a DoPut call carries batches of one schema"
        );
        let mut encoded = arrow_flight::utils::batches_to_flight_data(&schema, vec![batch.clone()])
            .context("encoding an Arrow batch as Flight IPC")?;
        // [schema, batch]: the batches have no dictionary columns.
        ensure!(encoded.len() == 2, "expected a schema and a batch message");
        let data = encoded.pop().expect("two messages");
        let mut schema_msg = encoded.pop().expect("two messages");
        let mut added = 0;
        if self.messages.is_empty() {
            schema_msg.flight_descriptor = Some(FlightDescriptor::new_path(vec![
                db.to_owned(),
                self.table.clone(),
            ]));
            added += ipc_len(&schema_msg);
            self.messages.push(schema_msg);
            self.schema = Some(schema);
        }
        let len = ipc_len(&data);
        ensure!(
            len as usize <= MESSAGE_BYTES_MAX - MESSAGE_FRAMING_MAX,
            "one Arrow batch of {} rows encodes to {len} bytes, more than a gRPC message may \
             carry ({MESSAGE_BYTES_MAX}); lower --batch-lines",
            batch.num_rows()
        );
        self.messages.push(data);
        self.batches += 1;
        self.rows += batch.num_rows() as u64;
        Ok(added + len)
    }
}

/// Bytes of Arrow IPC in one message (flatbuffer header and body).
fn ipc_len(m: &FlightData) -> u64 {
    (m.data_header.len() + m.data_body.len()) as u64
}

/// Every `DoPut` call of the Flight side, encoded before the clock starts.
#[derive(Debug)]
pub(crate) struct ArrowWorkload {
    /// In the order their last batch was generated, so tables interleave as in the stream.
    calls: Vec<Call>,
    pub(crate) rows: u64,
    pub(crate) batches: u64,
    /// Arrow IPC bytes sent (schema and batch messages).
    pub(crate) ipc_bytes: u64,
    /// Rows per table.
    pub(crate) table_rows: BTreeMap<String, u64>,
    /// Calls closed before `--batches-per-call` batches because the next batch of their table
    /// had other columns (a tag or field absent from a whole body).
    pub(crate) schema_cuts: usize,
}

impl ArrowWorkload {
    /// Converts every body into one batch per table and groups each table's batches, in
    /// order, `batches_per_call` to a call (fewer when a batch's schema differs from the
    /// previous one's, which then starts a new call).
    pub(crate) fn build(
        bodies: impl Iterator<Item = LineBatch>,
        db: &str,
        batches_per_call: usize,
    ) -> Result<Self> {
        let mut work = Self {
            calls: Vec::new(),
            rows: 0,
            batches: 0,
            ipc_bytes: 0,
            table_rows: BTreeMap::new(),
            schema_cuts: 0,
        };
        let mut open: BTreeMap<String, Call> = BTreeMap::new();
        for (i, body) in bodies.enumerate() {
            let tables = lp_to_arrow(&body.body).with_context(|| format!("body {i}"))?;
            for TableBatch { table, batch } in tables {
                if open.get(&table).is_some_and(|c| !c.fits(&batch.schema())) {
                    work.calls.push(open.remove(&table).expect("open call"));
                    work.schema_cuts += 1;
                }
                let call = open
                    .entry(table.clone())
                    .or_insert_with(|| Call::new(&table));
                work.ipc_bytes += call.push(db, &batch)?;
                work.batches += 1;
                work.rows += batch.num_rows() as u64;
                *work.table_rows.entry(table.clone()).or_default() += batch.num_rows() as u64;
                if call.batches == batches_per_call {
                    work.calls.push(open.remove(&table).expect("open call"));
                }
                if work.ipc_bytes > load::INPUT_BYTES_MAX {
                    bail!(
                        "the Arrow workload exceeds {} GiB held in memory; lower the scale",
                        load::INPUT_BYTES_MAX >> 30
                    );
                }
            }
        }
        work.calls.extend(open.into_values());
        if work.rows == 0 {
            bail!("the workload has no rows");
        }
        Ok(work)
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.len()
    }
}

// ---------------------------------------------------------------------------------------------
// DoPut
// ---------------------------------------------------------------------------------------------

/// What one `DoPut` batch's `PutResult` says (its `app_metadata`, the JSON write receipt; the
/// per-row entries are skipped unread).
#[derive(Debug, Deserialize)]
struct Receipt {
    rows: u64,
    batch: usize,
}

/// Figures of one timed phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timed {
    pub(crate) rows: u64,
    /// Bytes counted for MB/s (what they are depends on the phase).
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    /// The server's CPU time (user + system) over the phase, in seconds.
    pub(crate) server_cpu_secs: f64,
}

impl Timed {
    pub(crate) fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }

    /// Megabytes (10^6) per second.
    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// A Flight client over its own HTTP/2 connection to the server's HTTP port, opened on first
/// use (inside the clock, as the line-protocol client opens its connections).
fn flight_client(base_url: &str) -> Result<FlightServiceClient<Channel>> {
    let channel = GrpcEndpoint::from_shared(base_url.to_owned())
        .with_context(|| format!("bad server URL {base_url}"))?
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(FlightServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

/// A gRPC error as `call: Code message`.
fn status_error(call: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow!("{call} failed: {:?}: {}", s.code(), s.message())
}

/// Sends every call over `connections` concurrent connections, each taking the next call in
/// turn; fails on the first error status, missing receipt or wrong row count.
async fn put_all(
    base_url: &str,
    work: Arc<ArrowWorkload>,
    connections: usize,
    timeout: Duration,
) -> Result<(u64, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let clients = (0..connections)
        .map(|_| flight_client(base_url))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (work, next) = (work.clone(), next.clone());
        tasks.spawn(async move { put_worker(client, &work, &next, timeout).await });
    }
    let mut rows = 0;
    while let Some(joined) = tasks.join_next().await {
        // An error drops the set, which aborts the other workers.
        rows += joined.context("DoPut task panicked")??;
    }
    let elapsed = started.elapsed();
    ensure!(
        rows == work.rows,
        "the server acknowledged {rows} rows of the {} sent",
        work.rows
    );
    Ok((rows, elapsed))
}

/// Takes the next call until none is left; returns the rows acknowledged.
async fn put_worker(
    mut client: FlightServiceClient<Channel>,
    work: &ArrowWorkload,
    next: &AtomicUsize,
    timeout: Duration,
) -> Result<u64> {
    let mut rows = 0;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(call) = work.calls.get(i) else {
            return Ok(rows);
        };
        let what = format!(
            "DoPut call {i} ({} batches of {})",
            call.batches, call.table
        );
        rows += tokio::time::timeout(timeout, put_call(&mut client, call, &what))
            .await
            .map_err(|_| anyhow!("{what} took more than {timeout:?}"))??;
    }
}

/// Streams one call's messages and reads every `PutResult`: one per batch, in order, whose
/// rows add up to the call's.
async fn put_call(
    client: &mut FlightServiceClient<Channel>,
    call: &Call,
    what: &str,
) -> Result<u64> {
    let input = futures::stream::iter(call.messages.clone());
    let mut results = client
        .do_put(input)
        .await
        .map_err(|s| status_error(what, &s))?
        .into_inner();
    let (mut rows, mut receipts) = (0u64, 0usize);
    while let Some(result) = results
        .message()
        .await
        .map_err(|s| status_error(what, &s))?
    {
        let receipt: Receipt = serde_json::from_slice(&result.app_metadata)
            .with_context(|| format!("{what}: PutResult {receipts} is not a write receipt"))?;
        ensure!(
            receipt.batch == receipts,
            "{what}: receipt {receipts} is for batch {}",
            receipt.batch
        );
        rows += receipt.rows;
        receipts += 1;
    }
    ensure!(
        receipts == call.batches,
        "{what}: {receipts} PutResults for {} batches",
        call.batches
    );
    ensure!(
        rows == call.rows,
        "{what}: receipts acknowledge {rows} rows of {}",
        call.rows
    );
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Queries: DoGet, HTTP JSON, counts
// ---------------------------------------------------------------------------------------------

/// Rows and bytes of one result stream.
#[derive(Debug, Clone, Copy)]
struct Streamed {
    rows: u64,
    bytes: u64,
    elapsed: Duration,
}

/// One `DoGet` of `sql` on `db` with the InfluxDB 3 JSON ticket, decoded batch by batch as a
/// client would; bytes are the Arrow IPC received (headers and bodies).
async fn do_get_once(
    client: &mut FlightServiceClient<Channel>,
    db: &str,
    sql: &str,
) -> Result<Streamed> {
    let ticket = serde_json::json!({ "database": db, "sql_query": sql, "query_type": "sql" });
    let ticket = Ticket::new(serde_json::to_vec(&ticket)?);
    let what = format!("DoGet {sql:?} on {db}");
    let started = Instant::now();
    let stream = client
        .do_get(ticket)
        .await
        .map_err(|s| status_error(&what, &s))?
        .into_inner()
        .map_err(FlightError::from);
    let mut decoder = FlightDataDecoder::new(stream);
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(data) = decoder.next().await {
        let data = match data {
            Ok(d) => d,
            Err(FlightError::Tonic(s)) => return Err(status_error(&what, &s)),
            Err(e) => return Err(anyhow!(e).context(format!("{what}: bad stream"))),
        };
        bytes += ipc_len(&data.inner);
        if let DecodedPayload::RecordBatch(b) = data.payload {
            rows += b.num_rows() as u64;
        }
    }
    Ok(Streamed {
        rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Counts the rows of a JSON array of objects as it streams in, without keeping it.
#[derive(Debug, Default)]
struct JsonRows {
    rows: u64,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Seen the opening `[`.
    started: bool,
}

impl JsonRows {
    fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        for &b in bytes {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    if b == b'{' && self.depth == 1 {
                        self.rows += 1;
                    }
                    self.started = true;
                    self.depth += 1;
                }
                b']' | b'}' => {
                    self.depth = self
                        .depth
                        .checked_sub(1)
                        .context("unbalanced JSON answer")?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the array was closed.
    fn complete(&self) -> bool {
        self.started && self.depth == 0 && !self.in_string
    }
}

/// One `/api/v3/query_sql?format=json` of `sql` on `db`, read to the end; bytes are the JSON.
async fn http_json_once(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    sql: &str,
) -> Result<Streamed> {
    let started = Instant::now();
    let mut resp = post_query(client, server, db, sql, "json")
        .await
        .with_context(|| format!("HTTP query {sql:?} on {db}"))?;
    let mut counter = JsonRows::default();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.context("reading the JSON answer")? {
        bytes += chunk.len() as u64;
        counter.feed(&chunk)?;
    }
    ensure!(
        counter.complete(),
        "the JSON answer to {sql:?} was cut short"
    );
    Ok(Streamed {
        rows: counter.rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// `SELECT count(*)` of `table` in `db` over HTTP.
async fn count_rows(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    table: &str,
) -> Result<u64> {
    let sql = format!("SELECT count(*) AS n FROM \"{table}\"");
    let answer: serde_json::Value = post_query(client, server, db, &sql, "json")
        .await
        .with_context(|| format!("counting {db}.{table}"))?
        .json()
        .await
        .with_context(|| format!("reading the count of {db}.{table}"))?;
    answer
        .get(0)
        .and_then(|row| row.get("n"))
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("count of {db}.{table}: unexpected answer {answer}"))
}

/// Both databases must hold exactly the generated rows of every table.
async fn verify_counts(
    client: &reqwest::Client,
    server: &Server,
    table_rows: &BTreeMap<String, u64>,
) -> Result<()> {
    for (table, &want) in table_rows {
        for db in [LP_DB, ARROW_DB] {
            let have = count_rows(client, server, db, table).await?;
            ensure!(
                have == want,
                "{db}.{table} holds {have} rows, {want} were generated"
            );
        }
        eprintln!("  {table}: {want} rows in both {LP_DB} and {ARROW_DB}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Everything measured, for the table.
#[derive(Debug)]
struct Figures {
    server: String,
    lp: LoadReport,
    lp_cpu_secs: f64,
    lp_requests: usize,
    put: PutFigures,
    /// The median `DoGet` run.
    get: Timed,
    /// Timed `DoGet` runs.
    get_runs: usize,
    json: Timed,
    peak_rss: u64,
}

/// `r`, its error with the server's exit status and log tail if the server is gone.
fn explained<T>(r: Result<T>, server: &mut Server) -> Result<T> {
    r.map_err(|e| match server.check_alive() {
        Ok(()) => e,
        Err(dead) => e.context(format!("{dead:#}")),
    })
}

/// Starts the server, runs the steps of the module doc, stops the server and prints the
/// table; fails on the first error, row-count mismatch or server exit.
pub(crate) async fn run(opts: FlightOptions) -> Result<()> {
    opts.check()?;
    let bin = compare::resolve_annals(opts.annals_bin.as_deref())?;
    let mut server = server::start_annals(&bin, &opts.work_dir)?;
    eprintln!(
        "{}: starting {} at {}",
        server.name, server.version, server.base_url
    );
    server.wait_ready("/health", Some(200)).await?;
    let http = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT_MAX)
        .build()
        .context("building the HTTP client")?;

    let (lp, lp_cpu_secs, lp_requests) = explained(ingest_lp(&server, &opts).await, &mut server)?;
    let put = explained(ingest_arrow(&server, &opts).await, &mut server)?;
    ensure!(
        put.timed.rows == lp.rows,
        "the Flight side wrote {} rows, line protocol {}",
        put.timed.rows,
        lp.rows
    );
    eprintln!("checking row counts...");
    explained(
        verify_counts(&http, &server, &put.table_rows).await,
        &mut server,
    )?;
    let readings = put.table_rows.get("readings").copied().unwrap_or(0);
    let (get, get_runs) = explained(stream(&server, &opts, readings).await, &mut server)?;
    eprintln!("{ARROW_DB}: {STREAM_SQL} as JSON over HTTP...");
    let cpu = server.cpu_seconds()?;
    let json = explained(
        http_json_once(&http, &server, ARROW_DB, STREAM_SQL).await,
        &mut server,
    )?;
    ensure!(
        json.rows == readings,
        "the JSON answer has {} rows, readings has {readings}",
        json.rows
    );
    let json = Timed {
        rows: json.rows,
        bytes: json.bytes,
        elapsed: json.elapsed,
        server_cpu_secs: server.cpu_seconds()? - cpu,
    };
    server.check_alive()?;
    let figures = Figures {
        server: server.version.clone(),
        lp,
        lp_cpu_secs,
        lp_requests,
        put,
        get,
        get_runs,
        json,
        peak_rss: server.peak_rss_bytes()?,
    };
    server.stop();
    print_table(&opts, &figures);
    Ok(())
}

/// The line-protocol side: every body into [`LP_DB`]; returns the report, the server's CPU
/// seconds and the number of bodies.
async fn ingest_lp(server: &Server, opts: &FlightOptions) -> Result<(LoadReport, f64, usize)> {
    let iot = &opts.iot;
    eprintln!(
        "generating {} trucks x {} steps (seed {}) in bodies of {} lines...",
        iot.trucks, iot.steps, iot.seed, opts.batch_lines
    );
    let work = Workload::from_batches(iot.batches(opts.batch_lines), opts.gzip)?;
    let requests = work.requests();
    eprintln!(
        "{LP_DB}: {} rows, {:.1} MB of line protocol in {requests} bodies over {} connections...",
        work.lines,
        work.raw_bytes as f64 / 1e6,
        opts.connections
    );
    let load_opts = LoadOptions {
        url: server.base_url.clone(),
        db: LP_DB.to_owned(),
        endpoint: Endpoint::V3,
        connections: opts.connections,
        timeout: opts.timeout,
        progress: true,
    };
    let cpu = server.cpu_seconds()?;
    // The bodies are freed when the load returns, before the Arrow side is built.
    let report = load::run(&load_opts, Arc::new(work)).await?;
    let cpu = server.cpu_seconds()? - cpu;
    eprintln!("{LP_DB}: {:.0} rows/s", report.rows_per_sec());
    Ok((report, cpu, requests))
}

/// What the Flight side sent and how fast.
#[derive(Debug)]
struct PutFigures {
    timed: Timed,
    calls: usize,
    /// Calls closed early because the next batch had other columns.
    schema_cuts: usize,
    batches: u64,
    table_rows: BTreeMap<String, u64>,
}

/// The Flight side: the same bodies as Arrow into [`ARROW_DB`]; the batches are freed before
/// it returns.
async fn ingest_arrow(server: &Server, opts: &FlightOptions) -> Result<PutFigures> {
    eprintln!("converting the same bodies to Arrow batches...");
    let work = ArrowWorkload::build(
        opts.iot.batches(opts.batch_lines),
        ARROW_DB,
        opts.batches_per_call,
    )?;
    eprintln!(
        "{ARROW_DB}: {} rows, {:.1} MB of Arrow IPC in {} batches, {} DoPut calls ({} cut \
         short by a change of columns) over {} connections...",
        work.rows,
        work.ipc_bytes as f64 / 1e6,
        work.batches,
        work.calls(),
        work.schema_cuts,
        opts.connections
    );
    let (calls, schema_cuts) = (work.calls(), work.schema_cuts);
    let (batches, ipc_bytes) = (work.batches, work.ipc_bytes);
    let table_rows = work.table_rows.clone();
    let cpu = server.cpu_seconds()?;
    let (rows, elapsed) = put_all(
        &server.base_url,
        Arc::new(work),
        opts.connections,
        opts.timeout,
    )
    .await?;
    let timed = Timed {
        rows,
        bytes: ipc_bytes,
        elapsed,
        server_cpu_secs: server.cpu_seconds()? - cpu,
    };
    eprintln!("{ARROW_DB}: {:.0} rows/s", timed.rows_per_sec());
    Ok(PutFigures {
        timed,
        calls,
        schema_cuts,
        batches,
        table_rows,
    })
}

/// One warm-up, then `--stream-runs` timed `DoGet` runs of [`STREAM_SQL`]; returns the median
/// run (by time) and the number of timed runs. Every run must return all `rows`.
async fn stream(server: &Server, opts: &FlightOptions, rows: u64) -> Result<(Timed, usize)> {
    let mut client = flight_client(&server.base_url)?;
    let mut runs = Vec::with_capacity(opts.stream_runs);
    for run in 0..=opts.stream_runs {
        let cpu = server.cpu_seconds()?;
        let s = tokio::time::timeout(
            QUERY_TIMEOUT_MAX,
            do_get_once(&mut client, ARROW_DB, STREAM_SQL),
        )
        .await
        .map_err(|_| anyhow!("DoGet took more than {QUERY_TIMEOUT_MAX:?}"))??;
        ensure!(
            s.rows == rows,
            "DoGet returned {} rows, readings has {rows}",
            s.rows
        );
        let label = if run == 0 { "warm-up" } else { "run" };
        eprintln!(
            "{ARROW_DB}: DoGet {label}: {} rows in {:.2} s",
            s.rows,
            s.elapsed.as_secs_f64()
        );
        if run > 0 {
            runs.push(Timed {
                rows: s.rows,
                bytes: s.bytes,
                elapsed: s.elapsed,
                server_cpu_secs: server.cpu_seconds()? - cpu,
            });
        }
    }
    runs.sort_by_key(|t| t.elapsed);
    Ok((runs[(runs.len() - 1) / 2], runs.len()))
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One row of the table.
fn print_row(step: &str, t: &Timed, counted: &str) {
    println!(
        "| {step} | {} | {:.2} | {} | {:.1} | {counted} | {:.2} | {:.2} |",
        grouped(t.rows),
        t.elapsed.as_secs_f64(),
        grouped(t.rows_per_sec().round() as u64),
        t.mb_per_sec(),
        t.server_cpu_secs,
        t.server_cpu_secs * 1e6 / t.rows.max(1) as f64,
    );
}

fn print_table(opts: &FlightOptions, f: &Figures) {
    let iot = &opts.iot;
    let args: Vec<String> = std::env::args().collect();
    let lp = Timed {
        rows: f.lp.rows,
        bytes: f.lp.raw_bytes,
        elapsed: f.lp.elapsed,
        server_cpu_secs: f.lp_cpu_secs,
    };
    let put = &f.put.timed;
    println!();
    println!(
        "### Line protocol vs Arrow Flight, TSBS iot: {} trucks x {} steps of 10 s",
        iot.trucks, iot.steps
    );
    println!();
    println!("`{}`", args.join(" "));
    println!();
    println!(
        "{} rows (seed {}{}) into {}, one server for the whole run ({} cores, shared with this \
         client). Line protocol: {} bodies of up to {} lines ({:.1} MB{}), `POST \
         /api/v3/write_lp` into `{LP_DB}` over {} HTTP/1.1 connections. Flight: the same bodies \
         as {} Arrow batches (one per table and body; {:.1} MB of uncompressed IPC, tags `Utf8`), \
         up to {} per `DoPut` call ({} calls, {} closed early by a change of columns) into \
         `{ARROW_DB}` over {} HTTP/2 connections, \
         every `PutResult` read. Each side's input was built before its clock started; Flight \
         ran second, on the server already holding the line-protocol rows. Query rows stream \
         `{STREAM_SQL}` from `{ARROW_DB}`.",
        grouped(lp.rows),
        iot.seed,
        if iot.irregularities == annals_bench::tsbs::Irregularities::NONE {
            ", regular"
        } else {
            ", TSBS irregularities"
        },
        f.server,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        f.lp_requests,
        opts.batch_lines,
        f.lp.raw_bytes as f64 / 1e6,
        if opts.gzip { ", gzipped" } else { "" },
        opts.connections,
        f.put.batches,
        put.bytes as f64 / 1e6,
        opts.batches_per_call,
        f.put.calls,
        f.put.schema_cuts,
        opts.connections,
    );
    println!();
    println!("| step | rows | s | rows/s | MB/s | MB of | server CPU s | server CPU µs/row |");
    println!("|---|---:|---:|---:|---:|---|---:|---:|");
    print_row("ingest: line protocol (HTTP)", &lp, "line protocol");
    print_row("ingest: Arrow Flight `DoPut`", put, "Arrow IPC");
    print_row(
        &format!("query: Flight `DoGet`, median of {}", f.get_runs),
        &f.get,
        "Arrow IPC",
    );
    print_row(
        "query: HTTP `query_sql?format=json`, one run",
        &f.json,
        "JSON",
    );
    println!();
    let ratio = put.rows_per_sec() / lp.rows_per_sec();
    // CPU time is counted in 10 ms ticks: a short load may show none.
    let cpu_ratio = if lp.server_cpu_secs > 0.0 && put.rows > 0 && lp.rows > 0 {
        let per_row = |t: &Timed| t.server_cpu_secs / t.rows as f64;
        format!("{:.2}x", per_row(put) / per_row(&lp))
    } else {
        "n/a (too short to measure)".to_owned()
    };
    println!(
        "**DoPut / line protocol: {ratio:.2}x rows/s** (target: at least 2x, {}); server CPU per \
         row {cpu_ratio}. Server peak RSS {:.0} MiB (`VmHWM`, whole run).",
        if ratio >= 2.0 { "met" } else { "not met" },
        f.peak_rss as f64 / (1 << 20) as f64,
    );
    println!();
    println!(
        "`DoPut` answers every batch with its write receipt (one entry per row); the \
         line-protocol requests ask for none. The `DoGet` figure follows one warm-up run."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};

    const BODY: &[u8] = b"readings,name=t0,fleet=East lat=1.5,lon=2 100\n\
        diagnostics,name=t0 status=3i 100\n\
        readings,name=t1 lat=3,speed=4 200\n\
        \n\
        # a comment\n\
        readings,name=t2,model=H-2 lon=5 300\n";

    fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        column(b, name)
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    }

    #[test]
    fn lines_become_one_batch_per_table_with_nulls_where_absent() {
        let tables = lp_to_arrow(BODY).unwrap();
        let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, ["readings", "diagnostics"]);

        let r = &tables[0].batch;
        assert_eq!(r.num_rows(), 3);
        let schema = r.schema();
        let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        // Union of the table's tags, then of its fields, each by name, then time.
        assert_eq!(
            cols,
            ["fleet", "model", "name", "lat", "lon", "speed", "time"]
        );
        for tag in ["name", "fleet", "model"] {
            let f = schema.field_with_name(tag).unwrap();
            assert_eq!(f.data_type(), &DataType::Utf8);
            assert_eq!(
                f.metadata().get(KIND_KEY).map(String::as_str),
                Some(KIND_TAG)
            );
        }
        for field in ["lat", "lon", "speed"] {
            let f = schema.field_with_name(field).unwrap();
            assert_eq!(f.data_type(), &DataType::Float64);
            assert!(f.metadata().is_empty(), "{field} is not a tag");
        }
        assert_eq!(
            strings(r, "name"),
            [Some("t0".into()), Some("t1".into()), Some("t2".into())]
        );
        assert_eq!(strings(r, "fleet"), [Some("East".into()), None, None]);
        assert_eq!(strings(r, "model"), [None, None, Some("H-2".into())]);
        let floats = |name: &str| -> Vec<Option<f64>> {
            column(r, name)
                .as_primitive::<Float64Type>()
                .iter()
                .collect()
        };
        assert_eq!(floats("lat"), [Some(1.5), Some(3.0), None]);
        assert_eq!(floats("lon"), [Some(2.0), None, Some(5.0)]);
        assert_eq!(floats("speed"), [None, Some(4.0), None]);

        let time = schema.field_with_name("time").unwrap();
        assert_eq!(
            time.data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, None)
        );
        assert!(!time.is_nullable());
        let times = column(r, "time").as_primitive::<TimestampNanosecondType>();
        assert_eq!(times.null_count(), 0);
        assert_eq!(times.values().to_vec(), [100, 200, 300]);

        let d = &tables[1].batch;
        assert_eq!(d.num_rows(), 1);
        let status = column(d, "status").as_primitive::<Int64Type>();
        assert_eq!(status.value(0), 3);
        assert_eq!(
            column(d, "time")
                .as_primitive::<TimestampNanosecondType>()
                .value(0),
            100
        );
    }

    #[test]
    fn kind_conflicts_are_refused_with_the_line() {
        let err = lp_to_arrow(b"m v=1 1\nm v=2i 2\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 2") && text.contains("\"v\""), "{text}");
        let err = lp_to_arrow(b"m,a=x v=1 1\nm a=2 2\n").unwrap_err();
        assert!(format!("{err:#}").contains("tag"), "{err:#}");
    }

    #[tokio::test]
    async fn generated_bodies_convert_to_every_row() {
        let cfg = IotConfig::new(3, Duration::from_secs(600), 1).unwrap();
        let lines: usize = cfg.batches(50).map(|b| b.lines).sum();
        let work = ArrowWorkload::build(cfg.batches(50), "db", 4).unwrap();
        assert_eq!(work.rows, lines as u64);
        assert_eq!(work.table_rows.values().sum::<u64>(), work.rows);
        assert_eq!(
            work.table_rows.keys().collect::<Vec<_>>(),
            ["diagnostics", "readings"]
        );
        // Calls hold one table's batches, at most four, and start with the descriptor.
        assert_eq!(
            work.calls.iter().map(|c| c.batches as u64).sum::<u64>(),
            work.batches
        );
        for call in &work.calls {
            assert!((1..=4).contains(&call.batches));
            // One schema message, then the batches.
            assert_eq!(call.messages.len(), call.batches + 1);
            let first = call.messages[0].flight_descriptor.as_ref().unwrap();
            assert_eq!(first.path, ["db".to_owned(), call.table.clone()]);
            assert!(call.messages[1..]
                .iter()
                .all(|m| m.flight_descriptor.is_none()));
        }
        // Decoded as the server decodes a DoPut (one schema per stream), the calls give back
        // every row.
        let mut rows = 0;
        for call in &work.calls {
            let input = futures::stream::iter(call.messages.clone().into_iter().map(Ok));
            let batches: Vec<RecordBatch> =
                arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(input)
                    .try_collect()
                    .await
                    .unwrap();
            assert_eq!(batches.len(), call.batches);
            rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
        assert_eq!(rows, work.rows);
    }

    #[test]
    fn json_rows_are_counted_across_chunks() {
        let answer = br#"[{"a":"x{y}","b":1},{"a":"q\"[{","n":[1,{"z":2}]},{}]"#;
        for cut in 0..answer.len() {
            let mut c = JsonRows::default();
            c.feed(&answer[..cut]).unwrap();
            assert!(!c.complete());
            c.feed(&answer[cut..]).unwrap();
            assert!(c.complete());
            assert_eq!(c.rows, 3);
        }
        let mut empty = JsonRows::default();
        empty.feed(b"[]").unwrap();
        assert!(empty.complete() && empty.rows == 0);
        assert!(JsonRows::default().feed(b"]").is_err());
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}

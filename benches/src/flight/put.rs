//! Flight `DoPut`: the Arrow batches of a workload grouped into calls and encoded before the
//! clock starts ([`ArrowWorkload`]), then streamed over concurrent gRPC connections, every
//! `PutResult` read ([`put_all`], or [`ingest_arrow`] for the whole step with its figures).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_bench::tsbs::{IotConfig, LineBatch};
use anyhow::{anyhow, bail, ensure, Context, Result};
use arrow::datatypes::SchemaRef;
use arrow::ipc::MessageHeader;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightDescriptor};
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};

use super::arrow::{lp_to_arrow, ArrowTags, TableBatch};
use crate::load;
use crate::server::Server;

/// Largest gRPC message a default server accepts or sends (annals-flight's
/// `MESSAGE_BYTES_MAX_DEFAULT`); one encoded batch must fit with room for its framing.
pub(super) const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Room left in a message for the protobuf and gRPC framing around the IPC bytes.
const MESSAGE_FRAMING_MAX: usize = 64 << 10;

/// One `DoPut` call: the IPC messages of up to `--batches-per-call` batches of one table with
/// the same schema (a `DoPut` stream has one schema: the server's decoder refuses a second).
#[derive(Debug)]
struct Call {
    table: String,
    /// The schema message, carrying the path descriptor, then per batch its dictionary
    /// messages (tags as dictionaries) and its record batch message.
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
        // [schema, one message per dictionary (tags with `--arrow-tags dict`), batch]: every
        // batch resends its dictionaries, which replace the previous batch's.
        let encoder = FlightDataEncoderBuilder::new()
            .with_dictionary_handling(DictionaryHandling::Resend)
            // Never split: one input batch is one record batch message (its size is checked
            // below); the encoder's estimate counts buffer capacity, not IPC bytes.
            .with_max_flight_data_size(usize::MAX)
            .build(futures::stream::iter([Ok(batch.clone())]));
        let mut encoded: Vec<FlightData> =
            futures::executor::block_on(futures::TryStreamExt::try_collect(encoder))
                .context("encoding an Arrow batch as Flight IPC")?;
        ensure!(encoded.len() >= 2, "expected a schema and a batch message");
        let data: Vec<FlightData> = encoded.split_off(1);
        let mut schema_msg = encoded.pop().expect("a schema message");
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
        let kinds: Vec<MessageHeader> = data.iter().map(header_type).collect::<Result<_>>()?;
        ensure!(
            kinds.last() == Some(&MessageHeader::RecordBatch)
                && kinds[..kinds.len() - 1]
                    .iter()
                    .all(|k| *k == MessageHeader::DictionaryBatch),
            "expected a batch's dictionaries, then its one record batch; got {kinds:?}"
        );
        for m in &data {
            ensure!(
                ipc_len(m) as usize <= MESSAGE_BYTES_MAX - MESSAGE_FRAMING_MAX,
                "one Arrow batch of {} rows encodes to a message of {} bytes, more than a gRPC \
                 message may carry ({MESSAGE_BYTES_MAX}); lower --batch-lines",
                batch.num_rows(),
                ipc_len(m)
            );
        }
        let len: u64 = data.iter().map(ipc_len).sum();
        self.messages.extend(data);
        self.batches += 1;
        self.rows += batch.num_rows() as u64;
        Ok(added + len)
    }
}

/// What an IPC message holds (schema, dictionary batch, record batch).
pub(super) fn header_type(m: &FlightData) -> Result<MessageHeader> {
    let message = arrow::ipc::root_as_message(&m.data_header)
        .map_err(|e| anyhow!("an IPC message header does not parse: {e}"))?;
    Ok(message.header_type())
}

/// Bytes of Arrow IPC in one message (flatbuffer header and body).
pub(super) fn ipc_len(m: &FlightData) -> u64 {
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
        tags: ArrowTags,
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
                let batch = tags.apply(batch)?;
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
pub(super) fn flight_client(base_url: &str) -> Result<FlightServiceClient<Channel>> {
    let channel = GrpcEndpoint::from_shared(base_url.to_owned())
        .with_context(|| format!("bad server URL {base_url}"))?
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(FlightServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

/// A gRPC error as `call: Code message`.
pub(super) fn status_error(call: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow!("{call} failed: {:?}: {}", s.code(), s.message())
}

/// Sends every call over `connections` concurrent connections, each taking the next call in
/// turn; fails on the first error status, missing receipt or wrong row count.
pub(crate) async fn put_all(
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
    let mut request = tonic::Request::new(futures::stream::iter(call.messages.clone()));
    // The row count per batch, no row's position: the line-protocol side asks for no receipt
    // at all.
    request.metadata_mut().insert(
        "annals-receipt",
        tonic::metadata::MetadataValue::from_static("count"),
    );
    let mut results = client
        .do_put(request)
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

/// One `DoPut` ingest step: the generated bodies of `iot`, `batch_lines` lines each, as Arrow
/// batches into `db`.
#[derive(Debug)]
pub(crate) struct PutOptions<'a> {
    pub(crate) iot: &'a IotConfig,
    pub(crate) batch_lines: usize,
    pub(crate) db: &'a str,
    pub(crate) batches_per_call: usize,
    pub(crate) connections: usize,
    /// Per call.
    pub(crate) timeout: Duration,
    pub(crate) tags: ArrowTags,
}

/// What one `DoPut` step sent and how fast.
#[derive(Debug)]
pub(crate) struct PutFigures {
    /// Rows acknowledged, Arrow IPC bytes sent, the wall time from the first call to the last
    /// receipt, and the server's CPU over it.
    pub(crate) timed: Timed,
    pub(crate) calls: usize,
    /// Calls closed early because the next batch had other columns.
    pub(crate) schema_cuts: usize,
    pub(crate) batches: u64,
    pub(crate) table_rows: BTreeMap<String, u64>,
}

/// Converts the bodies to Arrow and encodes every call (before the clock), then sends them all
/// (timed); the batches are freed before it returns. Fails on any error status or on receipts
/// that do not acknowledge every row.
pub(crate) async fn ingest_arrow(server: &Server, opts: &PutOptions<'_>) -> Result<PutFigures> {
    let db = opts.db;
    let work = ArrowWorkload::build(
        opts.iot.batches(opts.batch_lines),
        db,
        opts.batches_per_call,
        opts.tags,
    )?;
    eprintln!(
        "{db}: {} rows, {:.1} MB of Arrow IPC in {} batches, {} DoPut calls ({} cut \
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
    eprintln!("{db}: {:.0} rows/s (DoPut)", timed.rows_per_sec());
    Ok(PutFigures {
        timed,
        calls,
        schema_cuts,
        batches,
        table_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::compute::cast;
    use arrow::datatypes::DataType;
    use futures::TryStreamExt as _;

    use super::super::arrow::KIND_KEY;

    #[tokio::test]
    async fn generated_bodies_convert_to_every_row() {
        let cfg = IotConfig::new(3, Duration::from_secs(600), 1).unwrap();
        let lines: usize = cfg.batches(50).map(|b| b.lines).sum();
        for tags in [ArrowTags::Utf8, ArrowTags::Dict] {
            let work = ArrowWorkload::build(cfg.batches(50), "db", 4, tags).unwrap();
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
                // One schema message, then each batch: its dictionaries (only with dictionary
                // tags), then its record batch.
                let kinds: Vec<MessageHeader> = call
                    .messages
                    .iter()
                    .map(|m| header_type(m).unwrap())
                    .collect();
                assert_eq!(kinds[0], MessageHeader::Schema);
                let mut dictionaries = 0;
                let mut batches = 0;
                for k in &kinds[1..] {
                    match *k {
                        MessageHeader::DictionaryBatch => dictionaries += 1,
                        MessageHeader::RecordBatch => {
                            assert_eq!(dictionaries > 0, tags == ArrowTags::Dict, "{kinds:?}");
                            dictionaries = 0;
                            batches += 1;
                        }
                        other => panic!("unexpected {other:?} message"),
                    }
                }
                assert_eq!((batches, dictionaries), (call.batches, 0), "{kinds:?}");
                let first = call.messages[0].flight_descriptor.as_ref().unwrap();
                assert_eq!(first.path, ["db".to_owned(), call.table.clone()]);
                assert!(call.messages[1..]
                    .iter()
                    .all(|m| m.flight_descriptor.is_none()));
            }
            // Decoded as the server decodes a DoPut (one schema per stream), the calls give back
            // every batch of each table, in order, with the values of the Utf8 batches.
            let mut decoded: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
            for call in &work.calls {
                let input = futures::stream::iter(call.messages.clone().into_iter().map(Ok));
                let batches: Vec<RecordBatch> =
                    arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(input)
                        .try_collect()
                        .await
                        .unwrap();
                assert_eq!(batches.len(), call.batches);
                decoded
                    .entry(call.table.clone())
                    .or_default()
                    .extend(batches);
            }
            let mut sources: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
            for body in cfg.batches(50) {
                for t in lp_to_arrow(&body.body).unwrap() {
                    sources.entry(t.table).or_default().push(t.batch);
                }
            }
            assert_eq!(
                decoded.keys().collect::<Vec<_>>(),
                sources.keys().collect::<Vec<_>>()
            );
            let mut rows = 0;
            for (table, source) in &sources {
                let got = &decoded[table];
                assert_eq!(got.len(), source.len(), "{table}");
                for (g, want) in got.iter().zip(source) {
                    assert_eq!(g.num_columns(), want.num_columns());
                    for (f, w) in want.schema().fields().iter().zip(want.columns()) {
                        let c = g.column_by_name(f.name()).unwrap();
                        let is_dict = matches!(c.data_type(), DataType::Dictionary(..));
                        assert_eq!(
                            is_dict,
                            tags == ArrowTags::Dict && f.metadata().contains_key(KIND_KEY)
                        );
                        let c = if is_dict {
                            cast(c, &DataType::Utf8).unwrap()
                        } else {
                            c.clone()
                        };
                        assert_eq!(&c, w, "{table}.{}", f.name());
                    }
                    rows += g.num_rows() as u64;
                }
            }
            assert_eq!(rows, work.rows);
        }
    }
}

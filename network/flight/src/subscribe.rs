//! Live subscriptions over Flight `DoGet` (a JSON ticket with a `"subscribe"` member).
//!
//! Ticket: `{"subscribe": {"db": "fleet", "table": "m", "from": <cursor>, "where": "<SQL
//! condition>", "heartbeat": <seconds>}}`; `from` is absent or `null` (from the first
//! committed row), `"latest"`, an epoch (number or string: rows committed after that
//! checkpoint) or a cursor string a previous message carried; `where` and `heartbeat`
//! (default 15 s, 0.1 to 300) are optional. The token needs Read on `db`.
//!
//! The stream is the schema message, then one record-batch message per batch of at most
//! [`annals_query::subscribe::BATCH_ROWS_MAX`] rows (tags as plain strings, then `_tx_id`,
//! `_branch`, `_height`, `_index`), each with `app_metadata` = the UTF-8 cursor to resume
//! after it. After a heartbeat interval without rows, a message with no data and only
//! `app_metadata` (the current cursor) keeps the call alive; pyarrow's `read_chunk()` returns
//! it as a chunk whose `data` is `None`. Reconnecting with `"from": <last cursor processed>`
//! delivers every committed row exactly once. The stream does not end by itself.
//!
//! Refused before streaming: `InvalidArgument` (bad ticket, cursor or filter), `NotFound`
//! (database or table), `ResourceExhausted` (too many open subscriptions),
//! `PermissionDenied`/`Unauthenticated` (token).

use std::sync::Arc;
use std::time::Duration;

use annals_auth::{Action, Grant};
use annals_query::subscribe::{
    Delivery, Start, SubscribeError, SubscribeOptions, SubscribeRequest, Subscription,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow::record_batch::RecordBatch;
use arrow_flight::{FlightData, SchemaAsIpc};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tonic::Status;

use crate::FlightContext;

/// The `"subscribe"` member of a ticket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeTicket {
    db: String,
    table: String,
    #[serde(default)]
    from: Option<Value>,
    #[serde(default, rename = "where")]
    filter: Option<String>,
    #[serde(default)]
    heartbeat: Option<f64>,
}

fn parse(ticket: &Value) -> Result<(SubscribeRequest, Duration), Status> {
    let bad = Status::invalid_argument;
    let t: SubscribeTicket = serde_json::from_value(ticket["subscribe"].clone()).map_err(|e| {
        bad(format!(
            "bad subscribe ticket ({e}): expected {{\"subscribe\": {{\"db\": .., \"table\": .., \
             \"from\": .., \"where\": ..}}}}"
        ))
    })?;
    if t.db.is_empty() || t.table.is_empty() {
        return Err(bad("the subscribe ticket needs db and table".into()));
    }
    let from = match &t.from {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(v) => return Err(bad(format!("bad cursor {v}: a string or an epoch"))),
    };
    let start = Start::parse(from.as_deref()).map_err(|e| bad(e.to_string()))?;
    let heartbeat = annals_query::subscribe::heartbeat_from_secs(t.heartbeat).map_err(bad)?;
    Ok((
        SubscribeRequest {
            db: t.db,
            table: t.table,
            start,
            filter: t.filter,
        },
        heartbeat,
    ))
}

fn status(e: &SubscribeError) -> Status {
    #[allow(unreachable_patterns)] // stays total if the query crate adds a variant
    match e {
        SubscribeError::DatabaseNotFound(_) | SubscribeError::TableNotFound { .. } => {
            Status::not_found(e.to_string())
        }
        SubscribeError::BadCursor { .. } | SubscribeError::BadFilter(_) => {
            Status::invalid_argument(e.to_string())
        }
        SubscribeError::TooMany(_) => Status::resource_exhausted(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// The schema sent: dictionary columns (tags) as their value type.
fn hydrated(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Dictionary(_, v) => {
                    Arc::new(Field::new(f.name(), v.as_ref().clone(), f.is_nullable()))
                }
                _ => f.clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

/// Encodes deliveries as Flight data: one message per batch, the cursor in `app_metadata`.
struct Encoder {
    schema: SchemaRef,
    gen: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    context: IpcWriteContext,
}

impl Encoder {
    fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            gen: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            options: IpcWriteOptions::default(),
            context: IpcWriteContext::default(),
        }
    }

    fn schema_message(&self) -> FlightData {
        SchemaAsIpc::new(&self.schema, &self.options).into()
    }

    fn message(&mut self, d: &Delivery) -> Result<FlightData, Status> {
        let (mut data, cursor) = match d {
            Delivery::Progress { cursor } => (FlightData::default(), cursor),
            Delivery::Rows { batch, cursor } => {
                let columns = batch
                    .columns()
                    .iter()
                    .zip(self.schema.fields())
                    .map(|(c, f)| {
                        if c.data_type() == f.data_type() {
                            Ok(c.clone())
                        } else {
                            arrow::compute::cast(c, f.data_type())
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::internal(e.to_string()))?;
                let batch = RecordBatch::try_new(self.schema.clone(), columns)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let (dicts, encoded) = self
                    .gen
                    .encode(&batch, &mut self.tracker, &self.options, &mut self.context)
                    .map_err(|e| Status::internal(e.to_string()))?;
                debug_assert!(dicts.is_empty(), "dictionaries are hydrated");
                (FlightData::from(encoded), cursor)
            }
        };
        data.app_metadata = cursor.to_string().into_bytes().into();
        Ok(data)
    }
}

pub(crate) async fn do_get(
    ctx: &FlightContext,
    grant: &Grant,
    ticket: &Value,
) -> Result<BoxStream<'static, Result<FlightData, Status>>, Status> {
    let (req, heartbeat) = parse(ticket)?;
    grant
        .check(Action::Read, Some(req.db.as_str()))
        .map_err(|e| crate::auth_status(&e))?;
    let opts = SubscribeOptions {
        heartbeat,
        ..SubscribeOptions::default()
    };
    let sub = Subscription::open(&ctx.query, &req, opts)
        .await
        .map_err(|e| status(&e))?;
    tracing::debug!(db = %req.db, table = %req.table, cursor = %sub.cursor(), "flight subscription opened");
    metrics::counter!("annals_subscriptions_total").increment(1);
    let mut enc = Encoder::new(hydrated(sub.schema()));
    let head = futures::stream::once(futures::future::ready(Ok(enc.schema_message())));
    let body = sub.into_stream().map(move |d| match d {
        Ok(d) => enc.message(&d),
        Err(e) => Err(status(&e)),
    });
    Ok(head.chain(body).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_query::subscribe::Cursor;
    use arrow::array::{DictionaryArray, Int64Array};
    use arrow::datatypes::Int32Type;
    use serde_json::json;

    #[test]
    fn subscribe_tickets_are_checked() {
        let (r, hb) = parse(&json!({"subscribe": {"db": "d", "table": "t", "from": 7,
            "where": "v > 1", "heartbeat": 1}}))
        .unwrap();
        assert_eq!((r.db.as_str(), r.table.as_str()), ("d", "t"));
        assert_eq!(
            r.start,
            Start::After(Cursor {
                done: Some(7),
                within: None
            })
        );
        assert_eq!(r.filter.as_deref(), Some("v > 1"));
        assert_eq!(hb, Duration::from_secs(1));
        let (r, _) = parse(&json!({"subscribe": {"db": "d", "table": "t", "from": null}})).unwrap();
        assert_eq!(r.start, Start::After(Cursor::START));
        let (r, _) =
            parse(&json!({"subscribe": {"db": "d", "table": "t", "from": "latest"}})).unwrap();
        assert_eq!(r.start, Start::Latest);
        for t in [
            json!({"subscribe": {"table": "t"}}),
            json!({"subscribe": {"db": "", "table": "t"}}),
            json!({"subscribe": {"db": "d", "table": "t", "from": -1}}),
            json!({"subscribe": {"db": "d", "table": "t", "from": "x.y"}}),
            json!({"subscribe": {"db": "d", "table": "t", "heartbeat": 0}}),
            json!({"subscribe": {"db": "d", "table": "t", "other": 1}}),
        ] {
            let e = parse(&t).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{t}");
        }
    }

    #[test]
    fn subscribe_messages_carry_the_cursor() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("v", DataType::Int64, true),
        ]));
        let host: DictionaryArray<Int32Type> = vec!["a", "b"].into_iter().collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(host), Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let mut enc = Encoder::new(hydrated(&schema));
        assert_eq!(enc.schema.field(0).data_type(), &DataType::Utf8);
        let cursor: Cursor = "4".parse().unwrap();
        let schema_msg = enc.schema_message();
        let m = enc.message(&Delivery::Rows { batch, cursor }).unwrap();
        assert_eq!(&m.app_metadata[..], b"4");
        let back = arrow_flight::utils::flight_data_to_batches(&[schema_msg, m]).unwrap();
        assert_eq!(back[0].num_rows(), 2);
        assert_eq!(back[0].schema().field(0).data_type(), &DataType::Utf8);
        let p = enc.message(&Delivery::Progress { cursor }).unwrap();
        assert!(p.data_header.is_empty() && p.data_body.is_empty());
        assert_eq!(&p.app_metadata[..], b"4");
    }
}

//! `format=jsonld`: query results as JSON-LD observations (W3C SOSA/SSN by default).
//!
//! The answer is `application/ld+json`: the JSON-LD context document of the table the query
//! reads (verbatim, as stored under its hash; its hash is in the `Annals-Context-Hash` header)
//! with an `"@graph"` member added. A query over several tables, or none, gets the default
//! context. Each result row becomes one node per non-null value column:
//!
//! ```json
//! {"@id": "urn:annals:tx:<tx_id>#velocity", "@type": "Observation", "tx_id": "<tx_id>",
//!  "table": "fleet/readings", "time": "2023-11-14T22:13:20.000000000Z",
//!  "sensor": "urn:annals:sensor:fleet/readings/truck=t1",
//!  "property": "urn:annals:property:fleet/readings/velocity", "result": 12.5}
//! ```
//!
//! - `time` (the `time` column) is RFC 3339 in UTC with nine fractional digits; `sensor` names
//!   the series: the table and the row's non-null tags sorted by name; `property` names the
//!   column; `result` is a JSON number, boolean or string (a float that JSON cannot hold, NaN
//!   or an infinity, is an `xsd:double` literal). Names in IRIs are percent-encoded (every
//!   byte but `A-Z a-z 0-9 - . _ ~`).
//! - Tag columns (the table's tags; dictionary columns when the tables are unknown) go into
//!   `sensor`; `_branch`, `_height`, `_index` are left out; every other column is a value.
//! - Every observation carries its row's `tx_id`, so the result must have a `_tx_id` column:
//!   query `ledger('table')` and select `_tx_id` (refused with 400 otherwise). The plain table
//!   has no `_tx_id`, and rows of an aggregate have none either.
//!
//! A custom context should define the terms `Observation`, `tx_id`, `table`, `time`, `sensor`,
//! `property` and `result` (JSON-LD processors drop undefined ones); the default maps them to
//! `sosa:Observation`, `annals:txId`, `annals:table`, `sosa:resultTime`, `sosa:madeBySensor`,
//! `sosa:observedProperty` and `sosa:hasSimpleResult`.
//!
//! The body is streamed a batch at a time like `json`; it is bounded like the other formats
//! (query timeout and memory pool), not by size.

use std::sync::Arc;

use annals_engine::catalog::TableSchema;
use annals_engine::jsonld::{context_hash, default_context};
use annals_format::hash::Hash;
use annals_format::row::Kind;
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit,
    TimestampNanosecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use serde_json::{json, Map, Value};

const TX_ID: &str = "_tx_id";
const TIME: &str = "time";
/// Ledger columns other than `_tx_id`: positions, not observations.
const POSITION_COLUMNS: [&str; 3] = ["_branch", "_height", "_index"];
const XSD_DOUBLE: &str = "http://www.w3.org/2001/XMLSchema#double";

/// What a result column becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Time,
    TxId,
    Tag,
    Value,
    Skip,
}

/// Encodes result batches as JSON-LD body chunks.
#[derive(Debug)]
pub(crate) struct JsonLdEncoder {
    /// The context document without its closing `}`, then `,"@graph":[`; sent first.
    head: Option<Vec<u8>>,
    /// No node written yet (no comma before the next one).
    first: bool,
    names: Vec<String>,
    roles: Vec<Role>,
    /// `<db>/<table>` of a single-table query.
    table: Option<String>,
    /// `urn:annals:sensor:<db>[/<table>]`.
    sensor_prefix: String,
    /// `urn:annals:property:<db>[/<table>]/`.
    property_prefix: String,
}

/// Why a result cannot be exported as JSON-LD (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotExportable(String);

impl JsonLdEncoder {
    /// An encoder for results of `schema` from a query in `db` that read `tables`; also
    /// returns the hash of the context it embeds.
    pub(crate) fn new(
        schema: &arrow::datatypes::Schema,
        db: &str,
        tables: &[Arc<TableSchema>],
    ) -> Result<(JsonLdEncoder, Hash), NotExportable> {
        let single = match tables {
            [t] => Some(t),
            _ => None,
        };
        if schema.index_of(TX_ID).is_err() {
            let example = single.map_or("readings", |t| {
                t.name.split_once('/').map_or(t.name.as_str(), |(_, m)| m)
            });
            return Err(NotExportable(format!(
                "format=jsonld needs every row's tx_id, and this result has no {TX_ID} column: \
                 query the ledger form of the table and select {TX_ID}, e.g. \
                 SELECT *, {TX_ID} FROM ledger('{example}') (rows of an aggregate have no tx_id)"
            )));
        }
        let is_tag = |name: &str, dt: &DataType| {
            if tables.is_empty() {
                matches!(dt, DataType::Dictionary(..))
            } else {
                tables
                    .iter()
                    .any(|t| t.column(name).is_some_and(|(_, k)| k == Kind::Tag))
            }
        };
        let mut names = Vec::new();
        let mut roles = Vec::new();
        for f in schema.fields() {
            let name = f.name().as_str();
            let role = match name {
                TX_ID => Role::TxId,
                TIME if matches!(f.data_type(), DataType::Timestamp(..)) => Role::Time,
                _ if POSITION_COLUMNS.contains(&name) => Role::Skip,
                _ if is_tag(name, f.data_type()) => Role::Tag,
                _ => Role::Value,
            };
            names.push(name.to_owned());
            roles.push(role);
        }
        let (context, table, scope) = match single {
            Some(t) => (
                t.context.clone(),
                Some(t.name.clone()),
                table_iri_part(&t.name),
            ),
            None => (Arc::from(default_context()), None, pct(db)),
        };
        let hash = context_hash(context.as_bytes());
        Ok((
            JsonLdEncoder {
                head: Some(graph_head(&context)),
                first: true,
                names,
                roles,
                table,
                sensor_prefix: format!("urn:annals:sensor:{scope}"),
                property_prefix: format!("urn:annals:property:{scope}/"),
            },
            hash,
        ))
    }

    /// The nodes of one batch (preceded by the head the first time).
    pub(crate) fn batch(&mut self, b: &RecordBatch) -> Result<Bytes, ArrowError> {
        let mut out = self.head.take().unwrap_or_default();
        let rows = b.num_rows();
        let mut times: Option<Vec<Option<i64>>> = None;
        let mut tx: Option<ArrayRef> = None;
        let mut tags: Vec<(&str, ArrayRef)> = Vec::new();
        let mut values: Vec<(&str, &ArrayRef)> = Vec::new();
        for ((name, role), col) in self.names.iter().zip(&self.roles).zip(b.columns()) {
            match role {
                Role::Time => times = Some(nanos(col)?),
                Role::TxId => tx = Some(arrow::compute::cast(col, &DataType::Utf8)?),
                Role::Tag => tags.push((name, arrow::compute::cast(col, &DataType::Utf8)?)),
                Role::Value => values.push((name, col)),
                Role::Skip => {}
            }
        }
        tags.sort_by(|a, b| a.0.cmp(b.0));
        let tx = tx.expect("checked in new: the schema has _tx_id");
        let tx = tx.as_string::<i32>();
        let values: Vec<(&str, Vec<Option<Value>>)> = values
            .into_iter()
            .map(|(n, c)| Ok((n, json_values(c)?)))
            .collect::<Result<_, ArrowError>>()?;
        for row in 0..rows {
            if tx.is_null(row) {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "row {row} of a batch has no {TX_ID}: every observation needs its tx_id"
                )));
            }
            let tx_id = tx.value(row);
            let mut sensor = self.sensor_prefix.clone();
            let mut sep = '/';
            for (name, col) in &tags {
                let col = col.as_string::<i32>();
                if col.is_valid(row) {
                    sensor.push(sep);
                    sensor.push_str(&pct(name));
                    sensor.push('=');
                    sensor.push_str(&pct(col.value(row)));
                    sep = ',';
                }
            }
            let time = times
                .as_ref()
                .and_then(|t| t[row])
                .map(|ns| Value::String(rfc3339_nanos(ns)));
            for (name, vals) in &values {
                let Some(result) = &vals[row] else { continue };
                let mut node = Map::new();
                node.insert(
                    "@id".into(),
                    format!("urn:annals:tx:{tx_id}#{}", pct(name)).into(),
                );
                node.insert("@type".into(), "Observation".into());
                node.insert("tx_id".into(), tx_id.into());
                if let Some(t) = &self.table {
                    node.insert("table".into(), t.as_str().into());
                }
                if let Some(t) = &time {
                    node.insert("time".into(), t.clone());
                }
                node.insert("sensor".into(), sensor.as_str().into());
                node.insert(
                    "property".into(),
                    format!("{}{}", self.property_prefix, pct(name)).into(),
                );
                node.insert("result".into(), result.clone());
                if !self.first {
                    out.push(b',');
                }
                self.first = false;
                serde_json::to_writer(&mut out, &Value::Object(node))
                    .map_err(|e| ArrowError::JsonError(e.to_string()))?;
            }
        }
        Ok(Bytes::from(out))
    }

    /// The closing `]}` (with the head if no batch had rows).
    pub(crate) fn finish(&mut self) -> Bytes {
        let mut out = self.head.take().unwrap_or_default();
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

/// `<pct db>/<pct table>` of `<db>/<table>`.
fn table_iri_part(name: &str) -> String {
    match name.split_once('/') {
        Some((db, m)) => format!("{}/{}", pct(db), pct(m)),
        None => pct(name),
    }
}

/// The context document with `"@graph":[` added as its last member. A validated document is
/// an object whose only member is `@context`, so its bytes are kept exactly (an auditor can
/// compare them with `contexts/<hash>.jsonld`); anything else is re-serialized.
fn graph_head(doc: &str) -> Vec<u8> {
    let trimmed = doc.trim_end();
    let parsed: Option<Value> = serde_json::from_str(doc).ok();
    let only_context =
        matches!(&parsed, Some(Value::Object(m)) if m.len() == 1 && m.contains_key("@context"));
    let mut out = Vec::with_capacity(doc.len() + 16);
    if only_context && trimmed.ends_with('}') {
        out.extend_from_slice(&trimmed.as_bytes()[..trimmed.len() - 1]);
    } else {
        let ctx = parsed
            .as_ref()
            .and_then(|v| v.get("@context"))
            .cloned()
            .unwrap_or(Value::Null);
        out.extend_from_slice(b"{\"@context\":");
        out.extend_from_slice(&serde_json::to_vec(&ctx).expect("a Value serializes"));
    }
    out.extend_from_slice(b",\"@graph\":[");
    out
}

/// Percent-encodes every byte but the unreserved ones of RFC 3986.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A timestamp column as nanoseconds since the epoch (UTC).
fn nanos(col: &ArrayRef) -> Result<Vec<Option<i64>>, ArrowError> {
    let ns = arrow::compute::cast(col, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    Ok(ns
        .as_primitive::<TimestampNanosecondType>()
        .iter()
        .collect())
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
fn rfc3339_nanos(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn float(v: f64) -> Value {
    match serde_json::Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None => {
            let lexical = if v.is_nan() {
                "NaN"
            } else if v > 0.0 {
                "INF"
            } else {
                "-INF"
            };
            json!({"@value": lexical, "@type": XSD_DOUBLE})
        }
    }
}

/// A value column as JSON values (`None` for nulls).
fn json_values(col: &ArrayRef) -> Result<Vec<Option<Value>>, ArrowError> {
    macro_rules! prim {
        ($t:ty, $f:expr) => {
            col.as_primitive::<$t>().iter().map(|v| v.map($f)).collect()
        };
    }
    Ok(match col.data_type() {
        DataType::Float64 => prim!(Float64Type, float),
        DataType::Float32 => prim!(Float32Type, |v| float(f64::from(v))),
        DataType::Int64 => prim!(Int64Type, Value::from),
        DataType::Int32 => prim!(Int32Type, Value::from),
        DataType::Int16 => prim!(Int16Type, Value::from),
        DataType::Int8 => prim!(Int8Type, Value::from),
        DataType::UInt64 => prim!(UInt64Type, Value::from),
        DataType::UInt32 => prim!(UInt32Type, Value::from),
        DataType::UInt16 => prim!(UInt16Type, Value::from),
        DataType::UInt8 => prim!(UInt8Type, Value::from),
        DataType::Boolean => col
            .as_boolean()
            .iter()
            .map(|v| v.map(Value::from))
            .collect(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            let s = arrow::compute::cast(col, &DataType::Utf8)?;
            s.as_string::<i32>()
                .iter()
                .map(|v| v.map(Value::from))
                .collect()
        }
        _ => {
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(col.as_ref(), &options)?;
            (0..col.len())
                .map(|i| {
                    col.is_valid(i)
                        .then(|| Value::String(f.value(i).to_string()))
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, DictionaryArray, Float64Array, Int64Array, StringArray,
        TimestampNanosecondArray,
    };
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_700_000_000_000_000_001),
            "2023-11-14T22:13:20.000000001Z"
        );
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            rfc3339_nanos(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(rfc3339_nanos(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        assert_eq!(rfc3339_nanos(i64::MIN), "1677-09-21T00:12:43.145224192Z");
    }

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(pct("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(pct("a b/c=d,é"), "a%20b%2Fc%3Dd%2C%C3%A9");
    }

    #[test]
    fn the_stored_context_bytes_open_the_document() {
        let doc = "{ \"@context\": {\"x\": \"urn:x\"} }\n";
        let head = graph_head(doc);
        let body = [head, b"]}".to_vec()].concat();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"@context": {"x": "urn:x"}, "@graph": []}));
        assert!(body.starts_with(b"{ \"@context\": {\"x\": \"urn:x\"} "));
    }

    #[test]
    fn rows_become_observations() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new("_tx_id", DataType::Utf8, false),
            Field::new("_height", DataType::UInt64, false),
        ]));
        let host: DictionaryArray<Int32Type> = vec![Some("a b"), None].into_iter().collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(host),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
                Arc::new(Int64Array::from(vec![Some(-3), None])),
                Arc::new(BooleanArray::from(vec![None, Some(true)])),
                Arc::new(TimestampNanosecondArray::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["aa", "bb"])),
                Arc::new(arrow::array::UInt64Array::from(vec![0, 0])),
            ],
        )
        .unwrap();
        // No table known: dictionary columns are tags.
        let (mut enc, hash) = JsonLdEncoder::new(&schema, "db", &[]).unwrap();
        assert_eq!(hash, context_hash(default_context().as_bytes()));
        let mut body = enc.batch(&batch).unwrap().to_vec();
        body.extend_from_slice(&enc.finish());
        let v: Value = serde_json::from_slice(&body).unwrap();
        let graph = v["@graph"].as_array().unwrap();
        assert_eq!(graph.len(), 4, "{v:#}");
        assert_eq!(
            graph[0],
            json!({"@id": "urn:annals:tx:aa#v", "@type": "Observation", "tx_id": "aa",
                   "time": "1970-01-01T00:00:00.000000001Z",
                   "sensor": "urn:annals:sensor:db/host=a%20b",
                   "property": "urn:annals:property:db/v", "result": 1.5})
        );
        assert_eq!(graph[1]["result"], json!(-3));
        assert_eq!(
            graph[2]["result"],
            json!({"@value": "NaN", "@type": XSD_DOUBLE})
        );
        assert_eq!(graph[2]["sensor"], json!("urn:annals:sensor:db"));
        assert_eq!(graph[3]["@id"], json!("urn:annals:tx:bb#ok"));
        assert_eq!(
            v["@context"],
            serde_json::from_str::<Value>(default_context()).unwrap()["@context"]
        );

        // Without _tx_id: refused with a hint.
        let plain = Schema::new(vec![Field::new("v", DataType::Float64, true)]);
        let err = JsonLdEncoder::new(&plain, "db", &[]).unwrap_err();
        assert!(err.to_string().contains("ledger('readings')"), "{err}");
        // An empty result is still a document.
        let (mut enc, _) = JsonLdEncoder::new(&schema, "db", &[]).unwrap();
        let v: Value = serde_json::from_slice(&enc.finish()).unwrap();
        assert_eq!(v["@graph"], json!([]));
    }
}

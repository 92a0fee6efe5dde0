//! `GET|POST /api/v3/query_sql`: SQL over the ledger, answered the way InfluxDB 3 answers it.
//!
//! Parameters come from the query string and, for `POST`, from a JSON body
//! (`{"db": .., "q": .., "format": .., "as_of_epoch": .., "params": ..}`, as InfluxDB 3 clients
//! send it) or a form body; a value in the body wins over the same one in the query string.
//! `db` and `q` are required; `format` is `json` (default), `jsonl`, `csv`, `parquet`,
//! `pretty` or `jsonld` (observations in JSON-LD, see [`crate::jsonld`]); `as_of_epoch` pins
//! the query to a checkpoint epoch.
//!
//! Streaming: the answer starts once [`HEAD_BYTES_MAX`] of it are encoded, the result has ended, or
//! [`HEAD_WAIT_MAX`] has passed since the first rows, so planning errors, a timeout before any row
//! and errors in small results get their own status and message. After that every batch is
//! encoded into one chunk of the body as it arrives, and an error aborts the body (the chunked
//! response is never terminated), so a client can never take a cut result for a whole one. `parquet` is streamed a row group at a time (a row group is cut at
//! [`PARQUET_ROW_GROUP_BYTES_MAX`] bytes of buffered data); `pretty` must see every row to size
//! its columns, so it is built in memory and refused (400) past
//! [`crate::HttpConfig::query_pretty_bytes_max`].
//!
//! Status codes: 200; 400 a missing or bad parameter, SQL that does not parse or names an
//! unknown table or column (DataFusion's message), a `pretty` result over its limit; 404 an
//! unknown database; 415 a body that is neither JSON nor a form; 503 the query memory is
//! exhausted or SQL is not enabled; 504 the query ran past `--query-timeout` (504, not 408:
//! clients and proxies may silently retry a 408, and an expensive query should not run twice);
//! 500 anything else. Error bodies are `{"error": "<message>"}`.

use std::fmt::Write as _;
use std::time::Duration;

use annals_auth::{Action, Grant};
use annals_query::{QueryError, QueryRequest};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::writer::{JsonArray, LineDelimited};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::body::{Body, Bytes};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::AppState;

/// A Parquet row group is written out once this many bytes of rows are buffered for it.
pub const PARQUET_ROW_GROUP_BYTES_MAX: usize = 16 << 20;

/// A streamed answer starts once this many bytes of it are ready (or the result ended)...
pub const HEAD_BYTES_MAX: usize = 64 << 10;

/// ...or this long after its first rows were.
pub const HEAD_WAIT_MAX: Duration = Duration::from_secs(1);

/// Default for [`crate::HttpConfig::query_pretty_bytes_max`].
pub const QUERY_PRETTY_BYTES_MAX_DEFAULT: usize = 16 << 20;

/// A result format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON array of objects, one per row; null columns are left out of their object.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one line per row.
    Csv,
    /// A whole Parquet file.
    Parquet,
    /// An aligned text table.
    Pretty,
    /// JSON-LD: the table's context and one `sosa:Observation` per (row, value); rows need
    /// `_tx_id` (see [`crate::jsonld`]).
    JsonLd,
}

impl Format {
    /// Parses a `format` value (case-insensitive).
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s.to_ascii_lowercase().as_str() {
            "json" => Format::Json,
            "jsonl" => Format::Jsonl,
            "csv" => Format::Csv,
            "parquet" => Format::Parquet,
            "pretty" => Format::Pretty,
            "jsonld" | "json-ld" => Format::JsonLd,
            _ => return None,
        })
    }

    /// The `Content-Type` of a result in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Jsonl => "application/jsonl",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Pretty => "text/plain; charset=utf-8",
            Format::JsonLd => "application/ld+json",
        }
    }
}

/// The request's parameters, from the query string or the body.
#[derive(Debug, Default, Deserialize)]
struct Params {
    db: Option<String>,
    q: Option<String>,
    format: Option<String>,
    /// A number (JSON) or a string (query string, form).
    as_of_epoch: Option<Value>,
    /// InfluxDB 3's query parameters; not supported yet (refused unless empty).
    params: Option<Value>,
}

impl Params {
    /// `self` with every value `over` has replaced.
    fn overridden_by(self, over: Params) -> Params {
        Params {
            db: over.db.or(self.db),
            q: over.q.or(self.q),
            format: over.format.or(self.format),
            as_of_epoch: over.as_of_epoch.or(self.as_of_epoch),
            params: over.params.or(self.params),
        }
    }
}

/// `{"error": msg}` with `code`.
fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

/// The status a query error is answered with.
fn status_of(e: &QueryError) -> StatusCode {
    #[allow(unreachable_patterns)] // stays total if the query crate adds a variant
    match e {
        QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
        QueryError::DatabaseNotFound(_) => StatusCode::NOT_FOUND,
        QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        QueryError::ResourcesExhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn query_error(e: &QueryError) -> Response {
    let code = status_of(e);
    if code == StatusCode::INTERNAL_SERVER_ERROR {
        warn!(error = %e, "query failed");
    } else {
        debug!(error = %e, status = code.as_u16(), "query refused");
    }
    error(code, e.to_string())
}

fn from_query_string(q: Option<&str>) -> Result<Params, (StatusCode, String)> {
    match q {
        None | Some("") => Ok(Params::default()),
        Some(q) => serde_urlencoded::from_str(q).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("invalid query string: {e}"),
            )
        }),
    }
}

fn from_body(headers: &HeaderMap, body: &[u8]) -> Result<Params, (StatusCode, String)> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Params::default());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    let json_body = match ct.as_deref() {
        Some(ct) if ct.starts_with("application/json") => true,
        Some(ct) if ct.starts_with("application/x-www-form-urlencoded") => false,
        None => body.trim_ascii_start().starts_with(b"{"),
        Some(ct) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type {ct:?}: send application/json \
                     ({{\"db\": .., \"q\": ..}}) or application/x-www-form-urlencoded"
                ),
            ))
        }
    };
    if json_body {
        serde_json::from_slice(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid form body: {e}")))
    }
}

/// `GET /api/v3/query_sql?db=..&q=..`.
pub(crate) async fn query_get(
    State(s): State<AppState>,
    Extension(grant): Extension<Grant>,
    RawQuery(q): RawQuery,
) -> Response {
    match from_query_string(q.as_deref()) {
        Ok(p) => run(s, &grant, p).await,
        Err((code, m)) => error(code, m),
    }
}

/// `POST /api/v3/query_sql` with a JSON or form body (and/or query-string parameters).
pub(crate) async fn query_post(
    State(s): State<AppState>,
    Extension(grant): Extension<Grant>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match from_query_string(q.as_deref()) {
        Ok(p) => p,
        Err((code, m)) => return error(code, m),
    };
    match from_body(&headers, &body) {
        Ok(b) => run(s, &grant, p.overridden_by(b)).await,
        Err((code, m)) => error(code, m),
    }
}

/// A checked request.
#[derive(Debug)]
struct Checked {
    req: QueryRequest,
    format: Format,
}

fn check(p: Params) -> Result<Checked, String> {
    let db =
        p.db.filter(|d| !d.is_empty())
            .ok_or("missing parameter db: the database to query, e.g. db=fleet")?;
    let sql =
        p.q.filter(|q| !q.trim().is_empty())
            .ok_or("missing parameter q: the SQL to run, e.g. q=SELECT * FROM readings")?;
    let format = match p.format.as_deref() {
        None | Some("") => Format::Json,
        Some(f) => Format::parse(f).ok_or_else(|| {
            format!("unknown format {f:?}: use json, jsonl, csv, parquet, pretty or jsonld")
        })?,
    };
    let bad_epoch = |v: &dyn std::fmt::Display| {
        format!("as_of_epoch must be a checkpoint epoch (a non-negative integer), got {v}")
    };
    let as_of_epoch = match p.as_of_epoch {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().parse::<u64>().map_err(|_| bad_epoch(&s))?),
        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| bad_epoch(&n))?),
        Some(v) => return Err(bad_epoch(&v)),
    };
    let no_params = match &p.params {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::String(s)) => s.is_empty() || s == "{}",
        Some(_) => false,
    };
    if !no_params {
        return Err(
            "query parameters (params) are not supported yet: write the values into the SQL".into(),
        );
    }
    Ok(Checked {
        req: QueryRequest {
            db,
            sql,
            as_of_epoch,
        },
        format,
    })
}

async fn run(s: AppState, grant: &Grant, p: Params) -> Response {
    let Some(service) = s.query.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SQL queries are not enabled on this node",
        );
    };
    let Checked { req, format } = match check(p) {
        Ok(c) => c,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    // The database may have come from the body, after the middleware's check.
    if let Err(r) = crate::auth::check(grant, Action::Read, &req.db) {
        return r;
    }
    let out = match service.sql(&req).await {
        Ok(o) => o,
        Err(e) => return query_error(&e),
    };
    debug!(db = %req.db, id = out.id, ?format, "query started");
    if format == Format::Pretty {
        return pretty(out.stream, out.schema, s.cfg.query_pretty_bytes_max).await;
    }
    if format == Format::JsonLd {
        let (enc, hash) = match crate::jsonld::JsonLdEncoder::new(&out.schema, &req.db, &out.tables)
        {
            Ok(x) => x,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let mut resp = streamed(out.stream, Encoder::JsonLd(Box::new(enc)), format).await;
        if resp.status() == StatusCode::OK {
            let hash = HeaderValue::from_str(&hex::encode(hash)).expect("hex is a header value");
            resp.headers_mut()
                .insert(crate::context::CONTEXT_HASH_HEADER, hash);
        }
        return resp;
    }
    let enc = match Encoder::new(format, &out.schema) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    streamed(out.stream, enc, format).await
}

/// Streams json, jsonl, csv, parquet and jsonld results.
async fn streamed<S, E>(mut stream: S, mut enc: Encoder, format: Format) -> Response
where
    S: Stream<Item = Result<RecordBatch, E>> + Send + Unpin + 'static,
    E: Into<QueryError> + Send + 'static,
{
    // Hold the answer until HEAD_BYTES_MAX are ready, the result ends, or HEAD_WAIT_MAX has passed
    // since the first rows: a failure before then still gets its status and message.
    let mut head = Vec::new();
    let mut head_bytes = 0;
    let mut first_rows_at: Option<tokio::time::Instant> = None;
    let mut ended = false;
    loop {
        let next = match first_rows_at {
            None => stream.next().await,
            Some(t) => match tokio::time::timeout_at(t + HEAD_WAIT_MAX, stream.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        match next {
            Some(Ok(b)) if b.num_rows() == 0 => continue,
            Some(Ok(b)) => match enc.batch(&b) {
                Ok(bytes) => {
                    first_rows_at.get_or_insert_with(tokio::time::Instant::now);
                    head_bytes += bytes.len();
                    head.push(bytes);
                    if head_bytes >= HEAD_BYTES_MAX {
                        break;
                    }
                }
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Some(Err(e)) => return query_error(&e.into()),
            None => match enc.finish() {
                Ok(bytes) => {
                    head.push(bytes);
                    ended = true;
                    break;
                }
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
        }
    }
    let first = futures::stream::iter(head.into_iter().map(Ok::<Bytes, std::io::Error>));
    let body = if ended {
        Body::from_stream(first)
    } else {
        Body::from_stream(first.chain(rest(stream, enc)))
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

/// The body after the first chunk: one chunk per batch, then the encoder's tail; an error
/// ends the stream with `Err`, which aborts the response.
fn rest<S, E>(stream: S, enc: Encoder) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    S: Stream<Item = Result<RecordBatch, E>> + Send + Unpin + 'static,
    E: Into<QueryError> + Send + 'static,
{
    futures::stream::unfold(Some((stream, enc)), |state| async move {
        let (mut stream, mut enc) = state?;
        loop {
            match stream.next().await {
                Some(Ok(b)) if b.num_rows() == 0 => continue,
                Some(Ok(b)) => match enc.batch(&b) {
                    Ok(bytes) if bytes.is_empty() => continue,
                    Ok(bytes) => return Some((Ok(bytes), Some((stream, enc)))),
                    Err(e) => {
                        warn!(error = %e, "encoding a query result failed; response aborted");
                        return Some((Err(std::io::Error::other(e.to_string())), None));
                    }
                },
                Some(Err(e)) => {
                    let e: QueryError = e.into();
                    warn!(error = %e, "query failed while streaming; response aborted");
                    return Some((Err(std::io::Error::other(e.to_string())), None));
                }
                None => {
                    return Some((
                        enc.finish()
                            .map_err(|e| std::io::Error::other(e.to_string())),
                        None,
                    ))
                }
            }
        }
    })
}

#[derive(Debug, thiserror::Error)]
enum EncodeError {
    #[error("cannot encode the result: {0}")]
    Arrow(#[from] ArrowError),
    #[error("cannot encode the result as Parquet: {0}")]
    Parquet(#[from] ParquetError),
}

/// Turns batches into body chunks.
enum Encoder {
    Json(arrow::json::Writer<Vec<u8>, JsonArray>),
    Jsonl(arrow::json::Writer<Vec<u8>, LineDelimited>),
    /// `header_done`: the header row went out with an earlier batch.
    Csv {
        schema: SchemaRef,
        header_done: bool,
    },
    Parquet(Box<ArrowWriter<Vec<u8>>>),
    JsonLd(Box<crate::jsonld::JsonLdEncoder>),
}

impl Encoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<Encoder, EncodeError> {
        let json = || arrow::json::WriterBuilder::new().with_explicit_nulls(false);
        Ok(match format {
            Format::Json => Encoder::Json(json().build(Vec::new())),
            Format::Jsonl => Encoder::Jsonl(json().build(Vec::new())),
            Format::Csv => Encoder::Csv {
                schema: schema.clone(),
                header_done: false,
            },
            Format::Pretty | Format::JsonLd => {
                return Err(EncodeError::Arrow(ArrowError::InvalidArgumentError(
                    format!("{format:?} has its own encoder"),
                )))
            }
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                Encoder::Parquet(Box::new(ArrowWriter::try_new(
                    Vec::new(),
                    schema.clone(),
                    Some(props),
                )?))
            }
        })
    }

    /// The bytes for one batch (possibly none yet: Parquet buffers a row group).
    fn batch(&mut self, b: &RecordBatch) -> Result<Bytes, EncodeError> {
        Ok(match self {
            Encoder::Json(w) => {
                w.write(b)?;
                Bytes::from(std::mem::take(w.get_mut()))
            }
            Encoder::Jsonl(w) => {
                w.write(b)?;
                Bytes::from(std::mem::take(w.get_mut()))
            }
            Encoder::Csv { header_done, .. } => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(!*header_done)
                    .build(Vec::new());
                w.write(b)?;
                *header_done = true;
                Bytes::from(w.into_inner())
            }
            Encoder::Parquet(w) => {
                w.write(b)?;
                if w.in_progress_size() >= PARQUET_ROW_GROUP_BYTES_MAX {
                    w.flush()?;
                }
                // Only takes bytes already written; the writer counts offsets itself.
                Bytes::from(std::mem::take(w.inner_mut()))
            }
            Encoder::JsonLd(e) => e.batch(b)?,
        })
    }

    /// The closing bytes (`]`, a CSV header of an empty result, the Parquet footer).
    fn finish(&mut self) -> Result<Bytes, EncodeError> {
        Ok(match self {
            Encoder::Json(w) => {
                w.finish()?;
                Bytes::from(std::mem::take(w.get_mut()))
            }
            Encoder::Jsonl(w) => {
                w.finish()?;
                Bytes::from(std::mem::take(w.get_mut()))
            }
            Encoder::Csv {
                schema,
                header_done,
            } => {
                if *header_done {
                    Bytes::new()
                } else {
                    let empty = RecordBatch::new_empty(schema.clone());
                    self.batch(&empty)?
                }
            }
            Encoder::Parquet(w) => {
                w.finish()?;
                Bytes::from(std::mem::take(w.inner_mut()))
            }
            Encoder::JsonLd(e) => e.finish(),
        })
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Json(_) => "Encoder::Json",
            Encoder::Jsonl(_) => "Encoder::Jsonl",
            Encoder::Csv { .. } => "Encoder::Csv",
            Encoder::Parquet(_) => "Encoder::Parquet",
            Encoder::JsonLd(_) => "Encoder::JsonLd",
        })
    }
}

/// Collects the whole result (bounded by `max` bytes of table text) and answers an arrow
/// pretty table.
async fn pretty<S, E>(mut stream: S, schema: SchemaRef, max: usize) -> Response
where
    S: Stream<Item = Result<RecordBatch, E>> + Unpin,
    E: Into<QueryError>,
{
    let too_large = || {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "the result is larger than the {max}-byte limit of format=pretty: add a LIMIT, \
                 or use format=csv, jsonl, json or parquet, which stream"
            ),
        )
    };
    // The table's size is rows x (sum of column widths + borders): track both as rows arrive.
    let mut widths: Vec<usize> = schema.fields().iter().map(|f| f.name().len()).collect();
    let mut rows = 0usize;
    let mut batches = Vec::new();
    let options = FormatOptions::default();
    let mut cell = String::new();
    while let Some(b) = stream.next().await {
        let b = match b {
            Ok(b) => b,
            Err(e) => return query_error(&e.into()),
        };
        for (w, col) in widths.iter_mut().zip(b.columns()) {
            let f = match ArrayFormatter::try_new(col.as_ref(), &options) {
                Ok(f) => f,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            for i in 0..b.num_rows() {
                cell.clear();
                if write!(cell, "{}", f.value(i)).is_err() {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot format a cell");
                }
                *w = (*w).max(cell.chars().count());
            }
        }
        rows += b.num_rows();
        let line = widths.iter().map(|w| w + 3).sum::<usize>() + 2;
        if line.saturating_mul(rows + 4) > max {
            return too_large();
        }
        batches.push(b);
    }
    let text = match arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches) {
        Ok(t) => t.to_string(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if text.len() > max {
        return too_large();
    }
    (
        [(header::CONTENT_TYPE, Format::Pretty.content_type())],
        text + "\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Params {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn parameters_are_checked() {
        let c = check(params(json!({"db": "fleet", "q": "SELECT 1"}))).unwrap();
        assert_eq!((c.req.db.as_str(), c.format), ("fleet", Format::Json));
        assert_eq!(c.req.as_of_epoch, None);
        let c = check(params(
            json!({"db": "d", "q": "SELECT 1", "format": "CSV", "as_of_epoch": 7, "params": {}}),
        ))
        .unwrap();
        assert_eq!((c.format, c.req.as_of_epoch), (Format::Csv, Some(7)));
        let c = check(params(json!({"db": "d", "q": "x", "format": "jsonld"}))).unwrap();
        assert_eq!(
            (c.format, c.format.content_type()),
            (Format::JsonLd, "application/ld+json")
        );
        let c = check(params(json!({"db": "d", "q": "x", "as_of_epoch": "12"}))).unwrap();
        assert_eq!(c.req.as_of_epoch, Some(12));
        let err = |v: Value| check(params(v)).unwrap_err();
        assert!(err(json!({"q": "SELECT 1"})).contains("missing parameter db"));
        assert!(err(json!({"db": "", "q": "SELECT 1"})).contains("missing parameter db"));
        assert!(err(json!({"db": "d"})).contains("missing parameter q"));
        assert!(err(json!({"db": "d", "q": "x", "format": "xml"})).contains("unknown format"));
        assert!(err(json!({"db": "d", "q": "x", "as_of_epoch": -1})).contains("as_of_epoch"));
        assert!(err(json!({"db": "d", "q": "x", "as_of_epoch": "1.5"})).contains("as_of_epoch"));
        assert!(err(json!({"db": "d", "q": "x", "params": {"a": 1}})).contains("params"));
    }

    #[test]
    fn body_values_win_over_the_query_string() {
        let q = from_query_string(Some("db=a&q=SELECT%201&format=csv")).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let b = from_body(&h, br#"{"db": "b"}"#).unwrap();
        let p = q.overridden_by(b);
        assert_eq!(p.db.as_deref(), Some("b"));
        assert_eq!(p.q.as_deref(), Some("SELECT 1"));
        assert_eq!(p.format.as_deref(), Some("csv"));
        // Without a Content-Type: JSON if it looks like JSON, else a form.
        let p = from_body(&HeaderMap::new(), b"db=c&q=x").unwrap();
        assert_eq!(p.db.as_deref(), Some("c"));
        let p = from_body(&HeaderMap::new(), br#" {"db": "d"}"#).unwrap();
        assert_eq!(p.db.as_deref(), Some("d"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            from_body(&h, b"SELECT 1").unwrap_err().0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn statuses_of_query_errors() {
        use std::time::Duration;
        let s = |e: QueryError| status_of(&e).as_u16();
        assert_eq!(s(QueryError::Invalid("x".into())), 400);
        assert_eq!(s(QueryError::DatabaseNotFound("x".into())), 404);
        assert_eq!(s(QueryError::Timeout(Duration::from_secs(1))), 504);
        assert_eq!(s(QueryError::ResourcesExhausted("x".into())), 503);
        assert_eq!(s(QueryError::Execution("x".into())), 500);
    }
}

//! `GET /api/v3/subscribe`: a table's committed rows as NDJSON, live.
//!
//! Parameters: `db` and `table` (required); `from`: where to start (absent or `start`: the
//! first committed row; `latest`: only rows committed from now on; an epoch `N`: rows
//! committed after checkpoint `N`; or a cursor a previous line carried); `where`: a SQL
//! condition over the table's and the ledger columns; `format`: `ndjson` (the only one);
//! `heartbeat`: seconds between keep-alive lines (default 15, 0.1 to 300).
//!
//! The answer is `application/x-ndjson`, one line per batch of at most
//! [`annals_query::subscribe::BATCH_ROWS_MAX`] rows:
//! `{"cursor":"<c>","rows":[{"time":..,"host":..,"v":..,"_tx_id":..,"_branch":..,
//! "_height":..,"_index":..},..]}`, rows rendered as `/api/v3/query_sql`'s `json` format
//! (nulls left out). After a heartbeat interval without rows a line `{"cursor":"<c>","rows":[]}`
//! keeps proxies from closing the connection (its cursor may have moved past rows the filter
//! dropped). Store the cursor of the last line processed and reconnect with `from=<cursor>`:
//! every committed row comes exactly once. The stream does not end by itself; a failure
//! while streaming ends it with one line `{"error":".."}`.
//!
//! Refused before streaming: 400 (missing parameter, bad cursor, bad filter, unknown format),
//! 404 (database or table not found), 503 with `Retry-After` (too many open subscriptions, or
//! no query service on this node).

use std::time::Duration;

use annals_auth::{Action, Grant};
use annals_query::subscribe::{
    Delivery, Start, SubscribeError, SubscribeOptions, SubscribeRequest, Subscription,
};
use arrow::json::writer::JsonArray;
use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::AppState;

/// The query-string parameters.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    db: Option<String>,
    table: Option<String>,
    from: Option<String>,
    #[serde(rename = "where")]
    filter: Option<String>,
    format: Option<String>,
    heartbeat: Option<f64>,
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

fn busy(msg: String) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The status a refused subscription is answered with.
fn status_of(e: &SubscribeError) -> StatusCode {
    #[allow(unreachable_patterns)] // stays total if the query crate adds a variant
    match e {
        SubscribeError::DatabaseNotFound(_) | SubscribeError::TableNotFound { .. } => {
            StatusCode::NOT_FOUND
        }
        SubscribeError::BadCursor { .. } | SubscribeError::BadFilter(_) => StatusCode::BAD_REQUEST,
        SubscribeError::TooMany(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Checks the parameters.
fn check(p: Params) -> Result<(SubscribeRequest, Duration), (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let db =
        p.db.filter(|d| !d.is_empty())
            .ok_or_else(|| bad("missing parameter db".into()))?;
    let table = p
        .table
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("missing parameter table".into()))?;
    match p.format.as_deref() {
        None | Some("") | Some("ndjson") | Some("jsonl") => {}
        Some(f) => return Err(bad(format!("unknown format {f:?}: use ndjson"))),
    }
    let heartbeat = annals_query::subscribe::heartbeat_from_secs(p.heartbeat).map_err(bad)?;
    let start = Start::parse(p.from.as_deref()).map_err(|e| bad(e.to_string()))?;
    Ok((
        SubscribeRequest {
            db,
            table,
            start,
            filter: p.filter,
        },
        heartbeat,
    ))
}

/// One NDJSON line for a delivery.
fn line(d: &Delivery) -> Result<Bytes, String> {
    let (cursor, rows) = match d {
        Delivery::Rows { batch, cursor } => (cursor, rows_json(batch)?),
        Delivery::Progress { cursor } => (cursor, b"[]".to_vec()),
    };
    let cursor = serde_json::to_string(&cursor.to_string()).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(rows.len() + cursor.len() + 24);
    out.extend_from_slice(b"{\"cursor\":");
    out.extend_from_slice(cursor.as_bytes());
    out.extend_from_slice(b",\"rows\":");
    out.extend_from_slice(&rows);
    out.extend_from_slice(b"}\n");
    Ok(Bytes::from(out))
}

/// The rows as a JSON array, as `/api/v3/query_sql?format=json` renders them.
fn rows_json(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut w = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(false)
        .build::<_, JsonArray>(Vec::new());
    w.write(batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(w.into_inner())
}

/// `GET /api/v3/subscribe`.
pub(crate) async fn subscribe(
    State(s): State<AppState>,
    Extension(grant): Extension<Grant>,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    let p = match params {
        Ok(Query(p)) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid query string: {e}"),
            )
        }
    };
    let Some(service) = s.query.clone() else {
        return busy("SQL queries (and so subscriptions) are not enabled on this node".into());
    };
    let (req, heartbeat) = match check(p) {
        Ok(x) => x,
        Err((code, m)) => return error(code, m),
    };
    if let Err(e) = grant.check(Action::Read, Some(req.db.as_str())) {
        let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
        return error(code, e.to_string());
    }
    let opts = SubscribeOptions {
        heartbeat,
        ..SubscribeOptions::default()
    };
    let sub = match Subscription::open(&service, &req, opts).await {
        Ok(sub) => sub,
        Err(e) => {
            let code = status_of(&e);
            return match code {
                StatusCode::SERVICE_UNAVAILABLE => busy(e.to_string()),
                StatusCode::INTERNAL_SERVER_ERROR => {
                    warn!(error = %e, "subscription failed");
                    error(code, e.to_string())
                }
                _ => error(code, e.to_string()),
            };
        }
    };
    debug!(db = %req.db, table = %req.table, cursor = %sub.cursor(), "subscription opened");
    metrics::counter!("annals_subscriptions_total").increment(1);
    let body = sub.into_stream().scan(false, |failed, d| {
        if *failed {
            return futures::future::ready(None);
        }
        let out = match d.map_err(|e| e.to_string()).and_then(|d| line(&d)) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(error = %e, "subscription ended by an error");
                *failed = true;
                let mut l = serde_json::to_vec(&json!({ "error": e })).unwrap_or_default();
                l.push(b'\n');
                Bytes::from(l)
            }
        };
        futures::future::ready(Some(Ok::<Bytes, std::io::Error>(out)))
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_query::subscribe::Cursor;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn params(q: &str) -> Params {
        serde_urlencoded::from_str(q).unwrap()
    }

    #[test]
    fn subscribe_parameters_are_checked() {
        let (r, hb) = check(params("db=d&table=t&from=latest&where=v%3E1&heartbeat=0.5")).unwrap();
        assert_eq!((r.db.as_str(), r.table.as_str()), ("d", "t"));
        assert_eq!(r.start, Start::Latest);
        assert_eq!(r.filter.as_deref(), Some("v>1"));
        assert_eq!(hb, Duration::from_millis(500));
        let (r, _) = check(params("db=d&table=t&from=7")).unwrap();
        assert_eq!(
            r.start,
            Start::After(Cursor {
                done: Some(7),
                within: None
            })
        );
        for (q, want) in [
            ("table=t", "missing parameter db"),
            ("db=d", "missing parameter table"),
            ("db=d&table=t&format=csv", "unknown format"),
            ("db=d&table=t&heartbeat=0", "heartbeat"),
            ("db=d&table=t&from=x.y", "bad cursor"),
        ] {
            let (code, m) = check(params(q)).unwrap_err();
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert!(m.contains(want), "{q}: {m}");
        }
    }

    #[test]
    fn subscribe_lines_carry_cursor_and_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("_tx_id", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec!["aa", "bb"])),
            ],
        )
        .unwrap();
        let cursor: Cursor = "3".parse().unwrap();
        let l = line(&Delivery::Rows { batch, cursor }).unwrap();
        assert_eq!(
            std::str::from_utf8(&l).unwrap(),
            "{\"cursor\":\"3\",\"rows\":[{\"v\":1,\"_tx_id\":\"aa\"},{\"_tx_id\":\"bb\"}]}\n"
        );
        let l = line(&Delivery::Progress { cursor }).unwrap();
        assert_eq!(&l[..], b"{\"cursor\":\"3\",\"rows\":[]}\n");
    }
}

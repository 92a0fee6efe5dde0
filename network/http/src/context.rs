//! JSON-LD contexts of tables over HTTP.
//!
//! - `GET /api/v3/tables/{db}/{table}/context`: the table's current context document, exactly
//!   the bytes whose hash new blocks carry (`application/ld+json`, hash in the
//!   [`CONTEXT_HASH_HEADER`] header). 404 if the table does not exist.
//! - `PUT /api/v3/tables/{db}/{table}/context` with a context document as the body: validated
//!   (a JSON object whose only member is `@context`, at most
//!   [`annals_engine::jsonld::CONTEXT_BYTES_MAX`] bytes), stored under its hash, and used for
//!   every block of the table sealed from then on (blocks already sealed keep theirs; the open
//!   block gets the new one when it is sealed). A table that does not exist yet is created
//!   without columns, so its first block already carries the context. 200
//!   `{"table", "context_hash"}`; 400 with the reason for an invalid document or name.
//! - `GET /api/v3/contexts/{hash}`: any context a block header may name, by its hex hash
//!   (so an auditor can resolve a block's `context` field). 400 for a malformed hash, 404 for
//!   an unknown one.

use annals_engine::catalog::SchemaError;
use annals_engine::EngineError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::AppState;

/// Response header naming the hex `H(context)` of the document (or the export) sent.
pub const CONTEXT_HASH_HEADER: &str = "annals-context-hash";

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

fn document(hash: &[u8; 32], doc: &str) -> Response {
    let mut resp = doc.to_owned().into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ld+json"),
    );
    h.insert(
        CONTEXT_HASH_HEADER,
        HeaderValue::from_str(&hex::encode(hash)).expect("hex is a header value"),
    );
    resp
}

/// `GET /api/v3/tables/{db}/{table}/context`.
pub(crate) async fn get_table_context(
    State(s): State<AppState>,
    Path((db, table)): Path<(String, String)>,
) -> Response {
    let name = format!("{db}/{table}");
    match s.engine.catalog().table(&name) {
        Some(t) => document(&t.context_hash, &t.context),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "table {name:?} does not exist: it is created by its first write, or by a PUT of \
                 its context to this path"
            ),
        ),
    }
}

/// `PUT /api/v3/tables/{db}/{table}/context`.
pub(crate) async fn put_table_context(
    State(s): State<AppState>,
    Path((db, table)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let name = format!("{db}/{table}");
    let engine = s.engine.clone();
    let table_name = name.clone();
    // Writing the context and the catalog fsyncs: not on a runtime thread.
    let set =
        tokio::task::spawn_blocking(move || engine.catalog().set_context(&table_name, &body)).await;
    match set {
        Ok(Ok(t)) => Json(json!({
            "table": name,
            "context_hash": hex::encode(t.context_hash),
        }))
        .into_response(),
        Ok(Err(EngineError::Schema(e))) => {
            let code = match e {
                SchemaError::TooManyTables { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            error(code, e.to_string())
        }
        Ok(Err(e)) => {
            tracing::warn!(table = %name, error = %e, "storing a JSON-LD context failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v3/contexts/{hash}`.
pub(crate) async fn get_context(
    State(s): State<AppState>,
    Path(hash_hex): Path<String>,
) -> Response {
    let mut hash = [0u8; 32];
    if hex::decode_to_slice(&hash_hex, &mut hash).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash_hex:?} is not a context hash: 64 hex digits (a block header's context field)"),
        );
    }
    let engine = s.engine.clone();
    let found = tokio::task::spawn_blocking(move || engine.catalog().context_by_hash(&hash)).await;
    match found {
        Ok(Ok(Some(doc))) => document(&hash, &doc),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no context with hash {} is stored on this node",
                hex::encode(hash)
            ),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading a stored JSON-LD context failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

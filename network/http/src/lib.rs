//! # annals-http: the HTTP API of a node
//!
//! Owns the InfluxDB-compatible write endpoints (`/api/v3/write_lp`, `/api/v2/write`, `/write`),
//! the SQL endpoint `/api/v3/query_sql` (see [`query`] for its formats and status codes),
//! live subscriptions to committed rows `/api/v3/subscribe` (NDJSON; see [`subscribe`]),
//! the ledger API `/api/v3/ledger/...` (proofs, checkpoints, consistency; see [`ledger`]),
//! tables' JSON-LD contexts (`/api/v3/tables/{db}/{table}/context`, `/api/v3/contexts/{hash}`;
//! see [`context`]; `format=jsonld` query results in [`jsonld`]),
//! the device registry and table attestation policies (`/api/v3/devices`,
//! `/api/v3/tables/{db}/{table}/policy`; signed writes and their headers: see [`devices`]),
//! `/health`, `/ping` and `/metrics`. A handler parses and prepares its request on its own task
//! (so connections parse in parallel), queues it on the engine and answers once every row is
//! durable: 204, or 200 with a receipt when asked.
//!
//! Must never: block a runtime thread on the engine (it waits on futures; `flush` runs in
//! `spawn_blocking`), hold request bodies beyond [`HttpConfig::max_body_bytes`] (compressed and
//! decompressed), or let a panic in one request take the server down.
//!
//! Status codes: 204 written; 200 written with receipt; 400 malformed (JSON error with `line`);
//! 413 body too large; 422 a column's type conflicts with the table; 503 overloaded (with
//! `Retry-After`) or shutting down; 500 a storage failure. Signed writes add 401 (bad device
//! signature), 403 (unknown or revoked device, or an unsigned write to a table that requires
//! attestation), 409 (sequence number replayed or out of window) and 429 (too many bad
//! signatures, with `Retry-After`).

// Handlers and their helpers return a ready `Response` as their error, built only on the
// failing path; boxing it would cost an allocation on every error for no gain.
#![allow(clippy::result_large_err)]

mod auth;
pub mod context;
pub mod devices;
mod idempotency;
pub mod jsonld;
pub mod ledger;
pub mod listener;
pub mod query;
pub mod subscribe;
mod write;

use std::sync::Arc;
use std::time::Duration;

use annals_engine::Engine;
use annals_query::QueryService;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

pub use write::WriteApi;

/// Largest request body accepted by default (compressed or not).
pub const BODY_BYTES_MAX_DEFAULT: usize = 32 << 20;

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest body, before and after gzip decompression.
    pub max_body_bytes: usize,
    /// How long a write waits for queue space before it is answered 503.
    pub write_wait_max: Duration,
    /// Remembered `Idempotency-Key`s.
    pub idempotency_keys_max: usize,
    /// Largest `format=pretty` query result (it is built in memory); larger ones are refused.
    pub query_pretty_bytes_max: usize,
    /// Tokens every request (but `/health`, `/ping`) is checked against; disabled by default.
    pub auth: Arc<annals_auth::Tokens>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: BODY_BYTES_MAX_DEFAULT,
            write_wait_max: Duration::from_secs(5),
            idempotency_keys_max: 100_000,
            query_pretty_bytes_max: query::QUERY_PRETTY_BYTES_MAX_DEFAULT,
            auth: Arc::new(annals_auth::Tokens::disabled()),
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub cfg: HttpConfig,
    pub metrics: Option<PrometheusHandle>,
    /// Runs SQL; `None`: `/api/v3/query_sql` answers 503.
    pub query: Option<Arc<QueryService>>,
    pub(crate) idem: Arc<idempotency::Keys>,
    /// Bad device signatures per client address and claimed device key.
    pub(crate) bad_signatures: Arc<devices::BadSignatures>,
}

/// Builds the router; without a query service the SQL endpoint answers 503.
pub fn router(
    engine: Arc<Engine>,
    query: Option<Arc<QueryService>>,
    cfg: HttpConfig,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let state = AppState {
        engine,
        query,
        idem: Arc::new(idempotency::Keys::new(cfg.idempotency_keys_max)),
        bad_signatures: Arc::new(devices::BadSignatures::new(devices::LIMITER_SOURCES_MAX)),
        cfg: cfg.clone(),
        metrics,
    };
    Router::new()
        .route("/api/v3/write_lp", post(write::write_v3))
        .route("/api/v2/write", post(write::write_v2))
        .route("/write", post(write::write_v1))
        .route("/health", get(health))
        .route("/ping", get(ping).head(ping))
        .route("/metrics", get(metrics_text))
        .route("/api/v3/flush", post(flush))
        .route(
            "/api/v3/query_sql",
            get(query::query_get).post(query::query_post),
        )
        .route("/api/v3/subscribe", get(subscribe::subscribe))
        .route("/api/v3/ledger/proof", get(ledger::proof))
        .route("/api/v3/ledger/checkpoints", get(ledger::checkpoints))
        .route(
            "/api/v3/ledger/checkpoints/latest",
            get(ledger::checkpoint_latest),
        )
        .route(
            "/api/v3/ledger/checkpoints/{epoch}",
            get(ledger::checkpoint_at),
        )
        .route("/api/v3/ledger/consistency", get(ledger::consistency))
        .route(
            "/api/v3/devices",
            get(devices::list).post(devices::register),
        )
        .route("/api/v3/devices/{key}", delete(devices::revoke))
        .route("/api/v3/devices/{key}/revoke", post(devices::revoke))
        .route(
            "/api/v3/tables/{db}/{table}/policy",
            get(devices::policy_get).put(devices::policy_put),
        )
        .route(
            "/api/v3/tables/{db}/{table}/context",
            get(context::get_table_context).put(context::put_table_context),
        )
        .route("/api/v3/contexts/{hash}", get(context::get_context))
        .route("/api/v3/tokens", get(auth::list).post(auth::create))
        .route("/api/v3/tokens/{id}", delete(auth::revoke))
        // Authentication runs before every handler (401/403 change nothing).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        // A panic in a handler answers 500 on that request; the server keeps serving.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        // A body announced larger than the limit is answered 413 before it is read.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            cfg.max_body_bytes,
        ))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state)
}

async fn ping() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            ("X-Influxdb-Version", "annals-0.1"),
            ("X-Influxdb-Build", "annals"),
        ],
    )
}

async fn health(State(s): State<AppState>) -> Response {
    let r = s.engine.recovery();
    let cp = s.engine.latest_checkpoint();
    let failure = s.engine.failure();
    let ok = r.damaged.is_empty() && failure.is_none();
    let body = json!({
        "status": if ok { "pass" } else { "fail" },
        "version": env!("CARGO_PKG_VERSION"),
        "node_key": hex::encode(s.engine.public_key()),
        "damaged_block_files": r.damaged,
        "failure": failure,
        "checkpoint_epoch": cp.as_ref().map(|c| c.header.epoch),
        "queue_depths": s.engine.queue_depths(),
        // Tables whose last-value cache is still being seeded after a start (empty once warm).
        "last_values_cold": s.engine.last_values().cold_tables(),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    for (i, d) in s.engine.queue_depths().into_iter().enumerate() {
        metrics::gauge!("annals_shard_queue_depth", "shard" => i.to_string()).set(d as f64);
    }
    match &s.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// Seals every open block, finishes block files and checkpoints; returns the epoch.
async fn flush(State(s): State<AppState>) -> Response {
    let engine = s.engine.clone();
    match tokio::task::spawn_blocking(move || engine.flush()).await {
        Ok(epoch) => match s.engine.failure() {
            None => Json(json!({ "checkpoint_epoch": epoch })).into_response(),
            Some(f) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": f, "checkpoint_epoch": epoch })),
            )
                .into_response(),
        },
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

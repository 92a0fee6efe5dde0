//! The write endpoints: InfluxDB v1 (`/write`), v2 (`/api/v2/write`) and v3 (`/api/v3/write_lp`).

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_engine::{PrepareOptions, ReceiptForm, WriteError};
use annals_lp::{ParseOptions, Precision};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::devices::{attest_error, count_rejected, Source};
use crate::idempotency::Answer;
use crate::AppState;

/// Which API flavour a request came through (decides parameter names and precision spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteApi {
    V1,
    V2,
    V3,
}

/// Parses `precision` as the v1, v2 and v3 APIs spell it; v3 defaults to `auto`.
fn precision(api: WriteApi, p: Option<&str>) -> Result<Precision, String> {
    match p {
        None | Some("") => Ok(if api == WriteApi::V3 {
            Precision::Auto
        } else {
            Precision::Nanoseconds
        }),
        Some(p) => Precision::parse(p)
            .ok_or_else(|| format!("unknown precision {p:?}: use ns, us, ms, s or auto")),
    }
}

fn bool_param(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k)
        .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "yes"))
}

pub(crate) fn error(
    code: StatusCode,
    msg: impl Into<String>,
    line: Option<usize>,
) -> (u16, Option<Value>) {
    let msg = msg.into();
    let kind = match code {
        StatusCode::BAD_REQUEST => "invalid",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::TOO_MANY_REQUESTS => "too many requests",
        StatusCode::PAYLOAD_TOO_LARGE => "too large",
        StatusCode::UNPROCESSABLE_ENTITY => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal error",
    };
    let mut body = json!({ "code": kind, "error": msg, "message": msg });
    if let Some(l) = line {
        body["line"] = json!(l);
    }
    (code.as_u16(), Some(body))
}

fn respond((code, body): (u16, Option<Value>), headers: &[(&'static str, String)]) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = body.as_ref().and_then(|b| b["retry_after_s"].as_u64());
    let mut resp = match body {
        Some(b) => (code, Json(b)).into_response(),
        None => code.into_response(),
    };
    for (k, v) in headers {
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(*k, v);
        }
    }
    if code == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    if code == StatusCode::TOO_MANY_REQUESTS {
        if let Some(secs) = retry_after {
            resp.headers_mut().insert("retry-after", secs.into());
        }
    }
    resp
}

/// Inflates a gzip body, refusing to grow past `max` bytes.
fn gunzip(body: &[u8], max: usize) -> Result<Vec<u8>, (u16, Option<Value>)> {
    let mut out = Vec::with_capacity((body.len() * 4).min(max + 1));
    let mut d = flate2::read::MultiGzDecoder::new(body).take(max as u64 + 1);
    d.read_to_end(&mut out).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid gzip body: {e}"),
            None,
        )
    })?;
    if out.len() > max {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("decompressed body exceeds {max} bytes"),
            None,
        ));
    }
    Ok(out)
}

pub(crate) async fn write_v1(
    State(s): State<AppState>,
    Query(q): Query<Params>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    write(s, WriteApi::V1, q, h, body, peer_addr(peer)).await
}

pub(crate) async fn write_v2(
    State(s): State<AppState>,
    Query(q): Query<Params>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    write(s, WriteApi::V2, q, h, body, peer_addr(peer)).await
}

pub(crate) async fn write_v3(
    State(s): State<AppState>,
    Query(q): Query<Params>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    write(s, WriteApi::V3, q, h, body, peer_addr(peer)).await
}

/// Query parameters of a write.
type Params = HashMap<String, String>;

/// The client's address, when the server was started with connection info.
fn peer_addr(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<IpAddr> {
    peer.map(|Extension(ConnectInfo(a))| a.ip())
}

async fn write(
    s: AppState,
    api: WriteApi,
    q: Params,
    h: HeaderMap,
    body: Bytes,
    addr: Option<IpAddr>,
) -> Response {
    // v2 names the database `bucket` (and accepts `db` too).
    let db = match api {
        WriteApi::V2 => q.get("bucket").or_else(|| q.get("db")),
        WriteApi::V1 | WriteApi::V3 => q.get("db"),
    }
    .cloned()
    .unwrap_or_default();
    let key = h
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(key) = key else {
        return respond(
            write_once(&s, api, &db, &q, &h, &body, None, addr).await,
            &[],
        );
    };
    let body_hash = xxhash_rust::xxh3::xxh3_64(&body);
    let full_key = format!("{db}\0{key}");
    let cell = s.idem.cell(&full_key);
    // The write runs in its own task: a client that disconnects mid-write must not leave its
    // key unanswered while the rows commit anyway; its retry then finds the answer.
    let ran = Arc::new(AtomicBool::new(false));
    let task = {
        let (s, ran) = (s.clone(), ran.clone());
        tokio::spawn(async move {
            cell.get_or_try_init(|| async {
                ran.store(true, Ordering::Relaxed);
                // After a restart the WAL may hold this request's parts: answer those, write the rest.
                let recovered = s.engine.recovered_request(&full_key);
                if recovered.as_ref().is_some_and(|r| r.body_hash != body_hash) {
                    return Err(error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Idempotency-Key was used with a different request body",
                        None,
                    ));
                }
                let keyed = Keyed {
                    key: &full_key,
                    body_hash,
                    default_time_ns: recovered.as_ref().map(|r| r.default_time_ns),
                    done: recovered.map(|r| r.parts).unwrap_or_default(),
                };
                let (code, answer) =
                    write_once(&s, api, &db, &q, &h, &body, Some(keyed), addr).await;
                // Only a write that happened is remembered; a refused one may be retried.
                if (200..300).contains(&code) {
                    s.engine.forget_recovered(&full_key);
                    Ok::<Answer, (u16, Option<Value>)>((code, answer, body_hash))
                } else {
                    Err((code, answer))
                }
            })
            .await
            .cloned()
        })
    };
    let result = match task.await {
        Ok(r) => r,
        Err(e) => {
            return respond(
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("write task failed: {e}"),
                    None,
                ),
                &[],
            )
        }
    };
    let replayed = if ran.load(Ordering::Relaxed) {
        vec![]
    } else {
        vec![("idempotent-replayed", "true".to_owned())]
    };
    match result {
        Ok((code, body, hash)) if hash == body_hash => respond((code, body), &replayed),
        Ok(_) => respond(
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key was used with a different request body",
                None,
            ),
            &[],
        ),
        Err(answer) => respond(answer, &[]),
    }
}

/// A request's idempotency key, its body hash, and parts already durable before a restart.
struct Keyed<'k> {
    key: &'k str,
    body_hash: u64,
    /// The original request's time for lines without one (known after a restart).
    default_time_ns: Option<i64>,
    done: Vec<Option<Vec<Vec<annals_engine::Run>>>>,
}

#[allow(clippy::too_many_arguments)]
async fn write_once(
    s: &AppState,
    api: WriteApi,
    db: &str,
    q: &HashMap<String, String>,
    h: &HeaderMap,
    body: &Bytes,
    keyed: Option<Keyed<'_>>,
    addr: Option<IpAddr>,
) -> (u16, Option<Value>) {
    let started = Instant::now();
    if db.is_empty() {
        let name = if api == WriteApi::V2 { "bucket" } else { "db" };
        return error(
            StatusCode::BAD_REQUEST,
            format!("missing query parameter {name:?}"),
            None,
        );
    }
    let precision = match precision(api, q.get("precision").map(String::as_str)) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, m, None),
    };
    let gz = h
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let inflated;
    let bytes: &[u8] = if gz {
        match gunzip(body, s.cfg.max_body_bytes) {
            Ok(b) => {
                inflated = b;
                &inflated
            }
            Err(e) => return e,
        }
    } else {
        body
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return (StatusCode::NO_CONTENT.as_u16(), None);
    }
    let want_receipt = bool_param(q, "receipt")
        || q.get("receipt").is_some_and(|v| v == "compact")
        || h.get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
    let form = if q.get("receipt").is_some_and(|v| v == "compact") {
        ReceiptForm::Compact
    } else {
        ReceiptForm::Full
    };
    let no_sync = bool_param(q, "no_sync");
    let signed = match crate::devices::signed_headers(h) {
        Ok(sg) => sg,
        Err(m) => {
            count_rejected("invalid");
            return error(StatusCode::BAD_REQUEST, m, None);
        }
    };
    let sources: Vec<Source> = match &signed {
        Some(sg) => addr
            .map(Source::Addr)
            .into_iter()
            .chain([Source::Device(sg.key)])
            .collect(),
        None => Vec::new(),
    };
    let attest = s.engine.attestations();
    if let Some(sg) = &signed {
        if let Some(refused) = check_signed_request(s, sg, &sources, q, no_sync, precision, bytes) {
            return refused;
        }
    }
    let opts = PrepareOptions {
        parse: ParseOptions {
            precision,
            default_time_ns: keyed
                .as_ref()
                .and_then(|k| k.default_time_ns)
                .unwrap_or_else(|| s.engine.clock().now_ns()),
            ..ParseOptions::default()
        },
        accept_partial: bool_param(q, "accept_partial"),
    };

    let engine = &s.engine;
    let mut prepared = match engine.prepare(db, bytes, &opts) {
        Ok(p) => p,
        Err(e) => return write_error(e),
    };
    // A signed batch: check the signature over the prepared rows and reserve the sequence
    // number (released if the write fails). An unsigned one: check the tables' policies.
    let reservation = match &signed {
        Some(sg) => {
            let leaves = annals_engine::attest::batch_leaves(&prepared);
            let root = annals_format::merkle::root_of(&leaves);
            match attest.begin(&sg.key, sg.seq, &sg.sig, &root, leaves.len()) {
                Ok(r) => Some(r),
                Err(e) => {
                    let now = s.engine.clock().now_ns();
                    if matches!(e, annals_engine::attest::AttestError::BadSignature { .. }) {
                        s.bad_signatures.record(&sources, now);
                    }
                    count_rejected(e.reason());
                    tracing::warn!(device = %hex::encode(sg.key), seq = sg.seq, client = ?addr, reason = e.reason(), error = %e, "signed write refused");
                    return attest_error(&e);
                }
            }
        }
        None => {
            let tables = prepared.origins.iter().flatten().map(|o| o.table.as_str());
            if let Err(e) = attest.check_unsigned(tables) {
                count_rejected(e.reason());
                tracing::warn!(client = ?addr, error = %e, "unsigned write refused by a table policy");
                return attest_error(&e);
            }
            None
        }
    };
    // Wait for queue space, bounded.
    let deadline = started + s.cfg.write_wait_max;
    let mut backoff = Duration::from_micros(500);
    let default_time_ns = opts.parse.default_time_ns;
    let (key, done) = match &keyed {
        Some(k) => (
            Some((k.key, k.body_hash, default_time_ns)),
            k.done.as_slice(),
        ),
        None => (None, &[][..]),
    };
    if !done.is_empty() && done.len() != prepared.parts.len() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key names a request of another shape",
            None,
        );
    }
    let pending = loop {
        match engine.submit_keyed(prepared, key, done) {
            Ok(p) => break p,
            Err(back) => {
                if Instant::now() + backoff > deadline {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ingest queues are full; retry later",
                        None,
                    );
                }
                prepared = back;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
    };
    if no_sync {
        // Acknowledged before durable, as the client asked; the write completes in the background.
        tokio::spawn(async move {
            if let Err(e) = pending.wait().await {
                tracing::error!(error = %e, "no_sync write failed after acknowledgement");
            }
        });
        return (StatusCode::NO_CONTENT.as_u16(), None);
    }
    let outcome = match pending.wait().await {
        Ok(o) => o,
        Err(e) => return write_error(e),
    };
    // Rows durable, then the attestation record durable, then the acknowledgement.
    if let Some(r) = reservation {
        let runs = annals_engine::attest::batch_runs(&outcome);
        match tokio::task::spawn_blocking(move || r.commit(runs)).await {
            Ok(Ok(())) => metrics::counter!("annals_attestations_total").increment(1),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "rows written but their attestation was not recorded");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the rows were written but their attestation could not be recorded ({e}); the sequence number was not used: retry"),
                    None,
                );
            }
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("attestation task failed: {e}"),
                    None,
                )
            }
        }
    }
    metrics::histogram!("annals_write_seconds").record(started.elapsed().as_secs_f64());
    if !outcome.rejected.is_empty() {
        // Partial acceptance: the valid lines are written, the others reported (as InfluxDB does, 400).
        let mut body = outcome.receipt(form);
        body["error"] = json!(format!("{} lines rejected", outcome.rejected.len()));
        body["code"] = json!("invalid");
        return (StatusCode::BAD_REQUEST.as_u16(), Some(body));
    }
    if want_receipt {
        (StatusCode::OK.as_u16(), Some(outcome.receipt(form)))
    } else {
        (StatusCode::NO_CONTENT.as_u16(), None)
    }
}

/// The checks of a signed request that need no parsing, and the timestamps: `Some` answer
/// refuses it.
fn check_signed_request(
    s: &AppState,
    sg: &crate::devices::Signed,
    sources: &[Source],
    q: &HashMap<String, String>,
    no_sync: bool,
    precision: Precision,
    bytes: &[u8],
) -> Option<(u16, Option<Value>)> {
    let device = hex::encode(sg.key);
    if let Some(secs) = s.bad_signatures.blocked(sources, s.engine.clock().now_ns()) {
        count_rejected("rate_limited");
        tracing::warn!(%device, ?sources, retry_after_s = secs, "signed write refused: too many bad signatures from this source");
        let (code, body) = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many bad signatures from this client or for device {device}; retry in {secs} s"),
            None,
        );
        let body = body.map(|mut b| {
            b["retry_after_s"] = json!(secs);
            b["reason"] = json!("rate_limited");
            b
        });
        return Some((code, body));
    }
    if bool_param(q, "accept_partial") {
        count_rejected("invalid");
        return Some(error(
            StatusCode::BAD_REQUEST,
            "a signed write is all or nothing: accept_partial=true cannot be used with Annals-Device-Signature",
            None,
        ));
    }
    if no_sync {
        count_rejected("invalid");
        return Some(error(
            StatusCode::BAD_REQUEST,
            "a signed write is acknowledged only once its attestation is durable: no_sync=true cannot be used with Annals-Device-Signature",
            None,
        ));
    }
    if let Err(e) = s.engine.attestations().active_device(&sg.key) {
        count_rejected(e.reason());
        tracing::warn!(%device, reason = e.reason(), "signed write refused");
        return Some(attest_error(&e));
    }
    if let Some(line) = annals_engine::attest::line_without_time(bytes, precision) {
        count_rejected("invalid");
        return Some(error(
            StatusCode::BAD_REQUEST,
            format!("line {line} has no timestamp: every line of a signed write needs one (the device signs each row's time)"),
            Some(line),
        ));
    }
    None
}

fn write_error(e: WriteError) -> (u16, Option<Value>) {
    match e {
        WriteError::Parse { line, message } => error(StatusCode::BAD_REQUEST, message, Some(line)),
        WriteError::Lines(lines) => {
            let (code, body) = error(
                StatusCode::BAD_REQUEST,
                format!("{} lines rejected", lines.len()),
                Some(lines[0].0),
            );
            let mut body = body.expect("error has a body");
            body["rejected"] = lines
                .iter()
                .map(|(l, m)| json!({"line": l, "error": m}))
                .collect();
            (code, Some(body))
        }
        WriteError::Conflict { line, source } => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("line {line}: {source}"),
            Some(line),
        ),
        e @ WriteError::Database(_) => error(StatusCode::BAD_REQUEST, e.to_string(), None),
        WriteError::Empty => (StatusCode::NO_CONTENT.as_u16(), None),
        WriteError::Overloaded => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest queues are full; retry later",
            None,
        ),
        WriteError::Engine(annals_engine::EngineError::ShuttingDown) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
            None,
        ),
        e => {
            tracing::error!(error = %e, "write failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None)
        }
    }
}

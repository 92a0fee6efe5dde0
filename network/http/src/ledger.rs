//! The ledger API: proofs of rows, checkpoints and consistency paths.
//!
//! - `GET /api/v3/ledger/proof?tx_id=HEX[&branch=HEX&height=N&index=N][&wait=SECONDS]`: the
//!   row's `annals-proof/1` document (FORMAT.md) under the latest checkpoint. The position (from
//!   the write receipt) makes it one block read; without it blocks are searched newest first,
//!   within a bound. `wait` (at most [`WAIT_SECONDS_MAX`]) waits for the checkpoints that make a
//!   row of a still open or not yet checkpointed block provable; it never forces a seal.
//!   `format=binary` answers the same proof in the binary form `annals-proof-bin/1`
//!   (docs/PROOF-BINARY.md, `application/vnd.annals.proof`, about 40 % of the JSON's size).
//! - `GET /api/v3/ledger/checkpoints[?from=EPOCH&limit=N]`, `.../checkpoints/latest`,
//!   `.../checkpoints/{epoch}`: checkpoints with their header (hex and decoded), branch entries
//!   and signatures.
//! - `GET /api/v3/ledger/consistency?branch=HEX&from=N&to=M`: the RFC 9162 consistency path of
//!   one branch log; `?from_epoch=A&to_epoch=B`: the path of every branch of checkpoint `A` to
//!   its size in checkpoint `B`, and the branches new in `B`.
//!
//! Errors are JSON `{"error": message, "reason": ...}`: 400 `invalid` (bad parameter), 404
//! `not_found` / `not_sealed` / `not_checkpointed`, 500 `corrupt` / `io`.

use std::time::{Duration, Instant};

use annals_engine::proof::{self, checkpoint_json, LocationHint, ProofError};
use annals_format::hash::{hash_from_hex, to_hex};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::AppState;

/// Longest `wait` a proof request may ask for.
pub const WAIT_SECONDS_MAX: u64 = 60;
/// Default and largest page of `GET /api/v3/ledger/checkpoints`.
pub const CHECKPOINTS_PAGE_DEFAULT: usize = 100;
pub const CHECKPOINTS_PAGE_MAX: usize = 1000;
/// How often a waiting proof request looks for a new checkpoint.
const WAIT_POLL: Duration = Duration::from_millis(50);

fn error(code: StatusCode, reason: &str, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into(), "reason": reason }))).into_response()
}

fn invalid(msg: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid", msg)
}

fn proof_error(e: &ProofError) -> Response {
    let code = match e {
        ProofError::NotFound(_) | ProofError::NotSealed(_) | ProofError::NotCheckpointed(_) => {
            StatusCode::NOT_FOUND
        }
        ProofError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => {
            tracing::error!(error = %e, "ledger API");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(code, e.reason(), e.to_string())
}

/// Parses the query string into `T`; unknown parameters are refused (a typo would otherwise
/// silently change the answer).
fn params<T: for<'de> Deserialize<'de>>(q: Option<String>) -> Result<T, Response> {
    serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| invalid(format!("invalid query string: {e}")))
}

fn number<T: std::str::FromStr>(v: &Option<String>, name: &str) -> Result<Option<T>, Response> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("{name} must be a non-negative integer, got {s:?}"))),
    }
}

fn branch_param(v: &Option<String>) -> Result<Option<[u8; 16]>, Response> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => {
            let mut b = [0u8; 16];
            hex::decode_to_slice(s, &mut b)
                .map(|()| Some(b))
                .map_err(|_| invalid(format!("branch must be 32 hex digits, got {s:?}")))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofParams {
    tx_id: Option<String>,
    branch: Option<String>,
    height: Option<String>,
    index: Option<String>,
    wait: Option<String>,
    format: Option<String>,
}

/// Media type of the binary proof form.
pub const PROOF_BIN_MEDIA_TYPE: &str = "application/vnd.annals.proof";

pub(crate) async fn proof(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p: ProofParams = match params(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(tx) = p.tx_id.as_deref().filter(|t| !t.is_empty()) else {
        return invalid("missing parameter tx_id");
    };
    let Some(id) = hash_from_hex(tx) else {
        return invalid(format!("tx_id must be 64 hex digits, got {tx:?}"));
    };
    let hint = match (|| {
        Ok::<_, Response>(LocationHint {
            branch: branch_param(&p.branch)?,
            height: number(&p.height, "height")?,
            index: number(&p.index, "index")?,
        })
    })() {
        Ok(h) => h,
        Err(r) => return r,
    };
    let wait = match number::<u64>(&p.wait, "wait") {
        Ok(w) => w.unwrap_or(0),
        Err(r) => return r,
    };
    let binary = match p.format.as_deref() {
        None | Some("") | Some("json") => false,
        Some("binary") => true,
        Some(f) => return invalid(format!("format must be json or binary, got {f:?}")),
    };
    if wait > WAIT_SECONDS_MAX {
        return invalid(format!(
            "wait may be at most {WAIT_SECONDS_MAX} seconds, got {wait}"
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let seen = s.engine.checkpoint_count();
        let engine = s.engine.clone();
        let r = tokio::task::spawn_blocking(move || proof::prove_tx(&engine, &id, &hint)).await;
        let e = match r {
            Ok(Ok(p)) if binary => {
                return (
                    [(axum::http::header::CONTENT_TYPE, PROOF_BIN_MEDIA_TYPE)],
                    p.to_binary(),
                )
                    .into_response()
            }
            Ok(Ok(p)) => return Json(p.to_json()).into_response(),
            Ok(Err(e)) => e,
            Err(join) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "io", join.to_string());
            }
        };
        if !e.is_pending() {
            return proof_error(&e);
        }
        // Only a new checkpoint can make the row provable: wait for one, then try again.
        loop {
            if Instant::now() >= deadline {
                return proof_error(&e);
            }
            tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            if s.engine.checkpoint_count() != seen {
                break;
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    from: Option<String>,
    limit: Option<String>,
}

pub(crate) async fn checkpoints(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p: PageParams = match params(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (from, limit) = match (
        number::<u64>(&p.from, "from"),
        number::<usize>(&p.limit, "limit"),
    ) {
        (Ok(f), Ok(l)) => (f.unwrap_or(0), l.unwrap_or(CHECKPOINTS_PAGE_DEFAULT)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if limit == 0 || limit > CHECKPOINTS_PAGE_MAX {
        return invalid(format!(
            "limit must be between 1 and {CHECKPOINTS_PAGE_MAX}, got {limit}"
        ));
    }
    let page = s.engine.checkpoints_from(from, limit);
    let total = s.engine.checkpoint_count();
    let next = page
        .last()
        .map(|r| r.header.epoch + 1)
        .filter(|&n| n < total);
    Json(json!({
        "count": total,
        "checkpoints": page.iter().map(checkpoint_json).collect::<Vec<_>>(),
        "next_from": next,
    }))
    .into_response()
}

pub(crate) async fn checkpoint_latest(State(s): State<AppState>) -> Response {
    match s.engine.latest_checkpoint() {
        Some(r) => Json(checkpoint_json(&r)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no checkpoint has been written yet",
        ),
    }
}

pub(crate) async fn checkpoint_at(
    State(s): State<AppState>,
    Path(epoch): Path<String>,
) -> Response {
    let Ok(epoch) = epoch.parse::<u64>() else {
        return invalid(format!(
            "epoch must be a non-negative integer or \"latest\", got {epoch:?}"
        ));
    };
    match s.engine.checkpoint(epoch) {
        Some(r) => Json(checkpoint_json(&r)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no checkpoint of epoch {epoch} (there are {})",
                s.engine.checkpoint_count()
            ),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyParams {
    branch: Option<String>,
    from: Option<String>,
    to: Option<String>,
    from_epoch: Option<String>,
    to_epoch: Option<String>,
}

pub(crate) async fn consistency(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let p: ConsistencyParams = match params(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let by_branch = p.branch.is_some() || p.from.is_some() || p.to.is_some();
    let by_epoch = p.from_epoch.is_some() || p.to_epoch.is_some();
    let engine = s.engine.clone();
    match (by_branch, by_epoch) {
        (true, false) => {
            let branch = match branch_param(&p.branch) {
                Ok(Some(b)) => b,
                Ok(None) => return invalid("missing parameter branch"),
                Err(r) => return r,
            };
            let (from, to) = match (number::<u64>(&p.from, "from"), number::<u64>(&p.to, "to")) {
                (Ok(Some(f)), Ok(Some(t))) => (f, t),
                (Err(r), _) | (_, Err(r)) => return r,
                _ => return invalid("consistency by branch needs from and to (branch log sizes)"),
            };
            let r =
                tokio::task::spawn_blocking(move || proof::consistency(&engine, &branch, from, to))
                    .await;
            match r {
                Ok(Ok(c)) => Json(c.to_json()).into_response(),
                Ok(Err(e)) => proof_error(&e),
                Err(j) => error(StatusCode::INTERNAL_SERVER_ERROR, "io", j.to_string()),
            }
        }
        (false, true) => {
            let (a, b) = match (
                number::<u64>(&p.from_epoch, "from_epoch"),
                number::<u64>(&p.to_epoch, "to_epoch"),
            ) {
                (Ok(Some(a)), Ok(Some(b))) => (a, b),
                (Err(r), _) | (_, Err(r)) => return r,
                _ => return invalid("consistency by epochs needs from_epoch and to_epoch"),
            };
            if a > b {
                return invalid(format!("from_epoch ({a}) is after to_epoch ({b})"));
            }
            let r = tokio::task::spawn_blocking(move || between_epochs(&engine, a, b)).await;
            match r {
                Ok(Ok(v)) => Json(v).into_response(),
                Ok(Err(e)) => proof_error(&e),
                Err(j) => error(StatusCode::INTERNAL_SERVER_ERROR, "io", j.to_string()),
            }
        }
        (true, true) => {
            invalid("give either branch, from and to, or from_epoch and to_epoch, not both")
        }
        (false, false) => invalid("give branch, from and to, or from_epoch and to_epoch"),
    }
}

/// For every branch of checkpoint `a`, its consistency path to its size in checkpoint `b`.
fn between_epochs(engine: &annals_engine::Engine, a: u64, b: u64) -> Result<Value, ProofError> {
    let missing = |e: u64| ProofError::NotFound(format!("no checkpoint of epoch {e}"));
    let old = engine.checkpoint(a).ok_or_else(|| missing(a))?;
    let new = engine.checkpoint(b).ok_or_else(|| missing(b))?;
    let mut branches = Vec::with_capacity(old.entries.len());
    for e in &old.entries {
        let n = new
            .entries
            .iter()
            .find(|n| n.branch == e.branch)
            .ok_or_else(|| {
                ProofError::Corrupt(format!(
                    "branch {} of epoch {a} is missing from epoch {b}",
                    to_hex(&e.branch)
                ))
            })?;
        let c = proof::consistency(engine, &e.branch, e.size, n.size)?;
        if c.from_root != e.root || c.to_root != n.root {
            return Err(ProofError::Corrupt(format!(
                "branch {}: stored tree roots differ from checkpoints {a} and {b}",
                to_hex(&e.branch)
            )));
        }
        branches.push(c.to_json());
    }
    let new_branches: Vec<Value> = new
        .entries
        .iter()
        .filter(|n| old.entries.iter().all(|e| e.branch != n.branch))
        .map(|n| json!({"branch": to_hex(&n.branch), "size": n.size, "root": to_hex(&n.root)}))
        .collect();
    Ok(json!({
        "from_epoch": a,
        "to_epoch": b,
        "from_hash": to_hex(&old.hash()),
        "to_hash": to_hex(&new.hash()),
        "branches": branches,
        "new_branches": new_branches,
    }))
}

//! Authentication of HTTP requests and the token API (`/api/v3/tokens`).
//!
//! Every request except `/health` and `/ping` presents a token (see `annals-auth` for the
//! accepted forms; InfluxDB v1 clients may also send it as the `p` query parameter). The
//! middleware answers 401 for a missing or unknown token and 403 for a token without the
//! permission the route needs, before the handler runs, so a refused request changes nothing.
//! The [`Grant`] of an accepted request is put in its extensions for handlers that learn the
//! database only from the body (`POST /api/v3/query_sql`).

use std::collections::HashMap;

use annals_auth::{Action, AuthError, Grant, TokenSpec};
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::AppState;

/// What a route needs: the action, and where its database name is.
fn requirement(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
) -> Option<(Action, Option<String>)> {
    let db_param = || {
        query
            .get("db")
            .or_else(|| query.get("bucket"))
            .filter(|d| !d.is_empty())
            .cloned()
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read_only = method == Method::GET || method == Method::HEAD;
    Some(match segs.as_slice() {
        ["health"] | ["ping"] => return None,
        ["write"] | ["api", "v2", "write"] | ["api", "v3", "write_lp"] => {
            (Action::Write, db_param())
        }
        ["api", "v3", "flush"] => (Action::Write, None),
        ["api", "v3", "tokens", ..] => (Action::Admin, None),
        ["api", "v3", "devices", ..] if !read_only => (Action::Admin, None),
        ["api", "v3", "tables", db, ..] => {
            let action = if read_only {
                Action::Read
            } else {
                Action::Admin
            };
            (action, Some((*db).to_owned()))
        }
        _ => (Action::Read, db_param()),
    })
}

fn refuse(e: &AuthError) -> Response {
    let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let msg = e.to_string();
    let kind = if code == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    let mut r = (
        code,
        Json(json!({ "code": kind, "error": msg, "message": msg })),
    )
        .into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"annals\""),
        );
    }
    r
}

/// The middleware: authenticate, check the route's permission, pass the [`Grant`] on.
pub(crate) async fn require(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let Some((action, db)) = requirement(req.method(), req.uri().path(), &query) else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let grant = match (header, query.get("p")) {
        (Some(h), _) => s.cfg.auth.authenticate_header(Some(h)),
        // InfluxDB v1: `?u=user&p=token`.
        (None, Some(p)) => s.cfg.auth.authenticate(Some(p)),
        (None, None) => s.cfg.auth.authenticate(None),
    };
    let grant = match grant.and_then(|g| g.check(action, db.as_deref()).map(|()| g)) {
        Ok(g) => g,
        Err(e) => {
            metrics::counter!("annals_http_auth_refused_total", "status" => e.status().to_string())
                .increment(1);
            return refuse(&e);
        }
    };
    req.extensions_mut().insert(grant);
    next.run(req).await
}

/// Checks a permission a handler learned from the body.
pub(crate) fn check(grant: &Grant, action: Action, db: &str) -> Result<(), Response> {
    grant.check(action, Some(db)).map_err(|e| refuse(&e))
}

/// `POST /api/v3/tokens` with a JSON [`TokenSpec`]: 201 with the secret (shown only here).
/// The body is parsed as JSON whatever its `Content-Type` (curl's `-d` sends a form type).
pub(crate) async fn create(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let spec: TokenSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => {
            return refuse_or_error(&AuthError::BadRequest(format!(
                "the body must be a JSON object like {{\"read\": true, \"db\": \"fleet\"}}: {e}"
            )))
        }
    };
    match s.cfg.auth.create(spec) {
        Ok((secret, info)) => {
            let mut v = serde_json::to_value(&info).unwrap_or_default();
            v["token"] = json!(secret);
            (StatusCode::CREATED, Json(v)).into_response()
        }
        Err(e) => refuse_or_error(&e),
    }
}

/// `GET /api/v3/tokens`: every token without its secret, revoked ones included.
pub(crate) async fn list(State(s): State<AppState>) -> Response {
    Json(json!({ "tokens": s.cfg.auth.list() })).into_response()
}

/// `DELETE /api/v3/tokens/{id}`: 204, or 404 when no valid token has that id.
pub(crate) async fn revoke(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match s.cfg.auth.revoke(&id) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => {
            let msg = format!("no valid token with id {id}");
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "code": "not found", "error": msg, "message": msg })),
            )
                .into_response()
        }
        Err(e) => refuse_or_error(&e),
    }
}

fn refuse_or_error(e: &AuthError) -> Response {
    let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if matches!(code, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return refuse(e);
    }
    let msg = e.to_string();
    let kind = if code == StatusCode::BAD_REQUEST {
        "invalid"
    } else {
        "internal error"
    };
    (
        code,
        Json(json!({ "code": kind, "error": msg, "message": msg })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, q: &[(&str, &str)]) -> Option<(Action, Option<String>)> {
        let q = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        requirement(&method, path, &q)
    }

    #[test]
    fn routes_need_what_they_do() {
        assert_eq!(req(Method::GET, "/health", &[]), None);
        assert_eq!(req(Method::HEAD, "/ping", &[]), None);
        assert_eq!(
            req(Method::POST, "/api/v3/write_lp", &[("db", "fleet")]),
            Some((Action::Write, Some("fleet".into())))
        );
        assert_eq!(
            req(Method::POST, "/api/v2/write", &[("bucket", "b")]),
            Some((Action::Write, Some("b".into())))
        );
        assert_eq!(
            req(Method::GET, "/api/v3/query_sql", &[("db", "fleet")]),
            Some((Action::Read, Some("fleet".into())))
        );
        assert_eq!(
            req(Method::POST, "/api/v3/tokens", &[]),
            Some((Action::Admin, None))
        );
        assert_eq!(
            req(Method::GET, "/api/v3/devices", &[]),
            Some((Action::Read, None))
        );
        assert_eq!(
            req(Method::POST, "/api/v3/devices", &[]),
            Some((Action::Admin, None))
        );
        assert_eq!(
            req(Method::PUT, "/api/v3/tables/fleet/readings/policy", &[]),
            Some((Action::Admin, Some("fleet".into())))
        );
        assert_eq!(
            req(Method::GET, "/api/v3/tables/fleet/readings/context", &[]),
            Some((Action::Read, Some("fleet".into())))
        );
        assert_eq!(
            req(Method::GET, "/metrics", &[]),
            Some((Action::Read, None))
        );
    }
}

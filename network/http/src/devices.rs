//! Device attestations over HTTP: the device registry (`/api/v3/devices`), table policies
//! (`/api/v3/tables/{db}/{table}/policy`), the signed-write headers and the limiter of bad
//! signatures. The registry, windows and log themselves are the engine's
//! ([`annals_engine::attest`]).
//!
//! Status codes: 201 registered; 200 listed, revoked, policy read or set; 400 malformed key,
//! name or body; 404 unknown device (revoke); 409 already registered.

use std::collections::HashMap;
use std::net::IpAddr;

use annals_engine::attest::{AttestError, Policy};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::AppState;

/// Header naming the signing device's public key (hex, 32 bytes).
pub const DEVICE_KEY_HEADER: &str = "annals-device-key";
/// Header with the batch's sequence number (decimal u64).
pub const DEVICE_SEQ_HEADER: &str = "annals-device-seq";
/// Header with the Ed25519 signature (hex, 64 bytes).
pub const DEVICE_SIGNATURE_HEADER: &str = "annals-device-signature";

/// Bad signatures from one source within [`BAD_SIGNATURE_WINDOW_NS`] before it is answered 429.
pub const BAD_SIGNATURES_MAX: u32 = 5;
/// The window of the bad-signature count.
pub const BAD_SIGNATURE_WINDOW_NS: i64 = 60_000_000_000;
/// Sources (client addresses and claimed device keys) the limiter remembers.
pub const LIMITER_SOURCES_MAX: usize = 10_000;
/// Largest registry or policy request body.
const ADMIN_BODY_BYTES_MAX: usize = 64 << 10;

/// The signature headers of a signed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signed {
    pub(crate) key: [u8; 32],
    pub(crate) seq: u64,
    pub(crate) sig: [u8; 64],
}

/// Reads the three headers: none of them → unsigned; some but not all, or malformed → error.
pub(crate) fn signed_headers(h: &HeaderMap) -> Result<Option<Signed>, String> {
    let get = |name: &str| -> Result<Option<&str>, String> {
        h.get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| format!("header {name} is not ASCII"))
            })
            .transpose()
    };
    let (k, s, g) = (
        get(DEVICE_KEY_HEADER)?,
        get(DEVICE_SEQ_HEADER)?,
        get(DEVICE_SIGNATURE_HEADER)?,
    );
    let (k, s, g) = match (k, s, g) {
        (None, None, None) => return Ok(None),
        (Some(k), Some(s), Some(g)) => (k, s, g),
        _ => {
            return Err(
                "a signed write needs all three headers Annals-Device-Key, Annals-Device-Seq and Annals-Device-Signature"
                    .into(),
            )
        }
    };
    let mut key = [0u8; 32];
    hex::decode_to_slice(k, &mut key)
        .map_err(|_| format!("Annals-Device-Key {k:?} is not 32 bytes of hex"))?;
    let seq = s
        .parse::<u64>()
        .map_err(|_| format!("Annals-Device-Seq {s:?} is not an unsigned 64-bit integer"))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(g, &mut sig)
        .map_err(|_| "Annals-Device-Signature is not 64 bytes of hex".to_string())?;
    Ok(Some(Signed { key, seq, sig }))
}

/// Where bad signatures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    Addr(IpAddr),
    Device([u8; 32]),
}

#[derive(Debug, Clone, Copy)]
struct Count {
    first_ns: i64,
    bad: u32,
}

/// Counts bad signatures per source in fixed windows; a source with
/// [`BAD_SIGNATURES_MAX`] in its window is refused (429) until the window ends, without
/// checking its requests. Bounded: at most `max` sources, expired ones evicted first, then
/// the oldest.
#[derive(Debug)]
pub(crate) struct BadSignatures {
    counts: Mutex<HashMap<Source, Count>>,
    max: usize,
}

impl BadSignatures {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Seconds until the first blocked source of `sources` may try again, if one is blocked.
    pub(crate) fn blocked(&self, sources: &[Source], now_ns: i64) -> Option<u64> {
        let counts = self.counts.lock();
        sources
            .iter()
            .filter_map(|s| counts.get(s))
            .filter(|c| {
                c.bad >= BAD_SIGNATURES_MAX && now_ns - c.first_ns < BAD_SIGNATURE_WINDOW_NS
            })
            .map(|c| {
                let left = c.first_ns + BAD_SIGNATURE_WINDOW_NS - now_ns;
                (left as u64).div_ceil(1_000_000_000).max(1)
            })
            .max()
    }

    /// Counts one bad signature for each source.
    pub(crate) fn record(&self, sources: &[Source], now_ns: i64) {
        let mut counts = self.counts.lock();
        for s in sources {
            if !counts.contains_key(s) && counts.len() >= self.max {
                counts.retain(|_, c| now_ns - c.first_ns < BAD_SIGNATURE_WINDOW_NS);
                if counts.len() >= self.max {
                    if let Some(oldest) = counts
                        .iter()
                        .min_by_key(|(_, c)| c.first_ns)
                        .map(|(k, _)| *k)
                    {
                        counts.remove(&oldest);
                    }
                }
            }
            let c = counts.entry(*s).or_insert(Count {
                first_ns: now_ns,
                bad: 0,
            });
            if now_ns - c.first_ns >= BAD_SIGNATURE_WINDOW_NS {
                *c = Count {
                    first_ns: now_ns,
                    bad: 0,
                };
            }
            c.bad += 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.counts.lock().len()
    }
}

/// The JSON error shape of the write endpoints (`code`, `error`, `message`) plus `reason`.
pub(crate) fn attest_error(e: &AttestError) -> (u16, Option<Value>) {
    let status = match e {
        AttestError::UnknownDevice(_) | AttestError::Revoked { .. } => StatusCode::FORBIDDEN,
        AttestError::PolicyRequiresAttestation { .. } => StatusCode::FORBIDDEN,
        AttestError::BadSignature { .. } => StatusCode::UNAUTHORIZED,
        AttestError::Seq { source, .. } => match source {
            annals_engine::attest::SeqRefusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::CONFLICT,
        },
        AttestError::AlreadyRegistered(_) => StatusCode::CONFLICT,
        AttestError::Invalid(_) => StatusCode::BAD_REQUEST,
        AttestError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "attestation store failed");
    }
    let (code, body) = crate::write::error(status, e.to_string(), None);
    let body = body.map(|mut b| {
        b["reason"] = json!(e.reason());
        b
    });
    (code, body)
}

fn reply((code, body): (u16, Option<Value>)) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match body {
        Some(b) => (code, Json(b)).into_response(),
        None => code.into_response(),
    }
}

fn bad_request(msg: impl Into<String>) -> Response {
    reply(crate::write::error(StatusCode::BAD_REQUEST, msg, None))
}

fn device_json(d: &annals_engine::attest::Device) -> Value {
    json!({
        "key": d.key, "name": d.name, "fleet": d.fleet,
        "registered_at": d.registered_at, "revoked_at": d.revoked_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    key: String,
    name: String,
    fleet: String,
}

/// `POST /api/v3/devices` `{"key": hex, "name": ..., "fleet": ...}` → 201.
pub(crate) async fn register(State(s): State<AppState>, body: Bytes) -> Response {
    if body.len() > ADMIN_BODY_BYTES_MAX {
        return bad_request(format!("body larger than {ADMIN_BODY_BYTES_MAX} bytes"));
    }
    let r: Register = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "body must be {{\"key\": <hex Ed25519 public key>, \"name\": ..., \"fleet\": ...}}: {e}"
            ))
        }
    };
    let now = s.engine.clock().now_ns();
    let engine = s.engine.clone();
    let done = tokio::task::spawn_blocking(move || {
        engine
            .attestations()
            .register(r.key.trim(), &r.name, &r.fleet, now)
    })
    .await;
    match done {
        Ok(Ok(d)) => {
            tracing::info!(device = %d.key, name = %d.name, fleet = %d.fleet, "device registered");
            (StatusCode::CREATED, Json(device_json(&d))).into_response()
        }
        Ok(Err(e)) => reply(attest_error(&e)),
        Err(e) => reply(crate::write::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            None,
        )),
    }
}

/// `GET /api/v3/devices` → `{"devices": [...]}`, revoked ones with `revoked_at`.
pub(crate) async fn list(State(s): State<AppState>) -> Response {
    let devices: Vec<Value> = s
        .engine
        .attestations()
        .devices()
        .iter()
        .map(device_json)
        .collect();
    Json(json!({ "devices": devices })).into_response()
}

/// `DELETE /api/v3/devices/{key}` or `POST /api/v3/devices/{key}/revoke` → 200 with the device.
pub(crate) async fn revoke(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    let now = s.engine.clock().now_ns();
    let engine = s.engine.clone();
    let done =
        tokio::task::spawn_blocking(move || engine.attestations().revoke(key.trim(), now)).await;
    match done {
        Ok(Ok(d)) => {
            tracing::warn!(device = %d.key, name = %d.name, "device revoked");
            Json(device_json(&d)).into_response()
        }
        Ok(Err(e @ AttestError::UnknownDevice(_))) => {
            let (_, body) = attest_error(&e);
            reply((StatusCode::NOT_FOUND.as_u16(), body))
        }
        Ok(Err(e)) => reply(attest_error(&e)),
        Err(e) => reply(crate::write::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            None,
        )),
    }
}

fn policy_json(table: &str, p: Policy) -> Value {
    json!({ "table": table, "require_attestation": p.require_attestation })
}

/// `GET /api/v3/tables/{db}/{table}/policy`.
pub(crate) async fn policy_get(
    State(s): State<AppState>,
    Path((db, table)): Path<(String, String)>,
) -> Response {
    let name = format!("{db}/{table}");
    Json(policy_json(&name, s.engine.attestations().policy(&name))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    require_attestation: bool,
}

/// `PUT /api/v3/tables/{db}/{table}/policy` `{"require_attestation": true}`.
pub(crate) async fn policy_put(
    State(s): State<AppState>,
    Path((db, table)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if body.len() > ADMIN_BODY_BYTES_MAX {
        return bad_request(format!("body larger than {ADMIN_BODY_BYTES_MAX} bytes"));
    }
    let p: PolicyBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return bad_request(format!(
                "body must be {{\"require_attestation\": bool}}: {e}"
            ))
        }
    };
    let name = format!("{db}/{table}");
    let engine = s.engine.clone();
    let n = name.clone();
    let done = tokio::task::spawn_blocking(move || {
        engine.attestations().set_policy(
            &n,
            Policy {
                require_attestation: p.require_attestation,
            },
        )
    })
    .await;
    match done {
        Ok(Ok(p)) => {
            tracing::info!(table = %name, require_attestation = p.require_attestation, "table policy set");
            Json(policy_json(&name, p)).into_response()
        }
        Ok(Err(e)) => reply(attest_error(&e)),
        Err(e) => reply(crate::write::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            None,
        )),
    }
}

/// Counts a refused signed write in `annals_attestation_rejected_total{reason}`.
pub(crate) fn count_rejected(reason: &'static str) {
    metrics::counter!("annals_attestation_rejected_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn headers_all_or_none_and_well_formed() {
        let mut h = HeaderMap::new();
        assert_eq!(signed_headers(&h), Ok(None));
        h.insert(DEVICE_KEY_HEADER, "ab".repeat(32).parse().unwrap());
        assert!(signed_headers(&h).is_err());
        h.insert(DEVICE_SEQ_HEADER, "7".parse().unwrap());
        h.insert(DEVICE_SIGNATURE_HEADER, "cd".repeat(64).parse().unwrap());
        let s = signed_headers(&h).unwrap().unwrap();
        assert_eq!((s.key, s.seq, s.sig), ([0xab; 32], 7, [0xcd; 64]));
        h.insert(DEVICE_SEQ_HEADER, "-1".parse().unwrap());
        assert!(signed_headers(&h).is_err());
        h.insert(DEVICE_SEQ_HEADER, "7".parse().unwrap());
        h.insert(DEVICE_SIGNATURE_HEADER, "cd".repeat(63).parse().unwrap());
        assert!(signed_headers(&h).is_err());
    }

    #[test]
    fn five_bad_signatures_block_the_source_for_the_window() {
        let l = BadSignatures::new(100);
        let ip = Source::Addr("10.0.0.1".parse().unwrap());
        let dev = Source::Device([1; 32]);
        for i in 0..BAD_SIGNATURES_MAX as i64 {
            assert_eq!(l.blocked(&[ip, dev], i * S), None);
            l.record(&[ip, dev], i * S);
        }
        // Blocked until 60 s after the first.
        assert_eq!(l.blocked(&[ip], 5 * S), Some(55));
        assert_eq!(l.blocked(&[dev], 59 * S + 1), Some(1));
        // Another address is not.
        assert_eq!(
            l.blocked(&[Source::Addr("10.0.0.2".parse().unwrap())], 5 * S),
            None
        );
        // The window ends: counting starts over.
        assert_eq!(l.blocked(&[ip, dev], 60 * S), None);
        l.record(&[ip], 61 * S);
        assert_eq!(l.blocked(&[ip], 61 * S), None);
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let l = BadSignatures::new(8);
        for i in 0..100u8 {
            l.record(&[Source::Device([i; 32])], i64::from(i));
            assert!(l.len() <= 8);
        }
        // The newest sources are kept.
        assert!(l.counts.lock().contains_key(&Source::Device([99; 32])));
    }
}

//! # annals-auth: API tokens and the permission check of every interface
//!
//! A token is a random secret (`annals_` + 64 hex digits) that a client presents on every
//! request: `Authorization: Bearer <token>` (HTTP, Flight, gRPC), `Authorization: Token <token>`
//! (InfluxDB v2 clients), `Authorization: Basic` with the token as password (InfluxDB v1
//! clients), the PostgreSQL password, or the MQTT password. The server stores only the BLAKE3
//! hash of each secret, with the token's permissions, in `<data-dir>/auth/tokens.json`
//! (rewritten atomically and fsynced on every change).
//!
//! Permissions: `read` (queries, ledger proofs, subscriptions), `write` (ingest), `admin`
//! (tokens, devices, table policies and contexts; implies read and write), optionally limited
//! to one database. [`Tokens::disabled`] (`annals serve --without-auth`) accepts every request,
//! with or without a token.
//!
//! Must never: keep or log a secret after [`Tokens::create`] returned it, accept a revoked
//! token, or change the token file other than by a complete atomic rewrite.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use parking_lot::RwLock;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Prefix of every token secret.
pub const TOKEN_PREFIX: &str = "annals_";
/// Most tokens a node keeps (revoked ones included); creating more is refused.
pub const TOKENS_MAX: usize = 10_000;
/// Longest token description.
pub const DESCRIPTION_BYTES_MAX: usize = 256;
const FILE_NAME: &str = "tokens.json";
const FILE_FORMAT: &str = "annals-tokens/1";

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Queries, proofs, checkpoints, subscriptions, listings.
    Read,
    /// Ingest.
    Write,
    /// Tokens, devices, policies, contexts.
    Admin,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Admin => "admin",
        })
    }
}

/// Why a request was refused or a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials were presented (401).
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    /// The credentials are not a known, unrevoked token (401).
    #[error("invalid or revoked token")]
    Invalid,
    /// The token is valid but lacks the permission (403).
    #[error("token {id} may not {action}{}", db.as_ref().map(|d| format!(" database `{d}`")).unwrap_or_default())]
    Forbidden {
        id: String,
        action: Action,
        db: Option<String>,
    },
    /// A token specification is unusable (400).
    #[error("bad token request: {0}")]
    BadRequest(String),
    /// The token file could not be read or written.
    #[error("token store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The token file is not a token file of this version.
    #[error("token store {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl AuthError {
    /// HTTP status code that fits the error.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid => 401,
            AuthError::Forbidden { .. } => 403,
            AuthError::BadRequest(_) => 400,
            AuthError::Io { .. } | AuthError::Corrupt { .. } => 500,
        }
    }
}

/// Permissions of a new token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub admin: bool,
    /// Limit to one database; `None`: all databases.
    #[serde(default)]
    pub db: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// A stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public identifier (first 16 hex digits of the secret's hash).
    pub id: String,
    pub read: bool,
    pub write: bool,
    pub admin: bool,
    pub db: Option<String>,
    pub description: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; `None` while the token is valid.
    pub revoked_at: Option<u64>,
}

/// What an authenticated request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Token id; `None` when authentication is disabled.
    pub id: Option<String>,
    pub read: bool,
    pub write: bool,
    pub admin: bool,
    pub db: Option<String>,
}

impl Grant {
    /// Everything, for `--without-auth`.
    pub fn all() -> Grant {
        Grant {
            id: None,
            read: true,
            write: true,
            admin: true,
            db: None,
        }
    }

    /// Whether `action` is allowed on `db` (`None`: a request not tied to one database, such as
    /// a listing; a token limited to one database may read those, filtered by [`Grant::sees`]).
    pub fn allows(&self, action: Action, db: Option<&str>) -> bool {
        let permitted = self.admin
            || match action {
                Action::Read => self.read,
                Action::Write => self.write,
                Action::Admin => false,
            };
        let in_scope = match (&self.db, db) {
            (None, _) => true,
            (Some(own), Some(db)) => own == db,
            // A database-limited token may not do admin work, but may list (filtered).
            (Some(_), None) => action != Action::Admin,
        };
        permitted && in_scope
    }

    /// `Ok` when allowed, else [`AuthError::Forbidden`].
    pub fn check(&self, action: Action, db: Option<&str>) -> Result<(), AuthError> {
        if self.allows(action, db) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                id: self.id.clone().unwrap_or_default(),
                action,
                db: db.map(str::to_owned),
            })
        }
    }

    /// Whether a listing may show database `db`.
    pub fn sees(&self, db: &str) -> bool {
        self.db.as_deref().is_none_or(|own| own == db)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    #[serde(flatten)]
    info: TokenInfo,
    /// BLAKE3 of the secret, hex.
    hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenFile {
    format: String,
    tokens: Vec<StoredToken>,
}

/// The node's tokens: secret hashes and permissions, shared by every interface.
pub struct Tokens {
    /// `None`: authentication disabled.
    path: Option<PathBuf>,
    /// By secret hash.
    inner: RwLock<BTreeMap<String, StoredToken>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.path)
            .field("tokens", &self.inner.read().len())
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A fresh random secret.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

impl Tokens {
    /// Authentication disabled: every request is granted everything.
    pub fn disabled() -> Tokens {
        Tokens {
            path: None,
            inner: RwLock::new(BTreeMap::new()),
        }
    }

    /// Opens (or starts) the token store in `<data_dir>/auth/`.
    pub fn open(data_dir: &Path) -> Result<Tokens, AuthError> {
        let dir = data_dir.join("auth");
        let path = dir.join(FILE_NAME);
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        annals_storage::fsutil::create_dir_durable(&dir).map_err(io)?;
        let mut map = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: TokenFile =
                    serde_json::from_slice(&bytes).map_err(|e| AuthError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if file.format != FILE_FORMAT {
                    return Err(AuthError::Corrupt {
                        path,
                        reason: format!("format `{}`, expected `{FILE_FORMAT}`", file.format),
                    });
                }
                for t in file.tokens {
                    map.insert(t.hash.clone(), t);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok(Tokens {
            path: Some(path),
            inner: RwLock::new(map),
        })
    }

    /// Whether requests must present a token.
    pub fn is_enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Whether the store holds no token at all (a first start).
    pub fn is_empty(&self) -> bool {
        self.inner.read().is_empty()
    }

    /// On a first start (no token yet), creates an admin token, with `secret` when given, and
    /// returns its secret; otherwise `None`. Disabled stores never create one.
    pub fn ensure_admin(&self, secret: Option<&str>) -> Result<Option<String>, AuthError> {
        if !self.is_enabled() || !self.is_empty() {
            return Ok(None);
        }
        let spec = TokenSpec {
            admin: true,
            read: true,
            write: true,
            db: None,
            description: "admin token created at first start".into(),
        };
        let (secret, _) = self.create_with(spec, secret.map(str::to_owned))?;
        Ok(Some(secret))
    }

    /// Checks a presented secret. With authentication disabled every request (with or without
    /// a secret) gets [`Grant::all`].
    pub fn authenticate(&self, secret: Option<&str>) -> Result<Grant, AuthError> {
        if !self.is_enabled() {
            return Ok(Grant::all());
        }
        let secret = secret.filter(|s| !s.is_empty()).ok_or(AuthError::Missing)?;
        let map = self.inner.read();
        let t = map.get(&hash_secret(secret)).ok_or(AuthError::Invalid)?;
        if t.info.revoked_at.is_some() {
            return Err(AuthError::Invalid);
        }
        Ok(Grant {
            id: Some(t.info.id.clone()),
            read: t.info.read,
            write: t.info.write,
            admin: t.info.admin,
            db: t.info.db.clone(),
        })
    }

    /// [`Tokens::authenticate`] on an `Authorization` header value.
    pub fn authenticate_header(&self, authorization: Option<&str>) -> Result<Grant, AuthError> {
        if !self.is_enabled() {
            return Ok(Grant::all());
        }
        match authorization {
            None => self.authenticate(None),
            Some(h) => self.authenticate(Some(
                secret_from_authorization(h)
                    .ok_or(AuthError::Invalid)?
                    .as_str(),
            )),
        }
    }

    /// Creates a token; returns its secret (shown once, never stored) and its record.
    pub fn create(&self, spec: TokenSpec) -> Result<(String, TokenInfo), AuthError> {
        self.create_with(spec, None)
    }

    fn create_with(
        &self,
        spec: TokenSpec,
        secret: Option<String>,
    ) -> Result<(String, TokenInfo), AuthError> {
        if !self.is_enabled() {
            return Err(AuthError::BadRequest(
                "authentication is disabled (--without-auth); tokens are not used".into(),
            ));
        }
        if !(spec.read || spec.write || spec.admin) {
            return Err(AuthError::BadRequest(
                "a token needs at least one of read, write, admin".into(),
            ));
        }
        if spec.admin && spec.db.is_some() {
            return Err(AuthError::BadRequest(
                "an admin token cannot be limited to one database".into(),
            ));
        }
        if spec.description.len() > DESCRIPTION_BYTES_MAX {
            return Err(AuthError::BadRequest(format!(
                "description longer than {DESCRIPTION_BYTES_MAX} bytes"
            )));
        }
        if let Some(db) = &spec.db {
            if db.is_empty() {
                return Err(AuthError::BadRequest("empty database name".into()));
            }
        }
        let secret = secret.unwrap_or_else(new_secret);
        if secret.len() < 16 {
            return Err(AuthError::BadRequest(
                "a token secret needs at least 16 characters".into(),
            ));
        }
        let hash = hash_secret(&secret);
        let info = TokenInfo {
            id: hash[..16].to_owned(),
            read: spec.read || spec.admin,
            write: spec.write || spec.admin,
            admin: spec.admin,
            db: spec.db,
            description: spec.description,
            created_at: now_secs(),
            revoked_at: None,
        };
        let mut map = self.inner.write();
        if map.len() >= TOKENS_MAX {
            return Err(AuthError::BadRequest(format!(
                "{TOKENS_MAX} tokens exist; revoked ones count too"
            )));
        }
        if map.contains_key(&hash) {
            return Err(AuthError::BadRequest(
                "that secret is already a token".into(),
            ));
        }
        map.insert(
            hash.clone(),
            StoredToken {
                info: info.clone(),
                hash: hash.clone(),
            },
        );
        if let Err(e) = self.persist(&map) {
            map.remove(&hash);
            return Err(e);
        }
        tracing::info!(id = %info.id, admin = info.admin, write = info.write, "token created");
        Ok((secret, info))
    }

    /// Revokes a token by id; `false` when no valid token has that id.
    pub fn revoke(&self, id: &str) -> Result<bool, AuthError> {
        let mut map = self.inner.write();
        let Some(hash) = map
            .values()
            .find(|t| t.info.id == id && t.info.revoked_at.is_none())
            .map(|t| t.hash.clone())
        else {
            return Ok(false);
        };
        let before = map.get(&hash).cloned();
        if let Some(t) = map.get_mut(&hash) {
            t.info.revoked_at = Some(now_secs());
        }
        if let Err(e) = self.persist(&map) {
            if let Some(before) = before {
                map.insert(hash, before);
            }
            return Err(e);
        }
        tracing::info!(id, "token revoked");
        Ok(true)
    }

    /// Every token, revoked ones included, oldest first.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut v: Vec<TokenInfo> = self.inner.read().values().map(|t| t.info.clone()).collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    fn persist(&self, map: &BTreeMap<String, StoredToken>) -> Result<(), AuthError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = TokenFile {
            format: FILE_FORMAT.into(),
            tokens: map.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| AuthError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        annals_storage::fsutil::atomic_write(path, &bytes).map_err(|source| AuthError::Io {
            path: path.clone(),
            source,
        })
    }
}

/// The secret in an `Authorization` header value: `Bearer S`, `Token S`, or `Basic` with
/// base64 `user:S` (the user name is ignored).
pub fn secret_from_authorization(header: &str) -> Option<String> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(read: bool, write: bool, db: Option<&str>) -> TokenSpec {
        TokenSpec {
            read,
            write,
            admin: false,
            db: db.map(str::to_owned),
            description: String::new(),
        }
    }

    #[test]
    fn tokens_survive_reopen_and_only_hashes_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::open(dir.path()).unwrap();
        let admin = t
            .ensure_admin(None)
            .unwrap()
            .expect("first start creates admin");
        assert!(t.ensure_admin(None).unwrap().is_none());
        let (reader, info) = t.create(spec(true, false, Some("fleet"))).unwrap();
        let text = std::fs::read_to_string(dir.path().join("auth/tokens.json")).unwrap();
        assert!(!text.contains(&admin) && !text.contains(&reader));

        let t = Tokens::open(dir.path()).unwrap();
        let g = t.authenticate(Some(&admin)).unwrap();
        assert!(g.allows(Action::Admin, None) && g.allows(Action::Write, Some("x")));
        let g = t.authenticate(Some(&reader)).unwrap();
        assert!(g.allows(Action::Read, Some("fleet")));
        assert!(!g.allows(Action::Read, Some("other")));
        assert!(!g.allows(Action::Write, Some("fleet")));
        assert!(!g.allows(Action::Admin, None));
        assert!(g.sees("fleet") && !g.sees("other"));

        assert!(t.revoke(&info.id).unwrap());
        assert!(!t.revoke(&info.id).unwrap());
        let t = Tokens::open(dir.path()).unwrap();
        assert!(matches!(
            t.authenticate(Some(&reader)),
            Err(AuthError::Invalid)
        ));
        assert_eq!(t.list().len(), 2);
    }

    #[test]
    fn missing_wrong_and_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::open(dir.path()).unwrap();
        t.ensure_admin(Some("annals_test_admin_secret")).unwrap();
        assert!(matches!(t.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(t.authenticate(Some("")), Err(AuthError::Missing)));
        assert!(matches!(
            t.authenticate(Some("nope")),
            Err(AuthError::Invalid)
        ));
        assert!(t.authenticate(Some("annals_test_admin_secret")).is_ok());
        let off = Tokens::disabled();
        assert_eq!(off.authenticate(None).unwrap(), Grant::all());
        assert!(off.create(spec(true, false, None)).is_err());
    }

    #[test]
    fn bad_specs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::open(dir.path()).unwrap();
        assert!(t.create(spec(false, false, None)).is_err());
        assert!(t.create(spec(true, false, Some(""))).is_err());
        let mut s = spec(false, false, Some("db"));
        s.admin = true;
        assert!(t.create(s).is_err());
        assert!(t.is_empty());
    }

    #[test]
    fn authorization_header_forms() {
        assert_eq!(
            secret_from_authorization("Bearer abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            secret_from_authorization("Token abc").as_deref(),
            Some("abc")
        );
        // "user:abc"
        assert_eq!(
            secret_from_authorization("Basic dXNlcjphYmM=").as_deref(),
            Some("abc")
        );
        assert_eq!(secret_from_authorization("Digest x"), None);
        assert_eq!(secret_from_authorization("Bearer"), None);
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        std::fs::write(dir.path().join("auth/tokens.json"), b"{garbage").unwrap();
        assert!(matches!(
            Tokens::open(dir.path()),
            Err(AuthError::Corrupt { .. })
        ));
    }
}

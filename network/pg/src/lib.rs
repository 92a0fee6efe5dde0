//! annals over the PostgreSQL wire protocol (v3, via `pgwire`): `psql`, psycopg, Grafana's
//! PostgreSQL data source and other PG clients run read-only SQL against the same DataFusion
//! engine as `POST /api/v3/query`.
//!
//! What it owns:
//! - the listener (`annals serve --pg-addr HOST:PORT`), a bounded number of connections
//!   ([`PgConfig::max_connections`]; one more gets `FATAL 53300`), optional TLS (rustls, only
//!   when a certificate and key are given; otherwise an `SSLRequest` is answered `N`);
//! - the startup: the `database` of the startup packet is the annals database
//!   (`psql -d fleet`); with a token store the client is asked for a cleartext password, which
//!   is an annals token (the user name is only recorded); the token must allow reading that
//!   database. A wrong password gets `FATAL 28P01`, a token without read access `FATAL 42501`,
//!   an unknown database `FATAL 3D000`, and the connection is closed. Under `--without-auth`
//!   any user is accepted and no password is asked;
//! - simple and extended query protocol. Every statement that reads runs through
//!   [`annals_query::QueryService::run`] in the connection's own session, so the query timeout,
//!   the shared memory pool and `system.queries` apply as over HTTP. Rows are streamed batch by
//!   batch, never collected. Extended-protocol parameters are bound as SQL literals before the
//!   statement is handed to the service;
//! - a `pg_catalog` (from `datafusion-pg-catalog`, which also rewrites the PostgreSQL-only
//!   syntax psql and Grafana send) so `\dt`, `\d table` and Grafana's table and column pickers
//!   work; `current_database()`, `current_schema()`, `current_setting()` and `version()`
//!   answer for the connection's database;
//! - `SET`/`SHOW` of session parameters, `BEGIN`/`COMMIT`/`ROLLBACK` (no-ops: every read sees
//!   what is durable when it starts).
//!
//! Types: timestamps without zone → `timestamp`, strings and dictionary strings → `text`,
//! `f64` → `float8`, `i64` → `int8`, `u64` → `numeric` (no PG integer holds all of it), bool →
//! `bool`, binary → `bytea`. `_tx_id` is a string column (64 hex digits, as over HTTP and in
//! proofs), so it is `text`.
//!
//! What it must never do: change the ledger. Writes and DDL (`INSERT`, `UPDATE`, `DELETE`,
//! `COPY`, `CREATE`, `DROP`, `ALTER`, ...) are refused with SQLSTATE 25006 before anything is
//! planned, and the query service refuses DDL/DML plans as a second line. It never shows a
//! database the token may not read.

mod query;
mod session;
mod startup;

use std::sync::Arc;

use annals_auth::Tokens;
use annals_query::QueryService;
use pgwire::api::PgWireServerHandlers;
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use query::ConnHandlers;

/// Default for [`PgConfig::max_connections`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 64;
/// Largest certificate or key file read for TLS.
const TLS_FILE_BYTES_MAX: u64 = 1 << 20;

/// Errors of the PostgreSQL listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    #[error("PostgreSQL TLS: cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
}

/// Settings of the PostgreSQL listener.
#[derive(Clone)]
pub struct PgConfig {
    /// Connections served at once; one more is refused with `FATAL 53300`.
    pub max_connections: usize,
    /// `None`: no TLS, `SSLRequest` is answered `N`.
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            max_connections: CONNECTIONS_MAX_DEFAULT,
            tls: None,
        }
    }
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn tls_acceptor(cert_path: &str, key_path: &str) -> Result<TlsAcceptor, PgError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read_small(cert_path)?;
    let key_pem = read_small(key_path)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgError::Tls(format!("{cert_path}: {e}")))?;
    if certs.is_empty() {
        return Err(PgError::Tls(format!(
            "{cert_path}: no certificate in the file"
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| PgError::Tls(format!("{key_path}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| PgError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_small(path: &str) -> Result<Vec<u8>, PgError> {
    use std::io::Read;
    let err = |source| PgError::TlsFile {
        path: path.to_string(),
        source,
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(TLS_FILE_BYTES_MAX)
        .read_to_end(&mut buf)
        .map_err(err)?;
    Ok(buf)
}

/// Serves PostgreSQL clients on `listener` until the future is dropped (dropping it closes
/// every open connection too).
pub async fn serve(
    listener: TcpListener,
    service: Arc<QueryService>,
    tokens: Arc<Tokens>,
    cfg: PgConfig,
) {
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let shared = Arc::new(query::Shared {
        service,
        tokens,
        max_connections: cfg.max_connections,
    });
    let mut conns = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, tls = cfg.tls.is_some(), max_connections = cfg.max_connections, "PostgreSQL wire listening");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, do not spin.
                        warn!(error = %e, "PostgreSQL accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                // Without a permit the connection still gets a startup, which answers FATAL
                // 53300 ("too many connections") as PostgreSQL does.
                let permit = limit.clone().try_acquire_owned().ok();
                let handlers = ConnHandlers::new(shared.clone(), permit);
                let tls = cfg.tls.clone();
                conns.spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                        debug!(%peer, error = %e, "PostgreSQL connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Compile-time check that the handler bundle fits pgwire.
#[allow(dead_code)]
fn _handlers_fit(h: ConnHandlers) -> impl PgWireServerHandlers {
    h
}

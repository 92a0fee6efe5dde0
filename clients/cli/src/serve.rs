//! `annals serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use annals_auth::Tokens;
use annals_engine::{Engine, EngineConfig, SystemClock};
use annals_http::HttpConfig;
use annals_query::{QueryConfig, QueryService};
use clap::Args;
use tracing::{error, info, warn};

use crate::malloc::Tuning;
use crate::{duration, size};

/// Flags of `annals serve`; each has an `ANNALS_*` environment variable.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "annals-data")]
    data_dir: PathBuf,
    /// HTTP listen address (write API, SQL, health, metrics).
    #[arg(long, env = "ANNALS_HTTP_ADDR", default_value = "127.0.0.1:8181")]
    http_addr: SocketAddr,
    /// Ingest shards (fixed when the data directory is created).
    #[arg(long, env = "ANNALS_SHARDS", default_value_t = 2)]
    shards: usize,
    /// Seal a block at this many rows.
    #[arg(long, env = "ANNALS_BLOCK_ROWS", default_value_t = 16_384)]
    block_rows: usize,
    /// Seal a block when its oldest row is this old.
    #[arg(long, env = "ANNALS_BLOCK_AGE", default_value = "10s", value_parser = duration::parse)]
    block_age: Duration,
    /// Interval between checkpoints.
    #[arg(long, env = "ANNALS_CHECKPOINT_INTERVAL", default_value = "5s", value_parser = duration::parse)]
    checkpoint_interval: Duration,
    /// Finish a block file at this many rows.
    #[arg(long, env = "ANNALS_FILE_ROWS", default_value_t = 262_144)]
    file_rows: u64,
    /// Finish a block file after this long.
    #[arg(long, env = "ANNALS_FILE_AGE", default_value = "30s", value_parser = duration::parse)]
    file_age: Duration,
    /// Requests queued per shard before writes wait, then get 503.
    #[arg(long, env = "ANNALS_QUEUE_DEPTH", default_value_t = 64)]
    queue_depth: usize,
    /// Rows held in open blocks per shard before the largest is sealed early.
    #[arg(long, env = "ANNALS_MEMTABLE_ROWS", default_value_t = 1_000_000)]
    memtable_rows: usize,
    /// Rows per series the last-value cache keeps (`last_values('table')` in SQL).
    #[arg(long, env = "ANNALS_LAST_VALUES_COUNT", default_value_t = 1)]
    last_values_count: usize,
    /// Largest request body in bytes (also after gzip decompression).
    #[arg(long, env = "ANNALS_MAX_BODY_BYTES", default_value_t = annals_http::BODY_BYTES_MAX_DEFAULT)]
    max_body_bytes: usize,
    /// How long a write waits for queue space before 503.
    #[arg(long, env = "ANNALS_WRITE_WAIT", default_value = "5s", value_parser = duration::parse)]
    write_wait: Duration,
    /// A SQL query running longer is cancelled (HTTP 504).
    #[arg(long, env = "ANNALS_QUERY_TIMEOUT", default_value = "300s", value_parser = duration::parse)]
    query_timeout: Duration,
    /// Memory all running SQL queries may hold together, e.g. 2GiB, 512MiB (HTTP 503 beyond).
    #[arg(long, env = "ANNALS_QUERY_MEMORY", default_value = "2GiB", value_parser = size::parse)]
    query_memory: usize,
    /// Largest `format=pretty` result, built in memory (e.g. 16MiB; larger ones are refused).
    #[arg(long, env = "ANNALS_QUERY_PRETTY_MAX", default_value = "16MiB", value_parser = size::parse)]
    query_pretty_max: usize,
    /// Do not fsync: acknowledged writes can be lost on power failure. Benchmarks only.
    #[arg(long, env = "ANNALS_UNSAFE_NO_SYNC")]
    unsafe_no_sync: bool,
    /// Accept every request without a token (local play and tests only).
    #[arg(long, env = "ANNALS_WITHOUT_AUTH")]
    without_auth: bool,
    /// Secret of the admin token created on first start (default: a random one, printed once).
    #[arg(long, env = "ANNALS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// PostgreSQL wire listen address (read-only SQL for psql, Grafana...); off unless given.
    #[arg(long, env = "ANNALS_PG_ADDR")]
    pg_addr: Option<SocketAddr>,
    /// Most PostgreSQL connections at once (one more gets FATAL 53300).
    #[arg(long, env = "ANNALS_PG_MAX_CONNECTIONS", default_value_t = annals_pg::CONNECTIONS_MAX_DEFAULT)]
    pg_max_connections: usize,
    /// PEM certificate chain for PostgreSQL TLS (with --pg-tls-key; without both: no TLS).
    #[arg(long, env = "ANNALS_PG_TLS_CERT", requires = "pg_tls_key")]
    pg_tls_cert: Option<PathBuf>,
    /// PEM private key for PostgreSQL TLS.
    #[arg(long, env = "ANNALS_PG_TLS_KEY", requires = "pg_tls_cert")]
    pg_tls_key: Option<PathBuf>,
    /// MQTT 3.1.1/5 ingest listen address (PUBLISH to annals/<db>/write); off unless given.
    #[arg(long, env = "ANNALS_MQTT_ADDR")]
    mqtt_addr: Option<SocketAddr>,
    /// Arrow Flight SQL (gRPC) listen address; Flight is served on the HTTP port as well.
    #[arg(long, env = "ANNALS_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
}

impl ServeArgs {
    fn engine_config(&self) -> EngineConfig {
        let mut c = EngineConfig::new(&self.data_dir);
        c.shards = self.shards;
        c.block_rows = self.block_rows;
        c.block_age = self.block_age;
        c.checkpoint_interval = self.checkpoint_interval;
        c.file_rows = self.file_rows;
        c.file_age = self.file_age;
        c.queue_depth = self.queue_depth;
        c.memtable_rows = self.memtable_rows;
        c.last_values_count = self.last_values_count;
        c.unsafe_no_sync = self.unsafe_no_sync;
        c
    }
}

pub(crate) fn run(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ANNALS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match crate::malloc::tune_for_server() {
        Tuning::Set | Tuning::Unsupported => {}
        Tuning::Operator => info!("GLIBC_TUNABLES sets malloc: allocator left as configured"),
        Tuning::Refused => warn!("glibc refused the allocator thresholds; running with its own"),
    }
    let cfg = args.engine_config();
    if !(1024..=1 << 30).contains(&args.max_body_bytes) {
        eprintln!(
            "annals serve: --max-body-bytes must be between 1024 and 1073741824, got {}",
            args.max_body_bytes
        );
        return ExitCode::from(2);
    }
    if let Err(e) = cfg.validate() {
        eprintln!("annals serve: {e}");
        return ExitCode::from(2);
    }
    let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(h) => Some(h),
        Err(e) => {
            error!(error = %e, "metrics disabled");
            None
        }
    };
    let engine = match Engine::open(cfg, Arc::new(SystemClock)) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("annals serve: cannot open {}: {e}", args.data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let auth = match open_auth(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("annals serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    if engine.created_key() {
        info!(node_key = %hex::encode(engine.public_key()), "created a new node key");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("annals-io")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("annals serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.query_timeout.is_zero() {
        eprintln!("annals serve: --query-timeout must be more than 0");
        return ExitCode::from(2);
    }
    let query_cfg = QueryConfig {
        memory_bytes: args.query_memory,
        timeout: args.query_timeout,
        ..QueryConfig::default()
    };
    let query = match QueryService::new(engine.clone(), query_cfg) {
        Ok(q) => Arc::new(q),
        Err(e) => {
            eprintln!("annals serve: cannot start the SQL engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The last-value cache starts cold for tables that already have rows; seed it in the
    // background so "where is every device now" queries need no scan (`/health` lists the
    // tables still cold).
    let warm = query.clone();
    rt.spawn(async move {
        let started = std::time::Instant::now();
        let (tables, failed) = warm.warm_last_values().await;
        if tables > 0 {
            info!(
                tables,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "last-value cache seeded"
            );
        }
        for (table, e) in failed {
            error!(%table, error = %e, "last-value cache not seeded at start; the first last_values() query on the table seeds it");
        }
    });
    let http_cfg = HttpConfig {
        max_body_bytes: args.max_body_bytes,
        write_wait_max: args.write_wait,
        query_pretty_bytes_max: args.query_pretty_max,
        auth: auth.clone(),
        ..HttpConfig::default()
    };
    let pg_cfg = match pg_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("annals serve: {e}");
            return ExitCode::from(2);
        }
    };
    let flight_cfg = annals_flight::FlightConfig {
        write_wait_max: args.write_wait,
        ..Default::default()
    };
    let flight =
        annals_flight::AnnalsFlight::new(engine.clone(), query.clone(), auth.clone(), flight_cfg);
    let pg_query = query.clone();
    let pg_auth = auth.clone();
    let result = rt.block_on(async {
        // Dropped (closing its listener and connections) when this block ends at shutdown.
        let _pg = match args.pg_addr {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (PostgreSQL): {e}"))?;
                let local = l.local_addr().map_err(|e| e.to_string())?;
                println!("annals PostgreSQL wire on {local}");
                Some(AbortOnDrop(tokio::spawn(annals_pg::serve(l, pg_query, pg_auth, pg_cfg))))
            }
            None => None,
        };
        let mqtt = match args.mqtt_addr {
            Some(addr) => {
                let mqtt_cfg = annals_mqtt::MqttConfig { write_wait_max: args.write_wait, ..Default::default() };
                let m = annals_mqtt::MqttServer::bind(addr, engine.clone(), auth.clone(), mqtt_cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("annals MQTT on {}", m.local_addr().map_err(|e| e.to_string())?);
                Some(m.spawn())
            }
            None => None,
        };
        // Dropped (stopping the listener) when this block ends at shutdown.
        let _grpc = match args.grpc_addr {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (gRPC): {e}"))?;
                println!("annals Flight SQL (gRPC) on {}", l.local_addr().map_err(|e| e.to_string())?);
                let f = flight.clone();
                Some(AbortOnDrop(tokio::spawn(async move {
                    // The same frames as on the HTTP port.
                    let frame = annals_http::listener::H2_MAX_FRAME_BYTES;
                    if let Err(e) = f.serve(l, frame, shutdown_signal()).await {
                        error!(error = %e, "gRPC listener stopped");
                    }
                })))
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(args.http_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.http_addr))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // One line on stdout that scripts can wait for.
        println!("annals listening on http://{addr} (data dir {})", args.data_dir.display());
        info!(%addr, data_dir = %args.data_dir.display(), node_key = %hex::encode(engine.public_key()), "annals serving");
        let app = annals_http::router(engine.clone(), Some(query), http_cfg, metrics);
        // gRPC (Flight SQL) on the HTTP port too, as InfluxDB 3 clients expect (HTTP/2, no TLS).
        let app = app.merge(flight.into_router());
        // Each request carries its connection's address (the write API limits bad device
        // signatures per client); HTTP/2 takes large frames (Flight `DoPut` batches).
        annals_http::listener::serve(listener, app, shutdown_signal()).await;
        // MQTT connections finish their writes and acknowledgements before the engine stops.
        if let Some(m) = mqtt {
            m.shutdown().await;
        }
        Ok::<(), String>(())
    });
    info!("shutting down: sealing open blocks and finishing block files");
    let e2 = engine.clone();
    e2.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("annals serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The PostgreSQL listener's settings (TLS only with both --pg-tls-cert and --pg-tls-key).
fn pg_config(args: &ServeArgs) -> Result<annals_pg::PgConfig, String> {
    if args.pg_max_connections == 0 {
        return Err("--pg-max-connections must be more than 0".to_string());
    }
    let tls = match (&args.pg_tls_cert, &args.pg_tls_key) {
        (Some(cert), Some(key)) => Some(
            annals_pg::tls_acceptor(&cert.to_string_lossy(), &key.to_string_lossy())
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    Ok(annals_pg::PgConfig {
        max_connections: args.pg_max_connections,
        tls,
    })
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The token store, or a disabled one with `--without-auth`. On a first start with auth it
/// creates the admin token and prints its secret once (stdout, for scripts; never logged).
fn open_auth(args: &ServeArgs) -> Result<Arc<Tokens>, String> {
    if args.without_auth {
        info!("authentication disabled (--without-auth): every request is accepted");
        return Ok(Arc::new(Tokens::disabled()));
    }
    let tokens = Tokens::open(&args.data_dir).map_err(|e| e.to_string())?;
    if let Some(secret) = tokens
        .ensure_admin(args.admin_token.as_deref())
        .map_err(|e| e.to_string())?
    {
        if args.admin_token.is_none() {
            println!("annals admin token (shown once, keep it): {secret}");
        } else {
            println!("annals admin token created from --admin-token");
        }
    }
    Ok(Arc::new(tokens))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

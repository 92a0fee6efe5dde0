//! # annals-mqtt: MQTT ingest listener
//!
//! Devices and gateways PUBLISH line protocol (or a small JSON form) to annals over MQTT 3.1.1
//! or 5.0 on `annals serve --mqtt-addr HOST:PORT` (plain TCP; off unless the flag is given).
//! annals is an ingest endpoint, not a broker: nothing is forwarded to subscribers.
//!
//! ## Topics
//! - `annals/<db>/write`: line protocol, timestamps in nanoseconds;
//! - `annals/<db>/write/<precision>`: line protocol, precision `ns`, `us`, `ms`, `s` or `auto`;
//! - `annals/<db>/json/<table>`: `{"time": <ns>, "tags": {"k": "v"}, "fields": {"f": 1.5}}` or
//!   an array of such objects; `time` is optional (arrival time), JSON numbers are float
//!   fields, strings string fields, booleans boolean fields, tag values strings.
//!
//! Any other topic is refused (logged, counted). SUBSCRIBE gets a SUBACK that refuses every
//! filter (3.1.1 `0x80`, 5.0 `0x83`); UNSUBSCRIBE an UNSUBACK. RETAIN is ignored.
//!
//! ## Delivery
//! - QoS 0: the message is written; nothing is sent back.
//! - QoS 1: PUBACK goes out only once every row of the message is durable (fsynced), in the
//!   order the PUBLISHes arrived. Up to `inflight_max` (64) messages per connection are
//!   written concurrently (announced as Receive Maximum to 5.0 clients); beyond that, and
//!   while the ingest queues are full, annals stops reading the connection (TCP back-pressure).
//!   A queue still full after `write_wait_max` drops a QoS 0 message (counted) and closes a
//!   QoS 1 connection without acknowledging (the client resends).
//! - QoS 2 is not supported: 5.0 clients are told so in CONNACK (Maximum QoS 1) and a QoS 2
//!   PUBLISH closes the connection (5.0: DISCONNECT `0x9B`), as does one on 3.1.1.
//! - Duplicates: a QoS 1 PUBLISH with DUP=1 whose client id, packet id, topic and payload
//!   match a message already written (or being written) is acknowledged without being
//!   written again. The session (by client id) keeps the last 1024 packet ids across
//!   reconnects (until a clean-session/clean-start CONNECT, or until the session is evicted:
//!   at most `sessions_max` sessions, the least recently used idle one goes first). QoS 1
//!   messages of a client with a non-empty id are also written with an engine idempotency
//!   key (`mqtt`, client id, packet id, content hash) whose WAL record makes the same check
//!   work after a crash and restart, until the WAL is retired by a clean shutdown.
//!
//! ## Bad input
//! A payload that is not valid line protocol (or JSON form), a topic annals does not know, a
//! database the token may not write, or a table whose policy demands signed writes: the
//! message is dropped, logged (warn, rate limited) and counted in
//! `annals_mqtt_messages_total{outcome=...}`; the connection stays open. QoS 1 still gets a
//! PUBACK (3.1.1 has no negative acknowledgement); 5.0 clients get reason `0x99` payload
//! format invalid, `0x90` topic name invalid or `0x87` not authorized. A packet that breaks
//! the protocol (undecodable, larger than `packet_bytes_max`, unexpected type) closes that
//! connection only (5.0: DISCONNECT with the reason first).
//!
//! ## Authentication
//! The CONNECT password is an annals token (when a client can send only a user name, the user
//! name is used as the token); the user name is otherwise free. A missing or invalid token gets
//! CONNACK `0x04` (3.1.1) / `0x86` (5.0), a token without write permission `0x05` / `0x87`;
//! the connection is then closed. Each PUBLISH is checked again (a revoked token stops
//! writing at once) for Write on the topic's database. `--without-auth` accepts everyone.
//!
//! ## Limits
//! `packet_bytes_max` (1 MiB) per packet, `connections_max` (1024) connections (more are
//! closed at accept), `inflight_max` (64) messages in flight per connection, client ids up to
//! 256 bytes, CONNECT within 10 s of accepting, keep-alive: a client silent for 1.5 times its
//! keep-alive is disconnected (never while annals itself stopped reading it).
//!
//! ## Codec
//! Packets are decoded and encoded by `mqtt-codec-kit` (maintained, both 3.1.1 and 5.0, server
//! and client packets, no runtime of its own). It has no size limit, so this crate cuts each
//! packet out of the stream itself ([`codec`](crate::codec)), refusing an oversized one from
//! its fixed header before buffering its body, and hands the codec exactly one packet.
//! `rumqttd`'s codec is tied to its broker; `mqttrs` and `mqtt-protocol` speak only 3.1.1.
//!
//! ## Must never
//! Acknowledge a QoS 1 message before its rows are durable; write a recognised duplicate
//! twice; let one client's bad payload or protocol error affect another connection or stored
//! data; buffer without bound; log a token.

mod codec;
mod conn;
mod ingest;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_auth::Tokens;
use annals_engine::Engine;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::session::Sessions;

/// Largest MQTT packet accepted by default (fixed header included).
pub const PACKET_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Connections served at once by default.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// QoS 0/1 messages written concurrently per connection by default (5.0 Receive Maximum).
pub const INFLIGHT_MAX_DEFAULT: u16 = 64;
/// Client sessions (duplicate detection state) kept by default.
pub const SESSIONS_MAX_DEFAULT: usize = 10_000;
/// Longest client id accepted.
pub const CLIENT_ID_BYTES_MAX: usize = 256;
/// Time a new connection has to send CONNECT.
const CONNECT_WAIT_MAX: Duration = Duration::from_secs(10);
/// Time connections get at shutdown to finish their writes and send their acknowledgements.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(10);
/// Time a send to a client may stall before the connection is closed.
const SEND_WAIT_MAX: Duration = Duration::from_secs(30);
/// Warnings about bad messages per second (the rest are counted only).
const WARNINGS_PER_SECOND_MAX: u32 = 10;

/// Settings of the listener.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Largest packet, fixed header included (at least 64 bytes, at most 256 MiB).
    pub packet_bytes_max: usize,
    pub connections_max: usize,
    /// Messages in flight per connection (1..=65535).
    pub inflight_max: u16,
    pub sessions_max: usize,
    /// How long a message waits for ingest queue space.
    pub write_wait_max: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            packet_bytes_max: PACKET_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            inflight_max: INFLIGHT_MAX_DEFAULT,
            sessions_max: SESSIONS_MAX_DEFAULT,
            write_wait_max: Duration::from_secs(5),
        }
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid MQTT setting: {0}")]
    Config(String),
}

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("packet of {bytes} bytes exceeds the maximum of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("unsupported protocol level {0} (annals speaks MQTT 3.1.1 and 5.0)")]
    Version(u8),
}

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    pub(crate) auth: Arc<Tokens>,
    pub(crate) cfg: MqttConfig,
    pub(crate) sessions: Sessions,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) warnings: WarnLimit,
}

/// Lets at most [`WARNINGS_PER_SECOND_MAX`] warnings through per second.
#[derive(Debug)]
pub(crate) struct WarnLimit {
    window: Mutex<(Instant, u32)>,
    suppressed: AtomicU64,
}

impl WarnLimit {
    fn new() -> WarnLimit {
        WarnLimit {
            window: Mutex::new((Instant::now(), 0)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log now; returns how many warnings were suppressed since the last one.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut w = self.window.lock();
        let now = Instant::now();
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        if w.1 < WARNINGS_PER_SECOND_MAX {
            w.1 += 1;
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A bound MQTT listener, not yet accepting.
#[derive(Debug)]
pub struct MqttServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
}

impl MqttServer {
    /// Binds `addr`; connections are accepted once [`MqttServer::spawn`] is called.
    pub async fn bind(
        addr: SocketAddr,
        engine: Arc<Engine>,
        auth: Arc<Tokens>,
        cfg: MqttConfig,
    ) -> Result<MqttServer, MqttError> {
        if !(64..=256 << 20).contains(&cfg.packet_bytes_max) {
            return Err(MqttError::Config(format!(
                "packet_bytes_max must be between 64 and 268435456, got {}",
                cfg.packet_bytes_max
            )));
        }
        if cfg.inflight_max == 0 || cfg.connections_max == 0 || cfg.sessions_max == 0 {
            return Err(MqttError::Config(
                "inflight_max, connections_max and sessions_max must be more than 0".into(),
            ));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MqttError::Bind { addr, source })?;
        let (stop_tx, stop) = watch::channel(false);
        let sessions = Sessions::new(cfg.sessions_max);
        Ok(MqttServer {
            listener,
            shared: Arc::new(Shared {
                engine,
                auth,
                cfg,
                sessions,
                stop,
                warnings: WarnLimit::new(),
            }),
            stop_tx,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts accepting connections on the current tokio runtime.
    pub fn spawn(self) -> MqttHandle {
        let MqttServer {
            listener,
            shared,
            stop_tx,
        } = self;
        let task = tokio::spawn(accept_loop(listener, shared));
        MqttHandle { stop_tx, task }
    }
}

/// A running listener.
#[derive(Debug)]
pub struct MqttHandle {
    stop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttHandle {
    /// Stops accepting, lets every connection finish its writes and acknowledgements (at
    /// most 10 s), then closes them.
    pub async fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.cfg.connections_max));
    let mut conns = JoinSet::new();
    let mut stop = shared.stop.clone();
    let mut next_id: u64 = 0;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "MQTT listener accepting");
    }
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, do not spin.
                        warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    metrics::counter!("annals_mqtt_connections_refused_total", "reason" => "limit").increment(1);
                    if shared.warnings.allow().is_some() {
                        warn!(%peer, max = shared.cfg.connections_max, "MQTT connection refused: too many connections");
                    }
                    drop(stream);
                    continue;
                };
                next_id += 1;
                let (id, shared) = (next_id, shared.clone());
                conns.spawn(async move {
                    conn::run(shared, stream, peer, id).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_WAIT_MAX, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = conns.len(),
            "MQTT connections did not finish in time; closing them"
        );
        conns.shutdown().await;
    }
}

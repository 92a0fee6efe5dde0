//! One client connection: CONNECT and authentication, then a loop that reads packets while
//! fewer than `inflight_max` messages are being written, hands each PUBLISH to the engine,
//! and sends each PUBACK once that message is durable, in arrival order.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use annals_auth::Action;
use annals_engine::prepare::Prepared;
use annals_engine::{PendingWrite, PrepareOptions, Run, WriteError};
use annals_lp::ParseOptions;
use bytes::BytesMut;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::codec::{
    self, AckReason, Announce, CloseReason, Frame, Packet, Publish, Refusal, Version,
};
use crate::ingest::{self, Form};
use crate::session::{Seen, Session};
use crate::{ProtocolError, Shared, CLIENT_ID_BYTES_MAX, CONNECT_WAIT_MAX, SEND_WAIT_MAX};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// First and longest pause between tries when the ingest queues are full.
const RETRY_FIRST: Duration = Duration::from_micros(500);
const RETRY_MAX: Duration = Duration::from_millis(50);

/// `Some((packet id, reason))`: send a PUBACK.
type Ack = Option<(u16, AckReason)>;
type AckFuture = Pin<Box<dyn Future<Output = Result<Ack, CloseReason>> + Send>>;

/// Serves one connection to its end.
pub(crate) async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, id: u64) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut c = Conn {
        shared,
        peer,
        id,
        rd,
        wr,
        rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
        out: Vec::new(),
        version: Version::V4,
    };
    metrics::gauge!("annals_mqtt_connections").increment(1.0);
    match c.handshake().await {
        Ok(Some(client)) => {
            metrics::counter!("annals_mqtt_connections_total").increment(1);
            debug!(%peer, client = %client.id, version = ?c.version, "MQTT client connected");
            let end = c.serve(&client).await;
            if !client.ephemeral {
                client.session.detach(id);
            }
            match end {
                End::Client => debug!(%peer, client = %client.id, "MQTT client disconnected"),
                End::Server(reason, why) => {
                    if matches!(reason, CloseReason::ShuttingDown | CloseReason::TakenOver) {
                        debug!(%peer, client = %client.id, ?reason, "MQTT connection closed");
                    } else if c.shared.warnings.allow().is_some() {
                        warn!(%peer, client = %client.id, ?reason, error = %why, "MQTT connection closed");
                    }
                    c.close(reason).await;
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            metrics::counter!("annals_mqtt_connections_refused_total", "reason" => "protocol")
                .increment(1);
            if c.shared.warnings.allow().is_some() {
                warn!(%peer, error = %e, "MQTT connection refused");
            }
        }
    }
    metrics::gauge!("annals_mqtt_connections").decrement(1.0);
}

/// How a connection ended.
enum End {
    /// The client disconnected or closed the socket.
    Client,
    /// The server closes it, for this reason.
    Server(CloseReason, String),
}

fn end(reason: CloseReason, why: impl Into<String>) -> End {
    End::Server(reason, why.into())
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    id: u64,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    rbuf: BytesMut,
    /// Packets to send (flushed before waiting for anything).
    out: Vec<u8>,
    version: Version,
}

/// The connected client.
struct Client {
    id: String,
    /// No client id: the session lives as long as the connection, and no idempotency key.
    ephemeral: bool,
    secret: Option<String>,
    session: Arc<Session>,
    kick: Arc<Notify>,
    keep_alive: Option<Duration>,
}

/// A message waiting for ingest queue space; nothing is read meanwhile.
struct Waiting {
    prepared: Prepared,
    job: Job,
    deadline: Instant,
    backoff: Duration,
    retry_at: Instant,
}

/// What a submitted message still needs.
struct Job {
    /// QoS 1 packet id.
    pkid: Option<u16>,
    hash: u64,
    key: Option<String>,
    default_time_ns: i64,
    /// Parts already durable before a restart (from the WAL's request records).
    done: Vec<Option<Vec<Vec<Run>>>>,
    recovered: bool,
}

enum Event {
    Kick,
    /// The stop signal changed (`true`) or its sender is gone (`false`).
    Stop(bool),
    Acked(Result<Ack, CloseReason>),
    Retry,
    Read(std::io::Result<usize>),
    KeepAlive,
}

impl Conn {
    async fn read_frame(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if let Some(f) = codec::take_frame(&mut self.rbuf, self.shared.cfg.packet_bytes_max)
                .map_err(|e| e.to_string())?
            {
                return Ok(Some(f));
            }
            self.rbuf.reserve(READ_CHUNK_BYTES);
            match self.rd.read_buf(&mut self.rbuf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(SEND_WAIT_MAX, self.wr.write_all(&self.out)).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the client read nothing for {} s",
                SEND_WAIT_MAX.as_secs()
            )),
        }
    }

    /// Sends DISCONNECT (5.0) and closes the socket.
    async fn close(&mut self, reason: CloseReason) {
        self.out.clear();
        codec::disconnect(self.version, reason, &mut self.out);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.wr.write_all(&self.out).await;
            let _ = self.wr.shutdown().await;
        })
        .await;
    }

    async fn refuse(&mut self, refusal: Refusal, why: &str) -> Result<Option<Client>, String> {
        metrics::counter!("annals_mqtt_connections_refused_total", "reason" => match refusal {
            Refusal::Version => "version",
            Refusal::ClientId => "client_id",
            Refusal::BadCredentials => "credentials",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::Busy => "busy",
        })
        .increment(1);
        if self.shared.warnings.allow().is_some() {
            warn!(peer = %self.peer, ?refusal, reason = why, "MQTT CONNECT refused");
        }
        self.out.clear();
        codec::connack(self.version, Err(refusal), false, None, &mut self.out);
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
        Ok(None)
    }

    /// Reads CONNECT, authenticates, answers CONNACK. `Ok(None)`: refused (CONNACK sent).
    async fn handshake(&mut self) -> Result<Option<Client>, String> {
        let frame = match tokio::time::timeout(CONNECT_WAIT_MAX, self.read_frame()).await {
            Err(_) => {
                return Err(format!(
                    "no CONNECT within {} s",
                    CONNECT_WAIT_MAX.as_secs()
                ))
            }
            Ok(r) => match r? {
                Some(f) => f,
                None => return Err("closed before CONNECT".into()),
            },
        };
        self.version = match codec::connect_version(&frame) {
            Ok(v) => v,
            Err(ProtocolError::Version(level)) => {
                return self
                    .refuse(Refusal::Version, &format!("protocol level {level}"))
                    .await
            }
            Err(e) => return Err(e.to_string()),
        };
        let c = match codec::decode(self.version, &frame).map_err(|e| e.to_string())? {
            Packet::Connect(c) => c,
            other => return Err(format!("expected CONNECT, got {other:?}")),
        };
        if c.client_id.len() > CLIENT_ID_BYTES_MAX {
            return self
                .refuse(
                    Refusal::ClientId,
                    &format!("client id longer than {CLIENT_ID_BYTES_MAX} bytes"),
                )
                .await;
        }
        if c.client_id.is_empty() && !c.clean && self.version == Version::V4 {
            return self
                .refuse(Refusal::ClientId, "empty client id without clean session")
                .await;
        }
        // The password is the token; a client that can only send a user name sends it there.
        let secret = c.password.clone().or_else(|| c.username.clone());
        match self.shared.auth.authenticate(secret.as_deref()) {
            Err(e) => return self.refuse(Refusal::BadCredentials, &e.to_string()).await,
            Ok(g) if !g.allows(Action::Write, None) => {
                return self
                    .refuse(Refusal::NotAuthorized, "the token may not write")
                    .await
            }
            Ok(_) => {}
        }
        let ephemeral = c.client_id.is_empty();
        let (session, existed) = if ephemeral {
            (Arc::new(Session::new()), false)
        } else {
            match self.shared.sessions.get(&c.client_id) {
                Some(s) => s,
                None => {
                    return self
                        .refuse(Refusal::Busy, "every session is held by a connected client")
                        .await
                }
            }
        };
        if c.clean {
            session.clear();
        }
        let kick = Arc::new(Notify::new());
        if !ephemeral {
            session.attach(self.id, kick.clone());
        }
        let assigned = (ephemeral && self.version == Version::V5)
            .then(|| format!("annals-{}-{}", self.id, self.shared.engine.clock().now_ns()));
        let announce = Announce {
            receive_max: self.shared.cfg.inflight_max,
            packet_bytes_max: u32::try_from(self.shared.cfg.packet_bytes_max).unwrap_or(u32::MAX),
        };
        codec::connack(
            self.version,
            Ok(announce),
            existed && !c.clean,
            assigned.as_deref(),
            &mut self.out,
        );
        self.flush().await?;
        Ok(Some(Client {
            id: assigned.unwrap_or(c.client_id),
            ephemeral,
            secret,
            session,
            kick,
            keep_alive: (c.keep_alive_s > 0)
                .then(|| Duration::from_millis(u64::from(c.keep_alive_s) * 1500)),
        }))
    }

    async fn serve(&mut self, cl: &Client) -> End {
        let mut inflight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        let mut waiting: Option<Waiting> = None;
        let mut stop = self.shared.stop.clone();
        let inflight_max = usize::from(self.shared.cfg.inflight_max);
        let mut last_rx = Instant::now();
        loop {
            // Packets already buffered, while there is room for more writes.
            while waiting.is_none() && inflight.len() < inflight_max {
                let frame =
                    match codec::take_frame(&mut self.rbuf, self.shared.cfg.packet_bytes_max) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e @ ProtocolError::TooLarge { .. }) => {
                            return end(CloseReason::TooLarge, e.to_string())
                        }
                        Err(e) => return end(CloseReason::Malformed, e.to_string()),
                    };
                let packet = match codec::decode(self.version, &frame) {
                    Ok(p) => p,
                    Err(e) => return end(CloseReason::Malformed, e.to_string()),
                };
                match packet {
                    Packet::Publish(p) => {
                        if let Err(e) = self.publish(cl, p, &mut inflight, &mut waiting) {
                            return e;
                        }
                    }
                    Packet::PingReq => codec::pingresp(self.version, &mut self.out),
                    Packet::Subscribe { pkid, filters } => {
                        metrics::counter!("annals_mqtt_subscribe_refused_total").increment(1);
                        codec::suback_refused(self.version, pkid, filters, &mut self.out);
                    }
                    Packet::Unsubscribe { pkid, filters } => {
                        codec::unsuback(self.version, pkid, filters, &mut self.out)
                    }
                    Packet::Disconnect => {
                        // Writes in flight finish in their own tasks; the client wants no acks.
                        let _ = self.flush().await;
                        return End::Client;
                    }
                    Packet::Connect(_) => {
                        return end(CloseReason::Protocol, "a second CONNECT");
                    }
                    Packet::Unexpected(kind) => {
                        return end(CloseReason::Protocol, format!("unexpected {kind}"));
                    }
                }
            }
            if let Err(e) = self.flush().await {
                return end(CloseReason::WriteFailed, e);
            }
            let reading = waiting.is_none() && inflight.len() < inflight_max;
            if !reading {
                // Silence while annals is not reading is annals' doing, not the client's.
                last_rx = Instant::now();
            }
            let keep_alive_at = cl.keep_alive.map(|k| last_rx + k);
            let retry_at = waiting.as_ref().map(|w| w.retry_at);
            let event = tokio::select! {
                biased;
                _ = cl.kick.notified() => Event::Kick,
                r = stop.changed() => Event::Stop(r.is_ok()),
                Some(r) = inflight.next(), if !inflight.is_empty() => Event::Acked(r),
                _ = sleep_until(retry_at) , if retry_at.is_some() => Event::Retry,
                r = self.rd.read_buf(&mut self.rbuf), if reading => Event::Read(r),
                _ = sleep_until(keep_alive_at), if keep_alive_at.is_some() && reading => Event::KeepAlive,
            };
            match event {
                Event::Kick => {
                    return end(
                        CloseReason::TakenOver,
                        "another connection took the client id",
                    )
                }
                Event::Stop(true) if !*stop.borrow() => {}
                Event::Stop(_) => {
                    // Finish what is in flight and acknowledge it, then go.
                    while let Some(r) = inflight.next().await {
                        match r {
                            Ok(Some((pkid, reason))) => {
                                codec::puback(self.version, pkid, reason, &mut self.out)
                            }
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = self.flush().await;
                    return end(CloseReason::ShuttingDown, "shutting down");
                }
                Event::Acked(Ok(Some((pkid, reason)))) => {
                    codec::puback(self.version, pkid, reason, &mut self.out)
                }
                Event::Acked(Ok(None)) => {}
                Event::Acked(Err(reason)) => {
                    return end(
                        reason,
                        "a message could not be written; it was not acknowledged",
                    )
                }
                Event::Retry => {
                    if let Err(e) = self.retry(cl, &mut inflight, &mut waiting) {
                        return e;
                    }
                }
                Event::Read(Ok(0)) => return End::Client,
                Event::Read(Ok(_)) => {
                    last_rx = Instant::now();
                    self.rbuf.reserve(READ_CHUNK_BYTES);
                }
                Event::Read(Err(_)) => return End::Client,
                Event::KeepAlive => {
                    return end(CloseReason::KeepAlive, "keep-alive expired");
                }
            }
        }
    }

    /// Counts a dropped message and warns (rate limited).
    fn dropped(&self, cl: &Client, outcome: &'static str, topic: &str, why: &str) {
        metrics::counter!("annals_mqtt_messages_total", "outcome" => outcome).increment(1);
        if let Some(suppressed) = self.shared.warnings.allow() {
            warn!(peer = %self.peer, client = %cl.id, topic, outcome, suppressed, error = %why, "MQTT message dropped");
        }
    }

    fn publish(
        &self,
        cl: &Client,
        p: Publish,
        inflight: &mut FuturesOrdered<AckFuture>,
        waiting: &mut Option<Waiting>,
    ) -> Result<(), End> {
        if p.qos > 1 {
            return Err(end(
                CloseReason::QosNotSupported,
                "QoS 2 is not supported (use 0 or 1)",
            ));
        }
        if p.topic_alias.is_some() {
            return Err(end(
                CloseReason::TopicAliasInvalid,
                "topic aliases are not supported (Topic Alias Maximum is 0)",
            ));
        }
        let pkid = if p.qos == 1 { p.pkid } else { None };
        let ack_now = |reason: AckReason| -> Option<AckFuture> {
            pkid.map(|id| ready_ack(Some((id, reason))))
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(p.topic.as_bytes());
        hasher.update(&[0]);
        hasher.update(&p.payload);
        let hash = hasher.digest();
        if let Some(id) = pkid {
            if let Seen::Duplicate(done) = cl.session.seen(id, hash, p.dup) {
                metrics::counter!("annals_mqtt_messages_total", "outcome" => "duplicate")
                    .increment(1);
                inflight.push_back(Box::pin(wait_done(done, id)));
                return Ok(());
            }
        }
        let route = match ingest::route(&p.topic) {
            Ok(r) => r,
            Err(e) => {
                self.dropped(cl, "refused", &p.topic, &e);
                inflight.extend(ack_now(AckReason::TopicNameInvalid));
                return Ok(());
            }
        };
        let grant = self
            .shared
            .auth
            .authenticate(cl.secret.as_deref())
            .map_err(|e| end(CloseReason::NotAuthorized, e.to_string()))?;
        if let Err(e) = grant.check(Action::Write, Some(&route.db)) {
            self.dropped(cl, "forbidden", &p.topic, &e.to_string());
            inflight.extend(ack_now(AckReason::NotAuthorized));
            return Ok(());
        }
        let (body, precision) = match &route.form {
            Form::Lp(precision) => (p.payload, *precision),
            Form::Json { table } => match ingest::json_to_lp(table, &p.payload) {
                Ok(b) => (b, annals_lp::Precision::Nanoseconds),
                Err(e) => {
                    self.dropped(cl, "malformed", &p.topic, &e);
                    inflight.extend(ack_now(AckReason::PayloadFormatInvalid));
                    return Ok(());
                }
            },
        };
        let engine = &self.shared.engine;
        // A QoS 1 message of a named client is written under an idempotency key, so a resend
        // after a crash finds it in the WAL's request records.
        let key = match (pkid, cl.ephemeral) {
            (Some(id), false) => Some(format!("mqtt\0{}\0{id}\0{hash:016x}", cl.id)),
            _ => None,
        };
        let recovered = match (&key, p.dup) {
            (Some(k), true) => engine.recovered_request(k).filter(|r| r.body_hash == hash),
            _ => None,
        };
        if let (Some(r), Some(id), Some(k)) = (&recovered, pkid, &key) {
            if !r.parts.is_empty() && r.parts.iter().all(Option::is_some) {
                engine.forget_recovered(k);
                metrics::counter!("annals_mqtt_messages_total", "outcome" => "duplicate")
                    .increment(1);
                inflight.push_back(ready_ack(Some((id, AckReason::Success))));
                return Ok(());
            }
        }
        let default_time_ns = recovered
            .as_ref()
            .map(|r| r.default_time_ns)
            .unwrap_or_else(|| engine.clock().now_ns());
        let opts = PrepareOptions {
            parse: ParseOptions {
                precision,
                default_time_ns,
                ..ParseOptions::default()
            },
            accept_partial: false,
        };
        let prepared = match engine.prepare(&route.db, &body, &opts) {
            Ok(prepared) => prepared,
            Err(WriteError::Empty) => {
                metrics::counter!("annals_mqtt_messages_total", "outcome" => "empty").increment(1);
                inflight.extend(ack_now(AckReason::Success));
                return Ok(());
            }
            Err(e @ WriteError::Database(_)) => {
                self.dropped(cl, "refused", &p.topic, &e.to_string());
                inflight.extend(ack_now(AckReason::TopicNameInvalid));
                return Ok(());
            }
            Err(
                e @ (WriteError::Parse { .. } | WriteError::Lines(_) | WriteError::Conflict { .. }),
            ) => {
                self.dropped(cl, "malformed", &p.topic, &e.to_string());
                inflight.extend(ack_now(AckReason::PayloadFormatInvalid));
                return Ok(());
            }
            Err(e) => {
                metrics::counter!("annals_mqtt_messages_total", "outcome" => "failed").increment(1);
                error!(peer = %self.peer, client = %cl.id, error = %e, "MQTT write failed");
                return match pkid {
                    Some(_) => Err(end(CloseReason::WriteFailed, e.to_string())),
                    None => Ok(()),
                };
            }
        };
        let tables = prepared.origins.iter().flatten().map(|o| o.table.as_str());
        if let Err(e) = engine.attestations().check_unsigned(tables) {
            self.dropped(cl, "forbidden", &p.topic, &e.to_string());
            inflight.extend(ack_now(AckReason::NotAuthorized));
            return Ok(());
        }
        let job = Job {
            pkid,
            hash,
            key,
            default_time_ns,
            recovered: recovered.is_some(),
            done: recovered.map(|r| r.parts).unwrap_or_default(),
        };
        if !job.done.is_empty() && job.done.len() != prepared.parts.len() {
            // The recorded request had another shape: write this one as new.
            return self.submit(
                cl,
                prepared,
                Job {
                    done: Vec::new(),
                    ..job
                },
                inflight,
                waiting,
            );
        }
        self.submit(cl, prepared, job, inflight, waiting)
    }

    /// Queues a prepared message, or parks it until queue space frees up.
    fn submit(
        &self,
        cl: &Client,
        prepared: Prepared,
        job: Job,
        inflight: &mut FuturesOrdered<AckFuture>,
        waiting: &mut Option<Waiting>,
    ) -> Result<(), End> {
        let key = job
            .key
            .as_deref()
            .map(|k| (k, job.hash, job.default_time_ns));
        match self.shared.engine.submit_keyed(prepared, key, &job.done) {
            Ok(pending) => {
                inflight.push_back(self.launch(cl, pending, job));
                Ok(())
            }
            Err(prepared) => {
                let now = Instant::now();
                *waiting = Some(Waiting {
                    prepared,
                    job,
                    deadline: now + self.shared.cfg.write_wait_max,
                    backoff: RETRY_FIRST,
                    retry_at: now + RETRY_FIRST,
                });
                Ok(())
            }
        }
    }

    fn retry(
        &self,
        cl: &Client,
        inflight: &mut FuturesOrdered<AckFuture>,
        waiting: &mut Option<Waiting>,
    ) -> Result<(), End> {
        let Some(mut w) = waiting.take() else {
            return Ok(());
        };
        let key = w
            .job
            .key
            .as_deref()
            .map(|k| (k, w.job.hash, w.job.default_time_ns));
        match self
            .shared
            .engine
            .submit_keyed(w.prepared, key, &w.job.done)
        {
            Ok(pending) => {
                inflight.push_back(self.launch(cl, pending, w.job));
                Ok(())
            }
            Err(prepared) => {
                let now = Instant::now();
                if now >= w.deadline {
                    metrics::counter!("annals_mqtt_messages_total", "outcome" => "overloaded")
                        .increment(1);
                    if w.job.pkid.is_some() {
                        return Err(end(
                            CloseReason::Busy,
                            "ingest queues stayed full; the message was not acknowledged",
                        ));
                    }
                    if self.shared.warnings.allow().is_some() {
                        warn!(peer = %self.peer, client = %cl.id, "MQTT QoS 0 message dropped: ingest queues stayed full");
                    }
                    return Ok(());
                }
                w.prepared = prepared;
                w.backoff = (w.backoff * 2).min(RETRY_MAX);
                w.retry_at = now + w.backoff;
                *waiting = Some(w);
                Ok(())
            }
        }
    }

    /// Waits for durability in a task of its own (a connection that goes away still records
    /// the outcome for a resend on the next one); the returned future yields the PUBACK.
    fn launch(&self, cl: &Client, pending: PendingWrite, job: Job) -> AckFuture {
        let track = job.pkid.map(|id| {
            let (gen, tx) = cl.session.begin(id, job.hash);
            (cl.session.clone(), id, gen, tx)
        });
        let engine = self.shared.engine.clone();
        let (pkid, forget) = (job.pkid, job.key.filter(|_| job.recovered));
        let task = tokio::spawn(async move {
            let ok = match pending.wait().await {
                Ok(outcome) => {
                    metrics::counter!("annals_mqtt_messages_total", "outcome" => "written")
                        .increment(1);
                    metrics::counter!("annals_mqtt_rows_total").increment(outcome.rows as u64);
                    true
                }
                Err(e) => {
                    metrics::counter!("annals_mqtt_messages_total", "outcome" => "failed")
                        .increment(1);
                    error!(error = %e, "MQTT write failed");
                    false
                }
            };
            if let Some((session, id, gen, tx)) = track {
                if !ok {
                    session.failed(id, gen);
                }
                tx.send_replace(Some(ok));
            }
            if let (true, Some(k)) = (ok, forget) {
                engine.forget_recovered(&k);
            }
            ok
        });
        Box::pin(async move {
            match (task.await, pkid) {
                (Ok(true), Some(id)) => Ok(Some((id, AckReason::Success))),
                (Ok(true), None) => Ok(None),
                // QoS 0 is at most once: a failed write is logged and counted, nothing more.
                (_, None) => Ok(None),
                (_, Some(_)) => Err(CloseReason::WriteFailed),
            }
        })
    }
}

/// An answer known at once (in the queue, so acknowledgements keep arrival order).
fn ready_ack(ack: Ack) -> AckFuture {
    Box::pin(std::future::ready(Ok::<Ack, CloseReason>(ack)))
}

/// Acknowledges a duplicate once the original write is durable.
async fn wait_done(mut done: watch::Receiver<Option<bool>>, pkid: u16) -> Result<Ack, CloseReason> {
    loop {
        if let Some(ok) = *done.borrow_and_update() {
            return if ok {
                Ok(Some((pkid, AckReason::Success)))
            } else {
                Err(CloseReason::WriteFailed)
            };
        }
        if done.changed().await.is_err() {
            return Err(CloseReason::WriteFailed);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

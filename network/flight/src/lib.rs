//! # annals-flight: Arrow Flight SQL and Flight ingest over gRPC
//!
//! One gRPC service (`arrow.flight.protocol.FlightService`) that `annals serve` offers on the
//! HTTP port (HTTP/2 without TLS, as InfluxDB 3 does, so its clients find it from the HTTP
//! address) and, with `--grpc-addr HOST:PORT`, on a port of its own. It speaks:
//!
//! - **Flight SQL** (what ADBC and JDBC drivers send): statement queries, prepared statements
//!   (without parameters), `GetCatalogs`, `GetDbSchemas`, `GetTables` (with `include_schema`),
//!   `GetTableTypes`, `GetSqlInfo`, and bulk ingest (`CommandStatementIngest`).
//! - **InfluxDB 3 tickets**: `DoGet` with the JSON ticket `{"database", "sql_query",
//!   "query_type": "sql"}` that `influxdb3-python` and the other v3 clients send.
//! - **Plain Flight ingest**: `DoPut` with a path descriptor `[database, table]`.
//! - **Subscriptions**: `DoGet` with a JSON ticket that has a `"subscribe"` member (see
//!   `subscribe.rs`).
//!
//! Mapping: a Flight SQL *catalog* is an annals database; its measurements are the tables of
//! the schema named like the database (so `db.table` in SQL names them), and the ledger's
//! `system.*` tables are schema `system`. The database a request works on is, in order: the
//! gRPC header `database` (or `bucket-name`, `iox-namespace-name`, as InfluxDB 3 clients
//! send), the catalog named in the command or ticket, else the only database the token sees;
//! otherwise the request fails with `InvalidArgument` naming the header.
//!
//! Authentication: every call but `Handshake` carries `authorization: Bearer <token>` (also
//! `Token` or `Basic` with the token as password). `Handshake` with `Basic user:<token>`
//! answers the bearer header ADBC and JDBC then send. Missing or unknown token:
//! `Unauthenticated`; a token without the permission: `PermissionDenied`.
//!
//! Results stream: a query's record batches are encoded as they come from DataFusion, never
//! collected; dropping the call cancels the query. Dictionary columns (tags) are sent as
//! plain strings.
//!
//! Must never: run SQL that changes anything (the query service only plans queries and
//! `SET`), let a token read or write a database it has no grant for (tables a query reads
//! are checked, not only the selected database), or acknowledge ingested rows before they
//! are durable.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use annals_auth::{AuthError, Grant, Tokens};
use annals_engine::Engine;
use annals_query::QueryService;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

mod error;
mod ingest;
mod metadata;
mod prepared;
mod sql;
mod subscribe;
mod ticket;

pub use error::FlightError;

/// Largest gRPC message the service accepts (a `DoPut` batch, a ticket) or sends.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Prepared statements kept open at once (all clients together); creating more is refused.
pub const PREPARED_MAX_DEFAULT: usize = 4096;

/// Bounds of the Flight service.
#[derive(Debug, Clone)]
pub struct FlightConfig {
    /// How long an ingest batch waits for queue space before `ResourceExhausted`.
    pub write_wait_max: Duration,
    /// Largest gRPC message, both directions.
    pub message_bytes_max: usize,
    /// Open prepared statements, all clients together.
    pub prepared_max: usize,
}

impl Default for FlightConfig {
    fn default() -> Self {
        Self {
            write_wait_max: Duration::from_secs(5),
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            prepared_max: PREPARED_MAX_DEFAULT,
        }
    }
}

/// What every Flight call works with (shared with `subscribe.rs`).
#[derive(Debug)]
pub(crate) struct FlightContext {
    pub(crate) query: Arc<QueryService>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) auth: Arc<Tokens>,
    pub(crate) cfg: FlightConfig,
    pub(crate) prepared: prepared::Prepared,
}

/// The Flight service: authenticates every call, answers InfluxDB 3 and subscription tickets
/// itself and hands everything else to the Flight SQL implementation ([`sql`]).
#[derive(Debug, Clone)]
pub struct AnnalsFlight {
    ctx: Arc<FlightContext>,
}

impl AnnalsFlight {
    /// A service over `engine` and `query`, checking requests against `auth`.
    pub fn new(
        engine: Arc<Engine>,
        query: Arc<QueryService>,
        auth: Arc<Tokens>,
        cfg: FlightConfig,
    ) -> Self {
        let prepared = prepared::Prepared::new(cfg.prepared_max);
        Self {
            ctx: Arc::new(FlightContext {
                query,
                engine,
                auth,
                cfg,
                prepared,
            }),
        }
    }

    /// The tonic server for this service, with the message size bounds applied.
    pub fn into_server(self) -> FlightServiceServer<AnnalsFlight> {
        let max = self.ctx.cfg.message_bytes_max;
        FlightServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// The service as axum routes (`/arrow.flight.protocol.FlightService/*`), to merge into
    /// the HTTP router; the listener must accept HTTP/2 (prior knowledge, no TLS).
    /// Only those paths: the HTTP router keeps its own answers (404) for every other path.
    pub fn into_router(self) -> axum::Router {
        use tonic::server::NamedService;
        use tower::ServiceExt;
        let path = format!("/{}/{{*rest}}", FlightServiceServer::<AnnalsFlight>::NAME);
        let svc = self
            .into_server()
            .map_request(|req: http::Request<axum::body::Body>| req.map(tonic::body::Body::new));
        axum::Router::new().route_service(&path, svc)
    }

    /// Serves the service alone on `listener` until `shutdown` resolves, taking HTTP/2 frames
    /// of up to `max_frame_bytes` (hyper's default is 16 KiB; the HTTP port's setting is
    /// `annals_http::listener::H2_MAX_FRAME_BYTES`).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        max_frame_bytes: u32,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), FlightError> {
        tonic::transport::Server::builder()
            .max_frame_size(Some(max_frame_bytes))
            .add_service(self.into_server())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .map_err(|e| FlightError::Serve(e.to_string()))
    }
}

/// Authenticates a call's `authorization` header.
pub(crate) fn authenticate(
    auth: &Tokens,
    meta: &tonic::metadata::MetadataMap,
) -> Result<Grant, Status> {
    let header = match meta.get("authorization") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Status::unauthenticated("authorization header is not text"))?,
        ),
        None => None,
    };
    auth.authenticate_header(header)
        .map_err(|e| auth_status(&e))
}

/// The gRPC status of an authentication or permission failure.
pub(crate) fn auth_status(e: &AuthError) -> Status {
    match e {
        AuthError::Forbidden { .. } => Status::permission_denied(e.to_string()),
        AuthError::Missing | AuthError::Invalid => Status::unauthenticated(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Authenticates `req` and stores the [`Grant`] in its extensions for the handlers.
fn admit<T>(ctx: &FlightContext, mut req: Request<T>) -> Result<Request<T>, Status> {
    let grant = authenticate(&ctx.auth, req.metadata())?;
    req.extensions_mut().insert(grant);
    Ok(req)
}

/// The grant [`admit`] stored.
pub(crate) fn grant_of<T>(req: &Request<T>) -> Result<&Grant, Status> {
    req.extensions()
        .get::<Grant>()
        .ok_or_else(|| Status::internal("request was not authenticated"))
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlightService for AnnalsFlight {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;
    type DoExchangeStream = Boxed<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        sql::handshake(&self.ctx, request)
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "ListFlights: annals has no stored flights; query with Flight SQL or a ticket",
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let req = admit(&self.ctx, request)?;
        FlightService::get_flight_info(&self.sql(), req).await
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "PollFlightInfo: queries start streaming at once; use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let req = admit(&self.ctx, request)?;
        sql::get_schema(&self.ctx, req).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let req = admit(&self.ctx, request)?;
        // A JSON ticket (InfluxDB 3 or a subscription) is not a protobuf `Any`.
        if req.get_ref().ticket.first() == Some(&b'{') {
            let stream: BoxStream<'static, Result<FlightData, Status>> =
                ticket::do_get_json(&self.ctx, req).await?;
            return Ok(Response::new(stream));
        }
        FlightService::do_get(&self.sql(), req).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let req = admit(&self.ctx, request)?;
        FlightService::do_put(&self.sql(), req).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let req = admit(&self.ctx, request)?;
        FlightService::do_action(&self.sql(), req).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let req = admit(&self.ctx, request)?;
        FlightService::list_actions(&self.sql(), req).await
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not offered"))
    }
}

impl AnnalsFlight {
    fn sql(&self) -> sql::FlightSql {
        sql::FlightSql {
            ctx: self.ctx.clone(),
        }
    }
}

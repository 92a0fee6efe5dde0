//! Flight SQL: statements, prepared statements, metadata commands, the handshake, and the
//! query stream every kind of ticket ends in.

use std::sync::Arc;

use annals_auth::{Action, Grant};
use annals_query::{QueryError, QueryRequest};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::sql::metadata::GetTablesBuilder;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementIngest, CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::prelude::SQLOptions;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use crate::error::query_status;
use crate::{auth_status, grant_of, Boxed, FlightContext};

/// gRPC headers naming the database, in the order they are looked at.
pub(crate) const DATABASE_HEADERS: [&str; 3] = ["database", "bucket-name", "iox-namespace-name"];
/// Longest SQL text accepted.
pub(crate) const SQL_BYTES_MAX: usize = 1 << 20;

/// The Flight SQL half of [`crate::AnnalsFlight`] (reached after authentication).
#[derive(Debug, Clone)]
pub(crate) struct FlightSql {
    pub(crate) ctx: Arc<FlightContext>,
}

/// What a statement ticket carries: the database it was planned in and its SQL.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StatementHandle {
    pub(crate) db: String,
    pub(crate) sql: String,
}

/// The database a request works on: a header, else `explicit` (a command's catalog or a
/// ticket's database), else the only database `grant` sees.
pub(crate) fn resolve_db(
    ctx: &FlightContext,
    meta: &tonic::metadata::MetadataMap,
    explicit: Option<&str>,
    grant: &Grant,
) -> Result<String, Status> {
    for h in DATABASE_HEADERS {
        if let Some(v) = meta.get(h) {
            let v = v
                .to_str()
                .map_err(|_| Status::invalid_argument(format!("header `{h}` is not text")))?;
            if !v.is_empty() {
                return Ok(v.to_owned());
            }
        }
    }
    if let Some(db) = explicit.filter(|d| !d.is_empty()) {
        return Ok(db.to_owned());
    }
    let visible: Vec<String> = ctx
        .query
        .databases()
        .into_iter()
        .filter(|d| grant.sees(d))
        .collect();
    match visible.as_slice() {
        [only] => Ok(only.clone()),
        [] if grant.db.is_none() => Ok(annals_query::system::SCHEMA.to_owned()),
        _ => Err(Status::invalid_argument(format!(
            "which database? send the gRPC header `database` (one of: {})",
            visible.join(", ")
        ))),
    }
}

fn check(grant: &Grant, action: Action, db: &str) -> Result<(), Status> {
    grant.check(action, Some(db)).map_err(|e| auth_status(&e))
}

fn check_sql(sql: &str) -> Result<(), Status> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "SQL text is {} bytes; at most {SQL_BYTES_MAX}",
            sql.len()
        )));
    }
    if sql.trim().is_empty() {
        return Err(Status::invalid_argument("no SQL statement given"));
    }
    Ok(())
}

/// `schema` as it is sent: dictionary columns (tags) as their value type.
pub(crate) fn hydrated(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// Plans `sql` in `db` (without running it) and returns the result schema as sent, and
/// whether the SQL has parameters. Several `;`-separated statements are not planned here
/// (earlier ones may `SET` what later ones read): the stream carries their schema.
pub(crate) async fn plan(
    ctx: &FlightContext,
    db: &str,
    sql: &str,
) -> Result<(SchemaRef, bool), Status> {
    check_sql(sql)?;
    if db != annals_query::system::SCHEMA && !ctx.query.databases().contains(db) {
        return Err(query_status(&QueryError::DatabaseNotFound(db.to_owned())));
    }
    let statements = datafusion::sql::parser::DFParser::parse_sql(sql)
        .map_err(|e| query_status(&QueryError::Invalid(e.to_string())))?;
    if statements.len() != 1 {
        return Ok((Arc::new(Schema::empty()), false));
    }
    let session = ctx.query.session(db);
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(true);
    let df = session
        .sql_with_options(sql, options)
        .await
        .map_err(|e| query_status(&QueryError::from(e)))?;
    let params = df
        .logical_plan()
        .get_parameter_types()
        .map(|p| !p.is_empty())
        .unwrap_or(false);
    let schema = hydrated(df.schema().as_arrow());
    Ok((Arc::new(schema), params))
}

/// Runs `sql` in `db` for `grant` and streams the result as Flight data, batch by batch.
pub(crate) async fn stream_query(
    ctx: &FlightContext,
    grant: &Grant,
    db: &str,
    sql: &str,
) -> Result<Boxed<FlightData>, Status> {
    check_sql(sql)?;
    check(grant, Action::Read, db)?;
    let out = ctx
        .query
        .sql(&QueryRequest {
            db: db.to_owned(),
            sql: sql.to_owned(),
            as_of_epoch: None,
        })
        .await
        .map_err(|e| query_status(&e))?;
    // A qualified name (`other.table`) reads another database: it needs a grant too.
    for t in &out.tables {
        let (tdb, _) = annals_query::system::split(&t.name);
        check(grant, Action::Read, tdb)?;
    }
    let batches = out.stream.map(|r| {
        r.map_err(|e| {
            arrow_flight::error::FlightError::Tonic(Box::new(query_status(&QueryError::from(e))))
        })
    });
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(out.schema)
        .build(batches)
        .map_err(Status::from);
    Ok(Box::pin(encoded))
}

/// One record batch as Flight data.
pub(crate) fn stream_batch(batch: arrow::record_batch::RecordBatch) -> Boxed<FlightData> {
    let schema = batch.schema();
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { Ok(batch) }))
        .map_err(Status::from);
    Box::pin(encoded)
}

/// `schema` as an IPC schema message (what prepared statements and `GetSchema` return).
fn schema_bytes(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let options = arrow::ipc::writer::IpcWriteOptions::default();
    let msg: Result<IpcMessage, arrow::error::ArrowError> =
        SchemaAsIpc::new(schema, &options).try_into();
    msg.map(|m| m.0)
        .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))
}

fn info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

/// `Handshake` with `authorization: Basic <user:token>` (or `Bearer <token>`): checks the
/// token and answers `authorization: Bearer <token>` for the calls that follow.
pub(crate) fn handshake(
    ctx: &FlightContext,
    request: Request<Streaming<HandshakeRequest>>,
) -> Result<Response<Boxed<HandshakeResponse>>, Status> {
    let header = match request.metadata().get("authorization") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Status::unauthenticated("authorization header is not text"))?
                .to_owned(),
        ),
        None => None,
    };
    let secret = header
        .as_deref()
        .and_then(annals_auth::secret_from_authorization);
    if header.is_some() && secret.is_none() {
        return Err(Status::unauthenticated(
            "authorization must be `Basic base64(user:token)` or `Bearer <token>`",
        ));
    }
    ctx.auth
        .authenticate(secret.as_deref())
        .map_err(|e| auth_status(&e))?;
    let reply = HandshakeResponse {
        protocol_version: 0,
        payload: Default::default(),
    };
    let mut resp: Response<Boxed<HandshakeResponse>> =
        Response::new(Box::pin(futures::stream::once(async move { Ok(reply) })));
    if let Some(s) = secret {
        let v = format!("Bearer {s}")
            .parse()
            .map_err(|_| Status::unauthenticated("token is not a valid header value"))?;
        resp.metadata_mut().insert("authorization", v);
    }
    Ok(resp)
}

/// `GetSchema` for a statement or a prepared statement.
pub(crate) async fn get_schema(
    ctx: &FlightContext,
    req: Request<FlightDescriptor>,
) -> Result<Response<SchemaResult>, Status> {
    let grant = grant_of(&req)?.clone();
    let any = Any::decode(&*req.get_ref().cmd)
        .map_err(|e| Status::invalid_argument(format!("descriptor command: {e}")))?;
    let (db, sql) = if let Some(q) = any
        .unpack::<CommandStatementQuery>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?
    {
        (resolve_db(ctx, req.metadata(), None, &grant)?, q.query)
    } else if let Some(p) = any
        .unpack::<CommandPreparedStatementQuery>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?
    {
        let s = ctx.prepared.get(&p.prepared_statement_handle, &grant)?;
        (s.db, s.sql)
    } else {
        return Err(Status::unimplemented(format!(
            "GetSchema for {}: only statements and prepared statements",
            any.type_url
        )));
    };
    check(&grant, Action::Read, &db)?;
    let (schema, _) = plan(ctx, &db, &sql).await?;
    Ok(Response::new(SchemaResult {
        schema: schema_bytes(&schema)?,
    }))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let grant = grant_of(&request)?;
        let db = resolve_db(&self.ctx, request.metadata(), None, grant)?;
        check(grant, Action::Read, &db)?;
        let (schema, params) = plan(&self.ctx, &db, &query.query).await?;
        if params {
            return Err(Status::invalid_argument(
                "query parameters ($1, ?) are not supported: put the values in the SQL",
            ));
        }
        let handle = serde_json::to_vec(&StatementHandle {
            db,
            sql: query.query,
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let grant = grant_of(&request)?;
        let stmt = self
            .ctx
            .prepared
            .get(&cmd.prepared_statement_handle, grant)?;
        info(
            &stmt.schema,
            cmd.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = GetTablesBuilder::from(query.clone()).schema();
        info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query
            .clone()
            .into_builder(crate::metadata::sql_info())
            .schema();
        info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<Boxed<FlightData>>, Status> {
        let grant = grant_of(&request)?;
        let handle: StatementHandle =
            serde_json::from_slice(&ticket.statement_handle).map_err(|e| {
                Status::invalid_argument(format!("not an annals statement ticket: {e}"))
            })?;
        let stream = stream_query(&self.ctx, grant, &handle.db, &handle.sql).await?;
        Ok(Response::new(stream))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<Boxed<FlightData>>, Status> {
        let grant = grant_of(&request)?;
        let stmt = self
            .ctx
            .prepared
            .get(&cmd.prepared_statement_handle, grant)?;
        let stream = stream_query(&self.ctx, grant, &stmt.db, &stmt.sql).await?;
        Ok(Response::new(stream))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<Boxed<FlightData>>, Status> {
        let grant = grant_of(&request)?;
        let batch = crate::metadata::catalogs(&self.ctx, grant, query)?;
        Ok(Response::new(stream_batch(batch)))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<Boxed<FlightData>>, Status> {
        let grant = grant_of(&request)?;
        let batch = crate::metadata::schemas(&self.ctx, grant, query)?;
        Ok(Response::new(stream_batch(batch)))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<Boxed<FlightData>>, Status> {
        let grant = grant_of(&request)?;
        let batch = crate::metadata::tables(&self.ctx, grant, query).await?;
        Ok(Response::new(stream_batch(batch)))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<Boxed<FlightData>>, Status> {
        let batch = crate::metadata::table_types(query)?;
        Ok(Response::new(stream_batch(batch)))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<Boxed<FlightData>>, Status> {
        let batch = query
            .into_builder(crate::metadata::sql_info())
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(stream_batch(batch)))
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        crate::ingest::statement_ingest(&self.ctx, cmd, request).await
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<Response<Boxed<PutResult>>, Status> {
        crate::ingest::path_put(&self.ctx, request, message).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let grant = grant_of(&request)?.clone();
        self.ctx
            .prepared
            .get(&cmd.prepared_statement_handle, &grant)?;
        // Binding is refused unless the client binds no rows at all.
        let mut rows = 0usize;
        let mut decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            request
                .into_inner()
                .map_err(arrow_flight::error::FlightError::from),
        );
        while let Some(b) = decoded.next().await {
            rows += b.map_err(Status::from)?.num_rows();
        }
        if rows > 0 {
            return Err(Status::invalid_argument(
                "query parameters are not supported: put the values in the SQL",
            ));
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(cmd.prepared_statement_handle),
        })
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let grant = grant_of(&request)?;
        let db = resolve_db(&self.ctx, request.metadata(), None, grant)?;
        check(grant, Action::Read, &db)?;
        let (schema, params) = plan(&self.ctx, &db, &query.query).await?;
        if params {
            return Err(Status::invalid_argument(
                "query parameters ($1, ?) are not supported: put the values in the SQL",
            ));
        }
        let dataset_schema = schema_bytes(&schema)?;
        let parameter_schema = schema_bytes(&Schema::empty())?;
        let handle = self.ctx.prepared.insert(db, query.query, schema, grant);
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let grant = grant_of(&request)?;
        self.ctx
            .prepared
            .remove(&query.prepared_statement_handle, grant)
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

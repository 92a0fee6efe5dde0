//! Simple and extended query protocol: statements are parsed with PostgreSQL's dialect,
//! rewritten for DataFusion (`datafusion-pg-catalog`), sorted into reads (run by the query
//! service), session statements (`SET`, `SHOW`, transactions) and refused writes.

use std::fmt::Debug;
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use annals_auth::Tokens;
use annals_query::{QueryError, QueryService};
use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::Expr;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    self as sql, visit_expressions_mut, Expr as SqlExpr, Statement, Value,
};
use datafusion::sql::unparser::Unparser;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Sink, StreamExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use tokio::sync::OwnedSemaphorePermit;

use crate::session::Session;

/// Statements in one simple-protocol query string.
const STATEMENTS_MAX: usize = 64;
/// Longest SQL text accepted (pgwire bounds whole messages; this bounds what is parsed).
const SQL_BYTES_MAX: usize = 1 << 20;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) service: Arc<QueryService>,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) max_connections: usize,
}

/// One connection: its permit (none: over the limit, refused at startup) and its session
/// (set when the startup succeeds).
pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) session: Arc<OnceLock<Arc<Session>>>,
    parser: Arc<StmtParser>,
}

impl Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("session", &self.session.get().map(|s| s.db.clone()))
            .finish()
    }
}

/// The pgwire handlers of one connection.
#[derive(Debug, Clone)]
pub struct ConnHandlers(Arc<Conn>);

impl ConnHandlers {
    pub(crate) fn new(shared: Arc<Shared>, permit: Option<OwnedSemaphorePermit>) -> Self {
        let session = Arc::new(OnceLock::new());
        Self(Arc::new(Conn {
            shared,
            permit,
            parser: Arc::new(StmtParser {
                session: session.clone(),
                sql: PostgresCompatibilityParser::new(),
            }),
            session,
        }))
    }
}

impl PgWireServerHandlers for ConnHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }
}

/// What a statement is, decided before anything is planned.
#[derive(Debug, Clone)]
enum Kind {
    /// A query (or DataFusion's own `SET`/`SHOW` of `datafusion.*`/`annals.*`): the service.
    Read,
    /// `SET` of a DataFusion or annals option: the service, answered with tag `SET`.
    ServiceSet,
    /// `SET` of a PostgreSQL session parameter: recorded for `SHOW`/`current_setting`.
    SetParam {
        name: String,
        value: Option<String>,
    },
    Show(String),
    Begin,
    Commit,
    Rollback,
    /// Accepted and ignored (`DISCARD`, `DEALLOCATE`, other `SET` forms), with its tag.
    Ignored(&'static str),
    /// A write or DDL: refused with 25006.
    Refused(String),
}

/// A parsed statement of the extended protocol.
#[derive(Debug, Clone)]
pub(crate) struct PgStatement {
    stmt: Statement,
    kind: Kind,
    /// Result columns of a read, from planning at Parse time.
    schema: Option<SchemaRef>,
    /// Types DataFusion inferred for `$1..$n`.
    params: Vec<Option<DataType>>,
}

/// Words that start a statement that changes something.
const WRITE_WORDS: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "COPY", "TRUNCATE", "CREATE",
    "DROP", "ALTER", "GRANT", "REVOKE", "COMMENT", "VACUUM", "REINDEX", "CLUSTER", "REFRESH",
    "LOCK", "CALL", "DO", "IMPORT", "LOAD", "INSTALL", "ATTACH", "DETACH", "UNLOAD",
];

fn is_service_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("datafusion.") || n.starts_with("annals.")
}

fn setting_value(e: &SqlExpr) -> String {
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        SqlExpr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

fn classify(stmt: &Statement) -> Kind {
    match stmt {
        Statement::Query(_) | Statement::Explain { .. } | Statement::ExplainTable { .. } => {
            Kind::Read
        }
        Statement::StartTransaction { .. } => Kind::Begin,
        Statement::Commit { .. } => Kind::Commit,
        Statement::Rollback { .. } => Kind::Rollback,
        Statement::ShowVariable { variable } => {
            // `SHOW datafusion.execution.batch_size` arrives as three identifiers; DataFusion
            // joins them with dots and answers it as a query.
            let dotted = variable
                .iter()
                .map(|i| i.value.as_str())
                .collect::<Vec<_>>()
                .join(".");
            if is_service_option(&dotted) {
                return Kind::Read;
            }
            let name = variable
                .iter()
                .map(|i| i.value.clone())
                .collect::<Vec<_>>()
                .join(" ");
            let name = match name.to_ascii_lowercase().as_str() {
                "transaction isolation level" => "transaction_isolation".to_string(),
                "time zone" => "timezone".to_string(),
                _ => name,
            };
            Kind::Show(name)
        }
        Statement::Set(sql::Set::SingleAssignment {
            variable, values, ..
        }) => {
            let name = variable.to_string();
            if is_service_option(&name) {
                return Kind::ServiceSet;
            }
            let value = values.iter().map(setting_value).collect::<Vec<_>>();
            let value = match value.as_slice() {
                [v] if v.eq_ignore_ascii_case("default") => None,
                _ => Some(value.join(", ")),
            };
            Kind::SetParam { name, value }
        }
        Statement::Set(sql::Set::SetTimeZone { value, .. }) => Kind::SetParam {
            name: "timezone".to_string(),
            value: Some(setting_value(value)),
        },
        Statement::Set(_) => Kind::Ignored("SET"),
        Statement::Discard { .. } => Kind::Ignored("DISCARD ALL"),
        Statement::Deallocate { .. } => Kind::Ignored("DEALLOCATE"),
        other => {
            let text = other.to_string();
            let word = text
                .split(|c: char| !c.is_ascii_alphabetic())
                .find(|w| !w.is_empty())
                .unwrap_or("")
                .to_ascii_uppercase();
            if WRITE_WORDS.contains(&word.as_str()) {
                Kind::Refused(word)
            } else {
                Kind::Read
            }
        }
    }
}

fn error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        message,
    )))
}

/// A query error with the SQLSTATE of its class.
fn query_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::Invalid(_) => "42000",
        QueryError::DatabaseNotFound(_) => "3D000",
        QueryError::Timeout(_) => "57014",
        QueryError::ResourcesExhausted(_) => "53200",
        _ => "XX000",
    };
    error("ERROR", code, e.to_string())
}

fn read_only(word: &str) -> PgWireError {
    error(
        "ERROR",
        "25006",
        format!(
            "cannot execute {word}: annals over PostgreSQL is read-only; write line protocol over \
             HTTP (POST /api/v3/write_lp?db=...)"
        ),
    )
}

fn no_session() -> PgWireError {
    error(
        "FATAL",
        "08P01",
        "no session: the startup did not finish".to_string(),
    )
}

/// Parses (and rewrites for DataFusion) a SQL string within the bounds.
fn parse(parser: &PostgresCompatibilityParser, sql: &str) -> PgWireResult<Vec<Statement>> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(error(
            "ERROR",
            "54000",
            format!("SQL text longer than {SQL_BYTES_MAX} bytes"),
        ));
    }
    let statements = parser
        .parse(sql)
        .map_err(|e| error("ERROR", "42601", format!("syntax error: {e}")))?;
    if statements.len() > STATEMENTS_MAX {
        return Err(error(
            "ERROR",
            "54000",
            format!("at most {STATEMENTS_MAX} statements in one query"),
        ));
    }
    Ok(statements)
}

impl Conn {
    fn session(&self) -> PgWireResult<Arc<Session>> {
        self.session.get().cloned().ok_or_else(no_session)
    }

    /// Runs one classified statement. `sql` is what a read hands the service.
    async fn execute(
        &self,
        session: &Session,
        kind: &Kind,
        sql: String,
        format: &Format,
        fmt: Arc<FormatOptions>,
    ) -> PgWireResult<Response> {
        match kind {
            Kind::Read => {
                let out = self
                    .shared
                    .service
                    .run(&session.ctx, &session.db, &sql)
                    .await
                    .map_err(query_error)?;
                let fields = Arc::new(arrow_schema_to_pg_fields(&out.schema, format, Some(fmt))?);
                Ok(Response::Query(QueryResponse::new(
                    fields.clone(),
                    rows(fields, out.stream),
                )))
            }
            Kind::ServiceSet => {
                let out = self
                    .shared
                    .service
                    .run(&session.ctx, &session.db, &sql)
                    .await
                    .map_err(query_error)?;
                out.collect().await.map_err(query_error)?;
                Ok(Response::Execution(Tag::new("SET")))
            }
            Kind::SetParam { name, value } => {
                match value {
                    Some(v) => session
                        .settings
                        .set(name, v.clone())
                        .map_err(|m| error("ERROR", "54000", m))?,
                    None => session.settings.reset(name),
                }
                Ok(Response::Execution(Tag::new("SET")))
            }
            Kind::Show(name) => {
                let value = session.settings.get(name).ok_or_else(|| {
                    error(
                        "ERROR",
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\""),
                    )
                })?;
                let fields = Arc::new(vec![show_field(name, format, fmt)]);
                let mut enc = pgwire::api::results::DataRowEncoder::new(fields.clone());
                enc.encode_field(&Some(value))?;
                let row = enc.take_row();
                Ok(Response::Query(QueryResponse::new(
                    fields,
                    futures::stream::iter(vec![Ok(row)]),
                )))
            }
            Kind::Begin => Ok(Response::TransactionStart(Tag::new("BEGIN"))),
            Kind::Commit => Ok(Response::TransactionEnd(Tag::new("COMMIT"))),
            Kind::Rollback => Ok(Response::TransactionEnd(Tag::new("ROLLBACK"))),
            Kind::Ignored(tag) => Ok(Response::Execution(Tag::new(tag))),
            Kind::Refused(word) => Err(read_only(word)),
        }
    }
}

fn show_field(name: &str, format: &Format, fmt: Arc<FormatOptions>) -> FieldInfo {
    let f: FieldFormat = format.format_for(0);
    FieldInfo::new(name.to_string(), None, None, Type::TEXT, f).with_format_options(fmt)
}

/// Data rows, encoded batch by batch as the query produces them.
fn rows(
    fields: Arc<Vec<FieldInfo>>,
    stream: SendableRecordBatchStream,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    stream
        .map(move |batch| {
            let it: Box<dyn Iterator<Item = PgWireResult<_>> + Send> = match batch {
                Ok(b) => encode_recordbatch(fields.clone(), b),
                Err(e) => Box::new(std::iter::once(Err(query_error(QueryError::from(e))))),
            };
            futures::stream::iter(it)
        })
        .flatten()
}

#[async_trait]
impl SimpleQueryHandler for Conn {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session()?;
        let statements = parse(&self.parser.sql, query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let fmt = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let mut out = Vec::with_capacity(statements.len());
        for stmt in statements {
            let kind = classify(&stmt);
            match self
                .execute(
                    &session,
                    &kind,
                    stmt.to_string(),
                    &Format::UnifiedText,
                    fmt.clone(),
                )
                .await
            {
                Ok(r) => out.push(r),
                Err(PgWireError::UserError(info)) => {
                    // Earlier statements' results stand; the rest is skipped, as in PostgreSQL.
                    out.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Conn {
    type Statement = PgStatement;
    type QueryParser = StmtParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session()?;
        let st = &portal.statement.statement;
        let fmt = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let sql = if matches!(st.kind, Kind::Read) && portal.parameter_len() > 0 {
            let inferred: Vec<Option<&DataType>> = st.params.iter().map(|t| t.as_ref()).collect();
            let values = deserialize_parameters(portal, &inferred)?;
            bind(&st.stmt, values)?.to_string()
        } else {
            st.stmt.to_string()
        };
        self.execute(&session, &st.kind, sql, &portal.result_column_format, fmt)
            .await
    }
}

/// Replaces `$n` placeholders by SQL literals of the bound values, so the statement can go
/// through the query service like any other.
fn bind(stmt: &Statement, values: ParamValues) -> PgWireResult<Statement> {
    let values: Vec<ScalarValue> = match values {
        ParamValues::List(v) => v.into_iter().map(|s| s.value).collect(),
        ParamValues::Map(_) => {
            return Err(error(
                "ERROR",
                "42P02",
                "named parameters are not supported; use $1, $2, ...".to_string(),
            ))
        }
    };
    let unparser = Unparser::default();
    let mut stmt = stmt.clone();
    let flow = visit_expressions_mut(&mut stmt, |e| {
        let SqlExpr::Value(v) = e else {
            return ControlFlow::Continue(());
        };
        let Value::Placeholder(p) = &v.value else {
            return ControlFlow::Continue(());
        };
        let Some(value) = p
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| values.get(i))
        else {
            return ControlFlow::Break(format!("there is no parameter {p}"));
        };
        let mut value = value.clone();
        while let ScalarValue::Dictionary(_, inner) = value {
            value = *inner;
        }
        match unparser.expr_to_sql(&Expr::Literal(value, None)) {
            Ok(lit) => {
                *e = SqlExpr::Nested(Box::new(lit));
                ControlFlow::Continue(())
            }
            Err(err) => ControlFlow::Break(format!("parameter {p}: {err}")),
        }
    });
    match flow {
        ControlFlow::Continue(()) => Ok(stmt),
        ControlFlow::Break(m) => Err(error("ERROR", "08P01", m)),
    }
}

/// Parses extended-protocol statements in the connection's session (for their result and
/// parameter types).
#[derive(Debug)]
pub(crate) struct StmtParser {
    session: Arc<OnceLock<Arc<Session>>>,
    sql: PostgresCompatibilityParser,
}

#[async_trait]
impl QueryParser for StmtParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = self.session.get().cloned().ok_or_else(no_session)?;
        let mut statements = parse(&self.sql, sql)?;
        if statements.len() > 1 {
            return Err(error(
                "ERROR",
                "42601",
                "cannot insert multiple commands into a prepared statement".to_string(),
            ));
        }
        let Some(stmt) = statements.pop() else {
            return Ok(None);
        };
        let kind = classify(&stmt);
        let (schema, params) = if matches!(kind, Kind::Read) {
            let plan = session
                .ctx
                .state()
                .statement_to_plan(DfStatement::Statement(Box::new(stmt.clone())))
                .await
                .map_err(|e| query_error(QueryError::from(e)))?;
            let types = plan
                .get_parameter_types()
                .map_err(|e| query_error(QueryError::from(e)))?;
            let mut numbered: Vec<(usize, Option<DataType>)> = types
                .into_iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix('$')
                        .and_then(|n| n.parse::<usize>().ok())
                        .map(|n| (n, t))
                })
                .collect();
            numbered.sort_by_key(|(n, _)| *n);
            let count = numbered.last().map_or(0, |(n, _)| *n);
            let mut params = vec![None; count];
            for (n, t) in numbered {
                params[n - 1] = t;
            }
            (Some(Arc::new(plan.schema().as_arrow().clone())), params)
        } else {
            (None, Vec::new())
        };
        Ok(Some(PgStatement {
            stmt,
            kind,
            schema,
            params,
        }))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        stmt.params
            .iter()
            .map(|t| match t {
                Some(t) => into_pg_type(t),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = column_format.cloned().unwrap_or_default();
        match (&stmt.kind, &stmt.schema) {
            (Kind::Read, Some(schema)) => arrow_schema_to_pg_fields(schema, &format, None),
            (Kind::Show(name), _) => Ok(vec![show_field(
                name,
                &format,
                Arc::new(FormatOptions::default()),
            )]),
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(sql: &str) -> Kind {
        let p = PostgresCompatibilityParser::new();
        classify(&parse(&p, sql).unwrap()[0])
    }

    #[test]
    fn writes_and_ddl_are_refused() {
        for (sql, word) in [
            ("INSERT INTO readings (truck) VALUES ('x')", "INSERT"),
            ("UPDATE readings SET truck = 'y'", "UPDATE"),
            ("DELETE FROM readings", "DELETE"),
            ("CREATE TABLE t (a int)", "CREATE"),
            ("DROP TABLE readings", "DROP"),
            ("TRUNCATE readings", "TRUNCATE"),
        ] {
            match kind(sql) {
                Kind::Refused(w) => assert_eq!(w, word, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn session_statements() {
        assert!(matches!(kind("SELECT 1"), Kind::Read));
        assert!(matches!(kind("BEGIN"), Kind::Begin));
        assert!(matches!(kind("COMMIT"), Kind::Commit));
        assert!(matches!(kind("ROLLBACK"), Kind::Rollback));
        assert!(matches!(
            kind("SET datafusion.execution.batch_size = 100"),
            Kind::ServiceSet
        ));
        assert!(matches!(
            kind("SHOW datafusion.execution.batch_size"),
            Kind::Read
        ));
        match kind("SET DateStyle = 'ISO, MDY'") {
            Kind::SetParam { name, value } => {
                assert_eq!(name.to_ascii_lowercase(), "datestyle");
                assert_eq!(value.as_deref(), Some("ISO, MDY"));
            }
            other => panic!("{other:?}"),
        }
        match kind("SHOW search_path") {
            Kind::Show(n) => assert_eq!(n, "search_path"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parameters_become_literals() {
        let p = PostgresCompatibilityParser::new();
        let stmt = parse(&p, "SELECT * FROM readings WHERE truck = $1 AND v > $2")
            .unwrap()
            .remove(0);
        let values = ParamValues::List(vec![
            ScalarValue::Dictionary(
                Box::new(DataType::Int32),
                Box::new(ScalarValue::Utf8(Some("it's".into()))),
            )
            .into(),
            ScalarValue::Float64(Some(1.5)).into(),
        ]);
        let sql = bind(&stmt, values).unwrap().to_string();
        assert_eq!(
            sql,
            "SELECT * FROM readings WHERE truck = ('it''s') AND v > (1.5)"
        );
        let missing = ParamValues::List(vec![ScalarValue::Int64(Some(1)).into()]);
        assert!(bind(&stmt, missing).is_err());
    }
}

//! JSON tickets: the InfluxDB 3 query ticket and subscriptions.
//!
//! InfluxDB 3 clients (`influxdb3-python`, `influxdb3-go`, ...) send `DoGet` with the ticket
//! `{"database": "db", "sql_query": "SELECT ...", "query_type": "sql"}` (optionally
//! `"params"`). A ticket with a `"subscribe"` member is a live subscription (`subscribe.rs`).

use serde::Deserialize;
use tonic::{Request, Status};

use arrow_flight::{FlightData, Ticket};
use futures::stream::BoxStream;

use crate::sql::{resolve_db, stream_query};
use crate::{grant_of, FlightContext};

/// Largest JSON ticket.
pub(crate) const TICKET_BYTES_MAX: usize = 1 << 20;

/// The InfluxDB 3 query ticket.
#[derive(Debug, Deserialize)]
pub(crate) struct InfluxTicket {
    #[serde(default)]
    pub(crate) database: Option<String>,
    pub(crate) sql_query: String,
    #[serde(default)]
    pub(crate) query_type: Option<String>,
    #[serde(default)]
    pub(crate) params: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Checks an InfluxDB 3 ticket: SQL only, no parameters.
pub(crate) fn parse_influx(v: serde_json::Value) -> Result<InfluxTicket, Status> {
    let t: InfluxTicket = serde_json::from_value(v).map_err(|e| {
        Status::invalid_argument(format!(
            "ticket is not an InfluxDB 3 query ticket {{\"database\", \"sql_query\", \"query_type\"}}: {e}"
        ))
    })?;
    match t.query_type.as_deref() {
        None | Some("sql") => {}
        Some("influxql") => {
            return Err(Status::unimplemented(
                "InfluxQL is not supported: send query_type \"sql\"",
            ))
        }
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "unknown query_type {other:?}: use \"sql\""
            )))
        }
    }
    if t.params.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(Status::invalid_argument(
            "query parameters are not supported: put the values in the SQL",
        ));
    }
    Ok(t)
}

/// `DoGet` with a JSON ticket.
pub(crate) async fn do_get_json(
    ctx: &FlightContext,
    req: Request<Ticket>,
) -> Result<BoxStream<'static, Result<FlightData, Status>>, Status> {
    let bytes = &req.get_ref().ticket;
    if bytes.len() > TICKET_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "ticket is {} bytes; at most {TICKET_BYTES_MAX}",
            bytes.len()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("ticket is not valid JSON: {e}")))?;
    let grant = grant_of(&req)?.clone();
    if v.get("subscribe").is_some() {
        return crate::subscribe::do_get(ctx, &grant, &v).await;
    }
    let t = parse_influx(v)?;
    // The ticket names its database; a header is used when it does not.
    let db = match t.database.filter(|d| !d.is_empty()) {
        Some(d) => d,
        None => resolve_db(ctx, req.metadata(), None, &grant)?,
    };
    stream_query(ctx, &grant, &db, &t.sql_query).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn influx_tickets() {
        let t =
            parse_influx(json!({"database": "db", "sql_query": "SELECT 1", "query_type": "sql"}))
                .unwrap();
        assert_eq!(t.database.as_deref(), Some("db"));
        assert_eq!(t.sql_query, "SELECT 1");
        // Empty params are what influxdb3-python sends without parameters.
        assert!(parse_influx(json!({"sql_query": "SELECT 1", "params": {}})).is_ok());
        let e = parse_influx(
            json!({"database": "db", "sql_query": "SHOW MEASUREMENTS", "query_type": "influxql"}),
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let e = parse_influx(json!({"database": "db", "sql_query": "x", "query_type": "flux"}))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = parse_influx(json!({"database": "db"})).unwrap_err();
        assert!(e.message().contains("sql_query"), "{}", e.message());
        let e = parse_influx(json!({"sql_query": "SELECT $x", "params": {"x": 1}})).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}

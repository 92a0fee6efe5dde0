//! Flight SQL metadata: catalogs (databases), schemas, tables, table types and SQL info.
//!
//! A catalog is a database; its measurements are in the schema named like the database (as
//! SQL names them: `db.table`) and the ledger's tables in schema `system`. Listings show only
//! the databases the token may see. The builders of `arrow-flight` apply the clients' filters
//! and patterns.

use std::sync::OnceLock;

use annals_auth::Grant;
use annals_query::service::CATALOG;
use annals_query::system::SCHEMA as SYSTEM;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::metadata::{GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTableTypes, CommandGetTables, SqlInfo,
};
use tonic::Status;

use crate::sql::hydrated;
use crate::FlightContext;

/// Table type of a measurement.
pub(crate) const TABLE: &str = "TABLE";
/// Table type of a `system.*` table.
pub(crate) const SYSTEM_TABLE: &str = "SYSTEM TABLE";

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The databases `grant` may see, sorted.
fn visible(ctx: &FlightContext, grant: &Grant) -> Vec<String> {
    ctx.query
        .databases()
        .into_iter()
        .filter(|d| grant.sees(d))
        .collect()
}

pub(crate) fn catalogs(
    ctx: &FlightContext,
    grant: &Grant,
    query: CommandGetCatalogs,
) -> Result<RecordBatch, Status> {
    let mut b = query.into_builder();
    for db in visible(ctx, grant) {
        b.append(db);
    }
    b.build().map_err(internal)
}

pub(crate) fn schemas(
    ctx: &FlightContext,
    grant: &Grant,
    query: CommandGetDbSchemas,
) -> Result<RecordBatch, Status> {
    let mut b = query.into_builder();
    for db in visible(ctx, grant) {
        b.append(&db, &db);
        b.append(&db, SYSTEM);
    }
    b.build().map_err(internal)
}

pub(crate) async fn tables(
    ctx: &FlightContext,
    grant: &Grant,
    query: CommandGetTables,
) -> Result<RecordBatch, Status> {
    let only = query.catalog.clone();
    let mut b = GetTablesBuilder::from(query);
    for db in visible(ctx, grant) {
        if only.as_deref().is_some_and(|c| c != db) {
            continue;
        }
        let session = ctx.query.session(&db);
        let Some(catalog) = session.catalog(CATALOG) else {
            continue;
        };
        for (schema_name, kind) in [(db.as_str(), TABLE), (SYSTEM, SYSTEM_TABLE)] {
            let Some(schema) = catalog.schema(schema_name) else {
                continue;
            };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                let Some(table) = schema.table(&name).await.map_err(internal)? else {
                    continue;
                };
                let table_schema = hydrated(&table.schema());
                b.append(&db, schema_name, &name, kind, &table_schema)
                    .map_err(internal)?;
            }
        }
    }
    b.build().map_err(internal)
}

pub(crate) fn table_types(query: CommandGetTableTypes) -> Result<RecordBatch, Status> {
    let mut b = query.into_builder();
    b.append(SYSTEM_TABLE);
    b.append(TABLE);
    b.build().map_err(internal)
}

/// What the server tells clients about itself (`GetSqlInfo`).
pub(crate) fn sql_info() -> &'static SqlInfoData {
    static INFO: OnceLock<SqlInfoData> = OnceLock::new();
    INFO.get_or_init(|| {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "annals");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        // SQL reads only; rows arrive through ingest (DoPut, line protocol).
        b.append(SqlInfo::FlightSqlServerReadOnly, false);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
        b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
        b.append(SqlInfo::SqlDdlCatalog, false);
        b.append(SqlInfo::SqlDdlSchema, false);
        b.append(SqlInfo::SqlDdlTable, false);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        // Built from constants: only a bug in this list can fail it.
        b.build().expect("static SQL info is valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, UInt32Array};

    #[test]
    fn sql_info_names_the_server_and_filters() {
        let batch = sql_info()
            .record_batch([SqlInfo::FlightSqlServerName as u32])
            .unwrap();
        assert_eq!(batch.num_rows(), 1);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        assert_eq!(ids.value(0), SqlInfo::FlightSqlServerName as u32);
        assert!(sql_info().record_batch([]).unwrap().num_rows() >= 10);
    }

    #[test]
    fn table_types_lists_both() {
        let b = table_types(CommandGetTableTypes {}).unwrap();
        assert_eq!(b.num_rows(), 2);
    }
}

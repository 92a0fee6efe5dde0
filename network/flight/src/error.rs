//! The crate's error type and how query and write errors become gRPC statuses.

use annals_engine::{EngineError, WriteError};
use annals_query::QueryError;
use tonic::Status;

/// Why the Flight service could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlightError {
    /// The gRPC server stopped with an error.
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// The status a client gets for a failed query.
pub(crate) fn query_status(e: &QueryError) -> Status {
    match e {
        QueryError::Invalid(m) => Status::invalid_argument(m.clone()),
        QueryError::DatabaseNotFound(_) => Status::not_found(e.to_string()),
        QueryError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        QueryError::ResourcesExhausted(_) => Status::resource_exhausted(e.to_string()),
        QueryError::Execution(_) => Status::internal(e.to_string()),
    }
}

/// The status a client gets for a refused or failed write.
pub(crate) fn write_status(e: &WriteError) -> Status {
    match e {
        WriteError::Parse { .. }
        | WriteError::Lines(_)
        | WriteError::Conflict { .. }
        | WriteError::Batch { .. }
        | WriteError::BatchConflict { .. }
        | WriteError::Database(_)
        | WriteError::Empty => Status::invalid_argument(e.to_string()),
        WriteError::Overloaded => Status::resource_exhausted(e.to_string()),
        WriteError::Engine(EngineError::ShuttingDown) => {
            Status::unavailable("the server is shutting down")
        }
        e => {
            tracing::error!(error = %e, "flight write failed");
            Status::internal(e.to_string())
        }
    }
}

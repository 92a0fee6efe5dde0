//! Query errors, with the class a protocol maps to a status.

use std::time::Duration;

use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not parse, names something unknown, or is not allowed.
    #[error("{0}")]
    Invalid(String),
    #[error("database '{0}' not found")]
    DatabaseNotFound(String),
    /// Ran past the configured timeout; it was cancelled.
    #[error("query cancelled: it ran longer than the {}s timeout", .0.as_secs_f64())]
    Timeout(Duration),
    /// The memory pool could not give the query what it needed.
    #[error("query cancelled: {0}")]
    ResourcesExhausted(String),
    /// Failed while running (bad data for a cast, an unreadable block file...).
    #[error("{0}")]
    Execution(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::External(inner) => {
                if let Some(q) = inner.downcast_ref::<QueryError>() {
                    return match q {
                        QueryError::Timeout(d) => QueryError::Timeout(*d),
                        other => QueryError::Execution(other.to_string()),
                    };
                }
                QueryError::Execution(e.to_string())
            }
            DataFusionError::ResourcesExhausted(m) => QueryError::ResourcesExhausted(m.clone()),
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => QueryError::Invalid(strip(&e)),
            _ => QueryError::Execution(strip(&e)),
        }
    }
}

/// DataFusion's message without the context wrapping it.
fn strip(e: &DataFusionError) -> String {
    e.find_root().to_string()
}

//! Engine errors. Write errors carry what a client needs to fix its request.

use std::path::Path;

use crate::catalog::SchemaError;

/// Errors opening or running the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("data directory is damaged: {0}")]
    Corrupt(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("a previous write failed and the shard refuses further writes: {0}")]
    Poisoned(String),
}

impl EngineError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    pub fn storage(e: impl std::fmt::Display) -> Self {
        EngineError::Storage(e.to_string())
    }
}

/// Why a write request was refused. Nothing of a refused request is written unless the client
/// asked for partial acceptance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Malformed input; `line` is 1-based and `message` is the parser's, which already names
    /// the line (and the column when one is to blame).
    #[error("{message}")]
    Parse { line: usize, message: String },
    /// Several lines were rejected (partial acceptance reports all of them).
    #[error("{} lines rejected; first: line {}: {}", .0.len(), .0[0].0, .0[0].1)]
    Lines(Vec<(usize, String)>),
    /// A column's kind disagrees with the table's schema or with another line of the request.
    #[error("line {line}: {source}")]
    Conflict { line: usize, source: SchemaError },
    /// An Arrow record batch breaks an ingest rule; `row` is the 0-based row of the batch
    /// when one row is to blame, `column` the column when one is.
    #[error("{}", batch_message(*.row, .column.as_deref(), .message))]
    Batch {
        row: Option<usize>,
        column: Option<String>,
        message: String,
    },
    /// A column of an Arrow record batch disagrees with the table's schema; `row` is the
    /// 0-based first row of the batch with a value in that column.
    #[error("row {row}: {source}")]
    BatchConflict { row: usize, source: SchemaError },
    #[error("invalid database name {0:?}: use 1-64 characters of A-Z a-z 0-9 _ -")]
    Database(String),
    #[error("request has no lines to write")]
    Empty,
    /// Every queue slot is taken: retry later (HTTP 503).
    #[error("ingest queues are full; retry later")]
    Overloaded,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn batch_message(row: Option<usize>, column: Option<&str>, message: &str) -> String {
    match (row, column) {
        (Some(r), Some(c)) => format!("row {r}, column {c:?}: {message}"),
        (Some(r), None) => format!("row {r}: {message}"),
        (None, Some(c)) => format!("column {c:?}: {message}"),
        (None, None) => message.to_owned(),
    }
}

//! # annals-format: the ledger format v1, byte for byte
//!
//! This crate owns the normative encodings of `shared/FORMAT.md`: the canonical row encoding
//! (the leaf data of a block), block headers and block hashes, transaction ids, branch-log and
//! checkpoint encodings, validator-set hashes, device attestations, and the RFC 9162 Merkle Tree
//! Hash with its inclusion and consistency proofs.
//!
//! It must never: do I/O, read a clock, use randomness (except key generation, which the caller
//! asks for explicitly), or depend on any other annals crate. Every function is deterministic.
//!
//! Invariants:
//! - Every encoder is the exact inverse of its decoder; decoders reject anything an encoder
//!   would not produce (trailing bytes, unsorted or repeated columns, bad UTF-8, bool not 0/1).
//! - All integers are little-endian; no `usize` ever reaches the bytes.
//! - The domain byte is always the first byte hashed (see [`hash::Domain`]).
//!
//! The fixed vectors in `shared/vectors/format-v1.json` are reproduced by `tests/vectors.rs`.

pub mod block;
pub mod checkpoint;
mod codec;
pub mod hash;
pub mod merkle;
pub mod row;
pub mod sign;

pub use block::{tx_id, BlockHeader, BranchId};
pub use checkpoint::{validators_hash, BranchEntry, CheckpointHeader, Validator};
pub use hash::{Domain, Hash, ZERO_HASH};
pub use row::{encode_row, ColumnRef, Kind, OwnedColumn, OwnedRow, OwnedValue, ValueRef};

/// The only version of every structure in this crate.
pub const FORMAT_VERSION: u8 = 1;

/// Errors from decoding or validating ledger structures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("unexpected end of input while reading {what}")]
    Truncated { what: &'static str },
    #[error("unsupported {what} version {version} (this build reads version 1)")]
    Version { what: &'static str, version: u8 },
    #[error("{count} trailing bytes after {what}")]
    Trailing { what: &'static str, count: usize },
    #[error("invalid UTF-8 in {what}")]
    Utf8 { what: &'static str },
    #[error("unknown column kind {0}")]
    Kind(u8),
    #[error("bool value must be 0 or 1, found {0}")]
    Bool(u8),
    #[error("columns not sorted by name or repeated: {prev:?} then {next:?}")]
    ColumnOrder { prev: String, next: String },
    #[error("{what} is too long: {len} bytes (max {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid table name {0:?}: expected <db>/<table> with db in [A-Za-z0-9_-]")]
    TableName(String),
    #[error("bad signature: {0}")]
    Signature(String),
    #[error("index {index} out of range for tree of size {size}")]
    ProofRange { index: u64, size: u64 },
}

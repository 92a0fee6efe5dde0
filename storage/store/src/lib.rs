//! # annals-storage: the bytes on disk
//!
//! Owns every durable structure of a node: the per-shard write-ahead log ([`wal`]), the
//! per-branch Merkle log of block headers ([`branch_log`]), the checkpoint log
//! ([`checkpoint_log`]) and the Parquet block files ([`block_file`]).
//!
//! It must never: interpret rows beyond the canonical encoding of `annals-format`, spawn
//! threads, or depend on the engine. Callers own the ordering rules between structures
//! (see `docs/ARCHITECTURE.md`, "Durability order").
//!
//! Invariants:
//! - Every record carries a checksum (xxh3-64) and is validated when read back; a torn tail
//!   (the last record of the last file, incomplete after a crash) is cut, anything else that
//!   fails a check is reported as corruption, never skipped silently.
//! - A failed write or fsync poisons the handle: later calls return the original error.
//! - Branch logs and the checkpoint log only grow; nothing here rewrites a durable byte.

pub mod block_file;
pub mod branch_log;
pub mod checkpoint_log;
pub mod fsutil;
mod tag_chunk;
pub mod tag_filter;
pub mod wal;

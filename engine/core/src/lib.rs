//! # annals-engine: the ingest pipeline of a single node
//!
//! Owns: turning requests into rows ([`prepare`] for line protocol, [`arrow_ingest`] for Arrow
//! record batches), routing rows by series key to shards, each
//! shard's writer thread (positions, WAL, group commit, acknowledgement, seal decisions —
//! [`writer`]), its sealer thread (headers, signatures, block files, branch logs — [`sealer`]),
//! the checkpointer ([`checkpointer`]), table schemas ([`catalog`]), receipts ([`receipt`]),
//! device attestations (registry, replay windows, attestation log — [`attest`]) and recovery at
//! start ([`engine`]).
//!
//! Must never: hold a lock shared by all shards on the write path (the catalog is read
//! lock-free; shards share nothing else while writing), acknowledge a row before the fsync that
//! makes it durable, or let a queue grow without bound (admission is counted per shard in
//! [`slots`], sealing queues are bounded, open blocks have a row budget).
//!
//! Invariants:
//! - A row's `(branch, height, index)` and so its `tx_id` are fixed when it is acknowledged
//!   and never change: positions are logged in the WAL with the rows and replayed as logged.
//! - A seal record is durable before its block reaches the sealer, so a block rebuilt after a
//!   crash has the same header hash as before.
//! - A WAL segment is deleted only when every block with rows in it is in a finished block file.

pub mod arrow_ingest;
mod arrow_tags;
pub mod attest;
pub mod audit;
pub mod catalog;
pub mod checkpointer;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod jsonld;
pub mod keys;
pub mod last_values;
pub mod prepare;
pub mod proof;
pub mod receipt;
pub mod sealer;
pub mod shared;
pub mod slots;
mod sync;
pub mod view;
pub mod walrec;
pub mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::EngineConfig;
pub use engine::{Engine, PendingWrite, RecoveredRequest, RecoveryReport};
pub use error::{EngineError, WriteError};
pub use prepare::PrepareOptions;
pub use receipt::{ReceiptForm, Run, WriteOutcome};

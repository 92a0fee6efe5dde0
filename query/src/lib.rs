//! annals SQL over the ledger, on DataFusion.
//!
//! - Every measurement is a table (`time`, its tags as dictionary strings, its fields) in the
//!   schema of its database; `ledger('m')` adds the ledger columns `_tx_id`, `_branch`,
//!   `_height` and `_index`.
//! - A scan reads sealed blocks (Parquet row groups) and blocks still in memory, so a row is
//!   visible as soon as it is acknowledged. Blocks are pruned before any row is read by their
//!   time range (block headers) and, for tag equality and `IN`, by each block's tag filter.
//! - `system.tables`, `system.blocks`, `system.branches`, `system.checkpoints` and
//!   `system.queries` describe the ledger.
//! - `SET annals.as_of_epoch = N` pins a session to checkpoint `N`: blocks committed after it
//!   are invisible, and so are rows not yet in any block.
//! - `ledger_proof(_branch, _height, _index)` returns a row's proof document (see [`proof`]).
//! - [`subscribe`]: live subscriptions to a table's committed rows, in commit order, each batch
//!   tagged with the cursor to resume from.
//! - `last_values('m')` answers "latest row per series" from a cache kept at ingest, and
//!   `row_number() OVER (PARTITION BY .. ORDER BY time DESC) = 1` keeps the newest row per
//!   key in one pass instead of sorting the table (see [`topn`] and [`newest`]).
//! - That query filtered by tags only reads the last-value cache instead of the table (see
//!   [`from_cache`]).
//! - Grouping by tags compares keys column by column instead of in row format (see
//!   [`groupkeys`]).
//!
//! Layering: this crate reads the engine's snapshot API and the storage crate's block files; it
//! never writes.

pub mod error;
pub mod from_cache;
pub mod groupkeys;
pub mod last_values;
pub mod newest;
pub mod options;
pub mod proof;
pub mod registry;
pub mod scan;
pub mod service;
pub mod subscribe;
pub mod system;
pub mod table;
pub mod tagkey;
pub mod topn;

pub use error::QueryError;
pub use service::{QueryConfig, QueryOutput, QueryRequest, QueryService};
pub use subscribe::{Cursor, Delivery, SubscribeError, SubscribeRequest, Subscription};

//! Engine configuration with validated, named bounds.

use std::path::PathBuf;
use std::time::Duration;

/// Most shards a node may run.
pub const SHARDS_MAX: usize = 256;
/// Most rows a block may hold (the header's `row_count` is a `u32`; proofs stay short below this).
pub const BLOCK_ROWS_MAX: usize = 1 << 20;

/// Everything the engine needs to run; [`EngineConfig::validate`] checks it before start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Ingest shards: one writer thread, one WAL and one sealer each.
    pub shards: usize,
    /// A block is sealed when it holds this many rows...
    pub block_rows: usize,
    /// ...or when its oldest row has waited this long.
    pub block_age: Duration,
    /// Interval between checkpoints.
    pub checkpoint_interval: Duration,
    /// A block file is finished when it holds this many rows...
    pub file_rows: u64,
    /// ...or has been open this long (the WAL is kept until then).
    pub file_age: Duration,
    /// Requests waiting in a shard's queue before new writes are refused (back-pressure).
    pub queue_depth: usize,
    /// Rows held in a shard's open blocks before the largest is sealed early.
    pub memtable_rows: usize,
    /// Rows the last-value cache keeps per series.
    pub last_values_count: usize,
    /// WAL segment size before rotation.
    pub wal_segment_bytes: u64,
    /// Skip fsync: acknowledged writes may be lost on power failure (benchmarks only).
    pub unsafe_no_sync: bool,
}

impl EngineConfig {
    /// Defaults for `data_dir`: 2 shards, blocks of 16384 rows or 10 s, checkpoints every 5 s.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            shards: 2,
            block_rows: 16_384,
            block_age: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(5),
            file_rows: 2_000_000,
            file_age: Duration::from_secs(60),
            queue_depth: 64,
            memtable_rows: 1_000_000,
            last_values_count: crate::last_values::DEFAULT_COUNT,
            wal_segment_bytes: 128 << 20,
            unsafe_no_sync: false,
        }
    }

    /// Checks every bound; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(format!(
                "shards must be between 1 and {SHARDS_MAX}, got {}",
                self.shards
            ));
        }
        if self.block_rows == 0 || self.block_rows > BLOCK_ROWS_MAX {
            return Err(format!(
                "block rows must be between 1 and {BLOCK_ROWS_MAX}, got {}",
                self.block_rows
            ));
        }
        if self.block_age.is_zero() {
            return Err("block age must be greater than zero".into());
        }
        if self.checkpoint_interval.is_zero() {
            return Err("checkpoint interval must be greater than zero".into());
        }
        if self.file_rows < self.block_rows as u64 {
            return Err(format!(
                "file rows ({}) must be at least block rows ({})",
                self.file_rows, self.block_rows
            ));
        }
        if self.queue_depth == 0 {
            return Err("queue depth must be at least 1".into());
        }
        if self.memtable_rows < self.block_rows {
            return Err(format!(
                "memtable rows ({}) must be at least block rows ({})",
                self.memtable_rows, self.block_rows
            ));
        }
        if !(1..=1000).contains(&self.last_values_count) {
            return Err(format!(
                "last-values count ({}) must be between 1 and 1000",
                self.last_values_count
            ));
        }
        if self.wal_segment_bytes < (1 << 20) {
            return Err("WAL segment size must be at least 1 MiB".into());
        }
        Ok(())
    }
}

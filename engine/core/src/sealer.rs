//! A shard's sealer thread: block headers, signatures, block files and branch logs.
//!
//! Receives blocks whose seal record is already durable in the WAL, in seal order. For each:
//! computes `rows_root` and the header (chained to the previous block of the branch), signs
//! the block hash, writes the rows as one row group of the branch's open block file, appends
//! header and signature to the branch log and fsyncs it, then publishes the branch head for
//! the checkpointer. When a block file is finished (row or age bound, schema change, flush),
//! its blocks are durable without the WAL and the writer is told so it can trim the WAL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_format::block::{BlockHeader, BranchId};
use annals_format::hash::{to_hex, Hash, ZERO_HASH};
use annals_format::merkle::root_of;
use annals_format::sign::sign;
use annals_storage::block_file::BlockFileWriter;
use annals_storage::branch_log::BranchLog;
use arrow::array::{new_null_array, ArrayRef};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{debug, error, info};

use crate::catalog::TableSchema;
use crate::error::EngineError;
use crate::shared::{BranchHead, Shared};
use crate::view::BlockFile;
use crate::writer::BlockRows;

const IDLE_WAIT_MAX: Duration = Duration::from_millis(500);

/// A block to seal.
#[derive(Debug)]
pub struct SealJob {
    pub branch: BranchId,
    /// The table's schema at sealing; every chunk is widened to it.
    pub table: Arc<TableSchema>,
    pub height: u64,
    pub sealed_at: i64,
    pub context: Hash,
    pub rows: BlockRows,
    pub first_segment: u64,
    /// Set when recovery rebuilds a block the branch log already holds: the rebuilt header
    /// must hash to this.
    pub expect_hash: Option<Hash>,
}

/// What a sealer is asked to do.
#[derive(Debug)]
pub enum SealMsg {
    Seal(Box<SealJob>),
    /// Finish every open block file, then reply.
    Flush {
        reply: Sender<()>,
    },
}

struct OpenFile {
    writer: BlockFileWriter,
    opened: Instant,
    first_segments: Vec<u64>,
}

/// The sealer thread's state.
pub struct Sealer {
    pub shard: usize,
    pub shared: Arc<Shared>,
    pub rx: Receiver<SealMsg>,
    pub persisted: Sender<Vec<u64>>,
    pub logs: HashMap<BranchId, BranchLog>,
    files: HashMap<BranchId, OpenFile>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("shard", &self.shard)
            .field("open_files", &self.files.len())
            .finish()
    }
}

/// Directory of a branch's log.
pub fn branch_dir(data_dir: &std::path::Path, branch: &BranchId) -> PathBuf {
    data_dir.join("branches").join(to_hex(branch))
}

/// Directory of a branch's block files.
pub fn blocks_dir(data_dir: &std::path::Path, branch: &BranchId) -> PathBuf {
    data_dir.join("blocks").join(to_hex(branch))
}

/// Widens chunks to `schema` (null columns for columns a chunk predates).
pub fn widen(
    schema: &TableSchema,
    chunks: &[RecordBatch],
) -> Result<Vec<RecordBatch>, EngineError> {
    let target = &schema.arrow;
    let mut widened = Vec::with_capacity(chunks.len());
    for c in chunks {
        if c.schema() == *target {
            widened.push(c.clone());
            continue;
        }
        let cols: Vec<ArrayRef> = target
            .fields()
            .iter()
            .map(|f| match c.schema().index_of(f.name()) {
                Ok(i) => c.column(i).clone(),
                Err(_) => new_null_array(f.data_type(), c.num_rows()),
            })
            .collect();
        widened.push(RecordBatch::try_new(target.clone(), cols).map_err(EngineError::storage)?);
    }
    Ok(widened)
}

impl Sealer {
    pub fn new(
        shard: usize,
        shared: Arc<Shared>,
        rx: Receiver<SealMsg>,
        persisted: Sender<Vec<u64>>,
        logs: HashMap<BranchId, BranchLog>,
    ) -> Self {
        Self {
            shard,
            shared,
            rx,
            persisted,
            logs,
            files: HashMap::new(),
        }
    }

    pub fn run(mut self) {
        loop {
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .min(IDLE_WAIT_MAX);
            match self.rx.recv_timeout(wait) {
                Ok(SealMsg::Seal(job)) => {
                    if let Err(e) = self.seal(*job) {
                        // Stop: the writer sees the closed channel and refuses further writes;
                        // every acknowledged row stays in the WAL for the next start.
                        error!(shard = self.shard, error = %e, "sealing failed; shard stops");
                        self.shared
                            .fail(format!("shard {}: sealing failed: {e}", self.shard));
                        self.shared.sealer_stopped[self.shard]
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        self.drain_stopped();
                        return;
                    }
                }
                Ok(SealMsg::Flush { reply }) => {
                    self.finish_where(|_| true);
                    let _ = reply.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish_where(|_| true);
                    return;
                }
            }
            let age = self.shared.cfg.file_age;
            let now = Instant::now();
            self.finish_where(|f| now.duration_since(f.opened) >= age);
        }
    }

    /// After a failure: answer every flush (nothing more will be sealed) and drop seal jobs
    /// until the writer hangs up. Returning at once would leave a flush that is already queued
    /// unanswered while its writer, which still holds the channel open, waits for the reply.
    fn drain_stopped(&mut self) {
        for msg in self.rx.iter() {
            if let SealMsg::Flush { reply } = msg {
                let _ = reply.send(());
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let age = self.shared.cfg.file_age;
        self.files
            .values()
            .map(|f| f.opened + age)
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAIT_MAX)
    }

    fn log_for(&mut self, branch: &BranchId, table: &str) -> Result<&mut BranchLog, EngineError> {
        if !self.logs.contains_key(branch) {
            let dir = branch_dir(&self.shared.cfg.data_dir, branch);
            annals_storage::fsutil::create_dir_durable(&dir)
                .map_err(|e| EngineError::io(&dir, e))?;
            let meta = serde_json::json!({ "table": table, "shard": self.shard, "branch": to_hex(branch) });
            let meta_path = dir.join("branch.json");
            annals_storage::fsutil::atomic_write(&meta_path, meta.to_string().as_bytes())
                .map_err(|e| EngineError::io(&meta_path, e))?;
            let log = BranchLog::open(&dir, *branch).map_err(EngineError::storage)?;
            self.logs.insert(*branch, log);
        }
        Ok(self.logs.get_mut(branch).expect("inserted"))
    }

    fn seal(&mut self, job: SealJob) -> Result<(), EngineError> {
        let started = Instant::now();
        let log = self.log_for(&job.branch, &job.table.name)?;
        let size = log.size();
        assert!(
            job.height <= size,
            "block {} sealed before block {} of its branch",
            job.height,
            size
        );
        let prev = if job.height == 0 {
            ZERO_HASH
        } else {
            log.block_hash(job.height - 1)
                .map_err(EngineError::storage)?
        };
        // The roots of the block's proof pieces; `rows_root` is their root (the same tree).
        let chunk_roots = annals_format::merkle::chunk_roots(
            &job.rows.leaf_hashes,
            annals_storage::block_file::PROOF_CHUNK_ROWS,
        );
        let header = BlockHeader {
            table: job.table.name.clone(),
            branch: job.branch,
            height: job.height,
            prev,
            rows_root: root_of(&chunk_roots),
            row_count: job.rows.len() as u32,
            time_min: job.rows.time_min,
            time_max: job.rows.time_max,
            context: job.context,
            sealed_at: job.sealed_at,
        };
        let hash = header.hash();
        if job.height < size {
            // Recovery: the branch log already has this block; the rebuilt one must be identical.
            let logged = log.block_hash(job.height).map_err(EngineError::storage)?;
            if logged != hash || job.expect_hash.is_some_and(|h| h != hash) {
                return Err(EngineError::Corrupt(format!(
                    "block {} of branch {} rebuilt from the WAL hashes to {}, the branch log has {}",
                    job.height,
                    to_hex(&job.branch),
                    to_hex(&hash),
                    to_hex(&logged)
                )));
            }
        }
        let signature = sign(&self.shared.key, &hash);
        let parts = widen(&job.table, &job.rows.chunks)?;

        // The block file: one per branch at a time, one schema per file.
        let roll = self
            .files
            .get(&job.branch)
            .is_some_and(|f| *f.writer.schema() != job.table.arrow);
        if roll {
            self.finish(&job.branch)?;
        }
        if !self.files.contains_key(&job.branch) {
            let dir = blocks_dir(&self.shared.cfg.data_dir, &job.branch);
            annals_storage::fsutil::create_dir_durable(&dir)
                .map_err(|e| EngineError::io(&dir, e))?;
            let writer = BlockFileWriter::create(
                &dir,
                &format!("{:012}", job.height),
                job.table.arrow.clone(),
                self.shared.cfg.block_rows,
            )
            .map_err(EngineError::storage)?;
            self.files.insert(
                job.branch,
                OpenFile {
                    writer,
                    opened: Instant::now(),
                    first_segments: Vec::new(),
                },
            );
        }
        let file = self.files.get_mut(&job.branch).expect("inserted");
        file.writer
            .write_block(&parts, &header, &signature, &chunk_roots)
            .map_err(EngineError::storage)?;
        file.first_segments.push(job.first_segment);
        let full = file.writer.rows() >= self.shared.cfg.file_rows;

        let log = self.logs.get_mut(&job.branch).expect("opened above");
        if job.height == size {
            log.append(&header, &signature)
                .map_err(EngineError::storage)?;
            log.sync().map_err(EngineError::storage)?;
        }
        // Before the head is published: a checkpoint covering this block implies that readers
        // of the in-memory block can see its header (proofs, engine/core/src/proof.rs).
        self.shared
            .views
            .mark_sealed(self.shard, &header, &signature);
        let head = BranchHead {
            table: job.table.name.clone(),
            shard: self.shard,
            size: log.size(),
            root: log.root(),
        };
        self.shared.heads.lock().insert(job.branch, head);
        metrics::counter!("annals_blocks_sealed_total").increment(1);
        metrics::histogram!("annals_seal_seconds").record(started.elapsed().as_secs_f64());
        debug!(
            shard = self.shard,
            height = job.height,
            rows = header.row_count,
            "sealed block"
        );
        if full {
            self.finish(&job.branch)?;
        }
        Ok(())
    }

    fn finish(&mut self, branch: &BranchId) -> Result<(), EngineError> {
        if let Some(f) = self.files.remove(branch) {
            let (path, blocks) = f.writer.finish().map_err(EngineError::storage)?;
            info!(shard = self.shard, path = %path.display(), blocks = blocks.len(), "block file finished");
            // Readers switch from the in-memory blocks to the file in one step.
            let reader = annals_storage::block_file::BlockFileReader::open(&path)
                .map_err(EngineError::storage)?;
            let table = blocks
                .first()
                .and_then(|b| BlockHeader::decode(&b.header).ok())
                .map(|h| h.table)
                .unwrap_or_default();
            let info = BlockFile::from_reader(&reader, *branch, table, self.shard)
                .map_err(|e| EngineError::Corrupt(format!("{}: {e}", path.display())))?;
            self.shared.views.add_file(std::sync::Arc::new(info));
            metrics::counter!("annals_block_files_total").increment(1);
            let _ = self.persisted.send(f.first_segments);
        }
        Ok(())
    }

    fn finish_where(&mut self, pick: impl Fn(&OpenFile) -> bool) {
        let ids: Vec<BranchId> = self
            .files
            .iter()
            .filter(|(_, f)| pick(f))
            .map(|(b, _)| *b)
            .collect();
        for b in ids {
            if let Err(e) = self.finish(&b) {
                error!(shard = self.shard, error = %e, "finishing a block file failed; its blocks stay in the WAL");
            }
        }
    }
}

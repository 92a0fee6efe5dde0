//! The engine: opening (with recovery), accepting writes, flushing and shutting down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use annals_format::block::BranchId;
use annals_format::hash::to_hex;
use annals_format::row::{decode_row, Kind};
use annals_storage::block_file::{BlockFileReader, FILE_SUFFIX, TMP_SUFFIX};
use annals_storage::branch_log::BranchLog;
use annals_storage::checkpoint_log::{CheckpointLog, CheckpointRecord};
use annals_storage::wal::{Wal, WalConfig};
use crossbeam_channel::Sender;
use futures_channel::oneshot;
use parking_lot::Mutex;
use serde::Deserialize;
use tracing::{error, info, warn};

use crate::catalog::Catalog;
use crate::checkpointer::{CheckpointMsg, Checkpointer};
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::error::{EngineError, WriteError};
use crate::prepare::{prepare, ChunkBuilder, ChunkOrigin, PrepareOptions, Prepared, RequestTag};
use crate::receipt::{Run, WriteOutcome};
use crate::sealer::{SealJob, SealMsg, Sealer};
use crate::shared::{BranchHead, Shared};
use crate::slots::{acquire_all, Slots};
use crate::view::{BlockFile, MemBlock, Views};
use crate::walrec::{self, WalRecord};
use crate::writer::{BlockRows, BranchState, OpenBlock, PartResult, Writer, WriterMsg};

/// Blocks waiting for a sealer before its writer waits too.
const SEAL_QUEUE_MAX: usize = 8;
/// File recording the data directory's fixed settings.
const NODE_FILE: &str = "node.json";

/// What recovery found and did at start.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub wal_frames: u64,
    pub wal_bytes_cut: u64,
    pub blocks_resealed: usize,
    pub open_rows_restored: usize,
    pub block_files: usize,
    pub tmp_files_removed: usize,
    /// Block files that failed their checks: reported, never served.
    pub damaged: Vec<String>,
}

struct ShardHandle {
    tx: Sender<WriterMsg>,
    slots: Arc<Slots>,
}

/// A running single-node ledger.
pub struct Engine {
    shared: Arc<Shared>,
    shards: Vec<ShardHandle>,
    checkpoints: Arc<Mutex<CheckpointLog>>,
    cp_tx: Mutex<Option<Sender<CheckpointMsg>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    report: RecoveryReport,
    created_key: bool,
    recovered: Mutex<HashMap<String, RecoveredRequest>>,
    attest: Arc<crate::attest::Attestations>,
    /// Held (locked) for the engine's life.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.shared.cfg.data_dir)
            .field("shards", &self.shards.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct BranchMeta {
    table: String,
    shard: usize,
}

/// A block rebuilt from the WAL.
#[derive(Default)]
struct RecBlock {
    rows: Vec<Vec<u8>>,
    seal: Option<(u32, i64, [u8; 32])>,
    first_segment: u64,
}

/// One shard's answer: to wait for, or known already (a keyed part found in the WAL at start).
#[derive(Debug)]
enum Reply {
    Wait(oneshot::Receiver<PartResult>),
    Ready(Vec<Vec<Run>>),
}

/// What recovery found of a keyed request: its body hash and each part's positions, if durable.
#[derive(Debug, Clone)]
pub struct RecoveredRequest {
    pub body_hash: u64,
    /// The time the original request gave lines without a timestamp; a retry prepares with it
    /// so its rows (and `tx_id`s) are the ones stored.
    pub default_time_ns: i64,
    pub parts: Vec<Option<Vec<Vec<Run>>>>,
}

/// A request queued on its shards, waiting for durability.
#[derive(Debug)]
pub struct PendingWrite {
    replies: Vec<Reply>,
    origins: Vec<Vec<ChunkOrigin>>,
    rows: usize,
    rejected: Vec<(usize, String)>,
}

impl PendingWrite {
    /// Resolves when every row of the request is durable (or the write failed).
    pub async fn wait(self) -> Result<WriteOutcome, WriteError> {
        let mut chunks = Vec::new();
        let mut first_err = None;
        for (reply, origins) in self.replies.into_iter().zip(self.origins) {
            let answer = match reply {
                Reply::Ready(runs) => Ok(Ok(runs)),
                Reply::Wait(rx) => rx.await,
            };
            match answer {
                Ok(Ok(runs)) => chunks.extend(origins.into_iter().zip(runs)),
                Ok(Err(e)) => {
                    first_err.get_or_insert(WriteError::Engine(e));
                }
                Err(_) => {
                    first_err.get_or_insert(WriteError::Engine(EngineError::ShuttingDown));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(WriteOutcome {
                rows: self.rows,
                chunks,
                rejected: self.rejected,
            }),
        }
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                out.push(e.map_err(|e| EngineError::io(dir, e))?.path());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EngineError::io(dir, e)),
    }
    out.sort();
    Ok(out)
}

fn branch_from_hex(name: &str) -> Option<BranchId> {
    let mut b = [0u8; 16];
    hex::decode_to_slice(name, &mut b).ok()?;
    Some(b)
}

impl Engine {
    /// Opens (creating if needed) the data directory, recovers, and starts the threads.
    pub fn open(cfg: EngineConfig, clock: Arc<dyn Clock>) -> Result<Engine, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        let dir = cfg.data_dir.clone();
        for sub in ["", "wal", "branches", "blocks"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| EngineError::io(&p, e))?;
        }
        // One process per data directory: a second one would delete the first's unfinished
        // block files and write the same heights. The lock lives as long as the engine.
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| EngineError::io(&lock_path, e))?;
        lock.try_lock().map_err(|_| {
            EngineError::Config(format!(
                "data directory {} is in use by another annals process",
                dir.display()
            ))
        })?;
        check_node_file(&dir, cfg.shards)?;
        let (key, created_key) = crate::keys::load_or_create(&dir)?;
        let catalog = Arc::new(Catalog::open(&dir)?);
        let attest = Arc::new(
            crate::attest::Attestations::open(&dir.join("attestations"), cfg.unsafe_no_sync)
                .map_err(|e| EngineError::Storage(e.to_string()))?,
        );
        let mut report = RecoveryReport::default();

        // Branch logs.
        let mut logs: Vec<HashMap<BranchId, BranchLog>> =
            (0..cfg.shards).map(|_| HashMap::new()).collect();
        let mut heads = BTreeMap::new();
        for path in read_dir_sorted(&dir.join("branches"))? {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let branch = branch_from_hex(&name).ok_or_else(|| {
                EngineError::Corrupt(format!("unexpected entry {} in branches/", path.display()))
            })?;
            let meta_path = path.join("branch.json");
            let meta: BranchMeta = serde_json::from_slice(
                &std::fs::read(&meta_path).map_err(|e| EngineError::io(&meta_path, e))?,
            )
            .map_err(|e| EngineError::Corrupt(format!("{}: {e}", meta_path.display())))?;
            if meta.shard >= cfg.shards {
                return Err(EngineError::Corrupt(format!(
                    "branch {name} belongs to shard {} of {}",
                    meta.shard, cfg.shards
                )));
            }
            let log = BranchLog::open(&path, branch).map_err(EngineError::storage)?;
            heads.insert(
                branch,
                BranchHead {
                    table: meta.table,
                    shard: meta.shard,
                    size: log.size(),
                    root: log.root(),
                },
            );
            logs[meta.shard].insert(branch, log);
        }

        // Block files: finished ones are checked against the branch logs; unfinished ones are
        // rebuilt from the WAL.
        let mut persisted: HashSet<(BranchId, u64)> = HashSet::new();
        let views = Views::new(cfg.shards);
        // Branches with a damaged file: their missing blocks are reported, not fatal.
        let mut damaged_branches: HashSet<BranchId> = HashSet::new();
        for bdir in read_dir_sorted(&dir.join("blocks"))? {
            let name = bdir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let Some(branch) = branch_from_hex(&name) else {
                report
                    .damaged
                    .push(format!("unexpected entry {}", bdir.display()));
                continue;
            };
            let files = read_dir_sorted(&bdir)?;
            let has_log = logs.iter().any(|m| m.contains_key(&branch));
            if !has_log
                && files
                    .iter()
                    .any(|f| f.to_string_lossy().ends_with(FILE_SUFFIX))
            {
                // Writing on would start the branch again at height 0 and reuse positions.
                return Err(EngineError::Corrupt(format!(
                    "{} holds block files but the branch log branches/{name} is missing; restore it from a backup",
                    bdir.display()
                )));
            }
            for file in files {
                let fname = file.to_string_lossy().to_string();
                if fname.ends_with(TMP_SUFFIX) {
                    std::fs::remove_file(&file).map_err(|e| EngineError::io(&file, e))?;
                    report.tmp_files_removed += 1;
                    continue;
                }
                if !fname.ends_with(FILE_SUFFIX) {
                    continue;
                }
                if let Some(log) = logs.iter_mut().find_map(|m| m.get_mut(&branch)) {
                    match restore_log_tail(&file, log, &key.verifying_key().to_bytes()) {
                        Ok(0) => {}
                        Ok(n) => {
                            warn!(file = %file.display(), records = n, "branch log was behind its block file; restored its tail from the file's footer")
                        }
                        Err(msg) => return Err(EngineError::Corrupt(msg)),
                    }
                }
                let shard_of_log = logs.iter().position(|m| m.contains_key(&branch));
                let log = shard_of_log.and_then(|s| logs[s].get(&branch));
                match check_block_file(&file, &branch, log) {
                    Ok((heights, reader)) => {
                        report.block_files += 1;
                        persisted.extend(heights.iter().map(|&h| (branch, h)));
                        let table = reader
                            .blocks()
                            .first()
                            .and_then(|b| annals_format::block::BlockHeader::decode(&b.header).ok())
                            .map(|h| h.table)
                            .unwrap_or_default();
                        let info = BlockFile::from_reader(
                            &reader,
                            branch,
                            table,
                            shard_of_log.expect("a checked file has a branch log"),
                        )
                        .map_err(|e| EngineError::Corrupt(format!("{}: {e}", file.display())))?;
                        views.add_file(Arc::new(info));
                    }
                    Err(msg) => {
                        // Quarantined, never overwritten: its blocks are rebuilt from the WAL
                        // into a new file if the WAL still has them, else reported as lost.
                        damaged_branches.insert(branch);
                        let aside = file.with_extension("parquet.damaged");
                        std::fs::rename(&file, &aside).map_err(|e| EngineError::io(&file, e))?;
                        annals_storage::fsutil::fsync_dir(&bdir)
                            .map_err(|e| EngineError::io(&bdir, e))?;
                        error!(file = %file.display(), moved_to = %aside.display(), problem = %msg, "DAMAGED BLOCK FILE: quarantined, its blocks will not be served");
                        report.damaged.push(format!(
                            "{}: {msg} (moved to {})",
                            file.display(),
                            aside.display()
                        ));
                    }
                }
            }
        }

        // Heads after any tail restored from block files.
        for m in &logs {
            for (b, log) in m {
                if let Some(h) = heads.get_mut(b) {
                    h.size = log.size();
                    h.root = log.root();
                }
            }
        }
        let checkpoints =
            CheckpointLog::open(&dir.join("checkpoints.log")).map_err(EngineError::storage)?;
        let catalog_tables: Vec<String> = catalog.tables().iter().map(|t| t.name.clone()).collect();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            catalog,
            key,
            clock,
            heads: Mutex::new(heads),
            failure: Mutex::new(None),
            sealer_stopped: (0..cfg.shards)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            views,
            last: crate::last_values::LastValues::new(
                cfg.shards,
                cfg.last_values_count,
                catalog_tables,
            ),
        });
        let checkpoints = Arc::new(Mutex::new(checkpoints));
        let mut threads = Vec::new();
        let mut shards = Vec::new();
        let mut recovered: HashMap<String, RecoveredRequest> = HashMap::new();

        for (shard, shard_logs) in logs.into_iter().enumerate() {
            let wal_dir = dir.join("wal").join(format!("{shard:03}"));
            std::fs::create_dir_all(&wal_dir).map_err(|e| EngineError::io(&wal_dir, e))?;

            // Replay the WAL into per-branch, per-height blocks.
            let mut rec: HashMap<BranchId, BTreeMap<u64, RecBlock>> = HashMap::new();
            let mut tables: HashMap<BranchId, String> = HashMap::new();
            // One pass over the WAL: replay its records, then open it for appending.
            let wal_cfg = WalConfig {
                segment_bytes_max: cfg.wal_segment_bytes,
                no_sync: cfg.unsafe_no_sync,
                ..WalConfig::default()
            };
            let (wal, stats) = Wal::open_with(&wal_dir, wal_cfg, |segment, payload| -> Result<(), String> {
                match walrec::decode(payload)? {
                    WalRecord::Rows { branch, height, first_index, rows } => {
                        if persisted.contains(&(branch, height)) {
                            return Ok(());
                        }
                        let b = rec.entry(branch).or_default().entry(height).or_insert_with(|| RecBlock {
                            first_segment: segment,
                            ..Default::default()
                        });
                        if b.rows.len() != first_index as usize || b.seal.is_some() {
                            return Err(format!(
                                "rows of block {height} of branch {} out of order: index {first_index} after {} rows",
                                to_hex(&branch),
                                b.rows.len()
                            ));
                        }
                        if let (Some(first), false) = (rows.first(), tables.contains_key(&branch)) {
                            let t = decode_row(first).map_err(|e| e.to_string())?.table.to_owned();
                            tables.insert(branch, t);
                        }
                        b.rows.extend(rows.into_iter().map(std::borrow::Cow::into_owned));
                    }
                    WalRecord::Seal { branch, height, row_count, sealed_at, context } => {
                        if persisted.contains(&(branch, height)) {
                            return Ok(());
                        }
                        let b = rec.entry(branch).or_default().entry(height).or_default();
                        if b.rows.len() != row_count as usize {
                            return Err(format!("seal of block {height} names {row_count} rows, the WAL has {}", b.rows.len()));
                        }
                        b.seal = Some((row_count, sealed_at, context));
                    }
                    WalRecord::Request { key, body_hash, default_time, part, parts, runs } => {
                        let r = recovered.entry(key.to_owned()).or_insert_with(|| RecoveredRequest {
                            body_hash,
                            default_time_ns: default_time,
                            parts: vec![None; parts as usize],
                        });
                        if r.body_hash == body_hash && (part as usize) < r.parts.len() {
                            r.parts[part as usize] = Some(runs);
                        }
                    }
                }
                Ok(())
            })
            .map_err(EngineError::storage)?;
            report.wal_frames += stats.frames;
            report.wal_bytes_cut += stats.torn_bytes_cut;

            // Rebuild writer state and the seal jobs recovery owes.
            let mut branches: HashMap<String, BranchState> = HashMap::new();
            let mut segment_refs: BTreeMap<u64, usize> = BTreeMap::new();
            let mut jobs: Vec<SealJob> = Vec::new();
            let mut branch_ids: HashSet<BranchId> = shard_logs.keys().copied().collect();
            branch_ids.extend(rec.keys().copied());
            for branch in branch_ids {
                let log = shard_logs.get(&branch);
                let log_size = log.map(|l| l.size()).unwrap_or(0);
                let table = match (tables.get(&branch), shared.heads.lock().get(&branch)) {
                    (Some(t), _) => t.clone(),
                    (None, Some(h)) => h.table.clone(),
                    (None, None) => continue,
                };
                let blocks = rec.remove(&branch).unwrap_or_default();
                // Every logged block must be in a finished file, in the WAL, or reported damaged.
                for h in 0..log_size {
                    if !persisted.contains(&(branch, h))
                        && !blocks.contains_key(&h)
                        && !damaged_branches.contains(&branch)
                    {
                        return Err(EngineError::Corrupt(format!(
                            "block {h} of branch {} ({table}) is in its branch log but in no block file and not in the WAL",
                            to_hex(&branch)
                        )));
                    }
                }
                let mut next_height = log_size;
                let mut open = None;
                let last = blocks.keys().next_back().copied();
                for (height, b) in blocks {
                    next_height = next_height.max(height + 1);
                    *segment_refs.entry(b.first_segment).or_default() += 1;
                    let (chunk, origin) = rebuild_chunk(&shared.catalog, &table, &b.rows)?;
                    let mem = Arc::new(MemBlock::new(branch, table.clone(), shard, height));
                    mem.push(chunk.batch.clone());
                    mem.publish();
                    shared.views.add_mem(mem.clone());
                    let mut rows = BlockRows::default();
                    rows.push(chunk.batch, &origin.leaf_hashes, &chunk.times);
                    match b.seal {
                        Some((_, sealed_at, context)) => {
                            report.blocks_resealed += 1;
                            jobs.push(SealJob {
                                branch,
                                table: shared.catalog.table(&table).expect("rebuilt table exists"),
                                height,
                                sealed_at,
                                context,
                                rows,
                                first_segment: b.first_segment,
                                expect_hash: log.filter(|l| height < l.size()).and_then(|l| l.block_hash(height).ok()),
                            });
                        }
                        None if Some(height) == last => {
                            report.open_rows_restored += b.rows.len();
                            let mut o = OpenBlock::new(height, b.first_segment, mem);
                            o.rows = rows;
                            open = Some(o);
                        }
                        None => {
                            return Err(EngineError::Corrupt(format!(
                                "WAL of shard {shard}: block {height} of branch {} has no seal but a later block exists",
                                to_hex(&branch)
                            )))
                        }
                    }
                }
                branches.insert(
                    table.clone(),
                    BranchState {
                        branch,
                        table,
                        next_height,
                        open,
                    },
                );
            }
            jobs.sort_by_key(|j| (j.branch, j.height));

            let (seal_tx, seal_rx) = crossbeam_channel::bounded(SEAL_QUEUE_MAX);
            let (persisted_tx, persisted_rx) = crossbeam_channel::unbounded();
            let sealer = Sealer::new(shard, shared.clone(), seal_rx, persisted_tx, shard_logs);
            threads.push(spawn(format!("annals-sealer-{shard}"), move || {
                sealer.run()
            })?);
            for job in jobs {
                seal_tx
                    .send(SealMsg::Seal(Box::new(job)))
                    .map_err(|_| EngineError::Corrupt("sealer stopped during recovery".into()))?;
            }
            let (tx, rx) = crossbeam_channel::unbounded();
            let slots = Arc::new(Slots::new(cfg.queue_depth));
            let mut writer = Writer::new(
                shard,
                shared.clone(),
                rx,
                wal,
                seal_tx,
                persisted_rx,
                slots.clone(),
            );
            writer.branches = branches;
            writer.segment_refs = segment_refs;
            threads.push(spawn(format!("annals-writer-{shard}"), move || {
                writer.run()
            })?);
            shards.push(ShardHandle { tx, slots });
        }

        let (cp_tx, cp_rx) = crossbeam_channel::unbounded();
        let cp = Checkpointer {
            shared: shared.clone(),
            log: checkpoints.clone(),
            rx: cp_rx,
        };
        threads.push(spawn("annals-checkpointer".into(), move || cp.run())?);
        if report.wal_frames > 0 || !report.damaged.is_empty() {
            info!(?report, "recovered");
        }
        if !report.damaged.is_empty() {
            warn!(
                count = report.damaged.len(),
                "data directory has damaged block files; see /health"
            );
        }
        Ok(Engine {
            shared,
            shards,
            checkpoints,
            cp_tx: Mutex::new(Some(cp_tx)),
            threads: Mutex::new(threads),
            report,
            created_key,
            recovered: Mutex::new(recovered),
            attest,
            _lock: lock,
        })
    }

    /// The failure that stopped a shard, if any: writes to it fail until the node restarts
    /// (acknowledged rows stay in the WAL and are recovered then).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }

    /// The node's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.public_key()
    }
    /// Whether this start created the node key.
    pub fn created_key(&self) -> bool {
        self.created_key
    }
    pub fn config(&self) -> &EngineConfig {
        &self.shared.cfg
    }
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.shared.catalog
    }
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }
    pub fn branch_heads(&self) -> BTreeMap<BranchId, BranchHead> {
        self.shared.heads.lock().clone()
    }
    pub fn latest_checkpoint(&self) -> Option<CheckpointRecord> {
        self.checkpoints.lock().latest().cloned()
    }
    /// Requests waiting or being written, per shard.
    /// What readers see now: every finished block file and every block in memory, with
    /// every acknowledged row visible.
    pub fn snapshot(&self) -> crate::view::Snapshot {
        self.shared.views.snapshot()
    }

    /// Device registry, table policies, replay windows and attestation log (see [`crate::attest`]).
    pub fn attestations(&self) -> &Arc<crate::attest::Attestations> {
        &self.attest
    }

    /// The last-value cache (see [`crate::last_values`]).
    pub fn last_values(&self) -> &crate::last_values::LastValues {
        &self.shared.last
    }

    /// The checkpoint of `epoch`, if there is one.
    pub fn checkpoint(&self, epoch: u64) -> Option<CheckpointRecord> {
        self.checkpoints.lock().get(epoch).cloned()
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> Vec<CheckpointRecord> {
        self.checkpoints.lock().iter().cloned().collect()
    }

    /// At most `limit` checkpoints from epoch `from` on, oldest first.
    pub fn checkpoints_from(&self, from: u64, limit: usize) -> Vec<CheckpointRecord> {
        let log = self.checkpoints.lock();
        let all = log.iter().as_slice();
        let start = all.partition_point(|r| r.header.epoch < from);
        all[start..].iter().take(limit).cloned().collect()
    }

    /// How many checkpoints have been written.
    pub fn checkpoint_count(&self) -> u64 {
        self.checkpoints.lock().len()
    }

    pub fn queue_depths(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.slots.in_use()).collect()
    }
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// Parses and validates a line-protocol request (no side effects but new columns).
    pub fn prepare(
        &self,
        db: &str,
        body: &[u8],
        opts: &PrepareOptions,
    ) -> Result<Prepared, WriteError> {
        prepare(&self.shared.catalog, self.shards.len(), db, body, opts)
    }

    /// Queues a prepared request on its shards, all or nothing. When a shard's queue is full
    /// the request is handed back untouched so the caller can wait and retry, or give up (503).
    pub fn submit(&self, prepared: Prepared) -> Result<PendingWrite, Prepared> {
        self.submit_keyed(prepared, None, &[])
    }

    /// [`submit`](Self::submit) for a request with an idempotency key (`(key, body hash)`):
    /// each shard logs the positions of its part with the key, so a retry after a restart can
    /// be answered from the WAL. Parts listed in `done` (from [`recovered_request`](Self::recovered_request))
    /// are not written again; their positions are answered as they were.
    pub fn submit_keyed(
        &self,
        prepared: Prepared,
        key: Option<(&str, u64, i64)>,
        done: &[Option<Vec<Vec<Run>>>],
    ) -> Result<PendingWrite, Prepared> {
        let is_done = |i: usize| done.get(i).is_some_and(|d| d.is_some());
        let slots: Vec<&Slots> = prepared
            .parts
            .iter()
            .enumerate()
            .filter(|(i, _)| !is_done(*i))
            .map(|(_, p)| &*self.shards[p.shard].slots)
            .collect();
        if !acquire_all(&slots) {
            metrics::counter!("annals_writes_throttled_total").increment(1);
            return Err(prepared);
        }
        let Prepared {
            parts,
            origins,
            rows,
            rejected,
        } = prepared;
        let nparts = parts.len() as u16;
        let key: Option<(Arc<str>, u64, i64)> = key.map(|(k, h, t)| (Arc::from(k), h, t));
        let mut replies = Vec::with_capacity(parts.len());
        for (i, mut part) in parts.into_iter().enumerate() {
            if let Some(Some(runs)) = done.get(i) {
                replies.push(Reply::Ready(runs.clone()));
                continue;
            }
            if let Some((k, h, t)) = &key {
                part.request = Some(RequestTag {
                    key: k.clone(),
                    body_hash: *h,
                    default_time_ns: *t,
                    part: i as u16,
                    parts: nparts,
                });
            }
            let (tx, rx) = oneshot::channel();
            let shard = part.shard;
            if let Err(e) = self.shards[shard]
                .tx
                .send(WriterMsg::Write { part, reply: tx })
            {
                // The writer is gone (shutdown); its slot will never be released, which is fine.
                drop(e);
            }
            replies.push(Reply::Wait(rx));
        }
        Ok(PendingWrite {
            replies,
            origins,
            rows,
            rejected,
        })
    }

    /// What recovery found of a keyed request, if its part records were in the WAL.
    pub fn recovered_request(&self, key: &str) -> Option<RecoveredRequest> {
        self.recovered.lock().get(key).cloned()
    }

    /// Forgets a recovered request once its retry has been answered.
    pub fn forget_recovered(&self, key: &str) {
        self.recovered.lock().remove(key);
    }

    /// Seals every open block, finishes every block file and writes a checkpoint; returns the
    /// latest checkpoint epoch. Blocks the calling thread.
    pub fn flush(&self) -> Option<u64> {
        let mut waits = Vec::new();
        for s in &self.shards {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if s.tx.send(WriterMsg::Flush { reply: tx }).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.recv();
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cp_tx
            .lock()
            .as_ref()?
            .send(CheckpointMsg::Now { reply: tx })
            .ok()?;
        rx.recv().ok().flatten()
    }

    /// Flushes everything and stops all threads. Later writes fail with `ShuttingDown`.
    pub fn shutdown(&self) {
        let mut waits = Vec::new();
        for s in &self.shards {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if s.tx.send(WriterMsg::Shutdown { reply: tx }).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.recv();
        }
        drop(self.cp_tx.lock().take());
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| EngineError::Io {
            path: name,
            source: e,
        })
}

/// Records the data directory's shard count at creation; refuses to run it with another.
fn check_node_file(dir: &Path, shards: usize) -> Result<(), EngineError> {
    let path = dir.join(NODE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| EngineError::Corrupt(format!("{}: {e}", path.display())))?;
            let have = v["shards"].as_u64().unwrap_or(0) as usize;
            if have != shards {
                return Err(EngineError::Config(format!(
                    "data directory {} was created with {have} shards; start it with --shards {have}",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let v = serde_json::json!({ "format": 1, "shards": shards });
            annals_storage::fsutil::atomic_write(&path, v.to_string().as_bytes())
                .map_err(|e| EngineError::io(&path, e))
        }
        Err(e) => Err(EngineError::io(&path, e)),
    }
}

/// A branch log can only be behind a finished block file if its last records were lost (the log
/// is fsynced before a file is finished, so only damage does that). The file's footer holds the
/// same headers and signatures: re-append the missing ones, each checked against the node's
/// key and the log's chain, so heights are never reused. Returns how many were restored.
fn restore_log_tail(path: &Path, log: &mut BranchLog, pubkey: &[u8; 32]) -> Result<usize, String> {
    let Ok(reader) = BlockFileReader::open(path) else {
        return Ok(0);
    }; // reported by check_block_file
    let mut restored = 0;
    for b in reader.blocks() {
        let Ok(h) = annals_format::block::BlockHeader::decode(&b.header) else {
            return Ok(restored);
        };
        if h.height < log.size() {
            continue;
        }
        if h.height > log.size() {
            return Err(format!(
                "{}: holds block {} but the branch log ends at {}: records in between are lost",
                path.display(),
                h.height,
                log.size()
            ));
        }
        let sig: [u8; 64] = b
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| format!("{}: bad signature length", path.display()))?;
        annals_format::sign::verify(pubkey, &h.hash(), &sig)
            .map_err(|e| format!("{}: block {}: {e}", path.display(), h.height))?;
        log.append(&h, &sig)
            .map_err(|e| format!("{}: restoring block {}: {e}", path.display(), h.height))?;
        restored += 1;
    }
    if restored > 0 {
        log.sync().map_err(|e| e.to_string())?;
    }
    Ok(restored)
}

/// Checks a finished block file against its branch log; returns the heights it holds.
fn check_block_file(
    path: &Path,
    branch: &BranchId,
    log: Option<&BranchLog>,
) -> Result<(Vec<u64>, BlockFileReader), String> {
    let reader = BlockFileReader::open(path).map_err(|e| e.to_string())?;
    let log = log.ok_or_else(|| format!("no branch log for branch {}", to_hex(branch)))?;
    let mut heights = Vec::with_capacity(reader.blocks().len());
    for b in reader.blocks() {
        let h = annals_format::block::BlockHeader::decode(&b.header).map_err(|e| e.to_string())?;
        if h.branch != *branch {
            return Err(format!(
                "row group {} belongs to branch {}",
                b.row_group,
                to_hex(&h.branch)
            ));
        }
        if h.height >= log.size() {
            return Err(format!(
                "row group {} holds block {} beyond the branch log (size {})",
                b.row_group,
                h.height,
                log.size()
            ));
        }
        let (_, logged_bytes, logged_sig) = log.header(h.height).map_err(|e| e.to_string())?;
        if logged_bytes != b.header || logged_sig.as_slice() != b.signature.as_slice() {
            return Err(format!(
                "row group {}: header or signature of block {} differs from the branch log",
                b.row_group, h.height
            ));
        }
        heights.push(h.height);
    }
    Ok((heights, reader))
}

/// Rebuilds an Arrow chunk from canonical row encodings (recovery).
fn rebuild_chunk(
    catalog: &Catalog,
    table: &str,
    rows: &[Vec<u8>],
) -> Result<(crate::prepare::Chunk, ChunkOrigin), EngineError> {
    let mut decoded = Vec::with_capacity(rows.len());
    let mut cols: Vec<(&str, Kind)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for r in rows {
        let row = decode_row(r).map_err(|e| EngineError::Corrupt(format!("WAL row: {e}")))?;
        if row.table != table {
            return Err(EngineError::Corrupt(format!(
                "WAL row of table {} in a block of {table}",
                row.table
            )));
        }
        for c in &row.columns {
            if seen.insert(c.name) {
                cols.push((c.name, c.value.kind()));
            }
        }
        decoded.push(row);
    }
    let schema = catalog.ensure(table, &cols)?;
    let mut b = ChunkBuilder::new(schema, rows.len());
    for row in &decoded {
        b.push(0, row.time, &row.columns);
    }
    let (chunk, origin) = b.finish();
    debug_assert!((0..rows.len()).all(|i| chunk.encoding(i) == &rows[i][..]));
    Ok((chunk, origin))
}

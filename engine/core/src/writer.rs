//! A shard's writer thread: positions, WAL, group commit, acknowledgement, seal decisions.
//!
//! The only thread that touches the shard's WAL and its open blocks. Each turn it takes every
//! queued request (up to [`GROUP_MAX`]), assigns each row its `(branch, height, index)`, appends
//! the rows to the WAL, decides which blocks to seal (full, aged, or over the memory budget),
//! then makes all of it durable with **one** fsync and only then acknowledges. Sealed blocks
//! go to the sealer after that fsync, so nothing downstream ever depends on a non-durable seal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_format::block::BranchId;
use annals_format::hash::Hash;
use annals_storage::wal::Wal;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_channel::oneshot;
use tracing::{debug, error};

use crate::catalog::TableSchema;
use crate::error::EngineError;
use crate::prepare::{Chunk, ShardPart};
use crate::receipt::Run;
use crate::sealer::{SealJob, SealMsg};
use crate::shared::{branch_id, Shared};
use crate::slots::Slots;
use crate::view::MemBlock;
use crate::walrec;

/// Most requests one group commit covers.
pub const GROUP_MAX: usize = 256;
/// Most row bytes in one WAL rows record (the WAL refuses frames over 64 MiB).
pub const WAL_FRAME_ROWS_BYTES_MAX: usize = 8 << 20;
/// Longest the writer sleeps when idle (it also wakes for block ages).
const IDLE_WAIT_MAX: Duration = Duration::from_millis(200);

/// The positions of a part's rows, per chunk, or why it failed.
pub type PartResult = Result<Vec<Vec<Run>>, EngineError>;
/// Where a part's result goes.
pub type Reply = oneshot::Sender<PartResult>;

/// What a writer is asked to do.
#[derive(Debug)]
pub enum WriterMsg {
    Write {
        part: ShardPart,
        reply: Reply,
    },
    /// Seal every open block and finish every block file, then reply.
    Flush {
        reply: Sender<()>,
    },
    /// Flush, then stop.
    Shutdown {
        reply: Sender<()>,
    },
}

/// The rows of a block: Arrow chunks in ledger order, their leaf hashes and time range.
#[derive(Debug)]
pub struct BlockRows {
    pub chunks: Vec<RecordBatch>,
    pub leaf_hashes: Vec<Hash>,
    pub time_min: i64,
    pub time_max: i64,
}

impl Default for BlockRows {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            leaf_hashes: Vec::new(),
            time_min: i64::MAX,
            time_max: i64::MIN,
        }
    }
}

impl BlockRows {
    pub fn len(&self) -> usize {
        self.leaf_hashes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.leaf_hashes.is_empty()
    }
    pub fn push(&mut self, batch: RecordBatch, leaf_hashes: &[Hash], times: &[i64]) {
        debug_assert_eq!(batch.num_rows(), leaf_hashes.len());
        for &t in times {
            self.time_min = self.time_min.min(t);
            self.time_max = self.time_max.max(t);
        }
        self.leaf_hashes.extend_from_slice(leaf_hashes);
        self.chunks.push(batch);
    }
}

/// A block being filled.
#[derive(Debug)]
pub struct OpenBlock {
    pub height: u64,
    pub rows: BlockRows,
    pub opened: Instant,
    /// The first WAL segment holding its rows.
    pub first_segment: u64,
    /// The same rows as readers see them.
    pub mem: Arc<MemBlock>,
}

impl OpenBlock {
    pub fn new(height: u64, first_segment: u64, mem: Arc<MemBlock>) -> Self {
        Self {
            height,
            rows: BlockRows::default(),
            opened: Instant::now(),
            first_segment,
            mem,
        }
    }
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// A branch as its writer sees it.
#[derive(Debug)]
pub struct BranchState {
    pub branch: BranchId,
    pub table: String,
    /// Height the next opened block gets.
    pub next_height: u64,
    pub open: Option<OpenBlock>,
}

/// The writer thread's state.
pub struct Writer {
    pub shard: usize,
    pub shared: Arc<Shared>,
    pub rx: Receiver<WriterMsg>,
    pub wal: Wal,
    pub sealer: Sender<SealMsg>,
    pub persisted: Receiver<Vec<u64>>,
    pub slots: Arc<Slots>,
    pub branches: HashMap<String, BranchState>,
    /// Open blocks and sealed-but-not-in-a-finished-file blocks, by the first WAL segment that
    /// holds their rows: segments below the smallest key may be deleted.
    pub segment_refs: BTreeMap<u64, usize>,
    pub pending: Vec<SealJob>,
    pub poisoned: Option<String>,
    /// Blocks given rows this turn; made visible once the turn's fsync succeeded.
    unpublished: Vec<Arc<MemBlock>>,
    /// Chunks of this turn with their newest row per series, for the last-value cache.
    newest: Vec<(String, RecordBatch, crate::last_values::Newest)>,
    buf: Vec<u8>,
    batches: walrec::BatchEncoder,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("shard", &self.shard)
            .field("branches", &self.branches.len())
            .finish()
    }
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: usize,
        shared: Arc<Shared>,
        rx: Receiver<WriterMsg>,
        wal: Wal,
        sealer: Sender<SealMsg>,
        persisted: Receiver<Vec<u64>>,
        slots: Arc<Slots>,
    ) -> Self {
        Self {
            shard,
            shared,
            rx,
            wal,
            sealer,
            persisted,
            slots,
            branches: HashMap::new(),
            segment_refs: BTreeMap::new(),
            pending: Vec::new(),
            poisoned: None,
            unpublished: Vec::new(),
            newest: Vec::new(),
            buf: Vec::with_capacity(1 << 20),
            batches: walrec::BatchEncoder::default(),
        }
    }

    /// Refuses every later write of this shard and reports why (first cause kept).
    fn poison(&mut self, why: String) {
        self.shared.fail(format!("shard {}: {why}", self.shard));
        self.poisoned.get_or_insert(why);
    }

    fn open_rows(&self) -> usize {
        self.branches
            .values()
            .filter_map(|b| b.open.as_ref())
            .map(|o| o.rows())
            .sum()
    }

    fn next_deadline(&self) -> Instant {
        let age = self.shared.cfg.block_age;
        self.branches
            .values()
            .filter_map(|b| b.open.as_ref())
            .map(|o| o.opened + age)
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAIT_MAX)
    }

    /// Runs until shutdown or until every sender is gone.
    pub fn run(mut self) {
        loop {
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .min(IDLE_WAIT_MAX);
            let mut msgs = Vec::new();
            match self.rx.recv_timeout(wait) {
                Ok(m) => msgs.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush_all();
                    return;
                }
            }
            while msgs.len() < GROUP_MAX {
                match self.rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            let mut acks = Vec::new();
            let mut flushes = Vec::new();
            let mut shutdown = None;
            for m in msgs {
                match m {
                    WriterMsg::Write { part, reply } => {
                        let result = self.apply(part);
                        acks.push((reply, result));
                    }
                    WriterMsg::Flush { reply } => flushes.push(reply),
                    WriterMsg::Shutdown { reply } => shutdown = Some(reply),
                }
            }
            let flush = !flushes.is_empty() || shutdown.is_some();
            if flush {
                self.seal_all();
            } else {
                self.seal_aged();
                self.seal_over_budget();
            }
            self.commit(acks);
            if flush {
                self.flush_sealer();
                for r in flushes {
                    let _ = r.send(());
                }
                if let Some(r) = shutdown {
                    self.retire_wal();
                    let _ = r.send(());
                    return;
                }
            }
            self.trim_wal();
        }
    }

    /// One fsync for everything appended this turn, then acknowledgements, then seal jobs.
    fn commit(&mut self, acks: Vec<(Reply, PartResult)>) {
        if self.poisoned.is_none() && (!acks.is_empty() || !self.pending.is_empty()) {
            let started = Instant::now();
            if let Err(e) = self.wal.sync() {
                error!(shard = self.shard, error = %e, "WAL sync failed; shard refuses further writes");
                self.poison(e.to_string());
            }
            metrics::histogram!("annals_wal_sync_seconds").record(started.elapsed().as_secs_f64());
        }
        // Visible before acknowledged: the client's next query sees its rows. Rows of a
        // poisoned turn are not durable and stay invisible (recovery brings them back).
        if self.poisoned.is_none() {
            for m in self.unpublished.drain(..) {
                m.publish();
            }
            for (table, batch, newest) in self.newest.drain(..) {
                if let Some(t) = self.shared.catalog.table(&table) {
                    self.shared
                        .last
                        .update(self.shard, &table, &t.arrow, &batch, &newest);
                }
            }
        } else {
            self.unpublished.clear();
            self.newest.clear();
        }
        // Slots first: a client that sends its next request as soon as it hears back must find
        // its own slot free again.
        for _ in 0..acks.len() {
            self.slots.release();
        }
        for (reply, result) in acks {
            let result = match (&self.poisoned, result) {
                (Some(p), _) => Err(EngineError::Poisoned(p.clone())),
                (None, r) => r,
            };
            let _ = reply.send(result);
        }
        if self.poisoned.is_some() {
            // Seal jobs of a poisoned shard are not durable; drop them (recovery rebuilds from the WAL).
            self.pending.clear();
            return;
        }
        let mut stopped = false;
        for job in std::mem::take(&mut self.pending) {
            // Bounded channel: a slow sealer slows this writer, which fills its queue, which
            // makes new requests wait and then get 503. That is the back-pressure chain.
            if self.sealer.send(SealMsg::Seal(Box::new(job))).is_err() {
                stopped = true;
                break;
            }
        }
        if stopped {
            self.poison("sealer thread stopped".into());
        }
    }

    fn apply(&mut self, part: ShardPart) -> PartResult {
        if self.poisoned.is_none()
            && self.shared.sealer_stopped[self.shard].load(std::sync::atomic::Ordering::SeqCst)
        {
            self.poison("sealer thread stopped".into());
        }
        if let Some(p) = &self.poisoned {
            return Err(EngineError::Poisoned(p.clone()));
        }
        let mut out = Vec::with_capacity(part.chunks.len());
        for chunk in part.chunks {
            match self.apply_chunk(chunk) {
                Ok(runs) => out.push(runs),
                Err(e) => {
                    self.poison(e.to_string());
                    return Err(e);
                }
            }
        }
        if let Some(tag) = &part.request {
            // Same group commit as the rows: a durable request record implies durable rows.
            self.buf.clear();
            walrec::encode_request(
                &mut self.buf,
                &tag.key,
                tag.body_hash,
                tag.default_time_ns,
                tag.part,
                tag.parts,
                &out,
            );
            if let Err(e) = self.wal.append(&self.buf) {
                let e = EngineError::storage(e);
                self.poison(e.to_string());
                return Err(e);
            }
        }
        Ok(out)
    }

    fn branch_for(&mut self, table: &TableSchema) -> &mut BranchState {
        let shard = self.shard;
        let key = self.shared.public_key();
        self.branches
            .entry(table.name.clone())
            .or_insert_with(|| BranchState {
                branch: branch_id(&key, shard, &table.name),
                table: table.name.clone(),
                next_height: 0,
                open: None,
            })
    }

    fn apply_chunk(&mut self, chunk: Chunk) -> Result<Vec<Run>, EngineError> {
        let block_rows = self.shared.cfg.block_rows;
        let n = chunk.rows();
        let mut runs = Vec::new();
        let mut off = 0;
        let segment = self.wal.current_segment();
        let shard = self.shard;
        let shared = self.shared.clone();
        while off < n {
            let st = self.branch_for(&chunk.table);
            if st.open.is_none() {
                let mem = Arc::new(MemBlock::new(
                    st.branch,
                    st.table.clone(),
                    shard,
                    st.next_height,
                ));
                shared.views.add_mem(mem.clone());
                st.open = Some(OpenBlock::new(st.next_height, segment, mem));
                st.next_height += 1;
                *self.segment_refs.entry(segment).or_default() += 1;
            }
            let st = self
                .branches
                .get_mut(&chunk.table.name)
                .expect("just inserted");
            let blk = st.open.as_mut().expect("opened above");
            if blk.rows() >= block_rows {
                // A block restored from the WAL under a larger --block-rows: seal it as it is.
                let table = st.table.clone();
                self.seal(&table)?;
                continue;
            }
            let mut take = (n - off).min(block_rows - blk.rows());
            // Keep each WAL frame well under the WAL's frame bound, however wide the rows.
            let start = chunk.offsets[off] as usize;
            while take > 1 && chunk.offsets[off + take] as usize - start > WAL_FRAME_ROWS_BYTES_MAX
            {
                take /= 2;
            }
            let first_index = blk.rows() as u32;
            let rows_batch = chunk.batch.slice(off, take);
            // Logged as columns, or as canonical encodings when those are smaller (walrec).
            let row_bytes = chunk.offsets[off + take] as usize - start;
            let rows_len = walrec::rows_record_len(take, row_bytes);
            self.buf.clear();
            self.batches
                .encode(
                    &mut self.buf,
                    &st.branch,
                    blk.height,
                    first_index,
                    &chunk.table.name,
                    &rows_batch,
                )
                .map_err(|e| EngineError::storage(format!("WAL batch record: {e}")))?;
            let logged = if self.buf.len() < rows_len {
                metrics::counter!("annals_wal_row_bytes_total", "form" => "columns")
                    .increment(self.buf.len() as u64);
                self.wal.append(&self.buf)
            } else {
                metrics::counter!("annals_wal_row_bytes_total", "form" => "encodings")
                    .increment(rows_len as u64);
                // Encoded straight into the WAL's buffer.
                self.wal.append_with(rows_len, |buf| {
                    walrec::encode_rows(
                        buf,
                        &st.branch,
                        blk.height,
                        first_index,
                        (off..off + take).map(|i| chunk.encoding(i)),
                    )
                })
            };
            logged.map_err(EngineError::storage)?;
            blk.mem.push(rows_batch.clone());
            if self
                .unpublished
                .last()
                .is_none_or(|m| !Arc::ptr_eq(m, &blk.mem))
            {
                self.unpublished.push(blk.mem.clone());
            }
            blk.rows.push(
                rows_batch,
                &chunk.leaf_hashes[off..off + take],
                &chunk.times[off..off + take],
            );
            runs.push(Run {
                branch: st.branch,
                height: blk.height,
                first_index,
                count: take as u32,
            });
            off += take;
            if blk.rows() >= block_rows {
                let table = st.table.clone();
                self.seal(&table)?;
            }
        }
        metrics::counter!("annals_rows_written_total").increment(n as u64);
        if !chunk.newest.is_empty() {
            self.newest
                .push((chunk.table.name.clone(), chunk.batch, chunk.newest));
        }
        Ok(runs)
    }

    /// Seals the open block of `table`: a seal record goes to the WAL now, the job to the
    /// sealer after the next fsync.
    fn seal(&mut self, table: &str) -> Result<(), EngineError> {
        let st = self.branches.get_mut(table).expect("branch exists");
        let Some(blk) = st.open.take() else {
            return Ok(());
        };
        let schema = self
            .shared
            .catalog
            .table(table)
            .expect("a table with rows is in the catalog");
        let sealed_at = self.shared.clock.now_ns();
        self.buf.clear();
        walrec::encode_seal(
            &mut self.buf,
            &st.branch,
            blk.height,
            blk.rows() as u32,
            sealed_at,
            &schema.context_hash,
        );
        self.wal.append(&self.buf).map_err(EngineError::storage)?;
        debug!(
            shard = self.shard,
            table,
            height = blk.height,
            rows = blk.rows(),
            "sealing block"
        );
        self.pending.push(SealJob {
            branch: st.branch,
            table: schema.clone(),
            height: blk.height,
            sealed_at,
            context: schema.context_hash,
            rows: blk.rows,
            first_segment: blk.first_segment,
            expect_hash: None,
        });
        Ok(())
    }

    fn seal_where(&mut self, pick: impl Fn(&OpenBlock) -> bool) {
        if self.poisoned.is_some() {
            return;
        }
        let tables: Vec<String> = self
            .branches
            .values()
            .filter(|b| b.open.as_ref().is_some_and(&pick))
            .map(|b| b.table.clone())
            .collect();
        for t in tables {
            if let Err(e) = self.seal(&t) {
                self.poison(e.to_string());
                return;
            }
        }
    }

    fn seal_all(&mut self) {
        self.seal_where(|_| true);
    }

    fn seal_aged(&mut self) {
        let age = self.shared.cfg.block_age;
        let now = Instant::now();
        self.seal_where(|o| now.duration_since(o.opened) >= age);
    }

    /// Keeps the open blocks of this shard under the memory budget by sealing the largest.
    fn seal_over_budget(&mut self) {
        let budget = self.shared.cfg.memtable_rows;
        while self.poisoned.is_none() && self.open_rows() > budget {
            let Some(t) = self
                .branches
                .values()
                .filter_map(|b| b.open.as_ref().map(|o| (o.rows(), b.table.clone())))
                .max()
                .map(|(_, t)| t)
            else {
                break;
            };
            if let Err(e) = self.seal(&t) {
                self.poison(e.to_string());
            }
        }
    }

    /// Asks the sealer to finish every file and waits for it; returns when all sealed blocks
    /// are in finished files.
    fn flush_sealer(&mut self) -> Option<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.sealer.send(SealMsg::Flush { reply: tx }).ok()?;
        rx.recv().ok()?;
        self.trim_wal();
        Some(())
    }

    fn flush_all(&mut self) {
        self.seal_all();
        self.commit(Vec::new());
        self.flush_sealer();
    }

    /// At shutdown, once every block is in a finished file: start a fresh segment and delete
    /// the rest, so the next start has nothing to replay.
    fn retire_wal(&mut self) {
        self.trim_wal();
        if self.poisoned.is_some() || !self.segment_refs.is_empty() {
            return;
        }
        if let Err(e) = self.wal.rotate_now() {
            error!(shard = self.shard, error = %e, "could not rotate the WAL at shutdown");
            return;
        }
        self.trim_wal();
    }

    /// Deletes WAL segments every block of which is in a finished block file.
    fn trim_wal(&mut self) {
        while let Ok(segments) = self.persisted.try_recv() {
            for s in segments {
                match self.segment_refs.get_mut(&s) {
                    Some(c) if *c > 1 => *c -= 1,
                    Some(_) => {
                        self.segment_refs.remove(&s);
                    }
                    None => error!(
                        shard = self.shard,
                        segment = s,
                        "persisted notice for an untracked segment"
                    ),
                }
            }
        }
        if self.poisoned.is_some() {
            return;
        }
        let keep_from = self
            .segment_refs
            .keys()
            .next()
            .copied()
            .unwrap_or(self.wal.current_segment());
        if let Err(e) = self.wal.remove_segments_before(keep_from) {
            error!(shard = self.shard, error = %e, "could not delete old WAL segments");
        }
    }
}

//! What readers see: per shard, the finished block files and the blocks still in memory.
//!
//! A block lives in memory from the moment it is opened until the block file holding it is
//! finished; then it moves to that file's entry in one step under the shard's view lock, so a
//! reader that takes a [`Snapshot`] sees every block exactly once. Rows of an open block become
//! visible when the writer's group commit has made them durable and before they are
//! acknowledged: an acknowledged row is visible to the very next query.
//!
//! The writer appends chunks to a block under that block's own lock and publishes how many are
//! visible with one atomic store per turn; readers never wait for the writer's fsync.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use annals_format::block::{BlockHeader, BranchId};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use parquet::file::metadata::ParquetMetaData;

/// A block whose rows are in memory: open, or sealed but not yet in a finished block file.
#[derive(Debug)]
pub struct MemBlock {
    pub branch: BranchId,
    pub table: String,
    pub shard: usize,
    pub height: u64,
    chunks: RwLock<Vec<RecordBatch>>,
    visible: AtomicUsize,
    /// Header and signature, once the sealer has appended the block to its branch log (until
    /// then the block is open or waiting to be sealed). Proofs of rows whose block file is not
    /// finished yet read them here.
    sealed: OnceLock<(BlockHeader, [u8; 64])>,
}

impl MemBlock {
    pub fn new(branch: BranchId, table: String, shard: usize, height: u64) -> Self {
        Self {
            branch,
            table,
            shard,
            height,
            chunks: RwLock::new(Vec::new()),
            visible: AtomicUsize::new(0),
            sealed: OnceLock::new(),
        }
    }

    /// The block's header and signature if it is sealed (its branch log holds it).
    pub fn sealed(&self) -> Option<&(BlockHeader, [u8; 64])> {
        self.sealed.get()
    }

    /// Appends a chunk; readers see it after the next [`MemBlock::publish`].
    pub fn push(&self, batch: RecordBatch) {
        self.chunks.write().push(batch);
    }

    /// Makes every appended chunk visible.
    pub fn publish(&self) {
        let n = self.chunks.read().len();
        self.visible.store(n, Ordering::Release);
    }

    /// The visible chunks, in ledger order. Chunks may carry an older schema of the table
    /// (fewer columns); readers widen them.
    pub fn chunks(&self) -> Vec<RecordBatch> {
        let n = self.visible.load(Ordering::Acquire);
        self.chunks.read()[..n].to_vec()
    }

    pub fn visible_rows(&self) -> usize {
        self.chunks().iter().map(|c| c.num_rows()).sum()
    }
}

/// One block of a finished block file.
#[derive(Debug, Clone)]
pub struct FileBlock {
    pub header: BlockHeader,
    pub signature: [u8; 64],
    pub row_group: usize,
    pub tags: Option<annals_storage::tag_filter::TagFilter>,
    /// Roots of the block's proof pieces (`annals_storage::block_file::PROOF_CHUNK_ROWS` rows
    /// each); empty when the file does not record them.
    pub chunk_roots: Vec<annals_format::hash::Hash>,
    /// Set once a proof has checked `signature` against the node's key (the bytes never
    /// change while the file is open), so later proofs of the block skip the Ed25519 check.
    pub signature_checked: OnceLock<()>,
}

/// A finished block file: one branch, one schema, blocks in height order.
#[derive(Debug)]
pub struct BlockFile {
    pub path: PathBuf,
    pub branch: BranchId,
    pub table: String,
    pub shard: usize,
    pub schema: SchemaRef,
    pub blocks: Vec<FileBlock>,
    pub bytes: u64,
    /// The Parquet footer, parsed once.
    pub parquet: Arc<ParquetMetaData>,
    /// The file mapped, with its footer and page index: opened by the first read of its rows
    /// (a scan or a proof), see [`BlockFile::page_reader`].
    pub pages: OnceLock<annals_storage::block_file::PageReader>,
}

impl BlockFile {
    /// The file's [`PageReader`](annals_storage::block_file::PageReader), opened (mapped) by
    /// the first read of the file's rows and kept with the file.
    pub fn page_reader(
        &self,
    ) -> Result<&annals_storage::block_file::PageReader, annals_storage::block_file::BlockFileError>
    {
        if let Some(p) = self.pages.get() {
            return Ok(p);
        }
        let p = annals_storage::block_file::PageReader::open(&self.path)?;
        Ok(self.pages.get_or_init(|| p))
    }
}

/// One shard's readable state.
#[derive(Debug, Clone, Default)]
pub struct ShardView {
    pub files: Arc<Vec<Arc<BlockFile>>>,
    pub mem: BTreeMap<(BranchId, u64), Arc<MemBlock>>,
}

/// The readable state of every shard, taken at one instant per shard.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub shards: Vec<ShardView>,
}

impl Snapshot {
    pub fn files(&self) -> impl Iterator<Item = &Arc<BlockFile>> {
        self.shards.iter().flat_map(|s| s.files.iter())
    }
    pub fn mem_blocks(&self) -> impl Iterator<Item = &Arc<MemBlock>> {
        self.shards.iter().flat_map(|s| s.mem.values())
    }
}

/// The views of all shards; each shard's view has its own lock.
#[derive(Debug)]
pub struct Views {
    shards: Vec<Mutex<ShardView>>,
}

impl Views {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(ShardView::default()))
                .collect(),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            shards: self.shards.iter().map(|s| s.lock().clone()).collect(),
        }
    }

    /// A block opened (or rebuilt by recovery) in memory.
    pub fn add_mem(&self, block: Arc<MemBlock>) {
        self.shards[block.shard]
            .lock()
            .mem
            .insert((block.branch, block.height), block);
    }

    /// A block was appended to its branch log: readers of the in-memory block get its header
    /// and signature. A block no longer in memory (its file already finished) needs nothing.
    pub fn mark_sealed(&self, shard: usize, header: &BlockHeader, signature: &[u8; 64]) {
        let v = self.shards[shard].lock();
        if let Some(b) = v.mem.get(&(header.branch, header.height)) {
            let _ = b.sealed.set((header.clone(), *signature));
        }
    }

    /// A file finished: its blocks leave memory and appear in the file, in one step.
    pub fn add_file(&self, file: Arc<BlockFile>) {
        let mut v = self.shards[file.shard].lock();
        for b in &file.blocks {
            v.mem.remove(&(file.branch, b.header.height));
        }
        Arc::make_mut(&mut v.files).push(file);
    }
}

impl BlockFile {
    /// Describes an opened, already checked block file.
    pub fn from_reader(
        reader: &annals_storage::block_file::BlockFileReader,
        branch: BranchId,
        table: String,
        shard: usize,
    ) -> Result<Self, String> {
        let mut blocks = Vec::with_capacity(reader.blocks().len());
        for b in reader.blocks() {
            let header = BlockHeader::decode(&b.header).map_err(|e| e.to_string())?;
            let signature: [u8; 64] = b
                .signature
                .as_slice()
                .try_into()
                .map_err(|_| "bad signature length".to_string())?;
            blocks.push(FileBlock {
                header,
                signature,
                row_group: b.row_group as usize,
                tags: b.tags.clone(),
                chunk_roots: b
                    .chunk_roots
                    .chunks_exact(32)
                    .map(|c| c.try_into().expect("32 bytes"))
                    .collect(),
                signature_checked: OnceLock::new(),
            });
        }
        Ok(Self {
            path: reader.path().to_owned(),
            branch,
            table,
            shard,
            schema: reader.schema().clone(),
            blocks,
            bytes: reader.bytes(),
            parquet: reader.metadata().clone(),
            pages: OnceLock::new(),
        })
    }
}

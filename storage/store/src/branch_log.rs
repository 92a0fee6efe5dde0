//! A branch's append-only Merkle log of block headers.
//!
//! A branch has one writer and one table. Its log's leaf data are its block hashes in height
//! order; its state at size `n` is `(n, MTH(block_hash[0..n]))` with leaf hash
//! `H(0x00 || block_hash)` (FORMAT.md, "Branch log").
//!
//! # Files (one directory per branch, chosen by the caller)
//! ```text
//! blocks.log   := record*            the authority
//! record       := len:u32 | xxh3:u64 | header_len:u32 | header bytes | signature:64
//!                 (xxh3-64 over the len bytes and everything after the xxh3 field)
//! tree.hashes  := hash:32 *          derived from blocks.log, recomputable
//! ```
//! `tree.hashes` uses the "stored hashes" layout of transparency logs (as in Go's
//! `golang.org/x/mod/sumdb/tlog`): appending leaf `i` appends its leaf hash, then the hash of
//! every subtree that leaf completes, lowest level first. The hash of the complete subtree at
//! `level`, `index` (leaves `[index·2^level, (index+1)·2^level)`) lives at
//! [`stored_hash_index`]`(level, index)`, and `n` leaves need [`stored_hash_count`]`(n)` hashes.
//! The MTH of any range an RFC 9162 proof needs is one read when the range is a complete aligned
//! subtree and a right fold of at most 64 reads otherwise, so paths for any size `<= n` cost
//! O(log n) reads. The file is read through a memory map (remapped as it grows).
//!
//! # Invariants
//! - Record `h` holds the header of height `h`, of this branch, whose `prev` is the hash of
//!   record `h - 1` (zeros at 0). [`BranchLog::append`] refuses anything else and open checks it.
//! - A record is written before its tree hashes; neither is fsynced until [`BranchLog::sync`].
//!   On open, a torn tail of `blocks.log` (see [`crate::fsutil`]) is cut; a `tree.hashes` that is
//!   short (crash between the two writes) is completed by recomputation, a long one is cut, and
//!   trailing all-zero hashes (data that never reached the disk) are recomputed. Stored hashes of
//!   the last [`TREE_VERIFY_LEAVES`] leaves are checked against recomputation; a mismatch, like
//!   any failed check before the tail, is [`BranchLogError::Corrupt`], never repaired silently.
//!   [`BranchLog::verify_tree`] checks every stored hash.
//! - After an I/O error in append or sync the handle is poisoned: later appends and syncs return
//!   [`BranchLogError::Poisoned`]. Reads keep answering from the state before the failed append.
//! - [`BranchLog::open_read_only`] never writes: it stops at the last valid record, reports a
//!   torn tail ([`BranchLog::torn_tail`]) and recomputes missing tree hashes in memory.
//!
//! # Bounds
//! A header is at most [`HEADER_BYTES_MAX`] bytes. Memory: 40 bytes per block (record offset and
//! block hash) plus at most [`TREE_TAIL_HASHES_MAX`] unmapped hashes (a read-only open also keeps
//! every hash it had to recompute). One writer per directory; nothing here locks it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use annals_format::block::block_hash_of_encoding;
use annals_format::hash::{empty_root, leaf_hash, node_hash};
use annals_format::merkle::{self, RangeHasher};
use annals_format::{BlockHeader, BranchId, Hash, ZERO_HASH};
use memmap2::{Mmap, MmapOptions};

use crate::fsutil::{self, put_frame, FrameRead, FrameReader, TornTail};

/// Name of the record file inside a branch directory.
pub const BLOCKS_FILE: &str = "blocks.log";
/// Name of the stored-hashes file inside a branch directory.
pub const TREE_FILE: &str = "tree.hashes";
/// Largest encoded block header accepted.
pub const HEADER_BYTES_MAX: usize = 64 << 10;
/// Signature bytes stored after each header.
pub const SIGNATURE_LEN: usize = annals_format::sign::SIGNATURE_LEN;
/// Largest record payload (`header_len | header | signature`).
pub const RECORD_BYTES_MAX: u32 = (4 + HEADER_BYTES_MAX + SIGNATURE_LEN) as u32;
/// How many of the last leaves have their stored hashes re-verified on open.
pub const TREE_VERIFY_LEAVES: u64 = 1024;
/// Hashes appended since the last (re)map that are kept in memory before remapping.
pub const TREE_TAIL_HASHES_MAX: usize = 4096;

const HASH_LEN: u64 = 32;

/// Errors of a branch log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BranchLogError {
    #[error("branch log I/O error while {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "branch log {} is corrupt at byte {offset} (block height {height}): {reason}. Run \
         `annals audit` and restore the branch from a replica or backup",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        height: u64,
        reason: String,
    },
    #[error("block refused at height {height}: {reason}")]
    InvalidAppend { height: u64, reason: String },
    #[error("{what} {value} is out of range for a branch log of size {size}")]
    OutOfRange {
        what: &'static str,
        value: u64,
        size: u64,
    },
    #[error("branch log was opened read-only; open it with BranchLog::open to write")]
    ReadOnly,
    #[error("branch log is unusable after an earlier I/O failure ({0}); reopen it to recover")]
    Poisoned(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BranchLogError + 'a {
    move |source| BranchLogError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Number of stored hashes for a tree of `n` leaves: `sum over levels l of floor(n / 2^l)`,
/// which equals `2n - popcount(n)`. It is also the position of leaf `n`'s hash.
pub fn stored_hash_count(n: u64) -> u64 {
    2 * n - u64::from(n.count_ones())
}

/// Position in `tree.hashes` of the hash of the complete subtree at `level` and `index`, i.e.
/// over leaves `[index << level, (index + 1) << level)`. That hash is appended right after the
/// leaf hash of its last leaf `m = ((index + 1) << level) - 1`, which sits at
/// `stored_hash_count(m)`, followed by the `level` subtrees that leaf completes.
pub fn stored_hash_index(level: u32, index: u64) -> u64 {
    let last_leaf = ((index + 1) << level) - 1;
    stored_hash_count(last_leaf) + u64::from(level)
}

/// Largest `m <= n` with `stored_hash_count(m) <= hashes`: the leaves fully covered.
fn leaves_covered(hashes: u64, n: u64) -> u64 {
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if stored_hash_count(mid) <= hashes {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// `tree.hashes`: a mapped prefix plus the hashes appended (or recomputed) since.
struct HashStore {
    file: File,
    map: Option<Mmap>,
    mapped: u64,
    tail: Vec<Hash>,
}

impl HashStore {
    fn len(&self) -> u64 {
        self.mapped + self.tail.len() as u64
    }

    fn get(&self, i: u64) -> Hash {
        if i < self.mapped {
            let map = self.map.as_ref().expect("mapped hashes without a map");
            let o = (i * HASH_LEN) as usize;
            map[o..o + HASH_LEN as usize].try_into().expect("32 bytes")
        } else {
            self.tail[(i - self.mapped) as usize]
        }
    }

    /// Maps the first `hashes` hashes of the file, which must be at least that long.
    #[allow(unsafe_code)]
    fn map(file: &File, hashes: u64) -> io::Result<Option<Mmap>> {
        if hashes == 0 {
            return Ok(None);
        }
        let len = usize::try_from(hashes * HASH_LEN)
            .map_err(|_| io::Error::other("tree.hashes too large to map"))?;
        // SAFETY: the mapping is read-only and covers bytes that already exist. The writer only
        // appends to tree.hashes past the mapped range, and truncates it only in `open`, before
        // mapping. The remaining hazard is another process truncating the file while it is
        // mapped: only a writer's `open` does that, after a crash, and a concurrent read-only
        // reader (audit) would then fault (SIGBUS) rather than read wrong bytes.
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        Ok(Some(map))
    }

    /// Writes `hashes` at the end of the file (when `write`) and makes them readable.
    fn push(&mut self, hashes: &[Hash], write: bool) -> io::Result<()> {
        if write {
            let bytes: Vec<u8> = hashes.iter().flatten().copied().collect();
            fsutil::write_all_at(&self.file, &bytes, self.len() * HASH_LEN)?;
        }
        self.tail.extend_from_slice(hashes);
        if write && self.tail.len() >= TREE_TAIL_HASHES_MAX {
            let len = self.len();
            self.map = HashStore::map(&self.file, len)?;
            self.mapped = len;
            self.tail.clear();
        }
        Ok(())
    }

    /// `MTH` of leaves `[start, end)` from stored hashes: the range splits into complete
    /// aligned subtrees of decreasing size (the set bits of `end - start`), folded from the right.
    fn range_root(&self, start: u64, end: u64) -> Hash {
        assert!(start < end, "empty range {start}..{end}");
        let mut parts = [ZERO_HASH; 64];
        let mut count = 0;
        let mut lo = start;
        while lo < end {
            let level = 63 - (end - lo).leading_zeros();
            let width = 1u64 << level;
            assert!(
                lo & (width - 1) == 0,
                "range {start}..{end} is not a subtree of the RFC 9162 decomposition"
            );
            parts[count] = self.get(stored_hash_index(level, lo >> level));
            count += 1;
            lo += width;
        }
        let mut acc = parts[count - 1];
        for p in parts[..count - 1].iter().rev() {
            acc = node_hash(p, &acc);
        }
        acc
    }
}

/// [`RangeHasher`] over the stored hashes of a log, limited to its first `size` leaves.
struct StoredHasher<'a> {
    tree: &'a HashStore,
    size: u64,
}

impl RangeHasher for StoredHasher<'_> {
    fn range_hash(&mut self, start: u64, end: u64) -> Hash {
        assert!(
            end <= self.size,
            "range {start}..{end} beyond size {}",
            self.size
        );
        self.tree.range_root(start, end)
    }
}

/// The hashes appended to the store with leaf `i`: its leaf hash, then one per completed subtree.
fn hashes_for_leaf(tree: &HashStore, i: u64, leaf: Hash) -> Vec<Hash> {
    debug_assert_eq!(tree.len(), stored_hash_count(i));
    let mut out = Vec::with_capacity(1 + i.trailing_ones() as usize);
    out.push(leaf);
    let mut cur = leaf;
    for level in 1..=i.trailing_ones() {
        // Node (level, i >> level) = H(left child (level-1, 2k), right child = cur).
        let k = i >> level;
        let left = tree.get(stored_hash_index(level - 1, 2 * k));
        cur = node_hash(&left, &cur);
        out.push(cur);
    }
    out
}

/// Decodes a record payload into `(header, header bytes, signature)`.
fn decode_record(payload: &[u8]) -> Result<(BlockHeader, &[u8], [u8; 64]), String> {
    if payload.len() < 4 + SIGNATURE_LEN {
        return Err(format!(
            "record payload of {} bytes is too short",
            payload.len()
        ));
    }
    let header_len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
    if payload.len() != 4 + header_len + SIGNATURE_LEN {
        return Err(format!(
            "header length {header_len} does not match a record payload of {} bytes",
            payload.len()
        ));
    }
    let bytes = &payload[4..4 + header_len];
    let header = BlockHeader::decode(bytes).map_err(|e| format!("bad block header: {e}"))?;
    let sig: [u8; 64] = payload[4 + header_len..].try_into().expect("64 bytes");
    Ok((header, bytes, sig))
}

/// Checks that `header` may follow a log of `height` blocks ending in `prev`.
fn check_next(
    header: &BlockHeader,
    branch: &BranchId,
    height: u64,
    prev: &Hash,
) -> Result<(), String> {
    if header.branch != *branch {
        return Err(format!(
            "header names branch {}, this log is branch {}",
            hex::encode(header.branch),
            hex::encode(branch)
        ));
    }
    if header.height != height {
        return Err(format!(
            "header height is {}, the next height is {height}",
            header.height
        ));
    }
    if header.prev != *prev {
        return Err(match height.checked_sub(1) {
            Some(h) => format!(
                "header prev is {}, the hash of block {h} is {}",
                hex::encode(header.prev),
                hex::encode(prev)
            ),
            None => format!(
                "header prev is {}, the first block's prev must be zeros",
                hex::encode(header.prev)
            ),
        });
    }
    Ok(())
}

/// A branch's append-only log. See the module doc.
pub struct BranchLog {
    dir: PathBuf,
    branch: BranchId,
    blocks_path: PathBuf,
    tree_path: PathBuf,
    blocks: File,
    /// Valid bytes of blocks.log (the end of the last record).
    blocks_len: u64,
    /// Start offset of record `h`.
    offsets: Vec<u64>,
    /// Block hash of record `h`.
    hashes: Vec<Hash>,
    tree: HashStore,
    read_only: bool,
    torn: Option<TornTail>,
    poisoned: Option<String>,
}

impl std::fmt::Debug for BranchLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BranchLog")
            .field("dir", &self.dir)
            .field("branch", &hex::encode(self.branch))
            .field("size", &self.hashes.len())
            .field("read_only", &self.read_only)
            .field("torn", &self.torn)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl BranchLog {
    /// Opens (creating if needed) the log of `branch` in `dir` for writing: validates every
    /// record, cuts a torn tail, reconciles `tree.hashes` (see the module doc).
    pub fn open(dir: &Path, branch: BranchId) -> Result<BranchLog, BranchLogError> {
        BranchLog::open_mode(dir, branch, false)
    }

    /// Opens an existing log without ever writing to it (e.g. `annals audit` on a running node).
    /// A torn tail is reported by [`BranchLog::torn_tail`], not cut.
    pub fn open_read_only(dir: &Path, branch: BranchId) -> Result<BranchLog, BranchLogError> {
        BranchLog::open_mode(dir, branch, true)
    }

    fn open_mode(
        dir: &Path,
        branch: BranchId,
        read_only: bool,
    ) -> Result<BranchLog, BranchLogError> {
        let blocks_path = dir.join(BLOCKS_FILE);
        let tree_path = dir.join(TREE_FILE);
        let (blocks, tree_file) = if read_only {
            let b = File::open(&blocks_path).map_err(io_err("opening", &blocks_path))?;
            let t = File::open(&tree_path).map_err(io_err("opening", &tree_path))?;
            (b, t)
        } else {
            fsutil::create_dir_durable(dir).map_err(io_err("creating", dir))?;
            let created = !blocks_path.exists() || !tree_path.exists();
            let open = |p: &Path| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p)
                    .map_err(io_err("opening", p))
            };
            let files = (open(&blocks_path)?, open(&tree_path)?);
            if created {
                fsutil::fsync_dir(dir).map_err(io_err("syncing directory", dir))?;
            }
            files
        };

        // 1. blocks.log: the authority.
        let end = blocks
            .metadata()
            .map_err(io_err("reading metadata of", &blocks_path))?
            .len();
        let mut offsets = Vec::new();
        let mut hashes: Vec<Hash> = Vec::new();
        let mut torn = None;
        let mut reader = FrameReader::new(
            BufReader::with_capacity(1 << 20, &blocks),
            0,
            end,
            RECORD_BYTES_MAX,
        );
        let corrupt = |offset: u64, height: usize, reason: String| BranchLogError::Corrupt {
            file: blocks_path.clone(),
            offset,
            height: height as u64,
            reason,
        };
        let blocks_len = loop {
            match reader
                .next_frame()
                .map_err(io_err("reading", &blocks_path))?
            {
                FrameRead::Frame { offset, payload } => {
                    let height = hashes.len();
                    let (header, bytes, _sig) =
                        decode_record(payload).map_err(|r| corrupt(offset, height, r))?;
                    let prev = hashes.last().copied().unwrap_or(ZERO_HASH);
                    check_next(&header, &branch, height as u64, &prev)
                        .map_err(|r| corrupt(offset, height, r))?;
                    offsets.push(offset);
                    hashes.push(block_hash_of_encoding(bytes));
                }
                FrameRead::End => break end,
                FrameRead::Bad { offset, reason } => {
                    match fsutil::settle_bad_record(
                        &blocks,
                        &blocks_path,
                        offset,
                        end,
                        &reason,
                        RECORD_BYTES_MAX,
                        read_only,
                        "branch log",
                    )
                    .map_err(io_err("reading", &blocks_path))?
                    {
                        Ok(t) => {
                            torn = t;
                            break offset;
                        }
                        Err(why) => return Err(corrupt(offset, hashes.len(), why)),
                    }
                }
            }
        };
        drop(reader);
        let n = hashes.len() as u64;

        // 2. tree.hashes: derived data, reconciled with the records.
        let needed = stored_hash_count(n);
        let file_len = tree_file
            .metadata()
            .map_err(io_err("reading metadata of", &tree_path))?
            .len();
        let mut have = (file_len / HASH_LEN).min(needed);
        have = strip_zero_hashes(&tree_file, have).map_err(io_err("reading", &tree_path))?;
        let m = leaves_covered(have, n);
        let keep = stored_hash_count(m);
        if !read_only && file_len != keep * HASH_LEN {
            if file_len > keep * HASH_LEN {
                tracing::warn!(
                    file = %tree_path.display(),
                    from = file_len,
                    to = keep * HASH_LEN,
                    "cutting tree hashes not backed by complete records"
                );
            }
            fsutil::truncate_durable(&tree_file, keep * HASH_LEN)
                .map_err(io_err("truncating", &tree_path))?;
        }
        let mut tree = HashStore {
            map: HashStore::map(&tree_file, keep).map_err(io_err("mapping", &tree_path))?,
            file: tree_file,
            mapped: keep,
            tail: Vec::new(),
        };
        verify_leaves(
            &tree,
            &hashes,
            m.saturating_sub(TREE_VERIFY_LEAVES),
            m,
            &tree_path,
        )?;
        if m < n {
            tracing::warn!(
                file = %tree_path.display(),
                leaves = n - m,
                read_only,
                "recomputing missing tree hashes"
            );
        }
        for i in m..n {
            let new = hashes_for_leaf(&tree, i, leaf_hash(&hashes[i as usize]));
            tree.push(&new, !read_only)
                .map_err(io_err("writing", &tree_path))?;
        }
        assert_eq!(tree.len(), needed, "tree hashes do not match the records");

        Ok(BranchLog {
            dir: dir.to_owned(),
            branch,
            blocks_path,
            tree_path,
            blocks,
            blocks_len,
            offsets,
            hashes,
            tree,
            read_only,
            torn,
            poisoned: None,
        })
    }

    /// Appends the next block's header and signature. Refuses (without poisoning) a header whose
    /// branch, height or prev does not continue this log. Writes the record, then its tree
    /// hashes; nothing is durable until [`BranchLog::sync`]. Returns the block's height.
    pub fn append(
        &mut self,
        header: &BlockHeader,
        signature: &[u8; 64],
    ) -> Result<u64, BranchLogError> {
        self.check_writable()?;
        let height = self.size();
        check_next(header, &self.branch, height, &self.head_hash())
            .map_err(|reason| BranchLogError::InvalidAppend { height, reason })?;
        let bytes = header.encode();
        if bytes.len() > HEADER_BYTES_MAX {
            return Err(BranchLogError::InvalidAppend {
                height,
                reason: format!(
                    "encoded header is {} bytes, the maximum is {HEADER_BYTES_MAX}",
                    bytes.len()
                ),
            });
        }
        debug_assert_eq!(BlockHeader::decode(&bytes).as_ref(), Ok(header));
        let hash = block_hash_of_encoding(&bytes);
        let mut payload = Vec::with_capacity(4 + bytes.len() + SIGNATURE_LEN);
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(&bytes);
        payload.extend_from_slice(signature);
        let mut record = Vec::with_capacity(fsutil::FRAME_HEADER_LEN + payload.len());
        put_frame(&mut record, &payload);
        let new_hashes = hashes_for_leaf(&self.tree, height, leaf_hash(&hash));

        let r = self.write_append(&record, &new_hashes);
        if let Err(e) = r {
            let e = self.poison(e);
            return Err(e);
        }
        self.offsets.push(self.blocks_len);
        self.blocks_len += record.len() as u64;
        self.hashes.push(hash);
        assert_eq!(self.tree.len(), stored_hash_count(self.size()));
        Ok(height)
    }

    fn write_append(&mut self, record: &[u8], new_hashes: &[Hash]) -> Result<(), BranchLogError> {
        fsutil::write_all_at(&self.blocks, record, self.blocks_len)
            .map_err(io_err("writing", &self.blocks_path))?;
        self.tree
            .push(new_hashes, true)
            .map_err(io_err("writing", &self.tree_path))
    }

    /// Fsyncs `blocks.log`, then `tree.hashes`. Every appended block is durable when it returns.
    pub fn sync(&mut self) -> Result<(), BranchLogError> {
        self.check_writable()?;
        let r = fsutil::fdatasync_file(&self.blocks)
            .map_err(io_err("syncing", &self.blocks_path))
            .and_then(|()| {
                fsutil::fdatasync_file(&self.tree.file).map_err(io_err("syncing", &self.tree_path))
            });
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Number of blocks in the log.
    pub fn size(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The branch this log belongs to.
    pub fn branch(&self) -> BranchId {
        self.branch
    }

    /// The branch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hash of the last block, or zeros for an empty log: the `prev` of the next block.
    pub fn head_hash(&self) -> Hash {
        self.hashes.last().copied().unwrap_or(ZERO_HASH)
    }

    /// `MTH(block_hash[0..size()])`.
    pub fn root(&self) -> Hash {
        self.root_of_size(self.size())
    }

    /// `MTH(block_hash[0..size])` for any `size <= size()`.
    pub fn root_at(&self, size: u64) -> Result<Hash, BranchLogError> {
        self.check_size("size", size)?;
        Ok(self.root_of_size(size))
    }

    fn root_of_size(&self, size: u64) -> Hash {
        if size == 0 {
            empty_root()
        } else {
            self.tree.range_root(0, size)
        }
    }

    /// Hash of the block at `height`.
    pub fn block_hash(&self, height: u64) -> Result<Hash, BranchLogError> {
        self.check_height(height)?;
        Ok(self.hashes[height as usize])
    }

    /// Reads back the block at `height`: `(header, header bytes, signature)`. The record's
    /// checksum and hash are checked against what open or append recorded.
    pub fn header(&self, height: u64) -> Result<(BlockHeader, Vec<u8>, [u8; 64]), BranchLogError> {
        self.check_height(height)?;
        let h = height as usize;
        let start = self.offsets[h];
        let end = self.offsets.get(h + 1).copied().unwrap_or(self.blocks_len);
        let mut buf = vec![0u8; (end - start) as usize];
        fsutil::read_exact_at(&self.blocks, &mut buf, start)
            .map_err(io_err("reading", &self.blocks_path))?;
        let corrupt = |reason: String| BranchLogError::Corrupt {
            file: self.blocks_path.clone(),
            offset: start,
            height,
            reason: format!("{reason} (record changed on disk since it was opened)"),
        };
        let payload = fsutil::check_frame(&buf, RECORD_BYTES_MAX).map_err(corrupt)?;
        let (header, bytes, sig) = decode_record(payload).map_err(corrupt)?;
        if block_hash_of_encoding(bytes) != self.hashes[h] || header.height != height {
            return Err(corrupt("block hash differs".into()));
        }
        Ok((header, bytes.to_vec(), sig))
    }

    /// RFC 9162 inclusion path of block `height` in the log of `size` blocks.
    pub fn inclusion_path(&self, height: u64, size: u64) -> Result<Vec<Hash>, BranchLogError> {
        self.check_size("size", size)?;
        if height >= size {
            return Err(BranchLogError::OutOfRange {
                what: "height",
                value: height,
                size,
            });
        }
        let mut h = StoredHasher {
            tree: &self.tree,
            size,
        };
        Ok(merkle::inclusion_path(&mut h, height, size).expect("range checked above"))
    }

    /// RFC 9162 consistency path from size `old_size` to size `size`.
    pub fn consistency_path(&self, old_size: u64, size: u64) -> Result<Vec<Hash>, BranchLogError> {
        self.check_size("size", size)?;
        if old_size > size {
            return Err(BranchLogError::OutOfRange {
                what: "old size",
                value: old_size,
                size,
            });
        }
        let mut h = StoredHasher {
            tree: &self.tree,
            size,
        };
        Ok(merkle::consistency_path(&mut h, old_size, size).expect("range checked above"))
    }

    /// Checks every stored hash against recomputation from the block hashes (O(n)).
    pub fn verify_tree(&self) -> Result<(), BranchLogError> {
        verify_leaves(&self.tree, &self.hashes, 0, self.size(), &self.tree_path)
    }

    /// The torn tail a read-only open found and left in place, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Whether this handle was opened with [`BranchLog::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn check_writable(&self) -> Result<(), BranchLogError> {
        if self.read_only {
            return Err(BranchLogError::ReadOnly);
        }
        match &self.poisoned {
            Some(msg) => Err(BranchLogError::Poisoned(msg.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: BranchLogError) -> BranchLogError {
        tracing::error!(dir = %self.dir.display(), error = %e, "branch log poisoned");
        self.poisoned = Some(e.to_string());
        e
    }

    fn check_size(&self, what: &'static str, size: u64) -> Result<(), BranchLogError> {
        if size > self.size() {
            return Err(BranchLogError::OutOfRange {
                what,
                value: size,
                size: self.size(),
            });
        }
        Ok(())
    }

    fn check_height(&self, height: u64) -> Result<(), BranchLogError> {
        if height >= self.size() {
            return Err(BranchLogError::OutOfRange {
                what: "height",
                value: height,
                size: self.size(),
            });
        }
        Ok(())
    }
}

/// Lowers `have` past trailing all-zero hashes: bytes the file system extended the file with
/// but that were never written (no BLAKE3 output is all zeros in practice).
fn strip_zero_hashes(file: &File, mut have: u64) -> io::Result<u64> {
    const CHUNK: u64 = 2048;
    let mut buf = vec![0u8; (CHUNK * HASH_LEN) as usize];
    while have > 0 {
        let from = have.saturating_sub(CHUNK);
        let bytes = &mut buf[..((have - from) * HASH_LEN) as usize];
        fsutil::read_exact_at(file, bytes, from * HASH_LEN)?;
        for (j, h) in bytes.chunks_exact(HASH_LEN as usize).enumerate().rev() {
            if h.iter().any(|&b| b != 0) {
                return Ok(from + j as u64 + 1);
            }
        }
        have = from;
    }
    Ok(0)
}

/// Checks the stored hashes appended with leaves `[from, to)` against recomputation.
fn verify_leaves(
    tree: &HashStore,
    hashes: &[Hash],
    from: u64,
    to: u64,
    path: &Path,
) -> Result<(), BranchLogError> {
    debug_assert!(tree.len() >= stored_hash_count(to));
    for i in from..to {
        let idx = stored_hash_index(0, i);
        let mismatch = |idx: u64, what: String| BranchLogError::Corrupt {
            file: path.to_owned(),
            offset: idx * HASH_LEN,
            height: i,
            reason: format!("stored {what} differs from the hash recomputed from blocks.log"),
        };
        if tree.get(idx) != leaf_hash(&hashes[i as usize]) {
            return Err(mismatch(idx, "leaf hash".into()));
        }
        for level in 1..=i.trailing_ones() {
            let k = i >> level;
            let expect = node_hash(
                &tree.get(stored_hash_index(level - 1, 2 * k)),
                &tree.get(stored_hash_index(level - 1, 2 * k + 1)),
            );
            let idx = stored_hash_index(level, k);
            if tree.get(idx) != expect {
                return Err(mismatch(
                    idx,
                    format!("subtree hash (level {level}, index {k})"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_format::merkle::{verify_consistency, verify_inclusion, LeafHashes};
    use std::collections::HashMap;
    use std::fs;

    const BRANCH: BranchId = *b"branch-0000-0001";

    fn header(height: u64, prev: Hash) -> BlockHeader {
        BlockHeader {
            table: "bench/readings".into(),
            branch: BRANCH,
            height,
            prev,
            rows_root: leaf_hash(&height.to_le_bytes()),
            row_count: 100 + height as u32,
            time_min: 1_700_000_000_000_000_000 + height as i64,
            time_max: 1_700_000_000_000_000_999 + height as i64,
            context: ZERO_HASH,
            sealed_at: 1_700_000_001_000_000_000 + height as i64,
        }
    }

    fn sig(height: u64) -> [u8; 64] {
        [height as u8; 64]
    }

    /// Appends blocks until the log has `n`; returns all block hashes.
    fn grow(log: &mut BranchLog, n: u64) -> Vec<Hash> {
        for h in log.size()..n {
            let hd = header(h, log.head_hash());
            assert_eq!(log.append(&hd, &sig(h)).unwrap(), h);
        }
        (0..n).map(|h| log.block_hash(h).unwrap()).collect()
    }

    fn build(dir: &Path, n: u64) -> Vec<Hash> {
        let mut log = BranchLog::open(dir, BRANCH).unwrap();
        let hashes = grow(&mut log, n);
        log.sync().unwrap();
        hashes
    }

    /// The in-memory oracle: `annals_format`'s `LeafHashes`, memoised so the exhaustive test
    /// stays fast.
    struct Memo<'a> {
        inner: LeafHashes<'a>,
        cache: HashMap<(u64, u64), Hash>,
    }

    impl RangeHasher for Memo<'_> {
        fn range_hash(&mut self, start: u64, end: u64) -> Hash {
            let inner = &mut self.inner;
            *self
                .cache
                .entry((start, end))
                .or_insert_with(|| inner.range_hash(start, end))
        }
    }

    fn record_offsets(path: &Path) -> Vec<usize> {
        let b = fs::read(path).unwrap();
        let mut out = Vec::new();
        let mut o = 0;
        while o < b.len() {
            out.push(o);
            o += 12 + u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        }
        out
    }

    #[test]
    fn stored_hash_layout_matches_append_order() {
        // Simulate appends: leaf i, then one node per level it completes.
        let mut order: Vec<(u32, u64)> = Vec::new();
        for i in 0..1000u64 {
            assert_eq!(stored_hash_count(i), order.len() as u64, "count({i})");
            order.push((0, i));
            let mut level = 1;
            while (i + 1) % (1 << level) == 0 {
                order.push((level, i >> level));
                level += 1;
            }
        }
        for (pos, &(level, index)) in order.iter().enumerate() {
            assert_eq!(
                stored_hash_index(level, index),
                pos as u64,
                "({level}, {index})"
            );
        }
        // Values from the tlog documentation's example layout.
        assert_eq!(
            (0..9).map(|n| stored_hash_index(0, n)).collect::<Vec<_>>(),
            vec![0, 1, 3, 4, 7, 8, 10, 11, 15]
        );
        assert_eq!(stored_hash_index(1, 0), 2);
        assert_eq!(stored_hash_index(2, 0), 6);
        assert_eq!(stored_hash_index(3, 0), 14);
        for n in 0..300 {
            let h = stored_hash_count(n);
            assert_eq!(leaves_covered(h, 1000), n);
            if n > 0 {
                assert_eq!(leaves_covered(h - 1, 1000), n - 1);
            }
            assert_eq!(leaves_covered(h + 5, n), n);
        }
    }

    #[test]
    fn all_paths_for_all_sizes_up_to_300_match_the_in_memory_oracle_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = build(dir.path(), 300);
        let leaves: Vec<Hash> = hashes.iter().map(|h| leaf_hash(h)).collect();
        let written = BranchLog::open(dir.path(), BRANCH).unwrap();
        let reopened_ro = BranchLog::open_read_only(dir.path(), BRANCH).unwrap();
        let mut oracle = Memo {
            inner: LeafHashes(&leaves),
            cache: HashMap::new(),
        };
        let roots: Vec<Hash> = (0..=300).map(|n| merkle::root_of(&leaves[..n])).collect();
        for log in [&written, &reopened_ro] {
            assert_eq!(log.size(), 300);
            assert_eq!(log.root(), roots[300]);
            assert_eq!(log.root_at(0).unwrap(), empty_root());
            for size in 1..=300u64 {
                assert_eq!(
                    log.root_at(size).unwrap(),
                    roots[size as usize],
                    "root {size}"
                );
                for i in 0..size {
                    let p = log.inclusion_path(i, size).unwrap();
                    let o = merkle::inclusion_path(&mut oracle, i, size).unwrap();
                    assert_eq!(p, o, "inclusion {i} in {size}");
                    assert!(verify_inclusion(
                        &leaves[i as usize],
                        i,
                        size,
                        &p,
                        &roots[size as usize]
                    ));
                }
                for old in 0..=size {
                    let p = log.consistency_path(old, size).unwrap();
                    let o = merkle::consistency_path(&mut oracle, old, size).unwrap();
                    assert_eq!(p, o, "consistency {old} -> {size}");
                    assert!(verify_consistency(
                        old,
                        size,
                        &roots[old as usize],
                        &roots[size as usize],
                        &p
                    ));
                }
            }
            log.verify_tree().unwrap();
            assert!(log.inclusion_path(300, 300).is_err());
            assert!(log.inclusion_path(0, 301).is_err());
            assert!(log.consistency_path(5, 4).is_err());
            assert!(log.root_at(301).is_err());
        }
    }

    #[test]
    fn remapping_keeps_reads_correct_past_the_tail_bound() {
        // More than TREE_TAIL_HASHES_MAX hashes written in one session forces a remap.
        let dir = tempfile::tempdir().unwrap();
        let mut log = BranchLog::open(dir.path(), BRANCH).unwrap();
        let n = TREE_TAIL_HASHES_MAX as u64 + 100;
        let hashes = grow(&mut log, n);
        assert!(log.tree.mapped > 0, "no remap happened");
        let leaves: Vec<Hash> = hashes.iter().map(|h| leaf_hash(h)).collect();
        assert_eq!(log.root(), merkle::root_of(&leaves));
        assert_eq!(
            log.root_at(n / 2).unwrap(),
            merkle::root_of(&leaves[..n as usize / 2])
        );
        log.verify_tree().unwrap();
    }

    #[test]
    fn headers_read_back_with_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = build(dir.path(), 20);
        let log = BranchLog::open(dir.path(), BRANCH).unwrap();
        for h in 0..20 {
            let (hd, bytes, s) = log.header(h).unwrap();
            assert_eq!(
                hd,
                header(
                    h,
                    if h == 0 {
                        ZERO_HASH
                    } else {
                        hashes[h as usize - 1]
                    }
                )
            );
            assert_eq!(bytes, hd.encode());
            assert_eq!(s, sig(h));
            assert_eq!(hd.hash(), hashes[h as usize]);
        }
        assert!(matches!(
            log.header(20),
            Err(BranchLogError::OutOfRange { .. })
        ));
    }

    #[test]
    fn crash_between_record_and_tree_write_is_repaired() {
        let base = tempfile::tempdir().unwrap();
        let hashes = build(base.path(), 77);
        let leaves: Vec<Hash> = hashes.iter().map(|h| leaf_hash(h)).collect();
        let full_tree = fs::read(base.path().join(TREE_FILE)).unwrap();
        assert_eq!(full_tree.len() as u64, stored_hash_count(77) * 32);
        // Short by whole hashes, by a partial hash, zero-filled, missing entirely, or too long.
        let variants: Vec<Vec<u8>> = vec![
            full_tree[..full_tree.len() - 32].to_vec(),
            full_tree[..full_tree.len() - 32 * 4 - 7].to_vec(),
            full_tree[..(stored_hash_count(60) * 32) as usize].to_vec(),
            {
                let mut t = full_tree.clone();
                let n = t.len();
                t[n - 32 * 3..].fill(0);
                t
            },
            Vec::new(),
            {
                let mut t = full_tree.clone();
                t.extend_from_slice(&[0xab; 32 * 3 + 5]);
                t
            },
        ];
        for (k, tree) in variants.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            fs::copy(base.path().join(BLOCKS_FILE), dir.path().join(BLOCKS_FILE)).unwrap();
            fs::write(dir.path().join(TREE_FILE), &tree).unwrap();
            // Read-only repairs in memory and leaves the file alone.
            let ro = BranchLog::open_read_only(dir.path(), BRANCH).unwrap();
            assert_eq!(ro.root(), merkle::root_of(&leaves), "variant {k}");
            ro.verify_tree().unwrap();
            assert_eq!(fs::read(dir.path().join(TREE_FILE)).unwrap(), tree);
            drop(ro);
            let mut log = BranchLog::open(dir.path(), BRANCH).unwrap();
            assert_eq!(log.size(), 77);
            assert_eq!(log.root(), merkle::root_of(&leaves), "variant {k}");
            assert_eq!(
                fs::read(dir.path().join(TREE_FILE)).unwrap(),
                full_tree,
                "variant {k}"
            );
            grow(&mut log, 80);
            log.sync().unwrap();
            drop(log);
            let log = BranchLog::open(dir.path(), BRANCH).unwrap();
            assert_eq!(log.size(), 80);
            log.verify_tree().unwrap();
        }
    }

    #[test]
    fn changed_tree_hash_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 50);
        let p = dir.path().join(TREE_FILE);
        let mut t = fs::read(&p).unwrap();
        let idx = stored_hash_index(1, 24); // node over leaves 48, 49: last records
        t[(idx * 32) as usize + 5] ^= 1;
        fs::write(&p, &t).unwrap();
        for r in [
            BranchLog::open(dir.path(), BRANCH),
            BranchLog::open_read_only(dir.path(), BRANCH),
        ] {
            match r {
                Err(BranchLogError::Corrupt {
                    file,
                    offset,
                    height,
                    ..
                }) => {
                    assert_eq!(file, p);
                    assert_eq!(offset, idx * 32);
                    assert_eq!(height, 49);
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(fs::read(&p).unwrap(), t, "corrupt file was modified");
    }

    #[test]
    fn torn_blocks_tail_is_cut_at_every_offset_and_appends_continue() {
        let base = tempfile::tempdir().unwrap();
        let hashes = build(base.path(), 10);
        let blocks = fs::read(base.path().join(BLOCKS_FILE)).unwrap();
        let tree = fs::read(base.path().join(TREE_FILE)).unwrap();
        let last = *record_offsets(&base.path().join(BLOCKS_FILE))
            .last()
            .unwrap();
        let root9 = merkle::root_of(&hashes[..9].iter().map(|h| leaf_hash(h)).collect::<Vec<_>>());
        for cut in last..blocks.len() {
            for flip in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let mut b = blocks.clone();
                if flip {
                    b[cut] ^= 0x10;
                } else {
                    b.truncate(cut);
                }
                fs::write(dir.path().join(BLOCKS_FILE), &b).unwrap();
                fs::write(dir.path().join(TREE_FILE), &tree).unwrap();

                let ro = BranchLog::open_read_only(dir.path(), BRANCH).unwrap();
                assert_eq!(ro.size(), 9, "cut {cut} flip {flip}");
                assert_eq!(ro.root(), root9);
                let expected_torn =
                    (b.len() > last).then_some((last as u64, (b.len() - last) as u64));
                assert_eq!(ro.torn_tail().map(|t| (t.offset, t.bytes)), expected_torn);
                assert_eq!(fs::read(dir.path().join(BLOCKS_FILE)).unwrap(), b);
                assert!(matches!(
                    BranchLog::open_read_only(dir.path(), BRANCH)
                        .unwrap()
                        .append(&header(9, hashes[8]), &sig(9)),
                    Err(BranchLogError::ReadOnly)
                ));

                let mut log = BranchLog::open(dir.path(), BRANCH).unwrap();
                assert_eq!(log.size(), 9);
                assert_eq!(log.root(), root9);
                assert!(log.torn_tail().is_none());
                assert_eq!(
                    fs::metadata(dir.path().join(BLOCKS_FILE)).unwrap().len(),
                    last as u64
                );
                assert_eq!(
                    fs::metadata(dir.path().join(TREE_FILE)).unwrap().len(),
                    stored_hash_count(9) * 32
                );
                // The same block can be appended again: the log ends up as before the crash.
                log.append(&header(9, hashes[8]), &sig(9)).unwrap();
                log.sync().unwrap();
                assert_eq!(fs::read(dir.path().join(BLOCKS_FILE)).unwrap(), blocks);
                assert_eq!(fs::read(dir.path().join(TREE_FILE)).unwrap(), tree);
            }
        }
    }

    #[test]
    fn flipped_byte_in_a_middle_record_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 10);
        let p = dir.path().join(BLOCKS_FILE);
        let offs = record_offsets(&p);
        let mut b = fs::read(&p).unwrap();
        b[offs[4] + 40] ^= 0x01;
        fs::write(&p, &b).unwrap();
        for r in [
            BranchLog::open(dir.path(), BRANCH),
            BranchLog::open_read_only(dir.path(), BRANCH),
        ] {
            match r {
                Err(BranchLogError::Corrupt {
                    file,
                    offset,
                    height,
                    ..
                }) => {
                    assert_eq!(file, p);
                    assert_eq!(offset, offs[4] as u64);
                    assert_eq!(height, 4);
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(fs::read(&p).unwrap(), b, "corrupt file was modified");
    }

    #[test]
    fn record_with_valid_checksum_but_broken_chain_is_detected() {
        // Rewrites record 3 with a wrong prev and a recomputed checksum: only the chain check
        // can catch it.
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 6);
        let p = dir.path().join(BLOCKS_FILE);
        let offs = record_offsets(&p);
        let b = fs::read(&p).unwrap();
        let mut bad = header(3, [7u8; 32]);
        bad.row_count = 1;
        let bytes = bad.encode();
        let mut payload = (bytes.len() as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(&bytes);
        payload.extend_from_slice(&sig(3));
        let mut out = b[..offs[3]].to_vec();
        put_frame(&mut out, &payload);
        out.extend_from_slice(&b[offs[4]..]);
        fs::write(&p, &out).unwrap();
        assert!(matches!(
            BranchLog::open(dir.path(), BRANCH),
            Err(BranchLogError::Corrupt { height: 3, .. })
        ));
        // And a log opened under the wrong branch id is refused at its first record.
        let dir2 = tempfile::tempdir().unwrap();
        build(dir2.path(), 2);
        assert!(matches!(
            BranchLog::open(dir2.path(), *b"some-other-branc"),
            Err(BranchLogError::Corrupt {
                height: 0,
                offset: 0,
                ..
            })
        ));
    }

    #[test]
    fn wrong_height_prev_or_branch_is_refused_without_poisoning() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BranchLog::open(dir.path(), BRANCH).unwrap();
        let hashes = grow(&mut log, 3);
        let cases = [
            header(4, hashes[2]),
            header(2, hashes[1]),
            header(3, hashes[1]),
            header(3, ZERO_HASH),
            BlockHeader {
                branch: *b"another-branch!!",
                ..header(3, hashes[2])
            },
        ];
        for bad in &cases {
            assert!(matches!(
                log.append(bad, &sig(3)),
                Err(BranchLogError::InvalidAppend { height: 3, .. })
            ));
        }
        assert_eq!(log.size(), 3);
        assert_eq!(log.append(&header(3, hashes[2]), &sig(3)).unwrap(), 3);
        log.sync().unwrap();
        assert_eq!(BranchLog::open(dir.path(), BRANCH).unwrap().size(), 4);
    }

    #[test]
    fn io_failure_poisons_appends_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BranchLog::open(dir.path(), BRANCH).unwrap();
        let hashes = grow(&mut log, 5);
        log.sync().unwrap();
        // A read-only handle makes the next write fail (EBADF), as a failing disk would.
        log.blocks = File::open(dir.path().join(BLOCKS_FILE)).unwrap();
        let first = log.append(&header(5, hashes[4]), &sig(5)).unwrap_err();
        assert!(
            matches!(first, BranchLogError::Io { op: "writing", .. }),
            "{first:?}"
        );
        for err in [
            log.append(&header(5, hashes[4]), &sig(5)).unwrap_err(),
            log.sync().unwrap_err(),
        ] {
            match err {
                BranchLogError::Poisoned(msg) => assert_eq!(msg, first.to_string()),
                other => panic!("expected Poisoned, got {other:?}"),
            }
        }
        // Reads still answer from the last good state.
        assert_eq!(log.size(), 5);
        assert_eq!(log.block_hash(4).unwrap(), hashes[4]);
        drop(log);
        let log = BranchLog::open(dir.path(), BRANCH).unwrap();
        assert_eq!(log.size(), 5);
    }

    #[test]
    fn read_only_open_of_a_missing_log_fails_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        assert!(matches!(
            BranchLog::open_read_only(&p, BRANCH),
            Err(BranchLogError::Io { .. })
        ));
        assert!(!p.exists());
        let log = BranchLog::open(&p, BRANCH).unwrap();
        assert_eq!((log.size(), log.root()), (0, empty_root()));
        assert_eq!(log.head_hash(), ZERO_HASH);
    }
}

//! The node's checkpoint log: every checkpoint, in epoch order, with its entries and signatures.
//!
//! # Format: one append-only file (conventionally [`CHECKPOINTS_FILE`])
//! ```text
//! record := len:u32 | xxh3:u64 | body            (xxh3-64 over the len bytes and body)
//! body   := checkpoint header (CHECKPOINT_LEN = 117 bytes, FORMAT.md "Checkpoint")
//!         | entry_count:u32 | entry (56 bytes: branch:16 | size:u64 | root:32) * entry_count
//!         | sig_count:u32 | (pubkey:32 | signature:64) * sig_count
//! ```
//! little-endian.
//!
//! # Invariants
//! - Record `i` holds epoch `i`; its `prev` is the hash of record `i - 1` (zeros at 0);
//!   `branch_count` equals the number of entries; entries are strictly sorted by branch;
//!   `branches_root` is the MTH of the entries. [`CheckpointLog::append`] refuses anything else
//!   and open checks every record again.
//! - Signatures are stored as given, not verified: which keys count is the consensus layer's
//!   business (it knows the validator set named by `validators`).
//! - Open cuts a torn tail (see [`crate::fsutil`]); any other failed check is
//!   [`CheckpointLogError::Corrupt`]. [`CheckpointLog::open_read_only`] never writes and reports a
//!   torn tail instead. Nothing is durable until [`CheckpointLog::sync`]. An I/O error in append
//!   or sync poisons the handle.
//!
//! # Bounds
//! At most [`ENTRIES_MAX`] entries and [`SIGNATURES_MAX`] signatures per record. Every record is
//! kept in memory: `117 + 56·branches + 96·signatures` bytes plus overhead per epoch. With 100
//! branches, 4 validators and one checkpoint every 10 s that is about 50 MiB per day of uptime
//! history; with 1000 branches about 500 MiB. The caller must bound it (checkpoint interval,
//! branch count) until this log keeps only an offset index and reads records on demand.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use annals_format::checkpoint::{branches_root, CHECKPOINT_LEN, ENTRY_LEN};
use annals_format::{BranchEntry, CheckpointHeader, Hash, ZERO_HASH};

use crate::fsutil::{self, put_frame, FrameRead, FrameReader, TornTail};

/// Conventional file name of the checkpoint log inside a node's data directory.
pub const CHECKPOINTS_FILE: &str = "checkpoints.log";
/// Most entries (branches) in one checkpoint.
pub const ENTRIES_MAX: u32 = 1 << 20;
/// Most signatures stored with one checkpoint.
pub const SIGNATURES_MAX: u32 = 1 << 12;
/// Bytes of one stored signature: `pubkey:32 | sig:64`.
pub const SIGNATURE_ENTRY_LEN: usize = 32 + 64;
/// Largest record body.
pub const RECORD_BYTES_MAX: u32 = (CHECKPOINT_LEN
    + 4
    + ENTRIES_MAX as usize * ENTRY_LEN
    + 4
    + SIGNATURES_MAX as usize * SIGNATURE_ENTRY_LEN) as u32;

/// Errors of the checkpoint log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointLogError {
    #[error("checkpoint log I/O error while {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checkpoint log {} is corrupt at byte {offset} (epoch {epoch}): {reason}. Restore it from \
         a backup or a peer; checkpoints cannot be recomputed once signed",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        epoch: u64,
        reason: String,
    },
    #[error("checkpoint refused at epoch {epoch}: {reason}")]
    InvalidAppend { epoch: u64, reason: String },
    #[error("checkpoint log was opened read-only; open it with CheckpointLog::open to write")]
    ReadOnly,
    #[error("checkpoint log is unusable after an earlier I/O failure ({0}); reopen it to recover")]
    Poisoned(String),
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CheckpointLogError + 'a {
    move |source| CheckpointLogError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A checkpoint with its branch entries and the signatures collected for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub header: CheckpointHeader,
    /// Sorted by branch, bytewise; `header.branch_count` of them.
    pub entries: Vec<BranchEntry>,
    /// `(pubkey, signature over hash())`.
    pub signatures: Vec<([u8; 32], [u8; 64])>,
}

impl CheckpointRecord {
    /// The checkpoint hash `H(0x04 || header)`: what validators sign and the next `prev`.
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            CHECKPOINT_LEN
                + 8
                + self.entries.len() * ENTRY_LEN
                + self.signatures.len() * SIGNATURE_ENTRY_LEN,
        );
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.encode());
        }
        out.extend_from_slice(&(self.signatures.len() as u32).to_le_bytes());
        for (k, s) in &self.signatures {
            out.extend_from_slice(k);
            out.extend_from_slice(s);
        }
        out
    }

    fn decode(body: &[u8]) -> Result<CheckpointRecord, String> {
        let mut r = body;
        let header = CheckpointHeader::decode(take(&mut r, CHECKPOINT_LEN, "checkpoint header")?)
            .map_err(|e| format!("bad checkpoint header: {e}"))?;
        let count = u32_at(&mut r, "entry count")?;
        if count > ENTRIES_MAX {
            return Err(format!("{count} entries, the maximum is {ENTRIES_MAX}"));
        }
        let raw = take(&mut r, count as usize * ENTRY_LEN, "entries")?;
        let entries = raw
            .chunks_exact(ENTRY_LEN)
            .map(|c| BranchEntry::decode(c).map_err(|e| format!("bad entry: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let count = u32_at(&mut r, "signature count")?;
        if count > SIGNATURES_MAX {
            return Err(format!(
                "{count} signatures, the maximum is {SIGNATURES_MAX}"
            ));
        }
        let raw = take(&mut r, count as usize * SIGNATURE_ENTRY_LEN, "signatures")?;
        let signatures = raw
            .chunks_exact(SIGNATURE_ENTRY_LEN)
            .map(|c| {
                (
                    c[..32].try_into().expect("32 bytes"),
                    c[32..].try_into().expect("64 bytes"),
                )
            })
            .collect();
        if !r.is_empty() {
            return Err(format!("{} trailing bytes after the signatures", r.len()));
        }
        Ok(CheckpointRecord {
            header,
            entries,
            signatures,
        })
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if r.len() < n {
        return Err(format!("record ends inside the {what}"));
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

fn u32_at(r: &mut &[u8], what: &str) -> Result<u32, String> {
    Ok(u32::from_le_bytes(
        take(r, 4, what)?.try_into().expect("4 bytes"),
    ))
}

/// Checks that `rec` may be checkpoint `epoch` after a checkpoint with hash `prev`.
fn check_next(rec: &CheckpointRecord, epoch: u64, prev: &Hash) -> Result<(), String> {
    let h = &rec.header;
    if h.epoch != epoch {
        return Err(format!("epoch is {}, the next epoch is {epoch}", h.epoch));
    }
    if h.prev != *prev {
        return Err(format!(
            "prev is {}, the previous checkpoint hash is {}",
            hex::encode(h.prev),
            hex::encode(prev)
        ));
    }
    if h.branch_count as usize != rec.entries.len() {
        return Err(format!(
            "branch_count is {} but there are {} entries",
            h.branch_count,
            rec.entries.len()
        ));
    }
    if rec.entries.len() > ENTRIES_MAX as usize || rec.signatures.len() > SIGNATURES_MAX as usize {
        return Err(format!(
            "{} entries and {} signatures exceed the limits ({ENTRIES_MAX}, {SIGNATURES_MAX})",
            rec.entries.len(),
            rec.signatures.len()
        ));
    }
    if let Some(w) = rec.entries.windows(2).find(|w| w[0].branch >= w[1].branch) {
        return Err(format!(
            "entries are not strictly sorted by branch: {} then {}",
            hex::encode(w[0].branch),
            hex::encode(w[1].branch)
        ));
    }
    if branches_root(&rec.entries) != h.branches_root {
        return Err("branches_root is not the Merkle root of the entries".into());
    }
    Ok(())
}

/// The checkpoint log. See the module doc.
#[derive(Debug)]
pub struct CheckpointLog {
    path: PathBuf,
    file: File,
    /// Valid bytes of the file.
    len: u64,
    records: Vec<CheckpointRecord>,
    read_only: bool,
    torn: Option<TornTail>,
    poisoned: Option<String>,
}

impl CheckpointLog {
    /// Opens (creating if needed) the log at `path`: validates every record and the chain, cuts a
    /// torn tail.
    pub fn open(path: &Path) -> Result<CheckpointLog, CheckpointLogError> {
        CheckpointLog::open_mode(path, false)
    }

    /// Opens an existing log without ever writing to it; a torn tail is reported by
    /// [`CheckpointLog::torn_tail`], not cut.
    pub fn open_read_only(path: &Path) -> Result<CheckpointLog, CheckpointLogError> {
        CheckpointLog::open_mode(path, true)
    }

    fn open_mode(path: &Path, read_only: bool) -> Result<CheckpointLog, CheckpointLogError> {
        let file = if read_only {
            File::open(path).map_err(io_err("opening", path))?
        } else {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsutil::create_dir_durable(parent).map_err(io_err("creating", parent))?;
            }
            let created = !path.exists();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_err("opening", path))?;
            if created {
                fsutil::fsync_parent(path).map_err(io_err("syncing the directory of", path))?;
            }
            f
        };
        let end = file
            .metadata()
            .map_err(io_err("reading metadata of", path))?
            .len();
        let mut records: Vec<CheckpointRecord> = Vec::new();
        let mut prev = ZERO_HASH;
        let mut torn = None;
        let corrupt = |offset: u64, epoch: usize, reason: String| CheckpointLogError::Corrupt {
            file: path.to_owned(),
            offset,
            epoch: epoch as u64,
            reason,
        };
        let mut reader = FrameReader::new(BufReader::new(&file), 0, end, RECORD_BYTES_MAX);
        let len = loop {
            match reader.next_frame().map_err(io_err("reading", path))? {
                FrameRead::Frame { offset, payload } => {
                    let epoch = records.len();
                    let rec =
                        CheckpointRecord::decode(payload).map_err(|r| corrupt(offset, epoch, r))?;
                    check_next(&rec, epoch as u64, &prev).map_err(|r| corrupt(offset, epoch, r))?;
                    prev = rec.hash();
                    records.push(rec);
                }
                FrameRead::End => break end,
                FrameRead::Bad { offset, reason } => {
                    match fsutil::settle_bad_record(
                        &file,
                        path,
                        offset,
                        end,
                        &reason,
                        RECORD_BYTES_MAX,
                        read_only,
                        "checkpoint log",
                    )
                    .map_err(io_err("reading", path))?
                    {
                        Ok(t) => {
                            torn = t;
                            break offset;
                        }
                        Err(why) => return Err(corrupt(offset, records.len(), why)),
                    }
                }
            }
        };
        drop(reader);
        Ok(CheckpointLog {
            path: path.to_owned(),
            file,
            len,
            records,
            read_only,
            torn,
            poisoned: None,
        })
    }

    /// Appends the next checkpoint. Refuses (without poisoning) a record that does not continue
    /// the chain (see the module doc). Not durable until [`CheckpointLog::sync`]. Returns its
    /// epoch.
    pub fn append(&mut self, rec: CheckpointRecord) -> Result<u64, CheckpointLogError> {
        if self.read_only {
            return Err(CheckpointLogError::ReadOnly);
        }
        self.check_poisoned()?;
        let epoch = self.len();
        check_next(&rec, epoch, &self.head_hash())
            .map_err(|reason| CheckpointLogError::InvalidAppend { epoch, reason })?;
        let body = rec.encode();
        assert!(body.len() <= RECORD_BYTES_MAX as usize);
        debug_assert_eq!(CheckpointRecord::decode(&body).as_ref(), Ok(&rec));
        let mut frame = Vec::with_capacity(fsutil::FRAME_HEADER_LEN + body.len());
        put_frame(&mut frame, &body);
        if let Err(source) = fsutil::write_all_at(&self.file, &frame, self.len) {
            return Err(self.poison(io_err("writing", &self.path)(source)));
        }
        self.len += frame.len() as u64;
        self.records.push(rec);
        Ok(epoch)
    }

    /// Fsyncs the file: every appended checkpoint is durable when it returns.
    pub fn sync(&mut self) -> Result<(), CheckpointLogError> {
        if self.read_only {
            return Err(CheckpointLogError::ReadOnly);
        }
        self.check_poisoned()?;
        if let Err(source) = fsutil::fdatasync_file(&self.file) {
            return Err(self.poison(io_err("syncing", &self.path)(source)));
        }
        Ok(())
    }

    /// The last checkpoint, if any.
    pub fn latest(&self) -> Option<&CheckpointRecord> {
        self.records.last()
    }

    /// The checkpoint of `epoch`, if the log has it.
    pub fn get(&self, epoch: u64) -> Option<&CheckpointRecord> {
        usize::try_from(epoch)
            .ok()
            .and_then(|e| self.records.get(e))
    }

    /// Number of checkpoints, which is also the next epoch.
    pub fn len(&self) -> u64 {
        self.records.len() as u64
    }

    /// Whether the log holds no checkpoint.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// All checkpoints in epoch order.
    pub fn iter(&self) -> std::slice::Iter<'_, CheckpointRecord> {
        self.records.iter()
    }

    /// Hash of the latest checkpoint, or zeros: the `prev` of the next one.
    pub fn head_hash(&self) -> Hash {
        self.latest().map(|r| r.hash()).unwrap_or(ZERO_HASH)
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The torn tail a read-only open found and left in place, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    fn check_poisoned(&self) -> Result<(), CheckpointLogError> {
        match &self.poisoned {
            Some(msg) => Err(CheckpointLogError::Poisoned(msg.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: CheckpointLogError) -> CheckpointLogError {
        tracing::error!(file = %self.path.display(), error = %e, "checkpoint log poisoned");
        self.poisoned = Some(e.to_string());
        e
    }
}

impl<'a> IntoIterator for &'a CheckpointLog {
    type Item = &'a CheckpointRecord;
    type IntoIter = std::slice::Iter<'a, CheckpointRecord>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn entries(epoch: u64) -> Vec<BranchEntry> {
        (0..3u8)
            .map(|b| BranchEntry {
                branch: [b * 16 + 1; 16],
                size: epoch * 10 + u64::from(b),
                root: [epoch as u8 ^ b; 32],
            })
            .collect()
    }

    fn record(epoch: u64, prev: Hash) -> CheckpointRecord {
        let entries = entries(epoch);
        CheckpointRecord {
            header: CheckpointHeader {
                epoch,
                prev,
                branches_root: branches_root(&entries),
                branch_count: entries.len() as u32,
                time: 1_700_000_000_000_000_000 + epoch as i64,
                validators: [0x55; 32],
            },
            entries,
            signatures: vec![([0x11; 32], [epoch as u8; 64])],
        }
    }

    fn grow(log: &mut CheckpointLog, n: u64) -> Vec<CheckpointRecord> {
        for e in log.len()..n {
            let rec = record(e, log.head_hash());
            assert_eq!(log.append(rec).unwrap(), e);
        }
        log.iter().cloned().collect()
    }

    fn record_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut o = 0;
        while o < bytes.len() {
            out.push(o);
            o += 12 + u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
        }
        out
    }

    #[test]
    fn chain_round_trips_through_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node").join(CHECKPOINTS_FILE);
        let mut log = CheckpointLog::open(&p).unwrap();
        assert!(log.is_empty() && log.latest().is_none());
        let recs = grow(&mut log, 20);
        log.sync().unwrap();
        drop(log);
        for log in [
            CheckpointLog::open(&p).unwrap(),
            CheckpointLog::open_read_only(&p).unwrap(),
        ] {
            assert_eq!(log.len(), 20);
            assert_eq!(log.iter().cloned().collect::<Vec<_>>(), recs);
            assert_eq!(log.latest(), recs.last());
            assert_eq!(log.get(7), Some(&recs[7]));
            assert_eq!(log.get(20), None);
            assert_eq!(log.get(u64::MAX), None);
            assert_eq!(recs[8].header.prev, recs[7].hash());
            assert!(log.torn_tail().is_none());
        }
    }

    #[test]
    fn appends_that_break_the_chain_are_refused_without_poisoning() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CheckpointLog::open(&dir.path().join(CHECKPOINTS_FILE)).unwrap();
        grow(&mut log, 3);
        let good = record(3, log.head_hash());
        let mut cases = Vec::new();
        cases.push(record(4, log.head_hash())); // wrong epoch
        cases.push(record(3, ZERO_HASH)); // wrong prev
        let mut c = good.clone();
        c.header.branch_count = 2;
        cases.push(c);
        let mut c = good.clone();
        c.entries[1].size += 1; // root no longer matches
        cases.push(c);
        let mut c = good.clone();
        c.entries.swap(0, 1);
        cases.push(c);
        let mut c = good.clone();
        c.entries[1].branch = c.entries[0].branch; // duplicate branch
        c.header.branches_root = [0; 32];
        cases.push(c);
        for bad in cases {
            assert!(matches!(
                log.append(bad),
                Err(CheckpointLogError::InvalidAppend { epoch: 3, .. })
            ));
        }
        assert_eq!(log.append(good).unwrap(), 3);
        log.sync().unwrap();
        assert_eq!(CheckpointLog::open(log.path()).unwrap().len(), 4);
    }

    #[test]
    fn torn_tail_is_cut_at_every_offset_of_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CHECKPOINTS_FILE);
        let mut log = CheckpointLog::open(&p).unwrap();
        let recs = grow(&mut log, 5);
        log.sync().unwrap();
        drop(log);
        let full = fs::read(&p).unwrap();
        let last = *record_offsets(&full).last().unwrap();
        for cut in last..full.len() {
            for flip in [false, true] {
                let mut b = full.clone();
                if flip {
                    b[cut] ^= 0x08;
                } else {
                    b.truncate(cut);
                }
                fs::write(&p, &b).unwrap();
                let ro = CheckpointLog::open_read_only(&p).unwrap();
                assert_eq!(ro.len(), 4, "cut {cut} flip {flip}");
                let expected_torn =
                    (b.len() > last).then_some((last as u64, (b.len() - last) as u64));
                assert_eq!(ro.torn_tail().map(|t| (t.offset, t.bytes)), expected_torn);
                assert_eq!(fs::read(&p).unwrap(), b, "read-only open wrote");
                let mut log = CheckpointLog::open(&p).unwrap();
                assert_eq!(log.len(), 4);
                assert_eq!(fs::metadata(&p).unwrap().len(), last as u64);
                log.append(recs[4].clone()).unwrap();
                log.sync().unwrap();
                assert_eq!(fs::read(&p).unwrap(), full);
            }
        }
    }

    #[test]
    fn tampering_in_the_middle_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CHECKPOINTS_FILE);
        let mut log = CheckpointLog::open(&p).unwrap();
        let recs = grow(&mut log, 6);
        log.sync().unwrap();
        drop(log);
        let full = fs::read(&p).unwrap();
        let offs = record_offsets(&full);

        // A flipped byte: checksum mismatch with valid records after it.
        let mut b = full.clone();
        b[offs[2] + 50] ^= 1;
        fs::write(&p, &b).unwrap();
        for r in [CheckpointLog::open(&p), CheckpointLog::open_read_only(&p)] {
            assert!(matches!(
                r,
                Err(CheckpointLogError::Corrupt { offset, epoch: 2, .. }) if offset == offs[2] as u64
            ));
        }
        assert_eq!(fs::read(&p).unwrap(), b, "corrupt log was modified");

        // Rewritten records with valid checksums: a changed header breaks the next prev; a
        // changed entry breaks branches_root; a changed signature is stored as given.
        let rewrite = |i: usize, rec: &CheckpointRecord| {
            let mut out = full[..offs[i]].to_vec();
            put_frame(&mut out, &rec.encode());
            out.extend_from_slice(&full[offs[i + 1]..]);
            fs::write(&p, &out).unwrap();
        };
        let mut r2 = recs[2].clone();
        r2.header.time += 1;
        rewrite(2, &r2);
        assert!(matches!(
            CheckpointLog::open(&p),
            Err(CheckpointLogError::Corrupt { epoch: 3, .. })
        ));
        let mut r2 = recs[2].clone();
        r2.entries[0].root[0] ^= 1;
        rewrite(2, &r2);
        assert!(matches!(
            CheckpointLog::open(&p),
            Err(CheckpointLogError::Corrupt { epoch: 2, .. })
        ));
        let mut r2 = recs[2].clone();
        r2.signatures[0].1[0] ^= 1;
        rewrite(2, &r2);
        assert_eq!(CheckpointLog::open(&p).unwrap().get(2), Some(&r2));
    }

    #[test]
    fn io_failure_poisons() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CHECKPOINTS_FILE);
        let mut log = CheckpointLog::open(&p).unwrap();
        grow(&mut log, 2);
        log.sync().unwrap();
        log.file = File::open(&p).unwrap();
        let first = log.append(record(2, log.head_hash())).unwrap_err();
        assert!(matches!(first, CheckpointLogError::Io { .. }));
        match log.sync().unwrap_err() {
            CheckpointLogError::Poisoned(msg) => assert_eq!(msg, first.to_string()),
            other => panic!("expected Poisoned, got {other:?}"),
        }
        assert_eq!(log.len(), 2);
        assert_eq!(CheckpointLog::open(&p).unwrap().len(), 2);
        assert!(matches!(
            CheckpointLog::open_read_only(&p)
                .unwrap()
                .append(record(2, ZERO_HASH)),
            Err(CheckpointLogError::ReadOnly)
        ));
    }
}

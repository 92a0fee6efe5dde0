//! The attestation log `attestations/attestations.log`: one checksummed record per accepted
//! signed write, appended and fsynced before the write is acknowledged.
//!
//! ```text
//! file    := magic "ANNATT01" | record*
//! record  := len:u32 | checksum:u64 | payload (len bytes)
//!            checksum = xxh3-64(len bytes || payload), as the WAL's frames
//! payload := version:u8 = 1 | device_key:32 | seq:u64 | batch_root:32 | sig:64
//!          | batch_size:u32 | run_count:u32 | run * run_count
//! run     := branch:16 | height:u64 | start_index:u32 | count:u32
//! ```
//! All integers little-endian. The runs locate the batch's rows in batch (body) order; their
//! counts add up to `batch_size`.
//!
//! Opening reads every record; the first incomplete or damaged one and everything after it are
//! a torn tail (a crash mid-append: that write was never acknowledged) and are cut, as the
//! WAL's are. A failed append or fsync poisons the handle: later appends return that error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use annals_format::block::BranchId;
use annals_format::hash::Hash;
use xxhash_rust::xxh3::Xxh3;

use crate::receipt::Run;

/// First bytes of the file.
pub const MAGIC: &[u8; 8] = b"ANNATT01";
/// Payload version.
pub const RECORD_VERSION: u8 = 1;
/// Largest payload (a batch of a million rows in a million runs still fits).
pub const RECORD_BYTES_MAX: usize = 64 << 20;
const FRAME_HEADER: usize = 12;
const FIXED: usize = 1 + 32 + 8 + 32 + 64 + 4 + 4;
const RUN_BYTES: usize = 16 + 8 + 4 + 4;

/// What the ledger keeps of one device-signed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestRecord {
    pub device_key: [u8; 32],
    pub seq: u64,
    /// `MTH` of the batch's rows, in body order.
    pub batch_root: Hash,
    pub sig: [u8; 64],
    pub batch_size: u32,
    /// Where the batch's rows are, in batch order.
    pub runs: Vec<Run>,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("attestation log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attestation log {path}: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("the attestation log failed earlier and accepts no more records: {0}")]
    Poisoned(String),
    #[error("attestation record: {0}")]
    Invalid(String),
}

impl AttestRecord {
    /// The payload bytes. Refuses a record whose runs do not add up to its batch size.
    pub fn encode(&self) -> Result<Vec<u8>, LogError> {
        let total: u64 = self.runs.iter().map(|r| u64::from(r.count)).sum();
        if total != u64::from(self.batch_size) || self.batch_size == 0 {
            return Err(LogError::Invalid(format!(
                "runs hold {total} rows, batch_size is {}",
                self.batch_size
            )));
        }
        let len = FIXED + self.runs.len() * RUN_BYTES;
        if len > RECORD_BYTES_MAX {
            return Err(LogError::Invalid(format!(
                "{len} bytes, more than {RECORD_BYTES_MAX}"
            )));
        }
        let mut b = Vec::with_capacity(len);
        b.push(RECORD_VERSION);
        b.extend_from_slice(&self.device_key);
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.batch_root);
        b.extend_from_slice(&self.sig);
        b.extend_from_slice(&self.batch_size.to_le_bytes());
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.branch);
            b.extend_from_slice(&r.height.to_le_bytes());
            b.extend_from_slice(&r.first_index.to_le_bytes());
            b.extend_from_slice(&r.count.to_le_bytes());
        }
        debug_assert_eq!(b.len(), len);
        Ok(b)
    }

    /// Reads a payload back, strictly (exact length, runs adding up to the batch size).
    pub fn decode(b: &[u8]) -> Result<AttestRecord, String> {
        if b.len() < FIXED {
            return Err(format!("{} bytes, shorter than a record", b.len()));
        }
        if b[0] != RECORD_VERSION {
            return Err(format!(
                "record version {}, expected {RECORD_VERSION}",
                b[0]
            ));
        }
        let arr = |at: usize, n: usize| &b[at..at + n];
        let u32_at = |at: usize| u32::from_le_bytes(arr(at, 4).try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(arr(at, 8).try_into().expect("8 bytes"));
        let device_key: [u8; 32] = arr(1, 32).try_into().expect("32 bytes");
        let seq = u64_at(33);
        let batch_root: Hash = arr(41, 32).try_into().expect("32 bytes");
        let sig: [u8; 64] = arr(73, 64).try_into().expect("64 bytes");
        let batch_size = u32_at(137);
        let run_count = u32_at(141) as usize;
        if b.len() != FIXED + run_count * RUN_BYTES {
            return Err(format!(
                "{} bytes for {run_count} runs, expected {}",
                b.len(),
                FIXED + run_count * RUN_BYTES
            ));
        }
        let mut runs = Vec::with_capacity(run_count);
        let mut total = 0u64;
        for i in 0..run_count {
            let at = FIXED + i * RUN_BYTES;
            let branch: BranchId = arr(at, 16).try_into().expect("16 bytes");
            let run = Run {
                branch,
                height: u64_at(at + 16),
                first_index: u32_at(at + 24),
                count: u32_at(at + 28),
            };
            total += u64::from(run.count);
            runs.push(run);
        }
        if total != u64::from(batch_size) || batch_size == 0 {
            return Err(format!(
                "runs hold {total} rows, batch_size is {batch_size}"
            ));
        }
        Ok(AttestRecord {
            device_key,
            seq,
            batch_root,
            sig,
            batch_size,
            runs,
        })
    }
}

fn checksum(len: &[u8; 4], payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(len);
    h.update(payload);
    h.digest()
}

/// A framed record: header and payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(&len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads every whole record of a file's bytes (after the magic). Returns them and the length
/// of the good prefix; anything after it is a torn tail. `bytes` starts with the magic.
pub fn read_records(bytes: &[u8]) -> (Vec<AttestRecord>, usize) {
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    while let Some(head) = bytes.get(at..at + FRAME_HEADER) {
        let len: [u8; 4] = head[..4].try_into().expect("4 bytes");
        let n = u32::from_le_bytes(len) as usize;
        let sum = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
        if n > RECORD_BYTES_MAX {
            break;
        }
        let Some(payload) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + n) else {
            break;
        };
        if checksum(&len, payload) != sum {
            break;
        }
        match AttestRecord::decode(payload) {
            Ok(r) => out.push(r),
            // A record with a good checksum that does not decode was written so: damage.
            Err(_) => break,
        }
        at += FRAME_HEADER + n;
    }
    (out, at)
}

/// The open log, appending.
#[derive(Debug)]
pub struct AttestLog {
    path: PathBuf,
    file: File,
    len: u64,
    poisoned: Option<String>,
    no_sync: bool,
}

impl AttestLog {
    /// Opens (creating) the log, reads its records and cuts a torn tail. Returns the log, its
    /// records and how many bytes were cut.
    pub fn open(
        path: &Path,
        no_sync: bool,
    ) -> Result<(AttestLog, Vec<AttestRecord>, u64), LogError> {
        let io = |e| LogError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut cut = 0u64;
        let records = if bytes.len() < MAGIC.len() {
            // New, or torn while the magic was written (nothing was ever acknowledged).
            if !MAGIC.starts_with(&bytes) {
                return Err(LogError::Corrupt {
                    path: path.display().to_string(),
                    detail: "does not start with the attestation log magic".into(),
                });
            }
            annals_storage::fsutil::truncate_durable(&file, 0).map_err(io)?;
            file.write_all(MAGIC).map_err(io)?;
            file.sync_all().map_err(io)?;
            annals_storage::fsutil::fsync_parent(path).map_err(io)?;
            bytes = MAGIC.to_vec();
            Vec::new()
        } else {
            if &bytes[..MAGIC.len()] != MAGIC {
                return Err(LogError::Corrupt {
                    path: path.display().to_string(),
                    detail: "does not start with the attestation log magic".into(),
                });
            }
            let (records, good) = read_records(&bytes);
            if good < bytes.len() {
                cut = (bytes.len() - good) as u64;
                tracing::warn!(path = %path.display(), bytes_cut = cut, records = records.len(), "attestation log: torn tail cut");
                annals_storage::fsutil::truncate_durable(&file, good as u64).map_err(io)?;
                bytes.truncate(good);
            }
            records
        };
        let log = AttestLog {
            path: path.to_owned(),
            file,
            len: bytes.len() as u64,
            poisoned: None,
            no_sync,
        };
        Ok((log, records, cut))
    }

    /// Appends a record and makes it durable before returning.
    pub fn append(&mut self, rec: &AttestRecord) -> Result<(), LogError> {
        if let Some(p) = &self.poisoned {
            return Err(LogError::Poisoned(p.clone()));
        }
        let payload = rec.encode()?;
        debug_assert_eq!(AttestRecord::decode(&payload).as_ref(), Ok(rec));
        let bytes = frame(&payload);
        let result = (|| {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(&bytes, self.len)?;
            if !self.no_sync {
                annals_storage::fsutil::fdatasync_file(&self.file)?;
            }
            Ok::<(), std::io::Error>(())
        })();
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let msg = format!("{}: {e}", self.path.display());
                self.poisoned = Some(msg.clone());
                Err(LogError::Poisoned(msg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, runs: usize) -> AttestRecord {
        let runs: Vec<Run> = (0..runs)
            .map(|i| Run {
                branch: [i as u8; 16],
                height: 3 + i as u64,
                first_index: 10 * i as u32,
                count: 2,
            })
            .collect();
        AttestRecord {
            device_key: [7; 32],
            seq,
            batch_root: [seq as u8; 32],
            sig: [9; 64],
            batch_size: runs.len() as u32 * 2,
            runs,
        }
    }

    #[test]
    fn record_round_trips_and_is_fixed() {
        let r = record(0x0102_0304_0506_0708, 2);
        let b = r.encode().unwrap();
        assert_eq!(b.len(), FIXED + 2 * RUN_BYTES);
        assert_eq!(b[0], 1);
        assert_eq!(&b[33..41], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(AttestRecord::decode(&b).unwrap(), r);
        // Every truncation and a wrong version are refused.
        for n in 0..b.len() {
            assert!(AttestRecord::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut v = b.clone();
        v[0] = 2;
        assert!(AttestRecord::decode(&v).is_err());
        // Runs that do not add up to the batch size.
        let mut bad = r.clone();
        bad.batch_size = 5;
        assert!(bad.encode().is_err());
        let mut v = b;
        v[137] = 5;
        assert!(AttestRecord::decode(&v).is_err());
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attestations.log");
        {
            let (mut log, recs, cut) = AttestLog::open(&path, false).unwrap();
            assert!(recs.is_empty());
            assert_eq!(cut, 0);
            log.append(&record(1, 1)).unwrap();
            log.append(&record(2, 3)).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        let first_end = MAGIC.len() + FRAME_HEADER + FIXED + RUN_BYTES;
        // Every cut inside the second record leaves exactly the first.
        for n in first_end..full.len() {
            std::fs::write(&path, &full[..n]).unwrap();
            let (_, recs, cut) = AttestLog::open(&path, false).unwrap();
            assert_eq!(recs, vec![record(1, 1)], "cut at {n}");
            assert_eq!(cut as usize, n - first_end);
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, first_end);
        }
        // A flipped byte in the last record's payload: cut too.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let (mut log, recs, _) = AttestLog::open(&path, false).unwrap();
        assert_eq!(recs, vec![record(1, 1)]);
        // Appending after the cut yields a readable log.
        log.append(&record(3, 2)).unwrap();
        drop(log);
        let (_, recs, cut) = AttestLog::open(&path, false).unwrap();
        assert_eq!(recs, vec![record(1, 1), record(3, 2)]);
        assert_eq!(cut, 0);
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attestations.log");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(
            AttestLog::open(&path, false),
            Err(LogError::Corrupt { .. })
        ));
    }
}

//! Offline audit of a data directory: recompute every hash and signature from the bytes.
//!
//! Read-only (safe on a running node): branch logs and the checkpoint log are opened without
//! cutting torn tails, block files are read, nothing is written. For every finished block
//! file it re-encodes each row from the stored columns, recomputes `rows_root`, and checks the
//! header against the branch log and the node's signature; for every branch log it checks the
//! chain of `prev` hashes and signatures; for every checkpoint it checks the chain, the
//! signature and that each branch entry is a state the branch log actually had. Every JSON-LD
//! context a block header names must be in `contexts/` and every file there must hash to its
//! name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use annals_format::block::{BlockHeader, BranchId};
use annals_format::hash::many::leaf_hashes_of;
use annals_format::hash::{to_hex, Hash};
use annals_format::merkle::root_of;
use annals_format::sign::verify;
use annals_storage::block_file::{row_encodings, BlockFileReader, FILE_SUFFIX};
use annals_storage::branch_log::BranchLog;
use annals_storage::checkpoint_log::CheckpointLog;
use serde::Serialize;

use crate::error::EngineError;

/// One thing that failed a check.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// File (and row group / height / epoch) where it was found.
    pub location: String,
    pub message: String,
}

/// What an audit checked and found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AuditReport {
    pub branches: usize,
    pub blocks_in_logs: u64,
    pub block_files: usize,
    pub blocks_checked: u64,
    pub rows_checked: u64,
    /// Logged blocks not yet in a finished block file (still in the WAL of a running node).
    pub blocks_pending: u64,
    /// Bytes after the last complete WAL frame (cut at the next start).
    pub wal_torn_bytes: u64,
    /// Damaged block files the node moved aside at start (`*.parquet.damaged`).
    pub quarantined: Vec<String>,
    pub checkpoints: u64,
    /// Distinct JSON-LD contexts named by block headers, each found in `contexts/` and
    /// re-hashed.
    pub contexts_checked: usize,
    pub problems: Vec<Problem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    fn problem(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            location: location.into(),
            message: message.into(),
        });
    }
}

fn node_key(dir: &Path) -> Result<[u8; 32], EngineError> {
    let path = dir.join(crate::keys::NODE_KEY_FILE);
    let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| EngineError::Corrupt(format!("{}: not a 32-byte key", path.display())))?;
    Ok(annals_format::sign::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes())
}

/// Audits `data_dir`. `Err` only when the directory cannot be read at all; everything found
/// wrong inside it is a [`Problem`] in the report.
pub fn audit(data_dir: &Path) -> Result<AuditReport, EngineError> {
    let mut r = AuditReport::default();
    let pubkey = node_key(data_dir)?;

    // Branch logs.
    let mut logs: HashMap<BranchId, BranchLog> = HashMap::new();
    // Context hash -> (first block naming it, how many blocks name it).
    let mut contexts: BTreeMap<Hash, (String, u64)> = BTreeMap::new();
    let bdir = data_dir.join("branches");
    for entry in sorted(&bdir)? {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut branch = [0u8; 16];
        if hex::decode_to_slice(&name, &mut branch).is_err() {
            r.problem(entry.display().to_string(), "not a branch directory");
            continue;
        }
        match BranchLog::open_read_only(&entry, branch) {
            Ok(log) => {
                if let Some(t) = log.torn_tail() {
                    r.problem(
                        format!("{} offset {}", t.file.display(), t.offset),
                        format!("{} bytes after the last valid record (torn or damaged; on a running node possibly an append in progress)", t.bytes),
                    );
                }
                for h in 0..log.size() {
                    match log.header(h) {
                        Ok((header, _, sig)) => {
                            if let Err(e) = verify(&pubkey, &header.hash(), &sig) {
                                r.problem(
                                    format!("{}/blocks.log height {h}", entry.display()),
                                    format!("signature: {e}"),
                                );
                            }
                            if header.context != [0; 32] {
                                contexts
                                    .entry(header.context)
                                    .or_insert_with(|| {
                                        (format!("{}/blocks.log height {h}", entry.display()), 0)
                                    })
                                    .1 += 1;
                            }
                        }
                        Err(e) => r.problem(
                            format!("{}/blocks.log height {h}", entry.display()),
                            e.to_string(),
                        ),
                    }
                }
                if let Err(e) = log.verify_tree() {
                    r.problem(format!("{}/tree.hashes", entry.display()), e.to_string());
                }
                r.blocks_in_logs += log.size();
                logs.insert(branch, log);
            }
            Err(e) => r.problem(format!("{}", entry.display()), e.to_string()),
        }
    }
    r.branches = logs.len();
    check_contexts(data_dir, &contexts, &mut r)?;

    // Block files: rows re-hashed to rows_root, headers equal to the logs'.
    let mut seen: HashSet<(BranchId, u64)> = HashSet::new();
    for bd in sorted(&data_dir.join("blocks"))? {
        for file in sorted(&bd)? {
            if file.to_string_lossy().ends_with(".parquet.damaged") {
                // Judged below: a finding only if blocks of its branch are now missing.
                r.quarantined.push(file.display().to_string());
                continue;
            }
            if !file.to_string_lossy().ends_with(FILE_SUFFIX) {
                continue;
            }
            r.block_files += 1;
            let loc = file.display().to_string();
            let reader = match BlockFileReader::open(&file) {
                Ok(x) => x,
                Err(e) => {
                    r.problem(&loc, e.to_string());
                    continue;
                }
            };
            for b in reader.blocks() {
                let at = format!("{loc} row group {}", b.row_group);
                let header = match BlockHeader::decode(&b.header) {
                    Ok(h) => h,
                    Err(e) => {
                        r.problem(&at, format!("header: {e}"));
                        continue;
                    }
                };
                if !seen.insert((header.branch, header.height)) {
                    r.problem(
                        &at,
                        format!(
                            "block {} of branch {} stored twice",
                            header.height,
                            to_hex(&header.branch)
                        ),
                    );
                }
                match logs.get(&header.branch) {
                    None => r.problem(
                        &at,
                        format!("branch {} has no branch log", to_hex(&header.branch)),
                    ),
                    Some(log) if header.height >= log.size() => r.problem(
                        &at,
                        format!(
                            "block {} is beyond its branch log (size {})",
                            header.height,
                            log.size()
                        ),
                    ),
                    Some(log) => match log.header(header.height) {
                        Ok((_, bytes, sig))
                            if bytes == b.header && sig.as_slice() == b.signature.as_slice() => {}
                        Ok(_) => r.problem(
                            &at,
                            format!(
                                "header or signature of block {} differs from the branch log",
                                header.height
                            ),
                        ),
                        Err(e) => r.problem(&at, e.to_string()),
                    },
                }
                // A damaged file can make the Parquet/Arrow decoders panic; that is a finding, not a crash.
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    reader.read_row_group(b.row_group as usize)
                }));
                let batch = match read {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        r.problem(&at, e.to_string());
                        continue;
                    }
                    Err(_) => {
                        r.problem(&at, "row group cannot be decoded (the decoder panicked)");
                        continue;
                    }
                };
                match row_encodings(&header.table, &batch) {
                    Ok(rows) => {
                        let leaves: Vec<Hash> = leaf_hashes_of(&rows);
                        if rows.len() != header.row_count as usize {
                            r.problem(
                                &at,
                                format!("{} rows, header says {}", rows.len(), header.row_count),
                            );
                        } else if root_of(&leaves) != header.rows_root {
                            r.problem(
                                &at,
                                format!("rows do not hash to rows_root of block {}", header.height),
                            );
                        } else if !b.chunk_roots.is_empty()
                            && b.chunk_roots
                                != annals_format::merkle::chunk_roots(
                                    &leaves,
                                    annals_storage::block_file::PROOF_CHUNK_ROWS,
                                )
                                .concat()
                        {
                            // Proofs trust these to skip the other rows of the block.
                            r.problem(
                                &at,
                                format!(
                                    "stored proof piece roots of block {} differ from its rows",
                                    header.height
                                ),
                            );
                        }
                        let (tmin, tmax) = rows
                            .iter()
                            .filter_map(|x| annals_format::row::decode_row(x).ok().map(|d| d.time))
                            .fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
                        if !rows.is_empty() && (tmin != header.time_min || tmax != header.time_max)
                        {
                            r.problem(&at, "row times do not match the header's time range");
                        }
                        r.rows_checked += rows.len() as u64;
                    }
                    Err(e) => r.problem(&at, e.to_string()),
                }
                r.blocks_checked += 1;
            }
        }
    }
    // Logged blocks not in a finished file must still be in the WAL, and re-hash from it.
    let wal = scan_wal(data_dir, &mut r)?;
    for (branch, log) in &logs {
        for h in 0..log.size() {
            if seen.contains(&(*branch, h)) {
                continue;
            }
            r.blocks_pending += 1;
            let at = format!("branch {} height {h}", to_hex(branch));
            match wal.get(&(*branch, h)) {
                None => {
                    let dir = to_hex(branch);
                    // Each quarantined file of this branch is reported once, as a finding.
                    let hits: Vec<String> = r
                        .quarantined
                        .iter()
                        .filter(|q| q.contains(&dir))
                        .cloned()
                        .collect();
                    r.quarantined.retain(|q| !q.contains(&dir));
                    for q in hits {
                        r.problem(
                            q,
                            "damaged block file, moved aside at start; its blocks were not rebuilt",
                        );
                    }
                    r.problem(at, "in the branch log but in no block file and not in the WAL: its rows are lost")
                }
                Some(rows) => {
                    if let Ok((header, _, _)) = log.header(h) {
                        let leaves: Vec<Hash> = leaf_hashes_of(rows);
                        if rows.len() != header.row_count as usize
                            || root_of(&leaves) != header.rows_root
                        {
                            r.problem(
                                at,
                                "rows in the WAL do not hash to the logged header's rows_root",
                            );
                        } else {
                            r.rows_checked += rows.len() as u64;
                        }
                    }
                }
            }
        }
    }

    // Checkpoints: chain, signatures, and entries that the branch logs really had.
    let cp_path = data_dir.join("checkpoints.log");
    if cp_path.exists() {
        match CheckpointLog::open_read_only(&cp_path) {
            Ok(cps) => {
                if let Some(t) = cps.torn_tail() {
                    r.problem(
                        format!("{} offset {}", t.file.display(), t.offset),
                        format!(
                            "{} bytes after the last valid checkpoint (torn or damaged)",
                            t.bytes
                        ),
                    );
                }
                for rec in cps.iter() {
                    r.checkpoints += 1;
                    let at = format!("{} epoch {}", cp_path.display(), rec.header.epoch);
                    let hash = rec.header.hash();
                    if !rec
                        .signatures
                        .iter()
                        .any(|(k, s)| *k == pubkey && verify(k, &hash, s).is_ok())
                    {
                        r.problem(&at, "no valid signature by the node key");
                    }
                    for e in &rec.entries {
                        match logs.get(&e.branch) {
                            Some(log) if e.size <= log.size() => match log.root_at(e.size) {
                                Ok(root) if root == e.root => {}
                                _ => r.problem(
                                    &at,
                                    format!(
                                        "branch {} at size {}: root differs from the branch log",
                                        to_hex(&e.branch),
                                        e.size
                                    ),
                                ),
                            },
                            Some(log) => r.problem(
                                &at,
                                format!(
                                    "branch {} at size {} but its log has only {}",
                                    to_hex(&e.branch),
                                    e.size,
                                    log.size()
                                ),
                            ),
                            None => r.problem(
                                &at,
                                format!("branch {} has no branch log", to_hex(&e.branch)),
                            ),
                        }
                    }
                }
            }
            Err(e) => r.problem(cp_path.display().to_string(), e.to_string()),
        }
    }
    Ok(r)
}

/// Every context a block names is in `contexts/`; every file there hashes to its name.
fn check_contexts(
    data_dir: &Path,
    named: &BTreeMap<Hash, (String, u64)>,
    r: &mut AuditReport,
) -> Result<(), EngineError> {
    let mut stored: HashMap<Hash, bool> = HashMap::new();
    for file in sorted(&data_dir.join(crate::jsonld::CONTEXTS_DIR))? {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with('.') {
            continue; // a temporary file of an interrupted write: never named by a block
        }
        let Some(hash) = crate::jsonld::hash_of_file_name(&name) else {
            r.problem(
                file.display().to_string(),
                "not a context file (<64 lowercase hex>.jsonld)",
            );
            continue;
        };
        let ok = match std::fs::read(&file) {
            Ok(bytes) if crate::jsonld::context_hash(&bytes) == hash => true,
            Ok(bytes) => {
                r.problem(
                    file.display().to_string(),
                    format!(
                        "its bytes hash to {}, not to its name",
                        to_hex(&crate::jsonld::context_hash(&bytes))
                    ),
                );
                false
            }
            Err(e) => {
                r.problem(file.display().to_string(), e.to_string());
                false
            }
        };
        stored.insert(hash, ok);
    }
    for (hash, (first, count)) in named {
        let path = crate::jsonld::context_path(data_dir, hash);
        match stored.get(hash) {
            Some(true) => r.contexts_checked += 1,
            Some(false) => r.problem(
                first.clone(),
                format!(
                    "names JSON-LD context {} ({count} block(s) do), but {} does not hash to it",
                    to_hex(hash),
                    path.display()
                ),
            ),
            None => r.problem(
                first.clone(),
                format!(
                    "names JSON-LD context {} ({count} block(s) do), but {} is missing",
                    to_hex(hash),
                    path.display()
                ),
            ),
        }
    }
    Ok(())
}

/// Rows per (branch, height) of every sealed block still in the WALs, read without changing them.
type WalBlocks = HashMap<(BranchId, u64), Vec<Vec<u8>>>;

fn scan_wal(data_dir: &Path, r: &mut AuditReport) -> Result<WalBlocks, EngineError> {
    let mut rows: HashMap<(BranchId, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut sealed: HashSet<(BranchId, u64)> = HashSet::new();
    let cfg = annals_storage::wal::WalConfig {
        read_only: true,
        ..Default::default()
    };
    for dir in sorted(&data_dir.join("wal"))? {
        let res =
            annals_storage::wal::replay_with(&dir, &cfg, |_, payload| -> Result<(), String> {
                match crate::walrec::decode(payload)? {
                    crate::walrec::WalRecord::Rows {
                        branch,
                        height,
                        rows: rs,
                        ..
                    } => {
                        rows.entry((branch, height))
                            .or_default()
                            .extend(rs.into_iter().map(std::borrow::Cow::into_owned));
                    }
                    crate::walrec::WalRecord::Seal { branch, height, .. } => {
                        sealed.insert((branch, height));
                    }
                    crate::walrec::WalRecord::Request { .. } => {}
                }
                Ok(())
            });
        match res {
            // A torn tail is what a crash (or, on a running node, a write in progress) leaves:
            // the next start cuts it; nothing acknowledged is in it.
            Ok(stats) => r.wal_torn_bytes += stats.torn_bytes_cut,
            Err(e) => r.problem(dir.display().to_string(), e.to_string()),
        }
    }
    rows.retain(|k, _| sealed.contains(k));
    Ok(rows)
}

fn sorted(dir: &Path) -> Result<Vec<std::path::PathBuf>, EngineError> {
    let mut v = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                v.push(e.map_err(|e| EngineError::io(dir, e))?.path());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EngineError::io(dir, e)),
    }
    v.sort();
    Ok(v)
}

//! Proofs: the `annals-proof/1` document of a row (FORMAT.md), and consistency paths between
//! branch-log sizes.
//!
//! A proof is built from one [`Snapshot`] and the latest checkpoint, read in that order (a
//! block committed by the checkpoint is sealed, so the snapshot holds it either in a finished
//! block file or in memory with its header, see [`crate::view::MemBlock::sealed`]):
//! 1. the block's header and signature (file footer, or the in-memory block once sealed);
//! 2. the block's rows, re-encoded from its Parquet row group or its in-memory chunks, and the
//!    row's inclusion path under `rows_root`, recomputed from all the block's leaf hashes
//!    (O(block rows): the cost of a proof today, see docs/ARCHITECTURE.md "Proofs");
//! 3. the block hash's inclusion path at leaf `height` of the branch log at the size the
//!    checkpoint names, read from the log's stored hashes (`tree.hashes`, O(log² n) reads);
//! 4. the branch entry and its path under `branches_root` (O(branches)), the checkpoint header
//!    and its signatures.
//!
//! Every proof is verified here before it is returned, with the same steps an auditor runs:
//! a proof that does not verify is a [`ProofError::Corrupt`], never an answer.
//!
//! A `tx_id` is a hash and does not say where its row is. [`locate`] takes the position from
//! the write receipt (`branch`, `height`, `index`) and checks that the row there has that
//! `tx_id`; without a position it re-hashes blocks, newest first, at most
//! [`SEARCH_ROWS_MAX`] rows.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use annals_format::block::{tx_id, BlockHeader, BranchId};
use annals_format::checkpoint::BranchEntry;
use annals_format::hash::many::leaf_hashes_of;
use annals_format::hash::{hash_from_hex, leaf_hash, node_hash, to_hex, Hash};
use annals_format::merkle::{
    inclusion_path, root_of, verify_consistency, verify_inclusion, Chunked, LeafHashes, Levels,
    RangeHasher,
};
use annals_format::row::{decode_row, encode_row, ColumnRef, Kind, ValueRef};
use annals_format::CheckpointHeader;
use annals_storage::block_file::{row_encodings, PageReader, PROOF_CHUNK_ROWS};
use annals_storage::branch_log::{stored_hash_count, stored_hash_index, TREE_FILE};
use annals_storage::checkpoint_log::CheckpointRecord;
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::view::{BlockFile, MemBlock, Snapshot};

/// The `format` of a proof document.
pub const PROOF_FORMAT: &str = "annals-proof/1";
/// The first bytes of the binary form of a proof, [`Proof::to_binary`]: `APRF`, version 1.
pub const PROOF_BIN_MAGIC: [u8; 5] = *b"APRF\x01";
/// Most rows [`locate`] re-hashes when no position is given (about a second of CPU).
pub const SEARCH_ROWS_MAX: u64 = 2_000_000;

/// Why no proof (or consistency path) could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// No row with this `tx_id` (at this position) exists.
    #[error("{0}")]
    NotFound(String),
    /// The row exists but its block is still open: it has no header yet.
    #[error("{0}")]
    NotSealed(String),
    /// The row's block is sealed but no checkpoint commits to it yet.
    #[error("{0}")]
    NotCheckpointed(String),
    /// The request itself is wrong (a size beyond the log, `from > to`).
    #[error("{0}")]
    Invalid(String),
    /// Stored data contradicts itself (a recomputed hash differs): run `annals audit`.
    #[error("ledger data is damaged: {0}; run `annals audit`")]
    Corrupt(String),
    /// Reading stored data failed.
    #[error("reading the ledger failed: {0}")]
    Io(String),
}

impl ProofError {
    /// A short machine-readable reason (the HTTP API's `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProofError::NotFound(_) => "not_found",
            ProofError::NotSealed(_) => "not_sealed",
            ProofError::NotCheckpointed(_) => "not_checkpointed",
            ProofError::Invalid(_) => "invalid",
            ProofError::Corrupt(_) => "corrupt",
            ProofError::Io(_) => "io",
        }
    }

    /// Whether waiting (for the block to be sealed and checkpointed) can change the answer.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            ProofError::NotSealed(_) | ProofError::NotCheckpointed(_)
        )
    }
}

/// Where a row sits in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowLocation {
    pub branch: BranchId,
    pub height: u64,
    pub index: u32,
}

/// What a caller knows of a row's position (from its write receipt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocationHint {
    pub branch: Option<BranchId>,
    pub height: Option<u64>,
    pub index: Option<u32>,
}

/// An Ed25519 signature with the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySig {
    pub key: [u8; 32],
    pub sig: [u8; 64],
}

/// An `annals-proof/1` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The canonical row encoding (`row_hex`); the document's `row` is decoded from it.
    pub row: Vec<u8>,
    pub tx_id: Hash,
    /// Encoded block header.
    pub block_header: Vec<u8>,
    pub block_index: u32,
    pub block_path: Vec<Hash>,
    pub block_signature: KeySig,
    pub branch_size: u64,
    pub branch_path: Vec<Hash>,
    pub checkpoint_header: CheckpointHeader,
    pub entry: BranchEntry,
    pub entry_index: u64,
    pub entry_path: Vec<Hash>,
    pub checkpoint_signatures: Vec<KeySig>,
    /// The device signature over a batch holding the row, when the row was written signed.
    pub attestation: Option<AttestationProof>,
}

/// The `attestation` member (FORMAT.md "Device attestation"): the row is leaf `index` of a
/// batch of `batch_size` rows whose root, reached through `path`, device `device_key` signed
/// as batch `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationProof {
    pub device_key: [u8; 32],
    pub seq: u64,
    pub batch_size: u64,
    pub index: u64,
    pub path: Vec<Hash>,
    pub sig: [u8; 64],
}

impl AttestationProof {
    fn to_json(&self) -> Value {
        json!({
            "device_key": to_hex(&self.device_key),
            "seq": self.seq,
            "batch_size": self.batch_size,
            "index": self.index,
            "path": hexes(&self.path),
            "sig": to_hex(&self.sig),
        })
    }

    /// Checks the device's signature over the batch root the row and path lead to.
    pub fn verify(&self, leaf: &Hash) -> Result<Hash, String> {
        let root =
            annals_format::merkle::inclusion_root(leaf, self.index, self.batch_size, &self.path)
                .ok_or_else(|| {
                    format!(
                        "attestation: a path of {} hashes does not fit index {} of a batch of {}",
                        self.path.len(),
                        self.index,
                        self.batch_size
                    )
                })?;
        let d = crate::attest::digest(&self.device_key, self.seq, &root);
        annals_format::sign::verify(&self.device_key, &d, &self.sig).map_err(|e| {
            format!(
                "attestation: device {} batch {}: {e}",
                to_hex(&self.device_key),
                self.seq
            )
        })?;
        Ok(root)
    }
}

fn hexes(v: &[Hash]) -> Vec<String> {
    v.iter().map(|h| to_hex(h)).collect()
}

fn keysig_json(k: &KeySig) -> Value {
    json!({"key": to_hex(&k.key), "sig": to_hex(&k.sig)})
}

/// The document's `row` object: table, time and the columns of the canonical encoding, in
/// its (sorted) order, with FORMAT.md's kind names.
pub fn row_json(encoding: &[u8]) -> Result<Value, String> {
    let row = decode_row(encoding).map_err(|e| e.to_string())?;
    let mut cols = Vec::with_capacity(row.columns.len());
    for c in &row.columns {
        let value = match c.value {
            ValueRef::Tag(s) | ValueRef::Str(s) => json!(s),
            ValueRef::F64(v) => {
                // JSON has no NaN or infinity; ingest refuses them, so a stored one is damage.
                let n = serde_json::Number::from_f64(v).ok_or_else(|| {
                    format!("column {:?} holds {v}, which JSON cannot carry", c.name)
                })?;
                Value::Number(n)
            }
            ValueRef::I64(v) => json!(v),
            ValueRef::U64(v) => json!(v),
            ValueRef::Bool(v) => json!(v),
        };
        cols.push(json!({"name": c.name, "kind": c.value.kind().name(), "value": value}));
    }
    Ok(json!({"table": row.table, "time": row.time, "columns": cols}))
}

/// Encodes a document's `row` object (columns in any order) canonically.
pub fn encode_row_json(row: &Value) -> Result<Vec<u8>, String> {
    let table = row["table"].as_str().ok_or("row.table is not a string")?;
    let time = row["time"].as_i64().ok_or("row.time is not an i64")?;
    let cols = row["columns"]
        .as_array()
        .ok_or("row.columns is not a list")?;
    let mut out: Vec<ColumnRef<'_>> = Vec::with_capacity(cols.len());
    for c in cols {
        let name = c["name"].as_str().ok_or("a column has no name")?;
        let kind = c["kind"]
            .as_str()
            .and_then(Kind::from_name)
            .ok_or_else(|| format!("column {name:?}: unknown kind {}", c["kind"]))?;
        let v = &c["value"];
        let bad = || format!("column {name:?}: value {v} is not a {kind}");
        let value = match kind {
            Kind::Tag => ValueRef::Tag(v.as_str().ok_or_else(bad)?),
            Kind::Str => ValueRef::Str(v.as_str().ok_or_else(bad)?),
            Kind::F64 => ValueRef::F64(v.as_f64().ok_or_else(bad)?),
            Kind::I64 => ValueRef::I64(v.as_i64().ok_or_else(bad)?),
            Kind::U64 => ValueRef::U64(v.as_u64().ok_or_else(bad)?),
            Kind::Bool => ValueRef::Bool(v.as_bool().ok_or_else(bad)?),
        };
        out.push(ColumnRef { name, value });
    }
    out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut enc = Vec::new();
    encode_row(&mut enc, table, time, &out).map_err(|e| e.to_string())?;
    Ok(enc)
}

impl Proof {
    /// The document exactly as FORMAT.md spells it.
    pub fn to_json(&self) -> Value {
        let row = row_json(&self.row).expect("a proof's row was decoded when it was built");
        let mut doc = json!({
            "format": PROOF_FORMAT,
            "row": row,
            "row_hex": hex::encode(&self.row),
            "tx_id": to_hex(&self.tx_id),
            "block": {
                "header_hex": hex::encode(&self.block_header),
                "index": self.block_index,
                "path": hexes(&self.block_path),
                "signature": keysig_json(&self.block_signature),
            },
            "branch": { "size": self.branch_size, "path": hexes(&self.branch_path) },
            "checkpoint": {
                "header_hex": hex::encode(self.checkpoint_header.encode()),
                "entry_hex": hex::encode(self.entry.encode()),
                "entry_index": self.entry_index,
                "path": hexes(&self.entry_path),
                "signatures": self.checkpoint_signatures.iter().map(keysig_json).collect::<Vec<_>>(),
            },
        });
        if let Some(a) = &self.attestation {
            doc["attestation"] = a.to_json();
        }
        doc
    }

    /// The same proof in the binary form `annals-proof-bin/1` (docs/PROOF-BINARY.md): the
    /// bytes the JSON carries as hex, in document order, without the `row` object (a verifier
    /// decodes the row from its encoding). About 40 % of the JSON's size.
    pub fn to_binary(&self) -> Vec<u8> {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            let len = u32::try_from(b.len()).expect("proof fields are far below 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(b);
        }
        fn path(out: &mut Vec<u8>, p: &[Hash]) {
            out.push(u8::try_from(p.len()).expect("a Merkle path has at most 64 hashes"));
            for h in p {
                out.extend_from_slice(h);
            }
        }
        fn keysig(out: &mut Vec<u8>, k: &KeySig) {
            out.extend_from_slice(&k.key);
            out.extend_from_slice(&k.sig);
        }
        let mut out = Vec::with_capacity(2048);
        out.extend_from_slice(&PROOF_BIN_MAGIC);
        bytes(&mut out, &self.row);
        out.extend_from_slice(&self.tx_id);
        bytes(&mut out, &self.block_header);
        out.extend_from_slice(&self.block_index.to_le_bytes());
        path(&mut out, &self.block_path);
        out.push(1);
        keysig(&mut out, &self.block_signature);
        out.extend_from_slice(&self.branch_size.to_le_bytes());
        path(&mut out, &self.branch_path);
        bytes(&mut out, &self.checkpoint_header.encode());
        out.extend_from_slice(&self.entry.encode());
        out.extend_from_slice(&self.entry_index.to_le_bytes());
        path(&mut out, &self.entry_path);
        let sigs = u32::try_from(self.checkpoint_signatures.len()).expect("signatures fit u32");
        out.extend_from_slice(&sigs.to_le_bytes());
        for k in &self.checkpoint_signatures {
            keysig(&mut out, k);
        }
        match &self.attestation {
            None => out.push(0),
            Some(a) => {
                out.push(1);
                out.extend_from_slice(&a.device_key);
                out.extend_from_slice(&a.seq.to_le_bytes());
                out.extend_from_slice(&a.batch_size.to_le_bytes());
                out.extend_from_slice(&a.index.to_le_bytes());
                path(&mut out, &a.path);
                out.extend_from_slice(&a.sig);
            }
        }
        out
    }

    /// Reads a document back (strictly: every field present and well-formed, `row` equal to
    /// `row_hex`). It does not verify the proof; see [`Proof::verify`].
    pub fn from_json(v: &Value) -> Result<Proof, String> {
        if v["format"] != PROOF_FORMAT {
            return Err(format!(
                "format is {}, expected {PROOF_FORMAT}",
                v["format"]
            ));
        }
        let bytes = |v: &Value, what: &str| -> Result<Vec<u8>, String> {
            hex::decode(
                v.as_str()
                    .ok_or_else(|| format!("{what} is not a string"))?,
            )
            .map_err(|e| format!("{what}: {e}"))
        };
        let hash = |v: &Value, what: &str| -> Result<Hash, String> {
            v.as_str()
                .and_then(hash_from_hex)
                .ok_or_else(|| format!("{what} is not 32 bytes of hex"))
        };
        let path = |v: &Value, what: &str| -> Result<Vec<Hash>, String> {
            v.as_array()
                .ok_or_else(|| format!("{what} is not a list"))?
                .iter()
                .map(|h| hash(h, what))
                .collect()
        };
        let keysig = |v: &Value, what: &str| -> Result<KeySig, String> {
            let key = hash(&v["key"], what)?;
            let sig: [u8; 64] = bytes(&v["sig"], what)?
                .try_into()
                .map_err(|_| format!("{what}.sig is not 64 bytes"))?;
            Ok(KeySig { key, sig })
        };
        let uint = |v: &Value, what: &str| v.as_u64().ok_or_else(|| format!("{what} is not a u64"));
        let row = bytes(&v["row_hex"], "row_hex")?;
        if encode_row_json(&v["row"])? != row {
            return Err("row does not encode to row_hex".into());
        }
        let b = &v["block"];
        let c = &v["checkpoint"];
        let attestation = match &v["attestation"] {
            Value::Null => None,
            a => Some(AttestationProof {
                device_key: hash(&a["device_key"], "attestation.device_key")?,
                seq: uint(&a["seq"], "attestation.seq")?,
                batch_size: uint(&a["batch_size"], "attestation.batch_size")?,
                index: uint(&a["index"], "attestation.index")?,
                path: path(&a["path"], "attestation.path")?,
                sig: bytes(&a["sig"], "attestation.sig")?
                    .try_into()
                    .map_err(|_| "attestation.sig is not 64 bytes".to_string())?,
            }),
        };
        let checkpoint_header =
            CheckpointHeader::decode(&bytes(&c["header_hex"], "checkpoint.header_hex")?)
                .map_err(|e| format!("checkpoint.header_hex: {e}"))?;
        let entry = BranchEntry::decode(&bytes(&c["entry_hex"], "checkpoint.entry_hex")?)
            .map_err(|e| format!("checkpoint.entry_hex: {e}"))?;
        Ok(Proof {
            row,
            tx_id: hash(&v["tx_id"], "tx_id")?,
            block_header: bytes(&b["header_hex"], "block.header_hex")?,
            block_index: u32::try_from(uint(&b["index"], "block.index")?)
                .map_err(|_| "block.index is not a u32".to_string())?,
            block_path: path(&b["path"], "block.path")?,
            block_signature: keysig(&b["signature"], "block.signature")?,
            branch_size: uint(&v["branch"]["size"], "branch.size")?,
            branch_path: path(&v["branch"]["path"], "branch.path")?,
            checkpoint_header,
            entry,
            entry_index: uint(&c["entry_index"], "checkpoint.entry_index")?,
            entry_path: path(&c["path"], "checkpoint.path")?,
            checkpoint_signatures: c["signatures"]
                .as_array()
                .ok_or("checkpoint.signatures is not a list")?
                .iter()
                .map(|s| keysig(s, "checkpoint.signatures"))
                .collect::<Result<_, _>>()?,
            attestation,
        })
    }

    /// Runs every step of FORMAT.md's verifier with `annals-format` code; the error names the
    /// step that failed. Signatures must be by `trusted` keys (the checkpoint needs one of them).
    pub fn verify(&self, trusted: &[[u8; 32]]) -> Result<(), String> {
        self.verify_structure()?;
        let header =
            BlockHeader::decode(&self.block_header).map_err(|e| format!("block header: {e}"))?;
        annals_format::sign::verify(
            &self.block_signature.key,
            &header.hash(),
            &self.block_signature.sig,
        )
        .map_err(|e| format!("block signature: {e}"))?;
        verify_checkpoint_signatures(
            &self.checkpoint_header,
            &self.checkpoint_signatures,
            trusted,
        )
    }

    /// Every step of [`Proof::verify`] but the Ed25519 signatures (block and checkpoint): the
    /// row, `tx_id`, every path, the entry and the attestation (whose signature is checked).
    pub fn verify_structure(&self) -> Result<(), String> {
        let header =
            BlockHeader::decode(&self.block_header).map_err(|e| format!("block header: {e}"))?;
        decode_row(&self.row).map_err(|e| format!("row: {e}"))?;
        let leaf = leaf_hash(&self.row);
        if !verify_inclusion(
            &leaf,
            u64::from(self.block_index),
            u64::from(header.row_count),
            &self.block_path,
            &header.rows_root,
        ) {
            return Err("row inclusion under rows_root".into());
        }
        if tx_id(&header.branch, header.height, self.block_index, &leaf) != self.tx_id {
            return Err("tx_id".into());
        }
        let block_hash = header.hash();
        if self.entry.branch != header.branch || self.entry.size != self.branch_size {
            return Err("entry names another branch or size".into());
        }
        if !verify_inclusion(
            &leaf_hash(&block_hash),
            header.height,
            self.branch_size,
            &self.branch_path,
            &self.entry.root,
        ) {
            return Err("block inclusion in the branch log".into());
        }
        if !verify_inclusion(
            &leaf_hash(&self.entry.encode()),
            self.entry_index,
            u64::from(self.checkpoint_header.branch_count),
            &self.entry_path,
            &self.checkpoint_header.branches_root,
        ) {
            return Err("entry inclusion under branches_root".into());
        }
        if let Some(a) = &self.attestation {
            a.verify(&leaf)?;
        }
        Ok(())
    }
}

/// The checkpoint's signatures verify and one is `key`'s. The last checkpoint found so is
/// remembered (key, header hash and signatures), so proofs under it check it once.
fn checkpoint_signed(key: &[u8; 32], cp: &CheckpointRecord) -> Result<(), ProofError> {
    type Checked = Option<([u8; 32], Hash, Vec<KeySig>)>;
    static LAST: parking_lot::Mutex<Checked> = parking_lot::Mutex::new(None);
    let hash = cp.header.hash();
    let sigs: Vec<KeySig> = cp
        .signatures
        .iter()
        .map(|(k, sig)| KeySig { key: *k, sig: *sig })
        .collect();
    if let Some((k, h, s)) = &*LAST.lock() {
        if k == key && *h == hash && *s == sigs {
            return Ok(());
        }
    }
    verify_checkpoint_signatures(&cp.header, &sigs, &[*key])
        .map_err(|e| ProofError::Corrupt(format!("checkpoint {}: {e}", cp.header.epoch)))?;
    *LAST.lock() = Some((*key, hash, sigs));
    Ok(())
}

/// Every checkpoint signature verifies, and one is by a `trusted` key.
fn verify_checkpoint_signatures(
    header: &CheckpointHeader,
    signatures: &[KeySig],
    trusted: &[[u8; 32]],
) -> Result<(), String> {
    let cp_hash = header.hash();
    let mut signed = false;
    for s in signatures {
        annals_format::sign::verify(&s.key, &cp_hash, &s.sig)
            .map_err(|e| format!("checkpoint signature: {e}"))?;
        signed |= trusted.contains(&s.key);
    }
    if !signed {
        return Err("checkpoint signatures: none by a trusted key".into());
    }
    Ok(())
}

/// `MTH` ranges of a branch log read from its `tree.hashes` (the stored-hash layout of
/// `annals_storage::branch_log`) with positioned reads, limited to the first `size` leaves.
/// Hashes below `stored_hash_count(size)` never change once `size` blocks are durable, so
/// reading them while the sealer appends is safe.
struct TreeFile {
    file: File,
    path: PathBuf,
    size: u64,
    cache: HashMap<u64, Hash>,
    error: Option<String>,
}

impl TreeFile {
    fn open(
        data_dir: &std::path::Path,
        branch: &BranchId,
        size: u64,
    ) -> Result<TreeFile, ProofError> {
        let path = crate::sealer::branch_dir(data_dir, branch).join(TREE_FILE);
        let file =
            File::open(&path).map_err(|e| ProofError::Io(format!("{}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| ProofError::Io(format!("{}: {e}", path.display())))?
            .len();
        if len < stored_hash_count(size) * 32 {
            return Err(ProofError::Corrupt(format!(
                "{} holds {} hashes, a log of {size} blocks needs {}",
                path.display(),
                len / 32,
                stored_hash_count(size)
            )));
        }
        Ok(TreeFile {
            file,
            path,
            size,
            cache: HashMap::new(),
            error: None,
        })
    }

    fn get(&mut self, i: u64) -> Hash {
        if let Some(h) = self.cache.get(&i) {
            return *h;
        }
        let mut h = [0u8; 32];
        if let Err(e) = self.file.read_exact_at(&mut h, i * 32) {
            self.error
                .get_or_insert(format!("{}: {e}", self.path.display()));
        }
        self.cache.insert(i, h);
        h
    }

    fn root(&mut self) -> Hash {
        if self.size == 0 {
            annals_format::hash::empty_root()
        } else {
            self.range_hash(0, self.size)
        }
    }

    fn check(&self) -> Result<(), ProofError> {
        match &self.error {
            Some(e) => Err(ProofError::Io(e.clone())),
            None => Ok(()),
        }
    }
}

impl RangeHasher for TreeFile {
    /// The range splits into complete aligned subtrees (the set bits of `end - start`), folded
    /// from the right: one read each.
    fn range_hash(&mut self, start: u64, end: u64) -> Hash {
        assert!(
            start < end && end <= self.size,
            "range {start}..{end} of {}",
            self.size
        );
        let mut parts = Vec::with_capacity(8);
        let mut lo = start;
        while lo < end {
            let level = 63 - (end - lo).leading_zeros();
            let width = 1u64 << level;
            assert_eq!(
                lo & (width - 1),
                0,
                "range {start}..{end} is not an RFC 9162 subtree"
            );
            parts.push(self.get(stored_hash_index(level, lo >> level)));
            lo += width;
        }
        let mut acc = parts.pop().expect("a non-empty range");
        while let Some(p) = parts.pop() {
            acc = node_hash(&p, &acc);
        }
        acc
    }
}

/// A checkpoint as the ledger API shows it: header (hex and decoded), hash, entries, signatures.
pub fn checkpoint_json(r: &CheckpointRecord) -> Value {
    let h = &r.header;
    json!({
        "epoch": h.epoch,
        "hash": to_hex(&r.hash()),
        "header_hex": hex::encode(h.encode()),
        "prev": to_hex(&h.prev),
        "branches_root": to_hex(&h.branches_root),
        "branch_count": h.branch_count,
        "time": h.time,
        "validators": to_hex(&h.validators),
        "entries": r.entries.iter().map(|e| json!({
            "branch": to_hex(&e.branch), "size": e.size, "root": to_hex(&e.root),
        })).collect::<Vec<_>>(),
        "signatures": r.signatures.iter().map(|(k, sig)| json!({
            "key": to_hex(k), "sig": hex::encode(sig),
        })).collect::<Vec<_>>(),
    })
}

/// A consistency path between two sizes of one branch log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consistency {
    pub branch: BranchId,
    pub from: u64,
    pub to: u64,
    pub from_root: Hash,
    pub to_root: Hash,
    pub path: Vec<Hash>,
}

impl Consistency {
    pub fn to_json(&self) -> Value {
        json!({
            "branch": to_hex(&self.branch), "from": self.from, "to": self.to,
            "from_root": to_hex(&self.from_root), "to_root": to_hex(&self.to_root),
            "path": hexes(&self.path),
        })
    }
}

/// RFC 9162 consistency path of `branch` from size `from` to size `to`; `to` may not exceed
/// the branch's durable size. The path is checked before it is returned.
pub fn consistency(
    engine: &Engine,
    branch: &BranchId,
    from: u64,
    to: u64,
) -> Result<Consistency, ProofError> {
    let heads = engine.branch_heads();
    let head = heads
        .get(branch)
        .ok_or_else(|| ProofError::NotFound(format!("no branch {}", to_hex(branch))))?;
    if from > to {
        return Err(ProofError::Invalid(format!(
            "from ({from}) is larger than to ({to})"
        )));
    }
    if to > head.size {
        return Err(ProofError::Invalid(format!(
            "branch {} has {} blocks; to ({to}) is beyond it",
            to_hex(branch),
            head.size
        )));
    }
    let mut tree = TreeFile::open(&engine.config().data_dir, branch, to)?;
    let to_root = tree.root();
    let path = annals_format::merkle::consistency_path(&mut tree, from, to)
        .map_err(|e| ProofError::Invalid(e.to_string()))?;
    let mut old = TreeFile::open(&engine.config().data_dir, branch, from)?;
    let from_root = old.root();
    tree.check()?;
    old.check()?;
    if to == head.size && to_root != head.root {
        return Err(ProofError::Corrupt(format!(
            "branch {}: tree.hashes root at size {to} differs from the published head",
            to_hex(branch)
        )));
    }
    if !verify_consistency(from, to, &from_root, &to_root, &path) {
        return Err(ProofError::Corrupt(format!(
            "branch {}: consistency path {from} -> {to} does not verify",
            to_hex(branch)
        )));
    }
    Ok(Consistency {
        branch: *branch,
        from,
        to,
        from_root,
        to_root,
        path,
    })
}

/// Where a block's rows are.
enum Source<'a> {
    File(&'a Arc<BlockFile>, usize),
    Mem(&'a Arc<MemBlock>),
}

fn find_block<'a>(snap: &'a Snapshot, branch: &BranchId, height: u64) -> Option<Source<'a>> {
    for s in &snap.shards {
        if let Some(m) = s.mem.get(&(*branch, height)) {
            return Some(Source::Mem(m));
        }
        for f in s.files.iter().filter(|f| f.branch == *branch) {
            if let Some(i) = f.blocks.iter().position(|b| b.header.height == height) {
                return Some(Source::File(f, i));
            }
        }
    }
    None
}

/// The file's [`PageReader`], opened (mapped) by the first read of the file's rows.
fn pages(file: &BlockFile) -> Result<&PageReader, ProofError> {
    file.page_reader()
        .map_err(|e| ProofError::Io(format!("{}: {e}", file.path.display())))
}

fn read_file_block(file: &BlockFile, block: usize) -> Result<Vec<RecordBatch>, ProofError> {
    let b = &file.blocks[block];
    let io = |e: String| {
        ProofError::Io(format!(
            "{} row group {}: {e}",
            file.path.display(),
            b.row_group
        ))
    };
    let pages = pages(file)?;
    let rows = pages
        .row_count(b.row_group)
        .map_err(|e| io(e.to_string()))?;
    let batch = pages
        .read_rows(b.row_group, 0..rows)
        .map_err(|e| io(e.to_string()))?;
    Ok(vec![batch])
}

/// The rows of one block as canonical encodings, with its header and signature if sealed.
pub(crate) struct BlockRowsRead {
    sealed: Option<(BlockHeader, [u8; 64])>,
    pub(crate) encodings: Vec<Vec<u8>>,
    /// The file and block index when read from a finished file (its signature memo).
    file: Option<(Arc<BlockFile>, usize)>,
}

pub(crate) fn read_block(
    snap: &Snapshot,
    branch: &BranchId,
    height: u64,
) -> Result<Option<BlockRowsRead>, ProofError> {
    let (sealed, batches, table, file) = match find_block(snap, branch, height) {
        None => return Ok(None),
        Some(Source::File(f, i)) => {
            let b = &f.blocks[i];
            (
                Some((b.header.clone(), b.signature)),
                read_file_block(f, i)?,
                f.table.clone(),
                Some((f.clone(), i)),
            )
        }
        Some(Source::Mem(m)) => (m.sealed().cloned(), m.chunks(), m.table.clone(), None),
    };
    let mut encodings = Vec::new();
    for batch in &batches {
        // Each chunk in its own schema: absent columns are simply not encoded.
        encodings.extend(row_encodings(&table, batch).map_err(|e| {
            ProofError::Corrupt(format!("block {height} of {}: {e}", to_hex(branch)))
        })?);
    }
    Ok(Some(BlockRowsRead {
        sealed,
        encodings,
        file,
    }))
}

/// The rows of the proof piece holding row `index` of a block in a finished file that records
/// its piece roots: the read, the piece's first row, and the roots of all pieces. `None` when
/// the block is in memory or its file has no piece roots.
#[allow(clippy::type_complexity)]
fn read_piece(
    snap: &Snapshot,
    branch: &BranchId,
    height: u64,
    index: u32,
) -> Result<Option<(BlockRowsRead, u32, Vec<Hash>)>, ProofError> {
    let Some(Source::File(file, i)) = find_block(snap, branch, height) else {
        return Ok(None);
    };
    let b = &file.blocks[i];
    if b.chunk_roots.is_empty() {
        return Ok(None);
    }
    let rows = b.header.row_count as usize;
    if index as usize >= rows {
        return Err(ProofError::NotFound(format!(
            "block {height} of branch {} has {rows} rows; there is no index {index}",
            to_hex(branch)
        )));
    }
    let first = index as usize / PROOF_CHUNK_ROWS * PROOF_CHUNK_ROWS;
    let end = (first + PROOF_CHUNK_ROWS).min(rows);
    let io = |e: String| ProofError::Io(format!("{}: {e}", file.path.display()));
    let batch = pages(file)?
        .read_rows(b.row_group, first..end)
        .map_err(|e| io(e.to_string()))?;
    let encodings = row_encodings(&file.table, &batch)
        .map_err(|e| ProofError::Corrupt(format!("block {height} of {}: {e}", to_hex(branch))))?;
    let read = BlockRowsRead {
        sealed: Some((b.header.clone(), b.signature)),
        encodings,
        file: Some((file.clone(), i)),
    };
    Ok(Some((read, first as u32, b.chunk_roots.clone())))
}

/// The tree of a block known by its piece roots and one piece, whose tree is at hand.
struct Piece<'a> {
    chunked: Chunked<'a>,
    tree: &'a Levels,
}

impl RangeHasher for Piece<'_> {
    fn range_hash(&mut self, start: u64, end: u64) -> Hash {
        let first = self.chunked.piece * self.chunked.chunk;
        if start >= first && end <= first + self.tree.leaves().len() as u64 {
            self.tree.subtree(start - first, end - first)
        } else {
            self.chunked.range_hash(start, end)
        }
    }
}

/// The parts shared by the proofs of every row of one block: header, leaf hashes, and the
/// branch and checkpoint paths. Build once, then [`BlockProofs::proof`] per row.
#[derive(Debug)]
pub struct BlockProofs {
    header: BlockHeader,
    header_bytes: Vec<u8>,
    signature: KeySig,
    encodings: Vec<Vec<u8>>,
    /// The leaf hashes of the rows read (the block's, or its piece's) and the tree over them.
    tree: Levels,
    branch_path: Vec<Hash>,
    checkpoint: Arc<CheckpointRecord>,
    entry_index: usize,
    entry_path: Vec<Hash>,
    /// Set when only one proof piece of the block was read (`encodings` and `leaves` are
    /// that piece's): its first row and the roots of every piece of the block.
    piece: Option<(u32, Vec<Hash>)>,
    /// For the attestations of the block's rows: the snapshot (other blocks of a batch) and
    /// the leaf hashes of batches already assembled.
    snap: Snapshot,
    attest: Arc<crate::attest::Attestations>,
    batches: crate::attest::proof::BatchCache,
}

impl BlockProofs {
    /// Reads block `height` of `branch` from `snap` and the paths under `checkpoint`, which must
    /// have been read before `snap` was taken (see the module doc).
    pub fn open(
        engine: &Engine,
        snap: &Snapshot,
        checkpoint: Option<Arc<CheckpointRecord>>,
        branch: &BranchId,
        height: u64,
    ) -> Result<BlockProofs, ProofError> {
        let where_ = || format!("block {height} of branch {}", to_hex(branch));
        let read = read_block(snap, branch, height)?
            .ok_or_else(|| ProofError::NotFound(format!("{} does not exist", where_())))?;
        Self::from_read(engine, snap, checkpoint, branch, height, read, None)
    }

    /// Like [`BlockProofs::open`] for the proof of row `index` only: when the block is in a
    /// finished file that records its proof pieces, reads and hashes the rows of the piece
    /// holding `index` (`PROOF_CHUNK_ROWS` rows) instead of the whole block. `None` when it
    /// cannot (block in memory, or a file without piece roots): use [`BlockProofs::open`].
    pub fn open_piece(
        engine: &Engine,
        snap: &Snapshot,
        checkpoint: Option<Arc<CheckpointRecord>>,
        branch: &BranchId,
        height: u64,
        index: u32,
    ) -> Result<Option<BlockProofs>, ProofError> {
        let Some((read, first, roots)) = read_piece(snap, branch, height, index)? else {
            return Ok(None);
        };
        Self::from_read(
            engine,
            snap,
            checkpoint,
            branch,
            height,
            read,
            Some((first, roots)),
        )
        .map(Some)
    }

    fn from_read(
        engine: &Engine,
        snap: &Snapshot,
        checkpoint: Option<Arc<CheckpointRecord>>,
        branch: &BranchId,
        height: u64,
        read: BlockRowsRead,
        piece: Option<(u32, Vec<Hash>)>,
    ) -> Result<BlockProofs, ProofError> {
        let where_ = || format!("block {height} of branch {}", to_hex(branch));
        let Some((header, sig)) = read.sealed else {
            return Err(ProofError::NotSealed(format!(
                "{} is still open: it gets a header when it is sealed (--block-rows / --block-age), then a checkpoint",
                where_()
            )));
        };
        let Some(checkpoint) = checkpoint else {
            return Err(ProofError::NotCheckpointed(format!(
                "{} is sealed but no checkpoint has been written yet",
                where_()
            )));
        };
        let entry_index = checkpoint
            .entries
            .binary_search_by(|e| e.branch.cmp(branch))
            .ok()
            .filter(|&i| checkpoint.entries[i].size > height)
            .ok_or_else(|| {
                ProofError::NotCheckpointed(format!(
                    "{} is sealed but the latest checkpoint (epoch {}) does not cover it yet",
                    where_(),
                    checkpoint.header.epoch
                ))
            })?;
        let entry = checkpoint.entries[entry_index];
        // Read-back checks: the rows must hash to the header, the header to the signature.
        let rows_tree = Levels::new(leaf_hashes_of(&read.encodings));
        let leaves = rows_tree.leaves();
        if header.branch != *branch || header.height != height {
            return Err(ProofError::Corrupt(format!(
                "{} has the header of another block",
                where_()
            )));
        }
        let hashes_to_header = match &piece {
            None => {
                leaves.len() == header.row_count as usize && rows_tree.root() == header.rows_root
            }
            // The piece's rows hash to its stored root, and the stored roots to rows_root.
            Some((first, roots)) => {
                let c = *first as usize / PROOF_CHUNK_ROWS;
                let len = (header.row_count as usize - *first as usize).min(PROOF_CHUNK_ROWS);
                roots.len() == (header.row_count as usize).div_ceil(PROOF_CHUNK_ROWS)
                    && leaves.len() == len
                    && rows_tree.root() == roots[c]
                    && root_of(roots) == header.rows_root
            }
        };
        if !hashes_to_header {
            return Err(ProofError::Corrupt(format!(
                "{}: {} stored rows do not hash to the header's rows_root ({} rows)",
                where_(),
                leaves.len(),
                header.row_count
            )));
        }
        let key = engine.public_key();
        // A block of a finished file is checked by its first proof only (same bytes after).
        let memo = read
            .file
            .as_ref()
            .map(|(f, i)| &f.blocks[*i].signature_checked);
        if memo.and_then(OnceLock::get).is_none() {
            annals_format::sign::verify(&key, &header.hash(), &sig)
                .map_err(|e| ProofError::Corrupt(format!("{}: {e}", where_())))?;
            if let Some(m) = memo {
                let _ = m.set(());
            }
        }
        checkpoint_signed(&key, &checkpoint)?;
        let mut tree = TreeFile::open(&engine.config().data_dir, branch, entry.size)?;
        let branch_path =
            inclusion_path(&mut tree, height, entry.size).expect("height < size checked above");
        let root = tree.root();
        tree.check()?;
        if root != entry.root {
            return Err(ProofError::Corrupt(format!(
                "branch {}: stored tree root at size {} differs from checkpoint {}",
                to_hex(branch),
                entry.size,
                checkpoint.header.epoch
            )));
        }
        let entry_leaves: Vec<Hash> = checkpoint
            .entries
            .iter()
            .map(|e| leaf_hash(&e.encode()))
            .collect();
        let entry_path = inclusion_path(
            &mut LeafHashes(&entry_leaves),
            entry_index as u64,
            entry_leaves.len() as u64,
        )
        .expect("entry index in range");
        Ok(BlockProofs {
            header_bytes: header.encode(),
            header,
            signature: KeySig { key, sig },
            encodings: read.encodings,
            tree: rows_tree,
            branch_path,
            checkpoint,
            entry_index,
            entry_path,
            piece,
            snap: snap.clone(),
            attest: engine.attestations().clone(),
            batches: Default::default(),
        })
    }

    pub fn header(&self) -> &BlockHeader {
        &self.header
    }

    /// The `tx_id` of the row at `index`.
    pub fn tx_id(&self, index: u32) -> Option<Hash> {
        let first = self.piece.as_ref().map_or(0, |p| p.0);
        let leaf = self.tree.leaves().get(index.checked_sub(first)? as usize)?;
        Some(tx_id(&self.header.branch, self.header.height, index, leaf))
    }

    /// The proof of the row at `index`, verified before it is returned.
    pub fn proof(&self, index: u32) -> Result<Proof, ProofError> {
        let first = self.piece.as_ref().map_or(0, |p| p.0);
        let row = index
            .checked_sub(first)
            .and_then(|i| self.encodings.get(i as usize));
        let row = row.ok_or_else(|| {
            ProofError::NotFound(format!(
                "block {} of branch {} has {} rows; there is no index {index}",
                self.header.height,
                to_hex(&self.header.branch),
                self.header.row_count
            ))
        })?;
        row_json(row).map_err(|e| ProofError::Corrupt(format!("row {index}: {e}")))?;
        let cp = &self.checkpoint;
        let proof = Proof {
            row: row.clone(),
            tx_id: self.tx_id(index).expect("index checked"),
            block_header: self.header_bytes.clone(),
            block_index: index,
            block_path: match &self.piece {
                None => inclusion_path(
                    &mut &self.tree,
                    u64::from(index),
                    self.tree.leaves().len() as u64,
                ),
                Some((first, roots)) => inclusion_path(
                    &mut Piece {
                        chunked: Chunked {
                            chunk: PROOF_CHUNK_ROWS as u64,
                            roots,
                            piece: u64::from(*first) / PROOF_CHUNK_ROWS as u64,
                            leaves: self.tree.leaves(),
                        },
                        tree: &self.tree,
                    },
                    u64::from(index),
                    u64::from(self.header.row_count),
                ),
            }
            .expect("index checked"),
            block_signature: self.signature,
            branch_size: cp.entries[self.entry_index].size,
            branch_path: self.branch_path.clone(),
            checkpoint_header: cp.header,
            entry: cp.entries[self.entry_index],
            entry_index: self.entry_index as u64,
            entry_path: self.entry_path.clone(),
            checkpoint_signatures: cp
                .signatures
                .iter()
                .map(|(key, sig)| KeySig {
                    key: *key,
                    sig: *sig,
                })
                .collect(),
            attestation: crate::attest::proof::attestation(
                &self.attest,
                &self.snap,
                &self.batches,
                &self.header,
                self.tree.leaves(),
                index,
            )?,
        };
        // The block signature was checked when the block was read and the checkpoint's when
        // this was opened: the same bytes, so only the hashes and paths are checked again.
        proof.verify_structure().map_err(|step| {
            ProofError::Corrupt(format!(
                "the proof built for row {index} fails its check: {step}"
            ))
        })?;
        Ok(proof)
    }
}

/// The proof of the row at `loc` under the latest checkpoint.
pub fn build(engine: &Engine, loc: &RowLocation) -> Result<Proof, ProofError> {
    // Checkpoint first, then the snapshot: every block it covers is in the snapshot, sealed.
    let cp = engine.latest_checkpoint().map(Arc::new);
    let snap = engine.snapshot();
    open_for_row(engine, &snap, cp, &loc.branch, loc.height, loc.index)?.proof(loc.index)
}

/// What the proof of one row needs: the row's piece when the block records its pieces and the
/// row is not attested (an attestation needs the leaves of its whole batch), else the block.
fn open_for_row(
    engine: &Engine,
    snap: &Snapshot,
    cp: Option<Arc<CheckpointRecord>>,
    branch: &BranchId,
    height: u64,
    index: u32,
) -> Result<BlockProofs, ProofError> {
    if engine.attestations().find(branch, height, index).is_none() {
        if let Some(b) = BlockProofs::open_piece(engine, snap, cp.clone(), branch, height, index)? {
            return Ok(b);
        }
    }
    BlockProofs::open(engine, snap, cp, branch, height)
}

/// Finds the row whose `tx_id` is `id`.
///
/// With a full hint (`branch`, `height`, `index`, as a write receipt gives them) only that row
/// is checked (its block is re-encoded, O(block rows)); a partial hint limits the search to a
/// branch or a block. Without one, blocks are searched newest first (in-memory blocks, then
/// files by `sealed_at`), at most [`SEARCH_ROWS_MAX`] rows. Rows of open blocks are found too:
/// their location is returned and [`build`] then answers [`ProofError::NotSealed`].
pub fn locate(engine: &Engine, id: &Hash, hint: &LocationHint) -> Result<RowLocation, ProofError> {
    let snap = engine.snapshot();
    // Candidate blocks: (branch, height, newest-first key).
    let mut blocks: Vec<(BranchId, u64, i128)> = Vec::new();
    for s in &snap.shards {
        for m in s.mem.values() {
            blocks.push((m.branch, m.height, i128::MAX - i128::from(m.height)));
        }
        for f in s.files.iter() {
            for b in &f.blocks {
                blocks.push((f.branch, b.header.height, i128::from(b.header.sealed_at)));
            }
        }
    }
    blocks.retain(|(b, h, _)| {
        hint.branch.is_none_or(|x| x == *b) && hint.height.is_none_or(|x| x == *h)
    });
    blocks.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)));
    let mut searched = 0u64;
    for (branch, height, _) in blocks {
        if searched >= SEARCH_ROWS_MAX {
            return Err(ProofError::NotFound(format!(
                "no row with tx_id {} among the newest {searched} rows searched; give its branch, height and index (from the write receipt)",
                to_hex(id)
            )));
        }
        let Some(read) = read_block(&snap, &branch, height)? else {
            continue;
        };
        let candidates: Box<dyn Iterator<Item = usize>> = match hint.index {
            Some(i) => Box::new(std::iter::once(i as usize).filter(|&i| i < read.encodings.len())),
            None => Box::new(0..read.encodings.len()),
        };
        for i in candidates {
            searched += 1;
            if tx_id(&branch, height, i as u32, &leaf_hash(&read.encodings[i])) == *id {
                return Ok(RowLocation {
                    branch,
                    height,
                    index: i as u32,
                });
            }
        }
    }
    let at = match (hint.branch, hint.height, hint.index) {
        (None, None, None) => String::new(),
        (b, h, i) => format!(
            " at branch {} height {} index {}",
            b.map(|b| to_hex(&b)).unwrap_or_else(|| "*".into()),
            h.map(|h| h.to_string()).unwrap_or_else(|| "*".into()),
            i.map(|i| i.to_string()).unwrap_or_else(|| "*".into()),
        ),
    };
    Err(ProofError::NotFound(format!(
        "no row with tx_id {}{at}",
        to_hex(id)
    )))
}

/// [`locate`] then [`build`]; with a full hint the block is read once.
pub fn prove_tx(engine: &Engine, id: &Hash, hint: &LocationHint) -> Result<Proof, ProofError> {
    if let (Some(branch), Some(height), Some(index)) = (hint.branch, hint.height, hint.index) {
        let cp = engine.latest_checkpoint().map(Arc::new);
        let snap = engine.snapshot();
        match open_for_row(engine, &snap, cp, &branch, height, index) {
            Ok(b) if b.tx_id(index) == Some(*id) => return b.proof(index),
            Ok(_) => {
                return Err(ProofError::NotFound(format!(
                    "the row at branch {} height {height} index {index} does not have tx_id {}",
                    to_hex(&branch),
                    to_hex(id)
                )))
            }
            // Not provable yet: say so only if the row really is there.
            Err(e) if e.is_pending() => {
                locate(engine, id, hint)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    let loc = locate(engine, id, hint)?;
    build(engine, &loc)
}

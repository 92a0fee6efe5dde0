//! Checkpoints: the "branch merge" that commits to every branch's log state at an epoch.
//!
//! ```text
//! entry      := branch:16 | size:u64 | root:32             (sorted by branch, bytewise)
//! checkpoint := version:u8 = 1 | epoch:u64 | prev:32 | branches_root:32 | branch_count:u32
//!             | time:i64 | validators:32
//! ```

use crate::block::BranchId;
use crate::codec::Reader;
use crate::hash::{hash_parts, leaf_hash, Domain, Hash};
use crate::merkle::root_of;
use crate::{FormatError, FORMAT_VERSION};

/// Encoded size of a [`BranchEntry`].
pub const ENTRY_LEN: usize = 16 + 8 + 32;
/// Encoded size of a [`CheckpointHeader`].
pub const CHECKPOINT_LEN: usize = 1 + 8 + 32 + 32 + 4 + 8 + 32;

/// One branch's log state `(size, root)` inside a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchEntry {
    pub branch: BranchId,
    pub size: u64,
    pub root: Hash,
}

impl BranchEntry {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..16].copy_from_slice(&self.branch);
        out[16..24].copy_from_slice(&self.size.to_le_bytes());
        out[24..].copy_from_slice(&self.root);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BranchEntry, FormatError> {
        let mut r = Reader::new(bytes);
        let e = BranchEntry {
            branch: r.array("entry branch")?,
            size: r.u64("entry size")?,
            root: r.array("entry root")?,
        };
        r.finish("branch entry")?;
        Ok(e)
    }
}

/// `MTH` over the entries' encodings. The entries must be sorted by branch.
pub fn branches_root(entries: &[BranchEntry]) -> Hash {
    debug_assert!(
        entries.windows(2).all(|w| w[0].branch < w[1].branch),
        "entries not sorted"
    );
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(&e.encode())).collect();
    root_of(&leaves)
}

/// A checkpoint header exactly as FORMAT.md defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub epoch: u64,
    pub prev: Hash,
    pub branches_root: Hash,
    pub branch_count: u32,
    pub time: i64,
    pub validators: Hash,
}

impl CheckpointHeader {
    pub fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut out = [0u8; CHECKPOINT_LEN];
        out[0] = FORMAT_VERSION;
        out[1..9].copy_from_slice(&self.epoch.to_le_bytes());
        out[9..41].copy_from_slice(&self.prev);
        out[41..73].copy_from_slice(&self.branches_root);
        out[73..77].copy_from_slice(&self.branch_count.to_le_bytes());
        out[77..85].copy_from_slice(&self.time.to_le_bytes());
        out[85..].copy_from_slice(&self.validators);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CheckpointHeader, FormatError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("checkpoint version")?;
        if version != FORMAT_VERSION {
            return Err(FormatError::Version {
                what: "checkpoint",
                version,
            });
        }
        let c = CheckpointHeader {
            epoch: r.u64("checkpoint epoch")?,
            prev: r.array("checkpoint prev")?,
            branches_root: r.array("checkpoint branches_root")?,
            branch_count: r.u32("checkpoint branch_count")?,
            time: r.i64("checkpoint time")?,
            validators: r.array("checkpoint validators")?,
        };
        r.finish("checkpoint")?;
        Ok(c)
    }

    /// `H(0x04 || checkpoint)`.
    pub fn hash(&self) -> Hash {
        hash_parts(Domain::Checkpoint, &[&self.encode()])
    }
}

/// A validator: Ed25519 public key and voting power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validator {
    pub pubkey: [u8; 32],
    pub power: u64,
}

/// `H(0x05 || count:u32 || (pubkey | power) * count)`, sorted by pubkey (sorted here).
pub fn validators_hash(validators: &[Validator]) -> Hash {
    let mut sorted = validators.to_vec();
    sorted.sort_by_key(|v| v.pubkey);
    let mut buf = Vec::with_capacity(4 + sorted.len() * 40);
    buf.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
    for v in &sorted {
        buf.extend_from_slice(&v.pubkey);
        buf.extend_from_slice(&v.power.to_le_bytes());
    }
    hash_parts(Domain::ValidatorSet, &[&buf])
}

/// `H(0x06 || device_key || seq:u64 || batch_root)`: what a device signs for a batch of rows.
pub fn attestation_digest(device_key: &[u8; 32], seq: u64, batch_root: &Hash) -> Hash {
    hash_parts(
        Domain::Attestation,
        &[device_key, &seq.to_le_bytes(), batch_root],
    )
}

//! Checkpoints on their own: header fields, the trusted set, the quorum, and consistency between
//! two checkpoints' entries for one branch.

use crate::encoding::{checkpoint_hash, BranchEntry, CheckpointHeader};
use crate::hex::Hex;
use crate::merkle::verify_consistency;
use crate::trust::{KeySignature, Quorum, Trust};
use crate::{Hash, Step, VerifyError};

/// A checkpoint's fields and, unless verifying structure only, the quorum that made it final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// `H(0x04 || checkpoint)`: what the validators signed.
    pub hash: Hash,
    pub epoch: u64,
    pub prev: Hash,
    pub branches_root: Hash,
    pub branch_count: u32,
    /// The checkpoint's time, ns since the Unix epoch.
    pub time: i64,
    /// The validator-set hash the checkpoint names.
    pub validators: Hash,
    /// `None` when verifying structure only: then nothing says the checkpoint is final.
    pub quorum: Option<Quorum>,
}

/// The `validators` and `quorum` steps for a decoded checkpoint.
pub(crate) fn check_trust(
    header: &CheckpointHeader,
    hash: &Hash,
    signatures: &[KeySignature],
    trust: &Trust,
) -> Result<Option<Quorum>, VerifyError> {
    if let Some(trusted) = trust.validators_hash() {
        if header.validators != trusted {
            return Err(VerifyError::new(
                Step::Validators,
                alloc::format!(
                    "the checkpoint names validator set {}, but the trusted set hashes to {}",
                    Hex(&header.validators),
                    Hex(&trusted)
                ),
            ));
        }
    }
    trust.quorum(hash, signatures).map_err(|e| {
        VerifyError::new(
            Step::Quorum,
            alloc::format!("checkpoint {} (epoch {}): {e}", Hex(hash), header.epoch),
        )
    })
}

pub(crate) fn info(
    header: &CheckpointHeader,
    hash: Hash,
    quorum: Option<Quorum>,
) -> CheckpointInfo {
    CheckpointInfo {
        hash,
        epoch: header.epoch,
        prev: header.prev,
        branches_root: header.branches_root,
        branch_count: header.branch_count,
        time: header.time,
        validators: header.validators,
        quorum,
    }
}

/// Verifies a checkpoint header (its encoded bytes) and its signatures: decodes it (`parse`),
/// checks it names the trusted set (`validators`) and that distinct trusted validators carrying
/// more than 2/3 of the power signed its hash (`quorum`). With [`Trust::structure_only`] only
/// the decoding is checked.
pub fn verify_checkpoint(
    header: &[u8],
    signatures: &[KeySignature],
    trust: &Trust,
) -> Result<CheckpointInfo, VerifyError> {
    let decoded = CheckpointHeader::decode(header)
        .map_err(|e| VerifyError::new(Step::Parse, alloc::format!("checkpoint header: {e}")))?;
    let hash = checkpoint_hash(header);
    let quorum = check_trust(&decoded, &hash, signatures, trust)?;
    Ok(info(&decoded, hash, quorum))
}

/// Checks that a branch only grew between two checkpoints: both entries (56 encoded bytes
/// each) name the same branch, and `path` is an RFC 9162 consistency path from the older
/// entry's `(size, root)` to the newer one's. Step `consistency` (`parse` for a bad entry).
pub fn verify_entry_consistency(
    older: &[u8],
    newer: &[u8],
    path: &[Hash],
) -> Result<(), VerifyError> {
    let decode = |which: &str, b: &[u8]| {
        BranchEntry::decode(b)
            .map_err(|e| VerifyError::new(Step::Parse, alloc::format!("{which} entry: {e}")))
    };
    let (a, b) = (decode("older", older)?, decode("newer", newer)?);
    let fail = |detail: alloc::string::String| Err(VerifyError::new(Step::Consistency, detail));
    if a.branch != b.branch {
        return fail(alloc::format!(
            "the entries name different branches: {} and {}",
            Hex(&a.branch),
            Hex(&b.branch)
        ));
    }
    if a.size > b.size {
        return fail(alloc::format!(
            "branch {} shrank from {} to {} blocks",
            Hex(&a.branch),
            a.size,
            b.size
        ));
    }
    if !verify_consistency(a.size, b.size, &a.root, &b.root, path) {
        return fail(alloc::format!(
            "branch {}: the path does not prove size {} (root {}) extends size {} (root {})",
            Hex(&a.branch),
            b.size,
            Hex(&b.root),
            a.size,
            Hex(&a.root)
        ));
    }
    Ok(())
}

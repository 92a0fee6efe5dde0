//! `verify_proof`: the steps of FORMAT.md "Proof document", in order, each failing by name.

use crate::binary::{is_binary, parse_binary};
use crate::checkpoint::{check_trust, info, CheckpointInfo};
use crate::document::{parse_document, read_row, RowStated};
use crate::encoding::{block_hash, checkpoint_hash, tx_id, Row};
use crate::hex::Hex;
use crate::merkle::{hash_parts, inclusion_root, leaf_hash, verify_inclusion, ATTESTATION};
use crate::trust::{verify_signature, KeySignature, Quorum, Trust};
use crate::{Hash, Step, VerifyError};
use alloc::vec::Vec;

/// What a valid proof proves.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The row, columns sorted by name.
    pub row: Row,
    /// `H(0x00 || row encoding)`.
    pub leaf_hash: Hash,
    pub tx_id: Hash,
    pub branch: [u8; 16],
    /// The block's height in its branch.
    pub height: u64,
    /// The row's position in its block.
    pub index: u32,
    pub block_hash: Hash,
    /// The key whose signature over the block hash verified (the sealing node's key as the
    /// proof names it; compare it with a key you know). `None` only in structure-only mode
    /// with no block signature in the document.
    pub block_signer: Option<[u8; 32]>,
    /// The size of the branch log the checkpoint commits to (the block is below it).
    pub branch_size: u64,
    /// The checkpoint; its `quorum` is `None` when verifying structure only.
    pub checkpoint: CheckpointInfo,
    pub attestation: Option<Attested>,
}

impl Verified {
    /// True when a quorum of trusted validators signed the checkpoint (not structure only).
    pub fn is_final(&self) -> bool {
        self.checkpoint.quorum.is_some()
    }
}

/// A device's signature over a batch that holds the row (FORMAT.md "Device attestation").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub device_key: [u8; 32],
    pub seq: u64,
    /// `MTH` of the batch, as recomputed from the row and the path.
    pub batch_root: Hash,
    /// As the document states it. The signature covers `batch_root`, not the size; the path
    /// binds the size only as far as the tree's shape does (sizes with the same shape for this
    /// index give the same root).
    pub batch_size: u64,
    pub index: u64,
}

fn fail<T>(step: Step, detail: alloc::string::String) -> Result<T, VerifyError> {
    Err(VerifyError::new(step, detail))
}

/// Verifies a proof against `trust`: an `annals-proof/1` JSON document, or the same proof in
/// the binary form `annals-proof-bin/1` (recognised by its magic bytes `APRF`).
///
/// Steps, in order (the error's [`Step`] names the first that failed): `parse`, `row_encoding`,
/// `block_header`, `tx_id`, `row_inclusion`, `block_signature`, `block_inclusion`,
/// `branch_entry`, `entry_inclusion`, `validators`, `quorum`, `attestation`. With
/// [`Trust::structure_only`], `validators` and `quorum` are skipped and a missing
/// `block.signature` is accepted (a present one is still checked).
pub fn verify_proof(proof: &[u8], trust: &Trust) -> Result<Verified, VerifyError> {
    verify_with(proof, trust, None)
}

/// Checkpoints a [`Verifier`] remembers as final.
const FINAL_CHECKPOINTS_MAX: usize = 64;
/// Block signatures a [`Verifier`] remembers by default.
pub const BLOCK_SIGNATURES_REMEMBERED: usize = 4096;

/// Verifies many proofs against one trust, remembering the checkpoints it has found final and
/// the block signatures it has checked.
///
/// A checkpoint's hash covers its validator set, so once a quorum of trusted signatures over
/// it has verified, every later proof under the same checkpoint needs only its own hashes and
/// the block signature: the quorum is not checked again (the result reports the quorum that
/// was checked). Likewise a block signature that verified (the same key and signature over
/// the same block hash) is not checked again for the next row of that block. Every other step
/// runs as in [`verify_proof`]. At most 64 checkpoints and [`BLOCK_SIGNATURES_REMEMBERED`]
/// block signatures (or the number given to [`Verifier::with_block_memo`]) are remembered, the
/// oldest forgotten first. Structure-only trust remembers no checkpoint.
#[derive(Debug, Clone)]
pub struct Verifier<'t> {
    trust: &'t Trust,
    memo: Memo,
}

#[derive(Debug, Clone, Default)]
struct Memo {
    finals: Vec<(Hash, Option<Quorum>)>,
    /// A key and signature that verified over each block hash; `blocks_max` at most.
    blocks: alloc::collections::BTreeMap<Hash, KeySignature>,
    /// The hashes in `blocks`, oldest first.
    order: alloc::collections::VecDeque<Hash>,
    blocks_max: usize,
}

impl<'t> Verifier<'t> {
    pub fn new(trust: &'t Trust) -> Self {
        Self::with_block_memo(trust, BLOCK_SIGNATURES_REMEMBERED)
    }

    /// A verifier that remembers at most `blocks` block signatures (0: checks every one).
    pub fn with_block_memo(trust: &'t Trust, blocks: usize) -> Self {
        Verifier {
            trust,
            memo: Memo {
                blocks_max: blocks,
                ..Memo::default()
            },
        }
    }

    /// [`verify_proof`], skipping the quorum of a checkpoint already found final and the
    /// signature of a block already checked.
    pub fn verify_proof(&mut self, proof: &[u8]) -> Result<Verified, VerifyError> {
        verify_with(proof, self.trust, Some(&mut self.memo))
    }
}

fn verify_with(
    proof: &[u8],
    trust: &Trust,
    mut memo: Option<&mut Memo>,
) -> Result<Verified, VerifyError> {
    let d = if is_binary(proof) {
        parse_binary(proof)?
    } else {
        parse_document(proof)?
    };

    // row_encoding: the stated row is exactly the bytes the ledger hashed.
    let row = match &d.row {
        RowStated::Json(row) => read_row(row)?,
        RowStated::Encoding => Row::decode(&d.row_hex)
            .map_err(|e| VerifyError::new(Step::RowEncoding, alloc::format!("row_hex {e}")))?,
    };
    let encoded = row
        .encode()
        .map_err(|e| VerifyError::new(Step::RowEncoding, e))?;
    if encoded != d.row_hex {
        let at = encoded
            .iter()
            .zip(&d.row_hex)
            .take_while(|(a, b)| a == b)
            .count();
        return fail(
            Step::RowEncoding,
            alloc::format!(
                "the row encodes to {} bytes that differ from row_hex ({} bytes) at byte {at}",
                encoded.len(),
                d.row_hex.len()
            ),
        );
    }
    let leaf = leaf_hash(&encoded);

    // block_header: the header describes a block this row can belong to.
    let h = &d.header;
    if h.table != row.table.as_bytes() {
        return fail(
            Step::BlockHeader,
            alloc::format!(
                "the block holds table {:?}, the row is of table {:?}",
                alloc::string::String::from_utf8_lossy(&h.table),
                row.table
            ),
        );
    }
    if row.time < h.time_min || row.time > h.time_max {
        return fail(
            Step::BlockHeader,
            alloc::format!(
                "row time {} is outside the block's time range {}..={}",
                row.time,
                h.time_min,
                h.time_max
            ),
        );
    }

    // tx_id
    let Ok(index) = u32::try_from(d.index) else {
        return fail(
            Step::TxId,
            alloc::format!(
                "block.index {} does not fit in the u32 a tx_id encodes",
                d.index
            ),
        );
    };
    let tx = tx_id(&h.branch, h.height, index, &leaf);
    if tx != d.tx_id {
        return fail(
            Step::TxId,
            alloc::format!(
                "the row at (branch {}, height {}, index {index}) has tx_id {}, not {}",
                Hex(&h.branch),
                h.height,
                Hex(&tx),
                Hex(&d.tx_id)
            ),
        );
    }

    // row_inclusion: the row is leaf `index` of the block's rows tree.
    if !verify_inclusion(
        &leaf,
        d.index,
        u64::from(h.row_count),
        &d.block_path,
        &h.rows_root,
    ) {
        return fail(
            Step::RowInclusion,
            alloc::format!(
                "block.path does not lead from the row at index {index} to rows_root {} of a block of {} rows",
                Hex(&h.rows_root),
                h.row_count
            ),
        );
    }

    // block_signature: over the block hash, by the key the document names.
    let bh = block_hash(&d.header_bytes);
    let block_signer = match &d.block_signature {
        Some(s) => {
            let known = memo.as_ref().is_some_and(|m| m.blocks.get(&bh) == Some(s));
            if !known {
                verify_signature(&s.key, &bh, &s.sig).map_err(|e| {
                    VerifyError::new(
                        Step::BlockSignature,
                        alloc::format!("block {} signed by {}: {e}", Hex(&bh), Hex(&s.key)),
                    )
                })?;
                if let Some(m) = memo.as_deref_mut().filter(|m| m.blocks_max > 0) {
                    if m.blocks.insert(bh, *s).is_none() {
                        m.order.push_back(bh);
                        if m.order.len() > m.blocks_max {
                            let old = m.order.pop_front().expect("over the bound");
                            m.blocks.remove(&old);
                        }
                    }
                }
            }
            Some(s.key)
        }
        None if trust.is_structure_only() => None,
        None => {
            return fail(
                Step::BlockSignature,
                "block.signature is missing (required unless verifying structure only)".into(),
            )
        }
    };

    // block_inclusion: the block hash is leaf `height` of the branch log the entry commits to.
    let e = &d.entry;
    if d.branch_size != e.size {
        return fail(
            Step::BlockInclusion,
            alloc::format!(
                "branch.size {} differs from the size {} in checkpoint.entry_hex",
                d.branch_size,
                e.size
            ),
        );
    }
    // The log's leaf data are block hashes, so the leaf is H(0x00 || block hash).
    if !verify_inclusion(&leaf_hash(&bh), h.height, e.size, &d.branch_path, &e.root) {
        return fail(
            Step::BlockInclusion,
            alloc::format!(
                "branch.path does not lead from block {} at height {} to the branch log root {} of size {}",
                Hex(&bh),
                h.height,
                Hex(&e.root),
                e.size
            ),
        );
    }

    // branch_entry
    if e.branch != h.branch {
        return fail(
            Step::BranchEntry,
            alloc::format!(
                "checkpoint.entry_hex is for branch {}, the block is on branch {}",
                Hex(&e.branch),
                Hex(&h.branch)
            ),
        );
    }

    // entry_inclusion: the entry is leaf `entry_index` of the checkpoint's branches tree.
    let c = &d.checkpoint;
    let entry_leaf = leaf_hash(&d.entry_bytes);
    if !verify_inclusion(
        &entry_leaf,
        d.entry_index,
        u64::from(c.branch_count),
        &d.checkpoint_path,
        &c.branches_root,
    ) {
        return fail(
            Step::EntryInclusion,
            alloc::format!(
                "checkpoint.path does not lead from the entry at index {} to branches_root {} of {} branches",
                d.entry_index,
                Hex(&c.branches_root),
                c.branch_count
            ),
        );
    }

    // validators, quorum
    let ch = checkpoint_hash(&d.checkpoint_bytes);
    let quorum = match memo.map(|m| &mut m.finals) {
        Some(finals) if !trust.is_structure_only() => match finals.iter().find(|(h, _)| *h == ch) {
            Some((_, q)) => q.clone(),
            None => {
                let q = check_trust(c, &ch, &d.signatures, trust)?;
                if finals.len() >= FINAL_CHECKPOINTS_MAX {
                    finals.remove(0);
                }
                finals.push((ch, q.clone()));
                q
            }
        },
        _ => check_trust(c, &ch, &d.signatures, trust)?,
    };

    // attestation: a device signed a batch whose tree holds this row.
    let attestation = match &d.attestation {
        None => None,
        Some(a) => {
            let Some(batch_root) = inclusion_root(&leaf, a.index, a.batch_size, &a.path) else {
                return fail(
                    Step::Attestation,
                    alloc::format!("attestation.path has {} hashes, which does not fit index {} in a batch of {}", a.path.len(), a.index, a.batch_size),
                );
            };
            let digest = hash_parts(
                ATTESTATION,
                &[&a.device_key, &a.seq.to_le_bytes(), &batch_root],
            );
            verify_signature(&a.device_key, &digest, &a.sig).map_err(|e| {
                VerifyError::new(
                    Step::Attestation,
                    alloc::format!(
                        "device {} batch {} (root {}): {e}",
                        Hex(&a.device_key),
                        a.seq,
                        Hex(&batch_root)
                    ),
                )
            })?;
            Some(Attested {
                device_key: a.device_key,
                seq: a.seq,
                batch_root,
                batch_size: a.batch_size,
                index: a.index,
            })
        }
    };

    Ok(Verified {
        row,
        leaf_hash: leaf,
        tx_id: tx,
        branch: h.branch,
        height: h.height,
        index,
        block_hash: bh,
        block_signer,
        branch_size: e.size,
        checkpoint: info(c, ch, quorum),
        attestation,
    })
}

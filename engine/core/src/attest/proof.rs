//! The `attestation` member of a row's proof: the row's position in its signed batch and the
//! batch tree's inclusion path, assembled from the blocks that hold the batch's rows.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use annals_format::block::{BlockHeader, BranchId};
use annals_format::hash::many::leaf_hashes_of;
use annals_format::hash::{to_hex, Hash};
use annals_format::merkle::{inclusion_path, root_of, LeafHashes};
use parking_lot::Mutex;

use super::Attestations;
use crate::proof::{read_block, AttestationProof, ProofError};
use crate::view::Snapshot;

/// Batches assembled per [`crate::proof::BlockProofs`], by `(device_key, seq)`.
pub(crate) type BatchCache = Mutex<HashMap<([u8; 32], u64), Arc<Vec<Hash>>>>;
/// Batches one [`BatchCache`] keeps (a block's rows rarely span more).
const CACHED_BATCHES_MAX: usize = 64;

/// The attestation of row `index` of the block `header` (whose leaf hashes are `leaves`), if
/// it was written signed.
pub(crate) fn attestation(
    attest: &Attestations,
    snap: &Snapshot,
    cache: &BatchCache,
    header: &BlockHeader,
    leaves: &[Hash],
    index: u32,
) -> Result<Option<AttestationProof>, ProofError> {
    let Some((rec, pos)) = attest.find(&header.branch, header.height, index) else {
        return Ok(None);
    };
    let key = (rec.device_key, rec.seq);
    let cached = cache.lock().get(&key).cloned();
    let batch = match cached {
        Some(b) => b,
        None => {
            let b = Arc::new(assemble(snap, header, leaves, &rec)?);
            let mut c = cache.lock();
            if c.len() >= CACHED_BATCHES_MAX {
                c.clear();
            }
            c.insert(key, b.clone());
            b
        }
    };
    let path = inclusion_path(&mut LeafHashes(&batch), u64::from(pos), batch.len() as u64)
        .map_err(|e| {
            ProofError::Corrupt(format!(
                "attestation of device {} batch {}: {e}",
                to_hex(&rec.device_key),
                rec.seq
            ))
        })?;
    Ok(Some(AttestationProof {
        device_key: rec.device_key,
        seq: rec.seq,
        batch_size: u64::from(rec.batch_size),
        index: u64::from(pos),
        path,
        sig: rec.sig,
    }))
}

/// The leaf hashes of a batch in batch order, read from the blocks its runs name; they must
/// hash to the recorded batch root.
fn assemble(
    snap: &Snapshot,
    header: &BlockHeader,
    leaves: &[Hash],
    rec: &super::AttestRecord,
) -> Result<Vec<Hash>, ProofError> {
    let what = || {
        format!(
            "attestation of device {} batch {}",
            to_hex(&rec.device_key),
            rec.seq
        )
    };
    let mut blocks: HashMap<(BranchId, u64), Vec<Hash>> = HashMap::new();
    let mut out = Vec::with_capacity(rec.batch_size as usize);
    for run in &rec.runs {
        let range = run.first_index as usize..(run.first_index as usize + run.count as usize);
        // The proof's own block, when its leaves are the whole block (not one proof piece).
        let own = run.branch == header.branch
            && run.height == header.height
            && leaves.len() == header.row_count as usize;
        let hashes: &[Hash] = if own {
            leaves
        } else {
            match blocks.entry((run.branch, run.height)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let read = read_block(snap, &run.branch, run.height)?.ok_or_else(|| {
                        ProofError::Corrupt(format!(
                            "{}: block {} of branch {} holding its rows is gone",
                            what(),
                            run.height,
                            to_hex(&run.branch)
                        ))
                    })?;
                    e.insert(leaf_hashes_of(&read.encodings))
                }
            }
        };
        let slice = hashes.get(range).ok_or_else(|| {
            ProofError::Corrupt(format!(
                "{}: block {} of branch {} has {} rows, fewer than the run {}+{} it names",
                what(),
                run.height,
                to_hex(&run.branch),
                hashes.len(),
                run.first_index,
                run.count
            ))
        })?;
        out.extend_from_slice(slice);
    }
    if root_of(&out) != rec.batch_root {
        return Err(ProofError::Corrupt(format!(
            "{}: the stored rows do not hash to the signed batch root {}",
            what(),
            to_hex(&rec.batch_root)
        )));
    }
    Ok(out)
}

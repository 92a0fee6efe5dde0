//! # annals-verify: check an annals proof without trusting annals
//!
//! An independent verifier for the ledger format of `shared/FORMAT.md`. It shares no code with
//! the server: everything here was written from FORMAT.md, and `tests/vectors.rs` holds it to
//! the published vectors. It is `no_std` (with `alloc`), depends only on BLAKE3 and Ed25519
//! (verification only), reads JSON with its own strict reader, does no I/O, reads no clock and
//! uses no randomness.
//!
//! ## What a proof is checked for, in order
//!
//! [`verify_proof`] takes a proof and a [`Trust`], and runs these steps; the first that fails
//! is named by the error's [`Step`]. A proof is an `annals-proof/1` JSON document, or the same
//! proof in the binary form `annals-proof-bin/1` of the project's docs/PROOF-BINARY.md (about
//! 40 % of the JSON's size; it starts with the bytes `APRF`).
//!
//! 1. `parse`: strict JSON (no duplicate keys, no unknown fields), the document's shape,
//!    lowercase hex of the right lengths, and the block header, branch entry and checkpoint
//!    header decode as format version 1. For the binary form: magic and version, lengths,
//!    presence bytes, no trailing bytes, and the same three structures.
//! 2. `row_encoding`: the stated row (columns sorted by name) encodes to exactly `row_hex`.
//!    The binary form states the row only as `row_hex`: it must decode as a row and
//!    re-encode to the same bytes (so it is canonical).
//! 3. `block_header`: the block is of the row's table and its time range holds the row's time.
//! 4. `tx_id`: `H(0x03 || branch || height || index || leaf_hash)` equals `tx_id`.
//! 5. `row_inclusion`: the row is leaf `block.index` of the tree of `row_count` rows whose
//!    root is the header's `rows_root` (RFC 9162 inclusion).
//! 6. `block_signature`: Ed25519 (strict) over the block hash `H(0x02 || header)` by the key
//!    the document names. Required, except in structure-only mode where it may be absent.
//! 7. `block_inclusion`: `branch.size` equals the entry's size, and the block hash is leaf
//!    `height` of the branch log of that size whose root is in `checkpoint.entry_hex`.
//! 8. `branch_entry`: the entry names the block's branch.
//! 9. `entry_inclusion`: the entry is leaf `entry_index` of the checkpoint's `branches_root`
//!    (tree size `branch_count`).
//! 10. `validators`: the checkpoint's validator-set hash equals the trusted set's hash.
//! 11. `quorum`: valid signatures over the checkpoint hash from *distinct trusted* keys carry
//!     more than 2/3 of the set's power. Unknown keys are ignored; a key counts once; a
//!     signature by a trusted key that does not verify fails the step.
//! 12. `attestation` (when present): the device's Ed25519 signature over
//!     `H(0x06 || device_key || seq || batch_root)`, with `batch_root` recomputed from the row
//!     at `index` of a batch of `batch_size` through `path`.
//!
//! ## What it trusts
//!
//! Only the validator set the caller gives ([`Trust::validators`], or a trust file read by
//! [`Trust::from_file_bytes`]). Keys inside the document (the block signer, the device) are
//! reported in [`Verified`] for the caller to judge, never trusted by themselves.
//! [`Trust::structure_only`] trusts nothing and must be asked for explicitly: it skips steps
//! 10 and 11, so its result shows the proof is self-consistent, not that the ledger finalized
//! it (a forged checkpoint with no signatures passes).
//!
//! Also here: [`verify_checkpoint`] (a checkpoint and its quorum on their own),
//! [`verify_entry_consistency`] (a branch only grew between two checkpoints), and the RFC 9162
//! primitives [`mth`], [`verify_inclusion`], [`verify_consistency`].

#![cfg_attr(not(test), no_std)]
// The issue limits this crate to BLAKE3 and Ed25519, so errors implement Display by hand
// instead of using thiserror.

extern crate alloc;

mod binary;
mod checkpoint;
mod document;
mod encoding;
mod hex;
mod json;
mod merkle;
mod proof;
mod trust;

use alloc::string::String;
use core::fmt;

pub use binary::PROOF_BIN_MAGIC;
pub use checkpoint::{verify_checkpoint, verify_entry_consistency, CheckpointInfo};
pub use document::{PROOF_BYTES_MAX, PROOF_FORMAT, SIGNATURES_MAX};
pub use encoding::{
    block_hash, checkpoint_hash, tx_id, BlockHeader, BranchEntry, CheckpointHeader, Column, Row,
    Value, CHECKPOINT_LEN, ENTRY_LEN, FORMAT_VERSION,
};
pub use hex::Hex;
pub use merkle::{
    inclusion_root, leaf_hash, mth, node_hash, verify_consistency, verify_inclusion, PATH_LEN_MAX,
};
pub use proof::{verify_proof, Attested, Verified, Verifier, BLOCK_SIGNATURES_REMEMBERED};
pub use trust::{
    validators_hash, verify_signature, KeySignature, Quorum, Trust, TrustError, Validator,
    VALIDATORS_MAX,
};

/// A 32-byte BLAKE3 output.
pub type Hash = [u8; 32];

/// A verification step; a failure names the first step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Step {
    /// The document (or a structure given on its own) is not well-formed.
    Parse,
    /// The row cannot be encoded as stated, or encodes to other bytes than `row_hex`.
    RowEncoding,
    /// The block header contradicts the row (table, time range).
    BlockHeader,
    /// The transaction id is not the row's.
    TxId,
    /// The row is not under the block's `rows_root` at its index.
    RowInclusion,
    /// The block signature is missing or does not verify.
    BlockSignature,
    /// The block is not in the branch log the checkpoint entry commits to.
    BlockInclusion,
    /// The checkpoint entry is for another branch.
    BranchEntry,
    /// The entry is not under the checkpoint's `branches_root`.
    EntryInclusion,
    /// The checkpoint names another validator set than the trusted one.
    Validators,
    /// Trusted signatures do not carry more than 2/3 of the power, or one does not verify.
    Quorum,
    /// The device attestation does not verify.
    Attestation,
    /// Two states of a branch are not consistent ([`verify_entry_consistency`]).
    Consistency,
}

impl Step {
    /// Every step of [`verify_proof`], in the order they run.
    pub const PROOF_ORDER: [Step; 12] = [
        Step::Parse,
        Step::RowEncoding,
        Step::BlockHeader,
        Step::TxId,
        Step::RowInclusion,
        Step::BlockSignature,
        Step::BlockInclusion,
        Step::BranchEntry,
        Step::EntryInclusion,
        Step::Validators,
        Step::Quorum,
        Step::Attestation,
    ];

    /// The step's name as printed: `row_inclusion`, `quorum`, ...
    pub fn name(self) -> &'static str {
        match self {
            Step::Parse => "parse",
            Step::RowEncoding => "row_encoding",
            Step::BlockHeader => "block_header",
            Step::TxId => "tx_id",
            Step::RowInclusion => "row_inclusion",
            Step::BlockSignature => "block_signature",
            Step::BlockInclusion => "block_inclusion",
            Step::BranchEntry => "branch_entry",
            Step::EntryInclusion => "entry_inclusion",
            Step::Validators => "validators",
            Step::Quorum => "quorum",
            Step::Attestation => "attestation",
            Step::Consistency => "consistency",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed verification: the step and what was wrong, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    step: Step,
    detail: String,
}

impl VerifyError {
    pub(crate) fn new(step: Step, detail: String) -> VerifyError {
        VerifyError { step, detail }
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// What was wrong (names the field or values involved).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}", self.step, self.detail)
    }
}

impl core::error::Error for VerifyError {}

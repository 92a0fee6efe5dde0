//! Reading the binary proof form `annals-proof-bin/1` (docs/PROOF-BINARY.md) into the same
//! fields as a JSON document, so both forms go through the same verification steps.
//!
//! The binary form carries exactly the bytes the JSON form carries as hex, without the `row`
//! object: the row is stated only by its encoding, which the `row_encoding` step decodes and
//! re-encodes. Strict like the JSON reader: wrong magic or version, over-long lists, bad flags
//! and trailing bytes are refused, naming the field and its byte offset.

use alloc::vec::Vec;

use crate::document::{AttestationDoc, Document, RowStated, PROOF_BYTES_MAX, SIGNATURES_MAX};
use crate::encoding::{BlockHeader, BranchEntry, CheckpointHeader, Reader, ENTRY_LEN};
use crate::merkle::PATH_LEN_MAX;
use crate::trust::KeySignature;
use crate::{Hash, Step, VerifyError};

/// The first bytes of a binary proof: `"APRF"` then the form's version, 1.
pub const PROOF_BIN_MAGIC: [u8; 5] = *b"APRF\x01";

/// True when `bytes` start like a binary proof (any version): the JSON form starts with `{`
/// or whitespace.
pub(crate) fn is_binary(bytes: &[u8]) -> bool {
    bytes.starts_with(&PROOF_BIN_MAGIC[..4])
}

/// A [`Reader`] that remembers where it started, so errors give byte offsets.
struct Bin<'a> {
    r: Reader<'a>,
    len: usize,
}

impl<'a> Bin<'a> {
    fn offset(&self) -> usize {
        self.len - self.r.b.len()
    }

    fn err(&self, field: &str, detail: impl core::fmt::Display) -> VerifyError {
        VerifyError::new(
            Step::Parse,
            alloc::format!("{field} (at byte {}): {detail}", self.offset()),
        )
    }

    fn wrap<T>(
        &mut self,
        field: &str,
        f: impl FnOnce(&mut Reader<'a>) -> Result<T, alloc::string::String>,
    ) -> Result<T, VerifyError> {
        let at = self.offset();
        f(&mut self.r).map_err(|e| {
            VerifyError::new(Step::Parse, alloc::format!("{field} (at byte {at}): {e}"))
        })
    }

    fn u8(&mut self, field: &str) -> Result<u8, VerifyError> {
        self.wrap(field, |r| r.array::<1>(field).map(|a| a[0]))
    }

    fn u32(&mut self, field: &str) -> Result<u32, VerifyError> {
        self.wrap(field, |r| r.u32(field))
    }

    fn u64(&mut self, field: &str) -> Result<u64, VerifyError> {
        self.wrap(field, |r| r.u64(field))
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], VerifyError> {
        self.wrap(field, |r| r.array::<N>(field))
    }

    /// `u32` length, then that many bytes.
    fn bytes(&mut self, field: &str) -> Result<Vec<u8>, VerifyError> {
        self.wrap(field, |r| {
            let len = r.u32("length")?;
            r.take(usize::try_from(len).unwrap_or(usize::MAX), "bytes")
                .map(<[u8]>::to_vec)
        })
    }

    /// `u8` count, then that many 32-byte hashes.
    fn path(&mut self, field: &str) -> Result<Vec<Hash>, VerifyError> {
        let n = usize::from(self.u8(field)?);
        if n > PATH_LEN_MAX {
            return Err(self.err(field, alloc::format!("{n} hashes; at most {PATH_LEN_MAX}")));
        }
        (0..n)
            .map(|i| self.array::<32>(&alloc::format!("{field}[{i}]")))
            .collect()
    }

    /// A presence byte, 0 or 1.
    fn flag(&mut self, field: &str) -> Result<bool, VerifyError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(field, alloc::format!("presence byte {b}, expected 0 or 1"))),
        }
    }

    fn key_signature(&mut self, field: &str) -> Result<KeySignature, VerifyError> {
        Ok(KeySignature {
            key: self.array::<32>(&alloc::format!("{field}.key"))?,
            sig: self.array::<64>(&alloc::format!("{field}.sig"))?,
        })
    }
}

/// The `parse` step for the binary form. Field names in errors are the JSON form's.
pub(crate) fn parse_binary(bytes: &[u8]) -> Result<Document, VerifyError> {
    let p = Step::Parse;
    if bytes.len() > PROOF_BYTES_MAX {
        return Err(VerifyError::new(
            p,
            alloc::format!("proof is {} bytes; at most {PROOF_BYTES_MAX}", bytes.len()),
        ));
    }
    let mut b = Bin {
        r: Reader { b: bytes },
        len: bytes.len(),
    };
    let magic = b.array::<5>("magic")?;
    if magic != PROOF_BIN_MAGIC {
        return Err(VerifyError::new(
            p,
            alloc::format!(
                "magic: {} is not annals-proof-bin/1 (APRF, version 1)",
                crate::hex::Hex(&magic)
            ),
        ));
    }
    let row_hex = b.bytes("row_hex")?;
    let tx_id = b.array::<32>("tx_id")?;
    let header_bytes = b.bytes("block.header_hex")?;
    let header = BlockHeader::decode(&header_bytes).map_err(|e| b.err("block.header_hex", e))?;
    let index = u64::from(b.u32("block.index")?);
    let block_path = b.path("block.path")?;
    let block_signature = if b.flag("block.signature")? {
        Some(b.key_signature("block.signature")?)
    } else {
        None
    };
    let branch_size = b.u64("branch.size")?;
    let branch_path = b.path("branch.path")?;
    let checkpoint_bytes = b.bytes("checkpoint.header_hex")?;
    let checkpoint = CheckpointHeader::decode(&checkpoint_bytes)
        .map_err(|e| b.err("checkpoint.header_hex", e))?;
    let entry_bytes = b.array::<ENTRY_LEN>("checkpoint.entry_hex")?.to_vec();
    let entry = BranchEntry::decode(&entry_bytes).map_err(|e| b.err("checkpoint.entry_hex", e))?;
    let entry_index = b.u64("checkpoint.entry_index")?;
    let checkpoint_path = b.path("checkpoint.path")?;
    let count = b.u32("checkpoint.signatures")? as usize;
    if count > SIGNATURES_MAX {
        return Err(b.err(
            "checkpoint.signatures",
            alloc::format!("{count} signatures; at most {SIGNATURES_MAX}"),
        ));
    }
    let signatures = (0..count)
        .map(|i| b.key_signature(&alloc::format!("checkpoint.signatures[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let attestation = if b.flag("attestation")? {
        Some(AttestationDoc {
            device_key: b.array::<32>("attestation.device_key")?,
            seq: b.u64("attestation.seq")?,
            batch_size: b.u64("attestation.batch_size")?,
            index: b.u64("attestation.index")?,
            path: b.path("attestation.path")?,
            sig: b.array::<64>("attestation.sig")?,
        })
    } else {
        None
    };
    b.r.finish().map_err(|e| b.err("proof", e))?;
    Ok(Document {
        row: RowStated::Encoding,
        row_hex,
        tx_id,
        header_bytes,
        header,
        index,
        block_path,
        block_signature,
        branch_size,
        branch_path,
        checkpoint_bytes,
        checkpoint,
        entry_bytes,
        entry,
        entry_index,
        checkpoint_path,
        signatures,
        attestation,
    })
}

//! Ed25519 over 32-byte digests (block hashes, checkpoint hashes, attestation digests).

use crate::hash::Hash;
use crate::FormatError;
use ed25519_dalek::Signer;
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

/// Signature length in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Signs a digest. Ed25519 is deterministic: the same key and digest give the same bytes.
pub fn sign(key: &SigningKey, digest: &Hash) -> [u8; SIGNATURE_LEN] {
    key.sign(digest).to_bytes()
}

/// Checks `sig` by `pubkey` over `digest` (strict verification: no malleable signatures).
pub fn verify(
    pubkey: &[u8; 32],
    digest: &Hash,
    sig: &[u8; SIGNATURE_LEN],
) -> Result<(), FormatError> {
    let key =
        VerifyingKey::from_bytes(pubkey).map_err(|e| FormatError::Signature(e.to_string()))?;
    key.verify_strict(digest, &Signature::from_bytes(sig))
        .map_err(|e| FormatError::Signature(e.to_string()))
}

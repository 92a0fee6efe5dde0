//! BLAKE3-256 with a domain byte in front of everything hashed.
//!
//! [`many`] hashes a batch of rows (or one level of Merkle nodes) at once, using the SIMD lanes
//! across messages; the functions here hash one message.

mod lanes;
pub mod many;

/// A 32-byte BLAKE3 output.
pub type Hash = [u8; 32];

/// 32 zero bytes: `prev` at height 0 and epoch 0, `context` when a table has none.
pub const ZERO_HASH: Hash = [0u8; 32];

/// The first byte of every hashed structure (FORMAT.md, "Hashing").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    Leaf = 0x00,
    Node = 0x01,
    BlockHeader = 0x02,
    TxId = 0x03,
    Checkpoint = 0x04,
    ValidatorSet = 0x05,
    Attestation = 0x06,
}

/// `H(domain || parts...)`.
pub fn hash_parts(domain: Domain, parts: &[&[u8]]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[domain as u8]);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// `H(0x00 || data)`: the hash of a Merkle leaf.
#[inline]
pub fn leaf_hash(data: &[u8]) -> Hash {
    hash_parts(Domain::Leaf, &[data])
}

/// `H(0x01 || left || right)`: the hash of an interior Merkle node.
#[inline]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = Domain::Node as u8;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    *blake3::hash(&buf).as_bytes()
}

/// `H("")`: the Merkle Tree Hash of the empty list.
pub fn empty_root() -> Hash {
    *blake3::hash(&[]).as_bytes()
}

/// Lowercase hex of a hash (or any bytes).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Parses exactly 32 bytes of hex.
pub fn hash_from_hex(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

//! Virtual block headers, block hashes and transaction ids.
//!
//! ```text
//! header := version:u8 = 1 | table:str | branch:16 | height:u64 | prev:32 | rows_root:32
//!         | row_count:u32 | time_min:i64 | time_max:i64 | context:32 | sealed_at:i64
//! ```

use crate::codec::{put_str, Reader};
use crate::hash::{hash_parts, Domain, Hash};
use crate::{FormatError, FORMAT_VERSION};

/// A branch: one writer (a node's shard) and one table.
pub type BranchId = [u8; 16];

/// A block header exactly as FORMAT.md defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub table: String,
    pub branch: BranchId,
    pub height: u64,
    pub prev: Hash,
    pub rows_root: Hash,
    pub row_count: u32,
    pub time_min: i64,
    pub time_max: i64,
    pub context: Hash,
    pub sealed_at: i64,
}

impl BlockHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(1 + 4 + self.table.len() + 16 + 8 + 32 + 32 + 4 + 8 + 8 + 32 + 8);
        out.push(FORMAT_VERSION);
        put_str(&mut out, &self.table);
        out.extend_from_slice(&self.branch);
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.prev);
        out.extend_from_slice(&self.rows_root);
        out.extend_from_slice(&self.row_count.to_le_bytes());
        out.extend_from_slice(&self.time_min.to_le_bytes());
        out.extend_from_slice(&self.time_max.to_le_bytes());
        out.extend_from_slice(&self.context);
        out.extend_from_slice(&self.sealed_at.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BlockHeader, FormatError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("block header version")?;
        if version != FORMAT_VERSION {
            return Err(FormatError::Version {
                what: "block header",
                version,
            });
        }
        let h = BlockHeader {
            table: r.str("block table")?.to_owned(),
            branch: r.array("block branch")?,
            height: r.u64("block height")?,
            prev: r.array("block prev")?,
            rows_root: r.array("block rows_root")?,
            row_count: r.u32("block row_count")?,
            time_min: r.i64("block time_min")?,
            time_max: r.i64("block time_max")?,
            context: r.array("block context")?,
            sealed_at: r.i64("block sealed_at")?,
        };
        r.finish("block header")?;
        Ok(h)
    }

    /// `H(0x02 || header)`.
    pub fn hash(&self) -> Hash {
        hash_parts(Domain::BlockHeader, &[&self.encode()])
    }
}

/// The hash of an already encoded header.
pub fn block_hash_of_encoding(header: &[u8]) -> Hash {
    hash_parts(Domain::BlockHeader, &[header])
}

/// `tx_id = H(0x03 || branch || height:u64 || index:u32 || leaf_hash)`.
#[inline]
pub fn tx_id(branch: &BranchId, height: u64, index: u32, leaf_hash: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 16 + 8 + 4 + 32];
    buf[0] = Domain::TxId as u8;
    buf[1..17].copy_from_slice(branch);
    buf[17..25].copy_from_slice(&height.to_le_bytes());
    buf[25..29].copy_from_slice(&index.to_le_bytes());
    buf[29..].copy_from_slice(leaf_hash);
    *blake3::hash(&buf).as_bytes()
}

//! FORMAT.md "Hashing": BLAKE3 with a domain byte, and RFC 9162 Merkle trees.
//!
//! Verification only: the Merkle Tree Hash of a list, the root an inclusion path leads to, and
//! consistency between two tree sizes (RFC 9162 sections 2.1.1, 2.1.3.2 and 2.1.4.2).

use crate::Hash;

/// Domain bytes (FORMAT.md): the first byte of everything hashed.
pub(crate) const LEAF: u8 = 0x00;
pub(crate) const NODE: u8 = 0x01;
pub(crate) const BLOCK_HEADER: u8 = 0x02;
pub(crate) const TX_ID: u8 = 0x03;
pub(crate) const CHECKPOINT: u8 = 0x04;
pub(crate) const VALIDATOR_SET: u8 = 0x05;
pub(crate) const ATTESTATION: u8 = 0x06;

/// Longest path accepted anywhere: a tree of at most 2^64 leaves is 64 levels deep, and an
/// RFC 9162 consistency path has at most one more element than that.
pub const PATH_LEN_MAX: usize = 65;

/// `H(domain || parts...)`.
pub(crate) fn hash_parts(domain: u8, parts: &[&[u8]]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[domain]);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// `H(0x00 || data)`: the hash of a Merkle leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    hash_parts(LEAF, &[data])
}

/// `H(0x01 || left || right)`: the hash of an interior Merkle node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    hash_parts(NODE, &[left, right])
}

/// `MTH(D)` over leaf *data* (each leaf is hashed with [`leaf_hash`]), by the RFC's recursive
/// definition: `MTH({}) = H("")`, `MTH({d}) = H(0x00 || d)`, otherwise split at the largest
/// power of two below `n`.
pub fn mth<D: AsRef<[u8]>>(leaves: &[D]) -> Hash {
    match leaves.len() {
        0 => *blake3::hash(&[]).as_bytes(),
        1 => leaf_hash(leaves[0].as_ref()),
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The root that `path` leads to from `leaf_hash` at `index` in a tree of `size` leaves, or
/// `None` when the path's length does not fit `(index, size)` (RFC 9162 section 2.1.3.2 up to
/// the final comparison).
pub fn inclusion_root(leaf_hash: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size || path.len() > PATH_LEN_MAX {
        return None;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in path {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                // A right-edge node with no sibling at these levels is carried up unchanged.
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

/// Does `leaf_hash` sit at `index` of the tree of `size` leaves whose root is `root`?
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> bool {
    inclusion_root(leaf_hash, index, size, path).as_ref() == Some(root)
}

/// Is the tree `(size2, root2)` an append-only extension of `(size1, root1)`? RFC 9162
/// section 2.1.4.2 for `0 < size1 < size2`. Equal sizes need an empty path and equal roots;
/// `size1 == 0` needs an empty path and `root1` equal to the empty tree's hash.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    path: &[Hash],
) -> bool {
    if size1 > size2 || path.len() > PATH_LEN_MAX {
        return false;
    }
    if size1 == size2 {
        return path.is_empty() && root1 == root2;
    }
    if size1 == 0 {
        return path.is_empty() && *root1 == mth::<&[u8]>(&[]);
    }
    // Step 2: a first tree that is a complete subtree starts the walk from its own root.
    let (first, rest) = if size1.is_power_of_two() {
        (root1, path)
    } else {
        match path.split_first() {
            Some((f, rest)) => (f, rest),
            None => return false,
        }
    };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *root1 && sr == *root2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tree_is_the_hash_of_nothing() {
        assert_eq!(mth::<&[u8]>(&[]), *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn inclusion_refuses_out_of_range_and_overlong_paths() {
        let l = leaf_hash(b"x");
        assert!(!verify_inclusion(&l, 0, 0, &[], &l));
        assert!(!verify_inclusion(&l, 1, 1, &[], &l));
        assert!(verify_inclusion(&l, 0, 1, &[], &l));
        assert!(!verify_inclusion(&l, 0, 1, &[l], &l));
        let long = [l; PATH_LEN_MAX + 1];
        assert_eq!(inclusion_root(&l, 0, u64::MAX, &long), None);
    }

    #[test]
    fn consistency_edge_sizes() {
        let a = mth(&[b"a"]);
        let empty = mth::<&[u8]>(&[]);
        assert!(verify_consistency(0, 1, &empty, &a, &[]));
        assert!(!verify_consistency(0, 1, &a, &a, &[]));
        assert!(verify_consistency(1, 1, &a, &a, &[]));
        assert!(!verify_consistency(1, 1, &a, &empty, &[]));
        assert!(!verify_consistency(2, 1, &a, &a, &[]));
        let ab = mth(&[b"a", b"b"]);
        assert!(verify_consistency(1, 2, &a, &ab, &[leaf_hash(b"b")]));
        assert!(!verify_consistency(1, 2, &a, &ab, &[]));
    }
}

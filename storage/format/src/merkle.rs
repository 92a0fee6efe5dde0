//! RFC 9162 (RFC 6962) Merkle Tree Hash, inclusion and consistency proofs, with BLAKE3.
//!
//! Proof *generation* is written against [`RangeHasher`], which answers `MTH(D[start..end])`
//! for the subtrees an RFC 9162 path needs. An in-memory slice of leaf hashes implements it by
//! recursion ([`LeafHashes`]); the branch log in `annals-storage` implements it from stored
//! complete-subtree hashes in O(log n) reads. Verification takes only hashes.

use crate::hash::many::parent_level;
use crate::hash::{empty_root, node_hash, Hash};
use crate::FormatError;

/// Largest power of two strictly smaller than `n` (`n >= 2`).
#[inline]
pub fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Answers the Merkle Tree Hash of a contiguous range of leaves.
pub trait RangeHasher {
    /// `MTH(D[start..end])`, `start < end <= size`. Only ranges that are subtrees of the RFC 9162
    /// decomposition are asked for: `start` is a multiple of the largest power of two `<= end - start`.
    fn range_hash(&mut self, start: u64, end: u64) -> Hash;
}

/// Leaf hashes held in memory (`H(0x00 || d)` already applied).
#[derive(Debug, Clone, Copy)]
pub struct LeafHashes<'a>(pub &'a [Hash]);

impl RangeHasher for LeafHashes<'_> {
    fn range_hash(&mut self, start: u64, end: u64) -> Hash {
        root_of(&self.0[start as usize..end as usize])
    }
}

/// `MTH` over leaf hashes, computed bottom-up without recursion or allocation per level beyond
/// one scratch vector. Identical to the RFC's recursive definition.
pub fn root_of(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes.len() {
        0 => empty_root(),
        1 => leaf_hashes[0],
        _ => {
            // Bottom-up pairing gives the RFC tree: the left subtree is always the complete one,
            // and an odd node at the end of a level is promoted unchanged.
            let mut level = parent_level(leaf_hashes);
            while level.len() > 1 {
                level = parent_level(&level);
            }
            level[0]
        }
    }
}

/// Every level of the tree over some leaf hashes, bottom-up: node `i` of level `k` is the
/// `MTH` of leaves `i * 2^k .. min((i + 1) * 2^k, n)` (the bottom-up pairing of [`root_of`]),
/// so each subtree an inclusion path names is one lookup. Build it once to give the paths of
/// many leaves, or the root and a path without hashing the tree twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    levels: Vec<Vec<Hash>>,
}

impl Levels {
    pub fn new(leaf_hashes: Vec<Hash>) -> Levels {
        let mut levels = vec![leaf_hashes];
        while levels.last().expect("one level").len() > 1 {
            let up = parent_level(levels.last().expect("one level"));
            levels.push(up);
        }
        Levels { levels }
    }

    /// The leaf hashes.
    pub fn leaves(&self) -> &[Hash] {
        &self.levels[0]
    }

    /// `MTH` of all the leaves (the empty root for none).
    pub fn root(&self) -> Hash {
        match self.levels.last().expect("one level").first() {
            Some(h) => *h,
            None => empty_root(),
        }
    }
}

impl Levels {
    /// `MTH` of leaves `start..end`: one lookup when the range is a node of the tree (every
    /// range an inclusion path names is), else hashed from the leaves.
    pub fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = self.levels[0].len() as u64;
        let m = end - start;
        let k = if m.is_power_of_two() {
            m.trailing_zeros()
        } else {
            64 - (m - 1).leading_zeros()
        };
        // A node when aligned and either whole or cut only by the tree's right edge.
        let aligned = start.is_multiple_of(1 << k) && (m == 1 << k || end == n);
        match self.levels.get(k as usize) {
            Some(level) if aligned => level[(start >> k) as usize],
            _ => root_of(&self.levels[0][start as usize..end as usize]),
        }
    }
}

impl RangeHasher for &Levels {
    fn range_hash(&mut self, start: u64, end: u64) -> Hash {
        self.subtree(start, end)
    }
}

/// The roots of consecutive `chunk`-leaf pieces of a tree (`chunk` a power of two; the last
/// piece may be shorter). Every piece is a subtree of the RFC 9162 decomposition, so
/// `root_of(&chunk_roots(l, c)) == root_of(l)`: a block stores these to prove one row from
/// the rows of its piece alone (see [`Chunked`]).
pub fn chunk_roots(leaf_hashes: &[Hash], chunk: usize) -> Vec<Hash> {
    assert!(chunk.is_power_of_two(), "chunk must be a power of two");
    leaf_hashes.chunks(chunk).map(root_of).collect()
}

/// A tree known by its [`chunk_roots`] plus the leaf hashes of one piece: enough for the
/// inclusion path of any leaf of that piece.
#[derive(Debug, Clone, Copy)]
pub struct Chunked<'a> {
    /// Leaves per piece (a power of two).
    pub chunk: u64,
    /// The root of every piece, in order.
    pub roots: &'a [Hash],
    /// Which piece `leaves` are.
    pub piece: u64,
    /// The leaf hashes of that piece.
    pub leaves: &'a [Hash],
}

impl RangeHasher for Chunked<'_> {
    fn range_hash(&mut self, start: u64, end: u64) -> Hash {
        let first = self.piece * self.chunk;
        if start >= first && end <= first + self.leaves.len() as u64 {
            return root_of(&self.leaves[(start - first) as usize..(end - first) as usize]);
        }
        // A subtree outside the known piece is at least a piece long, so it is whole pieces
        // (the last one possibly short): start is a multiple of `chunk`.
        debug_assert_eq!(start % self.chunk, 0);
        let lo = (start / self.chunk) as usize;
        let hi = end.div_ceil(self.chunk) as usize;
        root_of(&self.roots[lo..hi])
    }
}

/// `MTH` over leaf data (hashes each leaf with the leaf domain first).
pub fn root_of_data<D: AsRef<[u8]>>(leaves: &[D]) -> Hash {
    root_of(&crate::hash::many::leaf_hashes_of(leaves))
}

/// RFC 9162 `PATH(index, D[size])`: the audit path for leaf `index` in a tree of `size` leaves.
pub fn inclusion_path(
    h: &mut impl RangeHasher,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, FormatError> {
    if index >= size {
        return Err(FormatError::ProofRange { index, size });
    }
    let mut path = Vec::new();
    // Walk from the root down, remembering siblings, then reverse (the path is leaf-first).
    let (mut lo, mut hi, mut m) = (0u64, size, index);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if m < k {
            path.push(h.range_hash(lo + k, hi));
            hi = lo + k;
        } else {
            path.push(h.range_hash(lo, lo + k));
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 `PROOF(old_size, D[size])`: the consistency path between two sizes of one tree.
pub fn consistency_path(
    h: &mut impl RangeHasher,
    old_size: u64,
    size: u64,
) -> Result<Vec<Hash>, FormatError> {
    if old_size > size {
        return Err(FormatError::ProofRange {
            index: old_size,
            size,
        });
    }
    let mut path = Vec::new();
    if old_size == 0 || old_size == size {
        return Ok(path);
    }
    let (mut lo, mut hi, mut m, mut whole) = (0u64, size, old_size, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                path.push(h.range_hash(lo, hi));
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            path.push(h.range_hash(lo + k, hi));
            hi = lo + k;
        } else {
            path.push(h.range_hash(lo, lo + k));
            lo += k;
            m -= k;
            whole = false;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 section 2.1.3.2: does `leaf_hash` sit at `index` of a tree of `size` with `root`?
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> bool {
    inclusion_root(leaf_hash, index, size, path).is_some_and(|r| &r == root)
}

/// The root that `path` leads to from `leaf_hash` at `index` of a tree of `size` (RFC 9162
/// section 2.1.3.2 without the final comparison), or `None` when the path does not fit the
/// index and size. Used where the root is what a signature covers (device attestations).
pub fn inclusion_root(leaf_hash: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size {
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

/// RFC 9162 section 2.1.4.2: is the tree `(size, root)` an append-only extension of
/// `(old_size, old_root)`? Equal sizes need an empty path and equal roots; an empty old tree is
/// consistent with everything.
pub fn verify_consistency(
    old_size: u64,
    size: u64,
    old_root: &Hash,
    root: &Hash,
    path: &[Hash],
) -> bool {
    if old_size > size {
        return false;
    }
    if old_size == size {
        return path.is_empty() && old_root == root;
    }
    if old_size == 0 {
        return path.is_empty();
    }
    if path.is_empty() {
        return false;
    }
    let mut full: Vec<Hash> = Vec::with_capacity(path.len() + 1);
    if old_size.is_power_of_two() {
        full.push(*old_root);
    }
    full.extend_from_slice(path);
    let (mut fnode, mut snode) = (old_size - 1, size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (full[0], full[0]);
    for c in &full[1..] {
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
    &fr == old_root && &sr == root && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    /// The RFC's recursive definition, as the oracle for everything above.
    fn mth_rec(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth_rec(&d[..k]), &mth_rec(&d[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_le_bytes()))
            .collect()
    }

    #[test]
    fn chunked_paths_equal_full_paths_for_every_leaf() {
        for chunk in [1u64, 2, 4, 8] {
            for n in 1..70u64 {
                let l = leaves(n as usize);
                let roots = chunk_roots(&l, chunk as usize);
                assert_eq!(root_of(&roots), root_of(&l), "chunk {chunk} size {n}");
                for i in 0..n {
                    let piece = i / chunk;
                    let lo = (piece * chunk) as usize;
                    let hi = (lo + chunk as usize).min(n as usize);
                    let mut c = Chunked {
                        chunk,
                        roots: &roots,
                        piece,
                        leaves: &l[lo..hi],
                    };
                    assert_eq!(
                        inclusion_path(&mut c, i, n).unwrap(),
                        inclusion_path(&mut LeafHashes(&l), i, n).unwrap(),
                        "chunk {chunk} size {n} leaf {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn levels_give_the_same_roots_and_paths_as_the_leaves() {
        for n in 0..140usize {
            let l = leaves(n);
            let t = Levels::new(l.clone());
            assert_eq!(t.root(), mth_rec(&l), "size {n}");
            assert_eq!(t.leaves(), &l[..]);
            for i in 0..n as u64 {
                assert_eq!(
                    inclusion_path(&mut &t, i, n as u64).unwrap(),
                    inclusion_path(&mut LeafHashes(&l), i, n as u64).unwrap(),
                    "size {n} leaf {i}"
                );
            }
            // Any range, node or not, hashes as its leaves do.
            for a in 0..n.min(20) {
                for b in a + 1..=n.min(a + 20) {
                    assert_eq!(
                        t.subtree(a as u64, b as u64),
                        mth_rec(&l[a..b]),
                        "{a}..{b} of {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn bottom_up_root_matches_recursive_definition() {
        for n in 0..300 {
            let l = leaves(n);
            assert_eq!(root_of(&l), mth_rec(&l), "size {n}");
        }
    }

    #[test]
    fn every_inclusion_path_verifies_for_sizes_1_to_300() {
        let all = leaves(300);
        for size in 1..=300u64 {
            let l = &all[..size as usize];
            let root = root_of(l);
            for i in 0..size {
                let p = inclusion_path(&mut LeafHashes(l), i, size).unwrap();
                assert!(
                    verify_inclusion(&l[i as usize], i, size, &p, &root),
                    "size {size} index {i}"
                );
                // A wrong index or wrong leaf must fail.
                let other = (i + 1) % size;
                if other != i {
                    assert!(!verify_inclusion(&l[i as usize], other, size, &p, &root));
                    assert!(!verify_inclusion(&l[other as usize], i, size, &p, &root));
                }
            }
        }
    }

    #[test]
    fn every_consistency_path_verifies_for_sizes_1_to_300() {
        let all = leaves(300);
        let roots: Vec<Hash> = (0..=300).map(|n| root_of(&all[..n])).collect();
        for size in 1..=300u64 {
            let l = &all[..size as usize];
            for old in 1..=size {
                let p = consistency_path(&mut LeafHashes(l), old, size).unwrap();
                assert!(
                    verify_consistency(old, size, &roots[old as usize], &roots[size as usize], &p),
                    "{old} -> {size}"
                );
                if old < size {
                    // A root from another history must fail.
                    let mut bad = roots[old as usize];
                    bad[0] ^= 1;
                    assert!(!verify_consistency(
                        old,
                        size,
                        &bad,
                        &roots[size as usize],
                        &p
                    ));
                    assert!(!verify_consistency(
                        old,
                        size,
                        &roots[old as usize],
                        &bad,
                        &p
                    ));
                }
            }
        }
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let l = leaves(4);
        assert!(inclusion_path(&mut LeafHashes(&l), 4, 4).is_err());
        assert!(consistency_path(&mut LeafHashes(&l), 5, 4).is_err());
        assert!(!verify_inclusion(&l[0], 0, 0, &[], &l[0]));
    }
}

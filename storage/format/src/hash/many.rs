//! Many short BLAKE3 messages at once: leaf hashes of a batch of rows and interior Merkle nodes.
//!
//! A canonical row is a few hundred bytes, so `H(0x00 || row)` is one BLAKE3 chunk of a handful
//! of 64-byte blocks, compressed one after another. Hashing rows one at a time leaves the SIMD
//! width of the machine unused: BLAKE3's own parallelism is across chunks of one long input.
//! Here the *independent* messages of a batch share the vector lanes instead (16 at once with
//! AVX-512, 8 with AVX2, 4 with SSE4.1; the portable code otherwise): every full block but the
//! last of each message goes through `hash_many`, then the last blocks, which may be partial
//! and carry the `CHUNK_END | ROOT` flags, are compressed [`super::lanes::LANES`] at a time
//! by [`super::lanes::Tails`].
//! The output is exactly `blake3::hash` of each message; the tests compare them for every
//! length up to two chunks and for random batches.
//!
//! `hash_many` comes from `blake3::platform`, which the blake3 crate
//! documents as unstable. The workspace pins blake3 to one exact version for that reason, and
//! the tests here fail on any difference from `blake3::hash`, so an upgrade that changes the
//! module cannot go unnoticed. Messages longer than one chunk (1024 bytes) take the ordinary
//! hasher.

use blake3::platform::{words_from_le_bytes_32, Platform};
use blake3::IncrementCounter;

use super::lanes::{Tails, IV};
use super::{Domain, Hash};

/// BLAKE3 block length in bytes.
const BLOCK: usize = 64;
/// BLAKE3 chunk length in bytes: longer messages take the ordinary hasher.
const CHUNK: usize = 1024;
/// BLAKE3 compression flags (the BLAKE3 specification, section 2.1).
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const ROOT: u8 = 8;
/// Messages per `hash_many` call: their leading blocks stay in cache while hashed.
const GROUP_MAX: usize = 256;
/// Full leading blocks a one-chunk message can have (its last block is compressed apart).
const LEAD_BLOCKS_MAX: usize = CHUNK / BLOCK - 1;

/// Hashes the full leading blocks of `count` messages of `N` bytes each, laid end to end in
/// `lead`, into chaining values (32 bytes each) in `cvs`.
fn lead_many<const N: usize>(platform: Platform, lead: &[u8], count: usize, cvs: &mut [u8]) {
    // The inputs on the stack: a group has at most GROUP_MAX messages.
    let unused = [0u8; N];
    let mut inputs: [&[u8; N]; GROUP_MAX] = [&unused; GROUP_MAX];
    let mut filled = 0;
    for (slot, b) in inputs.iter_mut().zip(lead.chunks_exact(N).take(count)) {
        *slot = b.try_into().expect("chunks_exact gives N bytes");
        filled += 1;
    }
    assert_eq!(filled, count, "one lead per message, at most GROUP_MAX");
    platform.hash_many(
        &inputs[..count],
        &IV,
        0,
        IncrementCounter::No,
        0,
        CHUNK_START,
        0,
        cvs,
    );
}

/// [`lead_many`] for `blocks` leading blocks (1..=[`LEAD_BLOCKS_MAX`]).
fn lead_dispatch(platform: Platform, blocks: usize, lead: &[u8], count: usize, cvs: &mut [u8]) {
    macro_rules! dispatch {
        ($($b:literal)*) => {
            match blocks {
                $($b => lead_many::<{ $b * BLOCK }>(platform, lead, count, cvs),)*
                _ => unreachable!("{blocks} leading blocks in one chunk"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
}

/// Buffers of [`hash_domain_many`], kept per thread between calls: a batch's hashing
/// allocated them anew each time, a visible part of its cost.
#[derive(Default)]
struct Scratch {
    /// Message indices ordered by length class (classes in increasing order).
    order: Vec<u32>,
    /// Each message's class ([`LONG`] for longer than a chunk).
    class_of: Vec<u8>,
    lead: Vec<u8>,
    cvs: Vec<u8>,
}

/// Class of a message longer than one chunk (hashed by the ordinary hasher).
const LONG: u8 = u8::MAX;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `H(domain || message)` for every message `get(i)`, `i < count`, into `out` in order.
///
/// Messages are grouped by how many full leading blocks they have, so one `hash_many` call
/// covers messages of one length class; each message's prefix is copied once, behind its
/// domain byte, into a scratch buffer (`hash_many` needs each input contiguous).
fn hash_domain_many<'m>(
    domain: Domain,
    count: usize,
    get: impl Fn(usize) -> &'m [u8],
    out: &mut Vec<Hash>,
) {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => hash_domain_many_in(&mut scratch, domain, count, &get, out),
        // Not reentered today; a fresh scratch keeps it correct if it ever is.
        Err(_) => hash_domain_many_in(&mut Scratch::default(), domain, count, &get, out),
    });
}

fn hash_domain_many_in<'m>(
    scratch: &mut Scratch,
    domain: Domain,
    count: usize,
    get: &impl Fn(usize) -> &'m [u8],
    out: &mut Vec<Hash>,
) {
    let platform = Platform::detect();
    let base = out.len();
    out.resize(base + count, [0u8; 32]);
    let out = &mut out[base..];
    // Which messages have how many leading blocks (a counting sort by class); longer than a
    // chunk: the ordinary hasher, now.
    let Scratch {
        order,
        class_of,
        lead,
        cvs,
    } = scratch;
    class_of.clear();
    let mut starts = [0usize; LEAD_BLOCKS_MAX + 2];
    for (i, hash) in out.iter_mut().enumerate() {
        let m = get(i);
        let total = m.len() + 1;
        if total > CHUNK {
            let mut h = blake3::Hasher::new();
            h.update(&[domain as u8]);
            h.update(m);
            *hash = *h.finalize().as_bytes();
            class_of.push(LONG);
        } else {
            let class = (total - 1) / BLOCK;
            class_of.push(class as u8);
            starts[class + 1] += 1;
        }
    }
    for c in 1..starts.len() {
        starts[c] += starts[c - 1];
    }
    let short = starts[LEAD_BLOCKS_MAX + 1];
    order.clear();
    order.resize(short, 0);
    let mut next = starts;
    for (i, &class) in class_of.iter().enumerate() {
        if class != LONG {
            order[next[class as usize]] = i as u32;
            next[class as usize] += 1;
        }
    }
    let members = |class: usize| &order[starts[class]..starts[class + 1]];

    // Last blocks, compressed a vector of messages at a time.
    let mut tails = Tails::new();
    // No full leading block: the message is its last block.
    let mut one = [0u8; BLOCK];
    for &i in members(0) {
        let m = get(i as usize);
        one[0] = domain as u8;
        one[1..=m.len()].copy_from_slice(m);
        let flags = CHUNK_START | CHUNK_END | ROOT;
        tails.push(&IV, &one[..=m.len()], flags, i as usize, out);
    }
    for blocks in 1..=LEAD_BLOCKS_MAX {
        let n = blocks * BLOCK;
        for group in members(blocks).chunks(GROUP_MAX) {
            lead.clear();
            lead.reserve(group.len() * n);
            for &i in group {
                let m = get(i as usize);
                lead.push(domain as u8);
                lead.extend_from_slice(&m[..n - 1]);
            }
            cvs.clear();
            cvs.resize(group.len() * 32, 0);
            lead_dispatch(platform, blocks, lead, group.len(), cvs);
            for (k, &i) in group.iter().enumerate() {
                let m = get(i as usize);
                let cv: &[u8; 32] = cvs[k * 32..k * 32 + 32].try_into().expect("32 bytes");
                let cv = words_from_le_bytes_32(cv);
                tails.push(&cv, &m[n - 1..], CHUNK_END | ROOT, i as usize, out);
            }
        }
    }
    tails.flush(out);
}

/// Appends `H(0x00 || row)` of each row to `out`, row `i` being `enc[offsets[i]..offsets[i + 1]]`
/// (`offsets` holds one more entry than there are rows). The same hashes as
/// [`super::leaf_hash`] row by row, several times faster on a batch.
pub fn leaf_hashes(enc: &[u8], offsets: &[u32], out: &mut Vec<Hash>) {
    let count = offsets.len().saturating_sub(1);
    hash_domain_many(
        Domain::Leaf,
        count,
        |i| &enc[offsets[i] as usize..offsets[i + 1] as usize],
        out,
    );
}

/// `H(0x00 || d)` of each of `leaves`, in order.
pub fn leaf_hashes_of<D: AsRef<[u8]>>(leaves: &[D]) -> Vec<Hash> {
    let mut out = Vec::with_capacity(leaves.len());
    hash_domain_many(Domain::Leaf, leaves.len(), |i| leaves[i].as_ref(), &mut out);
    out
}

/// The level above `level` of an RFC 9162 tree built bottom-up: `H(0x01 || l || r)` of each
/// pair, an odd node at the end promoted unchanged.
pub fn parent_level(level: &[Hash]) -> Vec<Hash> {
    // A pair's message `l || r` is 64 contiguous bytes of the level.
    let pairs = level.as_flattened();
    let mut out = Vec::with_capacity(level.len().div_ceil(2));
    hash_domain_many(
        Domain::Node,
        level.len() / 2,
        |p| &pairs[p * 64..p * 64 + 64],
        &mut out,
    );
    if level.len() % 2 == 1 {
        out.push(level[level.len() - 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{leaf_hash, node_hash};
    use proptest::prelude::*;

    fn bytes(len: usize, seed: usize) -> Vec<u8> {
        (0..len)
            .map(|j| ((seed * 131 + j * 7) % 251) as u8)
            .collect()
    }

    #[test]
    fn every_length_up_to_two_chunks_matches_blake3() {
        // Lengths 0..=2100 cover every class of leading blocks, both block edges of each, and
        // the one-chunk limit on both sides (the domain byte makes the message one longer).
        let rows: Vec<Vec<u8>> = (0..=2100).map(|len| bytes(len, len)).collect();
        let mut enc = Vec::new();
        let mut offsets = vec![0u32];
        for r in &rows {
            enc.extend_from_slice(r);
            offsets.push(enc.len() as u32);
        }
        let mut out = vec![[7u8; 32]];
        leaf_hashes(&enc, &offsets, &mut out);
        assert_eq!(out.len(), rows.len() + 1);
        assert_eq!(out[0], [7u8; 32], "appends, keeps what was there");
        for (len, r) in rows.iter().enumerate() {
            assert_eq!(out[len + 1], leaf_hash(r), "row of {len} bytes");
        }
        assert_eq!(leaf_hashes_of(&rows), out[1..]);
    }

    #[test]
    fn large_classes_span_several_groups() {
        // More rows of one length class than one hash_many call takes.
        let rows: Vec<Vec<u8>> = (0..GROUP_MAX * 3 + 5)
            .map(|i| bytes(300 + i % 40, i))
            .collect();
        let expect: Vec<Hash> = rows.iter().map(|r| leaf_hash(r)).collect();
        assert_eq!(leaf_hashes_of(&rows), expect);
    }

    #[test]
    fn parent_level_matches_node_hash() {
        for n in [0usize, 1, 2, 3, 4, 5, 17, 255, 256, 257, 513, 1000] {
            let level: Vec<Hash> = (0..n).map(|i| leaf_hash(&bytes(40, i))).collect();
            let expect: Vec<Hash> = level
                .chunks(2)
                .map(|c| {
                    if c.len() == 2 {
                        node_hash(&c[0], &c[1])
                    } else {
                        c[0]
                    }
                })
                .collect();
            assert_eq!(parent_level(&level), expect, "{n} nodes");
        }
    }

    proptest! {
        #[test]
        fn random_batches_match_blake3(rows in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..1200), 0..80)) {
            let expect: Vec<Hash> = rows.iter().map(|r| leaf_hash(r)).collect();
            prop_assert_eq!(leaf_hashes_of(&rows), expect);
        }
    }
}

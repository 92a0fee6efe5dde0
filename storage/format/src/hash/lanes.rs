//! The last block of many BLAKE3 messages compressed at once, one message per vector lane.
//!
//! `hash_many` (the blake3 crate's) shares the vector lanes among messages only for blocks
//! that start from one common key and have one common length. A message's last block starts
//! from that message's own chaining value and may be partial, so the crate offers it only
//! `compress_in_place`, one block at a time. For a Merkle node (65 bytes) that is half the
//! work, for a canonical row (a few hundred bytes) a sixth, and compressing one block alone
//! leaves most of the vector width idle.
//!
//! [`Tails`] gathers up to [`LANES`] last blocks, transposed (word `w` of every lane side by
//! side), and compresses them together: the BLAKE3 compression function of the specification
//! (section 2.2), written once over arrays of `LANES` words so that the compiler turns each
//! step into one vector instruction. The same code is compiled three ways (AVX-512, AVX2, and
//! the target's baseline) and the fastest one the CPU has is chosen at run time. The tests of
//! `hash::many` compare the chosen form's outputs with `blake3::hash`; the tests here compare
//! every form the CPU can run with the portable one.

use super::Hash;

/// Messages compressed together (one 512-bit vector of 32-bit words).
pub(super) const LANES: usize = 16;

/// One 32-bit word of every lane.
type Words = [u32; LANES];

/// BLAKE3's initial chaining value (the SHA-256 IV, as the specification fixes it).
pub(super) const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

/// BLAKE3's message word permutation, applied between rounds.
const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];

/// Which message word each of the 7 rounds reads in each position: the permutation applied
/// round after round, computed once instead of moving the words.
const SCHEDULE: [[usize; 16]; 7] = {
    let mut s = [[0usize; 16]; 7];
    let mut i = 0;
    while i < 16 {
        s[0][i] = i;
        i += 1;
    }
    let mut r = 1;
    while r < 7 {
        let mut i = 0;
        while i < 16 {
            s[r][i] = s[r - 1][PERMUTATION[i]];
            i += 1;
        }
        r += 1;
    }
    s
};

/// Up to [`LANES`] last blocks waiting to be compressed, and where each root hash goes.
pub(super) struct Tails {
    cv: [Words; 8],
    block: [Words; 16],
    len: Words,
    flags: Words,
    dest: [usize; LANES],
    used: usize,
}

impl Tails {
    pub(super) fn new() -> Self {
        Self {
            cv: [[0; LANES]; 8],
            block: [[0; LANES]; 16],
            len: [0; LANES],
            flags: [0; LANES],
            dest: [0; LANES],
            used: 0,
        }
    }

    /// Queues the last block `tail` (at most 64 bytes) of a message whose earlier blocks left
    /// the chaining value `cv`; its root hash goes to `out[dest]`. Compresses the queue into
    /// `out` when it is full.
    pub(super) fn push(
        &mut self,
        cv: &[u32; 8],
        tail: &[u8],
        flags: u8,
        dest: usize,
        out: &mut [Hash],
    ) {
        debug_assert!(tail.len() <= 64);
        let l = self.used;
        for (w, word) in cv.iter().enumerate() {
            self.cv[w][l] = *word;
        }
        let mut block = [0u8; 64];
        block[..tail.len()].copy_from_slice(tail);
        for (w, bytes) in block.chunks_exact(4).enumerate() {
            self.block[w][l] = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
        }
        self.len[l] = tail.len() as u32;
        self.flags[l] = u32::from(flags);
        self.dest[l] = dest;
        self.used += 1;
        if self.used == LANES {
            self.flush(out);
        }
    }

    /// Compresses whatever is queued into `out`. Lanes beyond the queued ones hold stale or
    /// zero words; they are compressed too (that costs nothing extra) and ignored.
    pub(super) fn flush(&mut self, out: &mut [Hash]) {
        if self.used == 0 {
            return;
        }
        let words = compress(self);
        for l in 0..self.used {
            let h = &mut out[self.dest[l]];
            for (w, word) in words.iter().enumerate() {
                h[4 * w..4 * w + 4].copy_from_slice(&word[l].to_le_bytes());
            }
        }
        self.used = 0;
    }
}

/// The fastest compiled form of [`compress_lanes`] this CPU runs.
fn compress(t: &Tails) -> [Words; 8] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX-512F (checked just above), all `compress_avx512` needs.
            return unsafe { compress_avx512(t) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX2 (checked just above), all `compress_avx2` needs.
            return unsafe { compress_avx2(t) };
        }
    }
    compress_lanes(t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn compress_avx512(t: &Tails) -> [Words; 8] {
    compress_lanes(t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn compress_avx2(t: &Tails) -> [Words; 8] {
    compress_lanes(t)
}

/// The quarter-round `G` on state words `a, b, c, d` of every lane, with message words `x, y`.
#[inline(always)]
fn g(v: &mut [Words; 16], [a, b, c, d]: [usize; 4], x: &Words, y: &Words) {
    for l in 0..LANES {
        let mut va = v[a][l];
        let mut vb = v[b][l];
        let mut vc = v[c][l];
        let mut vd = v[d][l];
        va = va.wrapping_add(vb).wrapping_add(x[l]);
        vd = (vd ^ va).rotate_right(16);
        vc = vc.wrapping_add(vd);
        vb = (vb ^ vc).rotate_right(12);
        va = va.wrapping_add(vb).wrapping_add(y[l]);
        vd = (vd ^ va).rotate_right(8);
        vc = vc.wrapping_add(vd);
        vb = (vb ^ vc).rotate_right(7);
        v[a][l] = va;
        v[b][l] = vb;
        v[c][l] = vc;
        v[d][l] = vd;
    }
}

/// One round: `G` on the columns, then on the diagonals.
#[inline(always)]
fn round(v: &mut [Words; 16], m: &[Words; 16], s: &[usize; 16]) {
    g(v, [0, 4, 8, 12], &m[s[0]], &m[s[1]]);
    g(v, [1, 5, 9, 13], &m[s[2]], &m[s[3]]);
    g(v, [2, 6, 10, 14], &m[s[4]], &m[s[5]]);
    g(v, [3, 7, 11, 15], &m[s[6]], &m[s[7]]);
    g(v, [0, 5, 10, 15], &m[s[8]], &m[s[9]]);
    g(v, [1, 6, 11, 12], &m[s[10]], &m[s[11]]);
    g(v, [2, 7, 8, 13], &m[s[12]], &m[s[13]]);
    g(v, [3, 4, 9, 14], &m[s[14]], &m[s[15]]);
}

/// BLAKE3's compression of each lane's block onto its chaining value, with counter 0, keeping
/// the first 8 output words: the root hash when the flags hold `ROOT`.
#[inline(always)]
fn compress_lanes(t: &Tails) -> [Words; 8] {
    let mut v = [[0u32; LANES]; 16];
    v[..8].copy_from_slice(&t.cv);
    for (w, iv) in IV[..4].iter().enumerate() {
        v[8 + w] = [*iv; LANES];
    }
    // v[12], v[13]: the 64-bit chunk counter, 0 for a message of one chunk.
    v[14] = t.len;
    v[15] = t.flags;
    // A loop, not seven rounds spelled out: unrolled, the state and the message words no
    // longer fit the registers, and the spills made it 1.5× slower on AVX-512.
    for s in &SCHEDULE {
        round(&mut v, &t.block, s);
    }
    // One whole-vector XOR per output word. Written as two nested loops over `out`, LLVM
    // vectorised across the 8 words instead of the 16 lanes, with gathers and scatters.
    core::array::from_fn(|w| xor(&v[w], &v[w + 8]))
}

/// `a ^ b` lane by lane.
#[inline(always)]
fn xor(a: &Words, b: &Words) -> Words {
    let mut o = *a;
    for (o, b) in o.iter_mut().zip(b) {
        *o ^= b;
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_the_permutation_applied_round_after_round() {
        assert_eq!(SCHEDULE[0], core::array::from_fn::<usize, 16, _>(|i| i));
        assert_eq!(SCHEDULE[1], PERMUTATION);
        // Round 7 as BLAKE3 implementations spell it out.
        assert_eq!(
            SCHEDULE[6],
            [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13]
        );
    }

    #[test]
    fn every_compiled_form_gives_the_same_words() {
        let mut t = Tails::new();
        for l in 0..LANES {
            for (w, iv) in IV.iter().enumerate() {
                t.cv[w][l] = (l * 31 + w * 7) as u32 ^ iv;
            }
            for w in 0..16 {
                t.block[w][l] = ((l + 1) * (w + 3) * 0x9E37_79B9) as u32;
            }
            t.len[l] = (l * 4) as u32;
            t.flags[l] = 2 | 8 | (l as u32 & 1);
        }
        let portable = compress_lanes(&t);
        assert_eq!(compress(&t), portable);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                #[allow(unsafe_code)]
                // SAFETY: AVX2 checked just above.
                let avx2 = unsafe { compress_avx2(&t) };
                assert_eq!(avx2, portable);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                #[allow(unsafe_code)]
                // SAFETY: AVX-512F checked just above.
                let avx512 = unsafe { compress_avx512(&t) };
                assert_eq!(avx512, portable);
            }
        }
    }
}

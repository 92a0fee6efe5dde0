//! Encoding buffers handed back by the writers to the preparers.
//!
//! Every prepared chunk owns its rows' canonical encodings (`Chunk::enc`, a few hundred KB for
//! a batch of a few thousand rows). The writer copies them into the WAL and is then done with
//! them. Allocating such a buffer again for every chunk took the allocator's slow path (large
//! requests, freed on another thread), and an Arrow batch also zero-filled it before writing
//! every byte. The writers give the buffers back here instead, and the preparers take them.
//!
//! Bounded: at most [`POOLED`] buffers of at most [`BUF_BYTES_MAX`] each are kept (a bounded
//! `crossbeam_channel`; a full pool drops what it is given, an empty one hands out a new
//! buffer), so the pool holds at most 64 MiB and usually a few MB.

use std::sync::LazyLock;

use crossbeam_channel::{bounded, Receiver, Sender};

/// Most buffers kept.
pub(crate) const POOLED: usize = 16;
/// Largest buffer kept (bigger ones are freed).
pub(crate) const BUF_BYTES_MAX: usize = 4 << 20;

/// Both ends of the pool's channel.
type Pool = (Sender<Vec<u8>>, Receiver<Vec<u8>>);

static POOL: LazyLock<Pool> = LazyLock::new(|| bounded(POOLED));

/// An empty buffer with room for `capacity` bytes (reused when one is pooled).
pub(crate) fn empty(capacity: usize) -> Vec<u8> {
    let mut buf = POOL.1.try_recv().unwrap_or_default();
    buf.clear();
    buf.reserve(capacity);
    buf
}

/// A buffer of exactly `len` bytes whose content is unspecified: a reused buffer keeps the
/// bytes it held (only bytes beyond its old length are zeroed). For a caller that writes
/// every byte, which it must check.
pub(crate) fn overwritable(len: usize) -> Vec<u8> {
    match POOL.1.try_recv() {
        Ok(mut buf) => {
            if buf.len() >= len {
                buf.truncate(len);
            } else {
                buf.resize(len, 0);
            }
            buf
        }
        Err(_) => vec![0; len],
    }
}

/// Gives a buffer back for reuse (dropped if the pool is full or the buffer is too large).
pub(crate) fn give(buf: Vec<u8>) {
    if buf.capacity() > 0 && buf.capacity() <= BUF_BYTES_MAX {
        let _ = POOL.0.try_send(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is process-wide, and tests of one binary run concurrently.
    #[test]
    fn buffers_come_back_sized_and_the_pool_stays_bounded() {
        give(vec![7u8; 100]);
        let b = overwritable(40);
        assert_eq!(b.len(), 40);
        give(b);
        let b = overwritable(300);
        assert_eq!(b.len(), 300);
        assert!(
            b[100..].iter().all(|&x| x == 0),
            "bytes past the old length are zeroed"
        );
        give(b);
        let e = empty(10);
        assert!(e.is_empty() && e.capacity() >= 10);
        // Oversized and empty buffers are not kept; a full pool drops the rest.
        give(Vec::with_capacity(BUF_BYTES_MAX + 1));
        give(Vec::new());
        for _ in 0..POOLED * 2 {
            give(vec![1u8; 16]);
        }
        assert!(POOL.1.len() <= POOLED);
    }
}

//! Admission control: a bounded count of requests in flight per shard.
//!
//! A request reserves one slot on every shard it touches before anything is queued, all or
//! nothing, so a refused request writes nothing and queues never grow without bound. The
//! counter is the only hand-made concurrent structure of the ingest path; its primitives come
//! from [`crate::sync`] so loom can check it (`cargo test -p annals-engine --features loom --lib loom`).

use crate::sync::{AtomicUsize, Ordering};

/// A counter that never exceeds its capacity.
#[derive(Debug)]
pub struct Slots {
    used: AtomicUsize,
    cap: usize,
}

impl Slots {
    pub fn new(cap: usize) -> Self {
        assert!(cap > 0, "slots need a capacity");
        Self {
            used: AtomicUsize::new(0),
            cap,
        }
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur >= self.cap {
                return false;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Returns a slot taken by [`try_acquire`](Self::try_acquire).
    pub fn release(&self) {
        let prev = self.used.fetch_sub(1, Ordering::Release);
        assert!(prev > 0, "slot released twice");
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Takes one slot on each of `slots`, or none.
pub fn acquire_all(slots: &[&Slots]) -> bool {
    for (i, s) in slots.iter().enumerate() {
        if !s.try_acquire() {
            for t in &slots[..i] {
                t.release();
            }
            return false;
        }
    }
    true
}

#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn never_more_than_capacity() {
        loom::model(|| {
            let s = Arc::new(Slots::new(1));
            let peak = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let s = s.clone();
                    let peak = peak.clone();
                    thread::spawn(move || {
                        if s.try_acquire() {
                            let now = peak.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= 1, "two holders of one slot");
                            peak.fetch_sub(1, Ordering::SeqCst);
                            s.release();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(s.in_use(), 0);
        });
    }

    #[test]
    fn all_or_nothing_releases_on_failure() {
        loom::model(|| {
            let a = Arc::new(Slots::new(1));
            let b = Arc::new(Slots::new(1));
            let (a2, b2) = (a.clone(), b.clone());
            let t = thread::spawn(move || {
                if acquire_all(&[&b2, &a2]) {
                    a2.release();
                    b2.release();
                }
            });
            if acquire_all(&[&a, &b]) {
                a.release();
                b.release();
            }
            t.join().unwrap();
            assert_eq!(a.in_use(), 0);
            assert_eq!(b.in_use(), 0);
        });
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_enforced_and_restored() {
        let s = Slots::new(2);
        assert!(s.try_acquire() && s.try_acquire());
        assert!(!s.try_acquire());
        s.release();
        assert!(s.try_acquire());
        let t = Slots::new(1);
        assert!(!acquire_all(&[&t, &s]), "s is full");
        assert_eq!(t.in_use(), 0, "t was given back");
        assert_eq!(s.in_use(), 2);
    }
}

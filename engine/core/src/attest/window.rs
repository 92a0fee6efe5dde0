//! The anti-replay window of one device (as IPsec's, RFC 4303 section 3.4.3): the highest
//! accepted sequence number and a bitmap of the [`REPLAY_WINDOW`] numbers at and below it.
//!
//! - `seq > highest`: new, accepted (the window slides up).
//! - `highest - W < seq <= highest`: accepted once (an in-window reorder); a second time is a
//!   replay.
//! - `seq <= highest - W`: out of window, refused (it may or may not have been seen; the window
//!   no longer remembers, so it is refused either way).
//!
//! A sequence number is *reserved* while its request is being written and *accepted* only once
//! the request's attestation record is durable; a reserved number is refused to a concurrent
//! request, and released if its write fails, so the device can retry it.

use std::collections::BTreeSet;

/// How many sequence numbers below the highest one the window remembers.
pub const REPLAY_WINDOW: u64 = 1024;
/// Reservations one device may hold at once (requests in flight).
pub const IN_FLIGHT_MAX: usize = 4096;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Why a sequence number is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeqRefusal {
    /// Accepted before: the request is a replay.
    #[error("sequence number {seq} was already used by this device (replay)")]
    Replay { seq: u64 },
    /// Reserved by another request of the device that is being written now.
    #[error("sequence number {seq} is being written by another request of this device")]
    InFlight { seq: u64 },
    /// At or below `highest - W`: too old to tell.
    #[error(
        "sequence number {seq} is out of the replay window: the highest accepted is {highest}, \
         so numbers at or below {floor} are refused; use a new sequence number"
    )]
    OutOfWindow { seq: u64, highest: u64, floor: u64 },
    /// The device has too many requests in flight.
    #[error("the device has {IN_FLIGHT_MAX} requests in flight; wait for some to finish")]
    Busy,
}

impl SeqRefusal {
    /// A short machine-readable reason (metrics label, HTTP `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            SeqRefusal::Replay { .. } | SeqRefusal::InFlight { .. } => "replay",
            SeqRefusal::OutOfWindow { .. } => "out_of_window",
            SeqRefusal::Busy => "busy",
        }
    }
}

/// One device's window. Bit `i` of `bits` is set when `highest - i` was accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; WORDS],
    in_flight: BTreeSet<u64>,
}

impl ReplayWindow {
    /// The highest accepted sequence number.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Requests of the device in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Would `seq` be accepted now (ignoring reservations)?
    pub fn check(&self, seq: u64) -> Result<(), SeqRefusal> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if seq > highest {
            return Ok(());
        }
        let offset = highest - seq;
        if offset >= REPLAY_WINDOW {
            return Err(SeqRefusal::OutOfWindow {
                seq,
                highest,
                floor: highest - REPLAY_WINDOW,
            });
        }
        if self.bit(offset) {
            return Err(SeqRefusal::Replay { seq });
        }
        Ok(())
    }

    /// Reserves `seq` for a request being written: refused if [`check`](Self::check) refuses it
    /// or another request holds it.
    pub fn reserve(&mut self, seq: u64) -> Result<(), SeqRefusal> {
        self.check(seq)?;
        if self.in_flight.contains(&seq) {
            return Err(SeqRefusal::InFlight { seq });
        }
        if self.in_flight.len() >= IN_FLIGHT_MAX {
            return Err(SeqRefusal::Busy);
        }
        self.in_flight.insert(seq);
        Ok(())
    }

    /// Gives a reservation back (its write failed): the number can be used again.
    pub fn release(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Marks `seq` accepted (its record is durable) and drops its reservation. A number that
    /// fell out of the window while it was in flight changes nothing more.
    pub fn accept(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
        match self.highest {
            None => {
                self.highest = Some(seq);
                self.bits = [0; WORDS];
                self.set_bit(0);
            }
            Some(h) if seq > h => {
                self.shift(seq - h);
                self.highest = Some(seq);
                self.set_bit(0);
            }
            Some(h) => {
                if h - seq < REPLAY_WINDOW {
                    self.set_bit(h - seq);
                }
            }
        }
    }

    fn bit(&self, offset: u64) -> bool {
        self.bits[(offset / 64) as usize] >> (offset % 64) & 1 == 1
    }

    fn set_bit(&mut self, offset: u64) {
        self.bits[(offset / 64) as usize] |= 1 << (offset % 64);
    }

    /// Moves every bit `d` places up (offsets grow as `highest` grows); bits past the window
    /// are dropped.
    fn shift(&mut self, d: u64) {
        if d >= REPLAY_WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let words = (d / 64) as usize;
        let bits = (d % 64) as u32;
        let old = self.bits;
        for i in 0..WORDS {
            let mut w = 0u64;
            if i >= words {
                w = old[i - words] << bits;
                if bits > 0 && i > words {
                    w |= old[i - words - 1] >> (64 - bits);
                }
            }
            self.bits[i] = w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn accepted(w: &mut ReplayWindow, seq: u64) -> Result<(), SeqRefusal> {
        w.reserve(seq)?;
        w.accept(seq);
        Ok(())
    }

    #[test]
    fn replay_is_refused() {
        let mut w = ReplayWindow::default();
        accepted(&mut w, 7).unwrap();
        assert_eq!(accepted(&mut w, 7), Err(SeqRefusal::Replay { seq: 7 }));
        accepted(&mut w, 8).unwrap();
        assert_eq!(accepted(&mut w, 7), Err(SeqRefusal::Replay { seq: 7 }));
        assert_eq!(accepted(&mut w, 8), Err(SeqRefusal::Replay { seq: 8 }));
    }

    #[test]
    fn in_window_reorder_is_accepted_once() {
        let mut w = ReplayWindow::default();
        accepted(&mut w, 2000).unwrap();
        // Below the first number seen, but within the window: new.
        accepted(&mut w, 1990).unwrap();
        accepted(&mut w, 1999).unwrap();
        accepted(&mut w, 2000 - (REPLAY_WINDOW - 1)).unwrap();
        assert_eq!(
            accepted(&mut w, 1990),
            Err(SeqRefusal::Replay { seq: 1990 })
        );
        assert_eq!(w.highest(), Some(2000));
        // A jump keeps the numbers still in the window.
        accepted(&mut w, 2065).unwrap();
        assert_eq!(
            accepted(&mut w, 1999),
            Err(SeqRefusal::Replay { seq: 1999 })
        );
        accepted(&mut w, 1998).unwrap();
    }

    #[test]
    fn out_of_window_is_refused() {
        let mut w = ReplayWindow::default();
        accepted(&mut w, 5000).unwrap();
        let floor = 5000 - REPLAY_WINDOW;
        assert_eq!(
            accepted(&mut w, floor),
            Err(SeqRefusal::OutOfWindow {
                seq: floor,
                highest: 5000,
                floor
            })
        );
        assert!(matches!(
            accepted(&mut w, 0),
            Err(SeqRefusal::OutOfWindow { .. })
        ));
        accepted(&mut w, floor + 1).unwrap();
        // A jump beyond the window forgets everything below.
        accepted(&mut w, 5000 + 3 * REPLAY_WINDOW).unwrap();
        assert!(matches!(
            accepted(&mut w, 5001),
            Err(SeqRefusal::OutOfWindow { .. })
        ));
        accepted(&mut w, 5000 + 3 * REPLAY_WINDOW - 1).unwrap();
    }

    #[test]
    fn concurrent_reservation_is_refused_and_released_on_failure() {
        let mut w = ReplayWindow::default();
        w.reserve(1).unwrap();
        assert_eq!(w.reserve(1), Err(SeqRefusal::InFlight { seq: 1 }));
        // Another number is independent.
        w.reserve(2).unwrap();
        // The first write failed: the device may retry with the same number.
        w.release(1);
        w.reserve(1).unwrap();
        w.accept(1);
        assert_eq!(w.reserve(1), Err(SeqRefusal::Replay { seq: 1 }));
        w.accept(2);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn reservation_that_falls_out_of_the_window_is_harmless() {
        let mut w = ReplayWindow::default();
        w.reserve(3).unwrap();
        accepted(&mut w, 3 + REPLAY_WINDOW * 2).unwrap();
        w.accept(3);
        assert_eq!(w.highest(), Some(3 + REPLAY_WINDOW * 2));
        assert_eq!(w.in_flight(), 0);
    }

    /// Against a model that remembers every number: the window agrees inside it and refuses
    /// everything below it.
    #[test]
    fn agrees_with_a_set_model() {
        let mut w = ReplayWindow::default();
        let mut seen = BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = seen.last().copied().unwrap_or(0u64);
            let seq = match x % 4 {
                0 => base + 1 + (x >> 8) % 200,
                _ => base.saturating_sub((x >> 8) % (REPLAY_WINDOW + 100)),
            };
            let highest = seen.last().copied();
            let expect_ok = match highest {
                None => true,
                Some(h) if seq > h => true,
                Some(h) => h - seq < REPLAY_WINDOW && !seen.contains(&seq),
            };
            let got = accepted(&mut w, seq);
            assert_eq!(
                got.is_ok(),
                expect_ok,
                "seq {seq} highest {highest:?}: {got:?}"
            );
            if got.is_ok() {
                seen.insert(seq);
            }
        }
    }
}

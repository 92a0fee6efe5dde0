//! Sessions by client id: which QoS 1 packet ids were written (or are being written), so a
//! resent PUBLISH (DUP=1, same client id, packet id and content) is acknowledged without
//! being written again, also after a reconnect; and which connection owns the client id, so
//! a new connection takes the session over (MQTT 3.1.1 3.1.4-2, 5.0 3.1.4-3).
//!
//! Bounded: at most `sessions_max` sessions (the least recently used one without a
//! connection is forgotten first) and [`PACKET_IDS_MAX`] packet ids per session (oldest first).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

/// Packet ids remembered per session. A client resends only unacknowledged messages, at most
/// its in-flight window (64 by default), so this is far more than a well-behaved client needs.
pub(crate) const PACKET_IDS_MAX: usize = 1024;

/// Whether a write finished: `None` while in flight, then `Some(durable)`.
pub(crate) type Done = watch::Receiver<Option<bool>>;

#[derive(Debug)]
struct Entry {
    /// Hash of topic and payload: a DUP with other content is a new message.
    hash: u64,
    gen: u64,
    done: Done,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<u16, Entry>,
    order: VecDeque<(u16, u64)>,
    next_gen: u64,
}

/// One client id's state.
#[derive(Debug)]
pub(crate) struct Session {
    state: Mutex<State>,
    /// The connection that owns the session and how to tell it to go.
    owner: Mutex<Option<(u64, Arc<Notify>)>>,
    last_used: Mutex<Instant>,
}

/// What to do with a QoS 1 PUBLISH.
#[derive(Debug)]
pub(crate) enum Seen {
    /// Not written before (or its id was reused): write it.
    New,
    /// Written or being written: acknowledge once `Done` says durable.
    Duplicate(Done),
}

impl Session {
    pub(crate) fn new() -> Session {
        Session {
            state: Mutex::new(State::default()),
            owner: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// Forgets every packet id (clean session / clean start).
    pub(crate) fn clear(&self) {
        let mut s = self.state.lock();
        s.entries.clear();
        s.order.clear();
    }

    /// Looks a QoS 1 PUBLISH up. A PUBLISH without DUP reuses its packet id: the client got the
    /// acknowledgement of the earlier message with that id, which is forgotten.
    pub(crate) fn seen(&self, pkid: u16, hash: u64, dup: bool) -> Seen {
        let mut s = self.state.lock();
        if !dup {
            s.entries.remove(&pkid);
            return Seen::New;
        }
        match s.entries.get(&pkid) {
            Some(e) if e.hash == hash => Seen::Duplicate(e.done.clone()),
            _ => Seen::New,
        }
    }

    /// Records that `pkid` is being written; the returned sender reports the outcome.
    pub(crate) fn begin(&self, pkid: u16, hash: u64) -> (u64, watch::Sender<Option<bool>>) {
        let (tx, rx) = watch::channel(None);
        let mut s = self.state.lock();
        s.next_gen += 1;
        let gen = s.next_gen;
        s.entries.insert(
            pkid,
            Entry {
                hash,
                gen,
                done: rx,
            },
        );
        s.order.push_back((pkid, gen));
        while s.order.len() > PACKET_IDS_MAX {
            if let Some((old, g)) = s.order.pop_front() {
                if s.entries.get(&old).is_some_and(|e| e.gen == g) {
                    s.entries.remove(&old);
                }
            }
        }
        (gen, tx)
    }

    /// A write that failed is forgotten, so a resend writes it again.
    pub(crate) fn failed(&self, pkid: u16, gen: u64) {
        let mut s = self.state.lock();
        if s.entries.get(&pkid).is_some_and(|e| e.gen == gen) {
            s.entries.remove(&pkid);
        }
    }

    /// Makes connection `conn` the owner; the previous owner (if any) is told to close.
    pub(crate) fn attach(&self, conn: u64, kick: Arc<Notify>) {
        *self.last_used.lock() = Instant::now();
        if let Some((_, old)) = self.owner.lock().replace((conn, kick)) {
            old.notify_one();
        }
    }

    /// Releases the session if `conn` still owns it.
    pub(crate) fn detach(&self, conn: u64) {
        *self.last_used.lock() = Instant::now();
        let mut o = self.owner.lock();
        if o.as_ref().is_some_and(|(c, _)| *c == conn) {
            *o = None;
        }
    }

    fn idle_since(&self) -> Option<Instant> {
        match *self.owner.lock() {
            Some(_) => None,
            None => Some(*self.last_used.lock()),
        }
    }
}

/// Every session, by client id.
#[derive(Debug)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    max: usize,
}

impl Sessions {
    pub(crate) fn new(max: usize) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// The session of `client_id` and whether it existed (else it is created), or `None`
    /// when every session slot is held by a connected client.
    pub(crate) fn get(&self, client_id: &str) -> Option<(Arc<Session>, bool)> {
        let mut map = self.map.lock();
        if let Some(s) = map.get(client_id) {
            return Some((s.clone(), true));
        }
        if map.len() >= self.max {
            let oldest = map
                .iter()
                .filter_map(|(k, s)| s.idle_since().map(|t| (t, k.clone())))
                .min()
                .map(|(_, k)| k)?;
            map.remove(&oldest);
        }
        let s = Arc::new(Session::new());
        map.insert(client_id.to_owned(), s.clone());
        Some((s, false))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dup_of_a_written_id_is_a_duplicate_and_reuse_forgets_it() {
        let s = Session::new();
        assert!(matches!(s.seen(7, 1, false), Seen::New));
        let (_, tx) = s.begin(7, 1);
        tx.send_replace(Some(true));
        match s.seen(7, 1, true) {
            Seen::Duplicate(d) => assert_eq!(*d.borrow(), Some(true)),
            Seen::New => panic!("a DUP of a written id must be a duplicate"),
        }
        // Other content under the same id with DUP: a new message.
        assert!(matches!(s.seen(7, 2, true), Seen::New));
        // Reuse without DUP forgets the old message.
        assert!(matches!(s.seen(7, 1, false), Seen::New));
        assert!(matches!(s.seen(7, 1, true), Seen::New));
    }

    #[test]
    fn failed_writes_are_forgotten_and_ids_are_bounded() {
        let s = Session::new();
        let (gen, _tx) = s.begin(1, 9);
        s.failed(1, gen);
        assert!(matches!(s.seen(1, 9, true), Seen::New));
        for i in 0..(PACKET_IDS_MAX as u16 + 10) {
            let _ = s.begin(i, 0);
        }
        assert_eq!(s.state.lock().entries.len(), PACKET_IDS_MAX);
        assert!(matches!(s.seen(0, 0, true), Seen::New), "oldest evicted");
        assert!(matches!(s.seen(1030, 0, true), Seen::Duplicate(_)));
    }

    #[test]
    fn sessions_evict_idle_ones_and_refuse_when_all_are_connected() {
        let all = Sessions::new(2);
        let (a, existed) = all.get("a").unwrap();
        assert!(!existed);
        a.attach(1, Arc::new(Notify::new()));
        assert!(all.get("a").unwrap().1, "found again");
        let (b, _) = all.get("b").unwrap();
        b.attach(2, Arc::new(Notify::new()));
        assert!(all.get("c").is_none(), "both sessions are connected");
        b.detach(2);
        assert!(all.get("c").is_some());
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn a_second_connection_takes_the_session_over() {
        let s = Session::new();
        let first = Arc::new(Notify::new());
        s.attach(1, first.clone());
        s.attach(2, Arc::new(Notify::new()));
        // The first connection's notification is pending.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), first.notified())
                .await
                .expect("the first owner is told to close");
        });
        s.detach(1);
        assert!(s.owner.lock().as_ref().is_some_and(|(c, _)| *c == 2));
    }
}

//! `Idempotency-Key`: a retried write with the same key writes nothing new and gets the same
//! answer. Concurrent retries wait for the first attempt. Keys are remembered in memory, the
//! most recent [`Keys::new`]`(max)` of them; a failed attempt is forgotten so a retry runs again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

/// A finished write's answer: status code and JSON body (`None` for 204).
pub(crate) type Answer = (u16, Option<serde_json::Value>, u64);

/// Cells by key, and keys in insertion order for eviction.
type Table = (HashMap<String, Arc<OnceCell<Answer>>>, VecDeque<String>);

#[derive(Debug)]
pub(crate) struct Keys {
    max: usize,
    inner: Mutex<Table>,
}

impl Keys {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// The cell for `key`, created if new. Callers `get_or_try_init` it with the write.
    pub(crate) fn cell(&self, key: &str) -> Arc<OnceCell<Answer>> {
        let mut g = self.inner.lock();
        if let Some(c) = g.0.get(key) {
            return c.clone();
        }
        let c = Arc::new(OnceCell::new());
        g.0.insert(key.to_owned(), c.clone());
        g.1.push_back(key.to_owned());
        while g.1.len() > self.max {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
        c
    }
}

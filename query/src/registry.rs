//! Running and recent queries, for `system.queries`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// How much of a query's text is kept.
const SQL_CHARS_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryState {
    Running,
    Done,
    Failed,
    TimedOut,
    Cancelled,
}

impl fmt::Display for QueryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryState::Running => "running",
            QueryState::Done => "done",
            QueryState::Failed => "failed",
            QueryState::TimedOut => "timed_out",
            QueryState::Cancelled => "cancelled",
        })
    }
}

/// One query as `system.queries` shows it.
#[derive(Debug, Clone)]
pub struct QueryInfo {
    pub id: u64,
    pub db: String,
    pub sql: String,
    pub state: QueryState,
    pub started_ns: i64,
    pub duration_ms: i64,
    pub rows: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug)]
struct Running {
    info: QueryInfo,
    started: Instant,
}

/// Queries now running, and the last `keep` that ended.
#[derive(Debug)]
pub struct QueryRegistry {
    next: AtomicU64,
    running: Mutex<BTreeMap<u64, Running>>,
    recent: Mutex<VecDeque<QueryInfo>>,
    keep: usize,
}

impl QueryRegistry {
    pub fn new(keep: usize) -> Self {
        Self {
            next: AtomicU64::new(1),
            running: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(VecDeque::new()),
            keep,
        }
    }

    /// Registers a query; the returned guard records how it ended (dropped unfinished:
    /// cancelled).
    pub fn start(self: &Arc<Self>, db: &str, sql: &str, now_ns: i64) -> QueryGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text: String = sql.chars().take(SQL_CHARS_MAX).collect();
        if text.len() < sql.len() {
            text.push('…');
        }
        self.running.lock().insert(
            id,
            Running {
                info: QueryInfo {
                    id,
                    db: db.to_string(),
                    sql: text,
                    state: QueryState::Running,
                    started_ns: now_ns,
                    duration_ms: 0,
                    rows: None,
                    error: None,
                },
                started: Instant::now(),
            },
        );
        QueryGuard {
            registry: self.clone(),
            id,
            rows: 0,
            ended: false,
        }
    }

    fn end(&self, id: u64, state: QueryState, rows: u64, error: Option<String>) {
        let Some(r) = self.running.lock().remove(&id) else {
            return;
        };
        let mut info = r.info;
        info.state = state;
        info.duration_ms = r.started.elapsed().as_millis() as i64;
        info.rows = Some(rows);
        info.error = error;
        let mut recent = self.recent.lock();
        recent.push_back(info);
        while recent.len() > self.keep {
            recent.pop_front();
        }
    }

    /// Running queries (with their time so far), then ended ones, oldest first.
    pub fn list(&self) -> Vec<QueryInfo> {
        let mut out: Vec<QueryInfo> = self
            .running
            .lock()
            .values()
            .map(|r| {
                let mut i = r.info.clone();
                i.duration_ms = r.started.elapsed().as_millis() as i64;
                i
            })
            .collect();
        out.extend(self.recent.lock().iter().cloned());
        out
    }
}

/// Tracks one query until it ends.
#[derive(Debug)]
pub struct QueryGuard {
    registry: Arc<QueryRegistry>,
    id: u64,
    rows: u64,
    ended: bool,
}

impl QueryGuard {
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn add_rows(&mut self, n: usize) {
        self.rows += n as u64;
    }
    pub fn finish(mut self, state: QueryState, error: Option<String>) {
        self.ended = true;
        self.registry.end(self.id, state, self.rows, error);
    }
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.registry
                .end(self.id, QueryState::Cancelled, self.rows, None);
        }
    }
}

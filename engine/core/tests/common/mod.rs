//! Support shared by the engine's integration tests.
//!
//! - [`Point`]: a row as the test means it, rendered to line protocol ([`Point::line`]) and to
//!   the canonical encoding the ledger must store ([`Point::encoding`], built here with
//!   `annals_format::row::encode_row`, never with engine code).
//! - Driving the engine synchronously ([`write`], [`block_on`]) with a fixed [`ManualClock`].
//! - Independent checks of a stopped data directory: [`ledger`] (every stored row with its
//!   position and `tx_id`), [`verify_checkpoints`] (chain, signatures, entries against the
//!   branch logs, every block's inclusion path), [`copy_dir`] for tampering with a copy.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use annals_engine::audit::{audit, AuditReport};
use annals_engine::error::WriteError;
use annals_engine::{Engine, EngineConfig, ManualClock, PrepareOptions, ReceiptForm, WriteOutcome};
use annals_format::block::BranchId;
use annals_format::checkpoint::{branches_root, validators_hash, Validator};
use annals_format::hash::{leaf_hash, to_hex, ZERO_HASH};
use annals_format::merkle::{verify_consistency, verify_inclusion};
use annals_format::row::{encode_row, ColumnRef, ValueRef};
use annals_lp::ParseOptions;
use annals_storage::branch_log::BranchLog;
use annals_storage::checkpoint_log::{CheckpointLog, CheckpointRecord};
pub(crate) use annals_tests::StoredRow;

/// Database every test writes to.
pub(crate) const DB: &str = "plant";
/// What the manual clock reads when an engine is opened with [`open`].
pub(crate) const CLOCK_NS: i64 = 1_700_000_000_000_000_000;
/// Time given to lines without a timestamp.
pub(crate) const DEFAULT_TIME_NS: i64 = 1_650_000_000_123_456_789;

/// A column value as the test means it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    Str(String),
}

/// One line of a request: what is written, and what must be stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    pub(crate) measurement: String,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) fields: Vec<(String, Val)>,
    /// `None`: the line has no timestamp and gets [`DEFAULT_TIME_NS`].
    pub(crate) time: Option<i64>,
}

fn escape(s: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Point {
    pub(crate) fn new(measurement: &str) -> Self {
        Point {
            measurement: measurement.into(),
            tags: Vec::new(),
            fields: Vec::new(),
            time: None,
        }
    }
    pub(crate) fn tag(mut self, k: &str, v: &str) -> Self {
        self.tags.push((k.into(), v.into()));
        self
    }
    pub(crate) fn field(mut self, k: &str, v: Val) -> Self {
        self.fields.push((k.into(), v));
        self
    }
    pub(crate) fn at(mut self, t: i64) -> Self {
        self.time = Some(t);
        self
    }

    /// The point in line protocol, every special character escaped.
    pub(crate) fn line(&self) -> String {
        let mut s = escape(&self.measurement, &[',', ' ']);
        for (k, v) in &self.tags {
            s.push(',');
            s.push_str(&escape(k, &[',', '=', ' ']));
            s.push('=');
            s.push_str(&escape(v, &[',', '=', ' ']));
        }
        s.push(' ');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&escape(k, &[',', '=', ' ']));
            s.push('=');
            match v {
                // Debug prints the shortest decimal that round-trips, with a `.` or an exponent.
                Val::F64(x) => s.push_str(&format!("{x:?}")),
                Val::I64(x) => s.push_str(&format!("{x}i")),
                Val::U64(x) => s.push_str(&format!("{x}u")),
                Val::Bool(x) => s.push_str(if *x { "true" } else { "false" }),
                Val::Str(x) => {
                    s.push('"');
                    s.push_str(&escape(x, &['"']));
                    s.push('"');
                }
            }
        }
        if let Some(t) = self.time {
            s.push_str(&format!(" {t}"));
        }
        s
    }

    /// `<db>/<measurement>`.
    pub(crate) fn table(&self) -> String {
        format!("{DB}/{}", self.measurement)
    }

    /// The canonical encoding FORMAT.md prescribes for this point.
    pub(crate) fn encoding(&self) -> Vec<u8> {
        let mut cols: Vec<ColumnRef<'_>> = Vec::new();
        for (k, v) in &self.tags {
            cols.push(ColumnRef {
                name: k,
                value: ValueRef::Tag(v),
            });
        }
        for (k, v) in &self.fields {
            let value = match v {
                Val::F64(x) => ValueRef::F64(*x),
                Val::I64(x) => ValueRef::I64(*x),
                Val::U64(x) => ValueRef::U64(*x),
                Val::Bool(x) => ValueRef::Bool(*x),
                Val::Str(x) => ValueRef::Str(x),
            };
            cols.push(ColumnRef { name: k, value });
        }
        cols.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let mut out = Vec::new();
        encode_row(
            &mut out,
            &self.table(),
            self.time.unwrap_or(DEFAULT_TIME_NS),
            &cols,
        )
        .expect("test point encodes");
        out
    }
}

/// Lines of `points`, one per line, in order (line `i + 1` is `points[i]`).
pub(crate) fn body(points: &[Point]) -> String {
    points
        .iter()
        .map(Point::line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A configuration whose blocks, files and checkpoints only close on size or on `flush`, so
/// positions are deterministic.
pub(crate) fn config(dir: &Path, shards: usize, block_rows: usize) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.shards = shards;
    c.block_rows = block_rows;
    c.block_age = Duration::from_secs(3600);
    c.file_age = Duration::from_secs(3600);
    c.checkpoint_interval = Duration::from_secs(3600);
    c.file_rows = (block_rows * 3) as u64;
    c
}

/// Opens an engine whose clock reads [`CLOCK_NS`]; returns the clock to move it.
pub(crate) fn open_with_clock(cfg: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(CLOCK_NS));
    let engine = Engine::open(cfg, clock.clone()).expect("engine opens");
    (engine, clock)
}

pub(crate) fn open(cfg: EngineConfig) -> Engine {
    open_with_clock(cfg).0
}

pub(crate) fn opts(accept_partial: bool) -> PrepareOptions {
    PrepareOptions {
        parse: ParseOptions {
            default_time_ns: DEFAULT_TIME_NS,
            ..ParseOptions::default()
        },
        accept_partial,
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Prepares and submits `body` (retrying while queues are full, at most 10 s) and waits until
/// it is durable.
pub(crate) fn write_with(
    engine: &Engine,
    body: &str,
    accept_partial: bool,
) -> Result<WriteOutcome, WriteError> {
    let prepared = engine.prepare(DB, body.as_bytes(), &opts(accept_partial))?;
    submit_and_wait(engine, prepared)
}

/// Queues a prepared request (retrying while the shard queues are full, up to 10 s) and waits
/// until it is durable.
pub(crate) fn submit_and_wait(
    engine: &Engine,
    mut prepared: annals_engine::prepare::Prepared,
) -> Result<WriteOutcome, WriteError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pending = loop {
        match engine.submit(prepared) {
            Ok(p) => break p,
            Err(back) => {
                assert!(Instant::now() < deadline, "queues stayed full for 10 s");
                prepared = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    block_on(pending.wait())
}

/// [`write_with`] for a request that must be accepted whole.
pub(crate) fn write(engine: &Engine, points: &[Point]) -> Vec<Entry> {
    let out = write_with(engine, &body(points), false).expect("write accepted");
    assert_eq!(out.rows, points.len());
    assert!(out.rejected.is_empty());
    let entries = entries(&out);
    let lines: Vec<u64> = entries.iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        (1..=points.len() as u64).collect::<Vec<_>>(),
        "one receipt entry per line, in line order"
    );
    entries
}

/// One row of a full receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) line: u64,
    pub(crate) table: String,
    pub(crate) branch: String,
    pub(crate) height: u64,
    pub(crate) index: u32,
    pub(crate) tx_id: String,
}

pub(crate) fn entries(out: &WriteOutcome) -> Vec<Entry> {
    let r = out.receipt(ReceiptForm::Full);
    assert_eq!(r["receipt"], "full");
    r["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| Entry {
            line: e["line"].as_u64().expect("line"),
            table: e["table"].as_str().expect("table").to_owned(),
            branch: e["branch"].as_str().expect("branch").to_owned(),
            height: e["height"].as_u64().expect("height"),
            index: e["index"].as_u64().expect("index") as u32,
            tx_id: e["tx_id"].as_str().expect("tx_id").to_owned(),
        })
        .collect()
}

/// `tx_id` of a row at a receipt entry's position, computed from FORMAT.md, not by the engine.
pub(crate) fn expected_tx_id(e: &Entry, encoding: &[u8]) -> String {
    let mut branch = [0u8; 16];
    hex::decode_to_slice(&e.branch, &mut branch).expect("branch hex");
    to_hex(&annals_format::block::tx_id(
        &branch,
        e.height,
        e.index,
        &leaf_hash(encoding),
    ))
}

/// Every row stored in the finished block files of a stopped data directory, by `tx_id`.
pub(crate) fn ledger(dir: &Path) -> BTreeMap<String, StoredRow> {
    annals_tests::read_ledger(dir).expect("ledger reads back")
}

/// The stored encodings as a sorted multiset.
pub(crate) fn encodings(ledger: &BTreeMap<String, StoredRow>) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ledger.values().map(|r| r.encoding.clone()).collect();
    v.sort();
    v
}

/// Runs the audit and insists it found nothing wrong.
pub(crate) fn audit_ok(dir: &Path) -> AuditReport {
    let r = audit(dir).expect("audit runs");
    assert!(r.ok(), "audit found problems: {:#?}", r.problems);
    r
}

/// Checks that positions are what a writer that fills blocks of `block_rows` in arrival order
/// assigns: per branch, `(0, 0), (0, 1), ..., (0, block_rows - 1), (1, 0), ...` starting at
/// `(first_height, 0)`. `seq` is every receipt entry in the order the rows reached the writer.
pub(crate) fn assert_consecutive_positions(
    seq: &[Entry],
    block_rows: usize,
    first_height: &HashMap<String, u64>,
) {
    let mut next: HashMap<&str, (u64, u32)> = HashMap::new();
    for e in seq {
        let want = *next
            .entry(&e.branch)
            .or_insert_with(|| (first_height.get(&e.branch).copied().unwrap_or(0), 0));
        assert_eq!(
            (e.height, e.index),
            want,
            "line {} of {} in branch {}: position does not continue the branch",
            e.line,
            e.table,
            e.branch
        );
        let (h, i) = want;
        let after = if i as usize + 1 < block_rows {
            (h, i + 1)
        } else {
            (h + 1, 0)
        };
        next.insert(&e.branch, after);
    }
}

/// Copies a directory tree.
pub(crate) fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create copy");
    for e in std::fs::read_dir(src).expect("read dir") {
        let e = e.expect("dir entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy file");
        }
    }
}

/// Files under `dir/blocks` ending in `.parquet`, sorted.
pub(crate) fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir.join("blocks")).expect("blocks dir") {
        let d = d.expect("entry").path();
        for f in std::fs::read_dir(&d).expect("branch blocks dir") {
            let f = f.expect("entry").path();
            if f.to_string_lossy().ends_with(".parquet") {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

/// Branch directories under `dir/branches`, with their ids, sorted.
pub(crate) fn branch_dirs(dir: &Path) -> Vec<(BranchId, PathBuf)> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir.join("branches")).expect("branches dir") {
        let d = d.expect("entry").path();
        let mut b = [0u8; 16];
        hex::decode_to_slice(d.file_name().unwrap().to_str().unwrap(), &mut b)
            .expect("branch dir name is hex");
        out.push((b, d));
    }
    out.sort();
    out
}

/// Verifies, from the files alone, the checkpoint log of a stopped data directory against its
/// branch logs: epochs `0..n`, each `prev` the hash of the previous checkpoint, `branches_root`
/// and `branch_count` recomputed, the validator set of one node key with its signature, every
/// entry a state its branch log had (root recomputed from the stored tree) with every block's
/// RFC 9162 inclusion path verifying under it, branches only growing between epochs (with a
/// verified consistency proof), and the last checkpoint naming every branch at its full size.
pub(crate) fn verify_checkpoints(dir: &Path, pubkey: &[u8; 32]) -> Vec<CheckpointRecord> {
    let cps =
        CheckpointLog::open_read_only(&dir.join("checkpoints.log")).expect("checkpoint log opens");
    assert!(cps.torn_tail().is_none());
    let logs: BTreeMap<BranchId, BranchLog> = branch_dirs(dir)
        .into_iter()
        .map(|(b, d)| {
            (
                b,
                BranchLog::open_read_only(&d, b).expect("branch log opens"),
            )
        })
        .collect();
    let records: Vec<CheckpointRecord> = cps.iter().cloned().collect();
    assert!(!records.is_empty(), "no checkpoint written");
    let mut prev_hash = ZERO_HASH;
    let mut prev_sizes: BTreeMap<BranchId, (u64, [u8; 32])> = BTreeMap::new();
    for (i, rec) in records.iter().enumerate() {
        let h = &rec.header;
        assert_eq!(h.epoch, i as u64, "epochs count from 0 without gaps");
        assert_eq!(
            h.prev, prev_hash,
            "epoch {i}: prev is the previous checkpoint's hash"
        );
        assert_eq!(h.branch_count as usize, rec.entries.len());
        assert_eq!(
            h.branches_root,
            branches_root(&rec.entries),
            "epoch {i}: branches_root"
        );
        assert!(
            rec.entries.windows(2).all(|w| w[0].branch < w[1].branch),
            "entries sorted by branch"
        );
        assert_eq!(
            h.validators,
            validators_hash(&[Validator {
                pubkey: *pubkey,
                power: 1
            }])
        );
        assert!(
            rec.signatures.iter().any(|(k, s)| k == pubkey && annals_format::sign::verify(k, &rec.hash(), s).is_ok()),
            "epoch {i}: no valid signature by the node key"
        );
        for e in &rec.entries {
            let log = logs
                .get(&e.branch)
                .unwrap_or_else(|| panic!("epoch {i}: branch {} has no log", to_hex(&e.branch)));
            assert!(
                e.size <= log.size() && e.size > 0,
                "epoch {i}: entry size {} vs log {}",
                e.size,
                log.size()
            );
            assert_eq!(
                log.root_at(e.size).unwrap(),
                e.root,
                "epoch {i}: entry root is the log's root at its size"
            );
            for height in 0..e.size {
                let path = log.inclusion_path(height, e.size).unwrap();
                let leaf = leaf_hash(&log.block_hash(height).unwrap());
                assert!(
                    verify_inclusion(&leaf, height, e.size, &path, &e.root),
                    "epoch {i}: block {height} of {} does not verify under the checkpoint",
                    to_hex(&e.branch)
                );
            }
            if let Some(&(old_size, old_root)) = prev_sizes.get(&e.branch) {
                assert!(
                    e.size >= old_size,
                    "epoch {i}: branch {} shrank",
                    to_hex(&e.branch)
                );
                let path = log.consistency_path(old_size, e.size).unwrap();
                assert!(
                    verify_consistency(old_size, e.size, &old_root, &e.root, &path),
                    "epoch {i}: not an extension"
                );
            }
            prev_sizes.insert(e.branch, (e.size, e.root));
        }
        assert!(
            prev_sizes
                .keys()
                .all(|b| rec.entries.iter().any(|e| e.branch == *b)),
            "epoch {i}: a branch named earlier disappeared"
        );
        prev_hash = rec.hash();
    }
    let last = records.last().unwrap();
    let at_end: Vec<(BranchId, u64)> = logs.iter().map(|(b, l)| (*b, l.size())).collect();
    let named: Vec<(BranchId, u64)> = last.entries.iter().map(|e| (e.branch, e.size)).collect();
    assert_eq!(
        named, at_end,
        "the last checkpoint names every branch at its full size"
    );
    records
}

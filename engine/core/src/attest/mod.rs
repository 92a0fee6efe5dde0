//! Device attestations (FORMAT.md "Device attestation"): the device registry, per-table
//! attestation policies, each device's anti-replay window and the attestation log.
//!
//! A device signs a batch of rows with Ed25519 over
//! `H(0x06 || device_key:32 || seq:u64 LE || MTH(rows of the batch, in body order))`. The HTTP
//! layer prepares the request, computes the batch root from the prepared rows
//! ([`batch_leaves`]) and calls [`Attestations::begin`], which checks the device, the signature
//! and the sequence number and *reserves* the number. Once the rows are durable it calls
//! [`Reservation::commit`] with their locations ([`batch_runs`]): the record
//! `(device_key, seq, batch_root, signature, runs)` is appended to the log and fsynced, the
//! number accepted, the record indexed for proofs. Only then is the write acknowledged.
//!
//! Order and its consequence: rows durable → record durable → acknowledgement. A crash between
//! the first two leaves the rows without an attestation and the number unconsumed: the device
//! got no acknowledgement and retries, so the rows are written again (at least once, as any
//! unacknowledged write). A reservation dropped without commit (the write failed) gives the
//! number back.
//!
//! Files in `attestations/`: `devices.json` and `policies.json` (rewritten whole, atomically:
//! temp file, fsync, rename, directory fsync) and `attestations.log` ([`log`]). At open the log
//! is read (torn tail cut), the windows and the location index rebuilt from it.
//!
//! Memory: the registry, one window per registered device (~200 bytes), and every record's
//! runs (the location index), O(attested batches).

pub mod log;
pub(crate) mod proof;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals_format::block::BranchId;
use annals_format::hash::{hash_parts, to_hex, Domain, Hash};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::prepare::Prepared;
use crate::receipt::{Run, WriteOutcome};
pub use log::{AttestLog, AttestRecord, LogError};
pub use window::{ReplayWindow, SeqRefusal, REPLAY_WINDOW};

/// Registered devices, revoked ones included.
pub const DEVICES_MAX: usize = 100_000;
/// Tables with a policy.
pub const POLICIES_MAX: usize = 100_000;
/// Longest device name or fleet.
pub const DEVICE_NAME_LEN_MAX: usize = 256;
/// Longest `<db>/<table>` a policy names.
pub const TABLE_NAME_LEN_MAX: usize = 1024;
/// Most rows in one signed batch.
pub const BATCH_ROWS_MAX: usize = 1 << 20;

const DEVICES_FILE: &str = "devices.json";
const POLICIES_FILE: &str = "policies.json";
const LOG_FILE: &str = "attestations.log";

/// Why a device, a policy or a signed write was refused, or the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("device {0} is not registered; register its public key with POST /api/v3/devices")]
    UnknownDevice(String),
    #[error("device {key} was revoked at {revoked_at} (ns since the Unix epoch)")]
    Revoked { key: String, revoked_at: i64 },
    #[error(
        "the signature of device {key} over batch {seq} (batch root {root}, {rows} rows) does not \
         verify: sign H(0x06 || device_key || seq:u64 LE || MTH(rows in body order))"
    )]
    BadSignature {
        key: String,
        seq: u64,
        root: String,
        rows: usize,
    },
    #[error("device {key}: {source}")]
    Seq {
        key: String,
        #[source]
        source: SeqRefusal,
    },
    #[error(
        "table {table} requires device attestation: sign the write (headers Annals-Device-Key, \
         Annals-Device-Seq, Annals-Device-Signature)"
    )]
    PolicyRequiresAttestation { table: String },
    #[error("device {0} is already registered")]
    AlreadyRegistered(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} are limited to {max}")]
    Full { what: &'static str, max: usize },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {detail}")]
    Corrupt { path: String, detail: String },
}

impl AttestError {
    /// A short machine-readable reason (metrics label, HTTP `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            AttestError::UnknownDevice(_) => "unknown_device",
            AttestError::Revoked { .. } => "revoked",
            AttestError::BadSignature { .. } => "bad_signature",
            AttestError::Seq { source, .. } => source.reason(),
            AttestError::PolicyRequiresAttestation { .. } => "unsigned",
            AttestError::AlreadyRegistered(_) => "exists",
            AttestError::Invalid(_) => "invalid",
            AttestError::Full { .. } => "full",
            AttestError::Log(_) | AttestError::Io { .. } | AttestError::Corrupt { .. } => "storage",
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        AttestError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Ed25519 public key, hex.
    pub key: String,
    pub name: String,
    pub fleet: String,
    /// ns since the Unix epoch.
    pub registered_at: i64,
    pub revoked_at: Option<i64>,
}

/// A table's attestation policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub require_attestation: bool,
}

#[derive(Serialize, Deserialize)]
struct DevicesFile {
    format: u32,
    devices: Vec<Device>,
}

#[derive(Serialize, Deserialize)]
struct PoliciesFile {
    format: u32,
    tables: BTreeMap<String, Policy>,
}

/// `H(0x06 || device_key || seq:u64 LE || batch_root)`: what a device signs.
pub fn digest(device_key: &[u8; 32], seq: u64, batch_root: &Hash) -> Hash {
    hash_parts(
        Domain::Attestation,
        &[device_key, &seq.to_le_bytes(), batch_root],
    )
}

/// The leaf hashes of a prepared request's rows in body order (one row per line).
pub fn batch_leaves(prepared: &Prepared) -> Vec<Hash> {
    let mut rows: Vec<(u32, Hash)> = Vec::with_capacity(prepared.rows);
    for o in prepared.origins.iter().flatten() {
        rows.extend(o.lines.iter().copied().zip(o.leaf_hashes.iter().copied()));
    }
    rows.sort_unstable_by_key(|(line, _)| *line);
    rows.into_iter().map(|(_, h)| h).collect()
}

/// Where an acknowledged request's rows went, in body order, as runs of consecutive positions.
pub fn batch_runs(outcome: &WriteOutcome) -> Vec<Run> {
    let mut rows: Vec<(u32, BranchId, u64, u32)> = Vec::with_capacity(outcome.rows);
    for (origin, runs) in &outcome.chunks {
        let mut row = 0usize;
        for run in runs {
            for k in 0..run.count {
                rows.push((
                    origin.lines[row],
                    run.branch,
                    run.height,
                    run.first_index + k,
                ));
                row += 1;
            }
        }
    }
    rows.sort_unstable_by_key(|r| r.0);
    let mut out: Vec<Run> = Vec::new();
    for (_, branch, height, index) in rows {
        match out.last_mut() {
            Some(r)
                if r.branch == branch
                    && r.height == height
                    && r.first_index.checked_add(r.count) == Some(index) =>
            {
                r.count += 1
            }
            _ => out.push(Run {
                branch,
                height,
                first_index: index,
                count: 1,
            }),
        }
    }
    out
}

/// The first line of `body` without a timestamp (a signed batch needs every time explicit:
/// the device cannot sign a time the server picks). Lines that do not parse are left to
/// [`crate::prepare`].
pub fn line_without_time(body: &[u8], precision: annals_lp::Precision) -> Option<usize> {
    // Explicit times lie in TIME_NS_MIN..=TIME_NS_MAX, which excludes i64::MIN.
    let opts = annals_lp::ParseOptions {
        precision,
        default_time_ns: i64::MIN,
        ..annals_lp::ParseOptions::default()
    };
    let mut parser = annals_lp::Parser::new(body, &opts);
    let mut line = annals_lp::Line::default();
    loop {
        match parser.next_into(&mut line) {
            Ok(true) if line.time_ns == i64::MIN => return Some(line.line_number),
            Ok(true) => {}
            Ok(false) => return None,
            Err(_) => {}
        }
    }
}

/// (record, its run, the run's first position in the batch).
type RunAt = (u32, u32, u32);

#[derive(Debug, Default)]
struct Index {
    records: Vec<Arc<AttestRecord>>,
    /// `(branch, height)` → every run of a record in that block.
    by_block: HashMap<(BranchId, u64), Vec<RunAt>>,
}

impl Index {
    fn insert(&mut self, rec: AttestRecord) {
        let id = self.records.len() as u32;
        let mut pos = 0u32;
        for (i, r) in rec.runs.iter().enumerate() {
            self.by_block
                .entry((r.branch, r.height))
                .or_default()
                .push((id, i as u32, pos));
            pos += r.count;
        }
        self.records.push(Arc::new(rec));
    }
}

/// The registry, the policies, the windows and the log of one node.
#[derive(Debug)]
pub struct Attestations {
    dir: PathBuf,
    devices: Mutex<BTreeMap<[u8; 32], Device>>,
    policies: Mutex<BTreeMap<String, Policy>>,
    windows: Mutex<HashMap<[u8; 32], ReplayWindow>>,
    log: Mutex<AttestLog>,
    index: RwLock<Index>,
}

fn key_from_hex(s: &str) -> Result<[u8; 32], AttestError> {
    let mut k = [0u8; 32];
    hex::decode_to_slice(s, &mut k).map_err(|_| {
        AttestError::Invalid(format!(
            "device key {s:?} is not 32 bytes of hex (an Ed25519 public key)"
        ))
    })?;
    Ok(k)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, AttestError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AttestError::Corrupt {
                path: path.display().to_string(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AttestError::io(path, e)),
    }
}

impl Attestations {
    /// Opens (creating) `dir`, reads the registry and policies and replays the log.
    pub fn open(dir: &Path, no_sync: bool) -> Result<Attestations, AttestError> {
        annals_storage::fsutil::create_dir_durable(dir).map_err(|e| AttestError::io(dir, e))?;
        let mut devices = BTreeMap::new();
        if let Some(f) = read_json::<DevicesFile>(&dir.join(DEVICES_FILE))? {
            for d in f.devices {
                devices.insert(key_from_hex(&d.key)?, d);
            }
        }
        let policies = read_json::<PoliciesFile>(&dir.join(POLICIES_FILE))?
            .map(|f| f.tables)
            .unwrap_or_default();
        let (log, records, _cut) = AttestLog::open(&dir.join(LOG_FILE), no_sync)?;
        let mut windows: HashMap<[u8; 32], ReplayWindow> = HashMap::new();
        let mut index = Index::default();
        for r in records {
            windows.entry(r.device_key).or_default().accept(r.seq);
            index.insert(r);
        }
        if !index.records.is_empty() {
            tracing::info!(
                records = index.records.len(),
                devices = windows.len(),
                "attestation log replayed"
            );
        }
        Ok(Attestations {
            dir: dir.to_owned(),
            devices: Mutex::new(devices),
            policies: Mutex::new(policies),
            windows: Mutex::new(windows),
            log: Mutex::new(log),
            index: RwLock::new(index),
        })
    }

    fn save_devices(&self, devices: &BTreeMap<[u8; 32], Device>) -> Result<(), AttestError> {
        let path = self.dir.join(DEVICES_FILE);
        let f = DevicesFile {
            format: 1,
            devices: devices.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&f).expect("devices serialize");
        annals_storage::fsutil::atomic_write(&path, &bytes).map_err(|e| AttestError::io(&path, e))
    }

    /// Registers a device's public key (hex) with a name and fleet at `now_ns`.
    pub fn register(
        &self,
        key_hex: &str,
        name: &str,
        fleet: &str,
        now_ns: i64,
    ) -> Result<Device, AttestError> {
        let key = key_from_hex(key_hex)?;
        if annals_format::sign::VerifyingKey::from_bytes(&key).is_err() {
            return Err(AttestError::Invalid(format!(
                "device key {key_hex} is not a valid Ed25519 public key"
            )));
        }
        for (what, v) in [("name", name), ("fleet", fleet)] {
            if v.is_empty() || v.len() > DEVICE_NAME_LEN_MAX {
                return Err(AttestError::Invalid(format!(
                    "{what} must be 1 to {DEVICE_NAME_LEN_MAX} bytes"
                )));
            }
        }
        // One lock for read, change, write: registrations are serialized.
        let mut devices = self.devices.lock();
        if devices.contains_key(&key) {
            return Err(AttestError::AlreadyRegistered(to_hex(&key)));
        }
        if devices.len() >= DEVICES_MAX {
            return Err(AttestError::Full {
                what: "registered devices",
                max: DEVICES_MAX,
            });
        }
        let d = Device {
            key: to_hex(&key),
            name: name.to_owned(),
            fleet: fleet.to_owned(),
            registered_at: now_ns,
            revoked_at: None,
        };
        let mut next = devices.clone();
        next.insert(key, d.clone());
        self.save_devices(&next)?;
        *devices = next;
        Ok(d)
    }

    /// Revokes a device (kept in the list with `revoked_at`); revoking twice keeps the first time.
    pub fn revoke(&self, key_hex: &str, now_ns: i64) -> Result<Device, AttestError> {
        let key = key_from_hex(key_hex)?;
        let mut devices = self.devices.lock();
        let d = devices
            .get(&key)
            .ok_or_else(|| AttestError::UnknownDevice(to_hex(&key)))?;
        if d.revoked_at.is_some() {
            return Ok(d.clone());
        }
        let mut next = devices.clone();
        let d = next.get_mut(&key).expect("checked above");
        d.revoked_at = Some(now_ns);
        let d = d.clone();
        self.save_devices(&next)?;
        *devices = next;
        Ok(d)
    }

    /// Every registered device, by key.
    pub fn devices(&self) -> Vec<Device> {
        self.devices.lock().values().cloned().collect()
    }

    /// The device with `key`, refusing unknown and revoked ones.
    pub fn active_device(&self, key: &[u8; 32]) -> Result<Device, AttestError> {
        let devices = self.devices.lock();
        let d = devices
            .get(key)
            .ok_or_else(|| AttestError::UnknownDevice(to_hex(key)))?;
        if let Some(at) = d.revoked_at {
            return Err(AttestError::Revoked {
                key: d.key.clone(),
                revoked_at: at,
            });
        }
        Ok(d.clone())
    }

    /// Sets the policy of `table` (`<db>/<table>`).
    pub fn set_policy(&self, table: &str, policy: Policy) -> Result<Policy, AttestError> {
        let (db, t) = table.split_once('/').unwrap_or(("", ""));
        crate::prepare::validate_db(db).map_err(|e| AttestError::Invalid(e.to_string()))?;
        if t.is_empty() || table.len() > TABLE_NAME_LEN_MAX {
            return Err(AttestError::Invalid(format!(
                "table name {table:?} must be <db>/<table>, at most {TABLE_NAME_LEN_MAX} bytes"
            )));
        }
        let mut policies = self.policies.lock();
        if !policies.contains_key(table) && policies.len() >= POLICIES_MAX {
            return Err(AttestError::Full {
                what: "table policies",
                max: POLICIES_MAX,
            });
        }
        let mut next = policies.clone();
        next.insert(table.to_owned(), policy);
        let path = self.dir.join(POLICIES_FILE);
        let bytes = serde_json::to_vec_pretty(&PoliciesFile {
            format: 1,
            tables: next.clone(),
        })
        .expect("policies serialize");
        annals_storage::fsutil::atomic_write(&path, &bytes)
            .map_err(|e| AttestError::io(&path, e))?;
        *policies = next;
        Ok(policy)
    }

    /// The policy of `table` (the default asks for nothing).
    pub fn policy(&self, table: &str) -> Policy {
        self.policies.lock().get(table).copied().unwrap_or_default()
    }

    /// Refuses an unsigned write that touches a table requiring attestation.
    pub fn check_unsigned<'t>(
        &self,
        tables: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), AttestError> {
        let policies = self.policies.lock();
        if policies.is_empty() {
            return Ok(());
        }
        let tables: BTreeSet<&str> = tables.into_iter().collect();
        for t in tables {
            if policies.get(t).is_some_and(|p| p.require_attestation) {
                return Err(AttestError::PolicyRequiresAttestation {
                    table: t.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Checks a signed batch (device active, signature over `batch_root`, sequence number in
    /// the window) and reserves its number until [`Reservation::commit`] or drop.
    pub fn begin(
        self: &Arc<Self>,
        device_key: &[u8; 32],
        seq: u64,
        sig: &[u8; 64],
        batch_root: &Hash,
        rows: usize,
    ) -> Result<Reservation, AttestError> {
        self.active_device(device_key)?;
        if rows == 0 || rows > BATCH_ROWS_MAX {
            return Err(AttestError::Invalid(format!(
                "a signed batch holds 1 to {BATCH_ROWS_MAX} rows, this one {rows}"
            )));
        }
        let d = digest(device_key, seq, batch_root);
        if annals_format::sign::verify(device_key, &d, sig).is_err() {
            return Err(AttestError::BadSignature {
                key: to_hex(device_key),
                seq,
                root: to_hex(batch_root),
                rows,
            });
        }
        self.windows
            .lock()
            .entry(*device_key)
            .or_default()
            .reserve(seq)
            .map_err(|source| AttestError::Seq {
                key: to_hex(device_key),
                source,
            })?;
        Ok(Reservation {
            owner: self.clone(),
            device_key: *device_key,
            seq,
            sig: *sig,
            batch_root: *batch_root,
            rows,
            done: false,
        })
    }

    /// The attestation holding the row at `(branch, height, index)`, with the row's position
    /// in its batch.
    pub fn find(
        &self,
        branch: &BranchId,
        height: u64,
        index: u32,
    ) -> Option<(Arc<AttestRecord>, u32)> {
        let idx = self.index.read();
        for &(rec, run, pos) in idx.by_block.get(&(*branch, height))? {
            let r = &idx.records[rec as usize];
            let run = &r.runs[run as usize];
            if (run.first_index..run.first_index + run.count).contains(&index) {
                return Some((r.clone(), pos + (index - run.first_index)));
            }
        }
        None
    }

    /// Accepted attestations.
    pub fn count(&self) -> usize {
        self.index.read().records.len()
    }

    /// The highest accepted sequence number of a device.
    pub fn highest_seq(&self, device_key: &[u8; 32]) -> Option<u64> {
        self.windows
            .lock()
            .get(device_key)
            .and_then(|w| w.highest())
    }
}

/// A checked signed batch whose sequence number is reserved. Dropping it without
/// [`commit`](Self::commit) releases the number.
#[derive(Debug)]
pub struct Reservation {
    owner: Arc<Attestations>,
    device_key: [u8; 32],
    seq: u64,
    sig: [u8; 64],
    batch_root: Hash,
    rows: usize,
    done: bool,
}

impl Reservation {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records the attestation with its rows' locations (durable rows, body order): appends
    /// and fsyncs the log record, then accepts the number. Blocks on the fsync.
    pub fn commit(mut self, runs: Vec<Run>) -> Result<(), AttestError> {
        let total: usize = runs.iter().map(|r| r.count as usize).sum();
        if total != self.rows {
            return Err(AttestError::Invalid(format!(
                "the write placed {total} rows but the signed batch has {}",
                self.rows
            )));
        }
        let rec = AttestRecord {
            device_key: self.device_key,
            seq: self.seq,
            batch_root: self.batch_root,
            sig: self.sig,
            batch_size: self.rows as u32,
            runs,
        };
        {
            let mut log = self.owner.log.lock();
            log.append(&rec)?;
            // Under the log lock: the window and the index follow the log's order.
            self.owner
                .windows
                .lock()
                .entry(self.device_key)
                .or_default()
                .accept(self.seq);
            self.done = true;
            self.owner.index.write().insert(rec);
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            if let Some(w) = self.owner.windows.lock().get_mut(&self.device_key) {
                w.release(self.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_format::sign::SigningKey;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn run(height: u64, first: u32, count: u32) -> Run {
        Run {
            branch: [1; 16],
            height,
            first_index: first,
            count,
        }
    }

    #[test]
    fn signed_batches_are_checked_reserved_recorded_and_replayed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(3);
        let pk = k.verifying_key().to_bytes();
        let root = [5u8; 32];
        {
            let a = Arc::new(Attestations::open(dir.path(), false).unwrap());
            let sig = annals_format::sign::sign(&k, &digest(&pk, 10, &root));
            assert!(matches!(
                a.begin(&pk, 10, &sig, &root, 3),
                Err(AttestError::UnknownDevice(_))
            ));
            a.register(&to_hex(&pk), "meter-1", "east", 1).unwrap();
            assert!(matches!(
                a.register(&to_hex(&pk), "meter-1", "east", 2),
                Err(AttestError::AlreadyRegistered(_))
            ));
            // Wrong root, wrong seq: bad signature.
            assert!(matches!(
                a.begin(&pk, 10, &sig, &[6; 32], 3),
                Err(AttestError::BadSignature { .. })
            ));
            assert!(matches!(
                a.begin(&pk, 11, &sig, &root, 3),
                Err(AttestError::BadSignature { .. })
            ));
            let r = a.begin(&pk, 10, &sig, &root, 3).unwrap();
            // Concurrent duplicate.
            assert!(matches!(
                a.begin(&pk, 10, &sig, &root, 3),
                Err(AttestError::Seq {
                    source: SeqRefusal::InFlight { .. },
                    ..
                })
            ));
            // A failed write gives the number back.
            drop(r);
            let r = a.begin(&pk, 10, &sig, &root, 3).unwrap();
            r.commit(vec![run(0, 4, 2), run(1, 0, 1)]).unwrap();
            assert!(matches!(
                a.begin(&pk, 10, &sig, &root, 3),
                Err(AttestError::Seq {
                    source: SeqRefusal::Replay { .. },
                    ..
                })
            ));
            let (rec, pos) = a.find(&[1; 16], 1, 0).unwrap();
            assert_eq!((rec.seq, pos), (10, 2));
            assert_eq!(a.find(&[1; 16], 0, 5).unwrap().1, 1);
            assert!(a.find(&[1; 16], 0, 6).is_none());
        }
        let a = Arc::new(Attestations::open(dir.path(), false).unwrap());
        assert_eq!(a.devices().len(), 1);
        assert_eq!(a.highest_seq(&pk), Some(10));
        assert_eq!(a.find(&[1; 16], 0, 4).unwrap().1, 0);
        let sig = annals_format::sign::sign(&k, &digest(&pk, 10, &root));
        assert!(matches!(
            a.begin(&pk, 10, &sig, &root, 3),
            Err(AttestError::Seq {
                source: SeqRefusal::Replay { .. },
                ..
            })
        ));
        a.revoke(&to_hex(&pk), 99).unwrap();
        let sig = annals_format::sign::sign(&k, &digest(&pk, 11, &root));
        assert!(matches!(
            a.begin(&pk, 11, &sig, &root, 3),
            Err(AttestError::Revoked { revoked_at: 99, .. })
        ));
        drop(a);
        let a = Attestations::open(dir.path(), false).unwrap();
        assert_eq!(a.devices()[0].revoked_at, Some(99));
    }

    #[test]
    fn policies_persist_and_refuse_unsigned_writes() {
        let dir = tempfile::tempdir().unwrap();
        let a = Attestations::open(dir.path(), false).unwrap();
        a.check_unsigned(["db/t"]).unwrap();
        a.set_policy(
            "db/t",
            Policy {
                require_attestation: true,
            },
        )
        .unwrap();
        assert!(a.set_policy("bad db/t", Policy::default()).is_err());
        drop(a);
        let a = Attestations::open(dir.path(), false).unwrap();
        assert!(a.policy("db/t").require_attestation);
        a.check_unsigned(["db/u"]).unwrap();
        match a.check_unsigned(["db/u", "db/t"]) {
            Err(AttestError::PolicyRequiresAttestation { table }) => assert_eq!(table, "db/t"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_must_be_explicit() {
        use annals_lp::Precision;
        assert_eq!(
            line_without_time(b"m v=1 1\nm v=2 2\n", Precision::Nanoseconds),
            None
        );
        assert_eq!(
            line_without_time(b"m v=1 1\n\nm v=2\n", Precision::Nanoseconds),
            Some(3)
        );
    }
}

//! State shared by the engine's threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use annals_format::block::BranchId;
use annals_format::hash::Hash;
use annals_format::sign::SigningKey;
use parking_lot::Mutex;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::config::EngineConfig;

/// A branch's durable log state, as the checkpointer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchHead {
    pub table: String,
    pub shard: usize,
    pub size: u64,
    pub root: Hash,
}

/// Derives a branch id: one per (node, shard, table).
pub fn branch_id(node_key: &[u8; 32], shard: usize, table: &str) -> BranchId {
    let mut h = blake3::Hasher::new();
    h.update(b"annals/branch/v1");
    h.update(node_key);
    h.update(&(shard as u32).to_le_bytes());
    h.update(table.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

/// Everything the writer, sealer and checkpointer threads share.
#[derive(Debug)]
pub struct Shared {
    pub cfg: EngineConfig,
    pub catalog: Arc<Catalog>,
    pub key: SigningKey,
    pub clock: Arc<dyn Clock>,
    /// Branch heads after their log was synced; the checkpointer commits to these.
    pub heads: Mutex<BTreeMap<BranchId, BranchHead>>,
    /// The first failure that stopped a shard's sealer or writer, for `/health` and callers.
    pub failure: Mutex<Option<String>>,
    /// Per shard: its sealer has stopped (the writer then refuses writes).
    pub sealer_stopped: Vec<std::sync::atomic::AtomicBool>,
    /// What readers see of each shard.
    pub views: crate::view::Views,
    /// The newest rows of every series.
    pub last: crate::last_values::LastValues,
}

impl Shared {
    /// Records a failure that stops a shard (the first one is kept).
    pub fn fail(&self, what: String) {
        self.failure.lock().get_or_insert(what);
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

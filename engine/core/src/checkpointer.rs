//! The checkpointer thread: every interval, one signed checkpoint over all branch heads.
//!
//! A single node is a validator set of one, so its own signature makes a checkpoint final. A
//! checkpoint is only written when some branch moved since the previous one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_format::checkpoint::{
    branches_root, validators_hash, BranchEntry, CheckpointHeader, Validator,
};
use annals_format::hash::{to_hex, ZERO_HASH};
use annals_format::sign::sign;
use annals_storage::checkpoint_log::{CheckpointLog, CheckpointRecord};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use tracing::{error, info};

use crate::error::EngineError;
use crate::shared::Shared;

/// What the checkpointer is asked to do.
#[derive(Debug)]
pub enum CheckpointMsg {
    /// Checkpoint now (if anything moved) and reply with the latest epoch.
    Now { reply: Sender<Option<u64>> },
}

/// The checkpointer thread's state.
pub struct Checkpointer {
    pub shared: Arc<Shared>,
    pub log: Arc<Mutex<CheckpointLog>>,
    pub rx: Receiver<CheckpointMsg>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish()
    }
}

impl Checkpointer {
    pub fn run(self) {
        let interval = self.shared.cfg.checkpoint_interval;
        let mut next = Instant::now() + interval;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(CheckpointMsg::Now { reply }) => {
                    let epoch = self.checkpoint().unwrap_or_else(|e| {
                        error!(error = %e, "checkpoint failed");
                        None
                    });
                    let _ = reply
                        .send(epoch.or_else(|| self.log.lock().latest().map(|r| r.header.epoch)));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.checkpoint() {
                        error!(error = %e, "checkpoint failed");
                    }
                    next = Instant::now() + interval;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.checkpoint() {
                        error!(error = %e, "final checkpoint failed");
                    }
                    return;
                }
            }
        }
    }

    /// Writes a checkpoint if any branch head changed; returns its epoch.
    pub fn checkpoint(&self) -> Result<Option<u64>, EngineError> {
        let entries: Vec<BranchEntry> = self
            .shared
            .heads
            .lock()
            .iter()
            .map(|(b, h)| BranchEntry {
                branch: *b,
                size: h.size,
                root: h.root,
            })
            .collect();
        let mut log = self.log.lock();
        let latest = log.latest();
        if entries.is_empty() || latest.is_some_and(|r| r.entries == entries) {
            return Ok(None);
        }
        let (epoch, prev) = match latest {
            Some(r) => (r.header.epoch + 1, r.hash()),
            None => (0, ZERO_HASH),
        };
        let pubkey = self.shared.public_key();
        let header = CheckpointHeader {
            epoch,
            prev,
            branches_root: branches_root(&entries),
            branch_count: entries.len() as u32,
            time: self.shared.clock.now_ns(),
            validators: validators_hash(&[Validator { pubkey, power: 1 }]),
        };
        let sig = sign(&self.shared.key, &header.hash());
        let record = CheckpointRecord {
            header,
            entries,
            signatures: vec![(pubkey, sig)],
        };
        let (branches, hash) = (record.entries.len(), record.hash());
        log.append(record).map_err(EngineError::storage)?;
        log.sync().map_err(EngineError::storage)?;
        metrics::counter!("annals_checkpoints_total").increment(1);
        info!(epoch, branches, hash = %to_hex(&hash), "checkpoint");
        Ok(Some(epoch))
    }
}

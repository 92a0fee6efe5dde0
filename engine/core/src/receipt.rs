//! Write receipts: where each acknowledged row sits in the ledger.
//!
//! Full form (up to [`RECEIPT_ROWS_MAX`] rows): one entry per row with its input line, branch,
//! height, index and `tx_id`. Compact form (larger requests, or when asked): one entry per run
//! of consecutive positions with the input lines of its rows; a client derives each `tx_id`
//! itself as `H(0x03 || branch || height || index || H(0x00 || row))` (FORMAT.md). Count form
//! (when asked): the number of rows written and the rejected lines, nothing per row or run; for
//! bulk writers that only need the acknowledgement.

use annals_format::block::{tx_id, BranchId};
use annals_format::hash::to_hex;
use serde_json::{json, Value};

use crate::prepare::ChunkOrigin;

/// Largest request whose receipt lists every row.
pub const RECEIPT_ROWS_MAX: usize = 10_000;

/// Consecutive positions in one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub branch: BranchId,
    pub height: u64,
    pub first_index: u32,
    pub count: u32,
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub rows: usize,
    /// Each chunk's origin with the runs its rows went to, in row order.
    pub chunks: Vec<(ChunkOrigin, Vec<Run>)>,
    pub rejected: Vec<(usize, String)>,
}

/// Which receipt to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptForm {
    Full,
    Compact,
    Count,
}

impl WriteOutcome {
    /// Renders the receipt; `Full` falls back to `Compact` above [`RECEIPT_ROWS_MAX`] rows.
    pub fn receipt(&self, form: ReceiptForm) -> Value {
        let form = if form == ReceiptForm::Full && self.rows > RECEIPT_ROWS_MAX {
            ReceiptForm::Compact
        } else {
            form
        };
        let rejected: Vec<Value> = self
            .rejected
            .iter()
            .map(|(l, m)| json!({"line": l, "error": m}))
            .collect();
        match form {
            ReceiptForm::Full => {
                let mut entries = Vec::with_capacity(self.rows);
                for (origin, runs) in &self.chunks {
                    let mut row = 0usize;
                    for run in runs {
                        let branch = to_hex(&run.branch);
                        for k in 0..run.count {
                            let index = run.first_index + k;
                            let t = tx_id(&run.branch, run.height, index, &origin.leaf_hashes[row]);
                            entries.push((
                                origin.lines[row],
                                json!({
                                    "line": origin.lines[row], "table": origin.table, "branch": branch,
                                    "height": run.height, "index": index, "tx_id": to_hex(&t),
                                }),
                            ));
                            row += 1;
                        }
                    }
                }
                entries.sort_by_key(|(line, _)| *line);
                json!({
                    "receipt": "full", "rows": self.rows, "rejected": rejected,
                    "entries": entries.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                })
            }
            ReceiptForm::Count => {
                json!({ "receipt": "count", "rows": self.rows, "rejected": rejected })
            }
            ReceiptForm::Compact => {
                let mut runs_json = Vec::new();
                for (origin, runs) in &self.chunks {
                    let mut row = 0usize;
                    for run in runs {
                        let lines = &origin.lines[row..row + run.count as usize];
                        runs_json.push(json!({
                            "table": origin.table, "branch": to_hex(&run.branch), "height": run.height,
                            "first_index": run.first_index, "count": run.count, "lines": lines,
                        }));
                        row += run.count as usize;
                    }
                }
                json!({ "receipt": "compact", "rows": self.rows, "rejected": rejected, "runs": runs_json })
            }
        }
    }
}

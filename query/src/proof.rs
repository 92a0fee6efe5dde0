//! `ledger_proof(_branch, _height, _index)` and `ledger_proof(_tx_id, _branch, _height, _index)`:
//! the row's `annals-proof/1` document (FORMAT.md) as JSON text, from SQL:
//!
//! ```sql
//! SELECT _tx_id, ledger_proof(_tx_id, _branch, _height, _index) FROM ledger('readings')
//! WHERE truck = 't1' AND time > now() - interval '1 hour'
//! ```
//!
//! A scalar function only sees its arguments, so it takes the row's position (the ledger
//! columns of `ledger('m')`); with `_tx_id` first it also checks that the row there has that id.
//! The proof is under the latest checkpoint, or under the session's `annals.as_of_epoch`.
//! A row not provable yet (its block is open, or no checkpoint covers it) gives NULL; a
//! position that names no row is an error. Each block is read once per batch; a query builds
//! at most [`PROOFS_PER_QUERY_MAX`] proofs (a proof is about 2 KB and re-reads its block).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use annals_engine::engine::Engine;
use annals_engine::proof::{BlockProofs, ProofError};
use annals_format::hash::hash_from_hex;
use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, UInt32Type, UInt64Type};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use crate::options::AnnalsOptions;

/// Most proofs one query (session) may build.
pub const PROOFS_PER_QUERY_MAX: usize = 10_000;

/// Registers `ledger_proof` in a session.
pub fn register(ctx: &SessionContext, engine: &Arc<Engine>) {
    ctx.register_udf(ScalarUDF::from(LedgerProof {
        engine: engine.clone(),
        built: Arc::new(AtomicUsize::new(0)),
        signature: Signature::user_defined(Volatility::Volatile),
    }));
}

#[derive(Debug)]
struct LedgerProof {
    engine: Arc<Engine>,
    built: Arc<AtomicUsize>,
    signature: Signature,
}

impl PartialEq for LedgerProof {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.engine, &other.engine) && Arc::ptr_eq(&self.built, &other.built)
    }
}
impl Eq for LedgerProof {}
impl Hash for LedgerProof {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "ledger_proof".hash(state);
    }
}

const USAGE: &str = "ledger_proof takes (_branch, _height, _index) or (_tx_id, _branch, _height, _index), the ledger columns of ledger('table')";

impl ScalarUDFImpl for LedgerProof {
    fn name(&self) -> &str {
        "ledger_proof"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let text = |t: &DataType| {
            matches!(
                t,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
            )
        };
        let int = |t: &DataType| t.is_integer() || *t == DataType::Null;
        let position = [DataType::Utf8, DataType::UInt64, DataType::UInt32];
        match args {
            [b, h, i] if text(b) && int(h) && int(i) => Ok(position.to_vec()),
            [t, b, h, i] if text(t) && text(b) && int(h) && int(i) => {
                let mut v = vec![DataType::Utf8];
                v.extend(position);
                Ok(v)
            }
            _ => plan_err!("{USAGE}; got {args:?}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let pinned = args
            .config_options
            .extensions
            .get::<AnnalsOptions>()
            .and_then(|o| o.as_of_epoch);
        let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(&args.args)?;
        let (tx, rest) = match arrays.len() {
            3 => (None, &arrays[..]),
            4 => (Some(arrays[0].as_string::<i32>()), &arrays[1..]),
            _ => return exec_err!("{USAGE}"),
        };
        let branches = rest[0].as_string::<i32>();
        let heights = rest[1].as_primitive::<UInt64Type>();
        let indexes = rest[2].as_primitive::<UInt32Type>();
        let n = branches.len();

        // The checkpoint before the snapshot (see annals_engine::proof).
        let checkpoint = match pinned {
            Some(e) => Some(self.engine.checkpoint(e).ok_or_else(|| {
                DataFusionError::Execution(format!("ledger_proof: no checkpoint of epoch {e}"))
            })?),
            None => self.engine.latest_checkpoint(),
        }
        .map(Arc::new);
        let snap = self.engine.snapshot();
        let mut blocks: HashMap<([u8; 16], u64), Option<BlockProofs>> = HashMap::new();
        let mut out = StringBuilder::with_capacity(n, n * 2048);
        for row in 0..n {
            if branches.is_null(row) || heights.is_null(row) || indexes.is_null(row) {
                out.append_null();
                continue;
            }
            let text = branches.value(row);
            let mut branch = [0u8; 16];
            if hex::decode_to_slice(text, &mut branch).is_err() {
                return exec_err!("ledger_proof: branch must be 32 hex digits, got {text:?}");
            }
            let (height, index) = (heights.value(row), indexes.value(row));
            let block = match blocks.entry((branch, height)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match BlockProofs::open(
                        &self.engine,
                        &snap,
                        checkpoint.clone(),
                        &branch,
                        height,
                    ) {
                        Ok(b) => v.insert(Some(b)),
                        Err(e) if e.is_pending() => v.insert(None),
                        Err(e) => return Err(proof_error(e)),
                    }
                }
            };
            let Some(block) = block else {
                out.append_null();
                continue;
            };
            if let Some(tx) = tx {
                let want = (!tx.is_null(row))
                    .then(|| hash_from_hex(tx.value(row)))
                    .flatten();
                if block.tx_id(index).is_none() || want != block.tx_id(index) {
                    return exec_err!(
                        "ledger_proof: the row at branch {text} height {height} index {index} does not have tx_id {}",
                        if tx.is_valid(row) { tx.value(row) } else { "NULL" }
                    );
                }
            }
            if self.built.fetch_add(1, Ordering::Relaxed) >= PROOFS_PER_QUERY_MAX {
                return exec_err!(
                    "ledger_proof builds at most {PROOFS_PER_QUERY_MAX} proofs per query; narrow the WHERE clause"
                );
            }
            let proof = block.proof(index).map_err(proof_error)?;
            out.append_value(proof.to_json().to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn proof_error(e: ProofError) -> DataFusionError {
    DataFusionError::Execution(format!("ledger_proof: {e}"))
}

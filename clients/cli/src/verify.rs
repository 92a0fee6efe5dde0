//! `annals verify PROOF.json --trust KEYS`: checks a proof offline with `annals-verify`, the
//! independent verifier that shares no code with the server. The proof may be JSON
//! (`annals-proof/1`) or its binary form (`annals-proof-bin/1`). Exit 0: valid; 1: verification
//! failed (the step and why are printed); 2: the command could not run (unreadable file, bad
//! trust file).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use annals_verify::{verify_proof, Hex, Trust, Value as Cell, Verified, PROOF_BYTES_MAX};
use clap::Args;
use serde_json::{json, Value};

const TRUST_HELP: &str = "\
Trust file (--trust KEYS), either form:
  JSON:  {\"validators\": [{\"key\": \"<64 hex digits>\", \"power\": 1}, ...]}
         (\"power\" defaults to 1)
  text:  one Ed25519 public key in lowercase hex per line, power 1 each;
         blank lines and text after '#' are ignored.
The set must be exactly the one the checkpoint names (its hash is compared), and the proof is
valid only if trusted validators carrying more than 2/3 of its power signed the checkpoint.

Exit status: 0 valid, 1 verification failed (prints the step that failed), 2 could not run.";

/// Flags of `annals verify`.
#[derive(Debug, Args)]
#[command(after_help = TRUST_HELP)]
pub(crate) struct VerifyArgs {
    /// The proof: an annals-proof/1 JSON document or its binary form (`annals proof --format
    /// binary`); `-` reads standard input.
    proof: PathBuf,
    /// File of trusted validator keys (format below).
    #[arg(
        long,
        value_name = "KEYS",
        required_unless_present = "structure_only",
        conflicts_with = "structure_only"
    )]
    trust: Option<PathBuf>,
    /// Trust no validator set: check hashes, paths and the signatures the proof carries, but
    /// not the quorum. Shows the proof is self-consistent, NOT that the ledger finalized it.
    #[arg(long)]
    structure_only: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn read_proof(path: &Path) -> std::io::Result<Vec<u8>> {
    // One byte over the limit is enough for the verifier to refuse it by name.
    let limit = PROOF_BYTES_MAX as u64 + 1;
    let mut buf = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf)?;
    } else {
        std::fs::File::open(path)?
            .take(limit)
            .read_to_end(&mut buf)?;
    }
    Ok(buf)
}

pub(crate) fn run(args: VerifyArgs) -> ExitCode {
    let trust = match &args.trust {
        None => Trust::structure_only(),
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => match Trust::from_file_bytes(&bytes) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("annals verify: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("annals verify: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let proof = match read_proof(&args.proof) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("annals verify: cannot read {}: {e}", args.proof.display());
            return ExitCode::from(2);
        }
    };
    match verify_proof(&proof, &trust) {
        Ok(v) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report(&v)).expect("JSON")
                );
            } else {
                print_summary(&v);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                let j = json!({"valid": false, "step": e.step().name(), "detail": e.detail()});
                println!("{}", serde_json::to_string_pretty(&j).expect("JSON"));
            } else {
                println!("verification failed at step {}: {}", e.step(), e.detail());
            }
            ExitCode::FAILURE
        }
    }
}

fn hex(b: &[u8]) -> String {
    Hex(b).to_string()
}

fn big(n: u128) -> Value {
    u64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::from)
}

fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Tag(s) | Cell::Str(s) => json!(s),
        Cell::F64(x) => json!(x),
        Cell::I64(x) => json!(x),
        Cell::U64(x) => json!(x),
        Cell::Bool(b) => json!(b),
    }
}

fn report(v: &Verified) -> Value {
    let c = &v.checkpoint;
    json!({
        "valid": true,
        "final": v.is_final(),
        "row": {
            "table": v.row.table,
            "time": v.row.time,
            "columns": v.row.columns.iter().map(|col| json!({
                "name": col.name, "kind": col.value.kind_name(), "value": cell_json(&col.value)
            })).collect::<Vec<_>>(),
        },
        "tx_id": hex(&v.tx_id),
        "branch": hex(&v.branch),
        "height": v.height,
        "index": v.index,
        "block_hash": hex(&v.block_hash),
        "block_signer": v.block_signer.map(|k| hex(&k)),
        "branch_size": v.branch_size,
        "checkpoint": {
            "epoch": c.epoch,
            "hash": hex(&c.hash),
            "time": c.time,
            "prev": hex(&c.prev),
            "branches_root": hex(&c.branches_root),
            "branch_count": c.branch_count,
            "validators": hex(&c.validators),
        },
        "quorum": c.quorum.as_ref().map(|q| json!({
            "signers": q.signers.iter().map(|k| hex(k)).collect::<Vec<_>>(),
            "signed_power": big(q.signed_power),
            "total_power": big(q.total_power),
        })),
        "attestation": v.attestation.as_ref().map(|a| json!({
            "device_key": hex(&a.device_key),
            "seq": a.seq,
            "batch_root": hex(&a.batch_root),
            "batch_size": a.batch_size,
            "index": a.index,
        })),
    })
}

fn print_summary(v: &Verified) {
    let c = &v.checkpoint;
    match &c.quorum {
        Some(_) => println!("proof OK: the row is in checkpoint {} signed by a quorum of the trusted validators", c.epoch),
        None => println!(
            "proof structure OK (--structure-only: no validator set trusted, quorum NOT checked; this does not show the ledger finalized the row)"
        ),
    }
    let cols: Vec<String> = v
        .row
        .columns
        .iter()
        .map(|col| match &col.value {
            Cell::Tag(s) | Cell::Str(s) => format!("{}={s:?}", col.name),
            other => format!("{}={}", col.name, cell_json(other)),
        })
        .collect();
    println!(
        "row          {} time {} ns: {}",
        v.row.table,
        v.row.time,
        cols.join(", ")
    );
    println!("tx_id        {}", hex(&v.tx_id));
    println!(
        "block        {} (branch {} height {}, row {})",
        hex(&v.block_hash),
        hex(&v.branch),
        v.height,
        v.index
    );
    match v.block_signer {
        Some(k) => println!("block signer {} (key named by the proof)", hex(&k)),
        None => println!("block signer none (unsigned block accepted by --structure-only)"),
    }
    println!("branch log   size {}", v.branch_size);
    println!(
        "checkpoint   epoch {} hash {} time {} ns",
        c.epoch,
        hex(&c.hash),
        c.time
    );
    if let Some(q) = &c.quorum {
        println!(
            "quorum       {} trusted validators, power {} of {}",
            q.signers.len(),
            q.signed_power,
            q.total_power
        );
        for k in &q.signers {
            println!("  signed by  {}", hex(k));
        }
    }
    if let Some(a) = &v.attestation {
        println!(
            "attestation  device {} seq {} (row {} of a batch of {}, root {})",
            hex(&a.device_key),
            a.seq,
            a.index,
            a.batch_size,
            hex(&a.batch_root)
        );
    }
}

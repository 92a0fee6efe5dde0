//! `annals proof TX_ID`: fetches a row's `annals-proof/1` document from a running node
//! (`GET /api/v3/ledger/proof`) and prints it or saves it, as JSON or (`--format binary`) in
//! the binary form `annals-proof-bin/1`.
//!
//! The document is checked to be well formed and self-consistent (every hash and signature in
//! it, with the key it names) before it is printed; whether that key is one to trust is for
//! the verifier (`annals verify`) to decide.
//!
//! Exit codes: 0 printed; 1 the server has no proof (not found, not sealed or not in a
//! checkpoint yet: the message says which) or failed; 2 bad arguments.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use annals_engine::proof::Proof;
use clap::Args;
use serde_json::Value;

use crate::client::{base_url, HOST_DEFAULT};

/// Longest `--wait` (the server's bound).
const WAIT_SECONDS_MAX: u64 = 60;
/// Time allowed for the answer beyond `--wait`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `annals proof`.
#[derive(Debug, Args)]
pub(crate) struct ProofArgs {
    /// The row's transaction id (64 hex digits, from the write receipt or `ledger('table')._tx_id`).
    tx_id: String,
    /// Server address.
    #[arg(long, alias = "url", env = "ANNALS_HOST", default_value = HOST_DEFAULT)]
    host: String,
    /// API token (sent as `Authorization: Bearer`); not needed with `--without-auth`.
    #[arg(long, env = "ANNALS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The row's branch (from the write receipt): with --height and --index the server reads
    /// one block instead of searching.
    #[arg(long)]
    branch: Option<String>,
    /// The row's block height (from the write receipt).
    #[arg(long)]
    height: Option<u64>,
    /// The row's index in its block (from the write receipt).
    #[arg(long)]
    index: Option<u32>,
    /// Wait up to this many seconds for the row's block to be sealed and checkpointed.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Write the proof to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// `json` (the `annals-proof/1` document) or `binary` (the same proof as
    /// `annals-proof-bin/1`, docs/PROOF-BINARY.md: about 40 % of the size). `annals verify`
    /// reads both.
    #[arg(long, value_enum, default_value_t = ProofFormat::Json)]
    format: ProofFormat,
}

/// The forms a proof is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProofFormat {
    Json,
    Binary,
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("annals proof: {msg}");
    ExitCode::from(code)
}

pub(crate) fn run(args: ProofArgs) -> ExitCode {
    let tx = args.tx_id.trim().to_ascii_lowercase();
    if annals_format::hash::hash_from_hex(&tx).is_none() {
        return fail(
            format!("TX_ID must be 64 hex digits, got {:?}", args.tx_id),
            2,
        );
    }
    if let Some(b) = &args.branch {
        if b.len() != 32 || hex::decode(b).is_err() {
            return fail(format!("--branch must be 32 hex digits, got {b:?}"), 2);
        }
    }
    if args.wait > WAIT_SECONDS_MAX {
        return fail(
            format!("--wait may be at most {WAIT_SECONDS_MAX} seconds"),
            2,
        );
    }
    let url = format!("{}/api/v3/ledger/proof", base_url(&args.host));
    let mut query: Vec<(&str, String)> = vec![("tx_id", tx.clone())];
    if let Some(b) = &args.branch {
        query.push(("branch", b.to_ascii_lowercase()));
    }
    if let Some(h) = args.height {
        query.push(("height", h.to_string()));
    }
    if let Some(i) = args.index {
        query.push(("index", i.to_string()));
    }
    if args.wait > 0 {
        query.push(("wait", args.wait.to_string()));
    }
    let http = match reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(ANSWER_TIMEOUT + Duration::from_secs(args.wait))
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot build an HTTP client: {e}"), 1),
    };
    let mut req = http.get(&url).query(&query);
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = match req.send() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot reach {url}: {e}"), 1),
    };
    let status = resp.status();
    let text = match resp.text() {
        Ok(t) => t,
        Err(e) => return fail(format!("reading the answer of {url}: {e}"), 1),
    };
    let body: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let (msg, reason) = match &body {
            Some(v) => (
                v["error"].as_str().unwrap_or(text.trim()).to_string(),
                v["reason"].as_str().unwrap_or("").to_string(),
            ),
            None => (text.trim().to_string(), String::new()),
        };
        let reason = if reason.is_empty() {
            String::new()
        } else {
            format!(", {reason}")
        };
        let code = if status.as_u16() == 400 { 2 } else { 1 };
        return fail(format!("{msg} (HTTP {}{reason})", status.as_u16()), code);
    }
    let Some(doc) = body else {
        return fail(
            format!("the server's answer is not JSON: {}", text.trim()),
            1,
        );
    };
    let proof = match Proof::from_json(&doc) {
        Ok(p) => p,
        Err(e) => return fail(format!("the server's proof is malformed: {e}"), 1),
    };
    if annals_format::hash::to_hex(&proof.tx_id) != tx {
        return fail("the server answered with the proof of another row", 1);
    }
    // Self-consistency only: every key the document names is taken at its word here.
    let named: Vec<[u8; 32]> = proof
        .checkpoint_signatures
        .iter()
        .map(|s| s.key)
        .chain([proof.block_signature.key])
        .collect();
    if let Err(step) = proof.verify(&named) {
        return fail(format!("the server's proof does not verify: {step}"), 1);
    }
    let bytes = match args.format {
        ProofFormat::Json => {
            let mut pretty = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
            pretty.push('\n');
            pretty.into_bytes()
        }
        ProofFormat::Binary => proof.to_binary(),
    };
    match &args.output {
        Some(path) => {
            // Written whole under a temporary name, then renamed: no half-written proof.
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path))
            {
                let _ = std::fs::remove_file(&tmp);
                return fail(format!("cannot write {}: {e}", path.display()), 1);
            }
            eprintln!(
                "proof of {tx} (block {} of branch {}, checkpoint epoch {}) written to {}",
                annals_format::BlockHeader::decode(&proof.block_header)
                    .map(|h| h.height)
                    .unwrap_or_default(),
                hex::encode(proof.entry.branch),
                proof.checkpoint_header.epoch,
                path.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&bytes).and_then(|()| out.flush()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return fail(format!("cannot write the proof: {e}"), 1);
                }
            }
        }
    }
    ExitCode::SUCCESS
}

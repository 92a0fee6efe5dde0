//! `annals token create|list|revoke`: manage API tokens on a running node (needs an admin
//! token, `--token` or `ANNALS_TOKEN`). The secret of a new token is printed once; the node
//! keeps only its hash.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{base_url, error_message, HOST_DEFAULT};

/// Flags of `annals token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    /// Server address.
    #[arg(long, global = true, env = "ANNALS_HOST", default_value = HOST_DEFAULT)]
    host: String,
    /// An admin token (printed by `annals serve` on its first start).
    #[arg(long, global = true, env = "ANNALS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// May query, read proofs and subscribe.
        #[arg(long)]
        read: bool,
        /// May write.
        #[arg(long)]
        write: bool,
        /// May manage tokens, devices, policies and contexts (implies read and write).
        #[arg(long)]
        admin: bool,
        /// Limit the token to this database.
        #[arg(long)]
        db: Option<String>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Print the whole record as JSON instead of the secret alone.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (without secrets), revoked ones included.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `list` or `create --json`).
    Revoke {
        /// The token's id (16 hex digits).
        id: String,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("annals token: {msg}");
    ExitCode::FAILURE
}

pub(crate) fn run(args: TokenArgs) -> ExitCode {
    let http = match reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot build an HTTP client: {e}")),
    };
    let base = format!("{}/api/v3/tokens", base_url(&args.host));
    let auth = |r: reqwest::blocking::RequestBuilder| match args.token.as_deref() {
        Some(t) if !t.is_empty() => r.bearer_auth(t),
        _ => r,
    };
    let (req, url) = match &args.command {
        TokenCommand::Create {
            read,
            write,
            admin,
            db,
            description,
            ..
        } => {
            if !(*read || *write || *admin) {
                return fail("say what the token may do: --read, --write and/or --admin");
            }
            let body = json!({"read": read, "write": write, "admin": admin, "db": db, "description": description});
            (auth(http.post(&base).json(&body)), base.clone())
        }
        TokenCommand::List { .. } => (auth(http.get(&base)), base.clone()),
        TokenCommand::Revoke { id } => {
            let url = format!("{base}/{id}");
            (auth(http.delete(&url)), url)
        }
    };
    let resp = match req.send() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot reach {url}: {e}")),
    };
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    if !status.is_success() {
        return fail(format!(
            "{} (HTTP {})",
            error_message(status, &text),
            status.as_u16()
        ));
    }
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match args.command {
        TokenCommand::Create { json, .. } => {
            if json {
                println!("{body}");
            } else {
                println!("{}", body["token"].as_str().unwrap_or_default());
                eprintln!(
                    "token {} created; its secret is shown only once",
                    body["id"].as_str().unwrap_or_default()
                );
            }
        }
        TokenCommand::List { json } => {
            if json {
                println!("{body}");
            } else {
                println!(
                    "{:<16}  {:<15}  {:<12}  {:<8}  description",
                    "id", "permissions", "db", "state"
                );
                for t in body["tokens"].as_array().into_iter().flatten() {
                    let perms: Vec<&str> =
                        [("read", "read"), ("write", "write"), ("admin", "admin")]
                            .into_iter()
                            .filter(|(k, _)| t[*k].as_bool() == Some(true))
                            .map(|(_, n)| n)
                            .collect();
                    println!(
                        "{:<16}  {:<15}  {:<12}  {:<8}  {}",
                        t["id"].as_str().unwrap_or_default(),
                        perms.join(","),
                        t["db"].as_str().unwrap_or("*"),
                        if t["revoked_at"].is_null() {
                            "valid"
                        } else {
                            "revoked"
                        },
                        t["description"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => eprintln!("token {id} revoked"),
    }
    ExitCode::SUCCESS
}

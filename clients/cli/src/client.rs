//! The HTTP client of `annals query` and `annals shell`: one `POST /api/v3/query_sql` per
//! statement, the result streamed back as the server sends it.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

/// Default server address of the client commands.
pub(crate) const HOST_DEFAULT: &str = "http://127.0.0.1:8181";

/// How long connecting may take; a query itself is bounded by the server's `--query-timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a query produced no (complete) result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryFailure {
    /// The server refused or failed the query; `message` is its `error`.
    #[error("{message} (HTTP {status})")]
    Server { status: u16, message: String },
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The response started but did not end (the query failed mid-stream, or the connection
    /// broke); what was written so far is incomplete.
    #[error("the result was cut off: {0}")]
    CutOff(String),
    #[error("cannot write the result: {0}")]
    Output(std::io::Error),
}

/// A client for one server.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::blocking::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    /// `host` is `http://HOST:PORT` (the scheme may be left out); `token` is sent as
    /// `Authorization: Bearer`.
    pub(crate) fn new(host: &str, token: Option<&str>) -> Result<Client, String> {
        let base = base_url(host);
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // No overall timeout: the server cancels queries past its --query-timeout.
            .timeout(None::<Duration>)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Client {
            http,
            url: format!("{base}/api/v3/query_sql"),
            token: token.map(str::to_owned),
        })
    }

    /// Runs `sql` on database `db` and copies the result, as the server encodes it in
    /// `format`, into `out`.
    pub(crate) fn query_into(
        &self,
        db: &str,
        sql: &str,
        format: &str,
        as_of_epoch: Option<u64>,
        out: &mut dyn Write,
    ) -> Result<u64, QueryFailure> {
        let mut body = json!({ "db": db, "q": sql, "format": format });
        if let Some(e) = as_of_epoch {
            body["as_of_epoch"] = json!(e);
        }
        let transport = |source| QueryFailure::Transport {
            url: self.url.clone(),
            source,
        };
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().unwrap_or_default();
            let message = error_message(status, &text);
            return Err(QueryFailure::Server {
                status: status.as_u16(),
                message,
            });
        }
        let mut copier = WriteErrors { out, error: None };
        match resp.copy_to(&mut copier) {
            Ok(n) => Ok(n),
            Err(e) => Err(match copier.error.take() {
                Some(io) => QueryFailure::Output(io),
                None => QueryFailure::CutOff(e.to_string()),
            }),
        }
        .and_then(|n| out_flush(copier.out).map(|()| n))
    }
}

/// `http://HOST:PORT` without a trailing slash, from `HOST:PORT` or a URL.
pub(crate) fn base_url(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}

/// The `error` member of a JSON error body, or the body itself, or the status reason.
pub(crate) fn error_message(status: reqwest::StatusCode, text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                t.to_string()
            }
        })
}

fn out_flush(out: &mut dyn Write) -> Result<(), QueryFailure> {
    out.flush().map_err(QueryFailure::Output)
}

/// Remembers an error of the output, to tell it apart from an error reading the response.
struct WriteErrors<'a> {
    out: &'a mut dyn Write,
    error: Option<std::io::Error>,
}

impl Write for WriteErrors<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf).inspect_err(|e| {
            self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

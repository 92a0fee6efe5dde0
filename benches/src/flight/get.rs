//! Reading back: Flight `DoGet` streams, the same query as HTTP JSON, and row counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use futures::{StreamExt as _, TryStreamExt as _};
use tonic::transport::Channel;

use super::put::{ipc_len, status_error};
use super::{ARROW_DB, LP_DB};
use crate::query::post_query;
use crate::server::Server;

/// Rows and bytes of one result stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streamed {
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) elapsed: Duration,
}

/// One `DoGet` of `sql` on `db` with the InfluxDB 3 JSON ticket, decoded batch by batch as a
/// client would; bytes are the Arrow IPC received (headers and bodies).
pub(super) async fn do_get_once(
    client: &mut FlightServiceClient<Channel>,
    db: &str,
    sql: &str,
) -> Result<Streamed> {
    let ticket = serde_json::json!({ "database": db, "sql_query": sql, "query_type": "sql" });
    let ticket = Ticket::new(serde_json::to_vec(&ticket)?);
    let what = format!("DoGet {sql:?} on {db}");
    let started = Instant::now();
    let stream = client
        .do_get(ticket)
        .await
        .map_err(|s| status_error(&what, &s))?
        .into_inner()
        .map_err(FlightError::from);
    let mut decoder = FlightDataDecoder::new(stream);
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(data) = decoder.next().await {
        let data = match data {
            Ok(d) => d,
            Err(FlightError::Tonic(s)) => return Err(status_error(&what, &s)),
            Err(e) => return Err(anyhow!(e).context(format!("{what}: bad stream"))),
        };
        bytes += ipc_len(&data.inner);
        if let DecodedPayload::RecordBatch(b) = data.payload {
            rows += b.num_rows() as u64;
        }
    }
    Ok(Streamed {
        rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Counts the rows of a JSON array of objects as it streams in, without keeping it.
#[derive(Debug, Default)]
struct JsonRows {
    rows: u64,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Seen the opening `[`.
    started: bool,
}

impl JsonRows {
    fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        for &b in bytes {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    if b == b'{' && self.depth == 1 {
                        self.rows += 1;
                    }
                    self.started = true;
                    self.depth += 1;
                }
                b']' | b'}' => {
                    self.depth = self
                        .depth
                        .checked_sub(1)
                        .context("unbalanced JSON answer")?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the array was closed.
    fn complete(&self) -> bool {
        self.started && self.depth == 0 && !self.in_string
    }
}

/// One `/api/v3/query_sql?format=json` of `sql` on `db`, read to the end; bytes are the JSON.
pub(super) async fn http_json_once(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    sql: &str,
) -> Result<Streamed> {
    let started = Instant::now();
    let mut resp = post_query(client, server, db, sql, "json")
        .await
        .with_context(|| format!("HTTP query {sql:?} on {db}"))?;
    let mut counter = JsonRows::default();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.context("reading the JSON answer")? {
        bytes += chunk.len() as u64;
        counter.feed(&chunk)?;
    }
    ensure!(
        counter.complete(),
        "the JSON answer to {sql:?} was cut short"
    );
    Ok(Streamed {
        rows: counter.rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// `SELECT count(*)` of `table` in `db` over HTTP.
pub(crate) async fn count_rows(
    client: &reqwest::Client,
    server: &Server,
    db: &str,
    table: &str,
) -> Result<u64> {
    let sql = format!("SELECT count(*) AS n FROM \"{table}\"");
    let answer: serde_json::Value = post_query(client, server, db, &sql, "json")
        .await
        .with_context(|| format!("counting {db}.{table}"))?
        .json()
        .await
        .with_context(|| format!("reading the count of {db}.{table}"))?;
    answer
        .get(0)
        .and_then(|row| row.get("n"))
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("count of {db}.{table}: unexpected answer {answer}"))
}

/// Both databases must hold exactly the generated rows of every table.
pub(super) async fn verify_counts(
    client: &reqwest::Client,
    server: &Server,
    table_rows: &BTreeMap<String, u64>,
) -> Result<()> {
    for (table, &want) in table_rows {
        for db in [LP_DB, ARROW_DB] {
            let have = count_rows(client, server, db, table).await?;
            ensure!(
                have == want,
                "{db}.{table} holds {have} rows, {want} were generated"
            );
        }
        eprintln!("  {table}: {want} rows in both {LP_DB} and {ARROW_DB}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rows_are_counted_across_chunks() {
        let answer = br#"[{"a":"x{y}","b":1},{"a":"q\"[{","n":[1,{"z":2}]},{}]"#;
        for cut in 0..answer.len() {
            let mut c = JsonRows::default();
            c.feed(&answer[..cut]).unwrap();
            assert!(!c.complete());
            c.feed(&answer[cut..]).unwrap();
            assert!(c.complete());
            assert_eq!(c.rows, 3);
        }
        let mut empty = JsonRows::default();
        empty.feed(b"[]").unwrap();
        assert!(empty.complete() && empty.rows == 0);
        assert!(JsonRows::default().feed(b"]").is_err());
    }
}

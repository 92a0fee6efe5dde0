//! The TSBS-iot queries on InfluxDB 1.x in InfluxQL (`benches/queries/tsbs_influxql.sql`):
//! where an equivalent exists, its answer is rebuilt into the SQL query's columns (see the
//! file's `-- columns:` lines) and timed over HTTP (`GET /query`, request to last byte, as
//! annals is timed); where none does, the file says why (`-- none:` lines).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::answers::{self, Cell, Rows};
use crate::query::Timing;

/// Longest a single InfluxQL query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

/// Where one output column comes from.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    /// A tag the series is grouped by.
    Tag(String),
    /// A column of the answer (`time` as microseconds).
    Value(String),
    /// A column divided by a tag.
    Div(String, String),
}

/// One InfluxQL query and how to read its answer.
#[derive(Debug, Clone)]
pub(crate) struct InfluxQuery {
    pub(crate) name: String,
    columns: Vec<Column>,
    text: String,
}

/// The queries with an equivalent, and `(name, why not)` for the others.
#[derive(Debug, Clone, Default)]
pub(crate) struct InfluxQueries {
    pub(crate) queries: Vec<InfluxQuery>,
    pub(crate) missing: Vec<(String, String)>,
}

impl InfluxQueries {
    pub(crate) fn get(&self, name: &str) -> Option<&InfluxQuery> {
        self.queries.iter().find(|q| q.name == name)
    }
}

fn parse_column(spec: &str) -> Result<Column> {
    let spec = spec.trim();
    if let Some((a, b)) = spec.split_once('/') {
        let (a, b) = (a.trim(), b.trim());
        let tag = b.strip_prefix('@').context("a divisor must be a @tag")?;
        ensure!(!a.starts_with('@'), "a dividend must be a column");
        return Ok(Column::Div(a.to_owned(), tag.to_owned()));
    }
    ensure!(!spec.is_empty(), "empty column");
    Ok(match spec.strip_prefix('@') {
        Some(tag) => Column::Tag(tag.to_owned()),
        None => Column::Value(spec.to_owned()),
    })
}

/// Reads the file's queries; `$START`/`$END` become `start_ns`/`end_ns`.
pub(crate) fn parse(text: &str, start_ns: i64, end_ns: i64) -> Result<InfluxQueries> {
    let mut out = InfluxQueries::default();
    let mut current: Option<(String, Option<Vec<Column>>, String)> = None;
    let finish = |cur: Option<(String, Option<Vec<Column>>, String)>,
                  out: &mut InfluxQueries|
     -> Result<()> {
        if let Some((name, columns, text)) = cur {
            let columns = columns.with_context(|| format!("{name}: no `-- columns:` line"))?;
            let text = text
                .trim()
                .replace("$START", &start_ns.to_string())
                .replace("$END", &end_ns.to_string());
            ensure!(!text.is_empty(), "{name}: no query");
            out.queries.push(InfluxQuery {
                name,
                columns,
                text,
            });
        }
        Ok(())
    };
    for (no, line) in text.lines().enumerate() {
        let no = no + 1;
        if let Some(rest) = line.strip_prefix("-- none:") {
            let (name, why) = rest
                .split_once(':')
                .with_context(|| format!("line {no}: `-- none: <name>: <why>`"))?;
            out.missing
                .push((name.trim().to_owned(), why.trim().to_owned()));
        } else if let Some(name) = line.strip_prefix("-- name:") {
            finish(current.take(), &mut out)?;
            current = Some((name.trim().to_owned(), None, String::new()));
        } else if let Some(cols) = line.strip_prefix("-- columns:") {
            let (_, columns, _) = current
                .as_mut()
                .with_context(|| format!("line {no}: `-- columns:` before `-- name:`"))?;
            let parsed = cols
                .split(',')
                .map(parse_column)
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("line {no}"))?;
            *columns = Some(parsed);
        } else if line.trim_start().starts_with("--") {
            continue;
        } else if let Some((_, _, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    finish(current, &mut out)?;
    Ok(out)
}

fn value_cell(column: &str, v: &Value) -> Result<Cell> {
    if column == "time" {
        let us = v.as_i64().context("time is not an integer (epoch=u)")?;
        return Ok(Some(answers::ts_cell(us)));
    }
    answers::canon_json(v)
}

/// Rebuilds the answer (`/query` JSON) into `columns`.
fn rows_of(q: &InfluxQuery, body: &Value) -> Result<Rows> {
    let result = &body["results"][0];
    if let Some(err) = result.get("error").or_else(|| body.get("error")) {
        bail!("InfluxDB: {err}");
    }
    let mut rows = Vec::new();
    for series in result["series"].as_array().into_iter().flatten() {
        let tags: BTreeMap<&str, &str> = series["tags"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
            .collect();
        let names: Vec<&str> = series["columns"]
            .as_array()
            .context("series without columns")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let index = |c: &str| {
            names
                .iter()
                .position(|n| *n == c)
                .with_context(|| format!("no column {c} in {names:?}"))
        };
        let tag = |t: &str| -> Result<Cell> {
            let v = tags
                .get(t)
                .with_context(|| format!("no group-by tag {t}"))?;
            Ok(answers::canon_text(v))
        };
        for values in series["values"].as_array().into_iter().flatten() {
            let values = values.as_array().context("values row is not an array")?;
            let row = q
                .columns
                .iter()
                .map(|c| match c {
                    Column::Tag(t) => tag(t),
                    Column::Value(name) => value_cell(name, &values[index(name)?]),
                    Column::Div(name, t) => {
                        let a = values[index(name)?].as_f64();
                        let b = tag(t)?.and_then(|b| b.parse::<f64>().ok());
                        Ok(match (a, b) {
                            (Some(a), Some(b)) => Some((a / b).to_string()),
                            _ => None,
                        })
                    }
                })
                .collect::<Result<Vec<Cell>>>()?;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Runs `q` once to warm up (its answer is returned) and `runs` times more.
pub(crate) async fn run(
    client: &reqwest::Client,
    base_url: &str,
    db: &str,
    q: &InfluxQuery,
    runs: usize,
) -> Result<(Rows, Timing)> {
    let url = format!("{base_url}/query");
    let mut timing = Timing::default();
    let mut rows = Vec::new();
    for run in 0..=runs {
        let started = Instant::now();
        let resp = client
            .get(&url)
            .query(&[("db", db), ("epoch", "u"), ("q", q.text.as_str())])
            .timeout(QUERY_TIMEOUT)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if !status.is_success() {
            bail!("InfluxDB {status}: {}", String::from_utf8_lossy(&body));
        }
        if run == 0 {
            timing.first_ms = ms;
            let json: Value = serde_json::from_slice(&body).context("InfluxDB answer")?;
            rows = rows_of(q, &json)?;
            timing.rows = rows.len() as u64;
        } else {
            timing.ms.push(ms);
        }
    }
    Ok((rows, timing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_file_parses() {
        let text = include_str!("../queries/tsbs_influxql.sql");
        let qs = parse(text, 10, 20).unwrap();
        assert_eq!(qs.queries.len() + qs.missing.len(), 8);
        let q = qs.get("average_load").unwrap();
        assert!(q.text.contains("time >= 10 AND time < 20"), "{}", q.text);
        assert_eq!(
            q.columns[3],
            Column::Div("mean".into(), "load_capacity".into())
        );
    }

    #[test]
    fn answers_are_rebuilt_into_sql_columns() {
        let text = "-- name: a\n-- columns: @fleet, time, mean / @cap, driver\nSELECT 1\n";
        let qs = parse(text, 0, 1).unwrap();
        let body = serde_json::json!({"results": [{"statement_id": 0, "series": [
            {"name": "d", "tags": {"fleet": "East", "cap": "2000"},
             "columns": ["time", "mean", "driver"],
             "values": [[1_451_606_400_000_000i64, 1000.0, null], [1_451_606_410_000_000i64, null, "Seth"]]}
        ]}]});
        let rows = rows_of(&qs.queries[0], &body).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![
                    Some("East".into()),
                    Some(answers::ts_cell(1_451_606_400_000_000)),
                    Some("0.5".into()),
                    None
                ],
                vec![
                    Some("East".into()),
                    Some(answers::ts_cell(1_451_606_410_000_000)),
                    None,
                    Some("Seth".into())
                ],
            ]
        );
        let err = serde_json::json!({"results": [{"statement_id": 0, "error": "boom"}]});
        assert!(rows_of(&qs.queries[0], &err).is_err());
        assert!(
            parse("-- name: a\nSELECT 1\n", 0, 1).is_err(),
            "no columns line"
        );
    }
}

//! SQL over HTTP (`/api/v3/query_sql`) and the `annals query` / `annals shell` commands, against
//! the real binary: every format byte for byte, status codes and messages, read-your-writes,
//! time travel, timeouts and memory limits.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use annals_tests::{receipt_rows, Server};
use arrow::array::{Array, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_annals");

/// Three rows: a null `region` (t1, t2), null `fuel`/`note` (t2), a nanosecond timestamp (t2)
/// and a millisecond one (t3).
const LINES: &str = "\
readings,truck=t1 velocity=12.5,fuel=0.5,note=\"ok\" 1700000000000000000
readings,truck=t2 velocity=3 1700000000000000001
readings,truck=t3,region=west velocity=-1.25,fuel=1 1700000001500000000
";

const SELECT: &str = "SELECT truck, region, velocity, fuel, note, time FROM readings ORDER BY time";

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// Status, Content-Type and body of a response (error statuses included).
fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String, Vec<u8>) {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = r.status();
    let ct = r.header("content-type").unwrap_or("").to_string();
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    (status, ct, body)
}

fn get(s: &Server, params: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut req = agent().get(&s.url("/api/v3/query_sql"));
    for (k, v) in params {
        req = req.query(k, v);
    }
    answer(req.call())
}

fn post_json(s: &Server, body: Value) -> (u16, String, Vec<u8>) {
    answer(agent().post(&s.url("/api/v3/query_sql")).send_json(body))
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// The `error` of a JSON error body.
fn error_of(b: &[u8]) -> String {
    let v: Value = serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", text(b)));
    v["error"].as_str().unwrap_or_default().to_string()
}

fn write(s: &Server, db: &str, lines: &str) -> Value {
    let r = agent()
        .post(&s.url(&format!("/api/v3/write_lp?db={db}&receipt=true")))
        .send_string(lines)
        .unwrap();
    assert_eq!(r.status(), 200);
    r.into_json().unwrap()
}

fn start(args: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(BIN.as_ref(), &dir.path().join("data"), args).unwrap();
    (dir, s)
}

#[test]
fn every_format_returns_the_rows_exactly() {
    let (_d, s) = start(&[]);
    let receipt = write(&s, "fleet", LINES);

    // json (GET, the default format): nulls left out, times as InfluxDB 3 prints them.
    let (code, ct, body) = get(&s, &[("db", "fleet"), ("q", SELECT)]);
    assert_eq!(code, 200, "{}", text(&body));
    assert_eq!(ct, "application/json");
    let expected = json!([
        {"truck": "t1", "velocity": 12.5, "fuel": 0.5, "note": "ok", "time": "2023-11-14T22:13:20"},
        {"truck": "t2", "velocity": 3.0, "time": "2023-11-14T22:13:20.000000001"},
        {"truck": "t3", "region": "west", "velocity": -1.25, "fuel": 1.0, "time": "2023-11-14T22:13:21.500"},
    ]);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, expected, "{}", text(&body));
    assert_eq!(
        text(&body),
        r#"[{"truck":"t1","velocity":12.5,"fuel":0.5,"note":"ok","time":"2023-11-14T22:13:20"},{"truck":"t2","velocity":3.0,"time":"2023-11-14T22:13:20.000000001"},{"truck":"t3","region":"west","velocity":-1.25,"fuel":1.0,"time":"2023-11-14T22:13:21.500"}]"#
    );

    // The same through a JSON body (InfluxDB 3 clients) and through a form body.
    let (code, _, body2) = post_json(&s, json!({"db": "fleet", "q": SELECT, "format": "json"}));
    assert_eq!((code, &body2), (200, &body));
    let (code, _, body3) = answer(
        agent()
            .post(&s.url("/api/v3/query_sql"))
            .send_form(&[("db", "fleet"), ("q", SELECT)]),
    );
    assert_eq!((code, &body3), (200, &body));
    // Body values win over the query string.
    let (code, _, body4) = answer(
        agent()
            .post(&s.url("/api/v3/query_sql?db=nope&format=csv"))
            .send_json(json!({"db": "fleet", "q": SELECT, "format": "json"})),
    );
    assert_eq!((code, &body4), (200, &body));

    // jsonl: one object per line.
    let (code, ct, body) = get(&s, &[("db", "fleet"), ("q", SELECT), ("format", "jsonl")]);
    assert_eq!((code, ct.as_str()), (200, "application/jsonl"));
    let lines: Vec<Value> = text(&body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(Value::Array(lines), expected);
    assert!(text(&body).ends_with("}\n"));

    // csv: a header row; a null is an empty field.
    let (code, ct, body) = get(&s, &[("db", "fleet"), ("q", SELECT), ("format", "csv")]);
    assert_eq!((code, ct.as_str()), (200, "text/csv; charset=utf-8"));
    assert_eq!(
        text(&body),
        "truck,region,velocity,fuel,note,time\n\
         t1,,12.5,0.5,ok,2023-11-14T22:13:20\n\
         t2,,3.0,,,2023-11-14T22:13:20.000000001\n\
         t3,west,-1.25,1.0,,2023-11-14T22:13:21.500\n"
    );
    // An empty result still has its header (csv) and is an empty array (json).
    let empty = "SELECT truck, velocity FROM readings WHERE velocity > 100";
    let (_, _, body) = get(&s, &[("db", "fleet"), ("q", empty), ("format", "csv")]);
    assert_eq!(text(&body), "truck,velocity\n");
    let (_, _, body) = get(&s, &[("db", "fleet"), ("q", empty)]);
    assert_eq!(text(&body), "[]");

    // parquet: a whole file, read back with the parquet crate.
    let (code, ct, body) = get(&s, &[("db", "fleet"), ("q", SELECT), ("format", "parquet")]);
    assert_eq!((code, ct.as_str()), (200, "application/vnd.apache.parquet"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(body))
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.num_rows(), 3);
    let names: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["truck", "region", "velocity", "fuel", "note", "time"]
    );
    assert_eq!(
        strings(&batch, "truck"),
        owned(&[Some("t1"), Some("t2"), Some("t3")])
    );
    assert_eq!(
        strings(&batch, "region"),
        owned(&[None, None, Some("west")])
    );
    assert_eq!(strings(&batch, "note"), owned(&[Some("ok"), None, None]));
    let fuel = batch
        .column_by_name("fuel")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(
        fuel.iter().collect::<Vec<_>>(),
        [Some(0.5), None, Some(1.0)]
    );
    let time = batch
        .column_by_name("time")
        .unwrap()
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .unwrap();
    assert_eq!(
        time.values().to_vec(),
        [
            1700000000000000000,
            1700000000000000001,
            1700000001500000000
        ]
    );

    // pretty: arrow's table.
    let (code, ct, body) = get(
        &s,
        &[
            ("db", "fleet"),
            ("q", "SELECT truck, velocity FROM readings ORDER BY truck"),
            ("format", "pretty"),
        ],
    );
    assert_eq!((code, ct.as_str()), (200, "text/plain; charset=utf-8"));
    assert_eq!(
        text(&body),
        "+-------+----------+\n\
         | truck | velocity |\n\
         +-------+----------+\n\
         | t1    | 12.5     |\n\
         | t2    | 3.0      |\n\
         | t3    | -1.25    |\n\
         +-------+----------+\n"
    );

    // ledger(): each row's tx_id is the one its receipt gave, as lowercase hex.
    let (code, _, body) = get(
        &s,
        &[
            ("db", "fleet"),
            ("q", "SELECT _tx_id FROM ledger('readings') ORDER BY time"),
        ],
    );
    assert_eq!(code, 200, "{}", text(&body));
    let got: Vec<String> = serde_json::from_slice::<Vec<Value>>(&body)
        .unwrap()
        .iter()
        .map(|o| o["_tx_id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = receipt_rows(&receipt).into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, want);
    assert!(got.iter().all(|t| t.len() == 64 && t == &t.to_lowercase()));

    // Several statements: the last one's result.
    let (code, _, body) = get(
        &s,
        &[
            ("db", "fleet"),
            (
                "q",
                "SET datafusion.execution.batch_size = 2; SELECT count(*) AS n FROM readings",
            ),
        ],
    );
    assert_eq!((code, text(&body).as_str()), (200, r#"[{"n":3}]"#));
}

fn owned(v: &[Option<&str>]) -> Vec<Option<String>> {
    v.iter().map(|s| s.map(str::to_string)).collect()
}

/// A string column (plain or dictionary-encoded) as options.
fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = b.column_by_name(name).unwrap();
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
    let col = col.as_any().downcast_ref::<StringArray>().unwrap();
    col.iter().map(|v| v.map(str::to_string)).collect()
}

#[test]
fn time_travel_by_checkpoint_epoch() {
    let (_d, s) = start(&[]);
    write(&s, "fleet", LINES);
    let r: Value = agent()
        .post(&s.url("/api/v3/flush"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let epoch = r["checkpoint_epoch"].as_u64().unwrap();
    write(
        &s,
        "fleet",
        "readings,truck=t4 velocity=1 1700000002000000000\n",
    );
    let count = "SELECT count(*) AS n FROM readings";
    let (_, _, now) = get(&s, &[("db", "fleet"), ("q", count)]);
    assert_eq!(text(&now), r#"[{"n":4}]"#);
    let e = epoch.to_string();
    let (code, _, then) = get(&s, &[("db", "fleet"), ("q", count), ("as_of_epoch", &e)]);
    assert_eq!((code, text(&then).as_str()), (200, r#"[{"n":3}]"#));
    let (code, _, then) = post_json(&s, json!({"db": "fleet", "q": count, "as_of_epoch": epoch}));
    assert_eq!((code, text(&then).as_str()), (200, r#"[{"n":3}]"#));
}

#[test]
fn the_last_value_cache_is_seeded_in_the_background_after_a_restart() {
    let (_d, mut s) = start(&[]);
    write(&s, "fleet", LINES);
    s.restart().unwrap();
    // Seeded without any query asking: /health lists the table until then.
    let started = Instant::now();
    loop {
        let h: Value = agent()
            .get(&s.url("/health"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        let cold = h["last_values_cold"]
            .as_array()
            .expect("last_values_cold")
            .clone();
        if cold.is_empty() {
            break;
        }
        assert_eq!(cold, vec![json!("fleet/readings")]);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still cold: {h}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Newest row per tag now comes from the cache, not a scan, with the same answer.
    let newest = "SELECT truck, velocity, time FROM (SELECT truck, velocity, time, \
                  row_number() OVER (PARTITION BY truck ORDER BY time DESC) AS rn \
                  FROM readings) WHERE rn = 1 ORDER BY truck";
    let (code, _, plan) = get(
        &s,
        &[
            ("db", "fleet"),
            ("q", &format!("EXPLAIN {newest}")),
            ("format", "csv"),
        ],
    );
    assert_eq!(code, 200, "{}", text(&plan));
    assert!(!text(&plan).contains("LedgerScanExec"), "{}", text(&plan));
    let (_, _, rows) = get(&s, &[("db", "fleet"), ("q", newest), ("format", "csv")]);
    assert_eq!(
        text(&rows),
        "truck,velocity,time\n\
         t1,12.5,2023-11-14T22:13:20\n\
         t2,3.0,2023-11-14T22:13:20.000000001\n\
         t3,-1.25,2023-11-14T22:13:21.500\n"
    );
}

#[test]
fn errors_have_their_status_and_message() {
    let (_d, s) = start(&[]);
    write(&s, "fleet", LINES);
    // (parameters, status, part of the message)
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case] = &[
        // Bad SQL: DataFusion's parser message.
        (&[("db", "fleet"), ("q", "SELEKT 1")], 400, "SELEKT"),
        (
            &[("db", "fleet"), ("q", "SELECT * FROM nosuch")],
            400,
            "nosuch",
        ),
        (
            &[("db", "fleet"), ("q", "SELECT nosuchcol FROM readings")],
            400,
            "nosuchcol",
        ),
        // Nothing writes through SQL.
        (&[("db", "fleet"), ("q", "CREATE TABLE x (a INT)")], 400, ""),
        (
            &[("db", "nosuchdb"), ("q", "SELECT 1")],
            404,
            "database 'nosuchdb' not found",
        ),
        (&[("db", "fleet")], 400, "missing parameter q"),
        (&[("db", "fleet"), ("q", "  ")], 400, "missing parameter q"),
        (&[("q", "SELECT 1")], 400, "missing parameter db"),
        (
            &[("db", "fleet"), ("q", "SELECT 1"), ("format", "xml")],
            400,
            "unknown format \"xml\"",
        ),
        (
            &[("db", "fleet"), ("q", "SELECT 1"), ("as_of_epoch", "-1")],
            400,
            "as_of_epoch",
        ),
        // A failure while running (before the first row): its own status, not a cut 200.
        (
            &[
                ("db", "fleet"),
                ("q", "SELECT CAST(note AS INT) FROM readings"),
            ],
            500,
            "ok",
        ),
    ];
    for (params, status, message) in cases {
        let (code, ct, body) = get(&s, params);
        let e = error_of(&body);
        assert_eq!(code, *status, "{params:?}: {e}");
        assert_eq!(ct, "application/json", "{params:?}");
        assert!(!e.is_empty(), "{params:?}");
        assert!(e.contains(message), "{params:?}: {e}");
    }
    // JSON bodies: params are refused (not supported yet), malformed JSON is a 400.
    let (code, _, body) = post_json(
        &s,
        json!({"db": "fleet", "q": "SELECT $a", "params": {"a": 1}}),
    );
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("params"));
    let (code, _, body) = answer(
        agent()
            .post(&s.url("/api/v3/query_sql"))
            .set("content-type", "application/json")
            .send_string("{\"db\": "),
    );
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("invalid JSON body"));
    let (code, _, body) = answer(
        agent()
            .post(&s.url("/api/v3/query_sql?db=fleet"))
            .set("content-type", "text/plain")
            .send_string("SELECT 1"),
    );
    assert_eq!(code, 415);
    assert!(error_of(&body).contains("Content-Type"));
}

#[test]
fn an_acknowledged_row_is_visible_to_the_next_query() {
    let (_d, s) = start(&[]);
    for i in 0..40u64 {
        let r = write(
            &s,
            "rw",
            &format!(
                "m,host=h{} v={i}i {}\n",
                i % 3,
                1_700_000_000_000_000_000 + i
            ),
        );
        let tx = &receipt_rows(&r)[0].1;
        let (code, _, body) = get(
            &s,
            &[
                ("db", "rw"),
                ("q", "SELECT count(*) AS n, max(v) AS top FROM m"),
            ],
        );
        assert_eq!(code, 200);
        assert_eq!(text(&body), format!(r#"[{{"n":{},"top":{i}}}]"#, i + 1));
        let q = format!("SELECT v FROM ledger('m') WHERE _tx_id = '{tx}'");
        let (_, _, body) = get(&s, &[("db", "rw"), ("q", &q)]);
        assert_eq!(text(&body), format!(r#"[{{"v":{i}}}]"#));
    }
}

#[test]
fn a_query_past_the_timeout_gets_504_and_the_server_keeps_serving() {
    let (_d, s) = start(&["--query-timeout", "1s"]);
    write(&s, "fleet", LINES);
    let t = Instant::now();
    let (code, _, body) = get(
        &s,
        &[
            ("db", "fleet"),
            (
                "q",
                "SELECT count(*) FROM generate_series(1, 1000000) a \
                 CROSS JOIN generate_series(1, 1000000) b",
            ),
        ],
    );
    assert_eq!(code, 504, "{}", text(&body));
    assert!(error_of(&body).contains("timeout"), "{}", text(&body));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // The server still answers queries and writes.
    write(
        &s,
        "fleet",
        "readings,truck=t9 velocity=9 1700000009000000000\n",
    );
    let (code, _, body) = get(
        &s,
        &[("db", "fleet"), ("q", "SELECT count(*) AS n FROM readings")],
    );
    assert_eq!((code, text(&body).as_str()), (200, r#"[{"n":4}]"#));
    // The cancelled query is listed as such.
    let (_, _, body) = get(
        &s,
        &[("db", "system"), ("q", "SELECT state FROM queries WHERE query LIKE '%CROSS JOIN%' AND query NOT LIKE '%queries%'")],
    );
    assert!(text(&body).contains("timed"), "{}", text(&body));
}

#[test]
fn memory_and_pretty_limits_are_enforced() {
    let (_d, s) = start(&["--query-memory", "1MiB", "--query-pretty-max", "2KiB"]);
    write(&s, "fleet", LINES);
    let (code, _, body) = get(
        &s,
        &[
            ("db", "fleet"),
            (
                "q",
                "SELECT count(*) FROM generate_series(1, 2000000) a \
                 JOIN generate_series(1, 2000000) b ON a.value = b.value",
            ),
        ],
    );
    assert_eq!(code, 503, "{}", text(&body));
    assert!(!error_of(&body).is_empty());
    // Small queries still run.
    let (code, _, _) = get(
        &s,
        &[("db", "fleet"), ("q", "SELECT count(*) FROM readings")],
    );
    assert_eq!(code, 200);
    // A pretty table is built in memory: refused past its limit; other formats stream.
    let many = "SELECT value FROM generate_series(1, 1000)";
    let (code, _, body) = get(&s, &[("db", "fleet"), ("q", many), ("format", "pretty")]);
    assert_eq!(code, 400);
    assert!(
        error_of(&body).contains("2048-byte limit of format=pretty"),
        "{}",
        text(&body)
    );
    let (code, _, body) = get(&s, &[("db", "fleet"), ("q", many), ("format", "csv")]);
    assert_eq!(code, 200);
    assert_eq!(text(&body).lines().count(), 1001);
    let (code, _, body) = get(
        &s,
        &[
            ("db", "fleet"),
            ("q", "SELECT value FROM generate_series(1, 3)"),
            ("format", "pretty"),
        ],
    );
    assert_eq!(code, 200);
    assert_eq!(
        text(&body),
        "+-------+\n| value |\n+-------+\n| 1     |\n| 2     |\n| 3     |\n+-------+\n"
    );
}

#[test]
fn a_failure_while_running_gets_its_status_or_aborts_the_response() {
    let (_d, s) = start(&[]);
    write(&s, "fleet", LINES);
    // Fails on the row with value `bad`, after `batch_size`-row batches before it went out.
    // One partition: with two, a round-robin repartition lets the failing batch be computed
    // (and its error delivered) while earlier batches are still waiting to be sent.
    let failing = |rows: u64, bad: u64| {
        format!(
            "SET datafusion.execution.batch_size = 100; \
             SET datafusion.execution.target_partitions = 1; \
             SELECT CAST(CASE WHEN value < {bad} THEN '1' ELSE 'x' END AS INT) AS v \
             FROM generate_series(1, {rows})"
        )
    };
    // A failure within the first 64 KiB of the answer: its status and message.
    for format in ["json", "jsonl", "csv", "parquet"] {
        let q = failing(1000, 500);
        let (code, ct, body) = get(&s, &[("db", "fleet"), ("q", &q), ("format", format)]);
        assert_eq!((code, ct.as_str()), (500, "application/json"), "{format}");
        assert!(
            error_of(&body).contains("Cannot cast string 'x'"),
            "{}",
            text(&body)
        );
    }
    // Later (here 100 KB of CSV, 400 KB of JSON in): the response has started (200) and is
    // cut, never ended as if whole.
    for format in ["json", "jsonl", "csv"] {
        let q = failing(100_000, 50_000);
        let r = agent()
            .get(&s.url("/api/v3/query_sql"))
            .query("db", "fleet")
            .query("q", &q)
            .query("format", format)
            .call()
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(r.status(), 200, "{format}");
        let mut body = Vec::new();
        let read = r.into_reader().read_to_end(&mut body);
        assert!(read.is_err(), "{format}: a cut result read as whole");
        assert!(body.len() >= 64 << 10, "{format}: {}", body.len());
    }
    // The server goes on.
    let (code, _, _) = get(&s, &[("db", "fleet"), ("q", "SELECT 1")]);
    assert_eq!(code, 200);
}

/// Runs the binary with `args` (and `stdin`), returning (success, stdout, stderr).
fn annals(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> (bool, Vec<u8>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("ANNALS_DB")
        .env_remove("ANNALS_HOST")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn annals_query_prints_tables_csv_and_errors() {
    let (d, s) = start(&[]);
    write(&s, "fleet", LINES);
    let host = s.url("");
    let sql = "SELECT truck, velocity FROM readings ORDER BY truck";
    let (ok, out, err) = annals(&["query", sql, "--db", "fleet", "--host", &host], None, &[]);
    assert!(ok, "{err}");
    assert_eq!(
        text(&out),
        "+-------+----------+\n\
         | truck | velocity |\n\
         +-------+----------+\n\
         | t1    | 12.5     |\n\
         | t2    | 3.0      |\n\
         | t3    | -1.25    |\n\
         +-------+----------+\n"
    );
    let (ok, out, err) = annals(
        &[
            "query", sql, "--db", "fleet", "--host", &host, "--format", "csv",
        ],
        None,
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(text(&out), "truck,velocity\nt1,12.5\nt2,3.0\nt3,-1.25\n");
    // Without --db tables are named db.table; the host may come from ANNALS_HOST.
    let (ok, out, err) = annals(
        &[
            "query",
            "SELECT count(*) AS n FROM fleet.readings",
            "--format",
            "jsonl",
        ],
        None,
        &[("ANNALS_HOST", &host)],
    );
    assert!(ok, "{err}");
    assert_eq!(text(&out), "{\"n\":3}\n");
    // Parquet into a file.
    let file = d.path().join("out.parquet");
    let path = file.to_str().unwrap();
    let (ok, out, err) = annals(
        &[
            "query", sql, "--db", "fleet", "--host", &host, "--format", "parquet", "--output", path,
        ],
        None,
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.is_empty());
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
    // Failures: the server's message, a non-zero exit, nothing on stdout.
    let (ok, out, err) = annals(
        &[
            "query",
            "SELECT nosuchcol FROM readings",
            "--db",
            "fleet",
            "--host",
            &host,
        ],
        None,
        &[],
    );
    assert!(!ok);
    assert!(out.is_empty());
    assert!(
        err.contains("nosuchcol") && err.contains("HTTP 400"),
        "{err}"
    );
    let (ok, _, err) = annals(
        &["query", "SELECT 1", "--db", "nosuchdb", "--host", &host],
        None,
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("database 'nosuchdb' not found") && err.contains("HTTP 404"),
        "{err}"
    );
    // No server there.
    let dead = format!("http://127.0.0.1:{}", annals_tests::free_port());
    let (ok, _, err) = annals(&["query", "SELECT 1", "--host", &dead], None, &[]);
    assert!(!ok);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn annals_shell_runs_statements_from_standard_input() {
    let (d, s) = start(&[]);
    write(&s, "fleet", LINES);
    let host = s.url("");
    let history = d.path().join("history");
    let script = "\\d\n\
                  SELECT truck\n  FROM readings\n  WHERE truck = 't2';\n\
                  \\d readings\n\
                  SELECT nosuchcol FROM readings;\n\
                  SELECT 'a;b' AS s;\n\
                  \\q\n\
                  SELECT 'not reached';\n";
    let (ok, out, err) = annals(
        &["shell", "--db", "fleet", "--host", &host],
        Some(script),
        &[("ANNALS_HISTORY", history.to_str().unwrap())],
    );
    let out = text(&out);
    // One statement failed, so a script exits non-zero; the others ran.
    assert!(!ok);
    assert!(err.contains("error:") && err.contains("nosuchcol"), "{err}");
    assert!(out.contains("| readings   | 6       |"), "{out}");
    assert!(out.contains("| t2    |"), "{out}");
    assert!(!out.contains("| t1"), "{out}");
    assert!(out.contains("| velocity    | f64  | Float64 "), "{out}");
    assert!(out.contains("| a;b |"), "{out}");
    assert!(!out.contains("not reached"), "{out}");
    // History keeps each statement whole.
    let h = std::fs::read_to_string(&history).unwrap();
    assert!(h.contains("SELECT 'a;b' AS s;"), "{h}");
    assert!(h.contains("FROM readings"), "{h}");
    // A script without failures exits 0; \c switches database.
    let (ok, out, err) = annals(
        &["shell", "--host", &host],
        Some("\\c fleet\nSELECT count(*) AS n FROM readings;\n"),
        &[("ANNALS_HISTORY", history.to_str().unwrap())],
    );
    assert!(ok, "{err}");
    assert!(text(&out).contains("| 3 |"), "{}", text(&out));
}

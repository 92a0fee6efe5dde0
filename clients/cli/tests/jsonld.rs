//! JSON-LD against the real binary: tables' contexts over HTTP (`/api/v3/tables/{db}/{table}/
//! context`, `/api/v3/contexts/{hash}`), their hashes in block headers, and `format=jsonld`
//! query results expanded by a real JSON-LD processor.
//!
//! `exported_json_ld_expands_to_sosa_observations_in_pyld` needs `python3` with `pyld`
//! (`python3 -m pip install pyld`); without it the test fails and says so. `PYTHON` names
//! another interpreter.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use annals_engine::jsonld::{context_hash, default_context};
use annals_format::block::BlockHeader;
use annals_format::hash::to_hex;
use annals_tests::Server;
use common::{agent, start, BIN};
use serde_json::{json, Value};

const INSTALL_HINT: &str = "python3 -m pip install pyld";

const FLAGS: &[&str] = &common::manual_flags("1");

const CTX_A: &str = r#"{"@context": {"sosa": "http://www.w3.org/ns/sosa/", "xsd": "http://www.w3.org/2001/XMLSchema#", "Observation": "sosa:Observation", "time": {"@id": "sosa:resultTime", "@type": "xsd:dateTime"}, "sensor": {"@id": "sosa:madeBySensor", "@type": "@id"}, "property": {"@id": "sosa:observedProperty", "@type": "@id"}, "result": "sosa:hasSimpleResult", "tx_id": "urn:annals:txId", "table": "urn:example:table"}}
"#;
const CTX_B: &str =
    r#"{"@context": ["https://example.org/other", {"result": "urn:example:value"}]}"#;

/// Status, headers we look at (content-type, annals-context-hash) and body.
struct Answer {
    status: u16,
    content_type: String,
    hash: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = r.status();
    let content_type = r.header("content-type").unwrap_or("").to_string();
    let hash = r.header("annals-context-hash").map(str::to_string);
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    Answer {
        status,
        content_type,
        hash,
        body,
    }
}

fn get(s: &Server, path: &str) -> Answer {
    answer(agent().get(&s.url(path)).call())
}

fn put(s: &Server, path: &str, body: &str) -> Answer {
    answer(
        agent()
            .put(&s.url(path))
            .set("content-type", "application/ld+json")
            .send_string(body),
    )
}

fn query(s: &Server, q: &str, format: &str) -> Answer {
    answer(
        agent()
            .get(&s.url("/api/v3/query_sql"))
            .query("db", "fleet")
            .query("q", q)
            .query("format", format)
            .call(),
    )
}

/// Writes lines to db `fleet`; the receipt's tx_ids in line order.
fn write(s: &Server, lines: &str) -> Vec<String> {
    common::write_receipt(s, lines)
        .iter()
        .map(|e| e["tx_id"].as_str().unwrap().to_string())
        .collect()
}

fn flush(s: &Server) {
    let r = agent().post(&s.url("/api/v3/flush")).call().unwrap();
    assert_eq!(r.status(), 200);
}

/// The `context` field of the header of the block holding `tx_id` (from its proof).
fn block_context(s: &Server, tx_id: &str) -> String {
    let a = get(s, &format!("/api/v3/ledger/proof?tx_id={tx_id}"));
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    let header = hex::decode(v["block"]["header_hex"].as_str().unwrap()).unwrap();
    to_hex(&BlockHeader::decode(&header).unwrap().context)
}

fn lines(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "readings,truck=t{} velocity={}.5,load={}i 17000000000{:08}\n",
                i % 2,
                i,
                i,
                i
            )
        })
        .collect()
}

#[test]
fn table_contexts_are_set_fetched_by_hash_and_named_by_blocks() {
    let (_d, mut s) = start(FLAGS);
    let path = "/api/v3/tables/fleet/readings/context";
    let hash_a = to_hex(&context_hash(CTX_A.as_bytes()));
    let hash_b = to_hex(&context_hash(CTX_B.as_bytes()));
    let hash_default = to_hex(&context_hash(default_context().as_bytes()));

    // No table yet.
    let a = get(&s, path);
    assert_eq!(a.status, 404, "{}", a.text());
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("does not exist"));

    // Invalid documents: 400 with the reason, nothing created.
    for (doc, why) in [
        ("", "empty"),
        ("{", "not valid JSON"),
        (r#"{"context": {}}"#, "no \"@context\""),
        (r#"{"@context": 7}"#, "\"@context\" must be"),
        (r#"{"@context": {}, "@graph": []}"#, "only have the member"),
        (r#"{"@context": {"time": 1}}"#, "term \"time\""),
    ] {
        let a = put(&s, path, doc);
        assert_eq!(a.status, 400, "{doc}: {}", a.text());
        let msg = a.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(why), "{doc}: {msg}");
    }
    let big = format!(r#"{{"@context": {{"x": "{}"}}}}"#, "a".repeat(70_000));
    let a = put(&s, path, &big);
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(a.text().contains("65536"), "{}", a.text());
    let a = put(&s, "/api/v3/tables/bad%20db/readings/context", CTX_A);
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(get(&s, path).status, 404, "refused PUTs create nothing");

    // A table that does not exist yet gets its context before its first row.
    let a = put(&s, path, CTX_A);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"table": "fleet/readings", "context_hash": hash_a})
    );
    let a = get(&s, path);
    assert_eq!(
        (a.status, a.content_type.as_str(), a.hash.as_deref()),
        (200, "application/ld+json", Some(hash_a.as_str()))
    );
    assert_eq!(a.body, CTX_A.as_bytes(), "exactly the bytes sent");

    // Blocks sealed now carry H(CTX_A).
    let first = write(&s, &lines(0, 4));
    flush(&s);
    assert_eq!(block_context(&s, &first[0]), hash_a);

    // A new context: the open block (2 rows) and later ones get it; block 0 keeps CTX_A.
    let second = write(&s, &lines(4, 2));
    assert_eq!(put(&s, path, CTX_B).status, 200);
    let third = write(&s, &lines(6, 2));
    flush(&s);
    assert_eq!(block_context(&s, &first[3]), hash_a);
    assert_eq!(block_context(&s, &second[0]), hash_b);
    assert_eq!(block_context(&s, &third[1]), hash_b);

    // Every context is fetched by its hash, the replaced one included.
    for (h, doc) in [
        (&hash_a, CTX_A),
        (&hash_b, CTX_B),
        (&hash_default, default_context()),
    ] {
        let a = get(&s, &format!("/api/v3/contexts/{h}"));
        assert_eq!(a.status, 200, "{h}: {}", a.text());
        assert_eq!(a.body, doc.as_bytes());
        assert_eq!(a.hash.as_deref(), Some(h.as_str()));
        assert_eq!(to_hex(&context_hash(&a.body)), *h);
    }
    assert_eq!(
        get(&s, &format!("/api/v3/contexts/{}", "0".repeat(64))).status,
        404
    );
    assert_eq!(get(&s, "/api/v3/contexts/xyz").status, 400);

    // A table created by a write has the default context.
    write(&s, "other,k=v f=1 1700000000000000000\n");
    let a = get(&s, "/api/v3/tables/fleet/other/context");
    assert_eq!(a.hash.as_deref(), Some(hash_default.as_str()));
    assert_eq!(a.body, default_context().as_bytes());

    // A restart keeps the context; audit resolves every block's context.
    s.restart().unwrap();
    let a = get(&s, path);
    assert_eq!((a.status, a.hash.as_deref()), (200, Some(hash_b.as_str())));
    assert_eq!(a.body, CTX_B.as_bytes());
    s.stop().unwrap();
    let audit = Command::new(BIN)
        .args(["audit", "--data-dir"])
        .arg(&s.data_dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "audit failed:\n{out}");
    assert!(out.contains("contexts 3"), "{out}");
}

/// The JSON-LD export of `q`, checked as JSON: the context, one observation per non-null value,
/// every row's tx_id.
#[test]
fn query_results_export_as_json_ld_observations() {
    let (_d, s) = start(FLAGS);
    let tx = write(
        &s,
        "readings,truck=t1,fleet=East velocity=12.5,load=3i,ok=true,note=\"a b\" 1700000000000000000\n\
         readings,truck=t2 velocity=3 1700000000000000001\n",
    );
    let q = "SELECT * FROM ledger('readings') ORDER BY time";
    let a = query(&s, q, "jsonld");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.content_type, "application/ld+json");
    let hash_default = to_hex(&context_hash(default_context().as_bytes()));
    assert_eq!(a.hash.as_deref(), Some(hash_default.as_str()));
    // The stored context document opens the answer byte for byte.
    let ctx = default_context();
    assert!(
        a.body.starts_with(&ctx.as_bytes()[..ctx.len() - 1]),
        "{}",
        a.text()
    );
    let v = a.json();
    let ctx_value: Value = serde_json::from_str(ctx).unwrap();
    assert_eq!(v["@context"], ctx_value["@context"]);
    let graph = v["@graph"].as_array().unwrap();
    assert_eq!(graph.len(), 5, "4 values in row 1, 1 in row 2: {v:#}");
    let by_prop = |p: &str| {
        graph
            .iter()
            .find(|n| n["property"] == format!("urn:annals:property:fleet/readings/{p}"))
            .unwrap_or_else(|| panic!("no {p}: {v:#}"))
            .clone()
    };
    assert_eq!(
        by_prop("velocity"),
        json!({
            "@id": format!("urn:annals:tx:{}#velocity", tx[0]),
            "@type": "Observation",
            "tx_id": tx[0],
            "table": "fleet/readings",
            "time": "2023-11-14T22:13:20.000000000Z",
            "sensor": "urn:annals:sensor:fleet/readings/fleet=East,truck=t1",
            "property": "urn:annals:property:fleet/readings/velocity",
            "result": 12.5
        })
    );
    assert_eq!(by_prop("load")["result"], json!(3));
    assert_eq!(by_prop("ok")["result"], json!(true));
    assert_eq!(by_prop("note")["result"], json!("a b"));
    assert_eq!(graph[4]["tx_id"], json!(tx[1]));
    assert_eq!(graph[4]["time"], json!("2023-11-14T22:13:20.000000001Z"));
    assert_eq!(
        graph[4]["sensor"],
        json!("urn:annals:sensor:fleet/readings/truck=t2")
    );

    // Without _tx_id: 400 naming the way out.
    for q in [
        "SELECT * FROM readings",
        "SELECT truck, avg(velocity) FROM ledger('readings') GROUP BY truck",
    ] {
        let a = query(&s, q, "jsonld");
        assert_eq!(a.status, 400, "{q}: {}", a.text());
        let msg = a.json()["error"].as_str().unwrap().to_string();
        assert!(
            msg.contains("ledger('readings')") && msg.contains("_tx_id"),
            "{msg}"
        );
    }
    // An empty result is still a JSON-LD document.
    let a = query(
        &s,
        "SELECT * FROM ledger('readings') WHERE truck = 'none'",
        "jsonld",
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["@graph"], json!([]));

    // The table's own context once it has one.
    let a = put(&s, "/api/v3/tables/fleet/readings/context", CTX_A);
    assert_eq!(a.status, 200, "{}", a.text());
    let a = query(&s, q, "jsonld");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.hash.as_deref(),
        Some(to_hex(&context_hash(CTX_A.as_bytes())).as_str())
    );
    let trimmed = CTX_A.trim_end();
    assert!(a.body.starts_with(&trimmed.as_bytes()[..trimmed.len() - 1]));
    assert_eq!(a.json()["@graph"].as_array().unwrap().len(), 5);
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fails, saying what to install, when python3 or pyld is missing.
fn check_pyld() {
    let py = python();
    match Command::new(&py)
        .args(["-c", "import pyld; from pyld import jsonld"])
        .output()
    {
        Err(e) => panic!(
            "cannot run `{py}` ({e}): this test expands the JSON-LD export with pyld and needs \
             Python 3 with it: install Python 3, then `{INSTALL_HINT}`"
        ),
        Ok(o) if !o.status.success() => panic!(
            "`{py} -c \"import pyld\"` failed: this test needs the JSON-LD processor pyld; \
             install it with `{INSTALL_HINT}`.\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

#[test]
fn exported_json_ld_expands_to_sosa_observations_in_pyld() {
    check_pyld();
    let (d, s) = start(FLAGS);
    let mut tx = write(&s, &lines(0, 6));
    tx.extend(write(
        &s,
        "readings,truck=t9,site=a\\ b n=18446744073709551615u,ok=false,note=\"x\" 1700000000000000009\n",
    ));
    flush(&s);
    let a = query(
        &s,
        "SELECT time, truck, site, velocity, load, n, ok, note, _tx_id, _height FROM ledger('readings')",
        "jsonld",
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let export = d.path().join("export.jsonld");
    std::fs::write(&export, &a.body).unwrap();
    // 6 rows with velocity and load, 1 row with n, ok and note.
    let expected = d.path().join("expected.json");
    std::fs::write(
        &expected,
        json!({"tx_ids": tx, "observations": 6 * 2 + 3}).to_string(),
    )
    .unwrap();
    let script = Path::new(&common::package_dir()).join("tests/jsonld_pyld.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&export)
        .arg(&expected)
        .output()
        .unwrap_or_else(|e| panic!("running {} (needs `{INSTALL_HINT}`): {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["observations"], json!(15));
    assert_eq!(summary["tx_ids"], json!(7));
    let sensors = summary["sensors"].as_array().unwrap();
    assert!(
        sensors.contains(&json!(
            "urn:annals:sensor:fleet/readings/site=a%20b,truck=t9"
        )),
        "{summary}"
    );
}

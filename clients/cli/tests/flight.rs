//! Arrow Flight SQL against the real binary, with real clients: pyarrow.flight (Flight SQL
//! statements, the InfluxDB 3 ticket, DoPut with receipts), ADBC (`adbc_driver_flightsql`:
//! browsing, queries, prepared statements, bulk ingest), DuckDB over rows fetched with ADBC,
//! and `influxdb3-python` through gRPC on the HTTP port; then the same with tokens.
//!
//! The clients run in `flight_clients.py` and need `python3` with pyarrow,
//! adbc-driver-flightsql, adbc-driver-manager, duckdb and influxdb3-python (`INSTALL_HINT`);
//! without them the tests fail and say so. `PYTHON` names another interpreter.

mod common;

use std::path::Path;
use std::process::Command;

use annals_tests::{free_port, Server};
use common::{agent, BIN};
use serde_json::{json, Value};

const INSTALL_HINT: &str = "python3 -m pip install pyarrow adbc-driver-flightsql adbc-driver-manager duckdb influxdb3-python";

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fails, saying what to install, when python3 or a client library is missing.
fn check_clients() {
    let py = python();
    let imports = "import pyarrow.flight, adbc_driver_flightsql.dbapi, duckdb, influxdb_client_3";
    match Command::new(&py).args(["-c", imports]).output() {
        Err(e) => panic!(
            "cannot run `{py}` ({e}): this test drives real Flight clients from Python 3: \
             install Python 3, then `{INSTALL_HINT}`"
        ),
        Ok(o) if !o.status.success() => panic!(
            "`{py} -c \"{imports}\"` failed: install the clients with `{INSTALL_HINT}`.\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

/// Runs `flight_clients.py` with `args`; panics with its output unless it succeeds.
fn run_clients(args: &[String]) {
    let script = Path::new(&common::package_dir()).join("tests/flight_clients.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "flight_clients.py {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(": ok"), "{stdout}\n{stderr}");
}

fn write(s: &Server, token: Option<&str>, db: &str, body: &str) {
    let mut req = agent().post(&s.url(&format!("/api/v3/write_lp?db={db}")));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = req.send_string(body).unwrap();
    assert_eq!(r.status(), 204);
}

fn create_token(s: &Server, admin: &str, spec: Value) -> String {
    let r = agent()
        .post(&s.url("/api/v3/tokens"))
        .set("Authorization", &format!("Bearer {admin}"))
        .send_json(spec)
        .unwrap();
    let v: Value = r.into_json().unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[test]
fn flight_clients_query_browse_and_ingest() {
    check_clients();
    let grpc = free_port();
    let dir = tempfile::tempdir().unwrap();
    let grpc_addr = format!("127.0.0.1:{grpc}");
    let s = Server::start(
        BIN.as_ref(),
        &dir.path().join("data"),
        &["--grpc-addr", &grpc_addr],
    )
    .unwrap();
    // 20,000 rows of `cpu` (hosts h0..h2, usage i/2), enough for several streamed batches.
    let mut body = String::new();
    for i in 0..20_000u64 {
        body.push_str(&format!(
            "cpu,host=h{} usage={} {}\n",
            i % 3,
            i as f64 / 2.0,
            1_700_000_000_000_000_000u64 + i
        ));
    }
    write(&s, None, "fleet", &body);
    write(
        &s,
        None,
        "other",
        "mem,host=a used=1i 1\nmem,host=b used=2i 2\nmem,host=c used=3i 3\n",
    );
    run_clients(&["open".into(), grpc.to_string(), s.port.to_string()]);
}

#[test]
fn flight_tokens_are_checked() {
    check_clients();
    let grpc = free_port();
    let dir = tempfile::tempdir().unwrap();
    let grpc_addr = format!("127.0.0.1:{grpc}");
    let s = Server::start_with_auth(
        BIN.as_ref(),
        &dir.path().join("data"),
        &["--grpc-addr", &grpc_addr],
    )
    .unwrap();
    let admin = s
        .admin_token
        .clone()
        .expect("admin token printed on first start");
    write(
        &s,
        Some(&admin),
        "fleet",
        "cpu,host=a usage=1 1\ncpu,host=b usage=2 2\ncpu,host=c usage=3 3\n",
    );
    write(&s, Some(&admin), "other", "mem,host=a used=1i 1\n");
    let read_fleet = create_token(&s, &admin, json!({"read": true, "db": "fleet"}));
    let write_fleet = create_token(&s, &admin, json!({"write": true, "db": "fleet"}));
    run_clients(&[
        "auth".into(),
        grpc.to_string(),
        s.port.to_string(),
        admin,
        read_fleet,
        write_fleet,
    ]);
}

//! The PostgreSQL wire listener (`--pg-addr`) against real clients: `psql` (simple query
//! protocol, psql 15's own catalog queries for `\dt` and `\d`) and psycopg 3 (extended query
//! protocol with parameters, client-side binding, Grafana's catalog queries), with and without
//! authentication, TLS and the connection limit.
//!
//! Needs `psql` (Debian: `apt-get install postgresql-client`) and Python 3 with psycopg
//! (`python3 -m pip install "psycopg[binary]"`); without them the tests fail and say so.
//! `PYTHON` names another interpreter.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use annals_tests::{free_port, Server};
use common::{agent, start, BIN};
use serde_json::Value;

const PY_HINT: &str = "python3 -m pip install \"psycopg[binary]\"";
const PSQL_HINT: &str = "apt-get install postgresql-client";

const LINES: &str = "\
readings,truck=t1,site=north velocity=1.5,load=10i 1700000000000000000
readings,truck=t2,site=south velocity=2.5,load=20i 1700000001000000000
readings,truck=t1,site=north velocity=3.5,load=30i 1700000002000000000
diagnostics,truck=t1 fuel=0.5 1700000000000000000
";

/// A server without auth, with the PostgreSQL listener on a free port, and data in `fleet`.
fn pg_server(extra: &[&str]) -> (tempfile::TempDir, Server, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut flags = vec!["--pg-addr", addr.as_str()];
    flags.extend_from_slice(extra);
    let (d, s) = start(&flags);
    write(&s, None);
    (d, s, port)
}

fn write(s: &Server, token: Option<&str>) {
    let mut req = agent().post(&s.url("/api/v3/write_lp?db=fleet"));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = req.send_string(LINES).unwrap();
    assert!(r.status() < 300, "write: {}", r.status());
}

fn check_psql() {
    match Command::new("psql").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("`psql --version` failed: {o:?}; install it: {PSQL_HINT}"),
        Err(e) => panic!("cannot run psql ({e}): these tests need it; install it: {PSQL_HINT}"),
    }
}

/// `psql -c sql` in unaligned, tuples-only-free mode, never prompting for a password.
fn psql(port: u16, db: &str, user: &str, password: Option<&str>, sql: &str) -> Output {
    check_psql();
    let mut c = Command::new("psql");
    c.args(["-X", "-w", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            db,
        ])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "20")
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c.output().expect("running psql")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "psql failed ({}): {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "psql should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Runs tests/pg_psycopg.py with `args`; fails with its output unless it exits 0.
fn psycopg(args: &[&str]) -> String {
    let py = python();
    match Command::new(&py).args(["-c", "import psycopg"]).output() {
        Err(e) => panic!("cannot run `{py}` ({e}): install Python 3, then `{PY_HINT}`"),
        Ok(o) if !o.status.success() => panic!(
            "`{py} -c \"import psycopg\"` failed: install psycopg with `{PY_HINT}`.\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
    let script = Path::new(&common::package_dir()).join("tests/pg_psycopg.py");
    let out = Command::new(&py)
        .arg(&script)
        .args(args)
        .output()
        .expect("running the psycopg script");
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn psql_runs_queries_and_catalog_commands() {
    let (_d, _s, port) = pg_server(&[]);
    // Any user name is accepted without auth, and no password is asked.
    let out = ok(&psql(
        port,
        "fleet",
        "anyone",
        None,
        "SELECT truck, velocity, load, time FROM readings ORDER BY time",
    ));
    assert_eq!(
        out,
        "truck|velocity|load|time\n\
         t1|1.5|10|2023-11-14 22:13:20.000000\n\
         t2|2.5|20|2023-11-14 22:13:21.000000\n\
         t1|3.5|30|2023-11-14 22:13:22.000000\n\
         (3 rows)\n"
    );
    let out = ok(&psql(
        port,
        "fleet",
        "anyone",
        None,
        "SELECT count(*) AS n, sum(load) AS total FROM readings WHERE truck = 't1'",
    ));
    assert_eq!(out, "n|total\n2|40\n(1 row)\n");

    // \dt: psql's own query on pg_class/pg_namespace lists the database's tables.
    let out = ok(&psql(port, "fleet", "anyone", None, "\\dt"));
    assert!(out.contains("fleet|diagnostics|table|"), "{out}");
    assert!(out.contains("fleet|readings|table|"), "{out}");
    // \d readings: the columns with PostgreSQL type names.
    let out = ok(&psql(port, "fleet", "anyone", None, "\\d readings"));
    assert!(out.contains("Table \"fleet.readings\""), "{out}");
    for col in [
        "time|timestamp without time zone",
        "truck|text",
        "site|text",
        "velocity|double precision",
        "load|bigint",
    ] {
        assert!(out.contains(col), "{col} missing in:\n{out}");
    }

    // Session statements, functions clients call, several statements in one query.
    let out = ok(&psql(
        port,
        "fleet",
        "anyone",
        None,
        "BEGIN; SET DateStyle = 'ISO, MDY'; SHOW DateStyle; SELECT current_database(), \
         current_schema(); COMMIT",
    ));
    assert!(out.contains("ISO, MDY\n"), "{out}");
    assert!(out.contains("fleet|fleet\n"), "{out}");
    let out = ok(&psql(port, "fleet", "anyone", None, "SELECT version()"));
    assert!(out.contains("PostgreSQL 16"), "{out}");
    // The ledger columns: `_tx_id` as text, the 64 hex digits HTTP and proofs use.
    let out = ok(&psql(
        port,
        "fleet",
        "anyone",
        None,
        "SELECT _tx_id FROM ledger('readings') LIMIT 1",
    ));
    let tx = out.lines().nth(1).unwrap();
    assert!(
        tx.len() == 64 && tx.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );

    // Read-only: writes and DDL are refused with SQLSTATE 25006; nothing changes.
    for sql in [
        "INSERT INTO readings (truck, velocity) VALUES ('t3', 1.0)",
        "DELETE FROM readings",
        "CREATE TABLE x (a int)",
        "DROP TABLE readings",
    ] {
        let err = failed(&psql(port, "fleet", "anyone", None, sql));
        assert!(err.contains("read-only"), "{sql}: {err}");
    }
    let out = ok(&psql(
        port,
        "fleet",
        "anyone",
        None,
        "SELECT count(*) FROM readings",
    ));
    assert_eq!(out, "count(*)\n3\n(1 row)\n");
    // Bad SQL and unknown tables are errors, not crashes; the server keeps serving.
    let err = failed(&psql(port, "fleet", "anyone", None, "SELEKT 1"));
    assert!(err.contains("ERROR"), "{err}");
    let err = failed(&psql(port, "fleet", "anyone", None, "SELECT * FROM nope"));
    assert!(err.contains("nope"), "{err}");
    // An unknown database is refused at startup.
    let err = failed(&psql(port, "nowhere", "anyone", None, "SELECT 1"));
    assert!(err.contains("database \"nowhere\" does not exist"), "{err}");
}

#[test]
fn psycopg_simple_and_extended_queries() {
    let (_d, _s, port) = pg_server(&[]);
    let out = psycopg(&["queries", &port.to_string(), "anyone", ""]);
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn token_is_the_password() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_auth(
        BIN.as_ref(),
        &dir.path().join("data"),
        &["--pg-addr", &addr],
    )
    .unwrap();
    let admin = s
        .admin_token
        .clone()
        .expect("admin token printed on first start");
    write(&s, Some(&admin));

    // The admin token as password: queries work (the user name is not checked).
    let out = ok(&psql(
        port,
        "fleet",
        "grafana",
        Some(&admin),
        "SELECT count(*) AS n FROM readings",
    ));
    assert_eq!(out, "n\n3\n(1 row)\n");
    // A wrong password: FATAL 28P01 and the connection is closed.
    let err = failed(&psql(
        port,
        "fleet",
        "grafana",
        Some("not-a-token"),
        "SELECT 1",
    ));
    assert!(err.contains("password authentication failed"), "{err}");
    // No password at all (psql -w does not prompt).
    let err = failed(&psql(port, "fleet", "grafana", None, "SELECT 1"));
    assert!(err.contains("password"), "{err}");

    // A token limited to another database may not open `fleet` (42501) but may open its own.
    let r = agent()
        .post(&s.url("/api/v3/tokens"))
        .set("Authorization", &format!("Bearer {admin}"))
        .send_string(r#"{"read":true,"db":"other"}"#)
        .unwrap();
    let v: Value = r.into_json().unwrap();
    let other = v["token"]
        .as_str()
        .or_else(|| v["secret"].as_str())
        .unwrap_or_else(|| panic!("no secret in {v}"))
        .to_string();
    let err = failed(&psql(port, "fleet", "x", Some(&other), "SELECT 1"));
    assert!(err.contains("permission denied"), "{err}");
    let r = agent()
        .post(&s.url("/api/v3/write_lp?db=other"))
        .set("Authorization", &format!("Bearer {admin}"))
        .send_string("m v=1 1700000000000000000\n")
        .unwrap();
    assert!(r.status() < 300);
    let out = ok(&psql(port, "other", "x", Some(&other), "\\dt"));
    assert!(out.contains("other|m|table|"), "{out}");
    assert!(!out.contains("readings"), "{out}");
    // psycopg sees the same: wrong password is OperationalError with SQLSTATE 28P01.
    psycopg(&["auth", &port.to_string(), "grafana", &admin]);
}

#[test]
fn tls_and_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes the test certificate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (_d, _s, port) = pg_server(&[
        "--pg-tls-cert",
        cert,
        "--pg-tls-key",
        key,
        "--pg-max-connections",
        "2",
    ]);
    let out = psycopg(&["tls", &port.to_string(), "anyone", ""]);
    assert!(out.contains("ok"), "{out}");
    let out = psycopg(&["limit", &port.to_string(), "anyone", ""]);
    assert!(out.contains("ok"), "{out}");
}

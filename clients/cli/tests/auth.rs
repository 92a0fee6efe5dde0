//! Authentication against the real binary: the admin token printed on first start, tokens
//! created and revoked with `annals token`, 401/403 that change nothing, the InfluxDB v1/v2
//! credential forms, and tokens surviving a restart.

mod common;

use std::process::Command;

use annals_tests::Server;
use common::{agent, BIN};
use serde_json::Value;

fn status(r: Result<ureq::Response, ureq::Error>) -> u16 {
    match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("transport error: {e}"),
    }
}

fn token_cmd(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("token")
        .args(args)
        .arg("--host")
        .arg(s.url(""))
        .env("ANNALS_TOKEN", token)
        .output()
        .unwrap()
}

fn write(s: &Server, auth: Option<&str>, db: &str) -> u16 {
    let mut r = agent().post(&s.url(&format!("/api/v3/write_lp?db={db}")));
    if let Some(a) = auth {
        r = r.set("Authorization", a);
    }
    status(r.send_string("readings,truck=t1 v=1 1700000000000000000"))
}

fn count(s: &Server, token: &str) -> u64 {
    let r = agent()
        .get(&s.url("/api/v3/query_sql"))
        .query("db", "fleet")
        .query("q", "SELECT count(*) AS n FROM readings")
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let v: Value = r.into_json().unwrap();
    v[0]["n"].as_u64().unwrap()
}

#[test]
fn tokens_guard_every_interface_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_with_auth(BIN.as_ref(), &dir.path().join("data"), &[]).unwrap();
    let admin = s
        .admin_token
        .clone()
        .expect("first start prints the admin token");
    assert!(admin.starts_with("annals_"), "{admin}");
    let bearer = |t: &str| format!("Bearer {t}");

    // Health stays public; everything else needs a token.
    assert_eq!(status(agent().get(&s.url("/health")).call()), 200);
    assert_eq!(write(&s, None, "fleet"), 401);
    assert_eq!(write(&s, Some("Bearer annals_wrong"), "fleet"), 401);
    assert_eq!(
        status(
            agent()
                .get(&s.url("/api/v3/query_sql?db=fleet&q=SELECT%201"))
                .call()
        ),
        401
    );
    assert_eq!(write(&s, Some(&bearer(&admin)), "fleet"), 204);
    assert_eq!(count(&s, &admin), 1);

    // A read-only token limited to `fleet`, created with the CLI.
    let out = token_cmd(&s, &admin, &["create", "--read", "--db", "fleet", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reader = rec["token"].as_str().unwrap().to_owned();
    let reader_id = rec["id"].as_str().unwrap().to_owned();
    assert_eq!(count(&s, &reader), 1);
    assert_eq!(write(&s, Some(&bearer(&reader)), "fleet"), 403);
    assert_eq!(
        status(
            agent()
                .get(&s.url("/api/v3/query_sql?db=other&q=SELECT%201"))
                .set("Authorization", &bearer(&reader))
                .call()
        ),
        403
    );
    // Database named only in a POST body is checked too.
    assert_eq!(
        status(
            agent()
                .post(&s.url("/api/v3/query_sql"))
                .set("Authorization", &bearer(&reader))
                .send_json(serde_json::json!({"db": "other", "q": "SELECT 1"}))
        ),
        403
    );
    // Not an admin: cannot create tokens.
    let out = token_cmd(&s, &reader, &["create", "--write"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));

    // A write token through the InfluxDB v2 (`Token`) and v1 (`?p=`, Basic) forms.
    let out = token_cmd(
        &s,
        &admin,
        &["create", "--write", "--description", "gateway"],
    );
    assert!(out.status.success());
    let writer = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        status(
            agent()
                .post(&s.url("/api/v2/write?bucket=fleet"))
                .set("Authorization", &format!("Token {writer}"))
                .send_string("readings,truck=t2 v=2 1700000000000000001")
        ),
        204
    );
    assert_eq!(
        status(
            agent()
                .post(&s.url(&format!("/write?db=fleet&u=gw&p={writer}")))
                .send_string("readings,truck=t3 v=3 1700000000000000002")
        ),
        204
    );
    // The refused writes above stored nothing.
    assert_eq!(count(&s, &admin), 3);

    // List shows both without secrets; revoke the reader.
    let out = token_cmd(&s, &admin, &["list", "--json"]);
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(!list.contains(&reader) && !list.contains(&admin), "{list}");
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["tokens"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let out = token_cmd(&s, &admin, &["revoke", &reader_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        status(
            agent()
                .get(&s.url("/api/v3/query_sql?db=fleet&q=SELECT%201"))
                .set("Authorization", &bearer(&reader))
                .call()
        ),
        401
    );

    // After a restart: same tokens, no new admin token.
    s.kill9();
    s.admin_token = None;
    s.restart().unwrap();
    assert!(s.admin_token.is_none());
    assert_eq!(count(&s, &admin), 3);
    assert_eq!(write(&s, Some(&bearer(&writer)), "fleet"), 204);
    // A write-only token may not read.
    assert_eq!(
        status(
            agent()
                .get(&s.url("/api/v3/query_sql?db=fleet&q=SELECT%201"))
                .set("Authorization", &bearer(&writer))
                .call()
        ),
        403
    );
    assert_eq!(
        status(
            agent()
                .get(&s.url("/api/v3/query_sql?db=fleet&q=SELECT%201"))
                .set("Authorization", &bearer(&reader))
                .call()
        ),
        401
    );
}

#[test]
fn admin_token_flag_and_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "annals_fixed_admin_secret_for_tests";
    let s = Server::start_with_auth(
        BIN.as_ref(),
        &dir.path().join("data"),
        &["--admin-token", secret],
    )
    .unwrap();
    assert!(s.admin_token.is_none(), "a given secret is not printed");
    let r = agent()
        .post(&s.url("/api/v3/write_lp?db=fleet"))
        .set("Authorization", &format!("Bearer {secret}"))
        .send_string("readings,truck=t1 v=1 1");
    assert_eq!(status(r), 204);
    drop(s);
    // --without-auth: no token needed, tokens cannot be created.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(BIN.as_ref(), &dir.path().join("data"), &[]).unwrap();
    let r = agent()
        .post(&s.url("/api/v3/write_lp?db=fleet"))
        .send_string("readings,truck=t1 v=1 1");
    assert_eq!(status(r), 204);
    let out = token_cmd(&s, "", &["create", "--read"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
}

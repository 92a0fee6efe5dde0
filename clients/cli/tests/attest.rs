//! Device attestations against the real binary: the device registry, signed writes (replay,
//! window, bad signature, unknown and revoked devices, timestamps), table policies, the
//! bad-signature limiter, and proofs carrying the attestation, checked with `annals-verify`,
//! before and after a kill -9.

mod common;

use std::io::Read;

use annals_format::hash::{hash_from_hex, hash_parts, leaf_hash, Domain, Hash};
use annals_format::merkle::root_of;
use annals_format::row::{encode_row, ColumnRef, ValueRef};
use annals_format::sign::SigningKey;
use annals_tests::Server;
use annals_verify::{verify_proof, Step, Trust, Validator};
use common::{agent, BIN};
use serde_json::{json, Value};

const FLAGS: &[&str] = &common::manual_flags("2");

/// Status, headers of interest and body.
fn call(req: ureq::Request, body: Option<&str>) -> (u16, Option<String>, String) {
    let r = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = r.status();
    let retry = r.header("retry-after").map(str::to_owned);
    let mut text = String::new();
    r.into_reader().read_to_string(&mut text).unwrap();
    (status, retry, text)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A device: key and the rows it would sign.
struct Device {
    key: SigningKey,
}

impl Device {
    fn new() -> Device {
        Device {
            key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }
    fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
    fn hex(&self) -> String {
        hex::encode(self.public())
    }
    /// What the device signs: H(0x06 || key || seq LE || MTH(rows in order)).
    fn sign(&self, seq: u64, leaves: &[Hash]) -> String {
        let root = root_of(leaves);
        let d = hash_parts(
            Domain::Attestation,
            &[&self.public(), &seq.to_le_bytes(), &root],
        );
        hex::encode(annals_format::sign::sign(&self.key, &d))
    }
}

/// One reading: its line-protocol line and its FORMAT.md row encoding in table `<db>/<m>`.
struct Reading {
    truck: String,
    velocity: f64,
    n: i64,
    time: i64,
}

impl Reading {
    fn new(i: i64) -> Reading {
        Reading {
            truck: format!("t{}", i % 3),
            velocity: i as f64 + 0.25,
            n: i,
            time: 1_700_000_000_000_000_000 + i,
        }
    }
    fn line(&self, m: &str) -> String {
        format!(
            "{m},truck={} velocity={},n={}i {}",
            self.truck, self.velocity, self.n, self.time
        )
    }
    fn leaf(&self, table: &str) -> Hash {
        // Columns sorted by name.
        let cols = [
            ColumnRef {
                name: "n",
                value: ValueRef::I64(self.n),
            },
            ColumnRef {
                name: "truck",
                value: ValueRef::Tag(&self.truck),
            },
            ColumnRef {
                name: "velocity",
                value: ValueRef::F64(self.velocity),
            },
        ];
        let mut enc = Vec::new();
        encode_row(&mut enc, table, self.time, &cols).unwrap();
        leaf_hash(&enc)
    }
}

/// A batch of readings `from..from + n` for measurement `m` of db `fleet`.
fn batch(m: &str, from: i64, n: i64) -> (String, Vec<Hash>) {
    let rs: Vec<Reading> = (from..from + n).map(Reading::new).collect();
    let body = rs.iter().map(|r| r.line(m)).collect::<Vec<_>>().join("\n");
    let leaves = rs.iter().map(|r| r.leaf(&format!("fleet/{m}"))).collect();
    (body, leaves)
}

fn signed_write(
    s: &Server,
    path: &str,
    dev: &Device,
    seq: u64,
    sig: &str,
    body: &str,
) -> (u16, Option<String>, String) {
    let req = agent()
        .post(&s.url(path))
        .set("Annals-Device-Key", &dev.hex())
        .set("Annals-Device-Seq", &seq.to_string())
        .set("Annals-Device-Signature", sig);
    call(req, Some(body))
}

const V3: &str = "/api/v3/write_lp?db=fleet&receipt=true";

fn count(s: &Server, m: &str) -> u64 {
    let (code, _, text) = call(
        agent()
            .post(&s.url("/api/v3/query_sql"))
            .set("content-type", "application/json"),
        Some(&json!({"db": "fleet", "q": format!("SELECT count(*) AS n FROM {m}")}).to_string()),
    );
    if code != 200 {
        // A table that has no rows yet may not be queryable.
        assert!(
            text.contains("not found") || text.contains("not exist"),
            "{code} {text}"
        );
        return 0;
    }
    json_of(&text)[0]["n"].as_u64().unwrap()
}

fn register(s: &Server, dev: &Device, name: &str) -> (u16, Value) {
    let (code, _, text) = call(
        agent().post(&s.url("/api/v3/devices")),
        Some(&json!({"key": dev.hex(), "name": name, "fleet": "east"}).to_string()),
    );
    (code, json_of(&text))
}

fn flush(s: &Server) {
    let (code, _, text) = call(agent().post(&s.url("/api/v3/flush")), None);
    assert_eq!(code, 200, "{text}");
}

fn trust(s: &Server) -> Trust {
    let (_, _, text) = call(agent().get(&s.url("/health")), None);
    let key = hash_from_hex(json_of(&text)["node_key"].as_str().unwrap()).unwrap();
    Trust::validators([Validator { key, power: 1 }]).unwrap()
}

/// The proof document of a receipt entry.
fn proof(s: &Server, e: &Value) -> Value {
    let url = format!(
        "/api/v3/ledger/proof?tx_id={}&branch={}&height={}&index={}",
        e["tx_id"].as_str().unwrap(),
        e["branch"].as_str().unwrap(),
        e["height"],
        e["index"]
    );
    let (code, _, text) = call(agent().get(&s.url(&url)), None);
    assert_eq!(code, 200, "{text}");
    let v = json_of(&text);
    v.get("proof").cloned().unwrap_or(v)
}

fn expect_error(got: (u16, Option<String>, String), code: u16, needle: &str) -> Value {
    assert_eq!(got.0, code, "{}", got.2);
    let v = json_of(&got.2);
    assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    assert!(
        v["error"].as_str().unwrap().contains(needle),
        "{needle:?} not in {v}"
    );
    v
}

/// Checks every entry's proof: verified with the node's key, attested by `dev` as batch
/// `seq`, the row at its batch position.
fn check_attested_proofs(s: &Server, entries: &[Value], dev: &Device, seq: u64) -> Value {
    let trust = trust(s);
    let mut last = Value::Null;
    for (i, e) in entries.iter().enumerate() {
        let doc = proof(s, e);
        let a = &doc["attestation"];
        assert_eq!(a["device_key"], json!(dev.hex()), "{doc}");
        let v = verify_proof(doc.to_string().as_bytes(), &trust)
            .unwrap_or_else(|e| panic!("{e:?}: {doc}"));
        let att = v.attestation.expect("attested");
        assert_eq!(att.device_key, dev.public());
        assert_eq!(att.seq, seq);
        assert_eq!(att.index, i as u64);
        assert_eq!(att.batch_size, entries.len() as u64);
        last = doc;
    }
    last
}

#[test]
fn signed_writes_replay_policy_revocation_proofs_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(BIN.as_ref(), &dir.path().join("data"), FLAGS).unwrap();
    let dev = Device::new();

    // Registry.
    let (code, d) = register(&s, &dev, "meter-1");
    assert_eq!(code, 201, "{d}");
    assert_eq!(d["key"], json!(dev.hex()));
    assert_eq!(register(&s, &dev, "meter-1").0, 409);
    let (code, _, text) = call(
        agent().post(&s.url("/api/v3/devices")),
        Some(r#"{"key": "abcd", "name": "x", "fleet": "y"}"#),
    );
    assert_eq!(code, 400, "{text}");

    // A signed batch of 7 rows over two shards and several blocks.
    let (body, leaves) = batch("readings", 0, 7);
    let sig1 = dev.sign(1, &leaves);
    let (code, _, text) = signed_write(&s, V3, &dev, 1, &sig1, &body);
    assert_eq!(code, 200, "{text}");
    let entries = json_of(&text)["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 7);
    assert_eq!(count(&s, "readings"), 7);

    // Replay: refused, nothing written.
    let v = expect_error(signed_write(&s, V3, &dev, 1, &sig1, &body), 409, "replay");
    assert_eq!(v["code"], json!("conflict"));
    assert_eq!(count(&s, "readings"), 7);

    // A jump, then a number below the window: refused.
    let (body2, leaves2) = batch("readings", 100, 2);
    let r = signed_write(&s, V3, &dev, 2000, &dev.sign(2000, &leaves2), &body2);
    assert_eq!(r.0, 200, "{}", r.2);
    let (body3, leaves3) = batch("readings", 200, 2);
    let old = 2000 - 1024;
    expect_error(
        signed_write(&s, V3, &dev, old, &dev.sign(old, &leaves3), &body3),
        409,
        "out of the replay window",
    );
    assert_eq!(count(&s, "readings"), 9);
    // Inside the window, out of order: accepted, on the v2 and v1 endpoints too.
    let r = signed_write(
        &s,
        "/api/v2/write?bucket=fleet&precision=ns",
        &dev,
        1500,
        &dev.sign(1500, &leaves3),
        &body3,
    );
    assert_eq!(r.0, 204, "{}", r.2);
    let (body4, leaves4) = batch("readings", 300, 1);
    let r = signed_write(
        &s,
        "/write?db=fleet",
        &dev,
        1501,
        &dev.sign(1501, &leaves4),
        &body4,
    );
    assert_eq!(r.0, 204, "{}", r.2);
    assert_eq!(count(&s, "readings"), 12);

    // A bad signature: refused, nothing written, the number not consumed.
    let (body5, leaves5) = batch("readings", 400, 3);
    let good = dev.sign(3000, &leaves5);
    let mut bad = hex::decode(&good).unwrap();
    bad[10] ^= 1;
    expect_error(
        signed_write(&s, V3, &dev, 3000, &hex::encode(&bad), &body5),
        401,
        "does not verify",
    );
    // Signed over other rows than the body's.
    expect_error(
        signed_write(&s, V3, &dev, 3000, &dev.sign(3000, &leaves4), &body5),
        401,
        "does not verify",
    );
    assert_eq!(count(&s, "readings"), 12);
    let r = signed_write(&s, V3, &dev, 3000, &good, &body5);
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(count(&s, "readings"), 15);

    // Every line needs its own timestamp; signed writes are all or nothing.
    let v = expect_error(
        signed_write(
            &s,
            V3,
            &dev,
            3001,
            &good,
            "readings,truck=a velocity=1 1700000000000000000\nreadings,truck=a velocity=2",
        ),
        400,
        "line 2 has no timestamp",
    );
    assert_eq!(v["line"], json!(2));
    expect_error(
        signed_write(
            &s,
            "/api/v3/write_lp?db=fleet&accept_partial=true",
            &dev,
            3001,
            &good,
            &body5,
        ),
        400,
        "all or nothing",
    );
    // Only some of the headers.
    let (code, _, text) = call(
        agent()
            .post(&s.url(V3))
            .set("Annals-Device-Key", &dev.hex()),
        Some(&body5),
    );
    assert_eq!(code, 400, "{text}");

    // Unknown device.
    let stranger = Device::new();
    let v = expect_error(
        signed_write(&s, V3, &stranger, 1, &stranger.sign(1, &leaves5), &body5),
        403,
        "not registered",
    );
    assert_eq!(v["code"], json!("forbidden"));
    assert_eq!(count(&s, "readings"), 15);

    // A table that requires attestation refuses unsigned writes, naming the table.
    let (code, _, text) = call(
        agent().put(&s.url("/api/v3/tables/fleet/secure/policy")),
        Some(r#"{"require_attestation": true}"#),
    );
    assert_eq!(code, 200, "{text}");
    let (_, _, text) = call(
        agent().get(&s.url("/api/v3/tables/fleet/secure/policy")),
        None,
    );
    assert_eq!(json_of(&text)["require_attestation"], json!(true));
    let (sbody, sleaves) = batch("secure", 0, 3);
    let unsigned = format!("readings,truck=z velocity=1 1700000000000000999\n{sbody}");
    expect_error(
        call(agent().post(&s.url(V3)), Some(&unsigned)),
        403,
        "fleet/secure",
    );
    assert_eq!(count(&s, "secure"), 0);
    assert_eq!(count(&s, "readings"), 15);
    let r = signed_write(&s, V3, &dev, 3001, &dev.sign(3001, &sleaves), &sbody);
    assert_eq!(r.0, 200, "{}", r.2);
    let secure_entries = json_of(&r.2)["entries"].as_array().unwrap().clone();
    assert_eq!(count(&s, "secure"), 3);
    // Other tables still take unsigned writes.
    assert_eq!(
        call(
            agent().post(&s.url(V3)),
            Some("plain v=1 1700000000000000000")
        )
        .0,
        200
    );

    // Revocation: the device stays listed with revoked_at and is refused.
    let dev2 = Device::new();
    assert_eq!(register(&s, &dev2, "meter-2").0, 201);
    let (b6, l6) = batch("readings", 500, 2);
    assert_eq!(
        signed_write(&s, V3, &dev2, 1, &dev2.sign(1, &l6), &b6).0,
        200
    );
    let (code, _, text) = call(
        agent().delete(&s.url(&format!("/api/v3/devices/{}", dev2.hex()))),
        None,
    );
    assert_eq!(code, 200, "{text}");
    assert!(json_of(&text)["revoked_at"].is_i64());
    let (b7, l7) = batch("readings", 600, 2);
    expect_error(
        signed_write(&s, V3, &dev2, 2, &dev2.sign(2, &l7), &b7),
        403,
        "revoked",
    );
    assert_eq!(count(&s, "readings"), 17);
    let (_, _, text) = call(agent().get(&s.url("/api/v3/devices")), None);
    let list = json_of(&text)["devices"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    let revoked: Vec<&Value> = list.iter().filter(|d| d["revoked_at"].is_i64()).collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["key"], json!(dev2.hex()));

    // Proofs of attested rows carry the attestation and verify independently.
    flush(&s);
    let doc = check_attested_proofs(&s, &entries, &dev, 1);
    check_attested_proofs(&s, &secure_entries, &dev, 3001);
    // An unsigned row's proof has none.
    let (_, _, text) = call(
        agent().post(&s.url(V3)),
        Some("plain v=2 1700000000000000001"),
    );
    let plain = json_of(&text)["entries"][0].clone();
    flush(&s);
    assert!(proof(&s, &plain).get("attestation").is_none());

    // A flipped signature byte fails at the attestation step.
    let mut tampered = doc.clone();
    let mut sig = hex::decode(tampered["attestation"]["sig"].as_str().unwrap()).unwrap();
    sig[0] ^= 1;
    tampered["attestation"]["sig"] = json!(hex::encode(sig));
    let err = verify_proof(tampered.to_string().as_bytes(), &trust(&s)).unwrap_err();
    assert_eq!(err.step(), Step::Attestation, "{err:?}");
    // So does a changed sequence number.
    let mut tampered = doc.clone();
    tampered["attestation"]["seq"] = json!(2);
    let err = verify_proof(tampered.to_string().as_bytes(), &trust(&s)).unwrap_err();
    assert_eq!(err.step(), Step::Attestation, "{err:?}");

    // `annals verify` names the device.
    let path = dir.path().join("proof.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let (_, _, text) = call(agent().get(&s.url("/health")), None);
    let node_key = json_of(&text)["node_key"].as_str().unwrap().to_owned();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, format!("{node_key}\n")).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("verify")
        .arg(&path)
        .arg("--trust")
        .arg(&keys)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("device {} seq 1", dev.hex())),
        "{stdout}"
    );

    // kill -9 and start again on the same data directory.
    s.kill9();
    s.restart().unwrap();
    expect_error(signed_write(&s, V3, &dev, 1, &sig1, &body), 409, "replay");
    expect_error(
        signed_write(&s, V3, &dev, 3000, &good, &body5),
        409,
        "replay",
    );
    expect_error(
        signed_write(&s, V3, &dev2, 2, &dev2.sign(2, &l7), &b7),
        403,
        "revoked",
    );
    expect_error(
        call(agent().post(&s.url(V3)), Some(&unsigned)),
        403,
        "fleet/secure",
    );
    assert_eq!(count(&s, "readings"), 17);
    check_attested_proofs(&s, &entries, &dev, 1);
    check_attested_proofs(&s, &secure_entries, &dev, 3001);
    // The window survived: a new number above the highest is accepted, an old one is not.
    let (b8, l8) = batch("readings", 700, 2);
    let r = signed_write(&s, V3, &dev, 3002, &dev.sign(3002, &l8), &b8);
    assert_eq!(r.0, 200, "{}", r.2);
    expect_error(
        signed_write(&s, V3, &dev, 1500, &dev.sign(1500, &l8), &b8),
        409,
        "replay",
    );
    s.stop().unwrap();
}

#[test]
fn repeated_bad_signatures_are_answered_429() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(BIN.as_ref(), &dir.path().join("data"), FLAGS).unwrap();
    let dev = Device::new();
    assert_eq!(register(&s, &dev, "meter-1").0, 201);
    let (body, leaves) = batch("readings", 0, 2);
    let wrong = dev.sign(1, &leaves[..1]);
    for seq in 1..=5 {
        let r = signed_write(&s, V3, &dev, seq, &wrong, &body);
        assert_eq!(r.0, 401, "{}", r.2);
    }
    let (code, retry, text) = signed_write(&s, V3, &dev, 6, &wrong, &body);
    assert_eq!(code, 429, "{text}");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(json_of(&text)["code"], json!("too many requests"));
    // Even a good signature is not checked while the source is blocked.
    let r = signed_write(&s, V3, &dev, 7, &dev.sign(7, &leaves), &body);
    assert_eq!(r.0, 429, "{}", r.2);
    assert_eq!(count(&s, "readings"), 0);
    // Reported in the metrics.
    let (_, _, text) = call(agent().get(&s.url("/metrics")), None);
    assert!(
        text.contains("annals_attestation_rejected_total{reason=\"bad_signature\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("annals_attestation_rejected_total{reason=\"rate_limited\"} 2"),
        "{text}"
    );
}

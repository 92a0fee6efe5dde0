//! MQTT ingest against the real binary (`annals serve --mqtt-addr`): `mosquitto_pub` and
//! paho-mqtt publish QoS 0 and QoS 1 messages that become queryable rows; a QoS 1 duplicate
//! (DUP=1, same client and packet id) is stored once, across a reconnect and a kill -9;
//! malformed payloads and unknown topics are counted and the connection keeps working;
//! oversized and undecodable packets close only their own connection; with authentication a
//! wrong password gets CONNACK 0x04 and a token works.
//!
//! Needs `mosquitto_pub` (Debian: `apt-get install mosquitto-clients`) and python3 with
//! paho-mqtt (`python3 -m pip install paho-mqtt`); without them the tests fail and say so.
//! The duplicate, malformed and auth tests speak MQTT 3.1.1 over a raw socket with packets
//! built here byte by byte, independent of the server's codec.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use annals_tests::{free_port, Server};
use common::{agent, BIN};
use serde_json::Value;

const T0: &str = "1700000000000000000";

/// A server with an MQTT listener; returns it with the MQTT port.
fn start_mqtt(auth: bool) -> (tempfile::TempDir, Server, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let flags = ["--mqtt-addr", addr.as_str()];
    let data = dir.path().join("data");
    let s = if auth {
        Server::start_with_auth(BIN.as_ref(), &data, &flags).unwrap()
    } else {
        Server::start(BIN.as_ref(), &data, &flags).unwrap()
    };
    (dir, s, port)
}

/// Runs SQL on `db` (as `token` when given); `None` when the table does not exist (yet).
fn sql(s: &Server, db: &str, q: &str, token: Option<&str>) -> Option<Vec<Value>> {
    let mut r = agent()
        .get(&s.url("/api/v3/query_sql"))
        .query("db", db)
        .query("q", q);
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    match r.call() {
        Ok(r) => Some(r.into_json::<Value>().unwrap().as_array().unwrap().clone()),
        Err(ureq::Error::Status(_, r)) => {
            let text = r.into_string().unwrap();
            assert!(
                text.contains("not found") || text.contains("not exist"),
                "{text}"
            );
            None
        }
        Err(e) => panic!("query failed: {e}"),
    }
}

fn count(s: &Server, db: &str, table: &str, token: Option<&str>) -> u64 {
    sql(s, db, &format!("SELECT count(*) AS n FROM {table}"), token)
        .map(|rows| rows[0]["n"].as_u64().unwrap())
        .unwrap_or(0)
}

/// Waits until `table` has `n` rows (QoS 0 has no acknowledgement to wait for).
fn wait_count(s: &Server, db: &str, table: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = count(s, db, table, None);
        if c == n {
            return;
        }
        assert!(Instant::now() < deadline, "{table}: {c} rows, expected {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a counter reaches `n` (writes count once durable, just after rows are visible).
fn wait_metric(s: &Server, name_and_labels: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(s, name_and_labels);
        if v == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name_and_labels} = {v}, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(s: &Server, name_and_labels: &str) -> u64 {
    let text = agent()
        .get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

// ---- a minimal MQTT 3.1.1 client, packet by packet ----

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn connect_packet(client_id: &str, clean: bool, password: Option<&str>) -> Vec<u8> {
    let mut b = Vec::new();
    string(b"MQTT", &mut b);
    b.push(4);
    let mut flags = if clean { 0x02 } else { 0 };
    if password.is_some() {
        flags |= 0x80 | 0x40; // user name and password
    }
    b.push(flags);
    b.extend_from_slice(&60u16.to_be_bytes());
    string(client_id.as_bytes(), &mut b);
    if let Some(p) = password {
        string(b"device", &mut b);
        string(p.as_bytes(), &mut b);
    }
    packet(0x10, &b)
}

fn publish_packet(topic: &str, payload: &str, qos: u8, pkid: u16, dup: bool) -> Vec<u8> {
    let mut b = Vec::new();
    string(topic.as_bytes(), &mut b);
    if qos > 0 {
        b.extend_from_slice(&pkid.to_be_bytes());
    }
    b.extend_from_slice(payload.as_bytes());
    packet(0x30 | (u8::from(dup) << 3) | (qos << 1), &b)
}

struct Raw(TcpStream);

impl Raw {
    fn open(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw(s)
    }

    /// Connects; returns the CONNACK's (session present, return code).
    fn connect(port: u16, client_id: &str, clean: bool, password: Option<&str>) -> (Raw, u8, u8) {
        let mut r = Raw::open(port);
        r.send(&connect_packet(client_id, clean, password));
        let (first, body) = r.read().expect("CONNACK");
        assert_eq!(first, 0x20, "CONNACK expected");
        assert_eq!(body.len(), 2);
        (r, body[0], body[1])
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// One packet: (first byte, body); `None` when the server closed the connection.
    fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        match self.0.read(&mut first) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            self.0.read_exact(&mut b).ok()?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).ok()?;
        Some((first[0], body))
    }

    /// Publishes with QoS 1 and waits for its PUBACK.
    fn publish1(&mut self, topic: &str, payload: &str, pkid: u16, dup: bool) {
        self.send(&publish_packet(topic, payload, 1, pkid, dup));
        self.expect_puback(pkid);
    }

    fn expect_puback(&mut self, pkid: u16) {
        let (first, body) = self.read().expect("PUBACK");
        assert_eq!(first, 0x40, "PUBACK expected, got {first:#x} {body:?}");
        assert_eq!(body, pkid.to_be_bytes(), "PUBACK for packet id {pkid}");
    }

    fn closed(&mut self) -> bool {
        self.read().is_none()
    }
}

// ---- tools ----

fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run mosquitto_pub ({e}): install it with \
                 `apt-get install -y --no-install-recommends mosquitto-clients`"
            )
        })
}

fn ok(o: Output) {
    assert!(
        o.status.success(),
        "mosquitto_pub failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn mosquitto_pub_qos0_and_qos1_messages_become_rows() {
    let (_d, s, port) = start_mqtt(false);
    let lp = |room: &str, t: f64, i: u64| {
        format!("air,room={room} t={t} {}", 1_700_000_000_000_000_000u64 + i)
    };
    // QoS 0 and QoS 1 over 3.1.1 and 5.0 (mosquitto_pub returns after the PUBACK with -q 1).
    ok(mosquitto_pub(
        port,
        &[
            "-t",
            "annals/farm/write",
            "-q",
            "0",
            "-m",
            &lp("a", 20.5, 1),
        ],
    ));
    ok(mosquitto_pub(
        port,
        &[
            "-t",
            "annals/farm/write",
            "-q",
            "1",
            "-m",
            &lp("b", 21.5, 2),
        ],
    ));
    ok(mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv5",
            "-t",
            "annals/farm/write",
            "-q",
            "1",
            "-m",
            &lp("c", 22.5, 3),
        ],
    ));
    ok(mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv5",
            "-t",
            "annals/farm/write",
            "-q",
            "0",
            "-m",
            &lp("d", 23.5, 4),
        ],
    ));
    // Millisecond precision topic; several lines in one message.
    ok(mosquitto_pub(
        port,
        &[
            "-t",
            "annals/farm/write/ms",
            "-q",
            "1",
            "-m",
            "air,room=e t=24.5 1700000000005\nair,room=f t=25.5 1700000000006",
        ],
    ));
    // The JSON form.
    ok(mosquitto_pub(
        port,
        &[
            "-t",
            "annals/farm/json/air",
            "-q",
            "1",
            "-m",
            r#"[{"time": 1700000000007000000, "tags": {"room": "g"}, "fields": {"t": 26.5}}]"#,
        ],
    ));
    wait_count(&s, "farm", "air", 7);
    let rows = sql(
        &s,
        "farm",
        "SELECT room, t, CAST(time AS BIGINT) AS ns FROM air ORDER BY room",
        None,
    )
    .unwrap();
    let got: Vec<(String, f64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["room"].as_str().unwrap().to_owned(),
                r["t"].as_f64().unwrap(),
                r["ns"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, f64, i64)> = ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                r.to_string(),
                20.5 + i as f64,
                1_700_000_000_000_000_000 + (i as i64 + 1) * if i >= 4 { 1_000_000 } else { 1 },
            )
        })
        .collect();
    assert_eq!(got, want);
    wait_metric(&s, "annals_mqtt_messages_total{outcome=\"written\"}", 6);
}

#[test]
fn paho_mqtt_publishes_qos0_and_qos1_on_311_and_5() {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&py)
        .args(["-c", "import paho.mqtt.client"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "this test needs python3 with paho-mqtt: `python3 -m pip install paho-mqtt` ({other:?})"
        ),
    }
    let (_d, s, port) = start_mqtt(false);
    let script = Path::new(&common::package_dir()).join("tests/mqtt_paho.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["v5_malformed"], 0x99, "{summary}");
    // Two 3.1.1 messages, three valid 5.0 ones; the malformed one is not stored.
    wait_count(&s, "farm", "paho", 5);
    let rows = sql(&s, "farm", "SELECT v, q, x FROM paho ORDER BY x", None).unwrap();
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}",
                r["v"].as_str().unwrap(),
                r["q"].as_str().unwrap(),
                r["x"]
            )
        })
        .collect();
    assert_eq!(
        got,
        ["311/0/1.0", "311/1/2.0", "5/1/3.0", "5/1b/4.0", "5/0/5.0"]
    );
    assert_eq!(
        metric(&s, "annals_mqtt_messages_total{outcome=\"malformed\"}"),
        1
    );
}

#[test]
fn qos1_duplicate_is_stored_once_across_reconnect_and_crash() {
    let (_d, mut s, port) = start_mqtt(false);
    let topic = "annals/farm/write";
    let first = format!("dups,dev=a v=1 {T0}");
    let (mut c, present, code) = Raw::connect(port, "gateway-1", false, None);
    assert_eq!((present, code), (0, 0));
    c.publish1(topic, &first, 7, false);
    // The same PUBLISH again with DUP=1 on the same connection: acknowledged, not written.
    c.publish1(topic, &first, 7, true);
    drop(c);
    // After a reconnect (persistent session): still recognised.
    let (mut c, present, code) = Raw::connect(port, "gateway-1", false, None);
    assert_eq!((present, code), (1, 0), "the session is kept");
    c.publish1(topic, &first, 7, true);
    assert_eq!(count(&s, "farm", "dups", None), 1);
    assert_eq!(
        metric(&s, "annals_mqtt_messages_total{outcome=\"duplicate\"}"),
        2
    );

    // DUP=1 with a packet id never seen: a message whose first send was lost, written.
    c.publish1(topic, &format!("dups,dev=b v=2 {T0}"), 8, true);
    // Packet id 7 reused without DUP: a new message (the client had its PUBACK), written.
    c.publish1(topic, &format!("dups,dev=c v=3 {T0}"), 7, false);
    assert_eq!(count(&s, "farm", "dups", None), 3);

    // Written and acknowledged, then the server is killed before the client saw the PUBACK:
    // the resend after the restart is answered from the WAL's request record.
    let crash = format!("dups,dev=d v=4 {T0}");
    c.publish1(topic, &crash, 9, false);
    drop(c);
    s.restart().unwrap();
    let (mut c, _, code) = Raw::connect(port, "gateway-1", false, None);
    assert_eq!(code, 0);
    c.publish1(topic, &crash, 9, true);
    assert_eq!(count(&s, "farm", "dups", None), 4);
    let devs = sql(&s, "farm", "SELECT dev FROM dups ORDER BY dev", None).unwrap();
    let devs: Vec<&str> = devs.iter().map(|r| r["dev"].as_str().unwrap()).collect();
    assert_eq!(devs, ["a", "b", "c", "d"]);
}

#[test]
fn bad_messages_are_counted_and_the_connection_keeps_working() {
    let (_d, s, port) = start_mqtt(false);
    let (mut c, _, code) = Raw::connect(port, "sloppy", true, None);
    assert_eq!(code, 0);
    // Not line protocol (QoS 1 and QoS 0), an unknown topic, a JSON message that is not the
    // JSON form, an invalid database name: each dropped, QoS 1 still acknowledged (3.1.1).
    c.publish1("annals/farm/write", "this is not line protocol", 1, false);
    c.send(&publish_packet(
        "annals/farm/write",
        "no_fields,t=a",
        0,
        0,
        false,
    ));
    c.publish1("sensors/room1", &format!("m v=1 {T0}"), 2, false);
    c.publish1("annals/farm/json/m", r#"{"value": 1}"#, 3, false);
    c.publish1("annals/bad db!/write", &format!("m v=1 {T0}"), 4, false);
    // A valid message on the same connection is written.
    c.publish1("annals/farm/write", &format!("m v=1 {T0}"), 5, false);
    // SUBSCRIBE is refused (SUBACK 0x80), PINGREQ answered.
    let mut sub = Vec::new();
    sub.extend_from_slice(&6u16.to_be_bytes());
    string(b"annals/#", &mut sub);
    sub.push(1);
    c.send(&packet(0x82, &sub));
    assert_eq!(c.read(), Some((0x90, vec![0, 6, 0x80])));
    c.send(&[0xc0, 0]);
    assert_eq!(c.read(), Some((0xd0, vec![])));
    assert_eq!(count(&s, "farm", "m", None), 1);
    assert_eq!(
        metric(&s, "annals_mqtt_messages_total{outcome=\"malformed\"}"),
        3
    );
    assert_eq!(
        metric(&s, "annals_mqtt_messages_total{outcome=\"refused\"}"),
        2
    );

    // A packet larger than the maximum (1 MiB) closes its own connection at the header.
    let (mut big, _, _) = Raw::connect(port, "big", true, None);
    let mut header = vec![0x30];
    remaining_length(2 << 20, &mut header);
    big.send(&header);
    assert!(big.closed(), "oversized packet closes the connection");
    // Garbage instead of CONNECT: closed.
    let mut junk = Raw::open(port);
    junk.send(&[0xff, 0x00]);
    assert!(junk.closed());
    // QoS 2 is not supported: closed.
    let (mut q2, _, _) = Raw::connect(port, "qos2", true, None);
    q2.send(&publish_packet(
        "annals/farm/write",
        &format!("m v=9 {T0}"),
        2,
        1,
        false,
    ));
    assert!(q2.closed());
    // The first connection is unaffected.
    c.publish1("annals/farm/write", &format!("m v=2 {T0}"), 7, false);
    assert_eq!(count(&s, "farm", "m", None), 2);
}

#[test]
fn wrong_password_is_refused_and_a_token_writes() {
    let (_d, s, port) = start_mqtt(true);
    let admin = s.admin_token.clone().unwrap();
    let token = |spec: &str| -> String {
        let v: Value = agent()
            .post(&s.url("/api/v3/tokens"))
            .set("Authorization", &format!("Bearer {admin}"))
            .send_string(spec)
            .unwrap()
            .into_json()
            .unwrap();
        v["token"]
            .as_str()
            .or_else(|| v["secret"].as_str())
            .unwrap_or_else(|| panic!("{v}"))
            .to_owned()
    };
    let writer = token(r#"{"write":true,"db":"farm"}"#);
    let reader = token(r#"{"read":true}"#);

    // Wrong or missing token: CONNACK 0x04 (bad user name or password), then closed.
    let (mut c, _, code) = Raw::connect(port, "dev-1", true, Some("annals_wrong"));
    assert_eq!(code, 4);
    assert!(c.closed());
    let (mut c, _, code) = Raw::connect(port, "dev-1", true, None);
    assert_eq!(code, 4);
    assert!(c.closed());
    // A token that may not write: 0x05 (not authorized).
    let (_, _, code) = Raw::connect(port, "dev-1", true, Some(reader.as_str()));
    assert_eq!(code, 5);
    let o = mosquitto_pub(
        port,
        &[
            "-t",
            "annals/farm/write",
            "-q",
            "1",
            "-u",
            "dev",
            "-P",
            "annals_wrong",
            "-m",
            "m v=1",
        ],
    );
    assert!(!o.status.success(), "a wrong password must fail");

    // The right token: written. A database outside the token's scope: dropped (3.1.1 gets
    // its PUBACK) and counted.
    ok(mosquitto_pub(
        port,
        &[
            "-t",
            "annals/farm/write",
            "-q",
            "1",
            "-u",
            "dev",
            "-P",
            &writer,
            "-m",
            &format!("m v=1 {T0}"),
        ],
    ));
    let (mut c, _, code) = Raw::connect(port, "dev-2", true, Some(writer.as_str()));
    assert_eq!(code, 0);
    c.publish1("annals/farm/write", &format!("m v=2 {T0}"), 1, false);
    c.publish1("annals/other/write", &format!("m v=3 {T0}"), 2, false);
    assert_eq!(count(&s, "farm", "m", Some(admin.as_str())), 2);
    assert_eq!(count(&s, "other", "m", Some(admin.as_str())), 0);
    assert_eq!(
        metric_auth(
            &s,
            &admin,
            "annals_mqtt_messages_total{outcome=\"forbidden\"}"
        ),
        1
    );
}

fn metric_auth(s: &Server, token: &str, name_and_labels: &str) -> u64 {
    let text = match agent()
        .get(&s.url("/metrics"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r.into_string().unwrap(),
        Err(e) => panic!("/metrics: {e}"),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

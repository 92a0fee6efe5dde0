"""psycopg 3 against annals' PostgreSQL wire listener (run by tests/pg.rs).

Usage: pg_psycopg.py MODE PORT USER PASSWORD
  queries  extended protocol with parameters, client-side binding (simple protocol),
           types, Grafana's catalog queries, read-only refusal
  auth     good token works, wrong password is refused with SQLSTATE 28P01
  tls      sslmode=require works (self-signed certificate, not verified)
  limit    with --pg-max-connections 2, a third connection gets SQLSTATE 53300
Exits non-zero (with a traceback) on any failed check; prints "ok" at the end.
"""

import datetime
import socket
import struct
import sys

import psycopg
from psycopg import ClientCursor

mode, port, user, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]


def connect(db="fleet", pw=None, **kw):
    args = dict(host="127.0.0.1", port=int(port), user=user, dbname=db,
                connect_timeout=20, autocommit=True)
    if pw:
        args["password"] = pw
    args.update(kw)
    return psycopg.connect(**args)


def expect_error(fn, sqlstate):
    try:
        fn()
    except psycopg.Error as e:
        got = e.sqlstate
        assert got == sqlstate, f"expected SQLSTATE {sqlstate}, got {got}: {e}"
        return e
    raise AssertionError(f"expected SQLSTATE {sqlstate}, got no error")


def expect_refused(fn, message):
    """A refused connection: libpq reports no SQLSTATE for errors during startup, so psycopg's
    error is checked by its message (the code itself is checked by startup_sqlstate)."""
    try:
        fn()
    except psycopg.OperationalError as e:
        assert message in str(e), f"expected {message!r} in: {e}"
        return e
    raise AssertionError(f"expected the connection to be refused ({message})")


def startup_sqlstate(db="fleet", pw=None):
    """Speaks the startup of protocol 3.0 over a raw socket and returns the SQLSTATE of the
    server's ErrorResponse, or None when it reaches ReadyForQuery."""
    sock = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
    try:
        params = b"".join(k + b"\0" + v.encode() + b"\0"
                          for k, v in ((b"user", user), (b"database", db))) + b"\0"
        body = struct.pack("!I", 196608) + params
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        buf = b""
        while True:
            while len(buf) < 5:
                chunk = sock.recv(4096)
                assert chunk, "server closed the connection without an error"
                buf += chunk
            kind, length = buf[:1], struct.unpack("!I", buf[1:5])[0]
            while len(buf) < 1 + length:
                chunk = sock.recv(4096)
                assert chunk, "server closed the connection mid-message"
                buf += chunk
            msg, buf = buf[5:1 + length], buf[1 + length:]
            if kind == b"E":
                fields = {f[:1]: f[1:].decode() for f in msg.split(b"\0") if f}
                return fields.get(b"C")
            if kind == b"Z":
                return None
            if kind == b"R" and struct.unpack("!I", msg[:4])[0] == 3:
                pwd = (pw or "").encode() + b"\0"
                sock.sendall(b"p" + struct.pack("!I", len(pwd) + 4) + pwd)
    finally:
        sock.close()


def queries():
    with connect() as conn:
        cur = conn.cursor()
        # Extended protocol: parameters are sent separately ($1) and bound by the server.
        cur.execute("SELECT truck, velocity, load, time FROM readings WHERE truck = %s "
                    "ORDER BY time", ("t1",))
        rows = cur.fetchall()
        assert [r[:3] for r in rows] == [("t1", 1.5, 10), ("t1", 3.5, 30)], rows
        assert isinstance(rows[0][3], datetime.datetime), rows
        assert rows[0][3] == datetime.datetime(2023, 11, 14, 22, 13, 20), rows
        assert [d.name for d in cur.description] == ["truck", "velocity", "load", "time"]
        cur.execute("SELECT count(*) FROM readings WHERE velocity > %s AND load <= %s",
                    (2.0, 30))
        assert cur.fetchone()[0] == 2
        # A prepared statement run several times with different values.
        for truck, n in (("t1", 2), ("t2", 1), ("none", 0)):
            cur.execute("SELECT count(*) FROM readings WHERE truck = %s", (truck,),
                        prepare=True)
            assert cur.fetchone()[0] == n, truck
        # A quote in a parameter is data, not SQL.
        cur.execute("SELECT count(*) FROM readings WHERE truck = %s", ("t1' OR 'a'='a",))
        assert cur.fetchone()[0] == 0

        # Client-side binding: the simple query protocol.
        ccur = ClientCursor(conn)
        ccur.execute("SELECT site, sum(load) AS s FROM readings WHERE truck = %s "
                     "GROUP BY site", ("t1",))
        assert ccur.fetchall() == [("north", 40)]

        # Catalog queries Grafana's PostgreSQL data source sends.
        cur.execute("SELECT version()")
        assert "PostgreSQL" in cur.fetchone()[0]
        cur.execute("""SELECT quote_ident(table_name) AS "table" FROM information_schema.tables
            WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog')
            AND table_schema = current_schema() ORDER BY 1""")
        tables = [r[0] for r in cur.fetchall()]
        assert "readings" in tables and "diagnostics" in tables, tables
        cur.execute("""SELECT quote_ident(column_name) AS "column", data_type AS "type"
            FROM information_schema.columns WHERE quote_ident(table_name) = 'readings'
            ORDER BY 1""")
        cols = dict(cur.fetchall())
        assert "velocity" in cols and "truck" in cols, cols
        cur.execute("SELECT current_setting('search_path')")
        assert cur.fetchone()[0] == "fleet"
        cur.execute("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s ORDER BY 1", ("fleet",))
        assert [r[0] for r in cur.fetchall()] == ["diagnostics", "readings"]

        # Read-only, in both protocols.
        expect_error(lambda: cur.execute("INSERT INTO readings (truck) VALUES (%s)", ("x",)),
                     "25006")
        expect_error(lambda: ccur.execute("DELETE FROM readings"), "25006")
        # Errors leave the connection usable.
        expect_error(lambda: cur.execute("SELECT * FROM no_such_table"), "42000")
        cur.execute("SELECT count(*) FROM readings")
        assert cur.fetchone()[0] == 3

    # Transactions (psycopg's default, autocommit off) are accepted as no-ops.
    with connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM readings WHERE truck = %s", ("t2",))
            assert cur.fetchone()[0] == 1
        conn.commit()


def auth():
    with connect(pw=password) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 3
    expect_refused(lambda: connect(pw="wrong-" + password), "password authentication failed")
    code = startup_sqlstate(pw="wrong-" + password)
    assert code == "28P01", code
    assert startup_sqlstate(pw=password) is None


def tls():
    with connect(sslmode="require") as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 3
    # Plain connections still work when TLS is configured.
    with connect(sslmode="disable") as conn:
        assert not conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def limit():
    a, b = connect(), connect()
    try:
        expect_refused(lambda: connect(), "too many clients")
        code = startup_sqlstate()
        assert code == "53300", code
    finally:
        a.close()
        b.close()
    # Closed connections free their slots.
    import time
    deadline = time.time() + 10
    while True:
        try:
            with connect() as c:
                assert c.execute("SELECT 1").fetchone()[0] == 1
            break
        except psycopg.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


{"queries": queries, "auth": auth, "tls": tls, "limit": limit}[mode]()
print("ok")

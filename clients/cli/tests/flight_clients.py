"""Real Flight clients against a running annals (driven by clients/cli/tests/flight.rs).

    python3 flight_clients.py open GRPC_PORT HTTP_PORT
    python3 flight_clients.py auth GRPC_PORT HTTP_PORT ADMIN READ_FLEET WRITE_FLEET

`open` (server without auth; databases `fleet` with 20,000 rows in `cpu` and `other` exist):
pyarrow.flight (Flight SQL statement by hand, the InfluxDB 3 ticket, DoPut with receipts),
ADBC (get_objects, get_table_schema, a query, a prepared statement, bulk ingest), DuckDB over
rows fetched with ADBC against the server's own aggregate, influxdb3-python on the HTTP port.
`auth`: no token, a wrong token, a good one (bearer and handshake), permissions.
Exits non-zero (an AssertionError or a client error) when anything is wrong.
"""

import json
import sys
import time
import urllib.request

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
import pyarrow as pa
import pyarrow.flight as fl
from influxdb_client_3 import InfluxDBClient3

DB_HEADER = adbc_driver_flightsql.DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + "database"
AUTH_HEADER = adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_bytes(field, b):
    return varint(field << 3 | 2) + varint(len(b)) + b


def any_cmd(name, body):
    """A protobuf `Any` holding a Flight SQL command, encoded by hand."""
    url = ("type.googleapis.com/arrow.flight.protocol.sql." + name).encode()
    return pb_bytes(1, url) + pb_bytes(2, body)


def statement(sql):
    return any_cmd("CommandStatementQuery", pb_bytes(1, sql.encode()))


def http_sql(http, db, sql, token=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{http}/api/v3/query_sql",
        data=json.dumps({"db": db, "q": sql, "format": "json"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def flight_sql_query(client, sql, options):
    info = client.get_flight_info(fl.FlightDescriptor.for_command(statement(sql)), options)
    assert len(info.endpoints) == 1, info
    return client.do_get(info.endpoints[0].ticket, options).read_all(), info


def adbc(uri, db=None, **kw):
    kwargs = dict(kw)
    if db:
        kwargs[DB_HEADER] = db
    return flight_sql.connect(uri, db_kwargs=kwargs)


def expect_error(fn, kinds, needle=None):
    try:
        fn()
    except kinds as e:
        if needle:
            assert needle in str(e), f"expected {needle!r} in {e}"
        return e
    raise AssertionError(f"expected {kinds}, got success")


def run_open(grpc, http):
    uri = f"grpc://127.0.0.1:{grpc}"
    client = fl.FlightClient(uri)
    opts = fl.FlightCallOptions(headers=[(b"database", b"fleet")])

    # Flight SQL statement (by hand) through pyarrow.flight: many rows in several batches.
    table, info = flight_sql_query(client, "SELECT host, usage, time FROM cpu ORDER BY time", opts)
    assert table.num_rows == 20000, table.num_rows
    assert info.schema.names == ["host", "usage", "time"], info.schema
    assert table.schema.field("host").type == pa.string(), table.schema
    reader = client.do_get(info.endpoints[0].ticket, opts)
    batches = sum(1 for _ in reader)
    assert batches >= 2, f"streamed in {batches} batch(es)"
    # Two databases exist: without the header the server asks which.
    expect_error(lambda: flight_sql_query(client, "SELECT 1", fl.FlightCallOptions()),
                 (fl.FlightError, pa.ArrowInvalid), "database")
    # Bad SQL is an error with DataFusion's message.
    expect_error(lambda: flight_sql_query(client, "SELECT nope FROM cpu", opts),
                 (fl.FlightError, pa.ArrowInvalid), "nope")

    # The InfluxDB 3 ticket: plain JSON, database inside.
    t = fl.Ticket(json.dumps({"database": "fleet", "sql_query": "SELECT count(*) AS n FROM cpu",
                              "query_type": "sql"}).encode())
    got = client.do_get(t).read_all().to_pylist()
    assert got == [{"n": 20000}], got
    t = fl.Ticket(json.dumps({"database": "fleet", "sql_query": "SHOW MEASUREMENTS",
                              "query_type": "influxql"}).encode())
    expect_error(lambda: client.do_get(t).read_all(), (fl.FlightError, pa.ArrowNotImplementedError),
                 "InfluxQL")

    # Plain DoPut with a path descriptor: one JSON receipt per batch, rows durable.
    schema = pa.schema([
        pa.field("time", pa.timestamp("ns")),
        pa.field("room", pa.string(), metadata={"annals.kind": "tag"}),
        pa.field("temp", pa.float64()),
    ])
    writer, meta = client.do_put(fl.FlightDescriptor.for_path("fleet", "climate"), schema)
    receipts = []
    for k in range(3):
        batch = pa.record_batch([
            pa.array([1_700_000_000_000_000_000 + k * 1000 + i for i in range(100)], pa.timestamp("ns")),
            pa.array([f"r{i % 4}" for i in range(100)]),
            pa.array([20.0 + i / 10 for i in range(100)]),
        ], schema=schema)
        writer.write_batch(batch)
        buf = meta.read()
        receipts.append(json.loads(buf.to_pybytes()))
    writer.done_writing()
    writer.close()
    assert [r["batch"] for r in receipts] == [0, 1, 2], receipts
    assert all(r["rows"] == 100 and len(r["entries"]) == 100 for r in receipts), receipts[0]
    tx_ids = {e["tx_id"] for r in receipts for e in r["entries"]}
    assert len(tx_ids) == 300
    ledger = http_sql(http, "fleet", "SELECT _tx_id FROM ledger('climate')")
    assert {r["_tx_id"] for r in ledger} == tx_ids, "receipt tx_ids differ from the ledger's"
    def put_with_receipt(form):
        """Writes `batch` into climate2 asking for receipt `form`; returns the receipt."""
        options = fl.FlightCallOptions(headers=[(b"annals-receipt", form)])
        writer, meta = client.do_put(fl.FlightDescriptor.for_path("fleet", "climate2"), schema,
                                     options=options)
        writer.write_batch(batch)
        r = json.loads(meta.read().to_pybytes())
        writer.done_writing()
        writer.close()
        return r
    # Compact receipts on request (row count and runs, no per-row entries); a bad form is refused.
    r = put_with_receipt(b"compact")
    assert r["receipt"] == "compact" and r["rows"] == 100 and "entries" not in r, r
    assert sum(run["count"] for run in r["runs"]) == 100, r
    # The row count alone on request.
    r = put_with_receipt(b"count")
    assert r == {"receipt": "count", "rows": 100, "rejected": [], "batch": 0}, r
    bad_form = fl.FlightCallOptions(headers=[(b"annals-receipt", b"tiny")])

    def put_bad_form():
        w, m = client.do_put(fl.FlightDescriptor.for_path("fleet", "climate2"), schema,
                             options=bad_form)
        w.write_batch(batch)
        w.done_writing()
        m.read()
        w.close()
    expect_error(put_bad_form, (fl.FlightError, pa.ArrowException), "annals-receipt")
    # A bad batch is refused with the row and column named; nothing of it is written.
    bad = pa.record_batch([
        pa.array([1, 2], pa.timestamp("ns")),
        pa.array(["a", "b"]),
        pa.array([1.0, float("nan")]),
    ], schema=schema)
    writer, meta = client.do_put(fl.FlightDescriptor.for_path("fleet", "climate"), schema)

    def put_bad():
        writer.write_batch(bad)
        writer.done_writing()
        meta.read()
        writer.close()
    e = expect_error(put_bad, (fl.FlightError, pa.ArrowException))
    assert "row 1" in str(e) and "temp" in str(e), str(e)
    n = http_sql(http, "fleet", "SELECT count(*) AS n FROM climate")[0]["n"]
    assert n == 300, n

    # ADBC: browse, query, prepared statement, ingest.
    with adbc(uri, "fleet") as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        catalogs = {c["catalog_name"]: c for c in objects}
        assert set(catalogs) == {"fleet", "other"}, set(catalogs)
        schemas = {s["db_schema_name"]: s for s in catalogs["fleet"]["catalog_db_schemas"]}
        assert set(schemas) == {"fleet", "system"}, set(schemas)
        tables = {t["table_name"] for t in schemas["fleet"]["db_schema_tables"]}
        assert tables == {"cpu", "climate", "climate2"}, tables
        cpu = [t for t in schemas["fleet"]["db_schema_tables"] if t["table_name"] == "cpu"][0]
        assert {c["column_name"] for c in cpu["table_columns"]} >= {"time", "host", "usage"}
        sys_tables = {t["table_name"] for t in schemas["system"]["db_schema_tables"]}
        assert "checkpoints" in sys_tables, sys_tables
        s = conn.adbc_get_table_schema("cpu", catalog_filter="fleet", db_schema_filter="fleet")
        assert s.field("usage").type == pa.float64(), s
        assert s.field("host").type == pa.string(), s
        assert "TABLE" in conn.adbc_get_table_types(), conn.adbc_get_table_types()
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "annals", info

        cur = conn.cursor()
        cur.execute("SELECT host, count(*) AS n FROM cpu GROUP BY host ORDER BY host")
        assert cur.fetchall() == [("h0", 6667), ("h1", 6667), ("h2", 6666)]
        cur.adbc_prepare("SELECT max(usage) AS m FROM cpu WHERE host = 'h1'")
        cur.execute("SELECT max(usage) AS m FROM cpu WHERE host = 'h1'")
        assert cur.fetchall() == [(9999.5,)]
        expect_error(lambda: cur.execute("SELECT * FROM cpu WHERE host = $1", ("h1",)),
                     Exception, "parameters")

        # DuckDB over the rows ADBC fetched equals the server's own aggregate.
        cur.execute("SELECT host, usage FROM cpu")
        rows = cur.fetch_arrow_table()
        assert rows.num_rows == 20000
        agg = "SELECT host, count(*) AS n, sum(usage) AS s, min(usage) AS lo, max(usage) AS hi, avg(usage) AS a FROM rows GROUP BY host ORDER BY host"
        mine = duckdb.sql(agg).fetchall()
        cur.execute(agg.replace("FROM rows", "FROM cpu"))
        theirs = cur.fetchall()
        assert len(mine) == 3 and mine == theirs, (mine, theirs)

        # Bulk ingest (Flight SQL CommandStatementIngest), tags marked in field metadata.
        ingest = pa.table({
            "time": pa.array([1_700_000_000_000_000_000 + i for i in range(5000)], pa.timestamp("ns")),
            "site": pa.array([f"s{i % 5}" for i in range(5000)]),
            "kw": pa.array([float(i) for i in range(5000)]),
        })
        ingest = ingest.cast(pa.schema([
            pa.field("time", pa.timestamp("ns")),
            pa.field("site", pa.string(), metadata={"annals.kind": "tag"}),
            pa.field("kw", pa.float64()),
        ]))
        assert cur.adbc_ingest("power", ingest, mode="create") == 5000
        assert cur.adbc_ingest("power", ingest.slice(0, 10), mode="append") == 10
        expect_error(lambda: cur.adbc_ingest("power", ingest, mode="create"), Exception, "exists")
        cur.execute("SELECT count(*), count(DISTINCT site) FROM power")
        assert cur.fetchall() == [(5010, 5)]
        cur.close()
    # The tag really is a tag (a dictionary column in the table's schema).
    tags = http_sql(http, "fleet", "SELECT arrow_typeof(site) AS t FROM power LIMIT 1")
    assert tags[0]["t"].startswith("Dictionary"), tags

    # ADBC over the HTTP port (gRPC served there too).
    with adbc(f"grpc://127.0.0.1:{http}", "other") as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM mem")
        assert cur.fetchall() == [(3,)]
        cur.close()

    # influxdb3-python: line protocol in, Flight (on the HTTP port) out.
    with InfluxDBClient3(host=f"http://127.0.0.1:{http}", database="py", token="unused") as c:
        c.write(record="weather,station=s1 temp=21.5 1700000000000000000\n"
                       "weather,station=s2 temp=19.0 1700000000000000001")
        got = c.query("SELECT station, temp FROM weather ORDER BY station", language="sql")
        assert got.to_pylist() == [{"station": "s1", "temp": 21.5}, {"station": "s2", "temp": 19.0}], got
    print("flight open: ok")


def run_auth(grpc, http, admin, read_fleet, write_fleet):
    uri = f"grpc://127.0.0.1:{grpc}"
    client = fl.FlightClient(uri)
    db = (b"database", b"fleet")

    def opts(token):
        return fl.FlightCallOptions(headers=[db, (b"authorization", f"Bearer {token}".encode())])

    # No token, a wrong token: refused before anything runs.
    expect_error(lambda: flight_sql_query(client, "SELECT 1", fl.FlightCallOptions(headers=[db])),
                 fl.FlightUnauthenticatedError)
    expect_error(lambda: flight_sql_query(client, "SELECT 1", opts("annals_wrong")),
                 fl.FlightUnauthenticatedError)
    t = fl.Ticket(json.dumps({"database": "fleet", "sql_query": "SELECT 1"}).encode())
    expect_error(lambda: client.do_get(t).read_all(), fl.FlightUnauthenticatedError)
    # A good token.
    table, _ = flight_sql_query(client, "SELECT count(*) AS n FROM cpu", opts(read_fleet))
    assert table.to_pylist() == [{"n": 3}], table
    # A token for `fleet` cannot read `other`, not even qualified from `fleet`.
    expect_error(lambda: flight_sql_query(client, "SELECT * FROM other.mem", opts(read_fleet)),
                 fl.FlightUnauthorizedError)
    o = fl.FlightCallOptions(headers=[(b"database", b"other"), (b"authorization", f"Bearer {read_fleet}".encode())])
    expect_error(lambda: flight_sql_query(client, "SELECT * FROM mem", o), fl.FlightUnauthorizedError)
    # A read token cannot ingest; a write token can.
    schema = pa.schema([pa.field("time", pa.timestamp("ns")), pa.field("v", pa.float64())])
    batch = pa.record_batch([pa.array([1], pa.timestamp("ns")), pa.array([1.0])], schema=schema)

    def put(token):
        w, m = client.do_put(fl.FlightDescriptor.for_path("fleet", "put"), schema, opts(token))
        w.write_batch(batch)
        w.done_writing()
        buf = m.read()
        # A refused put is raised by close() (after the server's status arrives).
        w.close()
        assert buf is not None, "no PutResult"
        return json.loads(buf.to_pybytes())
    expect_error(lambda: put(read_fleet), fl.FlightUnauthorizedError)
    assert put(write_fleet)["rows"] == 1

    # Handshake with Basic user:token answers a bearer header (pyarrow, then ADBC).
    c2 = fl.FlightClient(uri)
    pair = c2.authenticate_basic_token("anyone", read_fleet)
    assert pair[1].decode() == f"Bearer {read_fleet}", pair
    expect_error(lambda: c2.authenticate_basic_token("anyone", "annals_wrong"), fl.FlightUnauthenticatedError)
    with adbc(uri, "fleet", username="anyone", password=read_fleet) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM cpu")
        assert cur.fetchall() == [(3,)]
        # Listings show only what the token sees.
        cats = [c["catalog_name"] for c in conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()]
        assert cats == ["fleet"], cats
        cur.close()
    with adbc(uri, "fleet", **{AUTH_HEADER: f"Bearer {admin}"}) as conn:
        cats = sorted(c["catalog_name"] for c in conn.adbc_get_objects(depth="catalogs").read_all().to_pylist())
        assert cats == ["fleet", "other"], cats
    expect_error(lambda: adbc(uri, "fleet", **{AUTH_HEADER: "Bearer annals_wrong"}).cursor().execute("SELECT 1"),
                 Exception)
    # influxdb3-python with a token on the HTTP port.
    with InfluxDBClient3(host=f"http://127.0.0.1:{http}", database="fleet", token=read_fleet) as c:
        assert c.query("SELECT count(*) AS n FROM cpu").to_pylist() == [{"n": 3}]
    with InfluxDBClient3(host=f"http://127.0.0.1:{http}", database="fleet", token="annals_wrong") as c:
        expect_error(lambda: c.query("SELECT 1"), Exception)
    print("flight auth: ok")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "open":
        run_open(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "auth":
        run_auth(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7])
    else:
        raise SystemExit(f"unknown mode {mode}")

"""Runs the TSBS-iot queries on DuckDB over Parquet exports of annals' tables.

Usage: python3 duckdb_tsbs.py DATA_DIR QUERIES_SQL [--time RUNS]

DATA_DIR holds readings.parquet and diagnostics.parquet; QUERIES_SQL is tsbs_queries.sql
(queries under `-- name: <id>` headers). Prints one JSON object on stdout:
{"<id>": {"columns": [...], "rows": [[...], ...]}, ...}, with timestamps as
{"ts_us": <microseconds since the epoch>} and decimals as floats. Called by duckdb_tsbs.rs.

With --time RUNS, each query runs once to warm up and then RUNS times, and the output is
{"<id>": {"ms": [<wall ms per run>], "first_ms": <warm-up ms>, "rows": <row count>}, ...}
instead (used by `annals-bench compare-query`).
"""

import datetime
import decimal
import json
import os
import sys
import time

import duckdb

EPOCH = datetime.datetime(1970, 1, 1)
MICRO = datetime.timedelta(microseconds=1)


def parse_queries(path):
    queries, name, lines = [], None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("-- name:"):
                if name is not None:
                    queries.append((name, "".join(lines).strip()))
                name, lines = line[len("-- name:"):].strip(), []
            elif name is not None:
                lines.append(line)
    if name is not None:
        queries.append((name, "".join(lines).strip()))
    return queries


def encode(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"non-finite float {v}")
        return v
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return {"ts_us": (v - EPOCH) // MICRO}
    if isinstance(v, datetime.date):
        return {"ts_us": (datetime.datetime(v.year, v.month, v.day) - EPOCH) // MICRO}
    raise TypeError(f"cannot encode {type(v).__name__} {v!r}")


def time_queries(con, queries, runs):
    out = {}
    for name, sql in queries:
        ms, rows, first = [], 0, None
        for run in range(runs + 1):
            started = time.perf_counter()
            rows = len(con.execute(sql).fetchall())
            elapsed = (time.perf_counter() - started) * 1e3
            if run == 0:
                first = elapsed
            else:
                ms.append(elapsed)
        out[name] = {"ms": ms, "first_ms": first, "rows": rows}
    return out


def main():
    data_dir, queries_path = sys.argv[1], sys.argv[2]
    runs = None
    if len(sys.argv) == 5 and sys.argv[3] == "--time":
        runs = int(sys.argv[4])
    elif len(sys.argv) != 3:
        sys.exit("usage: duckdb_tsbs.py DATA_DIR QUERIES_SQL [--time RUNS]")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in ("readings", "diagnostics"):
        path = os.path.join(data_dir, f"{table}.parquet").replace("'", "''")
        # annals' time is Timestamp(ns) without a zone; the queries bucket plain TIMESTAMPs.
        con.execute(
            f"CREATE VIEW {table} AS SELECT * REPLACE (CAST(time AS TIMESTAMP) AS time) "
            f"FROM read_parquet('{path}')"
        )
    con.execute(
        "CREATE MACRO date_bin(stride, source, origin) AS time_bucket(stride, source, origin)"
    )
    if runs is not None:
        json.dump(time_queries(con, parse_queries(queries_path), runs), sys.stdout)
        return
    out = {}
    for name, sql in parse_queries(queries_path):
        try:
            cur = con.execute(sql)
        except duckdb.Error as e:
            print(f"duckdb: query {name} failed: {e}", file=sys.stderr)
            sys.exit(3)
        columns = [d[0] for d in cur.description]
        rows = [[encode(v) for v in row] for row in cur.fetchall()]
        out[name] = {"columns": columns, "rows": rows}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

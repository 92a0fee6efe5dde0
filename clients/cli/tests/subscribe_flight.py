"""Flight DoGet subscription, driven by tests/subscribe.rs.

usage: subscribe_flight.py <port> <file with the expected tx_ids, one a line>

Reads part of the committed rows, cancels the call, resumes from the last message's cursor
(app_metadata) and checks that every expected tx_id came exactly once, that tags arrive as
strings and that an idle stream sends metadata-only heartbeats carrying the cursor.
"""
import json
import sys
import time

import pyarrow.flight as flight


def ticket(frm):
    t = {"subscribe": {"db": "fleet", "table": "m", "from": frm, "heartbeat": 0.3}}
    return flight.Ticket(json.dumps(t).encode())


def main():
    port, path = sys.argv[1], sys.argv[2]
    want = [l.strip() for l in open(path) if l.strip()]
    client = flight.connect(f"grpc://127.0.0.1:{port}")
    got = []
    cursor = None

    reader = client.do_get(ticket(None))
    assert "_tx_id" in reader.schema.names, reader.schema
    assert str(reader.schema.field("host").type) == "string", reader.schema
    while len(got) < len(want) // 3:
        chunk = reader.read_chunk()
        assert chunk.app_metadata is not None, "every message carries a cursor"
        if chunk.data is not None:
            got.extend(chunk.data.column("_tx_id").to_pylist())
        cursor = chunk.app_metadata.to_pybytes().decode()
    reader.cancel()
    assert 0 < len(got) < len(want), len(got)

    reader = client.do_get(ticket(cursor))
    deadline = time.time() + 60
    heartbeat = None
    while heartbeat is None:
        assert time.time() < deadline, f"{len(got)} of {len(want)} rows"
        chunk = reader.read_chunk()
        meta = chunk.app_metadata.to_pybytes().decode()
        if chunk.data is None:
            if len(got) >= len(want):
                heartbeat = meta
        else:
            got.extend(chunk.data.column("_tx_id").to_pylist())
    reader.cancel()
    assert sorted(got) == sorted(want), (len(got), len(want))
    assert len(set(got)) == len(got), "a row came twice"
    print(f"flight subscription: {len(got)} rows once each, heartbeat cursor {heartbeat}")


if __name__ == "__main__":
    main()

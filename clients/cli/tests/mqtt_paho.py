"""paho-mqtt against annals' MQTT listener (run by tests/mqtt.rs).

Usage: mqtt_paho.py HOST PORT

MQTT 3.1.1: one QoS 0 and one QoS 1 message to annals/farm/write.
MQTT 5.0: a QoS 1 message (PUBACK reason 0), a malformed QoS 1 message (PUBACK reason 0x99,
the connection stays), another valid QoS 1 message on the same connection (reason 0), a QoS 0
message, and a SUBSCRIBE that annals refuses (SUBACK reason >= 0x80).

Prints a JSON summary; exits non-zero on any failure.
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt

TIMEOUT = 30


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def connect(host, port, client_id, protocol):
    acks = {}
    events = {"connected": threading.Event(), "suback": threading.Event()}
    state = {"suback": None, "connack": None}

    def on_connect(client, userdata, flags, reason_code, properties):
        state["connack"] = reason_code.value
        events["connected"].set()

    def on_publish(client, userdata, mid, reason_code, properties):
        acks[mid] = reason_code.value

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        state["suback"] = [r.value for r in reason_codes]
        events["suback"].set()

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
    )
    c.on_connect = on_connect
    c.on_publish = on_publish
    c.on_subscribe = on_subscribe
    c.connect(host, port, keepalive=30)
    c.loop_start()
    if not events["connected"].wait(TIMEOUT):
        fail(f"{client_id}: no CONNACK")
    if state["connack"] != 0:
        fail(f"{client_id}: CONNACK {state['connack']}")
    return c, acks, events, state


def publish(c, acks, topic, payload, qos):
    info = c.publish(topic, payload, qos=qos)
    info.wait_for_publish(TIMEOUT)
    if not info.is_published():
        fail(f"{topic} {payload!r}: not published (no PUBACK)")
    return acks.get(info.mid)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    out = {}

    c, acks, _, _ = connect(host, port, "paho-v311", mqtt.MQTTv311)
    publish(c, acks, "annals/farm/write", "paho,v=311,q=0 x=1 1700000000000000001", 0)
    publish(c, acks, "annals/farm/write", "paho,v=311,q=1 x=2 1700000000000000002", 1)
    c.disconnect()
    c.loop_stop()

    c, acks, events, state = connect(host, port, "paho-v5", mqtt.MQTTv5)
    out["v5_ok"] = publish(
        c, acks, "annals/farm/write", "paho,v=5,q=1 x=3 1700000000000000003", 1
    )
    out["v5_malformed"] = publish(c, acks, "annals/farm/write", "this is not line protocol", 1)
    out["v5_after_malformed"] = publish(
        c, acks, "annals/farm/write/ms", "paho,v=5,q=1b x=4 1700000000004", 1
    )
    publish(c, acks, "annals/farm/write", "paho,v=5,q=0 x=5 1700000000000000005", 0)
    c.subscribe("annals/#", qos=1)
    if not events["suback"].wait(TIMEOUT):
        fail("no SUBACK")
    out["suback"] = state["suback"]
    c.disconnect()
    c.loop_stop()

    if out["v5_ok"] != 0 or out["v5_after_malformed"] != 0:
        fail(f"valid messages not acknowledged with success: {out}")
    if out["v5_malformed"] != 0x99:
        fail(f"malformed message: expected PUBACK reason 0x99, got {out}")
    if not out["suback"] or any(r < 0x80 for r in out["suback"]):
        fail(f"SUBSCRIBE should be refused: {out}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

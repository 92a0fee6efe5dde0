"""Checks an annals `format=jsonld` export with a real JSON-LD processor (pyld).

Usage: python3 jsonld_pyld.py EXPORT.jsonld EXPECTED.json

EXPECTED.json: {"tx_ids": [...], "observations": N}. The export is expanded with pyld with
every remote document load refused (the context must be inline), then converted to RDF.
Every expanded node must be a sosa:Observation with sosa:resultTime (xsd:dateTime),
sosa:madeBySensor and sosa:observedProperty (IRIs), sosa:hasSimpleResult and annals:txId; the
tx ids must be exactly the expected ones and there must be N observations. Prints a summary
as JSON; exits non-zero (with the reason on stderr) on any failure. Needs `pip install pyld`.
"""

import json
import sys

from pyld import jsonld

SOSA = "http://www.w3.org/ns/sosa/"
OBSERVATION = SOSA + "Observation"
RESULT_TIME = SOSA + "resultTime"
MADE_BY_SENSOR = SOSA + "madeBySensor"
OBSERVED_PROPERTY = SOSA + "observedProperty"
HAS_SIMPLE_RESULT = SOSA + "hasSimpleResult"
XSD_DATETIME = "http://www.w3.org/2001/XMLSchema#dateTime"
TX_ID = "urn:annals:txId"


def no_remote(url, options=None):
    raise RuntimeError(f"the export must not need a remote document, it loaded {url}")


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def one(node, prop):
    values = node.get(prop)
    if not isinstance(values, list) or len(values) != 1:
        fail(f"{node.get('@id')}: expected exactly one {prop}, got {values!r}")
    return values[0]


def main():
    export_path, expected_path = sys.argv[1], sys.argv[2]
    with open(export_path, encoding="utf-8") as f:
        doc = json.load(f)
    with open(expected_path, encoding="utf-8") as f:
        expected = json.load(f)

    jsonld.set_document_loader(no_remote)
    expanded = jsonld.expand(doc)
    # With only a @graph at the top, expansion gives the nodes themselves.
    nodes = expanded
    if len(nodes) == 1 and "@graph" in nodes[0]:
        nodes = nodes[0]["@graph"]
    if not nodes:
        fail("the expanded export has no nodes")

    tx_ids = set()
    sensors = set()
    properties = set()
    for node in nodes:
        if OBSERVATION not in node.get("@type", []):
            fail(f"{node.get('@id')}: not a {OBSERVATION}: {node!r}")
        t = one(node, RESULT_TIME)
        if t.get("@type") != XSD_DATETIME:
            fail(f"{node.get('@id')}: resultTime is not an xsd:dateTime: {t!r}")
        sensor = one(node, MADE_BY_SENSOR)
        prop = one(node, OBSERVED_PROPERTY)
        if "@id" not in sensor or "@id" not in prop:
            fail(f"{node.get('@id')}: madeBySensor/observedProperty are not IRIs: {node!r}")
        result = one(node, HAS_SIMPLE_RESULT)
        if "@value" not in result:
            fail(f"{node.get('@id')}: hasSimpleResult has no value: {result!r}")
        tx = one(node, TX_ID)["@value"]
        if not node["@id"].startswith(f"urn:annals:tx:{tx}#"):
            fail(f"{node['@id']}: @id does not name its tx_id {tx}")
        tx_ids.add(tx)
        sensors.add(sensor["@id"])
        properties.add(prop["@id"])

    if tx_ids != set(expected["tx_ids"]):
        fail(f"tx ids differ: export {sorted(tx_ids)}, expected {sorted(expected['tx_ids'])}")
    if len(nodes) != expected["observations"]:
        fail(f"{len(nodes)} observations, expected {expected['observations']}")

    # The same document as RDF: every observation is typed sosa:Observation.
    nquads = jsonld.to_rdf(doc, {"format": "application/n-quads"})
    typed = [
        line
        for line in nquads.splitlines()
        if f"<http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <{OBSERVATION}>" in line
    ]
    if len(typed) != len(nodes):
        fail(f"{len(typed)} rdf:type sosa:Observation triples for {len(nodes)} observations")

    print(
        json.dumps(
            {
                "observations": len(nodes),
                "tx_ids": len(tx_ids),
                "sensors": sorted(sensors),
                "properties": sorted(properties),
                "triples": len(nquads.splitlines()),
            }
        )
    )


if __name__ == "__main__":
    main()

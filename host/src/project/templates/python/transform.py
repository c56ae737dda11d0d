"""{{name}}: a Sluice transform. Greets each person ({"name": ...}),
keeping the record's key and headers; VIPs also go to the `alerts` output."""

import sluice

greeting = "hello"


def init(config):
    global greeting
    greeting = config.get("greeting", "hello")
    if not isinstance(greeting, str):
        raise sluice.Fail("config", "invalid configuration: `greeting` must be a string")


def process(record, out):
    doc = record.json()  # not JSON: the record fails with invalid-input
    if not doc:
        return  # emitting nothing drops the record
    name = doc.get("name")
    if not isinstance(name, str):
        raise sluice.Fail.missing_field("name")
    doc["greeting"] = "%s, %s" % (greeting, name)
    out.json(doc)  # keeps the input's key, headers and timestamp
    if doc.get("vip") is True:
        out.json({"name": name}, to="alerts", key=None, headers=[])

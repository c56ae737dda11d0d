"""json-map in Python: the same transform as the Rust one beside it, passing
the same fixtures (../fixtures).

Configuration: ``mapping`` (output field -> one JSONPath expression or a list
of fallbacks), optional ``input_field`` (read the JSON document held in this
top-level field) and ``missing`` (``omit``, ``null`` or ``fail``). Empty
records (no value, blank, ``null``, ``{}``) are dropped; values that are not
JSON fail with ``invalid-input``. Outputs keep the input's key, headers and
timestamp.
"""

import json

import sluice

fields = []
input_field = None
missing = "omit"


def init(config):
    global fields, input_field, missing
    unknown = set(config) - {"mapping", "input_field", "missing"}
    if unknown:
        raise sluice.Fail("config", "invalid configuration: unknown field `%s`" % sorted(unknown)[0])
    mapping = config.get("mapping")
    if not isinstance(mapping, dict):
        raise sluice.Fail("config", "invalid configuration: `mapping` must be an object")
    if not mapping:
        raise sluice.Fail("config", "invalid configuration: `mapping` is empty")
    missing = config.get("missing", "omit")
    if missing not in ("omit", "null", "fail"):
        raise sluice.Fail("config", "invalid configuration: `missing` must be omit, null or fail")
    input_field = config.get("input_field")
    fields = []
    for name, exprs in mapping.items():
        if isinstance(exprs, str):
            exprs = [exprs]
        if not isinstance(exprs, list) or not all(isinstance(e, str) for e in exprs):
            raise sluice.Fail(
                "config",
                "invalid configuration: mapping `%s` must be a JSONPath string or a list of them" % name,
            )
        if not exprs:
            raise sluice.Fail("config", "invalid configuration: mapping `%s` has no expression" % name)
        compiled = []
        for e in exprs:
            try:
                compiled.append(sluice.JsonPath(e))
            except sluice.JsonPathError as err:
                raise sluice.Fail("config", "invalid configuration: mapping `%s`: %s" % (name, err))
        fields.append((name, compiled))


def is_empty(doc):
    return doc is None or doc == {}


def process(record, out):
    if record.value is None or not record.value.strip():
        return
    doc = record.json()
    if input_field is not None:
        if not isinstance(doc, dict) or input_field not in doc:
            raise sluice.Fail.missing_field(input_field)
        doc = doc[input_field]
        if isinstance(doc, str):
            if not doc.strip():
                return
            try:
                doc = json.loads(doc)
            except ValueError as e:
                raise sluice.Fail.invalid_input(
                    "field `%s` does not hold valid JSON: %s" % (input_field, e)
                ) from None
    if is_empty(doc):
        if record.offset is not None:
            sluice.log.debug("skipping empty record at offset %d" % record.offset)
        return
    mapped = {}
    for name, paths in fields:
        found = None
        for p in paths:
            nodes = p.query(doc)
            if nodes:
                found = (nodes[0] if len(nodes) == 1 else nodes,)
                break
        if found is not None:
            mapped[name] = found[0]
        elif missing == "null":
            mapped[name] = None
        elif missing == "fail":
            raise sluice.Fail(
                "missing-field",
                "field `%s`: no match for %s" % (name, ", ".join(p.expr for p in paths)),
            )
    out.json(mapped)

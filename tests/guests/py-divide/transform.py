"""Test guest: divides 100 by each record's `n`. `n == 0` raises
ZeroDivisionError, which must fail that record alone (kind `internal`);
a record without `n` fails with `missing-field` through sluice.Fail; each
output keeps the input's key and headers and names the host's lookup."""

import sluice


def process(record, out):
    doc = record.json()
    if "n" not in doc:
        raise sluice.Fail.missing_field("n")
    n = doc["n"]
    row = sluice.lookup("units", str(n % 3)) if sluice.config.get("lookup") else None
    doc["q"] = 100 // n
    if row is not None:
        doc["unit"] = row["unit"]
    out.json(doc)

#!/usr/bin/env python3
"""Generates the bundled toll-road sample (deterministic): transactions plus a
few bad records that must end in the dead-letter queue or be dropped."""
import json
import random
from datetime import datetime, timedelta, timezone

rng = random.Random(2026)
booths = [f"B-{i:02d}" for i in range(1, 13)]
start = datetime(2026, 11, 18, 14, 0, tzinfo=timezone.utc)
lines = []
for i in range(1, 1001):
    cls = rng.choice([1, 1, 1, 2, 2, 3, 4])
    amount = round({1: 3.5, 2: 7.0, 3: 12.5, 4: 24.0}[cls] * rng.uniform(0.9, 1.1), 2)
    rec = {
        "txn_id": f"T{i:06d}",
        "customer_id": f"C-{rng.randint(1000, 1199)}",
        "booth_id": rng.choice(booths),
        "plate": f"{rng.choice('ABCDEFGH')}{rng.choice('JKLMNPRS')}{rng.choice('TUVWXYZ')}-{rng.randint(1000, 9999)}",
        "vehicle_class": cls,
        "amount": amount,
        "ts": (start + timedelta(seconds=i * 7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    lines.append(json.dumps(rec))
# Bad and special records, at fixed places.
lines[99] = '{"txn_id": "T000100", "customer_id": "C-1001", "booth_id": "B-03", "amount": 7.0, "ts": "2026-11-18T14:11:40Z"'  # truncated: not JSON
lines[249] = json.dumps({"txn_id": "T000250", "customer_id": "C-1002", "booth_id": "B-99", "plate": "XX-0000", "vehicle_class": 1, "amount": 3.5, "ts": "2026-11-18T14:29:10Z"})  # unknown booth
lines[499] = json.dumps({"txn_id": "T000500", "customer_id": "C-1003", "booth_id": "B-05", "plate": "YY-1111", "vehicle_class": 2, "amount": "n/a", "ts": "2026-11-18T14:58:20Z"})  # amount not a number
lines[749] = json.dumps({"txn_id": "T000750", "customer_id": "C-1004", "booth_id": "B-07", "plate": "ZZ-2222", "vehicle_class": 0, "amount": 0, "ts": "2026-11-18T15:27:30Z"})  # exempt vehicle: dropped by the filter
lines[899] = "{}"  # empty event: skipped by json-map
with open("data/transactions.jsonl", "w") as f:
    f.write("\n".join(lines) + "\n")

with open("booths.csv", "w") as f:
    f.write("booth_id,region,road,expected_vehicles_per_30min\n")
    for i, b in enumerate(booths):
        f.write(f"{b},{['north', 'south', 'east', 'west'][i % 4]},{['A1', 'A2', 'R7'][i % 3]},{rng.randint(80, 400)}\n")

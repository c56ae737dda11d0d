// {{name}}: a Sluice transform. Greets each person ({"name": ...}), keeping
// the record's key and headers; VIPs also go to the `alerts` output.
import { Fail } from "./sluice.js"; // written by `sluice build`

let greeting = "hello";

export function init(config) {
  greeting = config.greeting ?? "hello";
  if (typeof greeting !== "string") {
    throw new Fail("config", "invalid configuration: `greeting` must be a string");
  }
}

export function process(record, out) {
  const doc = record.json(); // not JSON: the record fails with invalid-input
  if (doc === null || Object.keys(doc).length === 0) return; // emitting nothing drops it
  if (typeof doc.name !== "string") throw Fail.missingField("name");
  doc.greeting = `${greeting}, ${doc.name}`;
  out.json(doc); // keeps the input's key, headers and timestamp
  if (doc.vip === true) out.json({ name: doc.name }, { to: "alerts", key: null, headers: [] });
}

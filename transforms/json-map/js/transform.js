// json-map in JavaScript: the same transform as the Rust one beside it,
// passing the same fixtures (../fixtures).
//
// Configuration: `mapping` (output field -> one JSONPath expression or a
// list of fallbacks), optional `input_field` (read the JSON document held in
// this top-level field) and `missing` (`omit`, `null` or `fail`). Empty
// records (no value, blank, `null`, `{}`) are dropped; values that are not
// JSON fail with `invalid-input`. Outputs keep the input's key, headers and
// timestamp.
import { Fail, JsonPath, JsonPathError, log } from "./sluice.js";

let fields = [];
let inputField = null;
let missing = "omit";

export function init(config) {
  for (const k of Object.keys(config)) {
    if (!["mapping", "input_field", "missing"].includes(k)) {
      throw new Fail("config", `invalid configuration: unknown field \`${k}\``);
    }
  }
  const mapping = config.mapping;
  if (mapping === null || typeof mapping !== "object" || Array.isArray(mapping)) {
    throw new Fail("config", "invalid configuration: `mapping` must be an object");
  }
  if (Object.keys(mapping).length === 0) {
    throw new Fail("config", "invalid configuration: `mapping` is empty");
  }
  missing = config.missing ?? "omit";
  if (!["omit", "null", "fail"].includes(missing)) {
    throw new Fail("config", "invalid configuration: `missing` must be omit, null or fail");
  }
  inputField = config.input_field ?? null;
  fields = Object.entries(mapping).map(([name, exprs]) => {
    if (typeof exprs === "string") exprs = [exprs];
    if (!Array.isArray(exprs) || !exprs.every((e) => typeof e === "string")) {
      throw new Fail(
        "config",
        `invalid configuration: mapping \`${name}\` must be a JSONPath string or a list of them`,
      );
    }
    if (exprs.length === 0) {
      throw new Fail("config", `invalid configuration: mapping \`${name}\` has no expression`);
    }
    const paths = exprs.map((e) => {
      try {
        return new JsonPath(e);
      } catch (err) {
        if (err instanceof JsonPathError) {
          throw new Fail("config", `invalid configuration: mapping \`${name}\`: ${err.message}`);
        }
        throw err;
      }
    });
    return [name, paths];
  });
}

const isEmpty = (doc) =>
  doc === null ||
  (typeof doc === "object" && !Array.isArray(doc) && Object.keys(doc).length === 0);

export function process(record, out) {
  if (record.value === null || record.text().trim() === "") return;
  let doc = record.json();
  if (inputField !== null) {
    if (doc === null || typeof doc !== "object" || !(inputField in doc)) {
      throw Fail.missingField(inputField);
    }
    doc = doc[inputField];
    if (typeof doc === "string") {
      if (doc.trim() === "") return;
      try {
        doc = JSON.parse(doc);
      } catch (e) {
        throw Fail.invalidInput(`field \`${inputField}\` does not hold valid JSON: ${e.message}`);
      }
    }
  }
  if (isEmpty(doc)) {
    if (record.offset !== null) log.debug(`skipping empty record at offset ${record.offset}`);
    return;
  }
  const mapped = {};
  for (const [name, paths] of fields) {
    let found;
    for (const p of paths) {
      const nodes = p.query(doc);
      if (nodes.length) {
        found = nodes.length === 1 ? nodes[0] : nodes;
        break;
      }
    }
    if (found !== undefined) mapped[name] = found;
    else if (missing === "null") mapped[name] = null;
    else if (missing === "fail") {
      throw new Fail(
        "missing-field",
        `field \`${name}\`: no match for ${paths.map((p) => p.expr).join(", ")}`,
      );
    }
  }
  out.json(mapped);
}

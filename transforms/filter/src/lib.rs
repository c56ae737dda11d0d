//! `filter`: keeps records whose JSON fields match configured predicates and
//! drops the rest.
//!
//! Configuration:
//! ```json
//! { "where": [ { "field": "$.amount", "op": "gt", "value": 0 } ], "match": "all" }
//! ```
//! or a single condition at the top level: `{ "field": "$.country", "op": "eq", "value": "BR" }`.
//! - `field`: JSONPath (RFC 9535); its first match is compared.
//! - `op`: `eq`, `ne`, `gt`, `gte`, `lt`, `lte` (numbers, or strings compared
//!   as text), `in` (value is a list), `exists`, `missing`, `contains`
//!   (substring of a string, element of an array).
//! - `match`: `all` (default) or `any` of the conditions.
//!
//! A record whose field is missing does not match (except for `missing`).
//! Comparing a number with a non-number fails the record with
//! `invalid-input`, naming the field, rather than silently dropping it.
//! Values that are not valid JSON fail with `invalid-input`.

use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;
use sluice_guest::{Config, Emit, Error, Output, Record, Transform, export_transform};
use std::cmp::Ordering;

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Exists,
    Missing,
    Contains,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionConfig {
    field: String,
    op: Op,
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Match {
    #[default]
    All,
    Any,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(rename = "where")]
    conditions: Vec<ConditionConfig>,
    #[serde(default, rename = "match")]
    mode: Match,
}

struct Condition {
    field: String,
    path: JsonPath,
    op: Op,
    value: Value,
}

/// A compiled filter.
pub struct Filter {
    conditions: Vec<Condition>,
    mode: Match,
}

impl Filter {
    /// Compiles a filter from its JSON configuration.
    pub fn from_config(config: &Value) -> Result<Self, String> {
        let settings = if config.get("where").is_some() {
            Settings::deserialize(config).map_err(|e| format!("invalid configuration: {e}"))?
        } else {
            let one = ConditionConfig::deserialize(config)
                .map_err(|e| format!("invalid configuration: {e}"))?;
            Settings {
                conditions: vec![one],
                mode: Match::All,
            }
        };
        if settings.conditions.is_empty() {
            return Err("invalid configuration: `where` has no condition".into());
        }
        let mut conditions = Vec::new();
        for c in settings.conditions {
            let path = JsonPath::parse(&c.field).map_err(|e| {
                format!(
                    "invalid configuration: `{}` is not valid JSONPath: {e}",
                    c.field
                )
            })?;
            let value = match (c.op, c.value) {
                (Op::Exists | Op::Missing, v) => v.unwrap_or(Value::Null),
                (Op::In, Some(v @ Value::Array(_))) => v,
                (Op::In, _) => {
                    return Err(format!(
                        "invalid configuration: `in` on `{}` needs a list `value`",
                        c.field
                    ));
                }
                (_, Some(v)) => v,
                (op, None) => {
                    return Err(format!(
                        "invalid configuration: `{op:?}` on `{}` needs a `value`",
                        c.field
                    )
                    .to_lowercase());
                }
            };
            conditions.push(Condition {
                field: c.field,
                path,
                op: c.op,
                value,
            });
        }
        Ok(Filter {
            conditions,
            mode: settings.mode,
        })
    }

    /// Whether a JSON document passes the filter.
    pub fn keep(&self, doc: &Value) -> Result<bool, Error> {
        let mut results = self.conditions.iter().map(|c| c.test(doc));
        match self.mode {
            Match::All => {
                for r in results {
                    if !r? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Match::Any => {
                for r in results.by_ref() {
                    if r? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }
}

impl Condition {
    fn test(&self, doc: &Value) -> Result<bool, Error> {
        let found = self.path.query(doc).first();
        let Some(actual) = found else {
            return Ok(self.op == Op::Missing);
        };
        Ok(match self.op {
            Op::Exists => true,
            Op::Missing => false,
            Op::Eq => equal(actual, &self.value),
            Op::Ne => !equal(actual, &self.value),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|list| list.iter().any(|v| equal(actual, v))),
            Op::Contains => match (actual, &self.value) {
                (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                (Value::Array(items), v) => items.iter().any(|i| equal(i, v)),
                _ => false,
            },
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let ord = compare(actual, &self.value).ok_or_else(|| {
                    Error::invalid_input(format!(
                        "field `{}` is {}, which cannot be compared with {}",
                        self.field,
                        describe(actual),
                        self.value
                    ))
                })?;
                match self.op {
                    Op::Gt => ord == Ordering::Greater,
                    Op::Gte => ord != Ordering::Less,
                    Op::Lt => ord == Ordering::Less,
                    _ => ord != Ordering::Greater,
                }
            }
        })
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        Value::Number(n) => format!("the number {n}"),
    }
}

impl Transform for Filter {
    fn init(config: Config) -> Result<Self, String> {
        Filter::from_config(config.value())
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        let doc: Value = record.json()?;
        if self.keep(&doc)? {
            out.emit(&Output::from_record(record));
        }
        Ok(())
    }
}

export_transform!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keep(config: Value, doc: Value) -> Result<bool, Error> {
        Filter::from_config(&config).expect("config").keep(&doc)
    }

    #[test]
    fn comparisons() {
        let gt = json!({"field": "$.amount", "op": "gt", "value": 10});
        assert!(keep(gt.clone(), json!({"amount": 10.5})).expect("ok"));
        assert!(!keep(gt.clone(), json!({"amount": 10})).expect("ok"));
        assert!(!keep(gt.clone(), json!({"other": 1})).expect("ok"));
        let err = keep(gt, json!({"amount": "ten"})).expect_err("type mismatch fails");
        assert!(
            err.message().contains("`$.amount`") && err.message().contains("\"ten\""),
            "{err}"
        );
    }

    #[test]
    fn any_and_all() {
        let conds =
            json!([{"field": "$.a", "op": "eq", "value": 1}, {"field": "$.b", "op": "exists"}]);
        assert!(!keep(json!({"where": conds.clone()}), json!({"a": 1})).expect("ok"));
        assert!(keep(json!({"where": conds, "match": "any"}), json!({"a": 1})).expect("ok"));
    }

    #[test]
    fn in_contains_missing() {
        assert!(
            keep(
                json!({"field": "$.c", "op": "in", "value": ["BR", "PT"]}),
                json!({"c": "PT"})
            )
            .expect("ok")
        );
        assert!(
            keep(
                json!({"field": "$.tags", "op": "contains", "value": "x"}),
                json!({"tags": ["y", "x"]})
            )
            .expect("ok")
        );
        assert!(keep(json!({"field": "$.gone", "op": "missing"}), json!({"c": 1})).expect("ok"));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let e = Filter::from_config(&json!({"field": "$.a", "op": "gt"}))
            .err()
            .expect("fails");
        assert!(e.contains("needs a `value`"), "{e}");
        let e = Filter::from_config(&json!({"field": "$.a", "op": "between", "value": 1}))
            .err()
            .expect("fails");
        assert!(e.contains("between"), "{e}");
    }
}

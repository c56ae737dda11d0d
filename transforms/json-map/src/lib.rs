//! `json-map`: the configurable mapping processor.
//!
//! Configuration:
//! ```json
//! {
//!   "mapping": {
//!     "customer": "$.customer_id",
//!     "booth": ["$.booth_id", "$.booth.id"],
//!     "amount": "$.amount"
//!   },
//!   "input_field": "data",
//!   "missing": "omit"
//! }
//! ```
//! - `mapping`: output field name → one JSONPath expression (RFC 9535) or a
//!   list of them; the first expression that matches gives the value (one
//!   node → that value, several → an array of them). Output fields keep the
//!   configured order.
//! - `input_field` (optional): read the JSON document from this top-level
//!   field of the record (an object, or a string holding JSON) instead of the
//!   whole value.
//! - `missing`: what to do when no expression of a field matches: `omit` the
//!   field (default), write `null`, or `fail` the record (`missing-field`).
//!
//! Empty records (no value, blank, `null` or `{}`) are dropped. Values that
//! are not valid JSON fail with `invalid-input`.

use serde::Deserialize;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;
use sluice_guest::{Config, Emit, Error, Record, Transform, export_transform};

/// One expression or a list of fallbacks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Exprs {
    One(String),
    Many(Vec<String>),
}

/// What to do with a field none of whose expressions match.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Leave the field out of the output.
    #[default]
    Omit,
    /// Write `null`.
    Null,
    /// Fail the record with `missing-field`.
    Fail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    mapping: Map<String, Value>,
    #[serde(default)]
    input_field: Option<String>,
    #[serde(default)]
    missing: Missing,
}

/// A compiled mapping.
pub struct JsonMap {
    fields: Vec<(String, Vec<(String, JsonPath)>)>,
    input_field: Option<String>,
    missing: Missing,
}

impl JsonMap {
    /// Compiles a mapping from its JSON configuration.
    pub fn from_config(config: &Value) -> Result<Self, String> {
        let settings: Settings =
            Settings::deserialize(config).map_err(|e| format!("invalid configuration: {e}"))?;
        if settings.mapping.is_empty() {
            return Err("invalid configuration: `mapping` is empty".to_string());
        }
        let mut fields = Vec::with_capacity(settings.mapping.len());
        for (name, exprs) in settings.mapping {
            let exprs = Exprs::deserialize(exprs).map_err(|_| {
                format!("invalid configuration: mapping `{name}` must be a JSONPath string or a list of them")
            })?;
            let exprs = match exprs {
                Exprs::One(e) => vec![e],
                Exprs::Many(list) if !list.is_empty() => list,
                Exprs::Many(_) => {
                    return Err(format!(
                        "invalid configuration: mapping `{name}` has no expression"
                    ));
                }
            };
            let mut compiled = Vec::with_capacity(exprs.len());
            for e in exprs {
                let path = JsonPath::parse(&e)
                    .map_err(|err| format!("invalid configuration: mapping `{name}`: `{e}` is not valid JSONPath: {err}"))?;
                compiled.push((e, path));
            }
            fields.push((name, compiled));
        }
        Ok(JsonMap {
            fields,
            input_field: settings.input_field,
            missing: settings.missing,
        })
    }

    /// Maps one JSON document; `Ok(None)` means the document was empty.
    pub fn map_value(&self, doc: &Value) -> Result<Option<Value>, Error> {
        let doc = match &self.input_field {
            None => doc,
            Some(field) => match doc.get(field) {
                Some(inner) => inner,
                None => return Err(Error::missing_field(field)),
            },
        };
        let parsed;
        let doc = match doc {
            Value::String(text) if self.input_field.is_some() => {
                if text.trim().is_empty() {
                    return Ok(None);
                }
                parsed = serde_json::from_str::<Value>(text).map_err(|e| {
                    Error::invalid_input(format!(
                        "field `{}` does not hold valid JSON: {e}",
                        self.input_field.as_deref().unwrap_or_default()
                    ))
                })?;
                &parsed
            }
            other => other,
        };
        if is_empty(doc) {
            return Ok(None);
        }
        let mut out = Map::with_capacity(self.fields.len());
        for (name, exprs) in &self.fields {
            let found = exprs.iter().find_map(|(_, path)| {
                let nodes = path.query(doc).all();
                match nodes.len() {
                    0 => None,
                    1 => Some(nodes[0].clone()),
                    _ => Some(Value::Array(nodes.into_iter().cloned().collect())),
                }
            });
            match (found, self.missing) {
                (Some(v), _) => {
                    out.insert(name.clone(), v);
                }
                (None, Missing::Omit) => {}
                (None, Missing::Null) => {
                    out.insert(name.clone(), Value::Null);
                }
                (None, Missing::Fail) => {
                    let tried: Vec<&str> = exprs.iter().map(|(e, _)| e.as_str()).collect();
                    return Err(Error::new(
                        "missing-field",
                        format!("field `{name}`: no match for {}", tried.join(", ")),
                    ));
                }
            }
        }
        Ok(Some(Value::Object(out)))
    }

    /// Maps one raw record value; `Ok(None)` means the record is empty.
    pub fn map_bytes(&self, value: Option<&[u8]>) -> Result<Option<Value>, Error> {
        let Some(bytes) = value else { return Ok(None) };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_input(format!("record value is not valid JSON: {e}")))?;
        self.map_value(&doc)
    }
}

fn is_empty(doc: &Value) -> bool {
    match doc {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

impl Transform for JsonMap {
    fn init(config: Config) -> Result<Self, String> {
        JsonMap::from_config(config.value())
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        match self.map_bytes(record.value())? {
            // The output keeps the input's key, headers and timestamp.
            Some(mapped) => out.json_from(record, &mapped),
            None => {
                if let Some(offset) = record.offset() {
                    sluice_guest::log(
                        sluice_guest::Level::Debug,
                        &format!("skipping empty record at offset {offset}"),
                    );
                }
                Ok(())
            }
        }
    }
}

export_transform!(JsonMap);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(config: Value, input: &str) -> Result<Option<Value>, Error> {
        JsonMap::from_config(&config)
            .expect("config")
            .map_bytes(Some(input.as_bytes()))
    }

    #[test]
    fn maps_with_fallbacks_and_keeps_order() {
        let cfg = json!({"mapping": {"z": "$.a", "b": ["$.missing", "$.x.y"]}});
        let out = map(cfg, r#"{"a": 1, "x": {"y": "two"}}"#)
            .expect("ok")
            .expect("some");
        assert_eq!(
            serde_json::to_string(&out).expect("json"),
            r#"{"z":1,"b":"two"}"#
        );
    }

    #[test]
    fn several_nodes_become_an_array() {
        let out = map(
            json!({"mapping": {"ids": "$.items[*].id"}}),
            r#"{"items":[{"id":1},{"id":2}]}"#,
        )
        .expect("ok")
        .expect("some");
        assert_eq!(out, json!({"ids": [1, 2]}));
    }

    #[test]
    fn empty_records_are_skipped() {
        let cfg = json!({"mapping": {"a": "$.a"}});
        for input in ["", "   ", "null", "{}"] {
            assert_eq!(
                map(cfg.clone(), input).expect("ok"),
                None,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn invalid_json_fails_with_position() {
        let err = map(json!({"mapping": {"a": "$.a"}}), "{not json").expect_err("must fail");
        assert_eq!(err.kind(), "invalid-input");
        assert!(
            err.message().contains("not valid JSON"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("column"), "{}", err.message());
    }

    #[test]
    fn missing_policies() {
        let input = r#"{"a": 1}"#;
        assert_eq!(
            map(json!({"mapping": {"b": "$.b"}}), input).expect("ok"),
            Some(json!({}))
        );
        assert_eq!(
            map(json!({"mapping": {"b": "$.b"}, "missing": "null"}), input).expect("ok"),
            Some(json!({"b": null}))
        );
        let err =
            map(json!({"mapping": {"b": "$.b"}, "missing": "fail"}), input).expect_err("fail");
        assert_eq!(err.kind(), "missing-field");
        assert!(err.message().contains("`b`") && err.message().contains("$.b"));
    }

    #[test]
    fn input_field_holding_a_json_string() {
        let cfg = json!({"mapping": {"id": "$.id"}, "input_field": "data"});
        let out = map(cfg, r#"{"data": "{\"id\": 7}"}"#).expect("ok");
        assert_eq!(out, Some(json!({"id": 7})));
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = JsonMap::from_config(&json!({"mapping": {"a": "$[?"}}))
            .err()
            .expect("must fail");
        assert!(
            err.contains("mapping `a`") && err.contains("not valid JSONPath"),
            "{err}"
        );
        let err = JsonMap::from_config(&json!({"mapping": {"a": "$.a"}, "colour": 1}))
            .err()
            .expect("must fail");
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}

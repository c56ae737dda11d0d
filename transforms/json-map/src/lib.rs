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

mod fast;
mod scan;

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
    /// Per output field: its name and its expressions.
    fields: Vec<(String, Vec<String>)>,
    /// The expressions compiled by `serde_json_path`, per field, for the
    /// general path. When the fast path covers the mapping they are compiled
    /// on first use (most pipelines never need them, and compiling is most
    /// of an instance's start-up); otherwise at `init`, where a bad
    /// expression is reported.
    compiled: std::sync::OnceLock<Vec<Vec<JsonPath>>>,
    input_field: Option<String>,
    missing: Missing,
    /// The one-pass path, when every expression is a singular path.
    fast: Option<fast::Fast>,
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
            fields.push((name, exprs));
        }
        let fast = match settings.input_field {
            None => fast::Fast::compile(&fields),
            Some(_) => None,
        };
        let compiled = std::sync::OnceLock::new();
        if fast.is_none() {
            let _ = compiled.set(compile(&fields)?);
        }
        Ok(JsonMap {
            fields,
            compiled,
            input_field: settings.input_field,
            missing: settings.missing,
            fast,
        })
    }

    /// The compiled expressions (compiled now if they were not yet).
    fn compiled(&self) -> Result<&[Vec<JsonPath>], Error> {
        if let Some(c) = self.compiled.get() {
            return Ok(c);
        }
        // Only reached when the fast path covers the mapping, whose singular
        // paths are all valid JSONPath: an error here is a bug.
        let c = compile(&self.fields).map_err(Error::internal)?;
        Ok(self.compiled.get_or_init(|| c))
    }

    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Maps one raw record value, appending the output document to `out`;
    /// `Ok(false)` means the record is empty (nothing appended). The same
    /// result as [`JsonMap::map_bytes`] serialized, without building the
    /// input's tree when the mapping is fast.
    pub fn map_into(&self, value: Option<&[u8]>, out: &mut Vec<u8>) -> Result<bool, Error> {
        if let (Some(fast), Some(bytes)) = (&self.fast, value) {
            match fast.map(
                bytes,
                self.missing == Missing::Null,
                self.missing == Missing::Fail,
                out,
            ) {
                fast::Mapped::Written => return Ok(true),
                fast::Mapped::Empty => return Ok(false),
                fast::Mapped::Missing(i) => return Err(self.missing_error(i)),
                fast::Mapped::Fallback => {}
            }
        }
        match self.map_bytes(value)? {
            Some(mapped) => {
                serde_json::to_writer(&mut *out, &mapped)
                    .map_err(|e| Error::internal(format!("cannot serialize output: {e}")))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn missing_error(&self, field: usize) -> Error {
        let (name, exprs) = match self.fields.get(field) {
            Some((name, exprs)) => (name.as_str(), exprs.as_slice()),
            None => ("?", &[][..]),
        };
        let tried: Vec<&str> = exprs.iter().map(String::as_str).collect();
        Error::new(
            "missing-field",
            format!("field `{name}`: no match for {}", tried.join(", ")),
        )
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
        for ((name, _), paths) in self.fields.iter().zip(self.compiled()?) {
            let found = paths.iter().find_map(|path| {
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
                    let i = self.fields.iter().position(|(n, _)| n == name).unwrap_or(0);
                    return Err(self.missing_error(i));
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

/// Compiles every field's expressions; the error names the field and the
/// expression.
fn compile(fields: &[(String, Vec<String>)]) -> Result<Vec<Vec<JsonPath>>, String> {
    fields
        .iter()
        .map(|(name, exprs)| {
            exprs
                .iter()
                .map(|e| {
                    JsonPath::parse(e).map_err(|err| {
                        format!("invalid configuration: mapping `{name}`: `{e}` is not valid JSONPath: {err}")
                    })
                })
                .collect()
        })
        .collect()
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
        // The output keeps the input's key, headers and timestamp.
        match out.write_from(record, |buf| self.map_into(record.value(), buf))? {
            true => Ok(()),
            false => {
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

    /// JSON text of a random value: nested objects (duplicate members,
    /// escaped names), arrays, strings with escapes, numbers of every shape.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("-0".to_string()),
            Just("12.50".to_string()),
            Just("1e3".to_string()),
            Just("-0.0".to_string()),
            "-?(0|[1-9][0-9]{0,10})\\.[0-9]{1,17}([eE][-+]?[0-9])?".prop_map(String::from),
            "-?(0|[1-9][0-9]{0,4})\\.0{0,3}[1-9]{1,3}".prop_map(String::from),
            Just("123456789012345678901234567890".to_string()),
            "[a-z é\\\"]{0,6}".prop_map(|s| serde_json::to_string(&s).expect("string")),
            Just(r#""caf\u00e9 \n""#.to_string()),
            Just(r#""\ud83d\ude00 \/\t\u0000""#.to_string()),
            Just("\"long string, longer than one word: 0123456789\"".to_string()),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            let key = prop_oneof![
                Just("a"),
                Just("b"),
                Just("c"),
                Just("x"),
                Just("a b"),
                Just("\\u0061")
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec((key, inner), 0..5).prop_map(|m| {
                    let members: Vec<String> = m
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\" : {v}"))
                        .collect();
                    format!(" {{ {} }} ", members.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        /// The one-pass path writes exactly what the general path gives
        /// (parse, JSONPath, serialize), for any document and policy.
        #[test]
        fn the_fast_path_writes_what_the_general_path_gives(doc in json_text(), policy in 0usize..3) {
            same_as_general_path(doc.as_bytes(), policy)?;
        }

        /// The same for documents broken at one byte (most no longer JSON):
        /// the fast path never takes what the general path rejects.
        #[test]
        fn the_fast_path_agrees_on_broken_documents(
            doc in json_text(),
            at in proptest::num::usize::ANY,
            byte in proptest::sample::select(b"\"\\,:{}[]e0-.u \x01\x1f\xffx".to_vec()),
            how in 0usize..3,
            policy in 0usize..3,
        ) {
            let mut doc = doc.into_bytes();
            if !doc.is_empty() {
                let at = at % doc.len();
                match how {
                    0 => doc[at] = byte,
                    1 => doc.insert(at, byte),
                    _ => doc.truncate(at),
                }
            }
            same_as_general_path(&doc, policy)?;
        }
    }

    /// Maps `doc` through the fast path and the general path and fails
    /// unless both give the same bytes, or the same error.
    fn same_as_general_path(
        doc: &[u8],
        policy: usize,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        {
            let missing = ["omit", "null", "fail"][policy];
            let m = JsonMap::from_config(&json!({
                "mapping": {"a": "$.a", "bc": "$.b.c", "b1": "$.b[1]", "sp": "$['a b']", "xc": ["$.x", "$.c.a"]},
                "missing": missing,
            })).expect("config");
            proptest::prop_assert!(m.is_fast());
            let general = m
                .map_bytes(Some(doc))
                .map(|v| v.map(|v| serde_json::to_vec(&v).expect("json")));
            let mut buf = b"prefix".to_vec();
            let fast = m.map_into(Some(doc), &mut buf);
            match (general, fast) {
                (Ok(Some(g)), Ok(true)) => proptest::prop_assert_eq!(
                    String::from_utf8_lossy(&buf[6..]),
                    String::from_utf8_lossy(&g)
                ),
                (Ok(None), Ok(false)) => proptest::prop_assert_eq!(&buf[..], b"prefix"),
                (Err(g), Err(f)) => {
                    proptest::prop_assert_eq!(g.kind(), f.kind());
                    proptest::prop_assert_eq!(g.message(), f.message());
                }
                (g, f) => proptest::prop_assert!(
                    false,
                    "general {:?} but fast {:?} for {}",
                    g.map(|v| v.map(String::from_utf8)),
                    f,
                    String::from_utf8_lossy(doc)
                ),
            }
        }
        Ok(())
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// The general path's expressions are compiled lazily when the fast
        /// path covers a mapping, which is sound only if every expression
        /// the fast path accepts is valid JSONPath that selects the same.
        #[test]
        fn every_singular_path_is_valid_jsonpath(
            steps in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-zA-Z_][a-zA-Z0-9_]{0,5}".prop_map(|n| format!(".{n}")),
                    "[a-z 0-9_.$-]{0,6}".prop_map(|n| format!("['{n}']")),
                    (0usize..1000).prop_map(|i| format!("[{i}]")),
                    "[^'\\\"]{0,4}".prop_map(|n| format!("['{n}']")),
                ],
                1..5,
            )
        ) {
            let expr = format!("${}", steps.concat());
            if fast::singular(&expr).is_some() {
                proptest::prop_assert!(JsonPath::parse(&expr).is_ok(), "{} is singular but not JSONPath", expr);
            }
        }
    }

    #[test]
    fn a_mapping_the_fast_path_covers_compiles_its_jsonpaths_on_first_use() {
        let m = JsonMap::from_config(&json!({"mapping": {"a": "$.a"}})).expect("config");
        assert!(m.is_fast());
        assert!(m.compiled.get().is_none(), "not compiled at init");
        // The general path compiles them.
        assert_eq!(
            m.map_bytes(Some(br#"{"a": [1, {"b": 2}]}"#)).expect("ok"),
            Some(json!({"a": [1, {"b": 2}]}))
        );
        assert!(m.compiled.get().is_some());
        let general = JsonMap::from_config(&json!({"mapping": {"a": "$..a"}})).expect("config");
        assert!(!general.is_fast());
        assert!(general.compiled.get().is_some(), "compiled at init");
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

//! `enrich`: adds fields from a reference table and routes records above a
//! threshold to a named `alerts` output.
//!
//! Configuration:
//! ```json
//! {
//!   "table": "booths",
//!   "key": "$.booth",
//!   "fields": ["region", "expected_traffic"],
//!   "into": null,
//!   "on_missing": "fail",
//!   "alert": { "field": "$.amount", "above": 20, "output": "alerts", "also_default": true }
//! }
//! ```
//! - `table`: reference table name, loaded by the host from the pipeline's
//!   `tables` (a CSV or JSON file); `key`: JSONPath of the lookup key in the
//!   record (a string or a number).
//! - `fields`: the columns of the row to add (default: all but the key column
//!   is not known to the guest, so all of them); `into`: nest them under this
//!   field instead of merging them into the record.
//! - `on_missing`: when the key is absent from the table: `fail` the record
//!   (`lookup-failed`, default), `keep` it unenriched, or `drop` it.
//! - `alert` (optional): records whose `field` is a number above `above` are
//!   also emitted (or only, with `also_default: false`) to the named `output`
//!   (default `alerts`), with an `alert` field giving the reason.

use serde::Deserialize;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;
use sluice_guest::{Config, Emit, Error, Record, Transform, export_transform};

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnMissing {
    #[default]
    Fail,
    Keep,
    Drop,
}

fn default_output() -> String {
    "alerts".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertConfig {
    field: String,
    above: f64,
    #[serde(default = "default_output")]
    output: String,
    #[serde(default = "yes")]
    also_default: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    table: String,
    key: String,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    into: Option<String>,
    #[serde(default)]
    on_missing: OnMissing,
    #[serde(default)]
    alert: Option<AlertConfig>,
}

struct Alert {
    path: JsonPath,
    config: AlertConfig,
}

/// A configured enricher.
pub struct Enrich {
    settings: Settings,
    key: JsonPath,
    alert: Option<Alert>,
}

fn parse_path(expr: &str, what: &str) -> Result<JsonPath, String> {
    JsonPath::parse(expr)
        .map_err(|e| format!("invalid configuration: {what} `{expr}` is not valid JSONPath: {e}"))
}

impl Enrich {
    /// Builds the enricher from its JSON configuration.
    pub fn from_config(config: &Value) -> Result<Self, String> {
        let mut settings: Settings =
            Settings::deserialize(config).map_err(|e| format!("invalid configuration: {e}"))?;
        let key = parse_path(&settings.key, "key")?;
        let alert = match settings.alert.take() {
            Some(config) => Some(Alert {
                path: parse_path(&config.field, "alert.field")?,
                config,
            }),
            None => None,
        };
        Ok(Enrich {
            settings,
            key,
            alert,
        })
    }

    /// Enriches one document with `lookup`; returns the enriched document and
    /// the alert reason if it crosses the threshold. `Ok(None)` drops it.
    pub fn enrich(
        &self,
        mut doc: Value,
        lookup: impl Fn(&str, &str) -> Option<Value>,
    ) -> Result<Option<(Value, Option<String>)>, Error> {
        let key = match self.key.query(&doc).first() {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(Error::invalid_input(format!(
                    "lookup key `{}` must be a string or a number, found {other}",
                    self.settings.key
                )));
            }
            None => return Err(Error::missing_field(&self.settings.key)),
        };
        let Value::Object(fields) = &mut doc else {
            return Err(Error::invalid_input("record value must be a JSON object"));
        };
        match lookup(&self.settings.table, &key) {
            Some(Value::Object(row)) => {
                let mut picked = Map::new();
                match &self.settings.fields {
                    Some(names) => {
                        for name in names {
                            picked.insert(
                                name.clone(),
                                row.get(name).cloned().unwrap_or(Value::Null),
                            );
                        }
                    }
                    None => picked = row,
                }
                match &self.settings.into {
                    Some(into) => {
                        fields.insert(into.clone(), Value::Object(picked));
                    }
                    None => fields.extend(picked),
                }
            }
            Some(_) => {
                return Err(Error::lookup_failed(format!(
                    "table `{}` returned a row for `{key}` that is not an object",
                    self.settings.table
                )));
            }
            None => match self.settings.on_missing {
                OnMissing::Fail => {
                    return Err(Error::lookup_failed(format!(
                        "key `{key}` (from `{}`) is not in table `{}`",
                        self.settings.key, self.settings.table
                    )));
                }
                OnMissing::Keep => {}
                OnMissing::Drop => return Ok(None),
            },
        }
        let reason = match &self.alert {
            Some(alert) => match alert.path.query(&doc).first() {
                Some(v) => match v.as_f64() {
                    Some(n) if n > alert.config.above => Some(format!(
                        "{} = {n} is above {}",
                        alert.config.field, alert.config.above
                    )),
                    Some(_) => None,
                    None => {
                        return Err(Error::invalid_input(format!(
                            "alert field `{}` must be a number, found {v}",
                            alert.config.field
                        )));
                    }
                },
                None => None,
            },
            None => None,
        };
        Ok(Some((doc, reason)))
    }
}

impl Transform for Enrich {
    fn init(config: Config) -> Result<Self, String> {
        Enrich::from_config(config.value())
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        let doc: Value = record.json()?;
        let Some((doc, reason)) = self.enrich(doc, sluice_guest::lookup_json)? else {
            return Ok(());
        };
        match (reason, &self.alert) {
            (Some(reason), Some(alert)) => {
                // Outputs keep the input's key, headers and timestamp.
                if alert.config.also_default {
                    out.json_from(record, &doc)?;
                }
                let mut alerted = doc;
                if let Value::Object(m) = &mut alerted {
                    m.insert("alert".into(), Value::String(reason));
                }
                out.to(&alert.config.output).json_from(record, &alerted)
            }
            _ => out.json_from(record, &doc),
        }
    }
}

export_transform!(Enrich);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(t: &str, k: &str) -> Option<Value> {
        (t == "booths" && k == "B1").then(|| json!({"region": "north", "expected": 360}))
    }

    #[test]
    fn merges_row_and_flags_alerts() {
        let e = Enrich::from_config(&json!({"table": "booths", "key": "$.booth",
            "alert": {"field": "$.amount", "above": 20}}))
        .expect("config");
        let (doc, reason) = e
            .enrich(json!({"booth": "B1", "amount": 25}), table)
            .expect("ok")
            .expect("kept");
        assert_eq!(
            doc,
            json!({"booth": "B1", "amount": 25, "region": "north", "expected": 360})
        );
        assert_eq!(reason.as_deref(), Some("$.amount = 25 is above 20"));
        let (_, reason) = e
            .enrich(json!({"booth": "B1", "amount": 5}), table)
            .expect("ok")
            .expect("kept");
        assert_eq!(reason, None);
    }

    #[test]
    fn missing_key_policies() {
        let fail =
            Enrich::from_config(&json!({"table": "booths", "key": "$.booth"})).expect("config");
        let err = fail
            .enrich(json!({"booth": "B9"}), table)
            .expect_err("fails");
        assert_eq!(err.kind(), "lookup-failed");
        assert!(err.message().contains("`B9`"), "{err}");
        let drop = Enrich::from_config(
            &json!({"table": "booths", "key": "$.booth", "on_missing": "drop"}),
        )
        .expect("c");
        assert!(
            drop.enrich(json!({"booth": "B9"}), table)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn nests_selected_fields() {
        let e = Enrich::from_config(
            &json!({"table": "booths", "key": "$.booth", "fields": ["region"], "into": "info"}),
        )
        .expect("config");
        let (doc, _) = e
            .enrich(json!({"booth": "B1"}), table)
            .expect("ok")
            .expect("kept");
        assert_eq!(doc, json!({"booth": "B1", "info": {"region": "north"}}));
    }
}

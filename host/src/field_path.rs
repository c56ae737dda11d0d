//! A field of a JSON record named by a JSONPath of member names — `$.plate`,
//! `$.data.customer.id`, `$['booth id']` — the one shape of path a pipeline
//! file uses to pick a value out of a record (a Kafka output's key). Only
//! member names: a path names at most one value, so a record either has it
//! or not, and the error says which field is missing.

use serde_json::Value;

/// A parsed member path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    names: Vec<String>,
}

impl FieldPath {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| format!("`{text}` is not a JSONPath: it must start with `$`"))?;
        let mut names = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("['").or_else(|| rest.strip_prefix("[\"")) {
                let quote = if rest.starts_with("['") { "']" } else { "\"]" };
                let end = after
                    .find(quote)
                    .ok_or_else(|| format!("`{text}`: a `[` that does not close"))?;
                names.push(after[..end].to_string());
                rest = &after[end + 2..];
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if name.is_empty() || name == "*" || name.starts_with('.') {
                    return Err(format!(
                        "`{text}`: only member names are supported (`$.a.b` or `$['a b']`), not wildcards or recursive descent"
                    ));
                }
                names.push(name.to_string());
                rest = &after[end..];
            } else {
                return Err(format!(
                    "`{text}`: only member names are supported (`$.a.b` or `$['a b']`), not indexes or filters"
                ));
            }
        }
        if names.is_empty() {
            return Err(format!("`{text}` names the whole record, not a field"));
        }
        Ok(FieldPath {
            text: text.to_string(),
            names,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the path in `v`, if there is one.
    pub fn pick<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        self.names
            .iter()
            .try_fold(v, |v, name| v.get(name.as_str()))
    }

    /// The value at the path in the JSON text `bytes`, as key bytes: a
    /// string as its UTF-8 text, anything else as compact JSON. The error
    /// names the missing field (or says the value is not JSON).
    pub fn key_of(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let Some(bytes) = bytes else {
            return Err(format!("`{}`: the record has no value", self.text));
        };
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("`{}`: the record's value is not JSON ({e})", self.text))?;
        match self.pick(&v) {
            None | Some(Value::Null) => Err(format!(
                "`{}`: the record has no `{}`",
                self.text,
                self.names.join(".")
            )),
            Some(Value::String(s)) => Ok(s.clone().into_bytes()),
            Some(other) => Ok(other.to_string().into_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_parse_and_pick() {
        let p = FieldPath::parse("$.data.customer.id").expect("path");
        let v: Value = serde_json::json!({"data": {"customer": {"id": "C-1"}}});
        assert_eq!(p.pick(&v), Some(&Value::from("C-1")));
        let q = FieldPath::parse("$['booth id'].n").expect("bracketed");
        let w: Value = serde_json::json!({"booth id": {"n": 7}});
        assert_eq!(q.pick(&w), Some(&Value::from(7)));
        assert_eq!(
            q.key_of(Some(br#"{"booth id":{"n":7}}"#)).as_deref(),
            Ok(&b"7"[..])
        );
    }

    #[test]
    fn other_paths_are_refused_with_the_reason() {
        for (bad, why) in [
            ("plate", "must start with `$`"),
            ("$", "whole record"),
            ("$.a[0]", "not indexes"),
            ("$.*", "not wildcards"),
            ("$..a", "not wildcards"),
            ("$['a", "does not close"),
        ] {
            let e = FieldPath::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_missing_field_is_named() {
        let p = FieldPath::parse("$.vehicle.plate").expect("path");
        assert_eq!(
            p.key_of(Some(br#"{"vehicle":{"plate":"AB-12"}}"#))
                .as_deref(),
            Ok(&b"AB-12"[..])
        );
        let e = p.key_of(Some(br#"{"vehicle":{}}"#)).expect_err("missing");
        assert!(e.contains("no `vehicle.plate`"), "{e}");
        let e = p.key_of(Some(b"not json")).expect_err("not json");
        assert!(e.contains("not JSON"), "{e}");
        assert!(p.key_of(None).is_err());
        let e = p
            .key_of(Some(br#"{"vehicle":{"plate":null}}"#))
            .expect_err("null");
        assert!(e.contains("no `vehicle.plate`"), "{e}");
    }
}

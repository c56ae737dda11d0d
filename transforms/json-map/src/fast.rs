//! The fast path of a mapping whose every expression is a *singular path*
//! from the root by member names and indexes (`$.a`, `$.a.b[0]`,
//! `$['a b']`), the common case: one pass over the record that keeps the
//! wanted members as borrowed raw JSON text and skips the rest (still
//! checking it is JSON), then the output written straight into the output
//! buffer in the configured order. No tree of the whole document, no map
//! of its members, no per-member allocation.
//!
//! It gives exactly what the general path ([`crate::JsonMap::map_value`]
//! through `serde_json_path`) gives — the same bytes, checked by a property
//! test — and hands every case it does not cover (not an object, invalid
//! JSON, so that the error message is the general path's) back to it.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// One step of a singular path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Name(String),
    Index(usize),
}

/// The steps of `expr` if it is a singular path of names and non-negative
/// indexes from the root (and not the root itself).
pub(crate) fn singular(expr: &str) -> Option<Vec<Step>> {
    let rest = expr.strip_prefix('$')?;
    let b = rest.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                if end == start || b[start].is_ascii_digit() {
                    return None;
                }
                steps.push(Step::Name(rest[start..end].to_string()));
                i = end;
            }
            b'[' => {
                let close = i + rest[i..].find(']')?;
                let inner = &rest[i + 1..close];
                if let Some(name) = inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    // A quoted name without escapes or quotes inside.
                    if name.contains(['\\', '\'', '"']) || name.chars().any(char::is_control) {
                        return None;
                    }
                    steps.push(Step::Name(name.to_string()));
                } else {
                    if inner.is_empty()
                        || !inner.bytes().all(|c| c.is_ascii_digit())
                        || (inner.len() > 1 && inner.starts_with('0'))
                        || inner.len() > 9
                    {
                        return None;
                    }
                    steps.push(Step::Index(inner.parse().ok()?));
                }
                i = close + 1;
            }
            _ => return None,
        }
    }
    (!steps.is_empty()).then_some(steps)
}

/// A compiled mapping of singular paths.
#[derive(Debug)]
pub(crate) struct Fast {
    /// The distinct first member names the paths read.
    top: Vec<String>,
    /// Per output field: its name already encoded as a JSON key with its
    /// colon (`"name":`), and its paths as (index into `top`, later steps).
    fields: Vec<(Vec<u8>, Vec<Path>)>,
}

/// A path as (index into [`Fast::top`], the steps after the first).
type Path = (usize, Vec<Step>);

/// What the fast path made of one document.
pub(crate) enum Mapped {
    /// The document is an empty object: the record is dropped.
    Empty,
    /// The output document is written.
    Written,
    /// No expression of field `i` matched (and missing is `fail`).
    Missing(usize),
    /// Not a case for the fast path (not an object, not valid JSON, ...):
    /// use the general path.
    Fallback,
}

impl Fast {
    /// A fast mapping, if every expression is a singular path starting with
    /// a member name.
    pub(crate) fn compile(fields: &[(String, Vec<String>)]) -> Option<Fast> {
        let mut top: Vec<String> = Vec::new();
        let mut out = Vec::with_capacity(fields.len());
        for (name, exprs) in fields {
            let mut paths = Vec::with_capacity(exprs.len());
            for e in exprs {
                let mut steps = singular(e)?;
                let Step::Name(first) = steps.remove(0) else {
                    return None;
                };
                let at = match top.iter().position(|t| *t == first) {
                    Some(at) => at,
                    None => {
                        top.push(first);
                        top.len() - 1
                    }
                };
                paths.push((at, steps));
            }
            let mut key = serde_json::to_vec(name).ok()?;
            key.push(b':');
            out.push((key, paths));
        }
        Some(Fast { top, fields: out })
    }

    /// Maps one document into `out` (appending). `null_missing`: write
    /// `null` for a field without a match (else omit it); `fail_missing`:
    /// report it instead.
    pub(crate) fn map(
        &self,
        doc: &[u8],
        null_missing: bool,
        fail_missing: bool,
        out: &mut Vec<u8>,
    ) -> Mapped {
        let first = doc.iter().position(|c| !c.is_ascii_whitespace());
        if first.map(|i| doc[i]) != Some(b'{') {
            return Mapped::Fallback;
        }
        let mut found: Vec<Option<&RawValue>> = vec![None; self.top.len()];
        let mut de = serde_json::Deserializer::from_slice(doc);
        let members = match de.deserialize_map(Members {
            wanted: &self.top,
            found: &mut found,
        }) {
            Ok(n) => n,
            Err(_) => return Mapped::Fallback,
        };
        if de.end().is_err() {
            return Mapped::Fallback;
        }
        if members == 0 {
            return Mapped::Empty;
        }
        let mark = out.len();
        out.push(b'{');
        let mut first_field = true;
        for (i, (key, paths)) in self.fields.iter().enumerate() {
            let value = paths.iter().find_map(|(at, steps)| {
                let mut v = found[*at]?;
                for step in steps {
                    v = descend(v, step)?;
                }
                Some(v)
            });
            let text = match value {
                Some(v) => Some(v),
                None if fail_missing => {
                    out.truncate(mark);
                    return Mapped::Missing(i);
                }
                None if null_missing => None,
                None => continue,
            };
            if !first_field {
                out.push(b',');
            }
            first_field = false;
            out.extend_from_slice(key);
            match text {
                None => out.extend_from_slice(b"null"),
                Some(raw) => {
                    if write_value(raw, out).is_err() {
                        out.truncate(mark);
                        return Mapped::Fallback;
                    }
                }
            }
        }
        out.push(b'}');
        Mapped::Written
    }
}

/// Writes a member's value as the general path would (parsed, then
/// serialized): copied as it is when that gives the same text (strings
/// without escapes, small integers, literals), else through `Value`.
fn write_value(raw: &RawValue, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let text = raw.get().as_bytes();
    let verbatim = match text.first() {
        Some(b'"') => !text.contains(&b'\\'),
        Some(b't' | b'f' | b'n') => true,
        Some(b'-' | b'0'..=b'9') => {
            let digits = text.strip_prefix(b"-").unwrap_or(text);
            !digits.is_empty()
                && digits.len() <= 15
                && digits.iter().all(u8::is_ascii_digit)
                && text != b"-0"
        }
        _ => false,
    };
    if verbatim {
        out.extend_from_slice(text);
        Ok(())
    } else {
        let v: serde_json::Value = serde_json::from_str(raw.get())?;
        serde_json::to_writer(&mut *out, &v)
    }
}

/// One step down from a raw value, if it is an object or array holding it.
fn descend<'a>(v: &'a RawValue, step: &Step) -> Option<&'a RawValue> {
    let text = v.get();
    let mut de = serde_json::Deserializer::from_str(text);
    match step {
        Step::Name(name) if text.starts_with('{') => {
            let wanted = std::slice::from_ref(name);
            let mut found = [None];
            de.deserialize_map(Members {
                wanted,
                found: &mut found,
            })
            .ok()?;
            found[0]
        }
        Step::Index(i) if text.starts_with('[') => de.deserialize_seq(Element(*i)).ok()?,
        _ => None,
    }
}

/// Visits an object, keeping the raw values of the wanted members (the last
/// of duplicates, as a parsed map would) and counting all members.
struct Members<'w, 'f, 'de> {
    wanted: &'w [String],
    found: &'f mut [Option<&'de RawValue>],
}

impl<'de> Visitor<'de> for Members<'_, '_, 'de> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key_seed(Key)? {
            n += 1;
            match self.wanted.iter().position(|w| *w == *key) {
                Some(at) => self.found[at] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(n)
    }
}

/// A member name, borrowed when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_string()))
    }
}

/// Visits an array, keeping the raw value of element `.0`.
struct Element(usize);

impl<'de> Visitor<'de> for Element {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut i = 0;
        let mut found = None;
        while i <= self.0 {
            match seq.next_element::<&'de RawValue>()? {
                Some(v) if i == self.0 => found = Some(v),
                Some(_) => {}
                None => return Ok(None),
            }
            i += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_paths_are_recognised() {
        use Step::*;
        assert_eq!(singular("$.a"), Some(vec![Name("a".into())]));
        assert_eq!(
            singular("$.a_1.b[0]['c d']"),
            Some(vec![
                Name("a_1".into()),
                Name("b".into()),
                Index(0),
                Name("c d".into())
            ])
        );
        for general in [
            "$",
            "$..a",
            "$.a[*]",
            "$[-1]",
            "$.a[0:2]",
            "$.a[?@.b]",
            "$.1a",
            "$[01]",
            "$['a\\'b']",
            "$.a,b",
            "a",
            "$.a[1,2]",
            "$.é",
        ] {
            assert_eq!(singular(general), None, "{general}");
        }
    }
}

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
        // On the stack for up to 16 top-level names (no allocation per
        // record).
        let mut small = [None; 16];
        let mut large;
        let found: &mut [Option<&[u8]>] = match small.get_mut(..self.top.len()) {
            Some(found) => found,
            None => {
                large = vec![None; self.top.len()];
                &mut large
            }
        };
        let Some(members) = crate::scan::object(doc, &self.top, found) else {
            return Mapped::Fallback;
        };
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
fn write_value(text: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let verbatim = match text.first() {
        Some(b'"') => !crate::scan::has_backslash(text),
        Some(b't' | b'f' | b'n') => true,
        Some(b'-' | b'0'..=b'9') => number_is_canonical(text),
        _ => false,
    };
    if verbatim {
        out.extend_from_slice(text);
        Ok(())
    } else {
        let v: serde_json::Value = serde_json::from_slice(text)?;
        serde_json::to_writer(&mut *out, &v)
    }
}

/// Whether serde_json writes the number `text` (valid JSON number text)
/// back exactly as it is after parsing it: small integers, and decimals
/// such as money amounts (`3.37`, `-0.5`, `12.0`) that have at most 15
/// significant digits (so that the parsed `f64` is the nearest double,
/// which prints back as the same shortest digits), no exponent, no
/// trailing zero after the first fraction digit, and a magnitude printed
/// without an exponent (integer part of at most 9 digits, at most two
/// zeros after the point before the first significant digit). Anything
/// else goes through `Value` as the general path does.
fn number_is_canonical(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let (int, frac) = match digits.iter().position(|&c| c == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) || (int.len() > 1 && int[0] == b'0') {
        return false;
    }
    let Some(frac) = frac else {
        return int.len() <= 15 && text != b"-0";
    };
    if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) || int.len() > 9 {
        return false;
    }
    if frac.len() > 1 && frac[frac.len() - 1] == b'0' {
        return false;
    }
    let significant = if int == b"0" {
        let zeros = frac.iter().take_while(|&&c| c == b'0').count();
        if zeros == frac.len() || zeros > 2 {
            return false;
        }
        frac.len() - zeros
    } else {
        int.len() + frac.len()
    };
    significant <= 15
}

/// One step down from a raw value, if it is an object or array holding it.
fn descend<'a>(v: &'a [u8], step: &Step) -> Option<&'a [u8]> {
    let text = std::str::from_utf8(v).ok()?;
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
            found[0].map(|v: &RawValue| v.get().as_bytes())
        }
        Step::Index(i) if text.starts_with('[') => de
            .deserialize_seq(Element(*i))
            .ok()?
            .map(|v| v.get().as_bytes()),
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
            match self
                .wanted
                .iter()
                .position(|w| crate::scan::same(w.as_bytes(), key.as_bytes()))
            {
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

    /// What serde_json writes for the number `text` after parsing it.
    fn reprinted(text: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(text).expect("number");
        serde_json::to_string(&v).expect("json")
    }

    #[test]
    fn canonical_numbers_are_those_serde_json_writes_back_unchanged() {
        for kept in [
            "0",
            "7",
            "-7",
            "3.37",
            "24.35",
            "-0.5",
            "12.0",
            "0.001",
            "0.25",
            "999999999.5",
            "123456789.123456",
            "100.01",
            "0.0012",
        ] {
            assert!(number_is_canonical(kept.as_bytes()), "{kept}");
            assert_eq!(reprinted(kept), kept);
        }
        for general in [
            "-0",
            "0.0",
            "-0.0",
            "12.50",
            "1e3",
            "1.5E2",
            "0.0001",
            "1234567890.5",
            "0.1234567890123456",
            "1234567890123456",
            "1.",
        ] {
            assert!(!number_is_canonical(general.as_bytes()), "{general}");
        }
    }

    proptest::proptest! {
        /// Whatever number text is judged canonical, serde_json writes it
        /// back byte for byte (so copying it is what the general path does).
        #[test]
        fn a_number_judged_canonical_is_written_back_unchanged(
            neg in proptest::bool::ANY,
            int in "(0|[1-9][0-9]{0,11})",
            frac in proptest::option::of("[0-9]{1,18}"),
            exp in proptest::option::of("[eE][-+]?[0-9]{1,2}"),
        ) {
            let mut text = format!("{}{int}", if neg { "-" } else { "" });
            if let Some(f) = frac {
                text.push('.');
                text.push_str(&f);
            }
            if let Some(e) = exp {
                text.push_str(&e);
            }
            if number_is_canonical(text.as_bytes()) {
                proptest::prop_assert_eq!(reprinted(&text), text);
            }
        }
    }

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

//! Records as the host sees them, from source to sink.

use bytes::Bytes;
use std::sync::Arc;

/// One record header. `name` is valid UTF-8 (checked where the record enters
/// the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name (UTF-8).
    pub name: Bytes,
    /// Header value.
    pub value: Bytes,
}

impl Header {
    /// A header from a text name and any value.
    pub fn new(name: &str, value: impl Into<Bytes>) -> Self {
        Header {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: value.into(),
        }
    }

    /// The name as text (lossy only if a caller broke the UTF-8 invariant).
    pub fn name_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// A record: optional key and value bytes, headers and event time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Key bytes, if any.
    pub key: Option<Bytes>,
    /// Value bytes, if any.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// Event time, ms since the Unix epoch, if known.
    pub timestamp: Option<i64>,
}

impl Record {
    /// A record with only a value.
    pub fn from_value(value: impl Into<Bytes>) -> Self {
        Record {
            value: Some(value.into()),
            ..Default::default()
        }
    }

    /// Bytes this record occupies (keys, values, headers), for batch sizing.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>()
    }
}

/// Identity of a source partition: a Kafka topic-partition, a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// Stream name: topic, file path, ...
    pub stream: Arc<str>,
    /// Partition number (0 for unpartitioned sources).
    pub partition: i32,
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.stream, self.partition)
    }
}

/// Where a record came from, as its source names it. The core reads
/// nothing into it but the partition and the order of `offset`s within it
/// (see [`crate::source::SourceControl`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The partition it was read from.
    pub partition: Partition,
    /// The item's ordering key in the partition, increasing in read order:
    /// a Kafka offset, a 0-based line number, or a number the source assigns
    /// and maps back to its own positions.
    pub offset: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}

/// A record read from a source, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The record.
    pub record: Record,
    /// Where it came from.
    pub position: Position,
}

/// Checks that `bytes` are one JSON document: valid UTF-8 throughout (a
/// JSON text is UTF-8, and a skipped-over string is not checked by the
/// parser) and valid JSON. The error says what is wrong and where.
pub fn check_json(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "invalid UTF-8 at byte {} (JSON text must be UTF-8)",
            e.valid_up_to()
        )
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": "..."}`.
pub fn bytes_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => {
            serde_json::json!({ "base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes) })
        }
    }
}

/// A record as a JSON envelope: key, value, headers, timestamp.
pub fn envelope(record: &Record) -> serde_json::Value {
    let headers: Vec<serde_json::Value> = record
        .headers
        .iter()
        .map(|h| serde_json::json!({ "name": h.name_str(), "value": bytes_json(&h.value) }))
        .collect();
    serde_json::json!({
        "key": record.key.as_deref().map(bytes_json),
        "value": record.value.as_deref().map(bytes_json),
        "headers": headers,
        "timestamp": record.timestamp,
    })
}

/// The inverse of [`bytes_json`].
pub fn json_bytes(v: &serde_json::Value) -> Result<Option<Bytes>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(Bytes::copy_from_slice(s.as_bytes()))),
        serde_json::Value::Object(o) => match o.get("base64").and_then(|b| b.as_str()) {
            Some(b) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| format!("bad base64: {e}")),
            None => Err("expected a string, null or {\"base64\": ...}".into()),
        },
        _ => Err("expected a string, null or {\"base64\": ...}".into()),
    }
}

#[cfg(test)]
mod json_tests {
    use super::check_json;

    #[test]
    fn json_must_be_utf8_even_inside_strings() {
        assert!(check_json(br#"{"a":"ok \u00e9","b":[1,2]}"#).is_ok());
        assert!(check_json("{\"a\":\"é\"}".as_bytes()).is_ok());
        let err = check_json(b"{\"a\":\"\xff\xfe\"}").expect_err("not UTF-8");
        assert!(err.contains("invalid UTF-8 at byte 6"), "{err}");
        assert!(check_json(b"{\"a\":").is_err());
    }
}

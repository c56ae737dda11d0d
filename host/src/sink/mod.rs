//! Sinks: where output and dead-letter records go. One file per sink kind;
//! [`build`] maps a sink config to its implementation.

mod local;
mod stdout;

use crate::config::{RecordFormat, SinkConfig};
use crate::record::Record;
use base64::Engine as _;
use std::path::Path;

pub use local::LocalSink;
pub use stdout::StdoutSink;

/// A record the sink refused permanently; it goes to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Index of the record in the written slice.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// Why a sink failed as a whole (nothing of the write may be assumed durable).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Object store error.
    #[error("sink {sink}: {message}")]
    Store {
        /// Which sink.
        sink: String,
        /// Explanation.
        message: String,
    },
    /// I/O error.
    #[error("sink {sink}: {source}")]
    Io {
        /// Which sink.
        sink: String,
        /// I/O error.
        source: std::io::Error,
    },
}

/// A destination for records. `write` returns only once every accepted
/// record is durable (as durable as the sink can make it).
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Writes records; returns the ones refused permanently.
    async fn write(&mut self, records: &[Record]) -> Result<Vec<Reject>, SinkError>;

    /// A short description for logs and the summary.
    fn describe(&self) -> String;
}

/// Builds the sink a config describes. `name` is the output name (used in
/// file names); relative paths resolve against `base`.
pub fn build(
    config: &SinkConfig,
    base: &Path,
    pipeline: &str,
    name: &str,
) -> Result<Box<dyn Sink>, SinkError> {
    match config {
        SinkConfig::Local(c) => Ok(Box::new(LocalSink::new(
            &base.join(&c.path),
            pipeline,
            name,
            c.format,
        )?)),
        SinkConfig::Stdout(c) => Ok(Box::new(StdoutSink::new(c.format))),
    }
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": "..."}`.
pub fn bytes_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
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

/// Appends one record as one line to `out`, or says why it cannot be.
pub fn encode_line(record: &Record, format: RecordFormat, out: &mut Vec<u8>) -> Result<(), String> {
    match format {
        RecordFormat::Value => {
            let Some(value) = record.value.as_deref() else {
                return Err(
                    "record has no value, and the sink writes values (format = \"value\")".into(),
                );
            };
            if !value.contains(&b'\n') && !value.contains(&b'\r') {
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(value) {
                    return Err(format!(
                        "record value is not JSON, and the sink writes JSON lines: {e}"
                    ));
                }
                out.extend_from_slice(value);
            } else {
                let parsed: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
                    format!("record value is not JSON, and the sink writes JSON lines: {e}")
                })?;
                serde_json::to_writer(&mut *out, &parsed).map_err(|e| e.to_string())?;
            }
        }
        RecordFormat::Envelope => {
            serde_json::to_writer(&mut *out, &envelope(record)).map_err(|e| e.to_string())?;
        }
    }
    out.push(b'\n');
    Ok(())
}

/// Encodes records as lines; returns the buffer, the number of lines and the rejects.
pub fn encode_lines(records: &[Record], format: RecordFormat) -> (Vec<u8>, usize, Vec<Reject>) {
    let mut buf = Vec::with_capacity(records.iter().map(|r| r.size() + 1).sum());
    let mut rejects = Vec::new();
    let mut lines = 0;
    for (index, record) in records.iter().enumerate() {
        let mark = buf.len();
        match encode_line(record, format, &mut buf) {
            Ok(()) => lines += 1,
            Err(reason) => {
                buf.truncate(mark);
                rejects.push(Reject { index, reason });
            }
        }
    }
    (buf, lines, rejects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Header;

    #[test]
    fn value_lines_are_compact_json_and_non_json_is_rejected() {
        let records = vec![
            Record::from_value(&b"{\"a\": 1}"[..]),
            Record::from_value(&b"{\n  \"b\": 2\n}"[..]),
            Record::from_value(&b"plain text"[..]),
            Record::default(),
        ];
        let (buf, lines, rejects) = encode_lines(&records, RecordFormat::Value);
        assert_eq!(
            String::from_utf8(buf).expect("utf8"),
            "{\"a\": 1}\n{\"b\":2}\n"
        );
        assert_eq!(lines, 2);
        assert_eq!(
            rejects.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(rejects[0].reason.contains("not JSON"));
    }

    #[test]
    fn envelope_keeps_binary_safely() {
        let r = Record {
            key: Some(bytes::Bytes::from_static(&[0xff, 0x00])),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: vec![Header::new("h", &b"x"[..])],
            timestamp: Some(5),
        };
        let e = envelope(&r);
        assert_eq!(e["key"]["base64"], "/wA=");
        assert_eq!(e["value"], "v");
        assert_eq!(e["headers"][0]["name"], "h");
        assert_eq!(e["timestamp"], 5);
    }
}

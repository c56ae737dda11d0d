//! Sinks: where output and dead-letter records go. One file per sink kind;
//! [`build_all`] maps the pipeline's sink configs to implementations.
//!
//! A write has two phases, so that records keep their order while several
//! batches are in flight: [`Sink::submit`] enqueues a batch (in call order)
//! and returns a [`Pending`] future that resolves once every accepted record
//! is durable, with the records the sink refused permanently.

mod kafka;
mod local;
mod stdout;

use crate::config::{PipelineConfig, RecordFormat, SinkConfig};
use crate::record::Record;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

pub use kafka::{KafkaProducer, KafkaSink, TxnError};
pub use local::LocalSink;
pub use stdout::StdoutSink;

/// A record the sink refused permanently; it goes to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Index of the record in the submitted batch.
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
        /// Whether trying again may succeed.
        transient: bool,
    },
    /// I/O error.
    #[error("sink {sink}: {source}")]
    Io {
        /// Which sink.
        sink: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// Kafka producer error.
    #[error("sink {sink}: {message}")]
    Kafka {
        /// Which sink.
        sink: String,
        /// librdkafka's explanation.
        message: String,
        /// Whether trying again may succeed (a timeout, a broker away).
        transient: bool,
    },
    /// Part of a write failed: the records at `failed` (indices into the
    /// submitted batch) are not durable, the others are; `rejects` are the
    /// records refused for themselves. Retrying writes only `failed`.
    #[error("sink {sink}: {message} ({} of the batch's records not written)", .failed.len())]
    Partial {
        /// Which sink.
        sink: String,
        /// The first failure's explanation.
        message: String,
        /// Whether trying again may succeed.
        transient: bool,
        /// Indices of the records not written.
        failed: Vec<usize>,
        /// Records refused for themselves (to the dead-letter queue).
        rejects: Vec<Reject>,
    },
    /// The sink is misconfigured.
    #[error("sink {sink}: {message}")]
    Config {
        /// Which sink.
        sink: String,
        /// What is wrong.
        message: String,
    },
}

impl SinkError {
    /// Whether the same write may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Store { transient, .. }
            | SinkError::Kafka { transient, .. }
            | SinkError::Partial { transient, .. } => *transient,
            SinkError::Io { .. } => true,
            SinkError::Config { .. } => false,
        }
    }
}

/// The second phase of a write: resolves once the batch is durable.
pub type Pending = Pin<Box<dyn Future<Output = Result<Vec<Reject>, SinkError>> + Send>>;

/// A destination for records.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Enqueues `records` after everything submitted before, and returns the
    /// future of their durability. Records refused at once (e.g. too large)
    /// are reported by the future with the others.
    async fn submit(&self, records: Vec<Record>) -> Result<Pending, SinkError>;

    /// A short description for logs and errors.
    fn describe(&self) -> String;

    /// The Kafka producer behind this sink, if it is a Kafka sink.
    fn kafka(&self) -> Option<&Arc<KafkaProducer>> {
        None
    }

    /// Called when writes keep failing with transient errors: a sink whose
    /// client can wedge (a Kafka producer after an outage) starts afresh.
    fn recover(&self) {}

    /// Checks that the destination exists and is reachable (before any
    /// record is read), with an error naming what is wrong.
    async fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// How sinks are built for one run of a pipeline.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// `Some(id)`: Kafka sinks share one transactional producer with this
    /// transactional id (exactly-once).
    pub transactional_id: Option<String>,
    /// Transaction timeout (exactly-once).
    pub transaction_timeout_ms: u64,
}

/// The sinks of a pipeline: one per output, and the dead-letter sink.
pub struct Sinks {
    /// Output name → sink.
    pub outputs: BTreeMap<String, Arc<dyn Sink>>,
    /// The dead-letter sink.
    pub dead_letter: Arc<dyn Sink>,
    /// The producers behind the Kafka sinks (one when transactional).
    pub producers: Vec<Arc<KafkaProducer>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("outputs", &self.outputs.keys().collect::<Vec<_>>())
            .field("dead_letter", &self.dead_letter.describe())
            .finish()
    }
}

/// Builds every sink of a pipeline. Kafka sinks with the same cluster and
/// settings share one producer; with a transactional id, all Kafka sinks
/// share one transactional producer. Relative paths resolve against `base`.
pub fn build_all(
    config: &PipelineConfig,
    base: &Path,
    opts: &SinkOptions,
) -> Result<Sinks, SinkError> {
    let mut producers: BTreeMap<String, Arc<KafkaProducer>> = BTreeMap::new();
    let mut build = |name: &str, sink: &SinkConfig| -> Result<Arc<dyn Sink>, SinkError> {
        Ok(match sink {
            SinkConfig::Local(c) => Arc::new(LocalSink::new(
                &base.join(&c.path),
                &config.name,
                name,
                c.format,
            )?),
            SinkConfig::Stdout(c) => Arc::new(StdoutSink::new(c.format)),
            SinkConfig::Kafka(c) => {
                let bootstrap = config.sink_bootstrap(c).ok_or_else(|| SinkError::Config {
                    sink: format!("kafka `{}`", c.topic),
                    message: "no bootstrap servers".into(),
                })?;
                let key = if opts.transactional_id.is_some() {
                    "transactional".to_string()
                } else {
                    kafka::producer_key(bootstrap, c)
                };
                let producer = match producers.get(&key) {
                    Some(p) => {
                        if opts.transactional_id.is_some() && !p.same_settings(bootstrap, c) {
                            return Err(SinkError::Config {
                                sink: format!("kafka `{}`", c.topic),
                                message: "with exactly-once, every Kafka output must use the same compression and properties: one transactional producer writes them all".into(),
                            });
                        }
                        p.clone()
                    }
                    None => {
                        let p = Arc::new(KafkaProducer::new(
                            bootstrap,
                            c,
                            &config.name,
                            opts.transactional_id.as_deref(),
                            opts.transaction_timeout_ms,
                        )?);
                        producers.insert(key, p.clone());
                        p
                    }
                };
                Arc::new(KafkaSink::new(producer, &c.topic))
            }
        })
    };
    let mut outputs = BTreeMap::new();
    for (name, sink) in &config.outputs {
        outputs.insert(name.clone(), build(name, sink)?);
    }
    let dead_letter = build("dead-letter", &config.dead_letter)?;
    Ok(Sinks {
        outputs,
        dead_letter,
        producers: producers.into_values().collect(),
    })
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
                if let Err(e) = crate::record::check_json(value) {
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

/// A pending write that is already complete.
pub fn ready(rejects: Vec<Reject>) -> Pending {
    Box::pin(std::future::ready(Ok(rejects)))
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

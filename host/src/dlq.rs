//! The dead-letter queue: every record that cannot reach its sink goes here,
//! unchanged, with the context needed to fix and replay it.
//!
//! On object storage and stdout an entry is one JSON line:
//! ```json
//! {"pipeline":"toll","tenant":"demo","stage":"transform","transform":"enrich",
//!  "module":"sha256:…","error":{"kind":"lookup-failed","message":"…"},
//!  "source":{"stream":"data/a.jsonl","partition":0,"offset":12},
//!  "attempts":1,"first_failure_at":"…","last_failure_at":"…",
//!  "record":{"key":null,"value":"…","headers":[],"timestamp":null}}
//! ```
//! On a Kafka dead-letter topic an entry is the original record unchanged
//! (key, value, headers, timestamp) with the context added as `sluice.dlq.*`
//! headers, as Kafka Connect does with
//! `errors.deadletterqueue.context.headers.enable`.

use crate::record::envelope;
use crate::record::{Header, Position, Record};
use crate::sink::{Durable, Sink, SinkError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::sync::Arc;

/// Where in the data path a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The host could not turn the input into a record (e.g. not JSON).
    Decode,
    /// A transform failed the record, or its batch trapped.
    Transform,
    /// A transform sent the record to an output the pipeline does not map.
    Route,
    /// The sink refused the record.
    Sink,
}

impl Stage {
    /// The stage name as written in entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Transform => "transform",
            Stage::Route => "route",
            Stage::Sink => "sink",
        }
    }
}

/// One dead-letter entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqEntry {
    /// The original source record, unchanged.
    pub record: Record,
    /// Where it was read.
    pub position: Position,
    /// Where it failed.
    pub stage: Stage,
    /// The transform at fault, if any.
    pub transform: Option<String>,
    /// Digest of that transform's module.
    pub module: Option<String>,
    /// Error class.
    pub kind: String,
    /// Error message.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// First failure time.
    pub first_failure_at: DateTime<Utc>,
    /// Last failure time.
    pub last_failure_at: DateTime<Utc>,
}

impl DlqEntry {
    /// A first-attempt entry failed now.
    pub fn new(
        record: Record,
        position: Position,
        stage: Stage,
        kind: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let now = Utc::now();
        DlqEntry {
            record,
            position,
            stage,
            transform: None,
            module: None,
            kind: kind.into(),
            message: message.into(),
            attempts: 1,
            first_failure_at: now,
            last_failure_at: now,
        }
    }

    /// How many calls failed with this record in them.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Names the transform (and its module digest) at fault.
    pub fn in_transform(mut self, name: &str, module: &str) -> Self {
        self.transform = Some(name.to_string());
        self.module = Some(module.to_string());
        self
    }

    /// The entry as a JSON envelope.
    pub fn to_json(&self, pipeline: &str, tenant: &str) -> serde_json::Value {
        serde_json::json!({
            "pipeline": pipeline,
            "tenant": tenant,
            "stage": self.stage.as_str(),
            "transform": self.transform,
            "module": self.module,
            "error": { "kind": self.kind, "message": self.message },
            "source": {
                "stream": &*self.position.partition.stream,
                "partition": self.position.partition.partition,
                "offset": self.position.offset,
            },
            "attempts": self.attempts,
            "first_failure_at": self.first_failure_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "last_failure_at": self.last_failure_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "record": envelope(&self.record),
        })
    }

    /// The context as `sluice.dlq.*` headers.
    pub fn context_headers(&self, pipeline: &str, tenant: &str) -> Vec<Header> {
        let mut headers = Vec::with_capacity(12);
        let mut h =
            |name: &str, value: &str| headers.push(Header::new(name, value.as_bytes().to_vec()));
        h("sluice.dlq.pipeline", pipeline);
        h("sluice.dlq.tenant", tenant);
        h("sluice.dlq.stage", self.stage.as_str());
        h("sluice.dlq.error.kind", &self.kind);
        h("sluice.dlq.error.message", &self.message);
        h("sluice.dlq.source.stream", &self.position.partition.stream);
        h(
            "sluice.dlq.source.partition",
            &self.position.partition.partition.to_string(),
        );
        h(
            "sluice.dlq.source.offset",
            &self.position.offset.to_string(),
        );
        if let Some(t) = &self.transform {
            h("sluice.dlq.transform", t);
        }
        if let Some(m) = &self.module {
            h("sluice.dlq.module", m);
        }
        h("sluice.dlq.attempts", &self.attempts.to_string());
        h(
            "sluice.dlq.first_failure_at",
            &self
                .first_failure_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        );
        h(
            "sluice.dlq.last_failure_at",
            &self
                .last_failure_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        );
        headers
    }

    /// The entry as a record for object storage or stdout: value = the JSON
    /// envelope; key and timestamp of the original.
    pub fn to_record(&self, pipeline: &str, tenant: &str) -> Record {
        Record {
            key: self.record.key.clone(),
            value: Some(self.to_json(pipeline, tenant).to_string().into()),
            headers: Vec::new(),
            timestamp: self.record.timestamp,
        }
    }

    /// The entry as a Kafka record: the original record unchanged, with the
    /// context appended as `sluice.dlq.*` headers.
    pub fn to_kafka_record(&self, pipeline: &str, tenant: &str) -> Record {
        let mut record = self.record.clone();
        record
            .headers
            .extend(self.context_headers(pipeline, tenant));
        record
    }
}

/// Why the dead-letter queue could not be written. The pipeline stops: it
/// never skips a record it cannot park.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to the dead-letter queue ({sink}): {message}")]
pub struct DlqError {
    /// The sink.
    pub sink: String,
    /// Why.
    pub message: String,
    /// Whether writing again may succeed (a broker away; not a path that
    /// is not a directory, nor an entry the sink refuses).
    pub transient: bool,
}

/// Writes entries to the dead-letter sink.
pub struct DeadLetter {
    sink: Arc<dyn Sink>,
    pipeline: String,
    tenant: String,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("sink", &self.sink.describe())
            .finish()
    }
}

impl DeadLetter {
    /// A dead-letter queue over a sink.
    pub fn new(sink: Arc<dyn Sink>, pipeline: &str, tenant: &str) -> Self {
        DeadLetter {
            sink,
            pipeline: pipeline.into(),
            tenant: tenant.into(),
        }
    }

    /// Asks the sink to start afresh after repeated failures.
    pub fn recover(&self) {
        self.sink.recover();
    }

    /// Makes what the sink holds durable now.
    pub async fn flush(&self) -> Result<(), SinkError> {
        self.sink.flush().await
    }

    /// Writes entries; returns once the sink has taken them, with the
    /// future of their durability when the sink holds them (a file that
    /// closes later; `None`: durable now). A refused entry is an error too:
    /// the dead-letter queue is the last resort.
    pub async fn write(&self, entries: &[DlqEntry]) -> Result<Option<Durable>, DlqError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let headers = self.sink.dead_letter_encoding() == crate::sink::DeadLetterEncoding::Headers;
        let records: Vec<Record> = entries
            .iter()
            .map(|e| {
                if headers {
                    e.to_kafka_record(&self.pipeline, &self.tenant)
                } else {
                    e.to_record(&self.pipeline, &self.tenant)
                }
            })
            .collect();
        let error = |e: SinkError| DlqError {
            sink: self.sink.describe(),
            message: e.to_string(),
            transient: e.is_transient(),
        };
        let lineage = crate::sink::Lineage {
            positions: entries.iter().map(|e| e.position.clone()).collect(),
            modules: entries
                .iter()
                .map(|e| e.module.as_deref().map(Arc::from))
                .collect(),
            ..Default::default()
        };
        let crate::sink::Accepted { rejects, held } = self
            .sink
            .submit(crate::sink::SinkBatch { records, lineage })
            .await
            .map_err(error)?
            .await
            .map_err(error)?;
        if let Some(r) = rejects.first() {
            let source = entries
                .get(r.index)
                .map(|e| e.position.to_string())
                .unwrap_or_default();
            return Err(DlqError {
                sink: self.sink.describe(),
                message: format!(
                    "{} entries refused, the first (source {source}) because {}",
                    rejects.len(),
                    r.reason
                ),
                transient: false,
            });
        }
        Ok(held)
    }

    /// The sink's description.
    pub fn describe(&self) -> String {
        self.sink.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Partition;

    #[test]
    fn kafka_entries_keep_the_record_and_carry_context_headers() {
        let original = Record {
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(bytes::Bytes::from_static(b"\xff raw")),
            headers: vec![Header::new("trace", &b"t1"[..])],
            timestamp: Some(7),
        };
        let position = Position {
            partition: Partition {
                stream: Arc::from("in"),
                partition: 2,
            },
            offset: 41,
        };
        let entry = DlqEntry::new(
            original.clone(),
            position,
            Stage::Transform,
            "poison",
            "bad",
        )
        .in_transform("map", "sha256:ab");
        let r = entry.to_kafka_record("p", "t");
        assert_eq!(
            (r.key.clone(), r.value.clone(), r.timestamp),
            (original.key.clone(), original.value.clone(), Some(7))
        );
        assert_eq!(
            r.headers[0], original.headers[0],
            "original headers first, unchanged"
        );
        let get = |n: &str| {
            r.headers
                .iter()
                .find(|h| h.name_str() == n)
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        };
        assert_eq!(get("sluice.dlq.source.offset").as_deref(), Some("41"));
        assert_eq!(get("sluice.dlq.source.partition").as_deref(), Some("2"));
        assert_eq!(get("sluice.dlq.transform").as_deref(), Some("map"));
        assert_eq!(get("sluice.dlq.module").as_deref(), Some("sha256:ab"));
        assert_eq!(get("sluice.dlq.error.kind").as_deref(), Some("poison"));
        let json = entry.to_record("p", "t");
        let v: serde_json::Value =
            serde_json::from_slice(json.value.as_deref().unwrap_or_default()).expect("envelope");
        assert_eq!(v["source"]["offset"], 41);
        assert_eq!(v["record"]["value"]["base64"], "/yByYXc=");
    }
}

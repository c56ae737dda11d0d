//! Dead-letter entries read back (`sluice dlq`, the admin API): the entry
//! type, the error of reading a queue, and the reader of the JSON-lines
//! layout the `local` and `lake` sinks write. Sinks that keep dead letters
//! elsewhere (Kafka) parse their own layout into the same type.

use crate::record::{Header, Record, json_bytes};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// Why a dead-letter queue could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The queue could not be read at all.
    #[error("dead-letter queue {dlq}: {message}")]
    Read {
        /// Which queue.
        dlq: String,
        /// Why.
        message: String,
    },
    /// One entry is malformed.
    #[error("dead-letter entry {id}: {message}")]
    Entry {
        /// Where the entry is.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// One dead-letter entry read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// Where the entry is: `file:line` or `topic/partition@offset`.
    pub id: String,
    /// Stage (`decode`, `transform`, `route`, `sink`).
    pub stage: String,
    /// Error kind.
    pub kind: String,
    /// Error message.
    pub message: String,
    /// Transform at fault.
    pub transform: Option<String>,
    /// Its module digest.
    pub module: Option<String>,
    /// Where the record was read: stream, partition, offset.
    pub source: Option<(String, i32, i64)>,
    /// Attempts made.
    pub attempts: Option<u32>,
    /// Last failure time.
    pub last_failure_at: Option<DateTime<Utc>>,
    /// The original record.
    pub record: Record,
}

impl DeadLetterRecord {
    /// `stream/partition@offset`, when known.
    pub fn source_text(&self) -> Option<String> {
        self.source.as_ref().map(|(s, p, o)| format!("{s}/{p}@{o}"))
    }

    /// The entry as JSON (for `sluice dlq show`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "stage": self.stage,
            "error": { "kind": self.kind, "message": self.message },
            "transform": self.transform,
            "module": self.module,
            "source": self.source.as_ref().map(|(s, p, o)| serde_json::json!({"stream": s, "partition": p, "offset": o})),
            "attempts": self.attempts,
            "last_failure_at": self.last_failure_at.map(|t| t.to_rfc3339()),
            "record": crate::record::envelope(&self.record),
        })
    }
}

/// Every entry of a local dead-letter prefix.
pub fn read_local(root: &Path) -> Result<Vec<DeadLetterRecord>, ReplayError> {
    let dlq = format!("`{}`", root.display());
    if !root.is_dir() {
        return Err(ReplayError::Read {
            dlq,
            message: "no such directory (nothing was dead-lettered yet?)".into(),
        });
    }
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ReplayError::Read {
            dlq: dlq.clone(),
            message: format!("cannot list `{}`: {e}", dir.display()),
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ReplayError::Read {
            dlq: dlq.clone(),
            message: format!("cannot read `{}`: {e}", file.display()),
        })?;
        let name = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let id = format!("{name}:{}", i + 1);
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| ReplayError::Entry {
                    id: id.clone(),
                    message: format!("not JSON: {e}"),
                })?;
            out.push(from_envelope(id, &value)?);
        }
    }
    Ok(out)
}

pub(crate) fn from_envelope(
    id: String,
    v: &serde_json::Value,
) -> Result<DeadLetterRecord, ReplayError> {
    let bad = |message: &str| ReplayError::Entry {
        id: id.clone(),
        message: message.to_string(),
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let record = v.get("record").ok_or_else(|| bad("no `record`"))?;
    let bytes = |field: &str| -> Result<Option<Bytes>, ReplayError> {
        json_bytes(record.get(field).unwrap_or(&serde_json::Value::Null))
            .map_err(|m| bad(&format!("record.{field}: {m}")))
    };
    let mut headers = Vec::new();
    if let Some(list) = record.get("headers").and_then(|h| h.as_array()) {
        for h in list {
            let name = h
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or_else(|| bad("a header has no name"))?;
            let value = json_bytes(h.get("value").unwrap_or(&serde_json::Value::Null))
                .map_err(|m| bad(&format!("header `{name}`: {m}")))?
                .unwrap_or_default();
            headers.push(Header::new(name, value));
        }
    }
    let source = v.get("source").and_then(|s| {
        Some((
            s.get("stream")?.as_str()?.to_string(),
            i32::try_from(s.get("partition")?.as_i64()?).ok()?,
            s.get("offset")?.as_i64()?,
        ))
    });
    Ok(DeadLetterRecord {
        stage: v
            .get("stage")
            .and_then(text)
            .ok_or_else(|| bad("no `stage`"))?,
        kind: v
            .pointer("/error/kind")
            .and_then(text)
            .ok_or_else(|| bad("no `error.kind`"))?,
        message: v
            .pointer("/error/message")
            .and_then(text)
            .unwrap_or_default(),
        transform: v.get("transform").and_then(text),
        module: v.get("module").and_then(text),
        source,
        attempts: v
            .get("attempts")
            .and_then(|a| a.as_u64())
            .and_then(|a| u32::try_from(a).ok()),
        last_failure_at: v
            .get("last_failure_at")
            .and_then(|t| t.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        record: Record {
            key: bytes("key")?,
            value: bytes("value")?,
            headers,
            timestamp: record.get("timestamp").and_then(|t| t.as_i64()),
        },
        id,
    })
}

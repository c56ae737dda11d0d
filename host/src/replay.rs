//! Reading a dead-letter queue back, for `sluice dlq list|show|replay`.
//!
//! A pipeline's `[dead_letter]` sink is read where it was written: JSON
//! envelopes under a local prefix (every `*.jsonl` file below it), or a Kafka
//! topic (the original record with `sluice.dlq.*` context headers). Entries
//! are filtered by stage, error kind, transform and failure time, and can be
//! turned into replay items: the original record, plus headers that link it
//! to its entry (`sluice.replay.of`) and to where it was first read
//! (`sluice.replay.source`).

use crate::config::PipelineConfig;
use crate::record::{Header, Partition, Position, Record, SourceRecord};
use crate::source::SourceItem;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Header a replayed record carries: the id of its dead-letter entry.
pub const REPLAY_OF: &str = "sluice.replay.of";
/// Header a replayed record carries: where it was first read
/// (`stream/partition@offset`).
pub const REPLAY_SOURCE: &str = "sluice.replay.source";

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
            "record": crate::sink::envelope(&self.record),
        })
    }
}

/// Which entries to take.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this stage.
    pub stage: Option<String>,
    /// Only this error kind.
    pub kind: Option<String>,
    /// Only failures of this transform.
    pub transform: Option<String>,
    /// Only entries that last failed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries that last failed before this time.
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether `r` passes.
    pub fn matches(&self, r: &DeadLetterRecord) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        eq(&self.stage, Some(&r.stage))
            && eq(&self.kind, Some(&r.kind))
            && eq(&self.transform, r.transform.as_deref())
            && self
                .since
                .is_none_or(|s| r.last_failure_at.is_some_and(|t| t >= s))
            && self
                .until
                .is_none_or(|u| r.last_failure_at.is_some_and(|t| t < u))
    }
}

/// Reads every entry of the pipeline's dead-letter queue, in order (files
/// in name order; Kafka partitions in turn), then keeps those `filter` passes.
pub fn read(
    config: &PipelineConfig,
    base: &Path,
    filter: &Filter,
) -> Result<Vec<DeadLetterRecord>, ReplayError> {
    let all = config
        .dead_letter
        .plugin()
        .read_dead_letters(config, base, None)?;
    Ok(all.into_iter().filter(|r| filter.matches(r)).collect())
}

/// About the newest `n` entries of a pipeline's dead-letter queue: a Kafka
/// queue is read from `n` before the end of each partition (never the
/// whole topic); the caller keeps the last `n`.
pub fn read_newest(
    config: &PipelineConfig,
    base: &Path,
    n: usize,
) -> Result<Vec<DeadLetterRecord>, ReplayError> {
    config
        .dead_letter
        .plugin()
        .read_dead_letters(config, base, Some(n))
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

fn from_envelope(id: String, v: &serde_json::Value) -> Result<DeadLetterRecord, ReplayError> {
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

/// The inverse of [`crate::sink::bytes_json`].
fn json_bytes(v: &serde_json::Value) -> Result<Option<Bytes>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(Bytes::copy_from_slice(s.as_bytes()))),
        serde_json::Value::Object(o) => match o.get("base64").and_then(|b| b.as_str()) {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| format!("bad base64: {e}")),
            None => Err("expected a string, null or {\"base64\": ...}".into()),
        },
        _ => Err("expected a string, null or {\"base64\": ...}".into()),
    }
}

/// Every entry of a Kafka dead-letter topic, read from the beginning to the
/// end each partition had when reading started.
pub fn read_kafka(
    bootstrap: &str,
    topic: &str,
    properties: &crate::config::Properties,
    newest: Option<usize>,
) -> Result<Vec<DeadLetterRecord>, ReplayError> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let dlq = format!("kafka topic `{topic}`");
    let err = |message: String| ReplayError::Read {
        dlq: dlq.clone(),
        message,
    };
    let group = format!("sluice-dlq-reader-{}", std::process::id());
    let defaults = [
        ("group.id", group.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "false"),
        ("isolation.level", "read_committed"),
    ];
    let consumer: BaseConsumer =
        crate::kafka::client_config(bootstrap, &defaults, properties, &dlq)
            .map_err(&err)?
            .create()
            .map_err(|e| err(crate::kafka::Redactor::new(properties).error(&e)))?;
    let timeout = Duration::from_secs(30);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| err(format!("metadata: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(err("no such topic".into()));
    }
    let mut ends = std::collections::BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| err(format!("watermarks of partition {p}: {e}")))?;
        // Only the newest `n` of each partition, when asked (offsets of a
        // compacted or transactional topic have gaps: at most `n` then).
        let from = match newest {
            Some(n) => high
                .saturating_sub(i64::try_from(n).unwrap_or(i64::MAX))
                .max(low),
            None => low,
        };
        if high > from {
            ends.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&assignment)
        .map_err(|e| err(format!("assign: {e}")))?;
    let mut by_partition: std::collections::BTreeMap<i32, Vec<DeadLetterRecord>> =
        Default::default();
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        if last_progress.elapsed() > timeout {
            return Err(err(format!(
                "no progress for {timeout:?}; partitions left: {:?}",
                ends.keys().collect::<Vec<_>>()
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| err(e.to_string()))?;
        last_progress = Instant::now();
        let (p, offset) = (m.partition(), m.offset());
        let id = format!("{topic}/{p}@{offset}");
        let mut context = std::collections::BTreeMap::new();
        let mut headers = Vec::new();
        for (name, value) in crate::kafka::raw::headers(&m) {
            match name.strip_prefix(b"sluice.dlq.") {
                Some(k) => {
                    context.insert(
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
                // Kept as it was, even a name that is not UTF-8: the replay
                // item is then refused at the decode stage, with the reason.
                None => headers.push(Header { name, value }),
            }
        }
        let entry = kafka_entry(
            id,
            context,
            m.key(),
            m.payload(),
            headers,
            m.timestamp().to_millis(),
        )?;
        by_partition.entry(p).or_default().push(entry);
        if ends.get(&p).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&p);
        }
    }
    Ok(by_partition.into_values().flatten().collect())
}

fn kafka_entry(
    id: String,
    mut c: std::collections::BTreeMap<String, String>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Vec<Header>,
    timestamp: Option<i64>,
) -> Result<DeadLetterRecord, ReplayError> {
    let (Some(stage), Some(kind)) = (c.remove("stage"), c.remove("error.kind")) else {
        return Err(ReplayError::Entry {
            id,
            message: "no `sluice.dlq.stage` / `sluice.dlq.error.kind` headers: not a Sluice dead-letter entry".into(),
        });
    };
    let source = (|| {
        Some((
            c.get("source.stream")?.clone(),
            c.get("source.partition")?.parse().ok()?,
            c.get("source.offset")?.parse().ok()?,
        ))
    })();
    Ok(DeadLetterRecord {
        id,
        stage,
        kind,
        message: c.remove("error.message").unwrap_or_default(),
        transform: c.remove("transform"),
        module: c.remove("module"),
        source,
        attempts: c.get("attempts").and_then(|a| a.parse().ok()),
        last_failure_at: c
            .get("last_failure_at")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        record: Record {
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers,
            timestamp,
        },
    })
}

/// Turns entries into source items for a replay run: the original record
/// with [`REPLAY_OF`] and [`REPLAY_SOURCE`] headers, checked against the
/// pipeline source's input format (a value that is still not JSON where
/// JSON is expected goes back to the dead-letter queue, stage `decode`).
pub fn items(
    config: &PipelineConfig,
    stream: &str,
    entries: &[DeadLetterRecord],
) -> Vec<SourceItem> {
    let json = config.source.plugin().json_values();
    let partition = Partition {
        stream: Arc::from(stream),
        partition: 0,
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut record = e.record.clone();
            record
                .headers
                .retain(|h| h.name_str() != REPLAY_OF && h.name_str() != REPLAY_SOURCE);
            record
                .headers
                .push(Header::new(REPLAY_OF, e.id.clone().into_bytes()));
            if let Some(s) = e.source_text() {
                record
                    .headers
                    .push(Header::new(REPLAY_SOURCE, s.into_bytes()));
            }
            let position = Position {
                partition: partition.clone(),
                offset: i as i64,
            };
            let bad_header = record
                .headers
                .iter()
                .position(|h| std::str::from_utf8(&h.name).is_err())
                .map(|i| format!("header {} has a name that is not UTF-8", i + 1));
            let invalid = json.then(|| match record.value.as_deref() {
                Some(v) => crate::record::check_json(v)
                    .err()
                    .map(|e| format!("not valid JSON: {e}")),
                None => Some("no value".to_string()),
            });
            match bad_header.or(invalid.flatten()) {
                Some(reason) => SourceItem::Invalid {
                    record,
                    position,
                    reason,
                },
                None => SourceItem::Record(SourceRecord { record, position }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::{DlqEntry, Stage};

    fn entry() -> DlqEntry {
        let record = Record {
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(&[0xff, 0x00, b'x'])),
            headers: vec![Header::new("h", b"v".to_vec())],
            timestamp: Some(42),
        };
        let position = Position {
            partition: Partition {
                stream: Arc::from("in"),
                partition: 3,
            },
            offset: 17,
        };
        DlqEntry::new(record, position, Stage::Transform, "trap", "boom")
            .in_transform("t", "sha256:1")
    }

    #[test]
    fn an_envelope_reads_back_to_the_entry_it_was_written_from() {
        let e = entry();
        let back = from_envelope("f:1".into(), &e.to_json("p", "tenant")).expect("parse");
        assert_eq!(back.record, e.record, "binary value and headers survive");
        assert_eq!(back.stage, "transform");
        assert_eq!(back.kind, "trap");
        assert_eq!(back.message, "boom");
        assert_eq!(back.transform.as_deref(), Some("t"));
        assert_eq!(back.source, Some(("in".into(), 3, 17)));
        assert_eq!(back.attempts, Some(1));
        assert!(back.last_failure_at.is_some());
    }

    #[test]
    fn kafka_context_headers_read_back() {
        let e = entry();
        let context = e
            .context_headers("p", "tenant")
            .into_iter()
            .filter_map(|h| {
                let name = h.name_str().strip_prefix("sluice.dlq.")?.to_string();
                Some((name, String::from_utf8_lossy(&h.value).into_owned()))
            })
            .collect();
        let back = kafka_entry(
            "dlq/0@5".into(),
            context,
            Some(b"k"),
            e.record.value.as_deref(),
            e.record.headers.clone(),
            Some(42),
        )
        .expect("parse");
        assert_eq!(back.record, e.record);
        assert_eq!(back.kind, "trap");
        assert_eq!(back.source_text().as_deref(), Some("in/3@17"));
        let missing = kafka_entry("x".into(), Default::default(), None, None, vec![], None);
        assert!(matches!(missing, Err(ReplayError::Entry { .. })));
    }

    #[test]
    fn filters_select_by_stage_kind_transform_and_time() {
        let e = from_envelope("f:1".into(), &entry().to_json("p", "t")).expect("parse");
        let at = e.last_failure_at.expect("time");
        let f = |f: Filter| f.matches(&e);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            kind: Some("trap".into()),
            transform: Some("t".into()),
            stage: Some("transform".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            kind: Some("poison".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            transform: Some("other".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            since: Some(at),
            ..Default::default()
        }));
        assert!(!f(Filter {
            until: Some(at),
            ..Default::default()
        }));
    }
}

/// What was done with dead-letter entries (`sluice dlq replay`, `purge`),
/// kept beside the pipeline file (`.sluice/dlq/<pipeline>.jsonl`, one JSON
/// object a line, appended): a replayed entry is not replayed again unless
/// asked (`--again`), a purged one is no longer listed or replayed. The
/// queue itself is left as it is (a Kafka topic cannot drop one record; its
/// retention does).
#[derive(Debug)]
pub struct Ledger {
    file: PathBuf,
    done: std::collections::BTreeMap<String, LedgerEntry>,
}

/// One entry of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// The dead-letter entry's id.
    pub id: String,
    /// `replayed` or `purged`.
    pub action: String,
    /// When (RFC 3339).
    pub at: String,
    /// The module digests of the pipeline that replayed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
}

impl Ledger {
    /// The ledger of the pipeline `name` whose file is in `base`.
    pub fn open_for(base: &Path, name: &str) -> Result<Ledger, ReplayError> {
        use sha2::Digest as _;
        let h = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        Ledger::open(base.join(".sluice/dlq").join(format!("{}.jsonl", &h[..32])))
    }

    /// Reads the ledger at `file` (empty when it does not exist); a line
    /// that is not an entry is an error naming the file and line.
    pub fn open(file: PathBuf) -> Result<Ledger, ReplayError> {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ReplayError::Read {
                    dlq: format!("ledger `{}`", file.display()),
                    message: e.to_string(),
                });
            }
        };
        let mut done = std::collections::BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: LedgerEntry = serde_json::from_str(line).map_err(|e| ReplayError::Read {
                dlq: format!("ledger `{}`", file.display()),
                message: format!("line {}: {e}", i + 1),
            })?;
            done.insert(entry.id.clone(), entry);
        }
        Ok(Ledger { file, done })
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// What was last done with entry `id`, if anything.
    pub fn get(&self, id: &str) -> Option<&LedgerEntry> {
        self.done.get(id)
    }

    /// Records `action` for each of `ids` now.
    pub fn record<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a str>,
        action: &str,
        modules: &[String],
    ) -> Result<(), ReplayError> {
        use std::io::Write as _;
        let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut text = Vec::new();
        for id in ids {
            let entry = LedgerEntry {
                id: id.to_string(),
                action: action.to_string(),
                at: at.clone(),
                modules: modules.to_vec(),
            };
            if let Ok(line) = serde_json::to_vec(&entry) {
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
            self.done.insert(entry.id.clone(), entry);
        }
        let err = |e: std::io::Error| ReplayError::Read {
            dlq: format!("ledger `{}`", self.file.display()),
            message: e.to_string(),
        };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(err)?;
        f.write_all(&text).and_then(|_| f.sync_data()).map_err(err)
    }
}

#[cfg(test)]
mod ledger_tests {
    use super::*;

    #[test]
    fn the_ledger_remembers_across_opens_and_names_a_bad_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = Ledger::open_for(dir.path(), "p").expect("open");
        assert!(l.get("a:1").is_none());
        l.record(["a:1", "a:2"], "replayed", &["sha256:x".into()])
            .expect("record");
        l.record(["a:2"], "purged", &[]).expect("record");
        let l = Ledger::open_for(dir.path(), "p").expect("again");
        assert_eq!(l.get("a:1").map(|e| e.action.as_str()), Some("replayed"));
        assert_eq!(
            l.get("a:1").map(|e| e.modules.clone()),
            Some(vec!["sha256:x".into()])
        );
        assert_eq!(l.get("a:2").map(|e| e.action.as_str()), Some("purged"));
        std::fs::write(l.path(), "{\"id\":\"a:1\"\n").expect("garbage");
        let e = Ledger::open_for(dir.path(), "p").expect_err("bad line");
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}

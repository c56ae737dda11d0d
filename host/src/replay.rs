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
pub use crate::dlq_entry::{DeadLetterRecord, ReplayError};
use crate::record::{Header, Partition, Position, SourceRecord};
use crate::source::SourceItem;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Header a replayed record carries: the id of its dead-letter entry.
pub const REPLAY_OF: &str = "sluice.replay.of";
/// Header a replayed record carries: where it was first read
/// (`stream/partition@offset`).
pub const REPLAY_SOURCE: &str = "sluice.replay.source";

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
        .read_dead_letters(&config.sink_scope(base), None)?;
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
        .read_dead_letters(&config.sink_scope(base), Some(n))
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
    use crate::record::Record;
    use bytes::Bytes;

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
        let back = crate::dlq_entry::from_envelope("f:1".into(), &e.to_json("p", "tenant"))
            .expect("parse");
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
        let back = crate::sink::kafka::dead_letters::kafka_entry(
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
        let missing = crate::sink::kafka::dead_letters::kafka_entry(
            "x".into(),
            Default::default(),
            None,
            None,
            vec![],
            None,
        );
        assert!(matches!(missing, Err(ReplayError::Entry { .. })));
    }

    #[test]
    fn filters_select_by_stage_kind_transform_and_time() {
        let e = crate::dlq_entry::from_envelope("f:1".into(), &entry().to_json("p", "t"))
            .expect("parse");
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

//! JSON Lines files on local disk through `object_store`'s `LocalFileSystem`
//! (the same interface S3, GCS and Azure sinks will use). Each write becomes
//! one object — or, with `roll`, records are collected into objects that
//! close at a size, a count or an age ([`roll`]) — written atomically
//! (temporary file + rename):
//! `<path>/dt=<YYYY-MM-DD>/<pipeline>-<output>-<run>-<seq>.jsonl`.

mod config;
mod roll;

pub use crate::sink::objects::RollConfig;
pub use config::LocalSinkConfig;

use super::{Accepted, BuildContext, Pending, Sink, SinkError, encode_lines_of, ready};
use crate::sink::RecordFormat;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStoreExt, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes one JSON Lines object per batch under a directory.
pub struct LocalSink {
    store: Arc<LocalFileSystem>,
    root: PathBuf,
    format: RecordFormat,
    stem: String,
    seq: AtomicU64,
    /// Rolling objects, when configured.
    roller: Option<roll::Roller>,
}

impl std::fmt::Debug for LocalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSink")
            .field("root", &self.root)
            .finish()
    }
}

impl LocalSink {
    /// A sink writing under `root` (created if missing).
    pub fn new(
        root: &Path,
        pipeline: &str,
        output: &str,
        format: RecordFormat,
    ) -> Result<Self, SinkError> {
        let sink = format!("local `{}`", root.display());
        std::fs::create_dir_all(root).map_err(|source| SinkError::Io {
            sink: sink.clone(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(root).map_err(|e| SinkError::Store {
            sink,
            message: e.to_string(),
            transient: false,
        })?;
        let run = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            std::process::id()
        );
        let clean = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        Ok(LocalSink {
            store: Arc::new(store),
            root: root.to_path_buf(),
            format,
            stem: format!("{}-{}-{run}", clean(pipeline), clean(output)),
            seq: AtomicU64::new(0),
            roller: None,
        })
    }

    /// Collects records into objects that close by `roll` (must be called
    /// inside a tokio runtime); writes are retried by `retry`.
    pub fn rolling(mut self, roll: RollConfig, retry: crate::retry::RetryConfig) -> Self {
        self.roller = Some(roll::Roller::new(
            roll::Target {
                store: self.store.clone(),
                stem: self.stem.clone(),
                describe: self.describe(),
                retry: retry.into(),
            },
            roll,
        ));
        self
    }
}

#[async_trait::async_trait]
impl Sink for LocalSink {
    async fn submit(&self, batch: super::SinkBatch) -> Result<Pending, SinkError> {
        let (buf, lines, rejects) = encode_lines_of(&batch.records, &batch.lineage, self.format);
        if lines == 0 {
            return Ok(ready(rejects));
        }
        if let Some(roller) = &self.roller {
            let held = roller.add(buf, lines as u64).await;
            return Ok(Box::pin(std::future::ready(Ok(Accepted {
                rejects,
                held: Some(held),
            }))));
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let day = chrono::Utc::now().format("%Y-%m-%d");
        let location =
            object_store::path::Path::from(format!("dt={day}/{}-{seq:06}.jsonl", self.stem));
        let store = self.store.clone();
        let sink = self.describe();
        Ok(Box::pin(async move {
            store
                .put(&location, PutPayload::from(buf))
                .await
                .map_err(|e| SinkError::Store {
                    sink,
                    transient: crate::sink::objects::transient(&e),
                    message: format!("cannot write `{location}`: {e}"),
                })?;
            Ok(rejects.into())
        }))
    }

    fn describe(&self) -> String {
        format!("local `{}`", self.root.display())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        match &self.roller {
            Some(r) => r.flush().await,
            None => Ok(()),
        }
    }
}

impl super::SinkPlugin for LocalSinkConfig {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn retry(&self) -> crate::retry::RetryConfig {
        self.retry
    }

    fn line_format(&self) -> Option<RecordFormat> {
        Some(self.format)
    }

    fn check(&self, field: &str, _scope: &crate::sink::SinkScope<'_>) -> Result<(), String> {
        match &self.roll {
            Some(roll) => roll.check(&format!("{field}.local.roll")),
            None => Ok(()),
        }
    }

    fn probe(&self, scope: &crate::sink::SinkScope<'_>) -> Result<String, String> {
        let dir = scope.base.join(&self.path);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let probe = dir.join(".sluice-probe");
        std::fs::write(&probe, b"")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| format!("cannot write in `{}`: {e}", dir.display()))?;
        Ok(format!("`{}` is writable", dir.display()))
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Arc<dyn Sink>, SinkError> {
        let sink = LocalSink::new(
            &ctx.scope.base.join(&self.path),
            ctx.scope.pipeline,
            ctx.output,
            self.format,
        )?;
        Ok(Arc::new(match self.roll {
            Some(roll) => sink.rolling(roll, self.retry),
            None => sink,
        }))
    }

    fn read_dead_letters(
        &self,
        scope: &crate::sink::SinkScope<'_>,
        _newest: Option<usize>,
    ) -> Result<Vec<crate::dlq_entry::DeadLetterRecord>, crate::dlq_entry::ReplayError> {
        crate::dlq_entry::read_local(&scope.base.join(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    #[tokio::test]
    async fn a_path_that_cannot_be_a_directory_is_not_worth_retrying() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let sink = LocalSink::new(&out, "p", "default", RecordFormat::Value).expect("sink");
        // The lake's directory becomes a file.
        let _ = std::fs::remove_dir_all(&out);
        std::fs::write(&out, "a file").expect("block");
        let err = sink
            .submit(crate::sink::SinkBatch::records(vec![Record::from_value(
                &b"{\"a\":1}"[..],
            )]))
            .await
            .expect("submit")
            .await
            .expect_err("cannot write under a file");
        assert!(!err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn writes_one_object_per_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = LocalSink::new(&dir.path().join("out"), "p", "default", RecordFormat::Value)
            .expect("sink");
        let rejects = sink
            .submit(crate::sink::SinkBatch::records(vec![
                Record::from_value(&b"{\"a\":1}"[..]),
                Record::from_value(&b"nope"[..]),
            ]))
            .await
            .expect("submit")
            .await
            .expect("write");
        assert_eq!(rejects.rejects.len(), 1);
        sink.submit(crate::sink::SinkBatch::records(vec![Record::from_value(
            &b"{\"a\":2}"[..],
        )]))
        .await
        .expect("submit")
        .await
        .expect("write");
        let mut files = Vec::new();
        for day in std::fs::read_dir(dir.path().join("out")).expect("dir") {
            for f in std::fs::read_dir(day.expect("entry").path()).expect("day") {
                files.push(f.expect("file").path());
            }
        }
        files.sort();
        assert_eq!(files.len(), 2);
        assert_eq!(
            std::fs::read_to_string(&files[0]).expect("read"),
            "{\"a\":1}\n"
        );
        assert!(
            files[0].to_string_lossy().contains("p-default-"),
            "{files:?}"
        );
    }

    fn objects(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for day in std::fs::read_dir(dir).expect("dir") {
            for f in std::fs::read_dir(day.expect("entry").path()).expect("day") {
                let path = f.expect("file").path();
                out.push(std::fs::read_to_string(path).expect("read"));
            }
        }
        out.sort();
        out
    }

    fn lines(values: &[&str]) -> crate::sink::SinkBatch {
        crate::sink::SinkBatch::records(
            values
                .iter()
                .map(|v| Record::from_value(v.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn rolling(dir: &Path, roll: RollConfig) -> LocalSink {
        LocalSink::new(dir, "p", "default", RecordFormat::Value)
            .expect("sink")
            .rolling(roll, crate::retry::RetryConfig::default())
    }

    #[tokio::test]
    async fn a_rolling_sink_holds_writes_until_the_object_closes_by_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let sink = rolling(
            &out,
            RollConfig {
                records: Some(5),
                bytes: 1 << 20,
                age_ms: 3_600_000,
            },
        );
        let first = sink.submit(lines(&["1", "2"])).await.expect("submit").await;
        let first = first.expect("taken");
        assert!(first.rejects.is_empty());
        let mut held1 = first.held.expect("held, not durable yet");
        let second = sink
            .submit(lines(&["3", "nope"]))
            .await
            .expect("submit")
            .await
            .expect("taken");
        assert_eq!(second.rejects.len(), 1, "refused at once, not later");
        // Three records held: nothing written, the first write not durable.
        assert!(
            futures::poll!(&mut held1).is_pending(),
            "durable before its object closed"
        );
        assert!(!out.join("dt=").exists() && std::fs::read_dir(&out).expect("dir").count() == 0);
        let third = sink
            .submit(lines(&["4", "5"]))
            .await
            .expect("submit")
            .await
            .expect("taken");
        // Five records: the object closes; every write in it is durable.
        held1.await.expect("durable");
        second.held.expect("held").await.expect("durable");
        third.held.expect("held").await.expect("durable");
        assert_eq!(objects(&out), vec!["1\n2\n3\n4\n5\n"]);
        // Nothing open: a flush writes nothing.
        sink.flush().await.expect("flush");
        assert_eq!(objects(&out).len(), 1);
    }

    #[tokio::test]
    async fn a_rolling_sink_closes_by_age_and_on_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let by_age = rolling(
            &dir.path().join("age"),
            RollConfig {
                records: None,
                bytes: 1 << 20,
                age_ms: 20,
            },
        );
        let a = by_age
            .submit(lines(&["1"]))
            .await
            .expect("submit")
            .await
            .expect("taken");
        // Resolves without more writes and without a flush: by age.
        a.held.expect("held").await.expect("durable");
        assert_eq!(objects(&dir.path().join("age")), vec!["1\n"]);

        let on_flush = rolling(
            &dir.path().join("flush"),
            RollConfig {
                records: None,
                bytes: 1 << 20,
                age_ms: 3_600_000,
            },
        );
        let b = on_flush
            .submit(lines(&["2", "3"]))
            .await
            .expect("submit")
            .await
            .expect("taken");
        on_flush.flush().await.expect("flush");
        b.held.expect("held").await.expect("durable");
        assert_eq!(objects(&dir.path().join("flush")), vec!["2\n3\n"]);
    }

    #[tokio::test]
    async fn a_rolled_object_that_cannot_be_written_fails_every_write_it_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let sink = rolling(
            &out,
            RollConfig {
                records: Some(2),
                bytes: 1 << 20,
                age_ms: 3_600_000,
            },
        );
        let _ = std::fs::remove_dir_all(&out);
        std::fs::write(&out, "a file").expect("block");
        let a = sink
            .submit(lines(&["1"]))
            .await
            .expect("submit")
            .await
            .expect("taken");
        let b = sink
            .submit(lines(&["2"]))
            .await
            .expect("submit")
            .await
            .expect("taken");
        for held in [a.held, b.held] {
            let err = held.expect("held").await.expect_err("not written");
            assert!(!err.is_transient(), "{err}");
            assert!(err.to_string().contains("cannot write"), "{err}");
        }
    }

    #[test]
    fn roll_settings_are_checked_by_name() {
        let bad = RollConfig {
            records: Some(0),
            bytes: 1,
            age_ms: 1,
        };
        let err = bad
            .check("outputs.lake.local.roll")
            .expect_err("zero records");
        assert!(err.contains("outputs.lake.local.roll.records"), "{err}");
        let bad = RollConfig {
            records: None,
            bytes: crate::sink::objects::MAX_ROLL_BYTES + 1,
            age_ms: 1,
        };
        assert!(
            bad.check("outputs.lake.local.roll")
                .expect_err("too big")
                .contains("roll.bytes")
        );
    }
}

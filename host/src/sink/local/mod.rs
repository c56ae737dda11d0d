//! JSON Lines files on local disk through `object_store`'s `LocalFileSystem`
//! (the same interface S3, GCS and Azure sinks will use). Each write becomes
//! one object, written atomically (temporary file + rename):
//! `<path>/dt=<YYYY-MM-DD>/<pipeline>-<output>-<run>-<seq>.jsonl`.

mod config;

pub use config::LocalSinkConfig;

use super::{BuildContext, Pending, Sink, SinkError, encode_lines, ready};
use crate::config::RecordFormat;
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
        })
    }
}

#[async_trait::async_trait]
impl Sink for LocalSink {
    async fn submit(&self, batch: super::SinkBatch) -> Result<Pending, SinkError> {
        let records = batch.records;
        let (buf, lines, rejects) = encode_lines(&records, self.format);
        if lines == 0 {
            return Ok(ready(rejects));
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
                    transient: transient(&e),
                    message: format!("cannot write `{location}`: {e}"),
                })?;
            Ok(rejects)
        }))
    }

    fn describe(&self) -> String {
        format!("local `{}`", self.root.display())
    }
}

/// Whether a failed write may succeed if tried again: not when the file
/// system says the path cannot be written at all (no permission, a file
/// where a directory should be, a read-only file system), which no wait
/// mends; yes otherwise (a full disk, an interrupted write, ...).
fn transient(e: &object_store::Error) -> bool {
    use std::io::ErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return !matches!(
                io.kind(),
                ErrorKind::PermissionDenied
                    | ErrorKind::NotADirectory
                    | ErrorKind::IsADirectory
                    | ErrorKind::ReadOnlyFilesystem
                    | ErrorKind::InvalidFilename
                    | ErrorKind::InvalidInput
            );
        }
        source = err.source();
    }
    true
}

impl super::SinkPlugin for LocalSinkConfig {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn retry(&self) -> crate::config::RetryConfig {
        self.retry
    }

    fn line_format(&self) -> Option<RecordFormat> {
        Some(self.format)
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(Arc::new(LocalSink::new(
            &ctx.base.join(&self.path),
            &ctx.pipeline.name,
            ctx.output,
            self.format,
        )?))
    }

    fn read_dead_letters(
        &self,
        _pipeline: &crate::config::PipelineConfig,
        base: &Path,
    ) -> Result<Vec<crate::replay::DeadLetterRecord>, crate::replay::ReplayError> {
        crate::replay::read_local(&base.join(&self.path))
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
        assert_eq!(rejects.len(), 1);
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
}

//! `lake`: a data lake on an object store (S3 and S3-compatible stores,
//! GCS, Azure Blob, local disk) through `object_store`. Records are laid
//! out in Hive partitions rendered from their content, event time and
//! source ([`layout`]), encoded as JSON Lines, Parquet or raw lines
//! ([`encode`]), collected per source partition into segments that roll at
//! a count, a size or an age, and written exactly once by deterministic,
//! position-derived keys and create-if-absent writes ([`segment`]).
//!
//! Offsets are committed only once the objects holding their records are
//! written: a submit is *taken* at once (the pipeline frees its in-flight
//! budget) and *durable* when its segments are.

mod config;
mod encode;
mod layout;
mod schema;
mod segment;
mod store;
mod writing;

pub use config::{
    Compression, EventTimeConfig, FieldSpec, LakeFormat, LakeSinkConfig, Options, TimeUnit,
    TypeSpec,
};
pub use segment::Marker;

use super::{Accepted, BuildContext, Pending, Reject, Sink, SinkBatch, SinkError};
use crate::record::{Partition, Record};
use crate::sink::RecordFormat;
use arrow_schema::SchemaRef;
use encode::Encoder;
use layout::Template;
use object_store::{ObjectStore, ObjectStoreExt as _};
use segment::{Outcome, Recovered, Segment, Writer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore, oneshot};
use writing::by_age;

/// Segments being written at once, at most; a submit that would close
/// another waits.
const CLOSING: usize = 4;

/// Records of the first submit a Parquet schema is inferred from, at most.
const INFER_RECORDS: usize = 1000;

/// One source partition's state in the sink.
struct Part {
    source: Partition,
    /// `{stream}+{partition}` in keys.
    name: String,
    /// Segments recorded before this run that reach its first offset
    /// (`None`: not loaded yet).
    recovered: Option<Vec<Recovered>>,
    open: Option<Segment>,
    /// The offset of the last record this sink took for the partition.
    high: Option<i64>,
}

struct Inner {
    writer: Writer,
    config: LakeSinkConfig,
    template: Template,
    event_path: Vec<String>,
    schema: OnceCell<SchemaRef>,
    parts: Mutex<HashMap<Partition, Arc<tokio::sync::Mutex<Part>>>>,
    open_bytes: AtomicU64,
    closing: Arc<Semaphore>,
    /// For records without lineage: a stream name unique to this run.
    run: Arc<str>,
    seq: AtomicU64,
}

/// The lake sink.
pub struct LakeSink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LakeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSink")
            .field("lake", &self.inner.writer.describe)
            .finish()
    }
}

/// One record, encoded, with where it goes.
struct Item {
    index: usize,
    offset: i64,
    path: String,
    line: Vec<u8>,
    module: Option<Arc<str>>,
}

impl LakeSink {
    /// Opens a lake sink (inside a tokio runtime: it starts the task that
    /// closes segments by age, which ends with the sink).
    pub fn open(
        config: &LakeSinkConfig,
        base: &Path,
        output: &str,
        store: Option<Arc<dyn ObjectStore>>,
    ) -> Result<Self, SinkError> {
        let parsed = store::parse(&config.url, &config.options.0, base).map_err(|message| {
            SinkError::Config {
                sink: format!("lake output `{output}`"),
                message,
            }
        })?;
        let describe = parsed.describe.clone();
        let store = match store {
            Some(s) => s,
            None => {
                store::open(&parsed, &config.options.0).map_err(|message| SinkError::Config {
                    sink: describe.clone(),
                    message,
                })?
            }
        };
        let template = Template::parse(&config.partition).map_err(|message| SinkError::Config {
            sink: describe.clone(),
            message,
        })?;
        let ext = match (config.format, config.compression()) {
            (LakeFormat::Parquet, _) => "parquet",
            (LakeFormat::Jsonl, Compression::Gzip) => "jsonl.gz",
            (LakeFormat::Jsonl, Compression::Zstd) => "jsonl.zst",
            (LakeFormat::Jsonl, _) => "jsonl",
            (LakeFormat::Raw, Compression::Gzip) => "raw.gz",
            (LakeFormat::Raw, Compression::Zstd) => "raw.zst",
            (LakeFormat::Raw, _) => "raw",
        };
        let schema = OnceCell::new();
        if let Some(fields) = &config.schema {
            let s = encode::arrow_schema(fields).map_err(|message| SinkError::Config {
                sink: describe.clone(),
                message,
            })?;
            let _ = schema.set(Arc::new(s));
        }
        let inner = Arc::new(Inner {
            writer: Writer {
                store,
                prefix: parsed.prefix.as_ref().trim_matches('/').to_string(),
                describe,
                ext,
                compare: output != "dead-letter",
                retry: config.retry.into(),
            },
            event_path: config
                .event_time
                .field
                .as_deref()
                .map(|f| f.split('.').map(str::to_string).collect())
                .unwrap_or_default(),
            config: config.clone(),
            template,
            schema,
            parts: Mutex::new(HashMap::new()),
            open_bytes: AtomicU64::new(0),
            closing: Arc::new(Semaphore::new(CLOSING)),
            run: Arc::from(format!(
                "_run-{}-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
                std::process::id()
            )),
            seq: AtomicU64::new(0),
        });
        let age = Duration::from_millis(config.roll.age_ms);
        let tick = (age / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        tokio::spawn(by_age(Arc::downgrade(&inner), age, tick));
        Ok(LakeSink { inner })
    }
}

impl Inner {
    fn part(&self, source: &Partition) -> Arc<tokio::sync::Mutex<Part>> {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts
            .entry(source.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Part {
                    source: source.clone(),
                    name: layout::source_name(source),
                    recovered: None,
                    open: None,
                    high: None,
                }))
            })
            .clone()
    }

    fn store_error(&self, (message, transient): (String, bool)) -> SinkError {
        SinkError::Store {
            sink: self.writer.describe.clone(),
            message,
            transient,
        }
    }
}

#[async_trait::async_trait]
impl Sink for LakeSink {
    async fn submit(&self, batch: SinkBatch) -> Result<Pending, SinkError> {
        let inner = &self.inner;
        let SinkBatch { records, lineage } = batch;
        let schema = if inner.config.format == LakeFormat::Parquet {
            let sample: Vec<serde_json::Value> = records
                .iter()
                .take(INFER_RECORDS)
                .filter_map(|r| r.value.as_deref())
                .filter_map(|v| serde_json::from_slice(v).ok())
                .collect();
            Some(inner.schema(&sample).await?)
        } else {
            None
        };
        // Group by source partition, keeping order.
        let mut by_source: Vec<(Partition, Vec<Item>)> = Vec::new();
        let mut rejects = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let (source, offset) = match lineage.positions.get(index) {
                Some(p) => (p.partition.clone(), p.offset),
                None => (
                    Partition {
                        stream: inner.run.clone(),
                        partition: 0,
                    },
                    inner.seq.fetch_add(1, Ordering::Relaxed) as i64,
                ),
            };
            match inner.encode(record, &source, schema.as_deref()) {
                Ok((path, line)) => {
                    let item = Item {
                        index,
                        offset,
                        path,
                        line,
                        module: lineage.modules.get(index).cloned().flatten(),
                    };
                    match by_source.iter_mut().find(|(s, _)| *s == source) {
                        Some((_, items)) => items.push(item),
                        None => by_source.push((source, vec![item])),
                    }
                }
                Err(reason) => rejects.push(Reject { index, reason }),
            }
        }
        let mut waits = Vec::new();
        for (source, items) in by_source {
            waits.extend(inner.add(&source, items).await?);
        }
        inner.relieve().await?;
        let describe = inner.writer.describe.clone();
        let held: super::Durable = Box::pin(async move {
            for w in waits {
                match w.await {
                    Ok(Ok(())) => {}
                    Ok(Err((message, transient))) => {
                        return Err(SinkError::Store {
                            sink: describe,
                            message,
                            transient,
                        });
                    }
                    Err(_) => {
                        return Err(SinkError::Store {
                            sink: describe,
                            message: "the sink stopped before the objects holding these records were written".into(),
                            transient: true,
                        });
                    }
                }
            }
            Ok(())
        });
        Ok(Box::pin(std::future::ready(Ok(Accepted {
            rejects,
            held: Some(held),
        }))))
    }

    fn describe(&self) -> String {
        self.inner.writer.describe.clone()
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.inner.close_all(None).await?;
        // Wait for every segment being written.
        let all = self
            .inner
            .closing
            .acquire_many(CLOSING as u32)
            .await
            .map_err(|_| {
                self.inner
                    .store_error(("the sink is shutting down".into(), true))
            })?;
        drop(all);
        Ok(())
    }

    async fn check(&self) -> Result<(), SinkError> {
        let w = &self.inner.writer;
        let prefix = object_store::path::Path::from(w.prefix.as_str());
        w.store
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|_| ())
            .map_err(|e| SinkError::Store {
                sink: w.describe.clone(),
                message: format!("cannot list the lake: {e}"),
                transient: segment::transient(&e),
            })
    }
}

impl super::SinkPlugin for LakeSinkConfig {
    fn kind(&self) -> &'static str {
        "lake"
    }

    fn retry(&self) -> crate::retry::RetryConfig {
        self.retry
    }

    fn line_format(&self) -> Option<RecordFormat> {
        (self.format == LakeFormat::Jsonl).then_some(self.record)
    }

    fn check(&self, field: &str, _scope: &crate::sink::SinkScope<'_>) -> Result<(), String> {
        LakeSinkConfig::check(self, &format!("{field}.lake"))
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(Arc::new(LakeSink::open(
            self,
            ctx.scope.base,
            ctx.output,
            None,
        )?))
    }

    fn probe(&self, scope: &crate::sink::SinkScope<'_>) -> Result<String, String> {
        let parsed = store::parse(&self.url, &self.options.0, scope.base)?;
        let store = store::open(&parsed, &self.options.0)?;
        // On a thread of its own: the store's client needs a runtime, and
        // the caller may be on one.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async {
                        let listed = tokio::time::timeout(
                            std::time::Duration::from_secs(15),
                            store.list_with_delimiter(Some(&parsed.prefix)),
                        )
                        .await
                        .map_err(|_| format!("{}: no answer within 15 s", parsed.describe))?
                        .map_err(|e| format!("cannot list {}: {e}", parsed.describe))?;
                        Ok(format!(
                            "listed {} ({} objects, {} folders at its top)",
                            parsed.describe,
                            listed.objects.len(),
                            listed.common_prefixes.len()
                        ))
                    })
                })
                .join()
                .unwrap_or_else(|_| Err("the probe failed".into()))
        })
    }

    fn read_dead_letters(
        &self,
        scope: &crate::sink::SinkScope<'_>,
        _newest: Option<usize>,
    ) -> Result<Vec<crate::dlq_entry::DeadLetterRecord>, crate::dlq_entry::ReplayError> {
        let parsed = store::parse(&self.url, &self.options.0, scope.base).map_err(|message| {
            crate::dlq_entry::ReplayError::Read {
                dlq: self.url.clone(),
                message,
            }
        })?;
        match (&parsed.location, self.format, self.compression()) {
            (store::Location::Local(dir), LakeFormat::Jsonl, Compression::None) => {
                crate::dlq_entry::read_local(dir)
            }
            _ => Err(crate::dlq_entry::ReplayError::Read {
                dlq: parsed.describe,
                message: "only an uncompressed JSON Lines lake on local disk can be read back yet; `sluice dlq` cannot read this one".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;

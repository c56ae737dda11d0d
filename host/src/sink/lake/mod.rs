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
mod segment;
mod store;

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

    /// The Parquet schema: configured, kept in the lake, or inferred from
    /// `sample` and kept there (create-if-absent: another host's wins).
    async fn schema(&self, sample: &[serde_json::Value]) -> Result<SchemaRef, SinkError> {
        self.schema
            .get_or_try_init(|| async {
                let key = self.writer.schema_key();
                let location = object_store::path::Path::from(key.as_str());
                let parse = |bytes: &[u8]| -> Result<SchemaRef, SinkError> {
                    serde_json::from_slice::<arrow_schema::Schema>(bytes)
                        .map(Arc::new)
                        .map_err(|e| SinkError::Config {
                            sink: self.writer.describe.clone(),
                            message: format!("`{key}` is not an Arrow schema: {e}"),
                        })
                };
                match self.writer.store.get(&location).await {
                    Ok(got) => {
                        let bytes = got.bytes().await.map_err(|e| {
                            self.store_error((format!("cannot read `{key}`: {e}"), true))
                        })?;
                        return parse(&bytes);
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(self.store_error((
                            format!("cannot read `{key}`: {e}"),
                            segment::transient(&e),
                        )));
                    }
                }
                let schema = encode::infer(sample).map_err(|e| SinkError::Config {
                    sink: self.writer.describe.clone(),
                    message: format!(
                        "cannot infer a Parquet schema from the first records ({e}); give `schema`"
                    ),
                })?;
                let body = serde_json::to_vec_pretty(&schema).map_err(|e| SinkError::Config {
                    sink: self.writer.describe.clone(),
                    message: e.to_string(),
                })?;
                match self
                    .writer
                    .create(&key, bytes::Bytes::from(body))
                    .await
                    .map_err(|e| self.store_error(e))?
                {
                    None => {
                        tracing::info!(sink = %self.writer.describe, key = %key, columns = schema.fields().len(),
                            "inferred the Parquet schema from the first records and kept it in the lake");
                        Ok(Arc::new(schema))
                    }
                    Some(theirs) => parse(&theirs),
                }
            })
            .await
            .cloned()
    }

    /// Encodes one record; `Err` is the reason it is refused.
    fn encode(
        &self,
        record: &Record,
        source: &Partition,
        schema: Option<&arrow_schema::Schema>,
    ) -> Result<(String, Vec<u8>), String> {
        let cfg = &self.config;
        let needs_value = self.template.reads_value()
            || cfg.event_time.field.is_some()
            || cfg.format == LakeFormat::Parquet;
        let value: Option<serde_json::Value> = if needs_value {
            record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice(v).ok())
        } else {
            None
        };
        let mut line = Vec::with_capacity(record.size() + 1);
        match cfg.format {
            LakeFormat::Jsonl => super::encode_line(record, cfg.record, &mut line)?,
            LakeFormat::Raw => {
                let Some(v) = record.value.as_deref() else {
                    return Err("record has no value, and a raw lake writes values".into());
                };
                if v.contains(&b'\n') {
                    return Err(
                        "record value holds a newline, and a raw lake writes one value per line"
                            .into(),
                    );
                }
                line.extend_from_slice(v);
                line.push(b'\n');
            }
            LakeFormat::Parquet => {
                let Some(v) = &value else {
                    return Err(if record.value.is_none() {
                        "record has no value, and Parquet rows are JSON objects".into()
                    } else {
                        "record value is not JSON, and Parquet rows are JSON objects".into()
                    });
                };
                if let Some(schema) = schema {
                    encode::fits(v, schema)?;
                }
                serde_json::to_writer(&mut line, v).map_err(|e| e.to_string())?;
                line.push(b'\n');
            }
        }
        let time = if self.template.reads_event_time() {
            layout::event_time(&cfg.event_time, &self.event_path, record, value.as_ref())
        } else {
            None
        };
        let path = self
            .template
            .render(source, time, value.as_ref(), &cfg.default_partition);
        Ok((path, line))
    }

    fn new_encoder(&self) -> Result<Encoder, String> {
        match self.config.format {
            LakeFormat::Parquet => {
                let schema = self.schema.get().cloned().ok_or("no Parquet schema yet")?;
                Encoder::parquet(
                    schema,
                    self.config.compression(),
                    self.config.row_group_rows,
                )
            }
            _ => Ok(Encoder::lines(self.config.compression())),
        }
    }

    fn is_full(&self, seg: &Segment) -> bool {
        let roll = &self.config.roll;
        seg.size() as u64 >= roll.bytes || roll.records.is_some_and(|r| seg.records >= r)
    }

    /// Adds one partition's items (in order) to its segments; returns the
    /// receivers of every segment they went into.
    async fn add(
        self: &Arc<Self>,
        source: &Partition,
        items: Vec<Item>,
    ) -> Result<Vec<oneshot::Receiver<Outcome>>, SinkError> {
        let part = self.part(source);
        let mut part = part.lock().await;
        let mut waits = Vec::new();
        // The source went back (a session restarted from its committed
        // offsets, the partition came back after a rebalance): what is open
        // will be read again, and segments written since the markers were
        // loaded must be found again.
        let first = items.first().map(|i| i.offset);
        if let (Some(f), Some(h)) = (first, part.high)
            && f <= h
        {
            if let Some(seg) = part.open.take() {
                let size = (seg.size() as u64).min(self.open_bytes.load(Ordering::Relaxed));
                self.open_bytes.fetch_sub(size, Ordering::Relaxed);
                let why: Outcome = Err((
                    format!(
                        "{source}: the source went back to offset {f}; these records are read again"
                    ),
                    true,
                ));
                for w in seg.waiters {
                    let _ = w.send(why.clone());
                }
            }
            part.recovered = None;
            tracing::debug!(sink = %self.writer.describe, source = %source, from = f, "the source replays: markers reloaded");
        }
        if let Some(last) = items.last() {
            part.high = Some(last.offset);
        }
        if part.recovered.is_none() {
            let from = items.first().map_or(0, |i| i.offset);
            let recovered = if source.stream.starts_with("_run-") {
                Vec::new()
            } else {
                self.writer
                    .recover(&part.name, from)
                    .await
                    .map_err(|e| self.store_error(e))?
            };
            if !recovered.is_empty() {
                tracing::info!(sink = %self.writer.describe, source = %source, segments = recovered.len(),
                    "segments written before the restart reach the replayed offsets; they are rebuilt as recorded");
            }
            part.recovered = Some(recovered);
        }
        let mut joined = false;
        let mut registered: Option<i64> = None;
        for item in items {
            let o = item.offset;
            // A recorded segment this offset lies in.
            let covering = part
                .recovered
                .as_ref()
                .and_then(|r| r.iter().find(|r| r.marker.first <= o && o <= r.marker.last))
                .cloned();
            // Leaving the segment being rebuilt, or entering a recorded one
            // while a fresh segment is open: close what is open.
            let leave = match (&part.open, &covering) {
                (Some(seg), _) if seg.rebuilds.as_ref().is_some_and(|r| o > r.marker.last) => true,
                (Some(seg), Some(c)) if seg.rebuilds.is_none() && o >= c.marker.first => true,
                _ => false,
            };
            if leave {
                self.close(&mut part).await?;
            }
            if part.open.is_none() {
                match covering {
                    Some(c) if c.marker.first == o => {
                        part.open = Some(Segment::new(o, Some(c)));
                    }
                    Some(c) => {
                        // The commit fell inside this recorded segment: its
                        // records from here on are in the lake already.
                        if !c.complete {
                            return Err(self.store_error((
                                format!(
                                    "{}: offset {o} lies inside the recorded segment {}..={} whose objects are not all written, but the replay did not start at its first offset {}: the transforms are not deterministic",
                                    source, c.marker.first, c.marker.last, c.marker.first
                                ),
                                false,
                            )));
                        }
                        if !joined {
                            tracing::debug!(sink = %self.writer.describe, source = %source, offset = o,
                                "replayed records already in the lake: acknowledged without a write");
                            joined = true;
                        }
                        continue;
                    }
                    None => part.open = Some(Segment::new(o, None)),
                }
            }
            let Some(seg) = part.open.as_mut() else {
                continue;
            };
            let before = seg.size();
            if seg.broken.is_none() {
                let entry = match seg.objects.entry(item.path) {
                    std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
                    std::collections::btree_map::Entry::Vacant(v) => match self.new_encoder() {
                        Ok(enc) => Some(v.insert((enc, 0))),
                        Err(e) => {
                            seg.broken = Some(e);
                            None
                        }
                    },
                };
                if let Some((enc, n)) = entry {
                    match enc.push(&item.line) {
                        Ok(()) => *n += 1,
                        Err(e) => seg.broken = Some(format!("record {}: {e}", item.index)),
                    }
                }
            }
            seg.records += 1;
            seg.last = seg.last.max(o);
            if let Some(m) = item.module
                && !seg.modules.contains(&*m)
            {
                seg.modules.insert(m.to_string());
            }
            let grown = seg.size().saturating_sub(before) as u64;
            self.open_bytes.fetch_add(grown, Ordering::Relaxed);
            // One waiter per segment this submit adds to.
            if registered != Some(seg.first) {
                let (tx, rx) = oneshot::channel();
                seg.waiters.push(tx);
                waits.push(rx);
                registered = Some(seg.first);
            }
            // A fresh segment closes by the roll settings; a rebuilt one
            // once it holds the records its marker counts.
            let done = match &seg.rebuilds {
                None => self.is_full(seg),
                Some(r) => seg.records >= r.marker.records,
            };
            if done {
                self.close(&mut part).await?;
            }
        }
        Ok(waits)
    }

    /// Closes the open segment of `part` (if any): starts writing it once a
    /// closing slot is free. A rebuilt segment closed before its recorded
    /// end (flush, memory) is not written: its records are in the lake when
    /// the marker's objects all exist, and are read again otherwise.
    async fn close(self: &Arc<Self>, part: &mut Part) -> Result<(), SinkError> {
        let Some(seg) = part.open.take() else {
            return Ok(());
        };
        self.open_bytes.fetch_sub(
            (seg.size() as u64).min(self.open_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if let Some(r) = &seg.rebuilds
            && seg.last < r.marker.last
        {
            let outcome: Outcome = if r.complete {
                Ok(())
            } else {
                Err((
                    format!(
                        "{}: the sink closed before the replay reached the end of the recorded segment {}..={}; its records are read again",
                        part.source, r.marker.first, r.marker.last
                    ),
                    true,
                ))
            };
            for w in seg.waiters {
                let _ = w.send(outcome.clone());
            }
            return Ok(());
        }
        let permit = self
            .closing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.store_error(("the sink is shutting down".into(), true)))?;
        let inner = self.clone();
        let source = part.source.clone();
        let name = part.name.clone();
        tokio::spawn(async move {
            let mut seg = seg;
            let waiters = std::mem::take(&mut seg.waiters);
            let outcome = inner.writer.write(&source, &name, seg).await;
            if let Err((message, _)) = &outcome {
                tracing::error!(sink = %inner.writer.describe, source = %source, error = %message, "a lake segment was not written");
            }
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
            drop(permit);
        });
        Ok(())
    }

    /// Closes open segments: those older than `age` (`None`: all).
    async fn close_all(self: &Arc<Self>, age: Option<Duration>) -> Result<(), SinkError> {
        let parts: Vec<_> = {
            let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            parts.values().cloned().collect()
        };
        for p in parts {
            let mut part = p.lock().await;
            let due = part.open.as_ref().is_some_and(|s| match age {
                None => true,
                Some(age) => s.rebuilds.is_none() && s.opened.elapsed() >= age,
            });
            if due {
                self.close(&mut part).await?;
            }
        }
        Ok(())
    }

    /// When open segments hold more than allowed, closes the largest fresh
    /// one.
    async fn relieve(self: &Arc<Self>) -> Result<(), SinkError> {
        while self.open_bytes.load(Ordering::Relaxed) > self.config.max_open_bytes {
            let parts: Vec<_> = {
                let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
                parts.values().cloned().collect()
            };
            let mut largest: Option<(usize, Arc<tokio::sync::Mutex<Part>>)> = None;
            for p in parts {
                let Ok(part) = p.try_lock() else { continue };
                // A segment being rebuilt closes at its recorded end only.
                let size = part
                    .open
                    .as_ref()
                    .filter(|s| s.rebuilds.is_none())
                    .map_or(0, Segment::size);
                if size > 0 && largest.as_ref().is_none_or(|(s, _)| size > *s) {
                    drop(part);
                    largest = Some((size, p));
                }
            }
            let Some((_, p)) = largest else {
                return Ok(());
            };
            let mut part = p.lock().await;
            self.close(&mut part).await?;
        }
        Ok(())
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

/// Closes segments once they are `age` old.
async fn by_age(inner: Weak<Inner>, age: Duration, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.close_all(Some(age)).await {
            tracing::warn!(sink = %inner.writer.describe, error = %e, "closing lake segments by age failed");
        }
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

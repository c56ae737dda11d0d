//! Segments: the records of one source partition between two roll
//! boundaries, written as one object per partition path, all keyed by the
//! segment's first source offset. This is where exactly-once lives.
//!
//! 1. A segment closes at a count, a size or an age (or on flush, or when
//!    the sink holds too much). Before its objects are written, a *marker*
//!    `_sluice/segments/{stream}+{partition}/{last}-{first}.json` records
//!    its range, its objects (key, size, SHA-256) and the modules that
//!    produced it — written create-if-absent, like every object.
//! 2. Objects are written create-if-absent. An existing object with the
//!    same bytes is a replay: done. Different bytes stop the pipeline with
//!    a message naming the object (a non-deterministic transform) — unless
//!    the marker says other modules wrote it (a deploy happened between
//!    the first write and the replay): the lake keeps what it has, the
//!    records are not written twice, and a warning says so.
//! 3. After a restart, the first record of a partition loads the markers
//!    that reach its offset. A replayed record inside a recorded segment
//!    belongs to that segment, whatever the roll settings or the clock say
//!    now: the segment is rebuilt with the same boundaries and so the same
//!    keys and bytes. Records of a segment whose start is not replayed (the
//!    commit fell inside it) are in the lake already and are acknowledged
//!    without a write — when every object of its marker exists.
//!
//! Wall-clock rolling is therefore safe: a boundary that time decided is
//! recorded, and a replay follows the record, not the clock.

use super::encode::Encoder;
use crate::record::Partition;
use crate::retry::Retry;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// How a segment's write ended: `Err((message, transient))`.
pub type Outcome = Result<(), (String, bool)>;

/// One object of a segment, as its marker records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Key in the store.
    pub key: String,
    /// Records in it.
    pub records: u64,
    /// Bytes.
    pub bytes: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

/// What a segment's marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// First source offset.
    pub first: i64,
    /// Last source offset.
    pub last: i64,
    /// Records in all objects.
    pub records: u64,
    /// The objects.
    pub objects: Vec<ObjectEntry>,
    /// Digests of the modules that produced the records.
    pub modules: BTreeSet<String>,
}

/// A marker as loaded after a restart.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The marker.
    pub marker: Marker,
    /// Whether every object it names exists (so its records are durable).
    pub complete: bool,
}

/// An open segment.
pub struct Segment {
    /// First source offset.
    pub first: i64,
    /// Last source offset so far.
    pub last: i64,
    /// Records.
    pub records: u64,
    /// When it opened (for the age roll).
    pub opened: Instant,
    /// Path → encoder (one object per partition path).
    pub objects: BTreeMap<String, (Encoder, u64)>,
    /// Modules that produced its records.
    pub modules: BTreeSet<String>,
    /// Submits waiting for it to be durable.
    pub waiters: Vec<oneshot::Sender<Outcome>>,
    /// The recorded segment it rebuilds, after a restart.
    pub rebuilds: Option<Recovered>,
    /// An encoder failed: the segment cannot be written.
    pub broken: Option<String>,
}

impl Segment {
    /// An empty segment starting at `first`.
    pub fn new(first: i64, rebuilds: Option<Recovered>) -> Self {
        Segment {
            first,
            last: first,
            records: 0,
            opened: Instant::now(),
            objects: BTreeMap::new(),
            modules: BTreeSet::new(),
            waiters: Vec::new(),
            rebuilds,
            broken: None,
        }
    }

    /// Bytes its objects hold.
    pub fn size(&self) -> usize {
        self.objects.values().map(|(e, _)| e.size()).sum()
    }
}

/// Where segments of one sink go and how they are written.
pub struct Writer {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of every key (no trailing `/`; may be empty).
    pub prefix: String,
    /// For messages.
    pub describe: String,
    /// Object key extension.
    pub ext: &'static str,
    /// Compare an existing object's bytes (false for dead letters, whose
    /// entries carry failure times and so differ on every replay).
    pub compare: bool,
    /// Retry policy for transient errors.
    pub retry: Retry,
}

impl Writer {
    fn under(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// Folder of one source partition's markers.
    pub fn marker_dir(&self, source: &str) -> String {
        self.under(&format!("_sluice/segments/{source}"))
    }

    /// Key of the schema kept for Parquet.
    pub fn schema_key(&self) -> String {
        self.under("_sluice/schema.json")
    }

    /// Loads the markers of `source` whose segments reach `from` or later,
    /// checking which are complete.
    pub async fn recover(&self, source: &str, from: i64) -> Result<Vec<Recovered>, (String, bool)> {
        use futures::TryStreamExt as _;
        let dir = StorePath::from(self.marker_dir(source));
        let after = StorePath::from(format!(
            "{}/{:020}~",
            self.marker_dir(source),
            from.saturating_sub(1).max(0)
        ));
        let listed: Vec<object_store::ObjectMeta> = if from <= 0 {
            self.store.list(Some(&dir)).try_collect().await
        } else {
            self.store
                .list_with_offset(Some(&dir), &after)
                .try_collect()
                .await
        }
        .map_err(|e| (format!("cannot list `{dir}`: {e}"), transient(&e)))?;
        let mut out = Vec::new();
        for meta in listed {
            let bytes = self.get(&meta.location).await?;
            let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| {
                (
                    format!("marker `{}` is not a segment marker: {e}", meta.location),
                    false,
                )
            })?;
            if marker.last < from {
                continue;
            }
            let mut complete = true;
            for o in &marker.objects {
                match self.store.head(&StorePath::from(o.key.as_str())).await {
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => complete = false,
                    Err(e) => return Err((format!("cannot read `{}`: {e}", o.key), transient(&e))),
                }
            }
            out.push(Recovered { marker, complete });
        }
        out.sort_by_key(|r| r.marker.first);
        Ok(out)
    }

    async fn get(&self, key: &StorePath) -> Result<bytes::Bytes, (String, bool)> {
        let got = self
            .store
            .get(key)
            .await
            .map_err(|e| (format!("cannot read `{key}`: {e}"), transient(&e)))?;
        got.bytes()
            .await
            .map_err(|e| (format!("cannot read `{key}`: {e}"), transient(&e)))
    }

    /// Writes `bytes` at `key` unless it exists; `Ok(Some(existing))` when
    /// it does. Transient errors are retried by the policy.
    pub async fn create(
        &self,
        key: &str,
        bytes: bytes::Bytes,
    ) -> Result<Option<bytes::Bytes>, (String, bool)> {
        let location = StorePath::from(key);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let since = Instant::now();
        let mut attempt = 1;
        loop {
            let e = match self
                .store
                .put_opts(&location, PutPayload::from(bytes.clone()), opts.clone())
                .await
            {
                Ok(_) => return Ok(None),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return self.get(&location).await.map(Some);
                }
                Err(e) => e,
            };
            let transient = transient(&e);
            let wait = self.retry.backoff(attempt + 1);
            if !(transient && self.retry.allows(attempt + 1, since, wait)) {
                return Err((format!("cannot write `{location}`: {e}"), transient));
            }
            attempt += 1;
            tracing::warn!(sink = %self.describe, key = %location, attempt, error = %e, "writing a lake object failed: retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Writes a closed segment of `source`: its marker (unless it rebuilds
    /// a recorded one), then its objects.
    pub async fn write(&self, source: &Partition, name: &str, seg: Segment) -> Outcome {
        if let Some(why) = seg.broken {
            return Err((
                format!(
                    "segment {name} from offset {} cannot be encoded: {why}",
                    seg.first
                ),
                false,
            ));
        }
        let mut objects = Vec::with_capacity(seg.objects.len());
        let mut entries = Vec::with_capacity(seg.objects.len());
        for (path, (encoder, records)) in seg.objects {
            let bytes = encoder
                .finish()
                .map_err(|e| (format!("cannot encode an object of {name}: {e}"), false))?;
            let key = super::layout::object_key(&self.prefix, &path, name, seg.first, self.ext);
            entries.push(ObjectEntry {
                key: key.clone(),
                records,
                bytes: bytes.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            });
            objects.push((key, bytes::Bytes::from(bytes)));
        }
        let marker = Marker {
            first: seg.first,
            last: seg.last,
            records: seg.records,
            objects: entries,
            modules: seg.modules,
        };
        // A deploy between the first write and this replay: the lake keeps
        // the first module's objects.
        let mut other_modules = false;
        match &seg.rebuilds {
            Some(r) => {
                other_modules = r.marker.modules != marker.modules;
                let keys = |m: &Marker| m.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
                if keys(&r.marker) != keys(&marker) || r.marker.records != marker.records {
                    if other_modules {
                        tracing::warn!(sink = %self.describe, source = %source, first = seg.first,
                            "a replayed segment was written before by other modules; the lake keeps their objects");
                        return Ok(());
                    }
                    return Err((
                        format!(
                            "replaying {name} offsets {}..={} gives {} records in {} objects where the lake holds {} records in {} (marker `{}`): the transforms are not deterministic; the partition stops rather than write the records twice",
                            marker.first,
                            marker.last,
                            marker.records,
                            marker.objects.len(),
                            r.marker.records,
                            r.marker.objects.len(),
                            self.marker_key(name, &r.marker),
                        ),
                        false,
                    ));
                }
            }
            None => {
                let body = serde_json::to_vec_pretty(&marker)
                    .map_err(|e| (format!("cannot encode a marker: {e}"), false))?;
                let key = self.marker_key(name, &marker);
                if let Some(existing) = self.create(&key, bytes::Bytes::from(body)).await? {
                    let theirs: Option<Marker> = serde_json::from_slice(&existing).ok();
                    if theirs.as_ref().map(|m| (m.first, m.last))
                        != Some((marker.first, marker.last))
                    {
                        return Err((
                            format!("marker `{key}` exists and records another segment"),
                            false,
                        ));
                    }
                }
            }
        }
        for ((key, bytes), entry) in objects.into_iter().zip(&marker.objects) {
            let Some(existing) = self.create(&key, bytes).await? else {
                continue;
            };
            if !self.compare {
                continue;
            }
            let theirs = hex::encode(sha2::Sha256::digest(&existing));
            if theirs != entry.sha256 {
                if other_modules {
                    tracing::warn!(sink = %self.describe, key = %key,
                        "a replayed object was written before by other modules; the lake keeps it");
                    continue;
                }
                return Err((
                    format!(
                        "`{key}` exists with different bytes (sha256 {theirs}, the replay gives {}): a transform is not deterministic or its module changed; the partition stops and nothing is overwritten",
                        entry.sha256
                    ),
                    false,
                ));
            }
        }
        Ok(())
    }

    fn marker_key(&self, name: &str, m: &Marker) -> String {
        format!(
            "{}/{:020}-{:020}.json",
            self.marker_dir(name),
            m.last,
            m.first
        )
    }
}

/// Whether a store error may pass if tried again.
pub fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. } => false,
        other => crate::sink::objects::transient(other),
    }
}

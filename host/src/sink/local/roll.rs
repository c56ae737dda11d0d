//! Rolling objects: records collected into one open object that closes at a
//! size, a record count or an age (and on flush). Each submit is taken at
//! once and answered with a [`Durable`] future that resolves when the object
//! holding its records is written — the acknowledgement later than submit
//! that lets the pipeline free its in-flight budget while an object is open.
//!
//! Memory is bounded: one open object of at most `roll.bytes` (plus one
//! write), and at most [`CLOSING`] objects being written; a submit waits for
//! a closing slot before it may close another.

use crate::retry::Retry;
use crate::sink::objects::RollConfig;
use crate::sink::{Durable, SinkError};
use object_store::local::LocalFileSystem;
use object_store::{ObjectStoreExt, PutPayload};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

/// Objects being written at once, at most.
const CLOSING: usize = 2;

/// Why an object could not be written: the message and whether a retry of
/// the whole run may succeed.
type Outcome = Result<(), (String, bool)>;

/// The open object.
struct Open {
    /// The object's bytes, as the batches' buffers (never copied into one:
    /// a 64 MiB buffer grown by doubling cost more than the encoding).
    parts: Vec<bytes::Bytes>,
    bytes: usize,
    records: u64,
    opened: Instant,
    waiters: Vec<oneshot::Sender<Outcome>>,
}

/// Where and how closed objects are written.
pub(super) struct Target {
    pub store: Arc<LocalFileSystem>,
    pub stem: String,
    pub describe: String,
    pub retry: Retry,
}

struct Inner {
    target: Target,
    roll: RollConfig,
    open: Mutex<Option<Open>>,
    closing: Arc<Semaphore>,
    seq: std::sync::atomic::AtomicU64,
}

/// A rolling writer.
pub(super) struct Roller {
    inner: Arc<Inner>,
}

impl Roller {
    /// A roller; starts the task that closes objects by age (must be called
    /// inside a tokio runtime). The task ends with the roller.
    pub(super) fn new(target: Target, roll: RollConfig) -> Self {
        let inner = Arc::new(Inner {
            target,
            roll,
            open: Mutex::new(None),
            closing: Arc::new(Semaphore::new(CLOSING)),
            seq: std::sync::atomic::AtomicU64::new(0),
        });
        let age = Duration::from_millis(roll.age_ms);
        let tick = (age / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        tokio::spawn(by_age(Arc::downgrade(&inner), age, tick));
        Roller { inner }
    }

    /// Adds encoded lines (`records` of them) to the open object; returns
    /// the future of their durability. Waits while [`CLOSING`] objects are
    /// being written and this write would close another.
    pub(super) async fn add(&self, lines: Vec<u8>, records: u64) -> Durable {
        let (tx, rx) = oneshot::channel();
        let full = {
            let mut open = self.inner.lock();
            let o = open.get_or_insert_with(|| Open {
                parts: Vec::new(),
                bytes: 0,
                records: 0,
                opened: Instant::now(),
                waiters: Vec::new(),
            });
            o.bytes += lines.len();
            o.parts.push(bytes::Bytes::from(lines));
            o.records += records;
            o.waiters.push(tx);
            self.inner.is_full(o)
        };
        if full {
            self.inner.close_open().await;
        }
        let describe = self.inner.target.describe.clone();
        Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err((message, transient))) => Err(SinkError::Store {
                    sink: describe,
                    message,
                    transient,
                }),
                Err(_) => Err(SinkError::Store {
                    sink: describe,
                    message: "the sink stopped before the object holding these records was written"
                        .into(),
                    transient: true,
                }),
            }
        })
    }

    /// Closes the open object now and waits until it is written.
    pub(super) async fn flush(&self) -> Result<(), SinkError> {
        if let Some(done) = self.inner.close_open().await {
            let _ = done.await;
        }
        Ok(())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_full(&self, o: &Open) -> bool {
        o.bytes as u64 >= self.roll.bytes || self.roll.records.is_some_and(|r| o.records >= r)
    }

    /// Takes the open object (if any) and starts writing it, once a closing
    /// slot is free; returns what resolves when it is written.
    async fn close_open(self: &Arc<Self>) -> Option<oneshot::Receiver<()>> {
        let permit = self.closing.clone().acquire_owned().await.ok()?;
        let open = self.lock().take()?;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let (done_tx, done_rx) = oneshot::channel();
        let inner = self.clone();
        tokio::spawn(async move {
            let outcome = inner.write(open.parts, seq).await;
            for w in open.waiters {
                let _ = w.send(outcome.clone());
            }
            drop(permit);
            let _ = done_tx.send(());
        });
        Some(done_rx)
    }

    /// Writes one object, retrying transient errors by the sink's policy.
    async fn write(&self, parts: Vec<bytes::Bytes>, seq: u64) -> Outcome {
        let t = &self.target;
        let day = chrono::Utc::now().format("%Y-%m-%d");
        let location =
            object_store::path::Path::from(format!("dt={day}/{}-{seq:06}.jsonl", t.stem));
        let payload = PutPayload::from_iter(parts);
        let mut attempt = 1;
        let since = Instant::now();
        loop {
            let e = match t.store.put(&location, payload.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let transient = crate::sink::objects::transient(&e);
            let wait = t.retry.backoff(attempt + 1);
            if !(transient && t.retry.allows(attempt + 1, since, wait)) {
                return Err((format!("cannot write `{location}`: {e}"), transient));
            }
            attempt += 1;
            tracing::warn!(sink = %t.describe, attempt, error = %e, "writing a rolled object failed: retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Closes the open object once its first record is `age` old.
async fn by_age(inner: Weak<Inner>, age: Duration, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let due = inner
            .lock()
            .as_ref()
            .is_some_and(|o| o.opened.elapsed() >= age);
        if due {
            inner.close_open().await;
        }
    }
}

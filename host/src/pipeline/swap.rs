//! Hot swap: a transform's module replaced while the pipeline runs, at one
//! batch boundary across all partitions.
//!
//! The new module's instances (one per worker) are made and initialised
//! first, on real instances from the pool; if `init` fails, nothing changes
//! and the running version keeps serving. Then the coordinator stops
//! cutting batches to workers (batches cut meanwhile wait), waits until
//! every batch in flight is delivered — they were processed by the old
//! version — swaps the instances of every worker at once, and sends the
//! waiting batches on. No record is read again or skipped because of a
//! swap, and every batch is processed by exactly one version of each
//! transform, whose digest travels with the batch into the outputs' lineage
//! and the dead-letter entries.

use crate::engine::{Module, Runner, TransformError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Why a swap did not happen (the running version keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The pipeline has no such transform.
    #[error("pipeline `{pipeline}` has no transform `{transform}`")]
    NoTransform {
        /// The pipeline.
        pipeline: String,
        /// The transform asked for.
        transform: String,
    },
    /// The new version's instances could not start (its `init` refused the
    /// configuration, an import is not granted, the pool is full).
    #[error("the new version was refused and the running one keeps serving: {0}")]
    Refused(#[from] TransformError),
    /// The pipeline is not running (finished, failed or stopped).
    #[error(
        "pipeline `{0}` is not running (finished, failed or stopped): nothing to swap; the module is stored — start the pipeline again (`sluice apply` its file, or restart the host) and deploy it, or `activate` the stored version"
    )]
    NotRunning(String),
    /// A bug in the host.
    #[error("internal error during the swap: {0}")]
    Internal(String),
}

/// A swap that happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swapped {
    /// The transform.
    pub transform: String,
    /// The digest of the module that served before.
    pub previous: String,
    /// The digest of the module that serves now.
    pub digest: String,
    /// From the request reaching the pipeline to the new version taking the
    /// next batch (in-flight batches of the old version delivered), in ms.
    pub waited_ms: f64,
}

/// A swap on its way to the coordinator.
pub(crate) struct SwapRequest {
    /// Index of the transform in the chain.
    pub index: usize,
    /// The new module.
    pub module: Arc<Module>,
    /// One initialised runner per worker.
    pub runners: Vec<Runner>,
    /// When it was asked for.
    pub asked: Instant,
    /// The answer.
    pub reply: oneshot::Sender<Result<Swapped, SwapError>>,
    /// Records the new version is on probation for (0: none).
    pub probation: u64,
    /// The pipeline's breaker settings (probation measures with them).
    pub breaker: crate::config::CircuitBreakerConfig,
    /// Told how the new version's probation ended.
    pub rolled_back: Option<oneshot::Sender<ProbationEnd>>,
}

/// A new version on probation: the old instances are kept until it has
/// processed its first records without tripping its breaker.
pub(crate) struct Probation {
    /// The transform.
    pub index: usize,
    /// The previous version's instances, one per worker.
    pub old: Vec<Runner>,
    /// Records still to go.
    pub remaining: u64,
    /// The new version's digest.
    pub digest: String,
    /// Told how it ended.
    pub rolled_back: Option<oneshot::Sender<ProbationEnd>>,
}

/// How a new version's probation ended (a pipeline that stops during a
/// probation says neither: the channel closes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbationEnd {
    /// It processed its probation's records without tripping its breaker
    /// (or had no probation, or a newer version replaced it first).
    Passed,
    /// It was rolled back automatically, for this reason.
    RolledBack(String),
}

/// What workers check during a probation: the transform, and a breaker of
/// its own over the new version's records only.
pub(crate) type Probe = Arc<Mutex<Option<(usize, super::breaker::Breaker)>>>;

/// Swaps waiting for the coordinator, and the bell that wakes it.
pub(crate) struct SwapQueue {
    queue: Mutex<VecDeque<SwapRequest>>,
    bell: watch::Sender<u64>,
}

impl Default for SwapQueue {
    fn default() -> Self {
        SwapQueue {
            queue: Mutex::new(VecDeque::new()),
            bell: watch::channel(0).0,
        }
    }
}

impl SwapQueue {
    /// Queues a swap and wakes the coordinator.
    pub(crate) fn push(&self, request: SwapRequest) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(request);
        self.bell.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The next queued swap.
    pub(crate) fn take(&self) -> Option<SwapRequest> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Rings when a swap is queued.
    pub(crate) fn bell(&self) -> watch::Receiver<u64> {
        self.bell.subscribe()
    }

    /// Answers every queued swap with `error` (the pipeline ended).
    pub(crate) fn refuse_all(&self, pipeline: &str) {
        while let Some(r) = self.take() {
            let _ = r
                .reply
                .send(Err(SwapError::NotRunning(pipeline.to_string())));
        }
    }
}

/// Replaces transform `index` in every worker's runners with `runners`;
/// returns the previous module's digest and instances. Called only with no
/// batch in flight.
pub(crate) fn apply(
    workers: &[super::session::WorkerRunners],
    index: usize,
    runners: Vec<Runner>,
) -> Result<(String, Vec<Runner>), SwapError> {
    if runners.len() != workers.len() {
        return Err(SwapError::Internal(format!(
            "{} new instances for {} workers",
            runners.len(),
            workers.len()
        )));
    }
    let mut locked: Vec<_> = workers
        .iter()
        .map(|w| w.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    if locked.iter().any(|r| r.len() <= index) {
        return Err(SwapError::Internal(format!(
            "no transform {index} in a worker"
        )));
    }
    let mut previous = None;
    let mut old = Vec::with_capacity(runners.len());
    for (slots, new) in locked.iter_mut().zip(runners) {
        if let Some(slot) = slots.get_mut(index) {
            let o = std::mem::replace(slot, new);
            previous.get_or_insert_with(|| o.module().digest().to_string());
            old.push(o);
        }
    }
    let previous = previous.ok_or_else(|| SwapError::Internal("no workers".into()))?;
    Ok((previous, old))
}

/// Milliseconds since `t`.
pub(crate) fn ms_since(t: Instant) -> f64 {
    Duration::as_secs_f64(&t.elapsed()) * 1000.0
}

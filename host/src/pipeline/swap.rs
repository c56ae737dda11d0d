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
    #[error("pipeline `{0}` is not running: nothing to swap")]
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
}

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

/// Replaces transform `index` in every worker's runners; returns the
/// previous module's digest. Called only with no batch in flight.
pub(crate) fn apply(
    workers: &[super::session::WorkerRunners],
    request: &mut SwapRequest,
) -> Result<String, SwapError> {
    if request.runners.len() != workers.len() {
        return Err(SwapError::Internal(format!(
            "{} new instances for {} workers",
            request.runners.len(),
            workers.len()
        )));
    }
    let mut locked: Vec<_> = workers
        .iter()
        .map(|w| w.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    if locked.iter().any(|r| r.len() <= request.index) {
        return Err(SwapError::Internal(format!(
            "no transform {} in a worker",
            request.index
        )));
    }
    let mut previous = None;
    for (runners, new) in locked.iter_mut().zip(request.runners.drain(..)) {
        if let Some(slot) = runners.get_mut(request.index) {
            let old = std::mem::replace(slot, new);
            previous.get_or_insert_with(|| old.module().digest().to_string());
        }
    }
    previous.ok_or_else(|| SwapError::Internal("no workers".into()))
}

/// Milliseconds since `t`.
pub(crate) fn ms_since(t: Instant) -> f64 {
    Duration::as_secs_f64(&t.elapsed()) * 1000.0
}

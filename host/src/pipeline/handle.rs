//! A pipeline running on its own task, seen from the host: stop, pause,
//! resume, swap a module, look.

use super::live::{Live, Snapshot, State};
use super::{Pipeline, PipelineError, Summary};
use crate::retry::RestartPolicy;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A pipeline running on its own task: stop, pause, resume, look.
pub struct PipelineHandle {
    live: Arc<Live>,
    /// Each transform's instance settings, for the instances of a swap.
    specs: Vec<crate::engine::InstanceSpec>,
    /// Workers (a swap makes one instance per worker).
    workers: usize,
    /// `[deploy]` and `[circuit_breaker]` of the pipeline (probation).
    deploy: crate::config::DeployConfig,
    breaker: crate::config::CircuitBreakerConfig,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<Result<Summary, PipelineError>>>>,
}

impl std::fmt::Debug for PipelineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineHandle")
            .field("name", &self.live.name())
            .finish()
    }
}

impl PipelineHandle {
    /// Starts `pipeline` on its own task, started again after failures as
    /// `restart` says. Every log line of the task carries the pipeline's
    /// name and tenant.
    pub fn spawn(pipeline: Pipeline, live: Arc<Live>, restart: RestartPolicy) -> Self {
        let specs = pipeline.specs().to_vec();
        let workers = pipeline.config().delivery.workers;
        let deploy = pipeline.config().deploy.clone();
        let breaker = pipeline.config().circuit_breaker.clone();
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let span =
            tracing::info_span!("pipeline", pipeline = %live.name(), tenant = %live.tenant());
        let l = live.clone();
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = super::run::run_restarting(&pipeline, &l, &restart, stop_rx).await;
                done_tx.send_replace(true);
                l.swaps().refuse_all(l.name());
                result
            },
            span,
        ));
        PipelineHandle {
            live,
            specs,
            workers,
            deploy,
            breaker,
            stop,
            done,
            task: Mutex::new(Some(task)),
        }
    }

    /// The pipeline's live state.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.live.name()
    }

    /// What it did and is doing.
    pub fn snapshot(&self) -> Snapshot {
        self.live.snapshot()
    }

    /// Stops reading; batches in flight are delivered and committed.
    pub fn pause(&self) {
        self.live.request_pause(true);
    }

    /// Reads again after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.live.request_pause(false);
    }

    /// Replaces transform `transform`'s module with `module` at the next
    /// batch boundary across all partitions (see [`super::swap`]): makes
    /// and initialises the new instances first (refused: nothing changes),
    /// then waits until the old version's batches in flight are delivered
    /// and the new version takes the next batch. With `rolled_back`, the
    /// new version is then on probation (`[deploy] probation_records`), and
    /// `rolled_back` is told why if it is rolled back automatically;
    /// without (a rollback itself), it is not.
    pub async fn swap(
        &self,
        transform: &str,
        module: Arc<crate::engine::Module>,
        rolled_back: Option<tokio::sync::oneshot::Sender<super::swap::ProbationEnd>>,
    ) -> Result<super::Swapped, super::SwapError> {
        let asked = std::time::Instant::now();
        let Some(index) = self.specs.iter().position(|s| &*s.name == transform) else {
            return Err(super::SwapError::NoTransform {
                pipeline: self.name().to_string(),
                transform: transform.to_string(),
            });
        };
        if self.is_done() {
            return Err(super::SwapError::NotRunning(self.name().to_string()));
        }
        let spec = self.specs[index].clone();
        let workers = self.workers.max(1);
        let m = module.clone();
        let runners = tokio::task::spawn_blocking(move || {
            (0..workers)
                .map(|_| crate::engine::Runner::new(m.clone(), spec.clone()))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| super::SwapError::Internal(e.to_string()))??;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.live.swaps().push(super::swap::SwapRequest {
            index,
            module,
            runners,
            asked,
            reply,
            probation: if rolled_back.is_some() {
                self.deploy.probation_records
            } else {
                0
            },
            breaker: self.breaker.clone(),
            rolled_back,
        });
        if self.is_done() {
            self.live.swaps().refuse_all(self.name());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(super::SwapError::NotRunning(self.name().to_string())))
    }

    /// The settings transform `transform`'s instances start with.
    pub fn spec(&self, transform: &str) -> Option<&crate::engine::InstanceSpec> {
        self.specs.iter().find(|s| &*s.name == transform)
    }

    /// Asks it to stop: it finishes in-flight batches, commits and ends.
    pub fn stop(&self) {
        if !self.live.state().is_final() {
            self.live.set_state(State::Stopping, None);
        }
        self.stop.send_replace(true);
    }

    /// Whether its task has ended.
    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Waits for its task to end; the final counters, or why it failed.
    pub async fn join(&self) -> Result<Summary, PipelineError> {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        match task {
            Some(t) => t
                .await
                .map_err(|e| PipelineError::Internal(format!("pipeline task failed: {e}")))?,
            None => {
                let mut done = self.done.clone();
                let _ = done.wait_for(|d| *d).await;
                Ok(self.live.summary())
            }
        }
    }
}

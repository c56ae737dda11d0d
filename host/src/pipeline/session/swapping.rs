//! Hot swap and probation: a module replaced at a batch boundary, a new
//! version measured on its own records, and rolled back when it fails.

use super::*;

/// A swap waiting for its moment, a version on probation, and the batches
/// that wait for either.
pub(super) struct Swapping {
    /// Every worker's runners (a swap replaces one transform in all).
    pub(super) runners: Vec<WorkerRunners>,
    /// A swap waiting for the batches in flight to be delivered.
    pub(super) request: Option<crate::pipeline::swap::SwapRequest>,
    /// A new version on probation (batches go one at a time).
    pub(super) probation: Option<crate::pipeline::swap::Probation>,
    /// What workers check during a probation.
    pub(super) probe: crate::pipeline::swap::Probe,
    /// The pipeline's breaker (reset for a transform swapped back).
    pub(super) breaker: Arc<Breaker>,
    /// Batches cut while a swap waits or a probation runs, in the order
    /// they were cut.
    pub(super) deferred: std::collections::VecDeque<(Partition, Vec<SourceItem>)>,
}

impl Swapping {
    pub(super) fn new(
        runners: Vec<WorkerRunners>,
        probe: crate::pipeline::swap::Probe,
        breaker: Arc<Breaker>,
    ) -> Self {
        Swapping {
            runners,
            request: None,
            probation: None,
            probe,
            breaker,
            deferred: Default::default(),
        }
    }
}

impl Coordinator<'_> {
    /// Takes the next queued swap, and applies it once no batch is in
    /// flight (every batch of the old version delivered); then sends on the
    /// batches cut meanwhile.
    pub(super) fn swap_if_idle(&mut self) {
        loop {
            if self.swapping.request.is_none() {
                self.swapping.request = self.live.swaps().take();
            }
            if self.in_flight.jobs > 0 {
                return;
            }
            let Some(request) = self.swapping.request.take() else {
                self.drain_deferred();
                return;
            };
            // A version still on probation is taken as it is.
            self.end_probation();
            let crate::pipeline::swap::SwapRequest {
                index,
                module,
                runners,
                asked,
                reply,
                probation,
                breaker,
                rolled_back,
            } = request;
            let digest = module.digest().to_string();
            let result = crate::pipeline::swap::apply(&self.swapping.runners, index, runners).map(|(previous, old)| {
                self.live.set_digest(index, &digest);
                let transform = self.transform_name(index);
                tracing::info!(pipeline = %self.pipeline, transform = %transform, previous = %previous, digest = %digest, deferred_batches = self.swapping.deferred.len(), probation_records = probation, "module swapped at a batch boundary");
                // The main breaker measures the new version's records from
                // now on: a window still holding the old version's would
                // blame it for what the new one fails, or the reverse.
                self.swapping.breaker.reset(&transform);
                if probation == 0 {
                    if let Some(tx) = rolled_back {
                        let _ = tx.send(crate::pipeline::swap::ProbationEnd::Passed);
                    }
                } else {
                    self.live.set_probation(Some(crate::pipeline::live::ProbationView {
                        transform: transform.clone(),
                        digest: digest.clone(),
                        remaining: probation,
                    }));
                    let window = probation.min(breaker.window_records.max(1));
                    *self.swapping.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some((
                        index,
                        Breaker::new(crate::config::CircuitBreakerConfig {
                            enabled: true,
                            failure_ratio: breaker.failure_ratio,
                            window_records: window,
                        }),
                    ));
                    self.swapping.probation = Some(crate::pipeline::swap::Probation {
                        index,
                        old,
                        remaining: probation,
                        digest: digest.clone(),
                        rolled_back,
                    });
                }
                crate::pipeline::swap::Swapped {
                    transform,
                    previous,
                    digest: digest.clone(),
                    waited_ms: crate::pipeline::swap::ms_since(asked),
                }
            });
            let _ = reply.send(result);
        }
    }

    pub(super) fn transform_name(&self, index: usize) -> String {
        self.live
            .transforms()
            .get(index)
            .map(|t| t.name.clone())
            .unwrap_or_default()
    }

    /// Sends on the batches that waited, as far as a probation allows.
    pub(super) fn drain_deferred(&mut self) {
        while self.swapping.request.is_none()
            && !(self.swapping.probation.is_some() && self.in_flight.jobs > 0)
        {
            let Some((p, items)) = self.swapping.deferred.pop_front() else {
                return;
            };
            self.dispatch(&p, items);
        }
    }

    /// The version on probation passed (or is replaced): the old instances
    /// go.
    pub(super) fn end_probation(&mut self) {
        if let Some(p) = self.swapping.probation.take() {
            *self
                .swapping
                .probe
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            self.live.set_probation(None);
            if let Some(tx) = p.rolled_back {
                let _ = tx.send(crate::pipeline::swap::ProbationEnd::Passed);
            }
        }
    }

    /// The new version tripped its breaker on probation: the old instances
    /// come back, and the batch (not delivered) goes to them first.
    pub(super) fn roll_back(&mut self, job: Job, reason: String) -> Result<(), PipelineError> {
        self.job_taken();
        self.partition_done(&job.partition);
        let Some(p) = self.swapping.probation.take() else {
            return Err(PipelineError::Internal("no probation to roll back".into()));
        };
        *self
            .swapping
            .probe
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.live.set_probation(None);
        let transform = self.transform_name(p.index);
        let (_, _new) = crate::pipeline::swap::apply(&self.swapping.runners, p.index, p.old)
            .map_err(|e| PipelineError::Internal(e.to_string()))?;
        let restored = self
            .swapping
            .runners
            .first()
            .and_then(|w| {
                w.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(p.index)
                    .map(|r| r.module().digest().to_string())
            })
            .unwrap_or_default();
        self.live.set_digest(p.index, &restored);
        self.swapping.breaker.reset(&transform);
        let message = format!(
            "transform `{transform}`: version {} rolled back automatically: on probation it {reason}; the pipeline goes on with {restored}, the version before it",
            p.digest
        );
        tracing::error!(pipeline = %self.pipeline, transform = %transform, digest = %p.digest, restored = %restored, reason = %reason, "automatic rollback");
        self.live.note_error(message.clone());
        if let Some(tx) = p.rolled_back {
            let _ = tx.send(crate::pipeline::swap::ProbationEnd::RolledBack(message));
        }
        if job.epoch == self.epoch(&job.partition) {
            self.swapping
                .deferred
                .push_front((job.partition, job.items));
        } else {
            self.budget
                .release(&job.partition, job.items.len(), job.bytes);
        }
        Ok(())
    }
}

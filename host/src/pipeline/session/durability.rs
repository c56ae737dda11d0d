//! What comes back from delivery: a batch in its sinks (or held by them),
//! made durable, counted, and its offsets marked handled in the ledger.

use super::*;

/// Jobs on their way to durability.
#[derive(Default)]
pub(super) struct InFlight {
    /// Per partition: jobs not yet durable (being processed or written, or
    /// held by a sink).
    pub(super) per_partition: HashMap<Partition, usize>,
    /// Jobs cut and not yet taken by their sinks.
    pub(super) jobs: usize,
    /// Jobs sinks have taken but hold (not yet durable), and their records.
    pub(super) held_jobs: usize,
    pub(super) held_records: usize,
}

impl Coordinator<'_> {
    /// A job's sinks have taken it (or it failed).
    pub(super) fn job_taken(&mut self) {
        self.in_flight.jobs = self.in_flight.jobs.saturating_sub(1);
    }

    /// A job of `p` is durable (or dropped).
    pub(super) fn partition_done(&mut self, p: &Partition) {
        if let Some(n) = self.in_flight.per_partition.get_mut(p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.per_partition.remove(p);
            }
        }
    }

    pub(super) async fn on_done(&mut self, done: Done) -> Result<(), PipelineError> {
        let Done { job, outcome, held } = done;
        let outcome = match outcome {
            Err(PipelineError::CircuitOpen(open)) if self.swapping.probation.is_some() => {
                return self.roll_back(job, open.measured());
            }
            other => other,
        };
        if let (Ok(_), Some(p)) = (&outcome, self.swapping.probation.as_mut()) {
            p.remaining = p.remaining.saturating_sub(job.items.len() as u64);
            let view = crate::pipeline::live::ProbationView {
                transform: self
                    .live
                    .transforms()
                    .get(p.index)
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                digest: p.digest.clone(),
                remaining: p.remaining,
            };
            self.live
                .set_probation((view.remaining > 0).then_some(view));
            if p.remaining == 0 {
                tracing::info!(pipeline = %self.pipeline, digest = %p.digest, "the new version passed its probation");
                self.end_probation();
            }
        }
        // The sinks have the records (durable, or held): the budget is free.
        self.budget
            .release(&job.partition, job.items.len(), job.bytes);
        self.job_taken();
        if !held {
            self.partition_done(&job.partition);
        }
        let report = outcome?;
        if held {
            self.in_flight.held_jobs += 1;
            self.in_flight.held_records += job.items.len();
            self.live.set_held(self.in_flight.held_records);
        }
        if job.epoch != self.epoch(&job.partition) {
            // The partition was revoked meanwhile and its work dropped.
            return Ok(());
        }
        let bytes_in: u64 = job.items.iter().map(|i| i.byte_size() as u64).sum();
        self.summary.bytes_in += bytes_in;
        self.account(&job, bytes_in, &report);
        let s = &mut *self.summary;
        s.records_in += job.items.len() as u64;
        s.batches += 1;
        for (total, step) in s.steps.iter_mut().zip(&report.steps) {
            total.add(step);
        }
        for (name, n) in report.outputs {
            *s.outputs.entry(name).or_default() += n;
        }
        for (stage, n) in report.dead {
            *s.dead_lettered.entry(stage).or_default() += n;
        }
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.publish();
        } else if self.publish_due.is_none() {
            self.publish_due = Some(self.last_publish + PUBLISH_EVERY);
        }
        if !held {
            let offsets = Offsets::of(job.items.iter().map(|i| i.position()));
            self.handled(&job.partition, offsets).await?;
        }
        Ok(())
    }

    /// The pipeline stops with `error`. When the transform is at fault (its
    /// circuit breaker opened), the sinks are sound: the batches handed to
    /// them before are delivered and what they hold is made durable first,
    /// within the drain timeout, so that those records are delivered and
    /// committed; nothing from the batch that tripped the breaker on is
    /// (the workers give back their queued jobs unrun), and nothing new is
    /// read. A sink's own failure stops at once.
    pub(super) async fn deliver_held_then(
        &mut self,
        error: PipelineError,
        done_rx: &mut mpsc::UnboundedReceiver<Report>,
    ) -> PipelineError {
        if !matches!(error, PipelineError::CircuitOpen(_)) {
            return error;
        }
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.in_flight.jobs > 0 || self.in_flight.held_jobs > 0 {
            if self.in_flight.held_jobs > 0 {
                self.request_flush();
            }
            let report = match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(report)) => report,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(pipeline = %self.pipeline, jobs_in_flight = self.in_flight.jobs, held_records = self.in_flight.held_records, "stopping: what was handed to the sinks was not durable within the drain timeout (not committed; read again on the next run)");
                    break;
                }
            };
            // Later batches (or their failures) change nothing about the
            // error the pipeline stops with.
            let outcome = match report {
                Report::Done(d) => self.on_done(d).await,
                Report::Durable(d) => self.on_durable(d).await,
            };
            if let Err(e) = outcome {
                tracing::debug!(pipeline = %self.pipeline, error = %e, "stopping: a batch not delivered (not committed)");
            }
        }
        error
    }

    /// What sinks held of a batch is durable.
    pub(super) async fn on_durable(&mut self, d: DurableBatch) -> Result<(), PipelineError> {
        self.in_flight.held_jobs = self.in_flight.held_jobs.saturating_sub(1);
        self.in_flight.held_records = self.in_flight.held_records.saturating_sub(d.offsets.len());
        self.live.set_held(self.in_flight.held_records);
        self.partition_done(&d.partition);
        d.outcome?;
        if d.epoch != self.epoch(&d.partition) {
            self.check_revokes();
            return Ok(());
        }
        self.handled(&d.partition, d.offsets).await
    }

    /// Items of `partition` are in a sink or the dead-letter queue, durably:
    /// acknowledge them (per-item sources) and move the watermark.
    pub(super) async fn handled(
        &mut self,
        partition: &Partition,
        offsets: Offsets,
    ) -> Result<(), PipelineError> {
        // One ledger look-up per run of one partition.
        for (p, run) in offsets.runs() {
            self.ledger.handled_all(p, run.iter().copied());
        }
        if self.per_item && !offsets.is_empty() {
            let acked = self.control.acknowledge(&offsets.positions()).await;
            self.metrics.count(|m| &m.commits, &[], 1);
            if acked.is_err() {
                self.metrics.count(|m| &m.commit_failures, &[], 1);
            }
            acked?;
        }
        if self.commits.enabled {
            if self.commits.interval.is_zero() {
                self.commit().await?;
            } else if self.commits.due.is_none() {
                self.commits.due = Some(Instant::now() + self.commits.interval);
            }
        } else if let Some(o) = self.ledger.committable(partition) {
            self.commits.committed.insert(partition.clone(), o);
        }
        self.check_revokes();
        Ok(())
    }

    /// Asks the sinks to make what they hold durable, unless they are at it.
    pub(super) fn request_flush(&mut self) {
        if self.flushing.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let delivery = self.delivery.clone();
        self.flushing = Some(tokio::spawn(tracing::Instrument::in_current_span(
            async move {
                if let Err(e) = delivery.flush().await {
                    tracing::warn!(error = %e, "flushing the sinks failed (their held writes report it)");
                }
            },
        )));
    }

    /// Publishes the counters to the live state.
    pub(super) fn publish(&mut self) {
        self.live.publish(self.summary);
        self.last_publish = Instant::now();
        self.publish_due = None;
    }

    /// Counts a handled batch in the metrics.
    pub(super) fn account(&self, job: &Job, bytes_in: u64, report: &deliver::BatchReport) {
        let m = &self.metrics;
        let latency = job.dispatched.elapsed();
        m.observe_time(|m| &m.batch_latency_seconds, &[], latency);
        self.live.batch_latency(latency);
        m.count(|m| &m.records_received, &[], job.items.len() as u64);
        m.count(|m| &m.bytes_received, &[], bytes_in);
        m.count(|m| &m.batches, &[], 1);
        m.observe(|m| &m.batch_records, &[], job.items.len() as f64);
        for step in &report.steps {
            m.count(
                |m| &m.records_dropped,
                &[("transform", &step.name)],
                step.dropped,
            );
            if step.records_in > 0 {
                m.observe_time(
                    |m| &m.transform_call_seconds,
                    &[("transform", &step.name)],
                    step.elapsed,
                );
            }
        }
        for (output, n) in &report.outputs {
            m.count(|m| &m.records_sent, &[("output", output)], *n);
        }
        for (output, n) in &report.output_bytes {
            m.count(|m| &m.bytes_sent, &[("output", output)], *n);
        }
        for ((stage, transform, kind), n) in &report.dead_kinds {
            let kind = m.kind_label(kind);
            m.count(
                |m| &m.records_failed,
                &[("stage", stage), ("transform", transform), ("kind", kind)],
                *n,
            );
        }
    }
}

//! One session of a pipeline: a running source, its sinks, the workers and
//! the coordinator that ties them together.
//!
//! ```text
//! source ─events─► coordinator ─jobs─► worker(s) ─processed─► delivery ─done─► coordinator
//!                  (batchers,           (transform chain,      (sinks, DLQ,       (ledger, budget,
//!                   per partition)       own instances)         transactions)      commit, revocations)
//! ```
//!
//! The coordinator alone owns the ledger: a record's offset is committed only
//! after the batch holding it is reported done, and never past a record that
//! is still in flight. Workers are threads taking batches from one shared
//! queue (any idle worker takes the next batch, whatever its partition), and
//! the reorder window hands each partition's batches to delivery in the
//! order they were cut, so its records keep their order; with
//! `pin_partitions` each worker has its own queue and a partition always goes
//! to the same worker, so one key is never processed by two workers at the
//! same time. A session ends when a bounded source is drained,
//! on shutdown (after finishing in-flight batches), or on an error.

use super::PipelineError;
use super::chain::run_chain;
use super::summary::Summary;
use crate::batch::{Batcher, ByteSize};
use crate::config::BatchPolicy;
use crate::engine::Runner;
use crate::flow::Budget;
use crate::ledger::{Ledger, Offsets};
use crate::metrics::PipelineMetrics;
use crate::pipeline::breaker::Breaker;
use crate::pipeline::commit::Committer;
use crate::pipeline::deliver::{self, Delivery, Done, DurableBatch, Job, Processed, Report};
use crate::pipeline::live::{Live, PUBLISH_EVERY, State};
use crate::record::Partition;
use crate::source::{
    Acknowledgement, Revocation, RunningSource, SourceControl, SourceEvent, SourceItem,
};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod commits;
mod durability;
mod intake;
mod revocation;
mod swapping;
#[cfg(test)]
mod tests;
mod workers;

use commits::Commits;
use durability::InFlight;
use intake::Intake;
use revocation::Revocations;
use swapping::Swapping;
use workers::{WorkerShared, Workers, worker_of};

/// The transform instances of one worker.
pub(crate) type WorkerRunners = Arc<Mutex<Vec<Runner>>>;

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The bounded source is drained.
    Drained,
    /// Shutdown was requested; in-flight work is finished and committed.
    Shutdown,
}

/// Everything a session needs.
pub(crate) struct SessionParts {
    pub source: RunningSource,
    pub delivery: Delivery,
    /// The delivery guarantee.
    pub committer: Arc<dyn Committer>,
    pub workers: Vec<WorkerRunners>,
    /// Each partition stays on one worker (else any idle worker takes the
    /// next batch, and delivery restores each partition's order).
    pub pin_partitions: bool,
    pub outputs: Arc<BTreeSet<String>>,
    pub budget: Arc<Budget>,
    pub policy: BatchPolicy,
    pub drain_timeout: Duration,
    pub commit_interval: Duration,
    pub pipeline: String,
    pub breaker: Arc<Breaker>,
    pub live: Arc<Live>,
}

/// The session's one owner of partition state: it cuts batches, hands
/// them to the workers, hears back from delivery, and commits. Its state is
/// grouped by job, each group with the file that handles it.
struct Coordinator<'a> {
    summary: &'a mut Summary,
    control: Arc<dyn SourceControl>,
    budget: Arc<Budget>,
    drain_timeout: Duration,
    pipeline: String,
    /// Offsets read and handled per partition (what may be committed).
    ledger: Ledger,
    /// Batchers, epochs and batch numbers per partition (`intake.rs`).
    intake: Intake,
    /// Jobs not yet durable (`durability.rs`).
    in_flight: InFlight,
    /// Hot swaps and probation (`swapping.rs`).
    swapping: Swapping,
    /// What is committed, and when next (`commits.rs`).
    commits: Commits,
    /// Revocations waiting for their partitions' work (`revocation.rs`).
    revocations: Revocations,
    /// The sinks, to make what they hold durable (shutdown, revocation).
    delivery: Arc<Delivery>,
    /// A flush of the sinks under way.
    flushing: Option<tokio::task::JoinHandle<()>>,
    /// The source takes per-item acknowledgements.
    per_item: bool,
    /// One queue per worker (partitions pinned), or one all share.
    workers: Vec<std::sync::mpsc::Sender<Job>>,
    live: Arc<Live>,
    metrics: PipelineMetrics,
    last_publish: Instant,
    /// When counters not yet published must be.
    publish_due: Option<Instant>,
}

/// Runs one session to its end.
pub(crate) async fn run(
    parts: SessionParts,
    summary: &mut Summary,
    shutdown: &mut Pin<&mut (dyn Future<Output = ()> + Send)>,
) -> Result<SessionEnd, PipelineError> {
    let SessionParts {
        source,
        delivery,
        committer,
        workers,
        pin_partitions,
        outputs,
        budget,
        policy,
        drain_timeout,
        commit_interval,
        pipeline,
        breaker,
        live,
    } = parts;
    live.attach(budget.clone(), control_of(&source));
    let RunningSource {
        mut events,
        control,
    } = source;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Report>();
    let (processed_tx, processed_rx) = mpsc::unbounded_channel::<Processed>();
    let delivery = Arc::new(delivery);
    let coordinator_commits = committer.coordinator_commits();
    let delivery_task = tokio::spawn(tracing::Instrument::in_current_span(committer.run(
        delivery.clone(),
        control.clone(),
        processed_rx,
        done_tx.clone(),
    )));
    let runners = workers.clone();
    let probe: crate::pipeline::swap::Probe = Arc::default();
    let Workers {
        queues: worker_txs,
        threads: worker_threads,
    } = workers::start(
        workers,
        WorkerShared {
            pin_partitions,
            outputs,
            breaker: breaker.clone(),
            probe: probe.clone(),
            live: live.clone(),
        },
        processed_tx,
        done_tx,
    )?;

    let mut c = Coordinator {
        summary,
        control: control.clone(),
        budget,
        drain_timeout,
        pipeline,
        ledger: Ledger::new(),
        intake: Intake::new(policy),
        in_flight: InFlight::default(),
        swapping: Swapping::new(runners, probe, breaker),
        commits: Commits::new(coordinator_commits, commit_interval),
        revocations: Revocations::default(),
        delivery,
        flushing: None,
        per_item: control.acknowledgement() == Acknowledgement::PerItem,
        workers: worker_txs,
        metrics: live.metrics().clone(),
        live: live.clone(),
        last_publish: Instant::now(),
        publish_due: None,
    };
    if !live.pause_requested() {
        live.set_state(State::Running, None);
    } else {
        live.set_state(State::Paused, None);
    }
    let result = c.run(&mut events, &mut done_rx, shutdown).await;

    // Stop the workers and delivery; close the source, committing what is
    // handled (at-least-once; with exactly-once, offsets are committed in
    // the transactions).
    c.workers.clear();
    let _ = tokio::task::spawn_blocking(move || {
        for t in worker_threads {
            let _ = t.join();
        }
    })
    .await;
    if result.is_err() {
        delivery_task.abort();
    }
    let _ = delivery_task.await;
    let final_offsets = if c.commits.enabled {
        c.committable_changes()
    } else {
        Vec::new()
    };
    for (p, o) in &final_offsets {
        c.note_committed(p, *o);
        c.commits.committed.insert(p.clone(), *o);
    }
    let closed = control.close(&final_offsets).await;
    if !final_offsets.is_empty() {
        let failed = u64::from(closed.is_err());
        c.metrics.count(|m| &m.commits, &[], 1);
        c.metrics.count(|m| &m.commit_failures, &[], failed);
    }
    c.live.detach();
    c.live.publish(c.summary);
    c.summary.committed = {
        let mut all: Vec<(String, i64)> = c
            .commits
            .committed
            .iter()
            .map(|(p, o)| (p.to_string(), *o))
            .collect();
        all.sort();
        all
    };
    let end = result?;
    closed?;
    Ok(end)
}

fn control_of(source: &RunningSource) -> Arc<dyn SourceControl> {
    source.control.clone()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

impl Coordinator<'_> {
    async fn run(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Result<SourceEvent, crate::source::SourceError>>,
        done_rx: &mut mpsc::UnboundedReceiver<Report>,
        shutdown: &mut Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Result<SessionEnd, PipelineError> {
        let mut source_open = true;
        let mut stopping = false;
        // A source that failed: what it read before is delivered first, then
        // the session ends with its error.
        let mut source_error: Option<(PipelineError, Instant)> = None;
        let mut progress = tokio::time::interval(Duration::from_secs(30));
        progress.tick().await;
        let mut swap_bell = self.live.swaps().bell();
        let mut pause = self.live.pause_requests();
        let mut paused = *pause.borrow_and_update();
        let mut pause_open = true;
        loop {
            self.swap_if_idle();
            let draining = stopping || !source_open;
            if draining && self.in_flight.jobs == 0 && self.in_flight.held_jobs > 0 {
                // Only what sinks hold is left: have them close it now.
                self.request_flush();
            }
            if draining
                && self.in_flight.jobs == 0
                && self.in_flight.held_jobs == 0
                && self.intake.batchers.is_empty()
                && self.swapping.deferred.is_empty()
            {
                self.answer_all_revokes();
                if let Some((e, _)) = source_error {
                    return Err(e);
                }
                return Ok(if stopping {
                    SessionEnd::Shutdown
                } else {
                    SessionEnd::Drained
                });
            }
            if let Some((e, deadline)) = &source_error
                && *deadline <= Instant::now()
            {
                return Err(self.undelivered(e));
            }
            let batch_deadline = self
                .intake
                .batchers
                .values()
                .filter_map(Batcher::deadline)
                .min();
            let revoke_deadline = self.revocations.pending.iter().map(|r| r.deadline).min();
            let drain_deadline = source_error.as_ref().map(|(_, d)| *d);
            let deadline = [
                batch_deadline,
                revoke_deadline,
                self.commits.due,
                drain_deadline,
                self.publish_due,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                finished = done_rx.recv() => match finished {
                    Some(Report::Done(d)) => {
                        if let Err(e) = self.on_done(d).await {
                            return Err(self.deliver_held_then(e, done_rx).await);
                        }
                    }
                    Some(Report::Durable(d)) => self.on_durable(d).await?,
                    None => return Err(PipelineError::Internal("delivery stopped".into())),
                },
                _ = shutdown.as_mut(), if !stopping => {
                    tracing::info!(pipeline = %self.pipeline, "shutdown requested: finishing in-flight batches");
                    stopping = true;
                    self.flush_all();
                }
                _ = swap_bell.changed() => {}
                changed = pause.changed(), if pause_open => {
                    if changed.is_err() {
                        // The handle is gone: nobody can resume; keep going.
                        pause_open = false;
                        paused = false;
                    } else {
                        paused = *pause.borrow_and_update();
                        if paused {
                            tracing::info!(pipeline = %self.pipeline, "paused: delivering what is in flight, reading nothing new");
                            self.flush_all();
                        } else {
                            tracing::info!(pipeline = %self.pipeline, "resumed");
                        }
                    }
                }
                event = events.recv(), if source_open && (!paused || stopping) => match event {
                    Some(Ok(SourceEvent::Item(item))) if stopping => {
                        // Read after the shutdown: not processed, not
                        // committed; the next owner reads it again.
                        self.budget.release(&item.position().partition, 1, item.byte_size());
                    }
                    Some(Ok(SourceEvent::Item(item))) => self.on_item(item, Instant::now()),
                    Some(Ok(SourceEvent::Items(items))) if stopping => {
                        for item in &items {
                            self.budget.release(&item.position().partition, 1, item.byte_size());
                        }
                    }
                    Some(Ok(SourceEvent::Items(items))) => self.on_items(items, Instant::now()),
                    Some(Ok(SourceEvent::Revoke(r))) => self.on_revoke(r),
                    Some(Ok(SourceEvent::Regained(partitions))) => self.on_regained(&partitions),
                    Some(Ok(SourceEvent::Released(partitions))) => self.on_released(&partitions),
                    Some(Err(e)) => {
                        tracing::error!(pipeline = %self.pipeline, error = %e, records_in_flight = self.ledger.in_flight(), "the source failed: delivering what it read before stopping");
                        source_open = false;
                        source_error = Some((e.into(), Instant::now() + self.drain_timeout));
                        self.flush_all();
                    }
                    None => {
                        source_open = false;
                        self.flush_all();
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let now = Instant::now();
                    self.flush_due(now);
                    self.check_revokes();
                    if self.commits.due.is_some_and(|d| d <= now) {
                        self.commit().await?;
                    }
                    if self.publish_due.is_some_and(|d| d <= now) {
                        self.publish();
                    }
                }
                _ = progress.tick() => {
                    let (records, bytes) = self.budget.in_flight();
                    tracing::info!(
                        pipeline = %self.pipeline,
                        read = self.summary.records_in,
                        outputs = ?self.summary.outputs,
                        dead_letter = self.summary.dead_letter_total(),
                        in_flight_records = records,
                        in_flight_bytes = bytes,
                        "progress"
                    );
                }
            }
        }
    }

    /// The source's error, with what was read but could not be delivered
    /// before the drain timeout.
    fn undelivered(&self, e: &PipelineError) -> PipelineError {
        let left: Vec<String> = self
            .ledger
            .unhandled()
            .into_iter()
            .map(|(p, n, first, last)| format!("{n} of `{p}` between offsets {first} and {last}"))
            .collect();
        PipelineError::Undelivered(format!(
            "{e}; records read before it were not delivered within {:?} and are not committed (they are read again on the next run): {}",
            self.drain_timeout,
            left.join(", ")
        ))
    }
}

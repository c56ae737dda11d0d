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
use super::breaker::Breaker;
use super::chain::run_chain;
use super::commit::Committer;
use super::deliver::{self, Delivery, Done, DurableBatch, Job, Processed, Report};
use super::live::{Live, PUBLISH_EVERY, State};
use super::summary::Summary;
use crate::batch::{Batcher, ByteSize};
use crate::config::BatchPolicy;
use crate::engine::Runner;
use crate::flow::Budget;
use crate::ledger::{Ledger, Offsets};
use crate::metrics::PipelineMetrics;
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

struct PendingRevoke {
    partitions: Vec<Partition>,
    done: tokio::sync::oneshot::Sender<Vec<(Partition, i64)>>,
    deadline: Instant,
}

struct Coordinator<'a> {
    summary: &'a mut Summary,
    control: Arc<dyn SourceControl>,
    budget: Arc<Budget>,
    policy: BatchPolicy,
    /// Whether the coordinator commits the source's position (at-least-once)
    /// or the guarantee does (a Kafka transaction).
    commits: bool,
    drain_timeout: Duration,
    pipeline: String,
    ledger: Ledger,
    batchers: HashMap<Partition, Batcher<SourceItem>>,
    epochs: HashMap<Partition, u64>,
    /// Per partition: jobs not yet durable (being processed or written, or
    /// held by a sink).
    in_flight: HashMap<Partition, usize>,
    /// Jobs cut and not yet taken by their sinks.
    jobs_in_flight: usize,
    /// Jobs sinks have taken but hold (not yet durable), and their records.
    held_jobs: usize,
    held_records: usize,
    /// The sinks, to make what they hold durable (shutdown, revocation).
    delivery: Arc<Delivery>,
    /// A flush of the sinks under way.
    flushing: Option<tokio::task::JoinHandle<()>>,
    /// The source takes per-item acknowledgements.
    per_item: bool,
    /// Every worker's runners (a swap replaces one transform in all).
    runners: Vec<WorkerRunners>,
    /// A swap waiting for the batches in flight to be delivered.
    swap: Option<super::swap::SwapRequest>,
    /// A new version on probation (batches go one at a time).
    probation: Option<super::swap::Probation>,
    /// What workers check during a probation.
    probe: super::swap::Probe,
    /// The pipeline's breaker (reset for a transform swapped back).
    breaker: Arc<Breaker>,
    /// Batches cut while a swap waits or a probation runs, in the order
    /// they were cut.
    deferred: std::collections::VecDeque<(Partition, Vec<SourceItem>)>,
    committed: HashMap<Partition, i64>,
    /// The highest offset committed per partition in this session, kept
    /// across a revocation and a new assignment: nothing lower is ever
    /// committed (a partition read again from an older position after a
    /// rebalance must not move the group's offset back).
    committed_high: HashMap<Partition, i64>,
    commit_interval: Duration,
    /// When handled offsets not yet committed must be (at-least-once).
    commit_due: Option<Instant>,
    revokes: Vec<PendingRevoke>,
    /// Lost partitions whose in-flight work is kept (at-least-once) until
    /// the source says whether they are ours again: not committed meanwhile.
    held_lost: std::collections::HashSet<Partition>,
    /// One queue per worker (partitions pinned), or one all share.
    workers: Vec<std::sync::mpsc::Sender<Job>>,
    /// The number of the next batch cut, per partition.
    next_seq: HashMap<Partition, u64>,
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
    let probe: super::swap::Probe = Arc::default();
    // Workers hand finished batches to the reorder window, which hands each
    // partition's batches to delivery in the order they were cut. The last
    // worker to stop closes delivery's queue.
    let ordered_tx: SharedHandover = Arc::new(Mutex::new(Handover {
        window: Default::default(),
        ready: Vec::new(),
        processed: processed_tx,
    }));
    let mut worker_txs = Vec::new();
    let shared = if pin_partitions {
        None
    } else {
        let (tx, rx) = std::sync::mpsc::channel();
        worker_txs.push(tx);
        Some(Arc::new(Mutex::new(rx)))
    };
    let mut worker_threads = Vec::with_capacity(workers.len());
    for (index, runners) in workers.into_iter().enumerate() {
        let queue = match &shared {
            Some(rx) => Queue::Shared(rx.clone()),
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                worker_txs.push(tx);
                Queue::Own(rx)
            }
        };
        let w = Worker {
            index,
            runners,
            outputs: outputs.clone(),
            breaker: breaker.clone(),
            probe: probe.clone(),
            live: live.clone(),
        };
        let (finished, done) = (ordered_tx.clone(), done_tx.clone());
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{index}"))
            .spawn(move || {
                let _entered = span.enter();
                worker(w, queue, finished, done);
            })
            .map_err(|e| PipelineError::Internal(format!("cannot start a worker thread: {e}")))?;
        worker_threads.push(thread);
    }
    drop(ordered_tx);
    drop(done_tx);

    let mut c = Coordinator {
        summary,
        control: control.clone(),
        budget,
        policy,
        commits: coordinator_commits,
        drain_timeout,
        pipeline,
        ledger: Ledger::new(),
        batchers: HashMap::new(),
        epochs: HashMap::new(),
        in_flight: HashMap::new(),
        jobs_in_flight: 0,
        held_jobs: 0,
        held_records: 0,
        delivery,
        flushing: None,
        per_item: control.acknowledgement() == Acknowledgement::PerItem,
        runners,
        swap: None,
        probation: None,
        probe,
        breaker,
        deferred: Default::default(),
        committed: HashMap::new(),
        committed_high: HashMap::new(),
        commit_interval,
        commit_due: None,
        revokes: Vec::new(),
        held_lost: Default::default(),
        workers: worker_txs,
        next_seq: HashMap::new(),
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
    let final_offsets = if c.commits {
        c.committable_changes()
    } else {
        Vec::new()
    };
    for (p, o) in &final_offsets {
        c.note_committed(p, *o);
        c.committed.insert(p.clone(), *o);
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

/// What a worker owns: its instances of the chain.
struct Worker {
    index: usize,
    runners: WorkerRunners,
    outputs: Arc<BTreeSet<String>>,
    breaker: Arc<Breaker>,
    probe: super::swap::Probe,
    live: Arc<Live>,
}

/// Where a worker takes its jobs from.
enum Queue {
    /// Its own (partitions pinned to workers).
    Own(std::sync::mpsc::Receiver<Job>),
    /// One queue all workers take from.
    Shared(Arc<Mutex<std::sync::mpsc::Receiver<Job>>>),
}

impl Queue {
    /// The next job; `None` once the coordinator is gone.
    fn next(&self) -> Option<Job> {
        match self {
            Queue::Own(rx) => rx.recv().ok(),
            Queue::Shared(rx) => rx.lock().unwrap_or_else(|e| e.into_inner()).recv().ok(),
        }
    }
}

/// What a worker hands to the reorder window: a batch it finished, or the
/// number of one it gave back (it will come again under a new number, or
/// not at all).
enum Finished {
    Ready(Processed),
    Skip(Partition, u64),
}

/// The reorder window the workers share: a worker that finishes a batch
/// hands on, under the lock, every batch that is now next in order, straight
/// to delivery (no task in between: one thread hand-off less per batch).
struct Handover {
    window: super::reorder::Reorder<Processed>,
    ready: Vec<Processed>,
    processed: mpsc::UnboundedSender<Processed>,
}

type SharedHandover = Arc<Mutex<Handover>>;

/// Hands `f` to the window; false once delivery is gone.
fn hand_over(handover: &SharedHandover, f: Finished) -> bool {
    let mut h = handover.lock().unwrap_or_else(|e| e.into_inner());
    let Handover {
        window,
        ready,
        processed,
    } = &mut *h;
    match f {
        Finished::Ready(p) => {
            let (partition, seq) = (p.job.partition.clone(), p.job.seq);
            window.push(&partition, seq, Some(p), ready);
        }
        Finished::Skip(partition, seq) => window.push(&partition, seq, None, ready),
    }
    for p in ready.drain(..) {
        if processed.send(p).is_err() {
            return false;
        }
    }
    true
}

/// A worker's thread: runs the chain on each job it takes, on its own
/// instances, until the coordinator closes the queue.
fn worker(w: Worker, jobs: Queue, finished: SharedHandover, done: mpsc::UnboundedSender<Report>) {
    // Once the breaker opened, the jobs still queued are given back unrun:
    // the coordinator delivers what was handled before, then stops.
    let mut tripped = false;
    while let Some(job) = jobs.next() {
        if tripped {
            hand_over(&finished, Finished::Skip(job.partition.clone(), job.seq));
            let e = PipelineError::Internal("not run: the circuit breaker opened".into());
            let _ = done.send(Done::failed(job, e).into());
            continue;
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut runners = w.runners.lock().unwrap_or_else(|e| e.into_inner());
            let chain = run_chain(&mut runners, &job.items, &w.outputs, &w.breaker);
            report_instances(&mut runners, w.index, &w.live);
            chain
        }));
        let chain = match ran {
            Ok(chain) => chain,
            Err(_) => {
                hand_over(&finished, Finished::Skip(job.partition.clone(), job.seq));
                let e = PipelineError::Internal("the transform worker failed: it panicked".into());
                let _ = done.send(Done::failed(job, e).into());
                return;
            }
        };
        // A new version on probation is measured on its own records.
        let (on_probation, probe_open) = {
            let mut probe = w.probe.lock().unwrap_or_else(|e| e.into_inner());
            match probe.as_mut() {
                Some((i, b)) => (
                    true,
                    chain
                        .steps
                        .get(*i)
                        .and_then(|s| b.observe(std::slice::from_ref(s)).err()),
                ),
                None => (false, None),
            }
        };
        let open = probe_open.or_else(|| w.breaker.observe(&chain.steps).err());
        if let Some(open) = open {
            hand_over(&finished, Finished::Skip(job.partition.clone(), job.seq));
            if on_probation {
                // The coordinator swaps the old version back and sends this
                // batch again: not delivered.
                tracing::error!(error = %open, "circuit breaker open on a new version: rolling back");
                let _ = done.send(Done::failed(job, open.into()).into());
                continue;
            }
            tracing::error!(error = %open, "circuit breaker open");
            let _ = done.send(Done::failed(job, open.into()).into());
            tripped = true;
            continue;
        }
        if !hand_over(&finished, Finished::Ready(Processed { job, chain })) {
            return;
        }
    }
}

/// Counts new instantiations and failed calls of a worker's runners, and
/// publishes their guest memory.
fn report_instances(runners: &mut [Runner], worker: usize, live: &Live) {
    let metrics = live.metrics();
    for r in runners.iter_mut() {
        let (instantiations, errors) = r.take_unreported();
        let name = r.name();
        metrics.count(
            |m| &m.instantiations,
            &[("transform", name)],
            instantiations,
        );
        for (kind, n) in errors {
            metrics.count(
                |m| &m.transform_errors,
                &[("transform", name), ("kind", kind)],
                n,
            );
        }
    }
    live.set_memory(worker, runners.iter().map(Runner::memory_bytes).collect());
}

fn control_of(source: &RunningSource) -> Arc<dyn SourceControl> {
    source.control.clone()
}

fn worker_of(partition: &Partition, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable for the life of the process.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    partition.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
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
            if draining && self.jobs_in_flight == 0 && self.held_jobs > 0 {
                // Only what sinks hold is left: have them close it now.
                self.request_flush();
            }
            if draining
                && self.jobs_in_flight == 0
                && self.held_jobs == 0
                && self.batchers.is_empty()
                && self.deferred.is_empty()
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
            let batch_deadline = self.batchers.values().filter_map(Batcher::deadline).min();
            let revoke_deadline = self.revokes.iter().map(|r| r.deadline).min();
            let drain_deadline = source_error.as_ref().map(|(_, d)| *d);
            let deadline = [
                batch_deadline,
                revoke_deadline,
                self.commit_due,
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
                    if self.commit_due.is_some_and(|d| d <= now) {
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

    fn epoch(&self, p: &Partition) -> u64 {
        self.epochs.get(p).copied().unwrap_or(0)
    }

    fn on_item(&mut self, item: SourceItem, now: Instant) {
        let p = &item.position().partition;
        self.ledger.read(p, item.position().offset);
        let mut ready = Vec::new();
        let batcher = match self.batchers.get_mut(p) {
            Some(b) => b,
            None => self
                .batchers
                .entry(p.clone())
                .or_insert_with(|| Batcher::new(self.policy.clone())),
        };
        let p = p.clone();
        batcher.push(item, now, &mut ready);
        for items in ready {
            self.dispatch(&p, items);
        }
    }

    /// Items as a source sends them in a chunk: each run of one partition's
    /// items finds its ledger and batcher once.
    fn on_items(&mut self, items: Vec<SourceItem>, now: Instant) {
        let mut items = items.into_iter().peekable();
        let mut ready = Vec::new();
        while let Some(first) = items.next() {
            let p = first.position().partition.clone();
            let batcher = match self.batchers.get_mut(&p) {
                Some(b) => b,
                None => self
                    .batchers
                    .entry(p.clone())
                    .or_insert_with(|| Batcher::new(self.policy.clone())),
            };
            let mut offsets = Vec::new();
            offsets.push(first.position().offset);
            batcher.push(first, now, &mut ready);
            while let Some(item) = items.next_if(|i| i.position().partition == p) {
                offsets.push(item.position().offset);
                batcher.push(item, now, &mut ready);
            }
            self.ledger.read_all(&p, offsets);
            for batch in ready.drain(..) {
                self.dispatch(&p, batch);
            }
        }
    }

    fn dispatch(&mut self, p: &Partition, items: Vec<SourceItem>) {
        if items.is_empty() {
            return;
        }
        if self.swap.is_some() || (self.probation.is_some() && self.jobs_in_flight > 0) {
            // After the swap (by the new version), or, on probation, once
            // the batch before it is delivered.
            self.deferred.push_back((p.clone(), items));
            return;
        }
        let bytes = items.iter().map(ByteSize::byte_size).sum();
        let epoch = self.epoch(p);
        let next = self.next_seq.entry(p.clone()).or_default();
        let seq = *next;
        *next += 1;
        let job = Job {
            partition: p.clone(),
            epoch,
            items,
            bytes,
            dispatched: std::time::Instant::now(),
            seq,
        };
        let w = worker_of(p, self.workers.len());
        *self.in_flight.entry(p.clone()).or_default() += 1;
        self.jobs_in_flight += 1;
        if let Some(tx) = self.workers.get(w)
            && let Err(e) = tx.send(job)
        {
            // The worker is gone: the session is ending; count it done.
            let job = e.0;
            self.budget
                .release(&job.partition, job.items.len(), job.bytes);
            self.job_taken();
            self.partition_done(&job.partition);
        }
    }

    fn flush_all(&mut self) {
        let all: Vec<(Partition, Batcher<SourceItem>)> = self.batchers.drain().collect();
        for (p, mut b) in all {
            if let Some(items) = b.take() {
                self.dispatch(&p, items);
            }
        }
    }

    fn flush_due(&mut self, now: Instant) {
        let due: Vec<Partition> = self
            .batchers
            .iter()
            .filter(|(_, b)| b.deadline().is_some_and(|d| d <= now))
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            if let Some(mut b) = self.batchers.remove(&p)
                && let Some(items) = b.take()
            {
                self.dispatch(&p, items);
            }
        }
    }

    /// Takes the next queued swap, and applies it once no batch is in
    /// flight (every batch of the old version delivered); then sends on the
    /// batches cut meanwhile.
    fn swap_if_idle(&mut self) {
        loop {
            if self.swap.is_none() {
                self.swap = self.live.swaps().take();
            }
            if self.jobs_in_flight > 0 {
                return;
            }
            let Some(request) = self.swap.take() else {
                self.drain_deferred();
                return;
            };
            // A version still on probation is taken as it is.
            self.end_probation();
            let super::swap::SwapRequest {
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
            let result = super::swap::apply(&self.runners, index, runners).map(|(previous, old)| {
                self.live.set_digest(index, &digest);
                let transform = self.transform_name(index);
                tracing::info!(pipeline = %self.pipeline, transform = %transform, previous = %previous, digest = %digest, deferred_batches = self.deferred.len(), probation_records = probation, "module swapped at a batch boundary");
                // The main breaker measures the new version's records from
                // now on: a window still holding the old version's would
                // blame it for what the new one fails, or the reverse.
                self.breaker.reset(&transform);
                if probation == 0 {
                    if let Some(tx) = rolled_back {
                        let _ = tx.send(super::swap::ProbationEnd::Passed);
                    }
                } else {
                    self.live.set_probation(Some(super::live::ProbationView {
                        transform: transform.clone(),
                        digest: digest.clone(),
                        remaining: probation,
                    }));
                    let window = probation.min(breaker.window_records.max(1));
                    *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some((
                        index,
                        Breaker::new(crate::config::CircuitBreakerConfig {
                            enabled: true,
                            failure_ratio: breaker.failure_ratio,
                            window_records: window,
                        }),
                    ));
                    self.probation = Some(super::swap::Probation {
                        index,
                        old,
                        remaining: probation,
                        digest: digest.clone(),
                        rolled_back,
                    });
                }
                super::swap::Swapped {
                    transform,
                    previous,
                    digest: digest.clone(),
                    waited_ms: super::swap::ms_since(asked),
                }
            });
            let _ = reply.send(result);
        }
    }

    fn transform_name(&self, index: usize) -> String {
        self.live
            .transforms()
            .get(index)
            .map(|t| t.name.clone())
            .unwrap_or_default()
    }

    /// Sends on the batches that waited, as far as a probation allows.
    fn drain_deferred(&mut self) {
        while self.swap.is_none() && !(self.probation.is_some() && self.jobs_in_flight > 0) {
            let Some((p, items)) = self.deferred.pop_front() else {
                return;
            };
            self.dispatch(&p, items);
        }
    }

    /// The version on probation passed (or is replaced): the old instances
    /// go.
    fn end_probation(&mut self) {
        if let Some(p) = self.probation.take() {
            *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.live.set_probation(None);
            if let Some(tx) = p.rolled_back {
                let _ = tx.send(super::swap::ProbationEnd::Passed);
            }
        }
    }

    /// The new version tripped its breaker on probation: the old instances
    /// come back, and the batch (not delivered) goes to them first.
    fn roll_back(&mut self, job: Job, reason: String) -> Result<(), PipelineError> {
        self.job_taken();
        self.partition_done(&job.partition);
        let Some(p) = self.probation.take() else {
            return Err(PipelineError::Internal("no probation to roll back".into()));
        };
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.live.set_probation(None);
        let transform = self.transform_name(p.index);
        let (_, _new) = super::swap::apply(&self.runners, p.index, p.old)
            .map_err(|e| PipelineError::Internal(e.to_string()))?;
        let restored = self
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
        self.breaker.reset(&transform);
        let message = format!(
            "transform `{transform}`: version {} rolled back automatically: on probation it {reason}; the pipeline goes on with {restored}, the version before it",
            p.digest
        );
        tracing::error!(pipeline = %self.pipeline, transform = %transform, digest = %p.digest, restored = %restored, reason = %reason, "automatic rollback");
        self.live.note_error(message.clone());
        if let Some(tx) = p.rolled_back {
            let _ = tx.send(super::swap::ProbationEnd::RolledBack(message));
        }
        if job.epoch == self.epoch(&job.partition) {
            self.deferred.push_front((job.partition, job.items));
        } else {
            self.budget
                .release(&job.partition, job.items.len(), job.bytes);
        }
        Ok(())
    }

    /// A job's sinks have taken it (or it failed).
    fn job_taken(&mut self) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
    }

    /// A job of `p` is durable (or dropped).
    fn partition_done(&mut self, p: &Partition) {
        if let Some(n) = self.in_flight.get_mut(p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(p);
            }
        }
    }

    async fn on_done(&mut self, done: Done) -> Result<(), PipelineError> {
        let Done { job, outcome, held } = done;
        let outcome = match outcome {
            Err(PipelineError::CircuitOpen(open)) if self.probation.is_some() => {
                return self.roll_back(job, open.measured());
            }
            other => other,
        };
        if let (Ok(_), Some(p)) = (&outcome, self.probation.as_mut()) {
            p.remaining = p.remaining.saturating_sub(job.items.len() as u64);
            let view = super::live::ProbationView {
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
            self.held_jobs += 1;
            self.held_records += job.items.len();
            self.live.set_held(self.held_records);
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
    async fn deliver_held_then(
        &mut self,
        error: PipelineError,
        done_rx: &mut mpsc::UnboundedReceiver<Report>,
    ) -> PipelineError {
        if !matches!(error, PipelineError::CircuitOpen(_)) {
            return error;
        }
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.jobs_in_flight > 0 || self.held_jobs > 0 {
            if self.held_jobs > 0 {
                self.request_flush();
            }
            let report = match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(report)) => report,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(pipeline = %self.pipeline, jobs_in_flight = self.jobs_in_flight, held_records = self.held_records, "stopping: what was handed to the sinks was not durable within the drain timeout (not committed; read again on the next run)");
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
    async fn on_durable(&mut self, d: DurableBatch) -> Result<(), PipelineError> {
        self.held_jobs = self.held_jobs.saturating_sub(1);
        self.held_records = self.held_records.saturating_sub(d.offsets.len());
        self.live.set_held(self.held_records);
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
    async fn handled(
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
        if self.commits {
            if self.commit_interval.is_zero() {
                self.commit().await?;
            } else if self.commit_due.is_none() {
                self.commit_due = Some(Instant::now() + self.commit_interval);
            }
        } else if let Some(o) = self.ledger.committable(partition) {
            self.committed.insert(partition.clone(), o);
        }
        self.check_revokes();
        Ok(())
    }

    /// Asks the sinks to make what they hold durable, unless they are at it.
    fn request_flush(&mut self) {
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
    fn publish(&mut self) {
        self.live.publish(self.summary);
        self.last_publish = Instant::now();
        self.publish_due = None;
    }

    /// Counts a handled batch in the metrics.
    fn account(&self, job: &Job, bytes_in: u64, report: &deliver::BatchReport) {
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

    /// Commits the handled offsets that moved since the last commit.
    async fn commit(&mut self) -> Result<(), PipelineError> {
        self.commit_due = None;
        let changes = self.committable_changes();
        if !changes.is_empty() {
            let committed = self.control.commit(&changes).await;
            self.metrics.count(|m| &m.commits, &[], 1);
            if committed.is_err() {
                self.metrics.count(|m| &m.commit_failures, &[], 1);
            }
            committed?;
            for (p, o) in changes {
                self.note_committed(&p, o);
                self.committed.insert(p, o);
            }
        }
        Ok(())
    }

    /// Committable offsets that moved since the last commit, never below
    /// one committed before for the partition.
    fn committable_changes(&self) -> Vec<(Partition, i64)> {
        self.ledger
            .partitions()
            .filter(|p| !self.held_lost.contains(*p))
            .filter_map(|p| {
                let o = self.ledger.committable(p)?;
                (self.committed.get(p) != Some(&o) && self.not_backwards(p, o))
                    .then(|| (p.clone(), o))
            })
            .collect()
    }

    /// Whether committing `o` for `p` keeps the committed offset from going
    /// back.
    fn not_backwards(&self, p: &Partition, o: i64) -> bool {
        match self.committed_high.get(p) {
            Some(&high) if o < high => {
                tracing::debug!(pipeline = %self.pipeline, partition = %p, offset = o, committed = high,
                    "not committing an offset below one committed before (the partition is read again from an older position)");
                false
            }
            _ => true,
        }
    }

    fn note_committed(&mut self, p: &Partition, o: i64) {
        let high = self.committed_high.entry(p.clone()).or_insert(o);
        *high = (*high).max(o);
    }

    fn on_revoke(&mut self, r: Revocation) {
        if r.lost && self.commits {
            self.hold_lost(r);
            return;
        }
        for p in &r.partitions {
            if let Some(mut b) = self.batchers.remove(p)
                && let Some(items) = b.take()
            {
                if r.lost {
                    self.budget.release(
                        p,
                        items.len(),
                        items.iter().map(ByteSize::byte_size).sum(),
                    );
                } else {
                    self.dispatch(p, items);
                }
            }
        }
        if r.lost {
            for p in &r.partitions {
                self.forget(p);
            }
            let _ = r.done.send(Vec::new());
            return;
        }
        self.revokes.push(PendingRevoke {
            partitions: r.partitions,
            done: r.done,
            deadline: Instant::now() + self.drain_timeout,
        });
        if self.held_jobs > 0 {
            // The partitions' records held by sinks must be durable before
            // their offsets are committed and the partitions let go.
            self.request_flush();
        }
        self.check_revokes();
    }

    /// Lost partitions (at-least-once): their records in flight are still
    /// delivered — the sinks write them whoever owns the partition now —
    /// but not committed until the source says the partitions are ours
    /// again. Answers at once with where to read each on if they are.
    fn hold_lost(&mut self, r: Revocation) {
        let mut resume = Vec::new();
        for p in &r.partitions {
            if let Some(mut b) = self.batchers.remove(p)
                && let Some(items) = b.take()
            {
                self.dispatch(p, items);
            }
            match self.ledger.next_to_read(p) {
                Some(next) => {
                    self.held_lost.insert(p.clone());
                    resume.push((p.clone(), next));
                }
                None => self.forget(p),
            }
        }
        tracing::info!(pipeline = %self.pipeline, partitions = resume.len(),
            "partitions lost: their records in flight are still delivered, committed only if the partitions come back");
        let _ = r.done.send(resume);
    }

    /// Lost partitions assigned to this member again: read on after what is
    /// in flight, and committed again.
    fn on_regained(&mut self, partitions: &[Partition]) {
        for p in partitions {
            self.held_lost.remove(p);
        }
        if self.commits && self.commit_due.is_none() {
            self.commit_due = Some(Instant::now() + self.commit_interval);
        }
    }

    /// Lost partitions that went to another member: what is in flight is
    /// still written, but no longer this member's to commit.
    fn on_released(&mut self, partitions: &[Partition]) {
        for p in partitions {
            if self.held_lost.remove(p) {
                self.forget(p);
            }
        }
    }

    /// Drops everything known of a partition: later results of its
    /// in-flight jobs are ignored.
    fn forget(&mut self, p: &Partition) {
        let budget = self.budget.clone();
        self.deferred.retain(|(q, items)| {
            if q == p {
                budget.release(p, items.len(), items.iter().map(ByteSize::byte_size).sum());
            }
            q != p
        });
        *self.epochs.entry(p.clone()).or_default() += 1;
        self.ledger.forget(p);
        self.committed.remove(p);
    }

    /// Answers revocations whose partitions have nothing in flight (with the
    /// offsets to commit), and those past their deadline (with none).
    fn check_revokes(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.revokes.len() {
            let idle = self.revokes[i]
                .partitions
                .iter()
                .all(|p| !self.in_flight.contains_key(p));
            if !idle && self.revokes[i].deadline > now {
                i += 1;
                continue;
            }
            let r = self.revokes.swap_remove(i);
            let offsets: Vec<(Partition, i64)> = if idle && self.commits {
                r.partitions
                    .iter()
                    .filter_map(|p| Some((p.clone(), self.ledger.committable(p)?)))
                    .filter(|(p, o)| self.not_backwards(p, *o))
                    .collect()
            } else {
                Vec::new()
            };
            for (p, o) in &offsets {
                self.note_committed(p, *o);
            }
            if !idle {
                tracing::warn!(pipeline = %self.pipeline, partitions = r.partitions.len(), "revoked partitions did not drain in time: their uncommitted work is dropped");
            }
            for p in &r.partitions {
                self.forget(p);
            }
            let _ = r.done.send(offsets);
        }
    }

    fn answer_all_revokes(&mut self) {
        for r in self.revokes.drain(..) {
            let _ = r.done.send(Vec::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Position;

    const GOLDEN_WORKERS: [usize; 8] = [0, 3, 3, 2, 0, 1, 0, 0];

    #[test]
    fn a_partition_always_maps_to_the_same_worker() {
        let p = |n| Partition {
            stream: Arc::from("t"),
            partition: n,
        };
        // Equal partitions from separate allocations (a topic name arrives
        // anew with each record) map to the same worker: the mapping hashes
        // the name, not where it is stored.
        let first: Vec<usize> = (0..50).map(|n| worker_of(&p(n), 4)).collect();
        let again: Vec<usize> = (0..50)
            .map(|n| {
                let fresh = Partition {
                    stream: Arc::from(String::from("t").as_str()),
                    partition: n,
                };
                worker_of(&fresh, 4)
            })
            .collect();
        assert_eq!(first, again);
        assert!(first.iter().all(|&w| w < 4));
        // Fixed hash keys, not a per-process random seed: the same mapping
        // in every run (these values were computed once), so a run can be
        // reproduced worker by worker.
        let golden: Vec<usize> = (0..8).map(|n| worker_of(&p(n), 4)).collect();
        assert_eq!(golden, GOLDEN_WORKERS.to_vec());
        let used: BTreeSet<usize> = (0..50).map(|n| worker_of(&p(n), 4)).collect();
        assert_eq!(used.len(), 4, "partitions spread over the workers");
    }

    /// The parts of a session over `events`: one output, `default`, to
    /// `sink`, a dead-letter sink that holds, no transforms, one worker, the
    /// watermark guarantee, commits at once.
    fn holding_parts(
        events: mpsc::UnboundedReceiver<Result<SourceEvent, crate::source::SourceError>>,
        control: Arc<dyn SourceControl>,
        sink: Arc<HoldingSink>,
        budget: Arc<Budget>,
        max_records: usize,
    ) -> (SessionParts, Arc<Live>) {
        let metrics = PipelineMetrics::new(Arc::new(crate::metrics::Metrics::new()), "p", "t");
        let live = Live::new("p", "t", "test".into(), Vec::new(), metrics.clone());
        let holding: Arc<dyn crate::sink::Sink> = sink;
        let delivery = Delivery {
            sinks: [("default".to_string(), holding)].into_iter().collect(),
            dlq: Arc::new(crate::dlq::DeadLetter::new(
                Arc::new(HoldingSink::default()),
                "p",
                "t",
            )),
            transforms: Arc::new(Vec::new()),
            retries: Default::default(),
            dlq_retry: crate::retry::Retry::default(),
            turns: Default::default(),
            metrics,
            module_header: false,
            source_json: false,
        };
        let parts = SessionParts {
            source: RunningSource { events, control },
            delivery,
            committer: Arc::new(super::super::commit::watermark::Watermark),
            workers: vec![Arc::new(Mutex::new(Vec::new()))],
            pin_partitions: false,
            outputs: Arc::new(["default".to_string()].into_iter().collect()),
            budget,
            policy: BatchPolicy {
                max_records,
                max_bytes: 1 << 20,
                max_wait_ms: 10,
            },
            drain_timeout: Duration::from_secs(30),
            commit_interval: Duration::ZERO,
            pipeline: "p".into(),
            breaker: Arc::new(Breaker::new(Default::default())),
            live: live.clone(),
        };
        (parts, live)
    }

    /// A sink that holds every record until it is flushed (a file that
    /// closes only at shutdown), and says which records are durable.
    #[derive(Default)]
    struct HoldingSink {
        held: Mutex<Vec<(Vec<String>, tokio::sync::oneshot::Sender<()>)>>,
        durable: Arc<Mutex<BTreeSet<String>>>,
        flushes: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl crate::sink::Sink for HoldingSink {
        async fn submit(
            &self,
            batch: crate::sink::SinkBatch,
        ) -> Result<crate::sink::Pending, crate::sink::SinkError> {
            let values: Vec<String> = batch
                .records
                .iter()
                .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into())
                .collect();
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.held.lock().expect("lock").push((values, tx));
            let held: crate::sink::Durable = Box::pin(async move {
                rx.await.map_err(|_| crate::sink::SinkError::Config {
                    sink: "holding".into(),
                    message: "dropped".into(),
                })
            });
            Ok(Box::pin(std::future::ready(Ok(crate::sink::Accepted {
                rejects: Vec::new(),
                held: Some(held),
            }))))
        }

        fn describe(&self) -> String {
            "holding".into()
        }

        async fn flush(&self) -> Result<(), crate::sink::SinkError> {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let held: Vec<_> = self.held.lock().expect("lock").drain(..).collect();
            for (values, tx) in held {
                self.durable.lock().expect("lock").extend(values);
                let _ = tx.send(());
            }
            Ok(())
        }
    }

    /// A source taking per-item acknowledgements: it checks that each
    /// acknowledged item is durable in the sink, and counts acknowledgements
    /// per item.
    struct AckingControl {
        durable: Arc<Mutex<BTreeSet<String>>>,
        acks: Mutex<std::collections::BTreeMap<i64, usize>>,
        /// Items acknowledged before durable; commits (negated) past an
        /// item not durable.
        early: Mutex<Vec<i64>>,
        commits: Mutex<Vec<(Partition, i64)>>,
    }

    #[async_trait::async_trait]
    impl SourceControl for AckingControl {
        async fn commit(
            &self,
            offsets: &[(Partition, i64)],
        ) -> Result<(), crate::source::SourceError> {
            let durable = self.durable.lock().expect("lock").clone();
            for (_, next) in offsets {
                if (0..*next).any(|o| !durable.contains(&o.to_string())) {
                    self.early.lock().expect("lock").push(-*next);
                }
            }
            self.commits
                .lock()
                .expect("lock")
                .extend_from_slice(offsets);
            Ok(())
        }
        async fn close(
            &self,
            offsets: &[(Partition, i64)],
        ) -> Result<(), crate::source::SourceError> {
            self.commit(offsets).await
        }
        fn acknowledgement(&self) -> Acknowledgement {
            Acknowledgement::PerItem
        }
        async fn acknowledge(
            &self,
            positions: &[Position],
        ) -> Result<(), crate::source::SourceError> {
            let durable = self.durable.lock().expect("lock").clone();
            for p in positions {
                *self.acks.lock().expect("lock").entry(p.offset).or_default() += 1;
                if !durable.contains(&p.offset.to_string()) {
                    self.early.lock().expect("lock").push(p.offset);
                }
            }
            Ok(())
        }
        fn describe(&self) -> String {
            "acking".into()
        }
    }

    /// The two seams together: a source that wants every item acknowledged
    /// on its own, and a sink that acknowledges later than submit (it holds
    /// everything until it is flushed). The in-flight budget (10 records)
    /// is far smaller than what the sink holds (all 200): the source is not
    /// stalled by it, because the budget is freed when the sink takes a
    /// batch; yet no item is acknowledged, nor its position committed,
    /// before the sink has made it durable — which it does when the drained
    /// session flushes it.
    #[tokio::test]
    async fn a_sink_that_holds_records_frees_the_budget_and_items_are_acknowledged_once_durable() {
        let sink = Arc::new(HoldingSink::default());
        let control = Arc::new(AckingControl {
            durable: sink.durable.clone(),
            acks: Mutex::default(),
            early: Mutex::default(),
            commits: Mutex::default(),
        });
        let budget = Arc::new(Budget::new(10, 1 << 20));
        let (tx, events) = mpsc::unbounded_channel();
        let part = Partition {
            stream: Arc::from("s"),
            partition: 0,
        };
        let feeder = {
            let budget = budget.clone();
            let part = part.clone();
            tokio::spawn(async move {
                for offset in 0..200i64 {
                    let record = crate::record::Record::from_value(offset.to_string());
                    budget.acquire(record.size()).await;
                    let item = SourceItem::Record(crate::record::SourceRecord {
                        record,
                        position: Position {
                            partition: part.clone(),
                            offset,
                        },
                    });
                    if tx.send(Ok(SourceEvent::Item(item))).is_err() {
                        return;
                    }
                }
            })
        };
        let (parts, live) = holding_parts(events, control.clone(), sink.clone(), budget.clone(), 5);
        let mut summary = Summary::default();
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        let mut shutdown: Pin<&mut (dyn Future<Output = ()> + Send)> = never;
        // A liveness guard, not a measurement: before the seam, this run
        // never ended (the held batches kept the budget spent).
        let end = tokio::time::timeout(
            Duration::from_secs(60),
            run(parts, &mut summary, &mut shutdown),
        )
        .await
        .expect("the session ends: the held batches did not stall the source")
        .expect("the session succeeds");
        assert_eq!(end, SessionEnd::Drained);
        feeder.await.expect("feeder");
        assert_eq!(summary.records_in, 200);
        assert_eq!(summary.outputs.get("default"), Some(&200));
        assert_eq!(sink.durable.lock().expect("lock").len(), 200);
        assert!(sink.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        let acks = control.acks.lock().expect("lock").clone();
        assert_eq!(acks.len(), 200, "every item acknowledged");
        assert!(
            acks.values().all(|&n| n == 1),
            "each exactly once: {acks:?}"
        );
        assert!(
            control.early.lock().expect("lock").is_empty(),
            "acknowledged before durable: {:?}",
            control.early.lock().expect("lock")
        );
        // The watermark is committed too, to the end, and never past a
        // record that was only held (checked by the control at each commit:
        // `early` holds such commits as negative numbers).
        let commits = control.commits.lock().expect("lock").clone();
        assert_eq!(commits.last(), Some(&(part.clone(), 200)), "{commits:?}");
        assert_eq!(budget.in_flight(), (0, 0));
        assert_eq!(live.snapshot().held_records, 0);
    }

    /// A Kafka-like source's control: commits are logged.
    #[derive(Default)]
    struct CommitLog {
        commits: Mutex<Vec<(Partition, i64)>>,
    }

    #[async_trait::async_trait]
    impl SourceControl for CommitLog {
        async fn commit(
            &self,
            offsets: &[(Partition, i64)],
        ) -> Result<(), crate::source::SourceError> {
            self.commits
                .lock()
                .expect("lock")
                .extend_from_slice(offsets);
            Ok(())
        }
        async fn close(
            &self,
            offsets: &[(Partition, i64)],
        ) -> Result<(), crate::source::SourceError> {
            self.commit(offsets).await
        }
        fn describe(&self) -> String {
            "commit log".into()
        }
    }

    /// A partition lost in a broker outage (the member's session lapsed)
    /// keeps its records in flight: they are still delivered, nothing is
    /// committed for the partition while it is lost, the pipeline answers
    /// with where to read on, and once the partition is ours again the
    /// records read after that point follow — each record written once
    /// (before, the in-flight work was dropped and the whole of it read and
    /// written again from the committed offset).
    #[tokio::test]
    async fn a_lost_partition_given_back_reads_on_after_its_records_in_flight() {
        let sink = Arc::new(HoldingSink::default());
        let control = Arc::new(CommitLog::default());
        let budget = Arc::new(Budget::new(1000, 1 << 20));
        let (tx, events) = mpsc::unbounded_channel();
        let part = Partition {
            stream: Arc::from("s"),
            partition: 0,
        };
        let item = |offset: i64| {
            let record = crate::record::Record::from_value(offset.to_string());
            budget.try_acquire(record.size());
            SourceItem::Record(crate::record::SourceRecord {
                record,
                position: Position {
                    partition: part.clone(),
                    offset,
                },
            })
        };
        for offset in 0..100 {
            tx.send(Ok(SourceEvent::Item(item(offset)))).expect("send");
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        tx.send(Ok(SourceEvent::Revoke(Revocation {
            partitions: vec![part.clone()],
            lost: true,
            done,
        })))
        .expect("send");
        let (parts, _live) =
            holding_parts(events, control.clone(), sink.clone(), budget.clone(), 10);
        let session = tokio::spawn(async move {
            let mut summary = Summary::default();
            let never = std::future::pending::<()>();
            tokio::pin!(never);
            let mut shutdown: Pin<&mut (dyn Future<Output = ()> + Send)> = never;
            let end = run(parts, &mut summary, &mut shutdown).await;
            (end.map_err(|e| e.to_string()), summary)
        });
        let resume = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .expect("the lost revocation is answered at once")
            .expect("answered");
        assert_eq!(resume, vec![(part.clone(), 100)], "read on after offset 99");
        // The held records become durable while the partition is lost:
        // nothing is committed for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.held.lock().expect("lock").len() < 10 {
            assert!(
                Instant::now() < deadline,
                "the in-flight batches reach the sink"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        crate::sink::Sink::flush(sink.as_ref())
            .await
            .expect("flush");
        assert!(
            control.commits.lock().expect("lock").is_empty(),
            "committed while lost: {:?}",
            control.commits.lock().expect("lock")
        );
        // Ours again: records from 100 on follow, and commits resume.
        tx.send(Ok(SourceEvent::Regained(vec![part.clone()])))
            .expect("send");
        for offset in 100..150 {
            tx.send(Ok(SourceEvent::Item(item(offset)))).expect("send");
        }
        drop(tx);
        let (end, summary) = tokio::time::timeout(Duration::from_secs(60), session)
            .await
            .expect("the session ends")
            .expect("joined");
        assert_eq!(end, Ok(SessionEnd::Drained));
        assert_eq!(summary.records_in, 150);
        assert_eq!(
            summary.outputs.get("default"),
            Some(&150),
            "none sent twice"
        );
        let durable = sink.durable.lock().expect("lock").clone();
        assert_eq!(durable.len(), 150, "each record written, once");
        let commits = control.commits.lock().expect("lock").clone();
        assert_eq!(commits.last(), Some(&(part.clone(), 150)), "{commits:?}");
    }
}

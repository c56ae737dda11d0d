//! The workers: threads that run the transform chain on the batches they
//! take, and the reorder window that hands each partition's batches on to
//! delivery in the order they were cut.

use super::*;

/// What every worker shares.
pub(super) struct WorkerShared {
    /// Each partition stays on one worker (else one queue all take from).
    pub(super) pin_partitions: bool,
    pub(super) outputs: Arc<BTreeSet<String>>,
    pub(super) breaker: Arc<Breaker>,
    pub(super) probe: crate::pipeline::swap::Probe,
    pub(super) live: Arc<Live>,
}

/// The started workers: the queues the coordinator sends jobs into (one,
/// or one per worker), and their threads.
pub(super) struct Workers {
    pub(super) queues: Vec<std::sync::mpsc::Sender<Job>>,
    pub(super) threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts one thread per worker's runners. Workers hand finished batches
/// to the reorder window, which hands each partition's batches to delivery
/// (`processed`) in the order they were cut; the last worker to stop
/// closes delivery's queue.
pub(super) fn start(
    runners: Vec<WorkerRunners>,
    shared: WorkerShared,
    processed: mpsc::UnboundedSender<Processed>,
    done: mpsc::UnboundedSender<Report>,
) -> Result<Workers, PipelineError> {
    let ordered: SharedHandover = Arc::new(Mutex::new(Handover {
        window: Default::default(),
        ready: Vec::new(),
        processed,
    }));
    let mut queues = Vec::new();
    let one_queue = if shared.pin_partitions {
        None
    } else {
        let (tx, rx) = std::sync::mpsc::channel();
        queues.push(tx);
        Some(Arc::new(Mutex::new(rx)))
    };
    let mut threads = Vec::with_capacity(runners.len());
    for (index, runners) in runners.into_iter().enumerate() {
        let queue = match &one_queue {
            Some(rx) => Queue::Shared(rx.clone()),
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                queues.push(tx);
                Queue::Own(rx)
            }
        };
        let w = Worker {
            index,
            runners,
            outputs: shared.outputs.clone(),
            breaker: shared.breaker.clone(),
            probe: shared.probe.clone(),
            live: shared.live.clone(),
        };
        let (finished, done) = (ordered.clone(), done.clone());
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{index}"))
            .spawn(move || {
                let _entered = span.enter();
                worker(w, queue, finished, done);
            })
            .map_err(|e| PipelineError::Internal(format!("cannot start a worker thread: {e}")))?;
        threads.push(thread);
    }
    Ok(Workers { queues, threads })
}

/// What a worker owns: its instances of the chain.
struct Worker {
    index: usize,
    runners: WorkerRunners,
    outputs: Arc<BTreeSet<String>>,
    breaker: Arc<Breaker>,
    probe: crate::pipeline::swap::Probe,
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
    window: crate::pipeline::reorder::Reorder<Processed>,
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

pub(super) fn worker_of(partition: &Partition, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable for the life of the process.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    partition.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

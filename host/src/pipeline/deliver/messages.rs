//! What passes between the coordinator, the workers and delivery: a job (one
//! batch of one partition), its processed form, and the reports back.

use super::*;

/// A micro-batch of one partition, as cut by the coordinator.
#[derive(Debug)]
pub(crate) struct Job {
    /// The partition all items belong to.
    pub partition: Partition,
    /// The partition's epoch when the job was cut: a job of an older epoch
    /// belongs to a revoked assignment and is not committed.
    pub epoch: u64,
    /// The items, in source order.
    pub items: Vec<SourceItem>,
    /// Bytes of the items (budget accounting).
    pub bytes: usize,
    /// When the coordinator cut it (batch latency: cut → handled).
    pub dispatched: std::time::Instant,
    /// Its number among its partition's batches (0, 1, ...): delivery takes
    /// a partition's batches in this order whichever worker finishes first.
    pub seq: u64,
}

impl Job {
    /// A job that stands for no batch: it carries an error of the session
    /// itself (a worker that died, a transaction that failed before any
    /// batch was finished) to the coordinator.
    pub(crate) fn none() -> Job {
        Job {
            partition: Partition {
                stream: Arc::from("?"),
                partition: -1,
            },
            epoch: 0,
            items: Vec::new(),
            bytes: 0,
            dispatched: std::time::Instant::now(),
            seq: 0,
        }
    }
}

/// A job after the transform chain.
#[derive(Debug)]
pub(crate) struct Processed {
    /// The job.
    pub job: Job,
    /// What the chain made of it.
    pub chain: ChainResult,
}

/// Counters of one delivered batch.
#[derive(Debug, Default)]
pub(crate) struct BatchReport {
    /// Records written per output.
    pub outputs: BTreeMap<String, u64>,
    /// Dead-letter entries per stage.
    pub dead: BTreeMap<&'static str, u64>,
    /// Dead-letter entries per stage, transform (`-` for none) and kind.
    pub dead_kinds: BTreeMap<(&'static str, String, String), u64>,
    /// Bytes written per output (keys, values and headers).
    pub output_bytes: BTreeMap<String, u64>,
    /// Per-transform counters.
    pub steps: Vec<StepStats>,
}

/// A job is finished: delivered, or failed (the session ends).
#[derive(Debug)]
pub(crate) struct Done {
    /// The job.
    pub job: Job,
    /// Its outcome.
    pub outcome: Result<BatchReport, PipelineError>,
    /// Sinks hold some of its records (a file not yet closed): its budget is
    /// free, but its positions are handled only when a [`Durable`] report
    /// for it follows.
    pub held: bool,
}

impl Done {
    /// A job that failed.
    pub(crate) fn failed(job: Job, e: PipelineError) -> Done {
        Done {
            job,
            outcome: Err(e),
            held: false,
        }
    }
}

/// The records of a batch that sinks held are durable (or cannot be).
#[derive(Debug)]
pub(crate) struct DurableBatch {
    /// The batch's partition.
    pub partition: Partition,
    /// The partition's epoch when the batch was cut.
    pub epoch: u64,
    /// The source offsets of its items.
    pub offsets: crate::ledger::Offsets,
    /// Durable, or why not (the session ends without committing them).
    pub outcome: Result<(), PipelineError>,
}

/// What delivery reports to the coordinator.
#[derive(Debug)]
pub(crate) enum Report {
    /// A batch is finished.
    Done(Done),
    /// What sinks held of a finished batch is durable.
    Durable(DurableBatch),
}

impl From<Done> for Report {
    fn from(d: Done) -> Self {
        Report::Done(d)
    }
}

/// Name and module digest of each transform, for dead-letter entries.
#[derive(Debug, Clone)]
pub(crate) struct TransformInfo {
    /// Transform name.
    pub name: String,
    /// Module digest.
    pub digest: String,
}

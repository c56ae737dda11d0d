//! Sinks: where output and dead-letter records go. One folder per sink kind
//! (its config type, checks, `build`, reading a dead-letter queue back),
//! each a [`SinkPlugin`]; [`SinkConfig`] is the one registry that maps an
//! `[outputs.<name>.<kind>]` table to its plugin. A new sink is its folder
//! plus one variant and one arm in [`SinkConfig::plugin`].
//!
//! A write has two phases, so that records keep their order while several
//! batches are in flight: [`Sink::submit`] enqueues a batch (in call order)
//! and returns a [`Pending`] future that resolves, with the records the sink
//! refused permanently, once the sink has taken the others. A sink that
//! writes at once (Kafka, one object per write) takes them when they are
//! durable. A sink that holds records until a file closes acknowledges
//! later: its [`Accepted`] carries a [`Durable`] future, the pipeline drops
//! its copies and frees their in-flight budget at once (so a file that rolls
//! every few minutes does not stall the source), and commits their source
//! positions only when that future resolves. Such a sink bounds what it
//! holds itself, by making `submit` wait.

pub mod kafka;
pub mod lake;
pub mod local;
pub mod objects;
pub mod stdout;

mod build;
mod lines;
mod transactions;

pub use build::{BuildContext, SharedClients, SinkOptions, SinkScope, Sinks, build_all};
pub use lines::{RecordFormat, encode_line, encode_line_checked, encode_lines, encode_lines_of};
pub use transactions::{Transactions, TxnError};

use crate::dlq_entry::{DeadLetterRecord, ReplayError};
use crate::record::Record;
use crate::retry::RetryConfig;
use kafka::KafkaSinkConfig;
use lake::LakeSinkConfig;
use local::LocalSinkConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use stdout::StdoutSinkConfig;

pub use lake::LakeSink;
pub use local::LocalSink;
pub use stdout::StdoutSink;

/// A record the sink refused permanently; it goes to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Index of the record in the submitted batch.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// Why a sink failed as a whole (nothing of the write may be assumed durable).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Object store error.
    #[error("sink {sink}: {message}")]
    Store {
        /// Which sink.
        sink: String,
        /// Explanation.
        message: String,
        /// Whether trying again may succeed.
        transient: bool,
    },
    /// I/O error.
    #[error("sink {sink}: {source}")]
    Io {
        /// Which sink.
        sink: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// A write failed (a broker or a service refused it, or did not
    /// answer in time).
    #[error("sink {sink}: {message}")]
    Write {
        /// Which sink.
        sink: String,
        /// The client's explanation.
        message: String,
        /// Whether trying again may succeed (a timeout, a broker away).
        transient: bool,
    },
    /// Part of a write failed: the records at `failed` (indices into the
    /// submitted batch) are not durable, the others are; `rejects` are the
    /// records refused for themselves. Retrying writes only `failed`.
    #[error("sink {sink}: {message} ({} of the batch's records not written)", .failed.len())]
    Partial {
        /// Which sink.
        sink: String,
        /// The first failure's explanation.
        message: String,
        /// Whether trying again may succeed.
        transient: bool,
        /// Indices of the records not written.
        failed: Vec<usize>,
        /// Records refused for themselves (to the dead-letter queue).
        rejects: Vec<Reject>,
    },
    /// The sink is misconfigured.
    #[error("sink {sink}: {message}")]
    Config {
        /// Which sink.
        sink: String,
        /// What is wrong.
        message: String,
    },
}

impl SinkError {
    /// Whether the same write may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Store { transient, .. }
            | SinkError::Write { transient, .. }
            | SinkError::Partial { transient, .. } => *transient,
            SinkError::Io { .. } => true,
            SinkError::Config { .. } => false,
        }
    }
}

/// The second phase of a write: resolves once the sink has taken the batch.
pub type Pending = Pin<Box<dyn Future<Output = Result<Accepted, SinkError>> + Send>>;

/// Resolves once records a sink holds are durable. It cannot refuse a
/// record any more: it fails only as a whole (the pipeline then stops
/// without committing them, and they are read again).
pub type Durable = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// What a sink did with a submitted batch.
pub struct Accepted {
    /// Records refused for themselves (to the dead-letter queue).
    pub rejects: Vec<Reject>,
    /// `None`: the other records are durable now. `Some`: the sink holds
    /// them (in a file that closes later) and this resolves when they are
    /// durable.
    pub held: Option<Durable>,
}

impl Accepted {
    /// Everything not refused is durable now.
    pub fn durable(rejects: Vec<Reject>) -> Self {
        Accepted {
            rejects,
            held: None,
        }
    }
}

impl From<Vec<Reject>> for Accepted {
    fn from(rejects: Vec<Reject>) -> Self {
        Accepted::durable(rejects)
    }
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("rejects", &self.rejects)
            .field("held", &self.held.is_some())
            .finish()
    }
}

/// A destination for records.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Enqueues `records` after everything submitted before, and returns the
    /// future of their durability. Records refused at once (e.g. too large)
    /// are reported by the future with the others.
    async fn submit(&self, batch: SinkBatch) -> Result<Pending, SinkError>;

    /// A short description for logs and errors.
    fn describe(&self) -> String;

    /// How dead-letter entries are written to this sink: as JSON envelopes
    /// (default) or as the original record with `sluice.dlq.*` headers
    /// (sinks that keep headers, such as Kafka).
    fn dead_letter_encoding(&self) -> DeadLetterEncoding {
        DeadLetterEncoding::Envelope
    }

    /// Called when writes keep failing with transient errors: a sink whose
    /// client can wedge (a Kafka producer after an outage) starts afresh.
    fn recover(&self) {}

    /// Makes what the sink holds durable now (closes open files), so that
    /// held writes resolve: on shutdown and when partitions are taken away.
    /// Sinks that hold nothing do nothing.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Checks that the destination exists and is reachable (before any
    /// record is read), with an error naming what is wrong.
    async fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// How a sink stores dead-letter entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterEncoding {
    /// One JSON envelope per entry: the record and its failure context.
    Envelope,
    /// The original record, the context in `sluice.dlq.*` headers.
    Headers,
}

/// Where the records of one write come from: per record, the source
/// position of the input it derives from and the digest of the module that
/// emitted it. A sink that names its objects after source positions (a lake
/// that must write the same keys after a replay) or records which module
/// produced what reads it here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lineage {
    /// Per record: the source position it derives from.
    pub positions: Vec<crate::record::Position>,
    /// Per record: the digest of the module that emitted it (`None`: no
    /// transform did, e.g. a dead letter of a record that did not decode).
    pub modules: Vec<Option<Arc<str>>>,
    /// Per record: whether its value is known to be one JSON document — the
    /// host checked it where it entered and no transform changed a byte of
    /// it (a filter, a router, an identity) — so a sink writing JSON lines
    /// need not parse it again. Shorter than the records (or empty): the
    /// rest are not known.
    pub json_checked: Vec<bool>,
}

impl Lineage {
    /// Whether record `index`'s value is known to be JSON.
    pub fn is_json_checked(&self, index: usize) -> bool {
        self.json_checked.get(index).copied().unwrap_or(false)
    }

    /// The lowest and highest positions of one partition's records: the
    /// first and last offset a write covers, per partition.
    pub fn spans(&self) -> BTreeMap<crate::record::Partition, (i64, i64)> {
        let mut spans: BTreeMap<crate::record::Partition, (i64, i64)> = BTreeMap::new();
        for p in &self.positions {
            spans
                .entry(p.partition.clone())
                .and_modify(|(lo, hi)| {
                    *lo = (*lo).min(p.offset);
                    *hi = (*hi).max(p.offset);
                })
                .or_insert((p.offset, p.offset));
        }
        spans
    }

    /// The lineage of the records at `indices` (a retried subset).
    pub fn subset(&self, indices: &[usize]) -> Lineage {
        Lineage {
            positions: indices
                .iter()
                .filter_map(|&i| self.positions.get(i).cloned())
                .collect(),
            modules: indices
                .iter()
                .filter_map(|&i| self.modules.get(i).cloned())
                .collect(),
            json_checked: indices.iter().map(|&i| self.is_json_checked(i)).collect(),
        }
    }
}

/// Records to write, with where they come from.
#[derive(Debug, Clone, Default)]
pub struct SinkBatch {
    /// The records, in order.
    pub records: Vec<Record>,
    /// Their lineage (one entry per record).
    pub lineage: Lineage,
}

impl SinkBatch {
    /// Records without lineage (tests, tools).
    pub fn records(records: Vec<Record>) -> Self {
        SinkBatch {
            records,
            lineage: Lineage::default(),
        }
    }
}

/// A sink: one table named after its kind, e.g. `[outputs.default.local]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON Lines files on local disk, through `object_store`.
    Local(LocalSinkConfig),
    /// A data lake on an object store: partitioned, rolled, exactly once.
    Lake(LakeSinkConfig),
    /// Standard output, one line per record.
    Stdout(StdoutSinkConfig),
    /// A Kafka topic.
    Kafka(KafkaSinkConfig),
}

impl SinkConfig {
    /// The plugin of this sink kind: the registry's one match.
    pub fn plugin(&self) -> &dyn SinkPlugin {
        match self {
            SinkConfig::Local(c) => c,
            SinkConfig::Lake(c) => c,
            SinkConfig::Stdout(c) => c,
            SinkConfig::Kafka(c) => c,
        }
    }

    /// The sink's retry policy.
    pub fn retry(&self) -> RetryConfig {
        self.plugin().retry()
    }

    /// The sink kind, as written in the file.
    pub fn kind(&self) -> &'static str {
        self.plugin().kind()
    }
}

/// A sink kind: what the pipeline needs from its configuration.
pub trait SinkPlugin: std::fmt::Debug + Send + Sync {
    /// The kind, as written in the pipeline file.
    fn kind(&self) -> &'static str;

    /// How transient write errors are retried (default: the default policy).
    fn retry(&self) -> RetryConfig {
        RetryConfig::default()
    }

    /// What a line holds, for sinks that write lines.
    fn line_format(&self) -> Option<RecordFormat> {
        None
    }

    /// Checks of the configuration alone (no I/O), run when the pipeline
    /// file is parsed; `field` is its table (`outputs.alerts`,
    /// `dead_letter`) for messages.
    fn check(&self, _field: &str, _scope: &SinkScope<'_>) -> Result<(), String> {
        Ok(())
    }

    /// Connects to where the sink writes without writing a record (`sluice
    /// check --connect`): the servers answer, the bucket or folder can be
    /// listed or written. Says what it found. Blocks; never call it on an
    /// async runtime's thread.
    fn probe(&self, _scope: &SinkScope<'_>) -> Result<String, String> {
        Ok("nothing to connect to".into())
    }

    /// Opens the sink.
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Arc<dyn Sink>, SinkError>;

    /// Reads back every dead-letter entry written to this sink (`sluice dlq`).
    fn read_dead_letters(
        &self,
        _scope: &SinkScope<'_>,
        _newest: Option<usize>,
    ) -> Result<Vec<DeadLetterRecord>, ReplayError> {
        Err(ReplayError::Read {
            dlq: self.kind().into(),
            message: format!(
                "a {} sink cannot be read back; write the dead-letter queue to `local` or `kafka` to replay it",
                self.kind()
            ),
        })
    }

    /// Whether this sink can write in the transactions that commit the
    /// source's position (exactly-once), on the cluster `scope` names as
    /// the source's; `Err` says why not (the pipeline file is refused).
    fn joins_transactions(&self, _scope: &SinkScope<'_>) -> Result<(), String> {
        Err(format!(
            "a {} sink cannot join the source's transactions",
            self.kind()
        ))
    }
}

/// A pending write that is already complete (and durable).
pub fn ready(rejects: Vec<Reject>) -> Pending {
    Box::pin(std::future::ready(Ok(Accepted::durable(rejects))))
}

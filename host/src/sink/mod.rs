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

use crate::dlq_entry::{DeadLetterRecord, ReplayError};
use crate::record::{Record, envelope};
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

pub use kafka::{KafkaProducer, KafkaSink};
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

/// How sinks are built for one run of a pipeline.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// `Some(id)`: Kafka sinks share one transactional producer with this
    /// transactional id (exactly-once).
    pub transactional_id: Option<String>,
    /// Transaction timeout (exactly-once).
    pub transaction_timeout_ms: u64,
}

/// The sinks of a pipeline: one per output, and the dead-letter sink.
pub struct Sinks {
    /// Output name → sink.
    pub outputs: BTreeMap<String, Arc<dyn Sink>>,
    /// The dead-letter sink.
    pub dead_letter: Arc<dyn Sink>,
    /// With exactly-once: the transactions the sinks write in.
    pub transactions: Option<Arc<dyn Transactions>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("outputs", &self.outputs.keys().collect::<Vec<_>>())
            .field("dead_letter", &self.dead_letter.describe())
            .finish()
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

/// What a sink may know of the pipeline it writes for — and no more: its
/// name, where relative paths resolve, and the Kafka cluster of its source
/// (where a Kafka sink without a `bootstrap` of its own writes).
#[derive(Debug, Clone, Copy)]
pub struct SinkScope<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// What relative paths resolve against (the pipeline file's folder).
    pub base: &'a Path,
    /// The bootstrap servers of the pipeline's Kafka source, if it has one.
    pub source_bootstrap: Option<&'a str>,
}

/// What building one sink needs.
pub struct BuildContext<'a> {
    /// The pipeline, as a sink sees it.
    pub scope: SinkScope<'a>,
    /// The output name (`dead-letter` for the DLQ).
    pub output: &'a str,
    /// Transactions.
    pub opts: &'a SinkOptions,
    /// Clients the sinks of one pipeline share (Kafka producers of one
    /// cluster), by type: each plugin keeps its own kind here.
    pub shared: &'a mut SharedClients,
    /// The transactions the sinks write in (exactly-once): set by the
    /// sink that provides them.
    pub transactions: &'a mut Option<Arc<dyn Transactions>>,
}

/// Clients shared by the sinks of one pipeline, one value per type (as
/// Vector's `SinkContext::extra_context`): a plugin stores what it shares
/// under a type of its own, and no other code needs to know it.
#[derive(Default)]
pub struct SharedClients {
    by_type: std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>,
}

impl SharedClients {
    /// The value of type `T`, made with `T::default()` the first time.
    pub fn get_or_default<T: std::any::Any + Send + Sync + Default>(&mut self) -> &mut T {
        let slot = self
            .by_type
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()));
        match slot.downcast_mut::<T>() {
            Some(t) => t,
            // The map is keyed by the type's id: the value has that type.
            None => unreachable!("a shared client stored under another type's id"),
        }
    }
}

/// Why a transaction step failed, by what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxnError {
    /// The writer can no longer be used: most often a newer instance with
    /// the same transactional id fenced this one. The process must stop.
    #[error("the transactional producer is fenced or failed fatally: {0}")]
    Fatal(String),
    /// The transaction must be aborted; its records are repeated after a
    /// rewind to the committed position.
    #[error("the transaction must be aborted: {0}")]
    Abort(String),
    /// The same call may be tried again.
    #[error("the transaction call may be retried: {0}")]
    Retriable(String),
}

/// Exactly-once as a sink capability (Arroyo's two-phase committer): the
/// pipeline's outputs and dead letters are written in transactions that
/// commit together with the source's position. Provided by the sink that
/// builds the transactional writer (Kafka), through
/// [`BuildContext::transactions`].
#[async_trait::async_trait]
pub trait Transactions: Send + Sync {
    /// Registers the writer, fencing older instances with the same id.
    async fn init(&self) -> Result<(), TxnError>;
    /// Starts a transaction.
    async fn begin(&self) -> Result<(), TxnError>;
    /// Adds the source's next positions and commits the transaction.
    /// `source` is what the running source gives for it
    /// ([`crate::source::SourceControl::transaction_context`]).
    async fn commit(
        &self,
        positions: &[(crate::record::Partition, i64)],
        source: Box<dyn std::any::Any + Send>,
    ) -> Result<(), TxnError>;
    /// Aborts the open transaction.
    async fn abort(&self) -> Result<(), TxnError>;
    /// Why the writer can no longer be used, if it cannot.
    fn fatal(&self) -> Option<String>;
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

/// Builds every sink of a pipeline: its outputs and its dead-letter sink.
/// Kafka sinks with the same cluster and settings share one producer; with
/// a transactional id, all Kafka sinks share one transactional producer.
pub fn build_all(
    outputs_config: &BTreeMap<String, SinkConfig>,
    dead_letter_config: &SinkConfig,
    scope: SinkScope<'_>,
    opts: &SinkOptions,
) -> Result<Sinks, SinkError> {
    let mut shared = SharedClients::default();
    let mut transactions = None;
    let mut build = |name: &str, sink: &SinkConfig| {
        sink.plugin().build(&mut BuildContext {
            scope,
            output: name,
            opts,
            shared: &mut shared,
            transactions: &mut transactions,
        })
    };
    let mut outputs = BTreeMap::new();
    for (name, sink) in outputs_config {
        outputs.insert(name.clone(), build(name, sink)?);
    }
    let dead_letter = build("dead-letter", dead_letter_config)?;
    Ok(Sinks {
        outputs,
        dead_letter,
        transactions,
    })
}

/// Appends one record as one line to `out`, or says why it cannot be.
pub fn encode_line(record: &Record, format: RecordFormat, out: &mut Vec<u8>) -> Result<(), String> {
    encode_line_checked(record, format, false, out)
}

/// [`encode_line`] for a record whose value is known to be one JSON
/// document when `json_checked` (see [`Lineage::json_checked`]).
pub fn encode_line_checked(
    record: &Record,
    format: RecordFormat,
    json_checked: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match format {
        RecordFormat::Value => {
            let Some(value) = record.value.as_deref() else {
                return Err(
                    "record has no value, and the sink writes values (format = \"value\")".into(),
                );
            };
            if memchr::memchr2(b'\n', b'\r', value).is_none() {
                if !json_checked && let Err(e) = crate::record::check_json(value) {
                    return Err(format!(
                        "record value is not JSON, and the sink writes JSON lines: {e}"
                    ));
                }
                out.extend_from_slice(value);
            } else {
                let parsed: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
                    format!("record value is not JSON, and the sink writes JSON lines: {e}")
                })?;
                serde_json::to_writer(&mut *out, &parsed).map_err(|e| e.to_string())?;
            }
        }
        RecordFormat::Envelope => {
            serde_json::to_writer(&mut *out, &envelope(record)).map_err(|e| e.to_string())?;
        }
    }
    out.push(b'\n');
    Ok(())
}

/// Encodes records as lines; returns the buffer, the number of lines and the rejects.
pub fn encode_lines(records: &[Record], format: RecordFormat) -> (Vec<u8>, usize, Vec<Reject>) {
    encode_lines_of(records, &Lineage::default(), format)
}

/// [`encode_lines`], not parsing again the values `lineage` knows are JSON.
pub fn encode_lines_of(
    records: &[Record],
    lineage: &Lineage,
    format: RecordFormat,
) -> (Vec<u8>, usize, Vec<Reject>) {
    let mut buf = Vec::with_capacity(records.iter().map(|r| r.size() + 1).sum());
    let mut rejects = Vec::new();
    let mut lines = 0;
    for (index, record) in records.iter().enumerate() {
        let mark = buf.len();
        match encode_line_checked(record, format, lineage.is_json_checked(index), &mut buf) {
            Ok(()) => lines += 1,
            Err(reason) => {
                buf.truncate(mark);
                rejects.push(Reject { index, reason });
            }
        }
    }
    (buf, lines, rejects)
}

/// A pending write that is already complete (and durable).
pub fn ready(rejects: Vec<Reject>) -> Pending {
    Box::pin(std::future::ready(Ok(Accepted::durable(rejects))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Header;

    #[test]
    fn a_value_known_to_be_json_is_not_parsed_again() {
        let records = vec![
            Record::from_value(&b"{\"a\": 1}"[..]),
            Record::from_value(&b"{\"b\": 2}"[..]),
        ];
        // The second is marked as checked by the host; the marker is what
        // skips the parse (a value is marked only when it is byte for byte
        // one the source validated), shown here with a first record that
        // is parsed and one that is copied.
        let lineage = Lineage {
            json_checked: vec![false, true],
            ..Default::default()
        };
        let (buf, lines, rejects) = encode_lines_of(&records, &lineage, RecordFormat::Value);
        assert_eq!((lines, rejects.len()), (2, 0));
        assert_eq!(buf, b"{\"a\": 1}\n{\"b\": 2}\n");
        let bad = vec![Record::from_value(&b"not json"[..])];
        let (_, lines, rejects) = encode_lines_of(&bad, &Lineage::default(), RecordFormat::Value);
        assert_eq!(
            (lines, rejects.len()),
            (0, 1),
            "unmarked values are checked"
        );
        let (_, lines, _) = encode_lines_of(&bad, &lineage.subset(&[1]), RecordFormat::Value);
        assert_eq!(lines, 1, "the marker carries over to a retried subset");
    }

    #[test]
    fn value_lines_are_compact_json_and_non_json_is_rejected() {
        let records = vec![
            Record::from_value(&b"{\"a\": 1}"[..]),
            Record::from_value(&b"{\n  \"b\": 2\n}"[..]),
            Record::from_value(&b"plain text"[..]),
            Record::default(),
        ];
        let (buf, lines, rejects) = encode_lines(&records, RecordFormat::Value);
        assert_eq!(
            String::from_utf8(buf).expect("utf8"),
            "{\"a\": 1}\n{\"b\":2}\n"
        );
        assert_eq!(lines, 2);
        assert_eq!(
            rejects.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(rejects[0].reason.contains("not JSON"));
    }

    #[test]
    fn envelope_keeps_binary_safely() {
        let r = Record {
            key: Some(bytes::Bytes::from_static(&[0xff, 0x00])),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: vec![Header::new("h", &b"x"[..])],
            timestamp: Some(5),
        };
        let e = envelope(&r);
        assert_eq!(e["key"]["base64"], "/wA=");
        assert_eq!(e["value"], "v");
        assert_eq!(e["headers"][0]["name"], "h");
        assert_eq!(e["timestamp"], 5);
    }
}

/// How an output record is written as one line.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecordFormat {
    /// The record value, which must be JSON (written compactly on one line);
    /// a value that is not JSON is rejected to the dead-letter queue.
    #[default]
    Value,
    /// A JSON envelope with key, value, headers and timestamp.
    Envelope,
}

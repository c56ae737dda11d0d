//! Sources: where records come from. One folder per source kind (its
//! config type, `validate` and `start`), each a [`SourcePlugin`];
//! [`SourceConfig`] is the one registry that maps a `[source.<kind>]` table
//! to its plugin. A new source is its folder plus one variant and one arm in
//! [`SourceConfig::plugin`].
//!
//! A running source is two things: a stream of [`SourceEvent`]s (records, and
//! partitions being taken away on a rebalance) and a [`SourceControl`] the
//! pipeline uses to commit handled offsets and to close the source. Every
//! record read takes a share of the pipeline's in-flight [`Budget`]; a source
//! stops reading while the budget is spent.

pub mod file;
pub mod kafka;
mod memory;

use crate::batch::ByteSize;
use crate::flow::Budget;
use crate::record::{Partition, Position, Record, SourceRecord};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub use file::{FileSource, FileSourceConfig};
pub use kafka::KafkaSourceConfig;
pub use memory::start_items;

/// One item read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceItem {
    /// A record to process.
    Record(SourceRecord),
    /// Input the host could not turn into a record of the configured format
    /// (e.g. a line that is not JSON). It goes to the dead-letter queue.
    Invalid {
        /// The raw input as a record (value = the raw bytes).
        record: Record,
        /// Where it was read.
        position: Position,
        /// Why it is invalid.
        reason: String,
    },
}

impl SourceItem {
    /// The position of the item.
    pub fn position(&self) -> &Position {
        match self {
            SourceItem::Record(r) => &r.position,
            SourceItem::Invalid { position, .. } => position,
        }
    }

    /// The record as read (for an invalid item, its raw bytes as value).
    pub fn record(&self) -> &Record {
        match self {
            SourceItem::Record(r) => &r.record,
            SourceItem::Invalid { record, .. } => record,
        }
    }
}

impl ByteSize for SourceItem {
    fn byte_size(&self) -> usize {
        self.record().size()
    }
}

/// Partitions taken away from this process (a consumer-group rebalance).
#[derive(Debug)]
pub struct Revocation {
    /// The partitions.
    pub partitions: Vec<Partition>,
    /// The partitions were lost (the member's session lapsed, e.g. through
    /// a broker outage: another member may own them already). Nothing is
    /// committed for them while they are lost. An at-least-once pipeline
    /// keeps delivering their in-flight records and answers at once with,
    /// per partition it keeps, the offset after the last record it read:
    /// given back to this member, a partition is read on from there (not
    /// from its committed offset, which would deliver everything in flight
    /// twice) and the pipeline is told with [`SourceEvent::Regained`];
    /// assigned elsewhere, with [`SourceEvent::Released`].
    pub lost: bool,
    /// Answered once the partitions' in-flight batches are handled (or
    /// dropped), with the offsets the source must commit before it lets the
    /// partitions go (empty: commit nothing) — for lost partitions, at once,
    /// with where to read on (see `lost`).
    pub done: oneshot::Sender<Vec<(Partition, i64)>>,
}

/// What a running source reports.
#[derive(Debug)]
pub enum SourceEvent {
    /// A record was read. Its share of the budget is already taken.
    Item(SourceItem),
    /// Records read one after another (of any partitions, in order), each
    /// with its share of the budget taken: one event for many records,
    /// where a source reads faster than one message per record pays off.
    Items(Vec<SourceItem>),
    /// Partitions are being taken away.
    Revoke(Revocation),
    /// Lost partitions the pipeline kept are assigned to this member again:
    /// they are read on from where the pipeline stopped, and committed again.
    Regained(Vec<Partition>),
    /// Lost partitions the pipeline kept went to another member: their
    /// in-flight work is no longer this member's to commit.
    Released(Vec<Partition>),
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Nothing matches the configured path.
    #[error("file source: nothing matches `{0}`")]
    NoFiles(String),
    /// A bad glob pattern.
    #[error("file source: bad pattern `{pattern}`: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Explanation.
        message: String,
    },
    /// Reading failed.
    #[error("file source: cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// What the source delivered before cannot be read or kept.
    #[error("file source: {0}")]
    Positions(String),
    /// The source's client failed (a consumer of a broker or a service).
    #[error("{source_kind} source ({what}): {message}")]
    Client {
        /// The source's kind (`kafka`).
        source_kind: &'static str,
        /// What it was doing.
        what: &'static str,
        /// The client's explanation.
        message: String,
        /// Whether the client can no longer be used (a new session, with a
        /// new client, is needed).
        fatal: bool,
    },
}

/// How a source learns that what it handed over is handled (in a sink or
/// in the dead-letter queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledgement {
    /// A watermark per partition ([`SourceControl::commit`]): everything
    /// below it is handled (Kafka offsets, Kinesis checkpoints).
    Watermark,
    /// Each item on its own, in any order ([`SourceControl::acknowledge`]),
    /// as soon as it is handled: an SQS message deleted, an HTTP request
    /// answered. The watermark is committed as well.
    PerItem,
}

/// How the pipeline drives a running source.
///
/// Positions are the source's: the core never reads a [`Position`]'s
/// `offset` as anything but its ordering key within a partition (increasing
/// in read order). It is a Kafka offset or a line number; a source whose
/// native positions are not integers (a Kinesis sequence number, an SQS
/// receipt handle) numbers its items itself and maps the numbers back when
/// it commits or acknowledges.
#[async_trait::async_trait]
pub trait SourceControl: Send + Sync {
    /// Makes handled positions durable upstream: per partition, the key
    /// below which every item is handled (which is Kafka's convention, the
    /// next offset to read). Called only once every item below it is in a
    /// sink or in the dead-letter queue. Sources without upstream state do
    /// nothing.
    async fn commit(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError>;

    /// How this source wants to be told what is handled.
    fn acknowledgement(&self) -> Acknowledgement {
        Acknowledgement::Watermark
    }

    /// With [`Acknowledgement::PerItem`]: these items are handled (each is
    /// acknowledged once, after it is in a sink or in the dead-letter
    /// queue, in no particular order).
    async fn acknowledge(&self, _positions: &[Position]) -> Result<(), SourceError> {
        Ok(())
    }

    /// Stops reading, commits `offsets` and waits for that commit, then
    /// leaves (a consumer group). The event stream ends after this.
    async fn close(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError>;

    /// What the sinks' transactions need to commit this source's position
    /// with them (exactly-once; Kafka: the consumer's group metadata), for
    /// the sink that provides them ([`crate::sink::Transactions`]) to take;
    /// `None`: the source's position cannot be committed in a transaction.
    fn transaction_context(&self) -> Option<Box<dyn std::any::Any + Send>> {
        None
    }

    /// A short description for logs.
    fn describe(&self) -> String;

    /// Records between the committed position and the end of the source,
    /// where the source knows it (a Kafka consumer's lag).
    fn lag(&self) -> Option<i64> {
        None
    }

    /// The lag of each partition being read, where the source knows it.
    fn partition_lags(&self) -> Vec<(Partition, i64)> {
        Vec::new()
    }

    /// What keeps the source from reading, while it lasts (`source
    /// unreachable since …`); `None` when it reads normally.
    fn health(&self) -> Option<String> {
        None
    }

    /// A bounded source's progress: bytes read of the bytes it has (files).
    fn progress(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The control of a source read by one task, with no upstream state (files,
/// replay items): commits do nothing; closing stops the task.
pub(crate) struct TaskControl {
    describe: String,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TaskControl {
    pub(crate) fn new(describe: String, task: tokio::task::JoinHandle<()>) -> Self {
        TaskControl {
            describe,
            task: std::sync::Mutex::new(Some(task)),
        }
    }
}

#[async_trait::async_trait]
impl SourceControl for TaskControl {
    async fn commit(&self, _offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        Ok(())
    }

    async fn close(&self, _offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// A source that is reading.
pub struct RunningSource {
    /// Events, in the order they happened. Ends when a bounded source is
    /// drained, or after [`SourceControl::close`].
    pub events: mpsc::UnboundedReceiver<Result<SourceEvent, SourceError>>,
    /// Commit and close.
    pub control: Arc<dyn SourceControl>,
}

impl std::fmt::Debug for RunningSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSource")
            .field("source", &self.control.describe())
            .finish()
    }
}

/// What a starting source needs from its pipeline.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Pipeline name, for logs and client ids.
    pub pipeline: String,
    /// The in-flight budget.
    pub budget: Arc<Budget>,
    /// How long a revoked partition may take to drain.
    pub drain_timeout: std::time::Duration,
    /// Where a source with no upstream state keeps what it delivered (a
    /// file source in a host); `None`: it starts from the beginning.
    pub positions: Option<std::path::PathBuf>,
}

/// A source of records: one table named after its kind, e.g. `[source.file]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Lines of local files.
    File(FileSourceConfig),
    /// Kafka topics, read by a consumer group.
    Kafka(KafkaSourceConfig),
}

impl SourceConfig {
    /// The plugin of this source kind: the registry's one match.
    pub fn plugin(&self) -> &dyn SourcePlugin {
        match self {
            SourceConfig::File(c) => c,
            SourceConfig::Kafka(c) => c,
        }
    }
}

/// A source kind: what the pipeline needs from its configuration.
pub trait SourcePlugin: std::fmt::Debug + Send + Sync {
    /// The kind, as written in the pipeline file (`[source.<kind>]`).
    fn kind(&self) -> &'static str;

    /// A short description for the status page and logs (never a
    /// credential).
    fn describe(&self) -> String;

    /// [`describe`](Self::describe) with the paths it names resolved
    /// against the pipeline file's folder (the status page shows which
    /// file a relative path meant).
    fn describe_at(&self, _base: &Path) -> String {
        self.describe()
    }

    /// Checks of the configuration alone (no I/O), run when the pipeline
    /// file is parsed; the message names the field.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Checks without side effects against the world (`sluice check`):
    /// files exist, client settings are valid.
    fn validate(&self, base: &Path) -> Result<(), SourceError>;

    /// Connects to what the source reads from without reading anything
    /// (`sluice check --connect`): the servers answer, the topics exist.
    /// Says what it found; a source with nothing to connect to says so.
    fn probe(&self, _base: &Path) -> Result<String, SourceError> {
        Ok("nothing to connect to".into())
    }

    /// Starts reading; relative paths resolve against `base`. Must be
    /// called inside a tokio runtime.
    fn start(&self, base: &Path, opts: StartOptions) -> Result<RunningSource, SourceError>;

    /// Whether record values must be JSON (replayed records are checked the
    /// same way).
    fn json_values(&self) -> bool;

    /// What `sluice run` tells its user before it starts, if anything (a
    /// file source read from its start every time).
    fn run_note(&self) -> Option<String> {
        None
    }

    /// Whether a restarted source reads on from the positions the pipeline
    /// committed (Kafka's consumer-group offsets) rather than from the
    /// start: only such a pipeline is restarted after a failure.
    fn resumes(&self) -> bool {
        false
    }

    /// The cluster this source reads, when its position can be committed
    /// in the sinks' transactions (exactly-once) — Kafka's bootstrap
    /// servers; a Kafka sink without a `bootstrap` of its own writes there.
    fn transactional_cluster(&self) -> Option<&str> {
        None
    }
}

/// A short description of a source for the status page and logs.
pub fn describe(config: &SourceConfig) -> String {
    config.plugin().describe()
}

/// Checks a source config without side effects (for `sluice check`).
pub fn validate(config: &SourceConfig, base: &Path) -> Result<(), SourceError> {
    config.plugin().validate(base)
}

/// Starts the source a config describes; relative paths resolve against `base`.
/// Must be called inside a tokio runtime.
pub fn start(
    config: &SourceConfig,
    base: &Path,
    opts: StartOptions,
) -> Result<RunningSource, SourceError> {
    config.plugin().start(base, opts)
}
